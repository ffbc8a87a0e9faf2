"""PCM16 helpers: length checks, rounding and clipping, levels, frame sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voice.audio.pcm import amplitude_for_dbfs, frame_samples, rms_dbfs, samples, to_float, to_pcm16
from voice.audio.resample import resample_pcm16
from voice.errors import AudioError


def test_samples_are_little_endian_int16() -> None:
    assert samples(b"\x01\x00\xff\xff\x00\x80").tolist() == [1, -1, -32768]
    assert to_float(b"\xff\x7f").tolist() == [32767.0]
    with pytest.raises(AudioError, match="3 bytes"):
        samples(b"abc")


def test_to_pcm16_rounds_and_clips() -> None:
    assert (
        to_pcm16([0.4, 0.6, -0.6, 1e9, -1e9, 32767.4])
        == np.array([0, 1, -1, 32767, -32768, 32767], dtype="<i2").tobytes()
    )


def test_levels() -> None:
    t = np.arange(8000) / 8000
    full = 32767 * np.sin(2 * np.pi * 1000 * t)
    assert rms_dbfs(full) == pytest.approx(0.0, abs=0.01)
    assert rms_dbfs(full * 0.1) == pytest.approx(-20.0, abs=0.01)
    assert rms_dbfs(np.zeros(10)) == -math.inf
    assert rms_dbfs(np.zeros(0)) == -math.inf
    assert amplitude_for_dbfs(-20.0) == pytest.approx(3276.7)


def test_frame_samples() -> None:
    assert frame_samples(8000, 20) == 160
    assert frame_samples(24000, 10) == 240
    assert frame_samples(44100, 10) == 441
    with pytest.raises(AudioError):
        frame_samples(44100, 1)  # 44.1 samples
    with pytest.raises(AudioError):
        frame_samples(8000, 0)


def test_resample_pcm16_refuses_absurd_ratios() -> None:
    with pytest.raises(AudioError, match="ratio"):
        resample_pcm16(bytes(100), 44100, 44099)
