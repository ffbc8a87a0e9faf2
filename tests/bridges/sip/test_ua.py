"""The SIP user agent, transports, RTP session and SIP leg against SIPp as a real peer on 127.0.0.1.

The application here is a small fake: it admits calls (or refuses them), wraps each answered call in a
:class:`~bridges.sip.leg.SipLeg`, collects its events and plays a tone back as the "agent", so the tests see
exactly what the SIP layer delivers: caller audio frames, DTMF keys, the hang-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridges.base import CallerAudio, CallerDtmf, LegEvent, LegHangup, LegHold
from bridges.sip.leg import SipLeg, call_metadata
from bridges.sip.message import SipResponse, parse_message
from bridges.sip.settings import SipSettings
from bridges.sip.ua import SipCall, SipRefusal, UserAgent
from tests.bridges.sip.sipp import free_even_port, needs_sipp, run_sipp
from voice.audio.g711 import ulaw_encode
from voice.audio.resample import resample_pcm16

pytestmark = needs_sipp


def tone_ulaw(ms: int, hz: float = 440.0) -> bytes:
    samples = [int(8000 * math.sin(2 * math.pi * hz * n / 8000)) for n in range(8 * ms)]
    return ulaw_encode(struct.pack(f"<{len(samples)}h", *samples))


class FakeApp:
    """Admits (or refuses) calls; runs each answered call's leg, collecting events, playing a tone."""

    def __init__(self, refuse: int | None = None, *, direct: bool = False) -> None:
        self.refuse = refuse
        self.direct = direct  # take events through listen() and play with play_now(), as the call does
        self.admitted: list[SipCall] = []
        self.abandoned_calls: list[SipCall] = []
        self.legs: list[SipLeg] = []
        self.events: dict[str, list[LegEvent]] = {}
        self.done: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def admit(self, call: SipCall) -> None:
        if self.refuse is not None:
            raise SipRefusal(self.refuse)
        self.admitted.append(call)

    async def answered(self, call: SipCall) -> None:
        leg = SipLeg(call, metadata=call_metadata(call.invite, ["Subject"], call.peer.host))
        self.legs.append(leg)
        self.events[call.call_id] = []
        self.done[call.call_id] = asyncio.Event()
        if self.direct:
            leg.listen(self.events[call.call_id].append)
        leg.start()
        task = asyncio.create_task(self._run(leg))
        self._tasks.add(task)

    def abandoned(self, call: SipCall) -> None:
        self.abandoned_calls.append(call)

    async def _run(self, leg: SipLeg) -> None:
        tone = tone_ulaw(1000)
        events = self.events[leg.call_id]

        async def talk() -> None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            n = 0
            while True:
                frame = tone[(n * 160) % len(tone) :][:160]
                if not (self.direct and leg.play_now(frame, "item_1", n * 20)):
                    await leg.play(frame, "item_1", n * 20)
                n += 1
                await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))

        talker = asyncio.create_task(talk())
        try:
            async for event in leg.events():
                events.append(event)
        finally:
            talker.cancel()
            self.done[leg.call_id].set()


@contextlib.asynccontextmanager
async def user_agent(app: FakeApp, **settings: object) -> AsyncIterator[UserAgent]:
    rtp = free_even_port()
    config = SipSettings.model_validate(
        {"port": 0, "rtp_port_min": rtp, "rtp_port_max": rtp + 40, **settings}
    )
    ua = UserAgent(config, app, host="127.0.0.1")
    await ua.start()
    try:
        yield ua
    finally:
        await ua.close()


@pytest.fixture
def speech_ulaw(tmp_path: Path, speech: Callable[[str, int], bytes]) -> Path:
    pcm16k = speech("I would like to book a table for two people tonight at eight.", 16000)
    path = tmp_path / "speech.ulaw"
    path.write_bytes(ulaw_encode(resample_pcm16(pcm16k, 16000, 8000)))
    return path


@pytest.mark.parametrize("direct", [False, True], ids=["events", "direct"])
async def test_sipp_call_speech_dtmf_bye(tmp_path: Path, speech_ulaw: Path, direct: bool) -> None:
    app = FakeApp(direct=direct)
    async with user_agent(app) as ua:
        result = await run_sipp("uac_speech_dtmf.xml", f"127.0.0.1:{ua.port}", tmp_path)
        assert result.ok, result.stderr + result.messages[-4000:]
        assert len(app.legs) == 1
        leg = app.legs[0]
        await asyncio.wait_for(app.done[leg.call_id].wait(), 5)
    events = app.events[leg.call_id]
    audio = [e for e in events if isinstance(e, CallerAudio)]
    digits = "".join(e.digit for e in events if isinstance(e, CallerDtmf))
    assert len(audio) > 100  # seconds of speech as 20 ms frames
    assert all(len(e.audio) == 160 for e in audio)
    assert digits == "12#"
    assert isinstance(events[-1], LegHangup)
    assert leg.metadata["caller"] == "alice"
    assert leg.metadata["caller_name"] == "Alice Caller"
    assert leg.metadata["sip_headers"]["X-Customer-Id"] == "42"
    assert leg.codec == "pcmu"
    assert leg.capabilities.native_dtmf
    assert leg.call.rtp.sender.packets_sent > 100  # the agent's audio went back
    assert ua._calls == {} and ua._dialogs == {}  # nothing left behind once the call ended


async def test_cancel_before_answer_gets_487(tmp_path: Path) -> None:
    app = FakeApp()
    async with user_agent(app, answer_delay_ms=3000) as ua:
        result = await run_sipp("uac_cancel.xml", f"127.0.0.1:{ua.port}", tmp_path)
        assert result.ok, result.stderr + result.messages[-4000:]
        await asyncio.sleep(0.1)
    assert len(app.admitted) == 1
    assert len(app.abandoned_calls) == 1
    assert app.legs == []


async def test_retransmitted_invite_makes_one_call(tmp_path: Path) -> None:
    app = FakeApp()
    async with user_agent(app, answer_delay_ms=500) as ua:
        result = await run_sipp("uac_retransmit.xml", f"127.0.0.1:{ua.port}", tmp_path)
        assert result.ok, result.stderr + result.messages[-4000:]
        await asyncio.sleep(0.1)
    assert len(app.admitted) == 1
    assert len(app.legs) == 1
    assert app.legs[0].codec == "pcma"


async def test_disallowed_network_gets_403(tmp_path: Path) -> None:
    app = FakeApp()
    async with user_agent(app, allowed_networks=["10.0.0.0/8"]) as ua:
        result = await run_sipp("uac_refused.xml", f"127.0.0.1:{ua.port}", tmp_path)
        assert result.ok, result.stderr + result.messages[-4000:]
    assert app.admitted == []


# Raw datagrams: answers SIPp cannot be scripted to expect in one file ---------------------------------


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait(data)


@contextlib.asynccontextmanager
async def udp_client() -> AsyncIterator[tuple[asyncio.DatagramTransport, _Client, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Client, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        yield transport, protocol, port
    finally:
        transport.close()


def invite(port: int, *, sdp: str, method: str = "INVITE", branch: str = "z9hG4bKtest1") -> bytes:
    body = sdp.replace("\n", "\r\n").encode()
    head = (
        f"{method} sip:agent@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch}\r\n"
        f"From: <sip:x@127.0.0.1:{port}>;tag=abc\r\nTo: <sip:agent@127.0.0.1>\r\n"
        f"Call-ID: raw-{branch}\r\nCSeq: 1 {method}\r\nContact: <sip:x@127.0.0.1:{port}>\r\n"
        f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def final_response(client: _Client) -> SipResponse:
    while True:
        message = parse_message(await asyncio.wait_for(client.queue.get(), 5))
        assert isinstance(message, SipResponse)
        if message.status_code >= 200:
            return message


G729_ONLY = "v=0\no=x 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 18\n"
PCMU = "v=0\no=x 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0\n"


async def test_no_common_codec_gets_488() -> None:
    app = FakeApp()
    async with user_agent(app) as ua, udp_client() as (transport, client, port):
        transport.sendto(invite(port, sdp=G729_ONLY), ("127.0.0.1", ua.port))
        assert (await final_response(client)).status_code == 488
    assert app.admitted == []


async def test_busy_gets_486() -> None:
    app = FakeApp(refuse=486)
    async with user_agent(app) as ua, udp_client() as (transport, client, port):
        transport.sendto(invite(port, sdp=PCMU), ("127.0.0.1", ua.port))
        busy = await final_response(client)
        assert busy.status_code == 486 and busy.headers.get("Retry-After") == "30"  # RFC 3261 §20.33


async def test_options_unknown_method_and_garbage() -> None:
    app = FakeApp()
    async with user_agent(app) as ua, udp_client() as (transport, client, port):
        transport.sendto(invite(port, sdp="", method="OPTIONS", branch="z9hG4bKo"), ("127.0.0.1", ua.port))
        ok = await final_response(client)
        assert ok.status_code == 200 and "INVITE" in (ok.headers.get("Allow") or "")
        transport.sendto(invite(port, sdp="", method="PUBLISH", branch="z9hG4bKp"), ("127.0.0.1", ua.port))
        assert (await final_response(client)).status_code == 501
        bad = invite(port, sdp=PCMU, branch="z9hG4bKq").replace(b"CSeq: 1 INVITE", b"CSeq: x INVITE")
        transport.sendto(bad, ("127.0.0.1", ua.port))
        # the CSeq is unreadable, so no reply is possible: dropped and logged
        transport.sendto(b"\x00\xffgarbage\r\n\r\n", ("127.0.0.1", ua.port))
        bad = invite(port, sdp=PCMU, branch="z9hG4bKr").replace(b"Max-Forwards: 70", b"Max-Forwards: x")
        transport.sendto(bad, ("127.0.0.1", ua.port))
        assert (await final_response(client)).status_code == 400
        transport.sendto(invite(port, sdp="", method="BYE", branch="z9hG4bKs"), ("127.0.0.1", ua.port))
        assert (await final_response(client)).status_code == 481
        needs_100rel = invite(port, sdp=PCMU, branch="z9hG4bKt").replace(
            b"Max-Forwards: 70", b"Max-Forwards: 70\r\nRequire: 100rel"
        )
        transport.sendto(needs_100rel, ("127.0.0.1", ua.port))
        refused = await final_response(client)
        assert refused.status_code == 420 and refused.headers.get("Unsupported") == "100rel"


async def test_outbound_call_to_sipp_uas(tmp_path: Path, speech_ulaw: Path) -> None:
    """The UA calls SIPp (UAS): 180, 200 with SDP, our ACK; SIPp talks, then hangs up with BYE."""
    from tests.bridges.sip.sipp import SIPP, free_udp_port

    assert SIPP is not None
    app = FakeApp()
    uas_port = free_udp_port()
    media = free_even_port()
    async with user_agent(app) as ua:
        proc = await asyncio.create_subprocess_exec(
            SIPP, "-sf", str(Path(__file__).parent / "scenarios" / "uas_answer_talk_bye.xml"),
            "-m", "1", "-nostdin", "-timeout", "40s", "-i", "127.0.0.1", "-p", str(uas_port),
            "-mi", "127.0.0.1", "-mp", str(media), "-trace_err", cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(0.3)
        call = await ua.invite(f"sip:callee@127.0.0.1:{uas_port}")
        await app.answered(call)
        _out, err = await asyncio.wait_for(proc.communicate(), 50)
        assert proc.returncode == 0, err.decode(errors="replace")
        leg = app.legs[0]
        await asyncio.wait_for(app.done[leg.call_id].wait(), 5)
    events = app.events[leg.call_id]
    assert sum(isinstance(e, CallerAudio) for e in events) > 50
    assert isinstance(events[-1], LegHangup) and events[-1].reason == "caller_hangup"
    assert leg.capabilities.native_dtmf and leg.codec == "pcmu"


class TransferApp(FakeApp):
    """Transfers the caller to ``sip:staff@...`` when the key 5 arrives, then hangs up."""

    async def _run(self, leg: SipLeg) -> None:
        events = self.events[leg.call_id]
        try:
            async for event in leg.events():
                events.append(event)
                if isinstance(event, CallerDtmf) and event.digit == "5":
                    await leg.transfer("sip:staff@127.0.0.1:5099")
                    await leg.hangup("transferred")
        finally:
            self.done[leg.call_id].set()


async def test_hold_resume_info_dtmf_and_refer(tmp_path: Path) -> None:
    app = TransferApp()
    async with user_agent(app) as ua:
        result = await run_sipp("uac_hold_info_refer.xml", f"127.0.0.1:{ua.port}", tmp_path)
        assert result.ok, result.stderr + result.messages[-4000:]
        leg = app.legs[0]
        await asyncio.wait_for(app.done[leg.call_id].wait(), 5)
    events = app.events[leg.call_id]
    assert [e.digit for e in events if isinstance(e, CallerDtmf)] == ["5"]
    assert [e.held for e in events if isinstance(e, LegHold)] == [True, False]  # sendonly, then sendrecv
    assert leg.call.state == "ended"


async def test_hold_info_refer_over_tcp(tmp_path: Path) -> None:
    """The same dialog over TCP (RFC 3261 §18.3 framing; responses on the caller's connection)."""
    app = TransferApp()
    async with user_agent(app) as ua:
        result = await run_sipp("uac_hold_info_refer.xml", f"127.0.0.1:{ua.port}", tmp_path, transport="t1")
        assert result.ok, result.stderr + result.messages[-4000:]
        leg = app.legs[0]
        await asyncio.wait_for(app.done[leg.call_id].wait(), 5)
    assert leg.call.peer.transport == "tcp"
    assert [e.digit for e in app.events[leg.call_id] if isinstance(e, CallerDtmf)] == ["5"]


async def test_register_with_digest_refresh_and_unregister(tmp_path: Path) -> None:
    """SIPp as a registrar: 401 with a Digest challenge each time; the UA answers, gets 200 with 6 s,
    refreshes about 5 s later, and unregisters (Expires: 0) when it stops."""
    from tests.bridges.sip.sipp import SCENARIOS, SIPP, free_udp_port

    assert SIPP is not None
    registrar = free_udp_port()
    proc = await asyncio.create_subprocess_exec(
        SIPP, "-sf", str(SCENARIOS / "uas_register_auth.xml"), "-m", "1", "-nostdin", "-timeout", "30s",
        "-i", "127.0.0.1", "-p", str(registrar), "-trace_err", cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(0.3)
    registration = {
        "registrar": f"sip:127.0.0.1:{registrar}",
        "username": "voiceuser",
        "password": "s3cret",
        "expires": 600,
    }
    app = FakeApp()
    async with user_agent(app, registration=registration) as ua:
        await asyncio.sleep(6.5)  # registered, then refreshed once
        assert ua._register_cseq >= 4  # two REGISTERs (challenged and answered) per round
        assert ua.registration_status == 200  # SIPp's verifyauth accepted our Digest answer
    assert ua.registration_status == 200  # the binding was removed
    _out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode(errors="replace")


async def test_outbound_call_through_trunk_with_digest(tmp_path: Path) -> None:
    """A trunk (SIPp) answers our INVITE with 401: the UA ACKs it, answers the Digest challenge with the
    trunk's credentials in a new INVITE (CSeq + 1), gets 200, ACKs; the trunk then hangs up."""
    from tests.bridges.sip.sipp import SCENARIOS, SIPP, free_udp_port

    assert SIPP is not None
    trunk_port = free_udp_port()
    proc = await asyncio.create_subprocess_exec(
        SIPP, "-sf", str(SCENARIOS / "uas_trunk_digest.xml"), "-m", "1", "-nostdin", "-timeout", "30s",
        "-i", "127.0.0.1", "-p", str(trunk_port), "-mi", "127.0.0.1", "-mp", str(free_even_port()),
        "-trace_err", cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(0.3)
    trunk = {"uri": f"sip:127.0.0.1:{trunk_port}", "username": "trunkuser", "password": "trunkpass"}
    app = FakeApp()
    async with user_agent(app, trunk=trunk) as ua:
        call = await ua.invite("sip:+15551230000@carrier.invalid")
        assert call.invite.cseq.number == 2 and "Authorization" in call.invite.headers
        await app.answered(call)
        _out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode(errors="replace")
        await asyncio.wait_for(app.done[call.call_id].wait(), 5)
    assert isinstance(app.events[call.call_id][-1], LegHangup)


async def test_outbound_ring_timeout_cancels(tmp_path: Path) -> None:
    """No answer within the ring timeout: the UA CANCELs (after the 183 with early media), gets 487 and
    ACKs it."""
    from bridges.sip.ua import SipCallFailed
    from tests.bridges.sip.sipp import SCENARIOS, SIPP, free_udp_port

    assert SIPP is not None
    port = free_udp_port()
    proc = await asyncio.create_subprocess_exec(
        SIPP, "-sf", str(SCENARIOS / "uas_ring_cancel.xml"), "-m", "1", "-nostdin", "-timeout", "30s",
        "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1", "-mp", str(free_even_port()),
        "-trace_err", cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(0.3)
    async with user_agent(FakeApp()) as ua:
        with pytest.raises(SipCallFailed) as failed:
            await ua.invite(f"sip:callee@127.0.0.1:{port}", ring_timeout_s=1.0)
        assert failed.value.status_code == 487
        _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode(errors="replace")


@pytest.mark.parametrize(("password", "calls"), [("right-pw", 1), ("another-pw", 0)])
async def test_inbound_digest_authentication(tmp_path: Path, password: str, calls: int) -> None:
    """With auth users set, an INVITE gets 401; the right credentials get the call, wrong ones 403."""
    app = FakeApp()
    settings = {"auth_users": {"erin": password}, "auth_algorithms": ["MD5"]}
    async with user_agent(app, **settings) as ua:
        result = await run_sipp("uac_digest_auth.xml", f"127.0.0.1:{ua.port}", tmp_path)
        assert result.ok, result.stderr + result.messages[-4000:]
    assert len(app.legs) == calls
    if not calls:
        assert "403 Forbidden" in result.messages


async def test_late_offer_answer_in_ack() -> None:
    """An INVITE without SDP: our offer goes in the 200, the caller's answer in the ACK (RFC 3261 §13.2.1)."""
    app = FakeApp()
    async with user_agent(app) as ua, udp_client() as (transport, client, port):
        raw = invite(port, sdp="", branch="z9hG4bKlate").replace(b"Content-Type: application/sdp\r\n", b"")
        transport.sendto(raw, ("127.0.0.1", ua.port))
        ok = await final_response(client)
        assert ok.status_code == 200 and b"m=audio" in ok.body and b"telephone-event" in ok.body
        answer = PCMU.replace("RTP/AVP 0", "RTP/AVP 8").replace("\n", "\r\n").encode()
        ack = (
            f"ACK sip:voice@127.0.0.1:{ua.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKack\r\n"
            f"From: <sip:x@127.0.0.1:{port}>;tag=abc\r\nTo: {ok.headers.get('To')}\r\n"
            f"Call-ID: raw-z9hG4bKlate\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(answer)}\r\n\r\n"
        ).encode() + answer
        transport.sendto(ack, ("127.0.0.1", ua.port))
        for _ in range(50):
            if app.legs:
                break
            await asyncio.sleep(0.02)
        assert len(app.legs) == 1 and app.legs[0].codec == "pcma"


async def test_port_in_use_leaves_the_service_running() -> None:
    """``voice serve`` with SIP on a port something else holds logs it and runs on without SIP."""
    import socket
    from types import SimpleNamespace

    from bridges.sip.service import sip_lifespan
    from voice.config import Settings

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        service = SimpleNamespace(settings=Settings(sip={"port": port}, host="127.0.0.1"), manager=None)
        async with sip_lifespan(service) as ua:
            assert ua is None
        service.settings.sip.port = 0
        async with sip_lifespan(service) as ua:
            assert ua is None  # --sip-port 0: SIP off


def test_local_address_for_wildcard_bind() -> None:
    """Bound to 0.0.0.0, Via/Contact/SDP carry the address of the route toward the peer, never 0.0.0.0
    (``c=0.0.0.0`` would mean hold, RFC 3264 §8.4); ``public_address`` wins."""
    ua = UserAgent(SipSettings(port=0), FakeApp(), host="0.0.0.0")
    assert ua.local_address("127.0.0.1") == "127.0.0.1"
    assert ua.via("udp", "127.0.0.1").host == "127.0.0.1"
    public = UserAgent(SipSettings(port=0, public_address="203.0.113.7"), FakeApp(), host="0.0.0.0")
    assert str(public.contact("tcp", "127.0.0.1")) == "<sip:voice@203.0.113.7:0;transport=tcp>"
