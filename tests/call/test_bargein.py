"""Barge-in with explicit times and real speech (DESIGN.md "Turn-taking and barge-in", protocols.md §C).

Agent and caller audio are synthesized speech (the ``speech`` fixture) encoded to the leg codec. The caller
starts talking at a known time; the local VAD must pause playout within ~60-100 ms, the upstream's
``speech_started`` turns that into clear + truncate, and a cough (100 ms) resumes playout where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from bridges.base import AudioCodec, frame_bytes, sample_rate
from voice.audio.g711 import alaw_decode, ulaw_decode
from voice.call.bargein import CallerSpeechDetector, PauseWindow
from voice.call.core import ClearLeg, Control, PlayFrame, SendUpstream
from voice.call.transcript import heard_text

from .test_core import (
    Sim,
    audio_delta,
    audio_done,
    encode,
    only,
    response_created,
    response_done,
    speech_started,
    speech_stopped,
    tone,
    transcript_delta,
    transcript_done,
)

Speech = Callable[[str, int], bytes]

AGENT_TEXT = (
    "Our opening hours are Tuesday to Sunday from noon until ten in the evening, "
    "and we are closed on Mondays."
)
CALLER_TEXT = "Actually, I want to book a table for four people."


def decode(frame: bytes, codec: AudioCodec) -> np.ndarray:
    if codec == "pcmu":
        pcm = ulaw_decode(frame)
    elif codec == "pcma":
        pcm = alaw_decode(frame)
    else:
        pcm = frame
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def gain(frame: bytes, codec: AudioCodec, db: float) -> bytes:
    """``frame`` attenuated by ``db`` dB, re-encoded in ``codec`` (what a line echo returns)."""
    pcm = np.clip(np.rint(decode(frame, codec) * 10 ** (db / 20)), -32768, 32767).astype("<i2").tobytes()
    return encode(pcm, codec)


def mix(a: bytes, b: bytes, codec: AudioCodec) -> bytes:
    pcm = np.clip(decode(a, codec) + decode(b, codec), -32768, 32767)
    return encode(np.rint(pcm).astype("<i2").tobytes(), codec)


def agent_speaking(sim: Sim, audio: bytes, text: str = AGENT_TEXT, item_id: str = "item_a") -> None:
    """The upstream generated a whole answer (faster than real time); the response is still active."""
    sim.up(
        response_created(),
        transcript_delta(item_id, text),
        audio_delta(item_id, audio),
        audio_done(item_id),
        transcript_done(item_id, text),
    )


def run_with_echo(
    sim: Sim, ms: int, *, delay_frames: int, db: float, caller: bytes | None = None
) -> list[int]:
    """Play ``ms``; each tick's frame comes back as caller audio ``delay_frames`` later at ``db`` dB, mixed
    with ``caller`` (real speech) when given. Returns the times playout was paused."""
    codec = sim.core.codec
    fb = frame_bytes(codec)
    played: list[bytes] = []
    paused_at: list[int] = []
    for step in range(ms // 20):
        frame = sim.tick()
        played += [a.frame for a in frame if isinstance(a, PlayFrame)]
        echo = gain(played[-1 - delay_frames], codec, db) if len(played) > delay_frames else bytes(fb)
        if codec == "pcmu" and len(played) <= delay_frames:
            echo = b"\xff" * fb
        if caller is not None and caller[step * fb : (step + 1) * fb]:
            echo = mix(echo, caller[step * fb : (step + 1) * fb], codec)
        actions = sim.core.caller_audio(echo, sim.now)
        sim.log += [(sim.now, a) for a in actions]
        if sim.metrics("bargein.paused") and len(paused_at) < len(sim.metrics("bargein.paused")):
            paused_at.append(sim.now)
        sim.now += 20
    return paused_at


def pause_time(sim: Sim) -> int:
    return next(t for t, a in sim.log if getattr(a, "name", None) == "bargein.paused")


# Real speech barge-in ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["pcmu", "pcma", "pcm16_24k"])
def test_real_speech_pauses_at_once_then_confirmation_clears_and_truncates(
    speech: Speech, codec: AudioCodec
) -> None:
    rate = sample_rate(codec)
    agent = encode(speech(AGENT_TEXT, rate), codec)
    caller = encode(speech(CALLER_TEXT, rate), codec)
    sim = Sim(codec=codec)
    agent_speaking(sim, agent)
    sim.run(1000)
    assert len(sim.frames()) == 50
    sim.run(600, caller=caller)
    paused = pause_time(sim)
    assert 1000 <= paused <= 1100  # 60 ms of voiced frames, no network round trip
    frames_at_pause = len(sim.frames())
    assert frames_at_pause == (paused - 1000) // 20 + 50
    assert sim.core.paused
    assert all(t < paused for t, a in sim.log if isinstance(a, PlayFrame))  # nothing played while paused
    # The upstream confirms 300 ms after the pause (server VAD + network).
    sim.now = paused + 300
    actions = sim.up(speech_started(ms=980))
    heard = frames_at_pause * 20
    assert isinstance(actions[0], ClearLeg)
    truncate = only(sim.upstream("conversation.item.truncate"))
    assert truncate["item_id"] == "item_a" and truncate["content_index"] == 0
    assert truncate["audio_end_ms"] == heard
    assert sim.upstream("response.cancel") == []  # the upstream cancels by itself (interrupt_response)
    barge = only(sim.entries("barge_in"))
    assert barge.data == {"item_id": "item_a", "heard_ms": heard, "cause": "speech"}
    assert barge.t_ms == paused + 300
    agent_turn = only(sim.entries("agent"))
    audio_ms = len(agent) // (frame_bytes(codec) // 20)
    assert agent_turn.data["interrupted"] is True and agent_turn.data["heard_ms"] == heard
    assert agent_turn.data["generated_text"] == AGENT_TEXT
    assert agent_turn.text == heard_text(AGENT_TEXT, heard, audio_ms)
    assert 0 < len(agent_turn.text) < len(AGENT_TEXT) // 2
    assert agent_turn.t_ms == 0
    assert Control({"type": "barge_in", "cause": "speech"}) in sim.all(Control)
    # Nothing more of the agent plays, and late audio of the cancelled response is dropped.
    sim.up(audio_delta("item_a", agent[:1600]), audio_delta("item_late", agent[:1600]))
    sim.run(400)
    assert len(sim.frames()) == frames_at_pause
    assert not sim.core.paused and not sim.core.agent_speaking


def test_response_cancel_is_sent_when_the_upstream_does_not_interrupt(speech: Speech) -> None:
    agent = encode(speech(AGENT_TEXT, 8000), "pcmu")
    sim = Sim(upstream_interrupts=False)
    agent_speaking(sim, agent)
    sim.run(500)
    actions = sim.up(speech_started())
    types = [a.event["type"] for a in actions if isinstance(a, SendUpstream)]
    assert types == ["conversation.item.truncate", "response.cancel"]


def test_no_cancel_when_the_response_already_finished(speech: Speech) -> None:
    agent = encode(speech(AGENT_TEXT, 8000), "pcmu")
    sim = Sim(upstream_interrupts=False)
    agent_speaking(sim, agent)
    sim.up(response_done())  # generated completely; only playback is left
    sim.run(500)
    sim.up(speech_started())
    assert sim.upstream("response.cancel") == []
    assert only(sim.upstream("conversation.item.truncate"))["audio_end_ms"] == 500


def test_speech_started_while_the_agent_is_silent_does_nothing() -> None:
    sim = Sim()
    assert sim.up(speech_started()) == []
    sim.up(response_created(), audio_delta("item_a", tone(100)), audio_done("item_a"), response_done())
    sim.run(200)
    assert sim.up(speech_started()) == []  # played to the end already
    assert sim.all(ClearLeg) == []


def test_cough_pauses_then_playout_resumes_where_it_stopped(speech: Speech) -> None:
    agent = encode(speech(AGENT_TEXT, 8000), "pcmu")
    voiced = speech("Ahh", 8000)
    start = next(
        i
        for i in range(0, len(voiced), 2)
        if abs(int.from_bytes(voiced[i : i + 2], "little", signed=True)) > 3000
    )
    start -= start % 320
    cough = encode(voiced[start : start + 1600], "pcmu")  # 100 ms burst
    sim = Sim(barge_in_window_ms=600)
    agent_speaking(sim, agent)
    sim.run(1000)
    sim.run(200, caller=cough)
    paused = pause_time(sim)
    assert 1000 <= paused < 1100
    frames_before = len(sim.frames())
    sim.run(paused + 600 - sim.now)  # silence from the caller (µ-law 0xFF is silence)
    assert len(sim.frames()) == frames_before
    assert sim.core.paused
    sim.run(20)  # the window ends: resume in the same tick
    assert not sim.core.paused
    assert only(sim.metrics("bargein.resumed")).value == 600
    sim.run(400)
    frames = sim.frames()
    assert [f.item_ms for f in frames] == [20 * (i + 1) for i in range(len(frames))]  # no gap, nothing lost
    assert b"".join(f.frame for f in frames) == agent[: len(frames) * 160]
    assert sim.all(ClearLeg) == [] and sim.upstream("conversation.item.truncate") == []


def test_speech_started_after_a_resume_still_barges_in(speech: Speech) -> None:
    agent = encode(speech(AGENT_TEXT, 8000), "pcmu")
    sim = Sim()
    agent_speaking(sim, agent)
    sim.run(300)
    sim.up(speech_started())
    assert only(sim.upstream("conversation.item.truncate"))["audio_end_ms"] == 300


# Echo -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["pcmu", "pcm16_24k"])
@pytest.mark.parametrize("delay_frames", [2, 5, 12])
def test_agent_echo_at_minus_10_db_does_not_pause(
    speech: Speech, codec: AudioCodec, delay_frames: int
) -> None:
    agent = encode(speech(AGENT_TEXT, sample_rate(codec)), codec)
    sim = Sim(codec=codec)
    agent_speaking(sim, agent)
    assert run_with_echo(sim, 4000, delay_frames=delay_frames, db=-10) == []
    assert len(sim.frames()) == 200


def test_real_speech_over_the_echo_still_pauses(speech: Speech) -> None:
    agent = encode(speech(AGENT_TEXT, 8000), "pcmu")
    caller = encode(speech(CALLER_TEXT, 8000), "pcmu")
    sim = Sim()
    agent_speaking(sim, agent)
    assert run_with_echo(sim, 1000, delay_frames=5, db=-10) == []
    paused = run_with_echo(sim, 400, delay_frames=5, db=-10, caller=caller)
    assert paused and paused[0] <= 1100


def test_echo_guard_only_applies_while_the_agent_is_audible(speech: Speech) -> None:
    detector = CallerSpeechDetector("pcmu", echo_tail_ms=600)
    agent = encode(speech(AGENT_TEXT, 8000), "pcmu")
    for i in range(50):
        detector.agent_played(agent[i * 160 : (i + 1) * 160], i * 20)
    assert detector.agent_audible(1000 + 580)
    assert not detector.agent_audible(1000 + 620)
    # The same audio the agent just played, fed back unattenuated, is never counted while audible...
    onsets = [detector.push(gain(agent[i * 160 : (i + 1) * 160], "pcmu", 0), 1000) for i in range(20, 40)]
    assert not any(onsets)
    assert detector.last_similarity is not None and detector.last_similarity > 0.95
    # ...but once the agent has been silent for the tail, it is ordinary speech.
    onsets = [detector.push(agent[i * 160 : (i + 1) * 160], 5000) for i in range(20, 40)]
    assert any(onsets)


def test_detector_needs_60ms_of_voiced_frames(speech: Speech) -> None:
    caller = speech(CALLER_TEXT, 8000)
    voiced = encode(caller, "pcmu")
    detector = CallerSpeechDetector("pcmu", min_speech_ms=60)
    results = []
    for i in range(6):
        results.append(detector.push(voiced[i * 160 : (i + 1) * 160], i * 20))
        assert detector.in_speech == any(results)
    assert results == [False, False, True, False, False, False]  # three frames, reported once per run


def test_detector_ignores_quiet_noise() -> None:
    rng = np.random.default_rng(1)
    noise = encode(np.rint(rng.normal(0, 30, 8000)).astype("<i2").tobytes(), "pcmu")  # about -60 dBFS
    detector = CallerSpeechDetector("pcmu", aggressiveness=0)
    assert not any(detector.push(noise[i : i + 160], i) for i in range(0, len(noise), 160))
    assert detector.last_level_dbfs < -50 or math.isinf(detector.last_level_dbfs)


def test_detector_accepts_any_chunk_size(speech: Speech) -> None:
    voiced = encode(speech(CALLER_TEXT, 8000), "pcmu")
    whole = CallerSpeechDetector("pcmu")
    pieces = CallerSpeechDetector("pcmu")
    assert whole.push(voiced[:1600], 0)
    onset = False
    for i in range(0, 1600, 37):
        onset = pieces.push(voiced[i : min(i + 37, 1600)], 0) or onset
    assert onset


def test_pause_window() -> None:
    window = PauseWindow(600)
    assert not window.active and not window.expired(10_000) and window.stop(0) is None
    window.start(1000)
    assert window.active and not window.expired(1599) and window.expired(1600)
    assert window.stop(1300) == 300 and not window.active


# Truncation: which item and how much ------------------------------------------------------------------------


def test_truncation_names_the_item_playing_not_the_last_received() -> None:
    """protocols.md §C.2 pitfall: a short preamble queued ahead of the answer."""
    sim = Sim()
    sim.up(
        response_created(),
        transcript_done("item_pre", "Sure."),
        audio_delta("item_pre", tone(300)),
        audio_done("item_pre"),
        transcript_done("item_ans", "We have a table at eight."),
        audio_delta("item_ans", tone(3000)),
    )
    sim.run(200)
    sim.up(speech_started())
    truncates = sim.upstream("conversation.item.truncate")
    assert [(t["item_id"], t["audio_end_ms"]) for t in truncates] == [("item_pre", 200), ("item_ans", 0)]
    barge = only(sim.entries("barge_in"))
    assert barge.data["item_id"] == "item_pre" and barge.data["heard_ms"] == 200
    agent_turn = only(sim.entries("agent"))  # the answer was never heard: no agent turn for it
    assert agent_turn.data["item_id"] == "item_pre" and agent_turn.data["interrupted"]


def test_truncation_after_the_preamble_finished_names_the_answer() -> None:
    sim = Sim()
    sim.up(
        response_created(),
        transcript_done("item_pre", "Sure."),
        audio_delta("item_pre", tone(300)),
        audio_done("item_pre"),
        transcript_done("item_ans", "We have a table at eight."),
        audio_delta("item_ans", tone(3000)),
    )
    sim.run(800)  # 300 ms preamble + 500 ms of the answer
    sim.up(speech_started())
    truncate = only(sim.upstream("conversation.item.truncate"))
    assert (truncate["item_id"], truncate["audio_end_ms"]) == ("item_ans", 500)
    assert [(e.text, e.data["interrupted"]) for e in sim.entries("agent")] == [
        ("Sure.", False),
        ("We", True),
    ]


def test_truncation_uses_the_legs_playout_clock_clamped_to_what_was_sent() -> None:
    sim = Sim(reports_playback=True)
    sim.up(response_created(), audio_delta("item_a", tone(2000)))
    sim.run(1000)  # 1000 ms sent
    sim.report("item_a", 860)  # the leg has played 860 ms of it
    sim.up(speech_started())
    assert only(sim.upstream("conversation.item.truncate"))["audio_end_ms"] == 860

    sim = Sim(reports_playback=True)
    sim.up(response_created(), audio_delta("item_a", tone(2000)))
    sim.run(400)
    sim.report("item_a", 9999)  # a confused leg: never more than was sent
    sim.up(speech_started())
    assert only(sim.upstream("conversation.item.truncate"))["audio_end_ms"] == 400


def test_truncation_of_a_partially_received_item_never_exceeds_received_audio() -> None:
    sim = Sim()
    sim.up(response_created(), audio_delta("item_a", tone(100)))  # generation is still running
    sim.run(400)  # underrun after 100 ms
    sim.up(speech_started())
    assert only(sim.upstream("conversation.item.truncate"))["audio_end_ms"] == 100


def test_barge_in_while_paused_with_reporting_leg_truncates_at_reported_position(speech: Speech) -> None:
    agent = encode(speech(AGENT_TEXT, 8000), "pcmu")
    caller = encode(speech(CALLER_TEXT, 8000), "pcmu")
    sim = Sim(reports_playback=True)
    agent_speaking(sim, agent)
    sim.run(1000)
    sim.report("item_a", 900)
    sim.run(200, caller=caller)
    assert sim.core.paused
    sim.up(speech_started())
    assert only(sim.upstream("conversation.item.truncate"))["audio_end_ms"] == 900


def test_a_new_response_after_barge_in_plays() -> None:
    sim = Sim()
    sim.up(response_created("resp_1"), audio_delta("item_a", tone(1000)))
    sim.run(200)
    sim.up(speech_started(), speech_stopped())
    sim.up(response_done("resp_1", status="cancelled"))
    sim.up(
        response_created("resp_2"),
        audio_delta("item_b", tone(100), rid="resp_2"),
        audio_done("item_b", rid="resp_2"),
    )
    sim.run(200)
    assert [f.item_id for f in sim.frames()][-5:] == ["item_b"] * 5


def test_filtered_echo_does_not_pause(speech: Speech) -> None:
    """A hybrid does not return a clean copy: a short dispersive filter, 10 dB down, 80 ms late."""
    agent_pcm = speech(AGENT_TEXT, 8000)
    agent = encode(agent_pcm, "pcmu")
    taps = np.array([0.0, 0.5, -0.3, 0.2, -0.1, 0.05])
    samples = np.frombuffer(ulaw_decode(agent), dtype="<i2").astype(np.float64)
    echo_pcm = np.convolve(samples, taps)[: len(samples)] * 10 ** (-10 / 20)
    echo = np.concatenate((np.zeros(640), echo_pcm))[: len(samples)]
    caller = encode(np.rint(echo).astype("<i2").tobytes(), "pcmu")
    sim = Sim()
    agent_speaking(sim, agent)
    sim.run(4000, caller=caller)
    assert sim.metrics("bargein.paused") == []
    assert len(sim.frames()) == 200


@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
def test_quiet_g711_frames_skip_decoding_with_the_same_verdict(codec: str) -> None:
    """The peak pre-gate never changes a verdict: frames just under and just over the level gate."""
    from voice.audio.g711 import alaw_encode, ulaw_encode
    from voice.call.bargein import CallerSpeechDetector

    encode = ulaw_encode if codec == "pcmu" else alaw_encode
    detector = CallerSpeechDetector(codec, min_level_dbfs=-50.0)  # type: ignore[arg-type]
    assert detector._quiet is not None
    rng = np.random.default_rng(3)
    for amplitude in (0, 20, 60, 100, 104, 110, 150, 400, 3000):
        pcm = (rng.uniform(-1, 1, 160) * amplitude).astype("<i2").tobytes()
        frame = encode(pcm)
        fast = detector._frame_counts(frame, 0)
        quiet, detector._quiet = detector._quiet, None
        slow = detector._frame_counts(frame, 0)
        detector._quiet = quiet
        assert fast == slow, amplitude
