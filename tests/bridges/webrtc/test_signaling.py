"""Signaling: offer checks (every refusal has a reason), host-candidate pinning, the answer, and the gateway's
session life (connected -> the call runs; never connected or ICE failure -> closed and reported)."""

from __future__ import annotations

import asyncio
import json
import re

import aioice.ice
import aioice.stun
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from pydantic import ValidationError

from bridges.webrtc.caller import WebRTCCaller
from bridges.webrtc.leg import WebRTCLeg
from bridges.webrtc.settings import WebRTCSettings
from bridges.webrtc.signaling import (
    OfferError,
    WebRTCGateway,
    answer_offer,
    check_offer_sdp,
    parse_offer,
    pinned_host_addresses,
    reachable_candidates,
    rtc_configuration,
)
from tests.bridges.webrtc.helpers import LOOPBACK

MAX = 64 * 1024


async def make_offer(*, audio: int = 1, video: bool = False, codecs: str | None = None) -> str:
    """A real aiortc offer (complete, candidates on 127.0.0.1) with the given media sections."""
    pc = RTCPeerConnection()
    try:
        for _ in range(audio):
            transceiver = pc.addTransceiver("audio", direction="sendrecv")
            if codecs is not None:
                wanted = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == codecs]
                transceiver.setCodecPreferences(wanted)
        if video:
            pc.addTransceiver("video")
        pc.createDataChannel("control")
        with pinned_host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        assert pc.localDescription is not None
        return pc.localDescription.sdp
    finally:
        await pc.close()


def body(sdp: str, kind: str = "offer") -> bytes:
    return json.dumps({"sdp": sdp, "type": kind}).encode()


def drop_lines(sdp: str, prefix: str) -> str:
    return "".join(line + "\r\n" for line in sdp.splitlines() if not line.startswith(prefix))


async def test_a_browser_like_offer_is_accepted() -> None:
    offer, summary = parse_offer(body(await make_offer()), max_bytes=MAX)
    assert offer.type == "offer"
    assert "opus" in summary.audio_codecs and summary.data_channel and summary.candidates >= 1


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"{not json", "bad_json", "not JSON"),
        (b"[1, 2]", "bad_json", "JSON object"),
        (json.dumps({"sdp": "v=0", "type": "answer"}).encode(), "bad_offer", '"type" must be "offer"'),
        (json.dumps({"type": "offer"}).encode(), "bad_offer", '"sdp" must be a non-empty string'),
        (json.dumps({"sdp": "   ", "type": "offer"}).encode(), "bad_offer", "non-empty"),
        (json.dumps({"sdp": "hello", "type": "offer"}).encode(), "unsupported", "no audio"),
        (b"x" * (MAX + 1), "too_large", "limit"),
    ],
)
def test_bad_bodies_are_refused_with_a_reason(raw: bytes, code: str, words: str) -> None:
    with pytest.raises(OfferError) as caught:
        parse_offer(raw, max_bytes=MAX)
    assert caught.value.code == code and words in caught.value.reason


async def test_unsupported_offers_are_refused_with_a_reason() -> None:
    base = await make_offer()
    cases = {
        "video": (await make_offer(video=True), "unsupported", "not video"),
        "two audio": (await make_offer(audio=2), "unsupported", "2 audio sections"),
        "no opus": (await make_offer(codecs="audio/PCMU"), "unsupported", "(pcmu) do not include Opus"),
        "recvonly": (base.replace("a=sendrecv", "a=recvonly"), "unsupported", "must be sendrecv"),
        "no candidates": (drop_lines(base, "a=candidate:"), "bad_offer", "no ICE candidates"),
        "no fingerprint": (drop_lines(base, "a=fingerprint:"), "bad_offer", "no DTLS fingerprint"),
        "no ice credentials": (drop_lines(base, "a=ice-pwd:"), "bad_offer", "no ICE username"),
        "no rtcp-mux": (drop_lines(base, "a=rtcp-mux"), "unsupported", "rtcp-mux"),
        "no media": ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "unsupported", "no audio"),
    }
    for name, (sdp, code, words) in cases.items():
        with pytest.raises(OfferError) as caught:
            check_offer_sdp(sdp)
        assert (caught.value.code, words in caught.value.reason) == (code, True), (name, caught.value.reason)


def test_garbage_sdp_is_a_bad_offer_not_a_crash() -> None:
    garbage_offers = [
        "m=audio x y z\r\n",
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96\r\n",
        "\x00" * 50,
    ]
    for garbage in garbage_offers:
        with pytest.raises(OfferError):
            check_offer_sdp(garbage)


def test_reachable_candidates_keeps_loopback_only_when_pinned_to_loopback() -> None:
    sdp = (
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n"
        "a=candidate:2 1 udp 2122260223 192.0.2.2 50001 typ host\r\n"
        "a=candidate:3 1 udp 2122260223 fd00::2 50002 typ host\r\n"
        "a=candidate:4 1 udp 2122260223 3f1e2d4c-0000-4000-8000-000000000000.local 50003 typ host\r\n"
        "a=candidate:5 1 udp 1686052607 203.0.113.9 60000 typ srflx raddr 192.0.2.2 rport 50001\r\n"
    )
    kept_sdp, kept, dropped = reachable_candidates(sdp, loopback_only=True)
    assert (kept, dropped) == (1, 4)
    assert "127.0.0.1" in kept_sdp and "192.0.2.2" not in kept_sdp and ".local" not in kept_sdp
    same, kept, dropped = reachable_candidates(sdp, loopback_only=False)
    assert (kept, dropped) == (5, 0) and same.count("a=candidate:") == 5


async def test_pinning_is_per_context_and_filters_families() -> None:
    with pinned_host_addresses(["127.0.0.1"]):
        pass  # installs the hook
    discovered = aioice.ice.get_host_addresses(True, True)
    assert "127.0.0.1" not in discovered  # outside a pin: aioice's own discovery (never loopback)
    with pinned_host_addresses(["127.0.0.1", "::1"]):
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(False, True) == ["::1"]
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1", "::1"]

    seen: dict[str, list[str]] = {}

    async def gather(name: str, pin: list[str]) -> None:
        with pinned_host_addresses(pin):
            await asyncio.sleep(0.01)  # interleave with the other task
            seen[name] = aioice.ice.get_host_addresses(True, True)

    await asyncio.gather(gather("a", ["127.0.0.1"]), gather("b", ["127.0.0.2"]))
    assert seen == {"a": ["127.0.0.1"], "b": ["127.0.0.2"]}
    assert aioice.ice.get_host_addresses(True, True) == discovered


def test_rtc_configuration_has_exactly_the_configured_servers() -> None:
    assert rtc_configuration(WebRTCSettings()).iceServers == []  # never aiortc's default public STUN
    settings = WebRTCSettings.model_validate(
        {
            "ice_servers": [
                {"urls": "stun:stun.example.com:3478"},
                {"urls": ["turn:turn.example.com:3478"], "username": "u", "credential": "p"},
            ],
            "ice_transport_policy": "relay",
        }
    )
    config = rtc_configuration(settings)
    assert [s.urls for s in config.iceServers or []] == [
        ["stun:stun.example.com:3478"],
        ["turn:turn.example.com:3478"],
    ]
    assert (config.iceServers or [])[1].credential == "p"
    assert config.iceTransportPolicy == RTCIceTransportPolicy.RELAY
    assert settings.page_ice_servers()[1] == {
        "urls": ["turn:turn.example.com:3478"],
        "username": "u",
        "credential": "p",
    }


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"host_addresses": ["localhost"]}, "not an IP address"),
        ({"ice_servers": [{"urls": ["http://stun.example.com"]}]}, "must start with stun:"),
        ({"ice_servers": [{"urls": ["turn:turn.example.com"]}]}, "needs a username and a credential"),
        ({"ice_servers": [{"urls": []}]}, "at least one URL"),
        ({"connect_timeout_s": 0}, "greater than 0"),
    ],
)
def test_settings_are_validated(data: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        WebRTCSettings.model_validate(data)


def test_loopback_only() -> None:
    assert WebRTCSettings(host_addresses=["127.0.0.1", "::1"]).loopback_only
    assert not WebRTCSettings(host_addresses=["127.0.0.1", "192.0.2.2"]).loopback_only
    assert not WebRTCSettings().loopback_only


async def test_answer_offers_only_opus_and_the_pinned_address() -> None:
    pc = RTCPeerConnection(rtc_configuration(LOOPBACK))
    leg = WebRTCLeg(pc)
    try:
        offer, _ = parse_offer(body(await make_offer()), max_bytes=MAX)
        answer = await answer_offer(pc, offer, leg, LOOPBACK)
    finally:
        await leg.close()
    assert answer.type == "answer"
    hosts = {line.split()[4] for line in answer.sdp.splitlines() if line.startswith("a=candidate:")}
    assert hosts == {"127.0.0.1"}
    audio = answer.sdp.split("m=audio", 1)[1].split("m=application", 1)[0]
    assert re.findall(r"a=rtpmap:\d+ (\S+)", audio) == ["opus/48000/2"]
    assert "a=sendrecv" in audio


async def test_an_offer_with_no_reachable_candidate_is_refused() -> None:
    sdp = re.sub(r"127\.0\.0\.1", "192.0.2.2", await make_offer())
    pc = RTCPeerConnection(rtc_configuration(LOOPBACK))
    leg = WebRTCLeg(pc)
    try:
        offer, _ = parse_offer(body(sdp), max_bytes=MAX)
        with pytest.raises(OfferError, match="reachable"):
            await answer_offer(pc, offer, leg, LOOPBACK)
    finally:
        await leg.close()


# -- the gateway -------------------------------------------------------------------------------------------


class Outcome:
    def __init__(self) -> None:
        self.ran: list[WebRTCLeg] = []
        self.failed: list[tuple[WebRTCLeg, str]] = []
        self.done = asyncio.Event()

    async def run_call(self, leg: WebRTCLeg) -> str:
        self.ran.append(leg)
        assert leg.connected
        await leg.hangup("agent_end_call")
        self.done.set()
        return "agent_end_call"

    async def on_failed(self, leg: WebRTCLeg, reason: str) -> None:
        self.failed.append((leg, reason))
        self.done.set()


async def test_gateway_runs_the_call_once_connected_and_cleans_up() -> None:
    gateway = WebRTCGateway(LOOPBACK)
    outcome = Outcome()
    caller = WebRTCCaller("http://127.0.0.1:9")
    try:
        offer, _ = parse_offer(body(await caller.offer_sdp()), max_bytes=MAX)
        leg, answer = await gateway.answer(
            offer, agent="restaurant", run_call=outcome.run_call, on_failed=outcome.on_failed
        )
        assert leg.call_id in gateway.sessions
        await caller.accept_answer(answer.sdp)
        await asyncio.wait_for(outcome.done.wait(), 10)
        await caller.wait_for(lambda: caller.of_type("call.ended"), 5)
        await gateway.close()
    finally:
        await caller.close()
    assert outcome.ran == [leg] and outcome.failed == []
    assert gateway.sessions == {} and leg.closed


async def test_gateway_closes_a_peer_that_never_connects() -> None:
    gateway = WebRTCGateway(WebRTCSettings(host_addresses=["127.0.0.1"], connect_timeout_s=0.5))
    outcome = Outcome()
    caller = WebRTCCaller("http://127.0.0.1:9")
    try:
        offer, _ = parse_offer(body(await caller.offer_sdp()), max_bytes=MAX)
        leg, _answer = await gateway.answer(
            offer, agent="restaurant", run_call=outcome.run_call, on_failed=outcome.on_failed
        )  # the caller never applies the answer: no checks from its side, no DTLS
        await asyncio.wait_for(outcome.done.wait(), 5)
    finally:
        await caller.close()
    assert outcome.failed == [(leg, "connect_timeout")] and outcome.ran == []
    assert leg.closed and gateway.sessions == {} and gateway.failed == {"connect_timeout": 1}


async def test_gateway_reports_ice_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's candidate is a port nobody listens on: every check fails and ICE fails (STUN retries
    shortened for the test) long before the connect timeout."""
    monkeypatch.setattr(aioice.stun, "RETRY_MAX", 1)
    monkeypatch.setattr(aioice.stun, "RETRY_RTO", 0.05)
    gateway = WebRTCGateway(WebRTCSettings(host_addresses=["127.0.0.1"], connect_timeout_s=20))
    outcome = Outcome()
    caller = WebRTCCaller("http://127.0.0.1:9")
    sdp = await caller.offer_sdp()
    await caller.close()  # its sockets are gone: the offer's candidates answer nothing
    offer, _ = parse_offer(body(sdp), max_bytes=MAX)
    leg, _answer = await gateway.answer(
        offer, agent="restaurant", run_call=outcome.run_call, on_failed=outcome.on_failed
    )
    await asyncio.wait_for(outcome.done.wait(), 10)
    assert outcome.failed == [(leg, "ice_failed")]
    assert leg.closed and gateway.sessions == {}


async def test_gateway_refuses_a_bad_offer_and_closes_its_peer_connection() -> None:
    gateway = WebRTCGateway(LOOPBACK)
    outcome = Outcome()
    sdp = re.sub(r"127\.0\.0\.1", "192.0.2.2", await make_offer())
    offer, _ = parse_offer(body(sdp), max_bytes=MAX)
    with pytest.raises(OfferError):
        await gateway.answer(
            offer, agent="restaurant", run_call=outcome.run_call, on_failed=outcome.on_failed
        )
    assert gateway.sessions == {}
