"""Sample-rate conversion: low-delay streaming resamplers for live audio and a whole-buffer converter.

:class:`StreamingResampler` converts between 8, 16, 24 and 48 kHz one frame at a time (20 ms in, 20 ms out,
or any whole multiple of 10 ms). It is a polyphase FIR resampler: conceptually the input is upsampled by
``L`` (zeros inserted), low-pass filtered at ``F = lcm(in_rate, out_rate)`` and decimated by ``M``; only
the output samples are computed, each as one dot product of ``ceil(N / L)`` taps with the input history.
The filter state (the last input samples) is carried from frame to frame, so a stream of frames gives the
same samples as one long buffer, and exactly ``len(frame) * out_rate / in_rate`` samples come out.

The prototype filter is a linear-phase Kaiser-windowed sinc designed for the lower of the two rates
``f_low``: passband to ``0.4375 * f_low`` (3.5 kHz for 8 kHz, 7 kHz for 16 kHz), stopband from
``0.5625 * f_low`` with 72 dB design attenuation, so anything that would alias or image into the passband
is at least 60 dB down (measured in ``voice.audio.measure``). Its group delay is constant:
about 2.2 ms for pairs with 8 kHz, 1.1 ms with 16 kHz and 0.73 ms between 24 and 48 kHz (``delay_ms``).

:func:`resample_pcm16` is for whole buffers at any pair of rates (e.g. 22050 -> 24000 for synthesized
speech): ``scipy.signal.resample_poly`` with a sharper zero-phase filter (80 dB), not for the live path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Final

import numpy as np
import numpy.typing as npt

from voice.audio.pcm import PCM16, FloatArray, samples, to_pcm16
from voice.errors import AudioError

__all__ = [
    "LIVE_RATES",
    "PASSBAND_FRACTION",
    "STOPBAND_FRACTION",
    "StreamingResampler",
    "resample_pcm16",
]

LIVE_RATES: Final = frozenset({8000, 16000, 24000, 48000})
"""Rates :class:`StreamingResampler` converts between."""

PASSBAND_FRACTION: Final = 0.4375
"""Passband edge of the streaming filters as a fraction of the lower rate (3.5 kHz at 8 kHz)."""
STOPBAND_FRACTION: Final = 0.5625
"""Stopband edge as a fraction of the lower rate: ``1 - PASSBAND_FRACTION``, so aliases of stopband
components cannot land in the passband."""

_LIVE_ATTENUATION_DB: Final = 72.0
_OFFLINE_ATTENUATION_DB: Final = 80.0
_OFFLINE_PASSBAND_FRACTION: Final = 0.45
_MAX_OFFLINE_FACTOR: Final = 2000  # 44100 <-> 48000 is 160/147; 11025 <-> 16000 is 640/441


def _kaiser_lowpass(
    rate: int, cutoff_hz: float, transition_hz: float, attenuation_db: float, gain: float
) -> FloatArray:
    """Odd-length linear-phase Kaiser-window low-pass FIR at ``rate`` (Kaiser's design formulas)."""
    from scipy.signal import firwin, kaiser_beta, kaiserord

    numtaps, _ = kaiserord(attenuation_db, transition_hz / (rate / 2.0))
    numtaps += 1 - numtaps % 2
    taps = firwin(numtaps, cutoff_hz, window=("kaiser", kaiser_beta(attenuation_db)), fs=rate)
    return np.asarray(taps, dtype=np.float64) * gain


@dataclass(frozen=True)
class _Polyphase:
    """A streaming resampler's filter, rearranged for one matrix product per frame.

    Output ``i = q * up + r`` is ``windows[q] @ matrix[r]`` where ``windows[q]`` is the slice of the
    input buffer (history + frame) starting at ``q * down``; row ``r`` of ``matrix`` holds the reversed
    polyphase branch ``(r * down) % up`` of the prototype, shifted by ``(r * down) // up``.
    """

    up: int
    down: int
    taps: FloatArray
    history: int  # input samples carried between frames
    window: int  # columns of ``matrix``
    matrix: FloatArray  # shape (window, up): already transposed for ``windows @ matrix``
    delay_ms: float


@cache
def _polyphase(in_rate: int, out_rate: int) -> _Polyphase:
    rate = math.lcm(in_rate, out_rate)
    up, down = rate // in_rate, rate // out_rate
    low = min(in_rate, out_rate)
    taps = _kaiser_lowpass(
        rate, low / 2.0, (STOPBAND_FRACTION - PASSBAND_FRACTION) * low, _LIVE_ATTENUATION_DB, float(up)
    )
    per_branch = -(-len(taps) // up)
    padded = np.zeros(per_branch * up)
    padded[: len(taps)] = taps
    branches = padded.reshape(per_branch, up).T[:, ::-1]  # branches[p][j] = h[p + (K - 1 - j) * up]
    offsets = [(r * down) // up for r in range(up)]
    window = per_branch + max(offsets)
    matrix = np.zeros((up, window))
    for r, offset in enumerate(offsets):
        matrix[r, offset : offset + per_branch] = branches[(r * down) % up]
    delay_ms = (len(taps) - 1) / 2.0 / rate * 1000.0
    return _Polyphase(up, down, taps, per_branch - 1, window, np.ascontiguousarray(matrix.T), delay_ms)


class StreamingResampler:
    """Low-delay streaming conversion of PCM16 between 8, 16, 24 and 48 kHz.

    ``process(frame)`` takes a frame of a whole multiple of 10 ms (20 ms is the usual) and returns the
    same duration at ``out_rate``: one frame out per frame in, delayed by ``delay_ms`` (the filter's
    constant group delay; the first output frame starts with that much of the filter's settling).
    Equal rates pass frames through unchanged. Pure and synchronous; not thread-safe (one per stream).
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        for rate in (in_rate, out_rate):
            if rate not in LIVE_RATES:
                raise AudioError(
                    f"streaming resampling supports {sorted(LIVE_RATES)} Hz, not {rate} Hz; "
                    "use resample_pcm16 for whole buffers at other rates"
                )
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._block = in_rate // 100  # input samples per 10 ms
        self._design = _polyphase(in_rate, out_rate) if in_rate != out_rate else None
        self._buffer: FloatArray = np.zeros(0)
        self._windows: FloatArray = np.zeros((0, 0))
        self._primed = False

    @property
    def delay_ms(self) -> float:
        """Algorithmic delay in ms: the constant group delay of the linear-phase filter (0 if rates match)."""
        return self._design.delay_ms if self._design is not None else 0.0

    def reset(self) -> None:
        """Forget the filter history (start of a new, unrelated stream)."""
        if len(self._buffer):
            self._buffer[:] = 0.0

    def process(self, frame: bytes) -> bytes:
        """Convert one frame (a whole multiple of 10 ms of PCM16 at ``in_rate``) to ``out_rate``."""
        design = self._push(frame)
        if design is None:
            return bytes(frame)
        out = self._windows @ design.matrix
        return _round_to_pcm16(out)

    def skip(self, frame: bytes) -> None:
        """Take ``frame`` into the filter history without computing its output (a frame whose output is
        not needed, e.g. one below a VAD's level gate): the next :meth:`process` is exactly as if this
        frame had been processed. A fraction of :meth:`process`'s cost."""
        self._push(frame)

    def _push(self, frame: bytes) -> _Polyphase | None:
        """Check ``frame`` and append it to the filter buffer; the design, or None for equal rates."""
        count = len(frame) // 2
        if len(frame) % 2 or count % self._block or count == 0:
            raise AudioError(
                f"a resampler frame must be a whole multiple of 10 ms ({2 * self._block} bytes "
                f"at {self.in_rate} Hz); got {len(frame)} bytes"
            )
        design = self._design
        if design is None:
            return None
        if len(self._buffer) != design.history + count:
            self._resize(design, count)
        buffer = self._buffer
        history = design.history
        if history:
            buffer[:history] = buffer[count:]
        buffer[history:] = np.frombuffer(frame, dtype=PCM16)
        return design

    def _resize(self, design: _Polyphase, count: int) -> None:
        """Reallocate the buffer for a new frame length, keeping the filter history."""
        # ``process`` moves the buffer's last ``history`` samples to its front before appending a frame.
        tail = self._buffer[len(self._buffer) - design.history :] if len(self._buffer) else None
        self._buffer = np.zeros(design.history + count)
        if tail is not None and design.history:
            self._buffer[count:] = tail
        groups = count // design.down
        stride = self._buffer.strides[0]
        self._windows = np.lib.stride_tricks.as_strided(
            self._buffer,
            shape=(groups, design.window),
            strides=(stride * design.down, stride),
            writeable=False,
        )


def _round_to_pcm16(values: npt.NDArray[np.float64]) -> bytes:
    np.rint(values, out=values)
    np.clip(values, -32768.0, 32767.0, out=values)
    return values.astype(PCM16).tobytes()


def resample_pcm16(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """Resample a whole PCM16 buffer between two positive integer rates (offline use).

    The rates' ratio must reduce to integers of at most 2000 (all the usual audio rates do).

    Zero-phase (no delay) polyphase filtering with ``scipy.signal.resample_poly`` and a Kaiser low-pass
    filter: passband to 0.45 of the lower rate, 80 dB stopband from 0.55 of it. The result has
    ``ceil(len * out_rate / in_rate)`` samples.
    """
    x = samples(pcm)
    for rate in (in_rate, out_rate):
        if not isinstance(rate, int) or rate <= 0:
            raise AudioError(f"sample rates must be positive integers; got {rate!r}")
    if in_rate == out_rate or len(x) == 0:
        return bytes(pcm)
    g = math.gcd(in_rate, out_rate)
    if max(in_rate, out_rate) // g > _MAX_OFFLINE_FACTOR:
        raise AudioError(
            f"{in_rate} -> {out_rate} Hz reduces to the ratio {out_rate // g}/{in_rate // g}: "
            f"too fine for polyphase resampling (up to {_MAX_OFFLINE_FACTOR} either way)"
        )
    from scipy.signal import resample_poly

    taps = _offline_filter(in_rate, out_rate)
    y = resample_poly(x.astype(np.float64), out_rate // g, in_rate // g, window=taps)
    return to_pcm16(y)


@lru_cache(maxsize=16)
def _offline_filter(in_rate: int, out_rate: int) -> FloatArray:
    rate = math.lcm(in_rate, out_rate)
    low = min(in_rate, out_rate)
    # resample_poly multiplies by ``up`` itself.
    return _kaiser_lowpass(
        rate, low / 2.0, (1.0 - 2.0 * _OFFLINE_PASSBAND_FRACTION) * low, _OFFLINE_ATTENUATION_DB, 1.0
    )
