"""WebRTC VAD wrapper and the server_vad segmenter, on real synthesized speech and generated signals."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice.audio.pcm import to_pcm16
from voice.audio.vad import SpeechStarted, SpeechStopped, Vad, VadEvent, VadSegmenter
from voice.errors import AudioError

Speech = Callable[[str, int], bytes]

SENTENCE = "Hello, I would like to book a table for two at seven tonight."


def silence(ms: int, rate: int) -> bytes:
    return bytes(2 * rate * ms // 1000)


def speech_bounds_ms(pcm: bytes, rate: int, offset_ms: int) -> tuple[int, int]:
    """First and last sample above -50 dBFS, in ms, shifted by ``offset_ms``."""
    loud = np.nonzero(np.abs(np.frombuffer(pcm, "<i2")) > 100)[0]
    return offset_ms + int(loud[0]) * 1000 // rate, offset_ms + int(loud[-1]) * 1000 // rate


def push_in_chunks(segmenter: VadSegmenter, pcm: bytes, chunk_bytes: int) -> list[tuple[VadEvent, int]]:
    """Events with the segmenter's position when each came out."""
    out: list[tuple[VadEvent, int]] = []
    for i in range(0, len(pcm), chunk_bytes):
        out += [(event, segmenter.position_ms) for event in segmenter.push(pcm[i : i + chunk_bytes])]
    return out


# --- Vad -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 32000, 48000])
def test_vad_tells_speech_from_silence(rate: int, speech: Speech) -> None:
    vad = Vad(rate, aggressiveness=2)
    frame = 2 * rate * 20 // 1000
    pcm = speech(SENTENCE, rate)
    frames = [pcm[i : i + frame] for i in range(0, len(pcm) - frame + 1, frame)]
    voiced = sum(vad.is_speech(f) for f in frames)
    assert voiced > 0.6 * len(frames)
    after = [vad.is_speech(bytes(frame)) for _ in range(50)]  # the detector has a hangover after speech
    assert not any(after[-30:])
    assert not any(Vad(rate).is_speech(bytes(frame)) for _ in range(20))


@pytest.mark.parametrize("ms", [10, 20, 30])
def test_vad_accepts_the_three_frame_sizes(ms: int) -> None:
    vad = Vad(16000, 3)
    assert vad.is_speech(bytes(2 * 16 * ms)) is False


@pytest.mark.parametrize("size", [0, 318, 322, 480, 1280, 2 * 16 * 40])
def test_vad_rejects_other_frame_sizes(size: int) -> None:
    with pytest.raises(AudioError, match="10, 20 or 30 ms"):
        Vad(16000).is_speech(bytes(size))


@pytest.mark.parametrize("rate", [24000, 22050, 44100, 0])
def test_vad_rejects_unsupported_rates(rate: int) -> None:
    with pytest.raises(AudioError, match="Hz"):
        Vad(rate)


@pytest.mark.parametrize("aggressiveness", [-1, 4, 2.5])
def test_vad_rejects_bad_aggressiveness(aggressiveness: int) -> None:
    with pytest.raises(AudioError, match="aggressiveness"):
        Vad(16000, aggressiveness)


# --- VadSegmenter ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_segmenter_finds_one_utterance_with_padding(rate: int, speech: Speech) -> None:
    pcm = speech(SENTENCE, rate)
    onset, offset = speech_bounds_ms(pcm, rate, 1000)
    segmenter = VadSegmenter(rate, threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    events = push_in_chunks(segmenter, silence(1000, rate) + pcm + silence(1500, rate), 2 * rate // 50)
    assert [type(e) for e, _ in events] == [SpeechStarted, SpeechStopped]
    (started, seen_at), (stopped, stopped_at) = events
    assert isinstance(started, SpeechStarted) and isinstance(stopped, SpeechStopped)
    assert onset - 300 - 20 <= started.audio_start_ms <= onset - 300 + 80
    assert seen_at - started.audio_start_ms <= 300 + 60 + 100  # reported soon after the onset
    assert offset + 500 - 60 <= stopped.audio_end_ms <= offset + 500 + 200
    assert stopped.audio_end_ms == stopped_at  # reported as soon as the silence is confirmed
    assert not segmenter.in_speech
    assert segmenter.position_ms == 1000 + len(pcm) * 1000 // (2 * rate) + 1500


def test_segmenter_result_does_not_depend_on_chunking(speech: Speech) -> None:
    pcm = silence(700, 16000) + speech(SENTENCE, 16000) + silence(900, 16000)
    reference = [e for e, _ in push_in_chunks(VadSegmenter(16000), pcm, 640)]
    for chunk in (2, 226, 999 * 2, 4800, len(pcm)):
        assert [e for e, _ in push_in_chunks(VadSegmenter(16000), pcm, chunk)] == reference


def test_two_utterances_and_a_short_pause(speech: Speech) -> None:
    rate = 16000
    words = speech("Yes.", rate)
    long_gap = silence(800, rate) + words + silence(1200, rate) + words + silence(800, rate)
    events = [e for e, _ in push_in_chunks(VadSegmenter(rate, silence_duration_ms=500), long_gap, 640)]
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped] * 2
    short_gap = silence(800, rate) + words + silence(200, rate) + words + silence(800, rate)
    events = [e for e, _ in push_in_chunks(VadSegmenter(rate, silence_duration_ms=500), short_gap, 640)]
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]


def test_prefix_padding_is_clamped_at_zero(speech: Speech) -> None:
    segmenter = VadSegmenter(16000, prefix_padding_ms=300)
    events = segmenter.push(silence(100, 16000) + speech(SENTENCE, 16000) + silence(800, 16000))
    assert events[0] == SpeechStarted(0)


def test_clicks_and_knocks_do_not_start_speech() -> None:
    rate = 16000
    rng = np.random.default_rng(3)
    audio = np.zeros(rate * 3)
    for start in range(rate // 5, len(audio) - rate // 10, rate // 4):
        audio[start : start + 40] = rng.uniform(-30000, 30000, 40)  # 2.5 ms full-scale click
        knock = np.arange(320) / rate
        audio[start + 2000 : start + 2320] += 20000 * np.exp(-knock * 400) * np.sin(2 * np.pi * 180 * knock)
    for threshold in (0.0, 0.5, 1.0):
        segmenter = VadSegmenter(rate, threshold=threshold)
        assert segmenter.push(to_pcm16(audio)) == []
        assert not segmenter.in_speech


def test_quiet_noise_is_gated_out() -> None:
    rate = 8000
    noise = to_pcm16(np.random.default_rng(5).normal(0, 100, rate * 5))  # about -50 dBFS
    assert VadSegmenter(rate, threshold=0.5).push(noise) == []


def test_threshold_mapping() -> None:
    expected = {0.0: (0, -55.0), 0.3: (1, -46.0), 0.5: (2, -40.0), 0.8: (3, -31.0), 1.0: (3, -25.0)}
    for threshold, (aggressiveness, gate) in expected.items():
        segmenter = VadSegmenter(16000, threshold=threshold)
        assert segmenter.aggressiveness == aggressiveness
        assert segmenter.gate_dbfs == pytest.approx(gate)


def test_high_threshold_ignores_speech_below_its_gate(speech: Speech) -> None:
    quiet = to_pcm16(np.frombuffer(speech(SENTENCE, 16000), "<i2") * 0.05)  # about -44 dBFS
    pcm = silence(500, 16000) + quiet + silence(800, 16000)
    assert [type(e) for e in VadSegmenter(16000, threshold=0.2).push(pcm)] == [SpeechStarted, SpeechStopped]
    assert VadSegmenter(16000, threshold=0.9).push(pcm) == []


def test_position_reset_and_partial_frames(speech: Speech) -> None:
    segmenter = VadSegmenter(16000, frame_ms=30)
    assert segmenter.push(bytes(2 * 16 * 25)) == []  # 25 ms: no complete 30 ms frame yet
    assert segmenter.position_ms == 25
    segmenter.push(speech(SENTENCE, 16000)[: 2 * 16 * 800])
    assert segmenter.in_speech
    position = segmenter.position_ms
    segmenter.reset()
    assert not segmenter.in_speech and segmenter.position_ms == position
    segmenter.reset(position_ms=10_000)
    events = segmenter.push(silence(200, 16000) + speech(SENTENCE, 16000) + silence(700, 16000))
    assert isinstance(events[0], SpeechStarted) and 9_900 <= events[0].audio_start_ms <= 10_000
    assert segmenter.position_ms > 10_000 + 3_000
    with pytest.raises(AudioError):
        segmenter.reset(position_ms=-1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 11025},
        {"sample_rate": 16000, "frame_ms": 15},
        {"sample_rate": 16000, "threshold": 1.5},
        {"sample_rate": 16000, "threshold": -0.1},
        {"sample_rate": 16000, "prefix_padding_ms": -1},
        {"sample_rate": 16000, "silence_duration_ms": -5},
    ],
)
def test_segmenter_rejects_bad_settings(kwargs: dict[str, int | float]) -> None:
    with pytest.raises(AudioError):
        VadSegmenter(**kwargs)  # type: ignore[arg-type]


def test_segmenter_rejects_odd_length() -> None:
    with pytest.raises(AudioError, match="16-bit"):
        VadSegmenter(16000).push(b"\x00\x01\x02")


@given(st.lists(st.binary(max_size=1500), max_size=12), st.sampled_from([8000, 16000, 24000]))
@settings(max_examples=60, deadline=None)
def test_segmenter_never_raises_on_even_bytes_and_events_alternate(chunks: list[bytes], rate: int) -> None:
    segmenter = VadSegmenter(rate, threshold=0.0, silence_duration_ms=40, min_speech_ms=20)
    events: list[VadEvent] = []
    for chunk in chunks:
        events += segmenter.push(chunk[: len(chunk) // 2 * 2])
    for i, event in enumerate(events):
        assert isinstance(event, SpeechStarted if i % 2 == 0 else SpeechStopped)
    assert segmenter.in_speech == (len(events) % 2 == 1)


@given(st.binary(min_size=1, max_size=999).filter(lambda b: len(b) % 2 == 1))
def test_odd_lengths_always_raise_and_keep_the_timeline(pcm: bytes) -> None:
    segmenter = VadSegmenter(8000)
    segmenter.push(bytes(2 * 8 * 35))
    with pytest.raises(AudioError):
        segmenter.push(pcm)
    assert segmenter.position_ms == 35
