"""Streaming resamplers: measured delay and alias rejection against the targets, framing, state, buffers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice.audio.measure import measure_resampler
from voice.audio.pcm import to_pcm16
from voice.audio.resample import LIVE_RATES, StreamingResampler, resample_pcm16
from voice.errors import AudioError

RATES = sorted(LIVE_RATES)
PAIRS = [(a, b) for a, b in itertools.product(RATES, RATES) if a != b]

MAX_DELAY_MS = 3.0
MIN_REJECTION_DB = 60.0
MAX_PASSBAND_GAIN_DB = 0.1


def _tone(rate: int, hz: float, ms: int, amplitude: float = 10000.0) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return to_pcm16(amplitude * np.sin(2 * np.pi * hz * t))


def _stream(resampler: StreamingResampler, pcm: bytes, frame_ms: int = 20) -> bytes:
    step = 2 * resampler.in_rate * frame_ms // 1000
    return b"".join(resampler.process(pcm[i : i + step]) for i in range(0, len(pcm), step))


def test_measured_delay_and_alias_rejection_meet_targets(capsys: pytest.CaptureFixture[str]) -> None:
    """Every pair: delay <= 3 ms and alias/image rejection >= 60 dB, measured as ``voice.audio.measure``
    defines (cross-correlation lag against the ideal resampling; worst spurious component over tones
    across the whole input band). The figures are printed."""
    figures = [measure_resampler(a, b) for a, b in PAIRS]
    with capsys.disabled():
        print(
            "\n  in Hz -> out Hz   delay ms (design)   alias rejection dB (worst tone Hz)   passband dev dB"
        )
        for (a, b), f in zip(PAIRS, figures, strict=True):
            design = StreamingResampler(a, b).delay_ms
            print(
                f"  {a:>5} -> {b:<6} {f.delay_ms:>9.3f} ({design:.3f})   "
                f"{f.alias_rejection_db:>17.1f} ({f.worst_tone_hz:>7.0f})   {f.passband_gain_db:>14.4f}"
            )
    for (a, b), f in zip(PAIRS, figures, strict=True):
        assert f.delay_ms <= MAX_DELAY_MS, (a, b)
        assert f.alias_rejection_db >= MIN_REJECTION_DB, (a, b)
        assert f.passband_gain_db <= MAX_PASSBAND_GAIN_DB, (a, b)
        assert f.delay_ms == pytest.approx(StreamingResampler(a, b).delay_ms, abs=0.02), (a, b)


class _Decimator:
    """A bad 16 -> 8 kHz resampler (drop every other sample, no filter), to show the measurement bites."""

    def process(self, frame: bytes) -> bytes:
        return np.frombuffer(frame, dtype="<i2")[::2].tobytes()


class _Delayed:
    """A good resampler followed by ``extra`` samples of pure delay."""

    def __init__(self, extra: int) -> None:
        self.inner = StreamingResampler(8000, 16000)
        self.tail = bytes(2 * extra)

    def process(self, frame: bytes) -> bytes:
        joined = self.tail + self.inner.process(frame)
        self.tail = joined[len(joined) - len(self.tail) :]
        return joined[: len(joined) - len(self.tail)]


def test_measurement_detects_aliasing_and_extra_delay() -> None:
    assert measure_resampler(16000, 8000, _Decimator).alias_rejection_db < 10.0
    base = StreamingResampler(8000, 16000).delay_ms
    assert measure_resampler(8000, 16000, lambda: _Delayed(16)).delay_ms == pytest.approx(
        base + 1.0, abs=0.02
    )


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
@pytest.mark.parametrize("frame_ms", [10, 20, 30, 60])
def test_one_frame_out_per_frame_in(in_rate: int, out_rate: int, frame_ms: int) -> None:
    resampler = StreamingResampler(in_rate, out_rate)
    for _ in range(3):
        out = resampler.process(bytes(2 * in_rate * frame_ms // 1000))
        assert len(out) == 2 * out_rate * frame_ms // 1000


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_streaming_equals_one_block_whatever_the_frame_sizes(in_rate: int, out_rate: int) -> None:
    rng = np.random.default_rng(in_rate + out_rate)
    pcm = to_pcm16(rng.normal(0, 6000, in_rate // 2))  # 500 ms
    whole = StreamingResampler(in_rate, out_rate).process(pcm)
    resampler = StreamingResampler(in_rate, out_rate)
    sizes = [10, 20, 30, 20, 10, 40, 20, 50, 100, 200]
    step = 2 * in_rate // 100
    parts, at = [], 0
    for ms in sizes:
        parts.append(resampler.process(pcm[at : at + step * ms // 10]))
        at += step * ms // 10
    assert at == len(pcm)
    assert b"".join(parts) == whole


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_skipped_frames_keep_the_history_exactly(in_rate: int, out_rate: int) -> None:
    rng = np.random.default_rng(in_rate * 3 + out_rate)
    frame = 2 * in_rate // 50  # 20 ms
    pcm = to_pcm16(rng.normal(0, 6000, in_rate // 5))  # 200 ms: ten frames
    frames = [pcm[i : i + frame] for i in range(0, len(pcm), frame)]
    processed, skipping = StreamingResampler(in_rate, out_rate), StreamingResampler(in_rate, out_rate)
    for index, chunk in enumerate(frames):
        expected = processed.process(chunk)
        if index in (2, 3, 6):  # outputs nobody needs
            skipping.skip(chunk)
        else:
            assert skipping.process(chunk) == expected
    with pytest.raises(AudioError):
        skipping.skip(b"\x00" * 3)


@given(st.lists(st.integers(1, 6), min_size=1, max_size=12), st.sampled_from(PAIRS))
@settings(max_examples=40, deadline=None)
def test_streaming_is_split_invariant(blocks: list[int], pair: tuple[int, int]) -> None:
    in_rate, out_rate = pair
    step = 2 * in_rate // 100
    pcm = to_pcm16(np.random.default_rng(sum(blocks)).normal(0, 8000, sum(blocks) * in_rate // 100))
    resampler = StreamingResampler(in_rate, out_rate)
    out, at = [], 0
    for count in blocks:
        out.append(resampler.process(pcm[at : at + count * step]))
        at += count * step
    assert b"".join(out) == StreamingResampler(in_rate, out_rate).process(pcm)


def test_tone_keeps_frequency_and_level_through_every_pair() -> None:
    for in_rate, out_rate in PAIRS:
        y = np.frombuffer(_stream(StreamingResampler(in_rate, out_rate), _tone(in_rate, 1000, 540)), "<i2")
        steady = y[int(out_rate * 0.04) : int(out_rate * 0.54)].astype(np.float64)
        spectrum = np.abs(np.fft.rfft(steady)) * 2 / len(steady)
        peak = int(np.argmax(spectrum))
        assert peak * out_rate / len(steady) == pytest.approx(1000.0)
        assert spectrum[peak] == pytest.approx(10000.0, rel=0.005)


def test_output_is_delayed_by_delay_ms() -> None:
    resampler = StreamingResampler(8000, 48000)
    impulse = bytearray(320)
    impulse[0:2] = (20000).to_bytes(2, "little", signed=True)
    y = np.frombuffer(resampler.process(bytes(impulse)), "<i2")
    assert int(np.argmax(y)) / 48.0 == pytest.approx(resampler.delay_ms, abs=1 / 48)


def test_round_trip_8k_48k_8k_preserves_speech_band() -> None:
    rng = np.random.default_rng(7)
    t = np.arange(8000) / 8000
    x = np.zeros(len(t))
    for f in (300, 730, 1250, 2210, 3100):
        x += 2000 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
    up, down = StreamingResampler(8000, 48000), StreamingResampler(48000, 8000)
    y = np.frombuffer(_stream(down, _stream(up, to_pcm16(x))), "<i2").astype(np.float64)
    shift = round((up.delay_ms + down.delay_ms) * 8)  # 4.5 ms = 36 samples at 8 kHz
    assert shift == 36
    error = y[shift + 80 :] - x[80 : len(x) - shift]
    snr = 10 * math.log10(float(np.mean(x[80:] ** 2)) / float(np.mean(error**2)))
    assert snr > 45.0


def test_full_scale_input_saturates_instead_of_wrapping() -> None:
    for in_rate, out_rate in PAIRS:
        # A full-scale 100 Hz square wave: the Gibbs overshoot exceeds int16 and must clip at the rails.
        t_in = np.arange(in_rate // 5) / in_rate
        square = to_pcm16(np.where((t_in * 100) % 1.0 < 0.5, 32767.0, -32768.0))
        resampler = StreamingResampler(in_rate, out_rate)
        y = np.frombuffer(_stream(resampler, square), "<i2")
        t_out = np.arange(len(y)) / out_rate - resampler.delay_ms / 1000
        phase = (t_out * 100) % 1.0
        high = (phase > 0.15) & (phase < 0.35) & (t_out > 0)
        low = (phase > 0.65) & (phase < 0.85) & (t_out > 0)
        assert np.all(y[high] > 32000) and np.all(y[low] < -32000), (in_rate, out_rate)
        assert y.max() == 32767 and y.min() == -32768


def test_reset_forgets_history_and_equal_rates_pass_through() -> None:
    pcm = _tone(16000, 440, 20)
    fresh = StreamingResampler(16000, 8000).process(pcm)
    used = StreamingResampler(16000, 8000)
    used.process(_tone(16000, 3000, 40))
    assert used.process(pcm) != fresh
    used.reset()
    assert used.process(pcm) == fresh
    same = StreamingResampler(24000, 24000)
    frame = _tone(24000, 440, 20)
    assert same.process(frame) == frame
    assert same.delay_ms == 0.0


@pytest.mark.parametrize("size", [0, 2, 318, 322, 480, 641])
def test_frames_that_are_not_whole_10ms_raise(size: int) -> None:
    with pytest.raises(AudioError, match="10 ms"):
        StreamingResampler(16000, 8000).process(bytes(size))


@pytest.mark.parametrize(("in_rate", "out_rate"), [(44100, 48000), (8000, 22050), (12000, 8000), (0, 8000)])
def test_unsupported_live_rates_raise(in_rate: int, out_rate: int) -> None:
    with pytest.raises(AudioError, match="resample_pcm16"):
        StreamingResampler(in_rate, out_rate)


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(22050, 24000), (44100, 8000), (8000, 11025), (48000, 16000)]
)
def test_resample_pcm16_any_rates(in_rate: int, out_rate: int) -> None:
    pcm = _tone(in_rate, 1000, 1000)
    out = resample_pcm16(pcm, in_rate, out_rate)
    assert len(out) // 2 == math.ceil(len(pcm) // 2 * out_rate / in_rate)
    y = np.frombuffer(out, "<i2").astype(np.float64)[out_rate // 10 : out_rate // 10 + out_rate // 2]
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.argmax(spectrum) * out_rate / len(y) == pytest.approx(1000.0, abs=2 * out_rate / len(y))
    assert np.sqrt(np.mean(y**2)) == pytest.approx(10000 / math.sqrt(2), rel=0.01)
    # Zero-phase: the tone is where it was, not delayed.
    reference = 10000 * np.sin(
        2 * np.pi * 1000 * (np.arange(out_rate // 10, out_rate // 10 + len(y)) / out_rate)
    )
    assert np.max(np.abs(y - reference)) < 60


def test_resample_pcm16_rejects_aliases() -> None:
    # 10 kHz at 44.1 kHz would alias to 6 kHz at 16 kHz without the filter.
    out = np.frombuffer(resample_pcm16(_tone(44100, 10000, 500, 20000), 44100, 16000), "<i2")
    assert np.sqrt(np.mean(out[1600:-1600].astype(np.float64) ** 2)) < 20000 / math.sqrt(2) * 10 ** (-70 / 20)


def test_resample_pcm16_edge_cases() -> None:
    assert resample_pcm16(b"", 8000, 16000) == b""
    assert resample_pcm16(b"\x01\x02", 16000, 16000) == b"\x01\x02"
    with pytest.raises(AudioError):
        resample_pcm16(b"\x00\x00\x00", 8000, 16000)
    with pytest.raises(AudioError):
        resample_pcm16(b"\x00\x00", 0, 16000)
    with pytest.raises(AudioError):
        resample_pcm16(b"\x00\x00", 8000, -1)
