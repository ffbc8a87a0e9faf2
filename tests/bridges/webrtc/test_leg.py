"""WebRTCLeg and AgentAudioTrack: the outbound track's pacing and playout clock, and a real aiortc caller on
loopback (Opus both ways, the ``control`` data channel, in-band DTMF, the caller going away)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from fractions import Fraction

import aioice.ice
import aioice.stun
import numpy as np
import pytest
from av import AudioFrame, AudioResampler, CodecContext, Packet

from bridges.base import CallerAudio, CallerDtmf, Leg, LegHangup, PlaybackReport
from bridges.webrtc.caller import WebRTCCaller
from bridges.webrtc.leg import FRAME_BYTES, AgentAudioTrack, mono_pcm16_48k
from tests.bridges.webrtc.helpers import StallingMic, connected_pair
from voice.audio.dtmf import dtmf_tones
from voice.audio.resample import resample_pcm16
from voice.errors import LocalProtocolError

Speech = Callable[[str, int], bytes]


def tone(hz: float, ms: int, rate: int, level: float = 0.3) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * np.pi * hz * t) * level * 32767).astype("<i2").tobytes()


def rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


# -- the outbound track ------------------------------------------------------------------------------------


def test_track_prebuffers_one_frame_then_plays_in_order() -> None:
    track = AgentAudioTrack()
    assert track.take() is None  # nothing queued: silence
    track.enqueue(b"\x01" * FRAME_BYTES, "item_a", 20)
    assert track.take() is None  # a lone first frame waits one period for company
    track.enqueue(b"\x02" * FRAME_BYTES, "item_a", 40)
    first, second = track.take(), track.take()
    assert first is not None and second is not None
    assert (first.item_id, first.item_ms, second.item_ms) == ("item_a", 20, 40)
    assert track.take() is None and track.gaps == 1  # ran dry
    track.enqueue(b"\x03" * FRAME_BYTES, "item_b", 20)
    track.enqueue(b"\x04" * FRAME_BYTES, "item_b", 40)
    got = track.take()  # two queued: no wait
    assert got is not None and got.item_id == "item_b"


def test_track_clear_drops_everything_at_once() -> None:
    track = AgentAudioTrack()
    for n in range(10):
        track.enqueue(bytes(FRAME_BYTES), "item_a", 20 * (n + 1))
    assert track.take() is not None
    assert track.clear() == 9
    assert track.queued == 0 and track.dropped == 9
    assert track.take() is None


def test_track_refuses_wrong_frame_size_and_bounds_its_queue() -> None:
    track = AgentAudioTrack(max_frames=3)
    with pytest.raises(ValueError, match="1920"):
        track.enqueue(bytes(960), "item_a", 20)
    for n in range(5):
        track.enqueue(bytes(FRAME_BYTES), "item_a", 20 * (n + 1))
    assert track.queued == 3 and track.dropped == 2


async def test_track_recv_paces_frames_and_reports_what_left() -> None:
    """recv() returns a frame every 20 ms on an absolute grid; each agent frame is reported as it leaves,
    with the item position; silence follows when the queue is empty; timestamps are continuous."""
    reports: list[tuple[float, str, int]] = []
    track = AgentAudioTrack(lambda item, ms: reports.append((time.monotonic(), item, ms)), encode=False)
    for n in range(5):
        track.enqueue(tone(440, 20, 48000), "item_a", 20 * (n + 1))
    times: list[float] = []
    frames: list[AudioFrame] = []
    for _ in range(12):
        frame = await track.recv()
        assert isinstance(frame, AudioFrame)
        frames.append(frame)
        times.append(time.monotonic())
    grid = np.array(times) - times[0]
    assert np.max(np.abs(grid - 0.02 * np.arange(12))) < 0.012
    assert [f.pts for f in frames] == [960 * n for n in range(12)]
    assert all(f.sample_rate == 48000 and f.samples == 960 for f in frames)
    assert [(item, ms) for _, item, ms in reports] == [("item_a", 20 * n) for n in range(1, 6)]
    loud = [rms(mono_pcm16_48k(f)) > 0.1 for f in frames]
    assert loud == [True] * 5 + [False] * 7  # queued frames need no pre-buffer wait
    track.stop()


async def test_track_encodes_opus_packets_with_continuous_timestamps() -> None:
    """By default the track hands aiortc Opus packets (pts = frame index x 960) that decode to the audio."""
    track = AgentAudioTrack()
    for n in range(10):
        track.enqueue(tone(440, 20, 48000), "item_a", 20 * (n + 1))
    decoder = CodecContext.create("libopus", "r")
    decoded = b""
    for n in range(15):
        packet = await track.recv()
        assert isinstance(packet, Packet) and packet.pts == 960 * n
        assert packet.time_base == Fraction(1, 48000)
        for frame in decoder.decode(packet):
            decoded += mono_pcm16_48k(frame)
    track.stop()
    levels = [rms(decoded[i : i + FRAME_BYTES]) for i in range(0, len(decoded), FRAME_BYTES)]
    assert min(levels[1:9]) > 0.15 and max(levels[12:]) < 0.02  # the tone, then silence


def test_mono_mixes_stereo_and_resamples_other_rates() -> None:
    stereo = np.empty((1, 1920), dtype=np.int16)
    stereo[0, 0::2], stereo[0, 1::2] = 1000, 3000
    frame = AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
    frame.sample_rate = 48000
    assert set(np.frombuffer(mono_pcm16_48k(frame), dtype="<i2")) == {2000}
    resampler = AudioResampler(format="s16", layout="mono", rate=48000)
    total = 0
    for n in range(10):  # 8 kHz (a PCMU peer): 200 ms in, about 200 ms out (swresample keeps ~2 ms back)
        narrow = AudioFrame.from_ndarray(np.zeros((1, 160), dtype=np.int16), format="s16", layout="mono")
        narrow.sample_rate = 8000
        narrow.pts = 160 * n
        total += len(mono_pcm16_48k(narrow, resampler))
    assert 10 * 1920 - 400 <= total <= 10 * 1920


# -- a real caller on loopback ---------------------------------------------------------------------------


async def test_leg_implements_the_contract() -> None:
    async with connected_pair() as pair:
        leg = pair.leg
        assert isinstance(leg, Leg)
        assert leg.kind == "webrtc" and leg.codec == "pcm16_24k"
        assert leg.capabilities.reports_playback and not leg.capabilities.native_dtmf
        assert leg.metadata["transport"] == "webrtc"
        with pytest.raises(LocalProtocolError):
            await leg.send_dtmf("1")
        with pytest.raises(LocalProtocolError):
            await leg.transfer("sip:desk@example.com")


async def test_caller_speech_reaches_the_call_as_24k_pcm(speech: Speech) -> None:
    """Real speech through Opus (aiortc encodes as a browser would, stereo 48 kHz) arrives as contiguous
    24 kHz mono frames whose waveform matches the original."""
    spoken = speech("What are your opening hours?", 48000)
    async with connected_pair() as pair:
        pair.caller.mic.say(spoken)
        want_ms = len(spoken) // 96 + 400
        await pair.until(lambda: pair.leg.media_ms > want_ms, 15)
    audio = pair.of(CallerAudio)
    position = 0
    for event in audio:  # the media clock counts exactly the audio delivered
        assert event.media_ms == position
        position += len(event.audio) // 48
    received = np.frombuffer(pair.caller_audio(), dtype="<i2").astype(np.float64)
    reference = np.frombuffer(resample_pcm16(spoken, 48000, 24000), dtype="<i2").astype(np.float64)
    corr = np.correlate(received, reference, mode="valid")
    energy = np.convolve(received**2, np.ones(len(reference)), mode="valid")
    score = corr / np.sqrt(np.maximum(energy, 1.0) * np.dot(reference, reference))
    assert float(np.max(score)) > 0.8


async def test_inband_dtmf_tones_are_detected() -> None:
    async with connected_pair() as pair:
        pair.caller.mic.say(bytes(9600) + dtmf_tones("159#", 48000) + bytes(9600))
        await pair.until(lambda: len(pair.of(CallerDtmf)) >= 4, 10)
        await asyncio.sleep(0.3)
    assert "".join(d.digit for d in pair.of(CallerDtmf)) == "159#"
    starts = [d.media_ms for d in pair.of(CallerDtmf)]
    assert starts == sorted(starts) and starts[0] >= 100


async def test_keypad_errors_and_hangup_over_the_data_channel() -> None:
    async with connected_pair() as pair:
        caller = pair.caller
        await caller.wait_for(lambda: caller.channel is not None and caller.channel.readyState == "open")
        caller.press("7")
        caller.send("not json")
        caller.send({"type": "dtmf", "digit": "X"})
        caller.send({"type": "playback", "item_id": "item_a", "played_ms": 40})
        caller.send({"type": "dial"})
        errors = await caller.wait_for(lambda: len(caller.of_type("error")) >= 3 and caller.of_type("error"))
        assert [e["code"] for e in errors] == ["bad_json", "bad_field", "unknown_type"]
        caller.send({"type": "hangup"})
        await pair.until(lambda: pair.of(LegHangup))
    assert [d.digit for d in pair.of(CallerDtmf)] == ["7"]
    assert pair.leg.reports_ignored == 1
    assert pair.events[-1] == LegHangup("caller_hangup")


async def test_agent_audio_playout_clock_and_clear() -> None:
    """Frames played at the pacer's rate reach the caller and are reported as they leave the track; a clear
    drops the queue at once: no report after it, the page is told, the caller's audio goes quiet."""
    frame24 = tone(440, 20, 24000)
    async with connected_pair() as pair:
        leg, caller = pair.leg, pair.caller
        await caller.wait_for(lambda: caller.channel is not None and caller.channel.readyState == "open")
        start = time.monotonic()
        for n in range(25):  # half a second at real-time pace
            await leg.play(frame24, "item_a", 20 * (n + 1))
            await asyncio.sleep(max(0.0, start + 0.02 * (n + 1) - time.monotonic()))
        await pair.until(lambda: len(pair.of(PlaybackReport)) == 25, 2)
        assert [r.played_ms for r in pair.of(PlaybackReport)] == [20 * n for n in range(1, 26)]
        await caller.wait_for(lambda: caller.audio.loud_since(start, 0.05) >= 20, 3)
        for n in range(100):  # two seconds queued at once (a burst), then the caller barges in
            await leg.play(frame24, "item_b", 20 * (n + 1))
        await asyncio.sleep(0.3)
        cleared_at = time.monotonic()
        await leg.clear()
        heard = len(pair.of(PlaybackReport))
        await asyncio.sleep(0.6)
        assert len(pair.of(PlaybackReport)) <= heard + 1  # at most the frame leaving as clear() ran
        assert caller.of_type("clear")
        last_loud = caller.audio.last_loud(0.05)
        assert last_loud is not None and last_loud - cleared_at < 0.25
        b_reports = [r.played_ms for r in pair.of(PlaybackReport) if r.item_id == "item_b"]
        assert 200 <= b_reports[-1] <= 400  # about the 0.3 s that really left, not the 2 s queued
    assert leg.output_track.dropped >= 80


async def test_control_messages_are_held_until_the_channel_opens() -> None:
    caller = WebRTCCaller("http://127.0.0.1:9")
    async with connected_pair(caller=caller) as pair:
        leg = pair.leg
        await leg.send_control({"type": "call_start", "agent": "restaurant"})
        await leg.send_control({"type": "transcript", "role": "agent", "item_id": "item_a", "delta": "Hel"})
        await leg.send_control({"type": "barge_in"})  # nothing for the page
        await leg.send_control({"type": "call_end", "reason": "agent_end_call"})
        await leg.send_control({"type": "call_end", "reason": "agent_end_call"})
        await caller.wait_for(lambda: caller.of_type("call.ended"), 5)
        await asyncio.sleep(0.2)
    kinds = [m["type"] for _, m in caller.messages]
    assert kinds == ["call.started", "transcript.delta", "call.ended"]
    started = caller.of_type("call.started")[0]
    assert started["transport"] == "webrtc" and started["audio"]["format"] == "opus"
    assert started["call_id"] == pair.leg.call_id


async def test_hangup_says_call_ended_then_closes() -> None:
    async with connected_pair() as pair:
        caller = pair.caller
        await caller.wait_for(lambda: caller.channel is not None and caller.channel.readyState == "open")
        await pair.leg.hangup("agent_end_call")
        await caller.wait_for(lambda: caller.of_type("call.ended"), 5)
        assert caller.of_type("call.ended")[0]["reason"] == "agent_end_call"
        channel = caller.channel
        assert channel is not None
        await caller.wait_for(lambda: caller.pc.connectionState == "closed" or channel.readyState == "closed")
        await pair.leg.hangup("agent_end_call")  # idempotent
    assert pair.leg.closed


async def test_caller_going_away_ends_the_leg() -> None:
    async with connected_pair() as pair:
        await pair.caller.pc.close()
        await pair.until(lambda: pair.of(LegHangup), 10)
    assert pair.events[-1] == LegHangup("disconnected")


async def test_media_timeout_ends_a_call_whose_audio_stopped() -> None:
    caller = WebRTCCaller("http://127.0.0.1:9")
    caller.pc.getSenders()[0].replaceTrack(mic := StallingMic())
    caller.mic = mic
    async with connected_pair(caller=caller, media_timeout_s=1.0) as pair:
        await pair.until(lambda: pair.leg.media_ms > 500, 5)
        mic.stall.set()
        stalled = time.monotonic()
        await pair.until(lambda: pair.of(LegHangup), 5)
        assert 0.9 < pair.times[-1] - stalled < 3.0
    assert pair.events[-1] == LegHangup("media_timeout")


async def test_ice_consent_lost_mid_call_ends_the_leg(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's sockets vanish without a goodbye (no DTLS close): the leg's ICE consent checks (RFC 7675)
    fail and the connection closes, ending the leg (consent timing shortened for the test; the media
    timeout, set long here, would otherwise notice first)."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    monkeypatch.setattr(aioice.stun, "RETRY_RTO", 0.05)
    async with connected_pair(media_timeout_s=60) as pair:
        await asyncio.sleep(0.3)
        transport = pair.caller.pc.getSenders()[0].transport
        assert transport is not None
        for protocol in transport.transport._connection._protocols:
            protocol.transport.close()
        lost = time.monotonic()
        await pair.until(lambda: pair.of(LegHangup), 10)
        assert time.monotonic() - lost < 5
    assert pair.events[-1] == LegHangup("disconnected")


async def test_events_end_with_one_hangup_even_when_closed_twice() -> None:
    async with connected_pair() as pair:
        await pair.leg.close()
        await pair.leg.close()
        await pair.until(lambda: pair.of(LegHangup), 5)
        await asyncio.sleep(0.1)
    assert len(pair.of(LegHangup)) == 1
    assert pair.reader is not None and pair.reader.done()
