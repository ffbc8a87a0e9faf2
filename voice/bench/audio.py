"""``voice bench audio``: cost of the audio cores per 20 ms frame, and the resamplers' quality figures.

Times are the best of several repeats of a loop over 50 different frames (µs per frame, one core).
G.711 is compared with CPython's C ``audioop`` measured in the same run where it exists (Python < 3.13).
Resampler delay and alias rejection are measured as ``voice.audio.measure`` defines them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from types import ModuleType

import numpy as np

from voice.audio.dtmf import DtmfDetector, dtmf_tones
from voice.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from voice.audio.measure import measure_resampler
from voice.audio.pcm import to_pcm16
from voice.audio.resample import LIVE_RATES, StreamingResampler
from voice.audio.vad import Vad, VadSegmenter

_FRAMES = 50
_REPEATS = 5
_TARGET_S = 0.02  # per repeat


def _audioop() -> ModuleType | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:
            return None
    return audioop


def _frames(rate: int, kind: str = "noise") -> list[bytes]:
    """Fifty 20 ms PCM16 frames: noise at about -20 dBFS, or DTMF tones with pauses."""
    n = rate // 50
    if kind == "dtmf":
        pcm = dtmf_tones("1234567890*#ABCD", rate, on_ms=60, off_ms=60)
        pcm = (pcm * (1 + 2 * n * _FRAMES // len(pcm)))[: 2 * n * _FRAMES]
        return [pcm[2 * n * i : 2 * n * (i + 1)] for i in range(_FRAMES)]
    rng = np.random.default_rng(rate)
    return [to_pcm16(rng.normal(0, 3000, n)) for _ in range(_FRAMES)]


def per_frame_us(process: Callable[[bytes], object], frames: list[bytes]) -> float:
    """Best-of-repeats time of ``process(frame)`` in µs, cycling over ``frames``."""
    for frame in frames[:5]:
        process(frame)  # warm up caches and lazily built tables
    loops = 1
    while True:
        started = time.perf_counter()
        for _ in range(loops):
            for frame in frames:
                process(frame)
        elapsed = time.perf_counter() - started
        if elapsed >= _TARGET_S / 4 or loops >= 1 << 16:
            break
        loops *= 4
    loops = max(1, int(loops * _TARGET_S / max(elapsed, 1e-9)))
    best = float("inf")
    for _ in range(_REPEATS):
        started = time.perf_counter()
        for _ in range(loops):
            for frame in frames:
                process(frame)
        best = min(best, (time.perf_counter() - started) / (loops * len(frames)))
    return best * 1e6


def _g711_table() -> None:
    audioop = _audioop()
    pcm = _frames(8000)
    ulaw = [ulaw_encode(f) for f in pcm]
    alaw = [alaw_encode(f) for f in pcm]
    rows: list[tuple[str, Callable[[bytes], object], list[bytes], Callable[[bytes], object] | None]] = [
        ("µ-law encode", ulaw_encode, pcm, (lambda f: audioop.lin2ulaw(f, 2)) if audioop else None),
        ("µ-law decode", ulaw_decode, ulaw, (lambda f: audioop.ulaw2lin(f, 2)) if audioop else None),
        ("A-law encode", alaw_encode, pcm, (lambda f: audioop.lin2alaw(f, 2)) if audioop else None),
        ("A-law decode", alaw_decode, alaw, (lambda f: audioop.alaw2lin(f, 2)) if audioop else None),
    ]
    print("\nG.711, 20 ms frame (160 samples)   ours µs   audioop µs   ours/audioop")
    for name, ours, frames, baseline in rows:
        mine = per_frame_us(ours, frames)
        if baseline is None:
            print(f"  {name:<33}{mine:>8.2f}   {'n/a':>10}   {'n/a':>12}")
            continue
        theirs = per_frame_us(baseline, frames)
        print(f"  {name:<33}{mine:>8.2f}   {theirs:>10.2f}   {mine / theirs:>11.1f}x")


def _resampler_table() -> None:
    print("\nStreaming resampler, 20 ms frames   µs/frame   delay ms   alias rejection dB   passband dev dB")
    rates = sorted(LIVE_RATES)
    for in_rate in rates:
        frames = _frames(in_rate)
        for out_rate in rates:
            if in_rate == out_rate:
                continue
            resampler = StreamingResampler(in_rate, out_rate)
            cost = per_frame_us(resampler.process, frames)
            figures = measure_resampler(in_rate, out_rate)
            print(
                f"  {in_rate:>5} -> {out_rate:<5} Hz{'':<17}{cost:>8.1f}   {figures.delay_ms:>8.3f}"
                f"   {figures.alias_rejection_db:>18.1f}   {figures.passband_gain_db:>15.4f}"
            )


def _vad_dtmf_table() -> None:
    print("\nVAD and DTMF, 20 ms frames         µs/frame")
    for rate in (8000, 16000, 48000):
        vad = Vad(rate, 2)
        print(f"  WebRTC Vad.is_speech  {rate:>5} Hz   {per_frame_us(vad.is_speech, _frames(rate)):>8.1f}")
    for rate in (16000, 24000):
        segmenter = VadSegmenter(rate)
        print(f"  VadSegmenter.push     {rate:>5} Hz   {per_frame_us(segmenter.push, _frames(rate)):>8.1f}")
    for rate in (8000, 16000, 24000, 48000):
        tones = per_frame_us(DtmfDetector(rate).push, _frames(rate, "dtmf"))
        noise = per_frame_us(DtmfDetector(rate).push, _frames(rate))
        print(f"  DtmfDetector.push     {rate:>5} Hz   {tones:>8.1f} (tones)   {noise:>6.1f} (noise)")


def run() -> None:
    """Print the audio benchmark tables."""
    _g711_table()
    _resampler_table()
    _vad_dtmf_table()
