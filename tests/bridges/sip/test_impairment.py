"""Loss and reordering injected between the peers (issue 5 §4): SIPp calls the real ``voice serve`` (local
engine, recognition off) through the UDP impairment proxy of :mod:`tests.bridges.sip.impair`.

SIP loses a quarter of its datagrams (and the first transmission of the INVITE, of its 200, of the ACK and
of the BYE every time), so the call only completes if the timers retransmit: SIPp's timer A (INVITE) and E
(BYE), the service's 2xx retransmission until the ACK arrives (RFC 3261 §13.3.1.4) and its transactions
answering the retransmitted requests. RTP loses 5 %, reorders 5 % and duplicates 2 % both ways: the
caller's speech, the RFC 4733 keys and the agent's audio still get through. The proxy rewrites the SDP so
that the media go through it too (see its docstring). Everything is seeded: the same datagrams meet the
same fate on every run (about 17 s, most of it the scripted call).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bridges.sip.rtp import RtpPacket
from tests.bridges.sip.impair import Impairment, ImpairmentProxy, rewrite_contact, rewrite_sdp, sip_kind
from tests.bridges.sip.sipp import free_even_port, free_udp_port, needs_sipp, run_sipp
from tests.servicehelp import ServiceProcess, service_env, start_service
from voice.audio.g711 import ulaw_decode, ulaw_encode
from voice.audio.resample import resample_pcm16

SEED = 4733
SIP_IMPAIRMENT = Impairment(
    loss=0.25,
    duplicate=0.05,
    reorder=0.10,
    drop_first=frozenset({"INVITE", "200 INVITE", "ACK", "BYE"}),
)
RTP_IMPAIRMENT = Impairment(loss=0.05, duplicate=0.02, reorder=0.05, reorder_depth=2, hold_ms=60)


@pytest.fixture
def speech_ulaw(tmp_path: Path, speech: Callable[[str, int], bytes]) -> Path:
    """The caller's speech for SIPp's ``rtp_stream`` (headerless 8 kHz µ-law in its working directory)."""
    pcm16k = speech("Hello, I would like to book a table for two tonight.", 16000)
    path = tmp_path / "speech.ulaw"
    path.write_bytes(ulaw_encode(resample_pcm16(pcm16k, 16000, 8000)))
    return path


@contextlib.contextmanager
def sip_service(home: Path) -> Iterator[tuple[ServiceProcess, int]]:
    sip_port = free_udp_port()
    rtp = free_even_port()
    extra = {"VOICE_SIP__RTP_PORT_MIN": str(rtp), "VOICE_SIP__RTP_PORT_MAX": str(rtp + 20)}
    service = start_service(home, "--no-asr", "--sip-port", str(sip_port), env=service_env(home, **extra))
    try:
        yield service, sip_port
    finally:
        service.stop()


async def ended_sip_call(service: ServiceProcess, timeout_s: float = 15.0) -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            listing = (await client.get(f"{service.base}/api/calls", params={"leg": "sip"})).json()
            calls = listing["calls"] if isinstance(listing, dict) else listing
            ended = [c for c in calls if c.get("status") == "ended"]
            if ended:
                detail = await client.get(f"{service.base}/api/calls/{ended[0]['id']}")
                detail.raise_for_status()
                result: dict[str, Any] = detail.json()
                return result
            await asyncio.sleep(0.2)
    raise AssertionError(f"no ended SIP call\n{service.log_text()[-3000:]}")


def voiced_frames(datagrams: list[bytes], threshold: float = 300.0) -> int:
    """How many of the PCMU RTP packets carry sound (RMS of the decoded samples above ``threshold``)."""
    voiced = 0
    for datagram in datagrams:
        packet = RtpPacket.parse(datagram)
        if packet.payload_type != 0 or not packet.payload:
            continue
        samples = np.frombuffer(ulaw_decode(packet.payload), dtype="<i2").astype(np.float64)
        voiced += int(np.sqrt((samples**2).mean()) > threshold)
    return voiced


def recording_voiced_ms(path: Path, channel: int, threshold: float = 300.0) -> int:
    """Milliseconds of 20 ms frames of one channel of the call's stereo WAV with RMS above ``threshold``."""
    with wave.open(str(path), "rb") as wav:
        frames, channels, rate = wav.readframes(wav.getnframes()), wav.getnchannels(), wav.getframerate()
    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels)[:, channel].astype(np.float64)
    step = rate // 50
    blocks = samples[: len(samples) // step * step].reshape(-1, step)
    return int((np.sqrt((blocks**2).mean(axis=1)) > threshold).sum()) * 20


@pytest.mark.slow
@needs_sipp
async def test_call_survives_sip_loss_and_rtp_loss_with_reordering(tmp_path: Path, speech_ulaw: Path) -> None:
    with sip_service(tmp_path / "home") as (service, sip_port):
        proxy = ImpairmentProxy(("127.0.0.1", sip_port), sip=SIP_IMPAIRMENT, rtp=RTP_IMPAIRMENT, seed=SEED)
        await proxy.start()
        try:
            result = await run_sipp("uac_speech_dtmf.xml", f"127.0.0.1:{proxy.sip_port}", tmp_path)
            await asyncio.sleep(0.3)  # the last held datagrams go out
        finally:
            proxy.close()
        log = service.log_text()
        assert result.ok, result.stderr + result.messages[-3000:] + log[-3000:]
        call = await ended_sip_call(service)
    # The call completed, thanks to retransmissions counted at the proxy.
    assert call["end_reason"] == "caller_hangup"
    assert proxy.retransmissions("INVITE", "to_service") >= 1  # SIPp's timer A
    # the service's 2xx retransmission (RFC 3261 §13.3.1.4): once for the lost 200, again for the lost ACK
    assert proxy.retransmissions("200 INVITE", "to_caller") >= 2
    assert proxy.retransmissions("ACK", "to_service") >= 1  # SIPp answered the retransmitted 200
    assert proxy.retransmissions("BYE", "to_service") >= 1  # SIPp's timer E
    sip_lost = proxy.stats["sip", "to_service"].dropped + proxy.stats["sip", "to_caller"].dropped
    sip_total = proxy.stats["sip", "to_service"].received + proxy.stats["sip", "to_caller"].received
    assert sip_lost >= 3 and sip_lost / sip_total >= 0.15, proxy.sip_log
    # The media went through the proxy, impaired both ways.
    for direction in ("to_service", "to_caller"):
        stats = proxy.stats["rtp", direction]
        assert stats.received > 100 and stats.dropped > 0 and stats.reordered > 0, (direction, stats)
    # The RFC 4733 keys reached the model, each once, in order.
    sent_events = [RtpPacket.parse(d) for d in proxy.rtp_forwarded["to_service"]]
    assert sum(p.payload_type == 96 for p in sent_events) > 0
    digits = "".join(e["text"] for e in call["transcript"] if e["kind"] == "dtmf")
    assert digits == "12#", call["transcript"]
    # The agent's audio came back to the caller (measured on what the proxy delivered to SIPp) ...
    assert voiced_frames(proxy.rtp_forwarded["to_caller"]) * 20 > 1000
    # ... and the caller's speech reached the service through the jitter buffer (the recording's left
    # channel is the caller as the service heard it).
    assert recording_voiced_ms(Path(call["recording_path"]), channel=0) > 1000


# The proxy's message rewriting, on fixed bytes ---------------------------------------------------------

SDP = b"v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
INVITE = (
    b"INVITE sip:agent@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport\r\n"
    b"Call-ID: abc@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
    b'Contact: "Alice" <sip:alice@127.0.0.1:5070;transport=udp>\r\n'
    b"Content-Type: application/sdp\r\nContent-Length: 87\r\n\r\n" + SDP
)


def test_sdp_and_contact_rewriting() -> None:
    assert sip_kind(INVITE) == ("INVITE", "abc@127.0.0.1|1|INVITE")
    assert sip_kind(b"SIP/2.0 200 OK\r\ni: x\r\nCSeq: 2 BYE\r\nl: 0\r\n\r\n") == ("200 BYE", "x|2|200 BYE")
    assert sip_kind(b"\r\n\r\n") is None
    rewritten, media = rewrite_sdp(INVITE, "127.0.0.1", 40002)
    assert media == ("127.0.0.1", 6000)
    head, body = rewritten.split(b"\r\n\r\n", 1)
    assert b"m=audio 40002 RTP/AVP 0\r\n" in body
    assert len(SDP) == 87 and b"Content-Length: 88\r\n" in head + b"\r\n" and len(body) == 88
    contact = rewrite_contact(rewritten, "127.0.0.1", 5999)
    assert b'Contact: "Alice" <sip:alice@127.0.0.1:5999;transport=udp>\r\n' in contact
    hold = INVITE.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 0.0.0.0")
    assert rewrite_sdp(hold, "127.0.0.1", 40002) == (hold, None)  # a hold is left alone
    assert rewrite_sdp(b"OPTIONS sip:x SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n", "h", 1)[1] is None
