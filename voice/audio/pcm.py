"""PCM16 helpers shared by the audio cores: length checks, int16 <-> float conversion, levels.

PCM16 in this project is always little-endian, signed, mono (one 16-bit sample after another).
Levels are in dBFS where 0 dBFS is the RMS of a full-scale sine (AES17), so a sine of peak 32767 is 0 dBFS.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from voice.errors import AudioError

FULL_SCALE: Final = 32767.0
"""Peak of a full-scale sine in PCM16."""

PCM16: Final = np.dtype("<i2")

FloatArray = npt.NDArray[np.float64]
Int16Array = npt.NDArray[np.int16]


def samples(pcm: bytes, *, what: str = "PCM16 audio") -> Int16Array:
    """``pcm`` as an int16 array (a zero-copy view); :class:`AudioError` if its length is odd."""
    if len(pcm) % 2:
        raise AudioError(f"{what} must be a whole number of 16-bit samples; got {len(pcm)} bytes")
    return np.frombuffer(pcm, dtype=PCM16)


def to_float(pcm: bytes, *, what: str = "PCM16 audio") -> FloatArray:
    """``pcm`` as float64 samples on the int16 scale (no normalisation)."""
    return samples(pcm, what=what).astype(np.float64)


def to_pcm16(values: npt.ArrayLike) -> bytes:
    """Round float samples (int16 scale) to the nearest integer, clip to int16 and return PCM16 bytes."""
    arr = np.asarray(values, dtype=np.float64)
    return np.clip(np.rint(arr), -32768.0, 32767.0).astype(PCM16).tobytes()


def rms_dbfs(values: FloatArray | Int16Array) -> float:
    """RMS level of int16-scale samples in dBFS (a full-scale sine is 0 dBFS); ``-inf`` for silence."""
    if len(values) == 0:
        return -math.inf
    arr = np.asarray(values, dtype=np.float64)
    mean_square = float(np.dot(arr, arr)) / len(arr)
    if mean_square <= 0.0:
        return -math.inf
    return 10.0 * math.log10(mean_square / (FULL_SCALE * FULL_SCALE / 2.0))


def amplitude_for_dbfs(level_dbfs: float) -> float:
    """Peak amplitude (int16 scale) of a sine whose RMS level is ``level_dbfs``."""
    return FULL_SCALE * math.pow(10.0, level_dbfs / 20.0)


def frame_samples(sample_rate: int, frame_ms: int) -> int:
    """Samples in a frame of ``frame_ms`` at ``sample_rate``; :class:`AudioError` unless a whole number."""
    count, rem = divmod(sample_rate * frame_ms, 1000)
    if rem or count <= 0:
        raise AudioError(f"{frame_ms} ms at {sample_rate} Hz is not a whole number of samples")
    return count
