"""Outbound SIP calls at the user agent: the outcome of calls that fail, early media, and re-INVITEs without
SDP, against SIPp as a real peer on 127.0.0.1; the pure parts (outcome table, early-media classifier) on
their own."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bridges.base import CallerAudio, LegEvent, LegHangup
from bridges.sip.early_media import EarlyMedia, is_tone
from bridges.sip.sdp import NegotiatedMedia
from bridges.sip.settings import SipSettings
from bridges.sip.transaction import TimerConfig
from bridges.sip.ua import SipCall, SipCallFailed, UserAgent, call_outcome
from tests.bridges.sip.sipp import SCENARIOS, free_even_port, free_udp_port, needs_sipp, run_sipp, sipp_uas
from tests.bridges.sip.test_ua import FakeApp, user_agent
from voice.audio.g711 import ulaw_decode, ulaw_encode
from voice.audio.resample import resample_pcm16

IVR_PROMPT = "Thank you for calling. For sales press one. For support press two."


def tone_pcm(ms: int, freqs: tuple[float, ...], amplitude: int = 3000) -> bytes:
    """A steady single or dual tone as 8 kHz PCM16 (through G.711 µ-law, as it arrives on a line)."""
    n = np.arange(8 * ms)
    wave = sum(amplitude * np.sin(2 * np.pi * f * n / 8000) for f in freqs)
    return ulaw_decode(ulaw_encode(np.asarray(wave, dtype="<i2").tobytes()))


def frames(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + 320] for i in range(0, len(pcm) - 319, 320)]


@pytest.fixture
def prompt_pcm(speech: Callable[[str, int], bytes]) -> bytes:
    """The IVR prompt as 8 kHz PCM16 through µ-law."""
    return ulaw_decode(ulaw_encode(resample_pcm16(speech(IVR_PROMPT, 16000), 16000, 8000)))


# -- pure: the outcome of a call that was not answered -------------------------------------------------


@pytest.mark.parametrize(
    ("status", "ring_timeout", "rang", "outcome"),
    [
        (486, False, True, "busy"),
        (600, False, True, "busy"),
        (480, False, False, "no_answer"),
        (408, False, True, "no_answer"),  # the far end gave up on a ringing phone
        (408, False, False, "failed"),  # nothing answered at all: unreachable
        (487, True, True, "no_answer"),  # our ring timeout CANCELled it
        (408, True, True, "no_answer"),
        (487, False, True, "canceled"),
        (603, False, True, "rejected"),
        (607, False, False, "rejected"),
        (608, False, False, "rejected"),
        (401, False, False, "failed"),
        (407, False, False, "failed"),
        (403, False, False, "failed"),
        (404, False, False, "failed"),
        (488, False, True, "failed"),
        (503, False, False, "failed"),
    ],
)
def test_call_outcome(status: int, ring_timeout: bool, rang: bool, outcome: str) -> None:
    assert call_outcome(status, ring_timeout=ring_timeout, provisional=rang) == outcome


# -- pure: which early media the agent hears ------------------------------------------------------------


@pytest.mark.parametrize(
    "freqs",
    [(440.0, 480.0), (400.0, 450.0), (425.0,), (450.0,), (480.0, 620.0), (350.0, 440.0), (913.8,), (1776.7,)],
)
def test_call_progress_tones_are_tones(freqs: tuple[float, ...]) -> None:
    """Ringback (US, UK, Europe), busy, dial tone and SIT tones: every frame is a tone."""
    assert all(is_tone(frame) for frame in frames(tone_pcm(400, freqs)))
    assert is_tone(bytes(320))  # digital silence: nothing to hear


def test_speech_is_not_a_tone(prompt_pcm: bytes) -> None:
    voiced = [f for f in frames(prompt_pcm) if max(abs(s) for s in struct.unpack("<160h", f)) > 2000]
    not_tones = sum(not is_tone(f) for f in voiced)
    assert not_tones > 0.8 * len(voiced)


def push_all(early: EarlyMedia, pcm: bytes) -> None:
    for frame in frames(pcm):
        early.push(ulaw_encode(frame), frame)


def test_ringback_alone_gives_the_call_nothing() -> None:
    early = EarlyMedia()
    for _ in range(3):  # US ringback cadence: 2 s on, 4 s off
        push_all(early, tone_pcm(2000, (440.0, 480.0)) + bytes(2 * 8 * 4000))
    assert early.frames() == []
    summary = early.summary()
    assert summary.received_ms == 18_000 and summary.delivered_ms == 0 and summary.speech_ms == 0


def test_announcement_after_ringback_is_kept_from_its_start(prompt_pcm: bytes) -> None:
    """2 s of ringback, 1 s of silence, then the IVR prompt: the call gets the prompt and 300 ms before it."""
    early = EarlyMedia()
    ringback = tone_pcm(2000, (440.0, 480.0)) + bytes(2 * 8 * 1000)
    push_all(early, ringback + prompt_pcm)
    kept = early.frames()
    lead = next(i for i, f in enumerate(frames(prompt_pcm)) if not is_tone(f) and max(f) > 0)
    prompt_frames = len(frames(prompt_pcm))
    assert prompt_frames - lead <= len(kept) <= prompt_frames - lead + 15 + 1
    assert kept[-1] == ulaw_encode(frames(prompt_pcm)[-1])  # through to the end
    assert early.summary().delivered_ms == 20 * len(kept)


def test_early_media_is_bounded(prompt_pcm: bytes) -> None:
    early = EarlyMedia(max_ms=1000)
    push_all(early, prompt_pcm)
    assert len(early.frames()) <= 50
    assert early.summary().received_ms == 20 * len(frames(prompt_pcm))


# -- against SIPp ---------------------------------------------------------------------------------------


def final_response_scenario(directory: Path, status: int, reason: str) -> Path:
    """``uas_final_response.xml`` refusing with ``status reason`` instead of 486 Busy Here."""
    text = (SCENARIOS / "uas_final_response.xml").read_text(encoding="iso-8859-1")
    path = directory / f"uas_final_{status}.xml"
    text = text.replace("SIP/2.0 486 Busy Here", f"SIP/2.0 {status} {reason}")
    path.write_text(text, encoding="iso-8859-1")
    return path


@needs_sipp
async def test_failed_outbound_calls_carry_their_outcome(tmp_path: Path) -> None:
    """The callee rings, then refuses: the SIP status and reason come back with the outcome to record."""
    cases = [("486", "Busy Here", "busy"), ("603", "Decline", "rejected"), ("404", "Not Found", "failed")]
    async with user_agent(FakeApp()) as ua:
        for status, reason, outcome in cases:
            scenario = final_response_scenario(tmp_path, int(status), reason)
            async with sipp_uas(scenario, tmp_path) as uas:
                with pytest.raises(SipCallFailed) as failed:
                    await ua.invite(uas.uri())
                code, err = await uas.finish()
                assert code == 0, err  # SIPp got its ACK
            assert (failed.value.status_code, failed.value.reason) == (int(status), reason)
            assert failed.value.outcome == outcome


@needs_sipp
async def test_wrong_trunk_credentials_fail_without_a_retry_loop(tmp_path: Path) -> None:
    async with sipp_uas("uas_trunk_wrong_password.xml", tmp_path) as uas:
        trunk = {"uri": f"sip:127.0.0.1:{uas.port}", "username": "trunkuser", "password": "wrong"}
        async with user_agent(FakeApp(), trunk=trunk) as ua:
            with pytest.raises(SipCallFailed) as failed:
                await ua.invite("sip:+15551230000@carrier.invalid")
            code, err = await uas.finish()
    assert code == 0, err
    assert failed.value.status_code == 401 and failed.value.outcome == "failed"
    assert "authentication failed" in failed.value.reason


async def test_unreachable_callee_fails() -> None:
    """Nothing listens at the target: Timer B ends the INVITE with 408 and the call ``failed`` (with short
    timers: T1 = 20 ms, so 64*T1 = 1.3 s)."""
    rtp = free_even_port()
    settings = SipSettings(port=0, rtp_port_min=rtp, rtp_port_max=rtp + 10)
    ua = UserAgent(settings, FakeApp(), host="127.0.0.1", timers=TimerConfig(t1=20.0, t2=160.0))
    await ua.start()
    try:
        with pytest.raises(SipCallFailed) as failed:
            await ua.invite(f"sip:nobody@127.0.0.1:{free_udp_port()}")
    finally:
        await ua.close()
    assert failed.value.status_code == 408 and failed.value.outcome == "failed"


@needs_sipp
async def test_early_media_reaches_the_call(tmp_path: Path, prompt_pcm: bytes) -> None:
    """SIPp answers 183 with SDP and plays 0.6 s of ringback then an IVR prompt before its 200: the leg
    hands the prompt (not the ringback) to the call first, then the live audio."""
    ringback = tone_pcm(600, (440.0, 480.0))
    early_pcm = (ringback + prompt_pcm)[: 2 * 8 * 2400]  # what fits in the 2.5 s before the 200
    (tmp_path / "early.ulaw").write_bytes(ulaw_encode(early_pcm))
    (tmp_path / "live.ulaw").write_bytes(ulaw_encode(tone_pcm(1000, (1000.0,))))
    app = FakeApp()
    async with user_agent(app) as ua, sipp_uas("uas_early_media_answer.xml", tmp_path) as uas:
        call = await ua.invite(uas.uri("ivr"))
        assert call.media is not None and call.media.codec.name == "PCMU"
        await app.answered(call)
        code, err = await uas.finish()
        assert code == 0, err
        leg = app.legs[0]
        await asyncio.wait_for(app.done[leg.call_id].wait(), 5)
    events = app.events[leg.call_id]
    assert isinstance(events[-1], LegHangup) and events[-1].reason == "caller_hangup"
    audio = [e for e in events if isinstance(e, CallerAudio)]
    summary = call.rtp.early_media
    assert summary is not None
    assert 2000 <= summary.received_ms <= 3000  # the stream ran while the call rang
    early = audio[: summary.delivered_ms // 20]
    assert all(e.media_ms == 0 for e in early)  # before the call's media clock
    assert audio[len(early)].media_ms == 0 and audio[len(early) + 1].media_ms == 20  # then the live clock
    # the ringback was left out, the prompt kept: about (2.4 s - 0.6 s) plus the 300 ms pre-roll
    assert 1400 <= summary.delivered_ms <= summary.received_ms - 200, summary
    heard = b"".join(ulaw_decode(e.audio) for e in early)
    spoken = [f for f in frames(heard) if not is_tone(f)]
    assert len(spoken) > 0.6 * len(early)


class MediaApp(FakeApp):
    """Records every media change the SIP layer reports on each answered call."""

    def __init__(self) -> None:
        super().__init__()
        self.media: list[NegotiatedMedia] = []

    async def answered(self, call: SipCall) -> None:
        await super().answered(call)
        on_media = call.on_media  # the leg's

        def seen(media: NegotiatedMedia) -> None:
            self.media.append(media)
            on_media(media)

        call.on_media = seen


@needs_sipp
async def test_reinvite_without_sdp_takes_the_answer_from_the_ack(tmp_path: Path) -> None:
    """Re-INVITEs without SDP: our offer goes in the 200 (the codec in use only, checked by SIPp) and the
    answer in the ACK is applied: hold (we only receive), then resume on a new port; an offer without
    the codec in use gets 488 and changes nothing."""
    app = MediaApp()
    async with user_agent(app) as ua:
        result = await run_sipp("uac_reinvite_no_sdp.xml", f"127.0.0.1:{ua.port}", tmp_path)
        assert result.ok, result.stderr + result.messages[-4000:]
        leg = app.legs[0]
        await asyncio.wait_for(app.done[leg.call_id].wait(), 5)
    origins = [line.split()[1:3] for line in result.messages.splitlines() if line.startswith("o=voice ")]
    assert len({session for session, _version in origins}) == 1  # one session id (RFC 4566 §5.2)
    versions = [int(version) for _session, version in origins]
    assert versions == sorted(versions) and len(set(versions)) == 3  # answer, then two offers
    assert [m.direction for m in app.media] == ["recvonly", "sendrecv"]
    assert app.media[-1].remote_port == 6000
    assert all(m.codec.name == "PCMU" for m in app.media)
    events: list[LegEvent] = app.events[leg.call_id]
    assert isinstance(events[-1], LegHangup)
