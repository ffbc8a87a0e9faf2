"""Objective figures for a streaming resampler: algorithmic delay, alias rejection, passband gain.

Used by the tests (which assert the targets) and by ``voice bench audio`` (which prints them). The
measurements drive the resampler exactly as the live path does, 20 ms frame by 20 ms frame of PCM16, and
analyse its output with FFTs whose length is a whole number of periods of every component, so there is no
spectral leakage and no window to bias the figures.

Definitions (``f_low`` is the lower of the two rates; passband ``[0, 0.4375 f_low]``, stopband from
``0.5625 f_low``, the band between them is the transition band):

- **Delay** is the lag that maximises the cross-correlation between the resampler's output and the ideal,
  delay-free resampling of the same input (a multitone of every multiple of 50 Hz in the passband with fixed
  pseudo-random phases, sampled directly at the output rate), computed from the cross-spectrum on a 0.01 ms
  grid and refined by a parabola through the peak. For a linear-phase filter this is its group delay.
- **Alias rejection** is, over single input tones of amplitude ``A`` spread over the whole input band
  (64 tones from 50 Hz to ``in_rate/2 - 50`` Hz plus the passband and stopband edges), the smallest ratio
  ``A / B`` in dB where ``B`` is the largest output component at any frequency other than the input tone's
  own, within ``[0, out_rate/2]`` minus the transition band. This covers aliases (downsampling: stopband
  tones folding into the passband) and images (upsampling: passband tones mirrored into the stopband). The
  tone is analysed over 0.5 s after 40 ms of settling.
- **Passband gain** is the largest deviation from 0 dB of the output level of the input tones in the
  passband.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np

from voice.audio.pcm import PCM16, FloatArray, to_pcm16
from voice.audio.resample import PASSBAND_FRACTION, STOPBAND_FRACTION, StreamingResampler

__all__ = ["FrameProcessor", "ResamplerFigures", "measure_resampler"]

_SETTLE_S: Final = 0.04
_ANALYSIS_S: Final = 0.5  # FFT bins are 2 Hz apart: every component of an even-Hz tone is on a bin
_FRAME_S: Final = 0.02
_TONE_AMPLITUDE: Final = 16384.0
_TONES: Final = 64


class FrameProcessor(Protocol):
    """Anything that converts a 20 ms PCM16 frame into a 20 ms frame at another rate."""

    def process(self, frame: bytes) -> bytes: ...


@dataclass(frozen=True)
class ResamplerFigures:
    """What :func:`measure_resampler` found (definitions in the module docstring)."""

    in_rate: int
    out_rate: int
    delay_ms: float
    alias_rejection_db: float
    worst_tone_hz: float
    passband_gain_db: float


def _run(processor: FrameProcessor, signal: FloatArray, in_rate: int, out_rate: int) -> FloatArray:
    pcm = to_pcm16(signal)
    step = 2 * int(in_rate * _FRAME_S)
    out = b"".join(processor.process(pcm[i : i + step]) for i in range(0, len(pcm), step))
    y = np.frombuffer(out, dtype=PCM16).astype(np.float64)
    settle = int(out_rate * _SETTLE_S)
    return y[settle : settle + int(out_rate * _ANALYSIS_S)]


def _even_hz(value: float) -> float:
    return float(2 * round(value / 2))


def _tones(in_rate: int, out_rate: int) -> list[float]:
    low = min(in_rate, out_rate)
    grid = np.linspace(50.0, in_rate / 2 - 50.0, _TONES)
    edges = [PASSBAND_FRACTION * low, STOPBAND_FRACTION * low, out_rate - PASSBAND_FRACTION * low]
    chosen = {_even_hz(f) for f in grid} | {_even_hz(f) for f in edges if 0 < f < in_rate / 2}
    return sorted(chosen)


def measure_resampler(
    in_rate: int,
    out_rate: int,
    make: Callable[[], FrameProcessor] | None = None,
) -> ResamplerFigures:
    """Measure a resampler from ``in_rate`` to ``out_rate`` (by default :class:`StreamingResampler`)."""

    def factory() -> FrameProcessor:
        return make() if make is not None else StreamingResampler(in_rate, out_rate)

    low = min(in_rate, out_rate)
    f_pass, f_stop = PASSBAND_FRACTION * low, STOPBAND_FRACTION * low
    total = _SETTLE_S + _ANALYSIS_S
    n_in = round(total / _FRAME_S) * int(in_rate * _FRAME_S)
    t_in = np.arange(n_in) / in_rate
    n_fft = int(out_rate * _ANALYSIS_S)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / out_rate)
    counted = ~((freqs > f_pass) & (freqs < f_stop))

    worst_db, worst_tone, gain_dev = math.inf, 0.0, 0.0
    for tone in _tones(in_rate, out_rate):
        y = _run(factory(), _TONE_AMPLITUDE * np.sin(2 * np.pi * tone * t_in), in_rate, out_rate)
        amplitude = np.abs(np.fft.rfft(y)) * 2.0 / n_fft
        own = np.isclose(freqs, tone)
        if tone <= f_pass and tone < out_rate / 2:
            gain_dev = max(gain_dev, abs(20 * math.log10(float(amplitude[own][0]) / _TONE_AMPLITUDE)))
        spurious = float(np.max(amplitude[counted & ~own], initial=0.0))
        rejection = 20 * math.log10(_TONE_AMPLITUDE / max(spurious, 1e-9))
        if rejection < worst_db:
            worst_db, worst_tone = rejection, tone

    return ResamplerFigures(
        in_rate=in_rate,
        out_rate=out_rate,
        delay_ms=_measure_delay(factory(), in_rate, out_rate, f_pass),
        alias_rejection_db=worst_db,
        worst_tone_hz=worst_tone,
        passband_gain_db=gain_dev,
    )


def _measure_delay(processor: FrameProcessor, in_rate: int, out_rate: int, f_pass: float) -> float:
    total = _SETTLE_S + _ANALYSIS_S
    tones = np.arange(100.0, f_pass, 50.0)
    phases = np.random.default_rng(711).uniform(0, 2 * np.pi, len(tones))
    amplitude = 6000.0 / math.sqrt(len(tones))

    def multitone(rate: int, count: int) -> FloatArray:
        t = np.arange(count) / rate
        out = np.zeros(count)
        for f, phase in zip(tones, phases, strict=True):
            out += amplitude * np.sin(2 * np.pi * f * t + phase)
        return out

    n_in = round(total / _FRAME_S) * int(in_rate * _FRAME_S)
    y = _run(processor, multitone(in_rate, n_in), in_rate, out_rate)
    settle = int(out_rate * _SETTLE_S)
    ref = multitone(out_rate, settle + len(y))[settle:]
    n_fft = len(y)
    bins = np.rint(tones * n_fft / out_rate).astype(np.int64)
    cross = (np.fft.rfft(y)[bins] * np.conj(np.fft.rfft(ref)[bins])).astype(np.complex128)

    def correlation(delays_ms: FloatArray) -> FloatArray:
        steer = np.exp(2j * np.pi * np.outer(delays_ms / 1000.0, tones))
        return np.real(steer @ cross)

    grid = np.arange(-5.0, 20.0, 0.01)
    values = correlation(grid)
    k = int(np.argmax(values))
    if 0 < k < len(grid) - 1:
        a, b, c = values[k - 1], values[k], values[k + 1]
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom else 0.0
        return float(grid[k] + offset * 0.01)
    return float(grid[k])
