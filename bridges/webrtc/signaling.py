"""WebRTC signaling: one SDP offer in, one SDP answer out, and the peer connection's life until its call ends.

The service is always the answerer and never trickles: the page gathers its ICE candidates before it posts
the offer (``POST /webrtc/offer``, JSON ``{"sdp", "type": "offer"}``, RFC 8829 §4.1.10 / JSEP offer with
candidates inline), and the answer carries the service's candidates. Pieces:

- :func:`parse_offer`: the request body -> a checked :class:`~aiortc.RTCSessionDescription`, or
  :class:`OfferError` with a reason for the 400 answer. Checked before aiortc sees it: JSON shape and size,
  ``type == "offer"``, an SDP that parses, exactly one audio section (no video), Opus offered, the audio
  ``sendrecv`` (the caller talks and listens), ICE credentials, a DTLS fingerprint, RTCP multiplexing
  (RFC 8834 §5.1.1), and at least one ICE candidate (no trickle here).
- :func:`reachable_candidates`: drops remote candidates the pinned host addresses cannot reach (loopback
  host candidates reach only loopback peers; an mDNS ``.local`` name would make aioice send multicast
  queries on the real interfaces).
- :func:`pinned_host_addresses`: restricts the host candidates aioice gathers to configured addresses. aioice
  has no option for it: :class:`aioice.Connection` calls the module function ``aioice.ice.get_host_addresses``
  while gathering, which is wrapped once by a function that returns the addresses pinned in a
  :class:`~contextvars.ContextVar` and otherwise defers to the original. A context variable (not a global
  setting) keeps it per task: a test's own in-process peer can pin itself without touching the service's
  peers, and gathering's child tasks inherit it from ``setLocalDescription``'s caller.
- :func:`answer_offer`: pre-creates the audio transceiver with the agent's outbound track and Opus as the
  only codec (so an offer without Opus is refused rather than answered with PCMU), applies the offer,
  answers, gathers on the pinned addresses.
- :class:`WebRTCGateway`: creates the peer connection and its :class:`~bridges.webrtc.leg.WebRTCLeg`, answers,
  then owns the session: waits up to ``connect_timeout_s`` for ICE + DTLS, runs the call (``run_call``), and
  closes the peer connection however it ends. A peer that fails or never connects is closed and reported to
  ``on_failed`` (the service saves its call record).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, Literal

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import SessionDescription

from bridges.webrtc.leg import WebRTCLeg
from bridges.webrtc.settings import WebRTCSettings
from voice.errors import RemoteProtocolError
from voice.logs import get_logger

__all__ = [
    "OfferError",
    "OfferErrorCode",
    "OfferSummary",
    "WebRTCGateway",
    "answer_offer",
    "check_offer_sdp",
    "parse_offer",
    "pinned_host_addresses",
    "reachable_candidates",
    "rtc_configuration",
]

OfferErrorCode = Literal["bad_json", "bad_offer", "too_large", "unsupported"]

_PINNED: ContextVar[tuple[str, ...] | None] = ContextVar("voice_webrtc_host_addresses", default=None)
_HOOK_MARK: Final = "_voice_pinned_host_addresses"

_log = get_logger(component="webrtc")


class OfferError(RemoteProtocolError):
    """The caller's offer cannot be answered; ``code`` and ``reason`` go into the 400 answer."""

    def __init__(self, code: OfferErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code: OfferErrorCode = code
        self.reason = reason


# -- host candidates ---------------------------------------------------------------------------------------


def _install_host_hook() -> None:
    """Wrap ``aioice.ice.get_host_addresses`` once so that pinned addresses replace its answer."""
    current = aioice.ice.get_host_addresses
    if getattr(current, _HOOK_MARK, False):
        return
    original = current

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        """The pinned addresses of the right families, or aioice's own discovery when none are pinned."""
        pinned = _PINNED.get()
        if pinned is None:
            return original(use_ipv4, use_ipv6)
        return [a for a in pinned if (use_ipv6 if ":" in a else use_ipv4)]

    setattr(get_host_addresses, _HOOK_MARK, True)
    aioice.ice.get_host_addresses = get_host_addresses


@contextlib.contextmanager
def pinned_host_addresses(addresses: Sequence[str] | None) -> Iterator[None]:
    """Within the block (and tasks started from it) aioice gathers host candidates only on ``addresses``.

    ``None`` or empty: no pinning (aioice's default discovery). Wrap ``setLocalDescription`` (where aiortc
    gathers) in it.
    """
    _install_host_hook()
    token = _PINNED.set(tuple(addresses) if addresses else None)
    try:
        yield
    finally:
        _PINNED.reset(token)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an mDNS name or garbage


def reachable_candidates(sdp: str, *, loopback_only: bool) -> tuple[str, int, int]:
    """``(sdp, kept, dropped)``: with ``loopback_only`` the ``a=candidate`` lines whose address is not a
    loopback IP are removed (RFC 8839 §5.1 syntax: the address is the fifth field); otherwise unchanged."""
    lines = sdp.splitlines()
    out: list[str] = []
    kept = dropped = 0
    for line in lines:
        if line.startswith("a=candidate:"):
            fields = line[len("a=candidate:") :].split()
            if loopback_only and (len(fields) < 5 or not _is_loopback(fields[4])):
                dropped += 1
                continue
            kept += 1
        out.append(line)
    return "\r\n".join(out) + "\r\n", kept, dropped


def rtc_configuration(settings: WebRTCSettings) -> RTCConfiguration:
    """The peer connection configuration: exactly the configured ICE servers (aiortc's default would be a
    public STUN server) and the transport policy."""
    servers = [
        RTCIceServer(
            urls=list(server.urls),
            username=server.username,
            credential=server.credential.get_secret_value() if server.credential is not None else None,
        )
        for server in settings.ice_servers
    ]
    policy = (
        RTCIceTransportPolicy.RELAY if settings.ice_transport_policy == "relay" else RTCIceTransportPolicy.ALL
    )
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


# -- the offer ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfferSummary:
    """What a checked offer holds: its audio codecs (lower-case names), candidates, data channel."""

    audio_codecs: tuple[str, ...]
    candidates: int
    data_channel: bool


def check_offer_sdp(sdp: str) -> OfferSummary:
    """Check an offer's SDP for what this service needs; :class:`OfferError` says what is missing."""
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the garbage provokes: all of it is a bad offer
        raise OfferError("bad_offer", f"the SDP does not parse: {type(exc).__name__}: {exc}") from None
    audio = [m for m in description.media if m.kind == "audio"]
    others = sorted({m.kind for m in description.media if m.kind not in ("audio", "application")})
    if others:
        raise OfferError(
            "unsupported", f"only audio (and a data channel) is supported, not {', '.join(others)}"
        )
    if not audio:
        raise OfferError("unsupported", "the offer has no audio section")
    if len(audio) > 1:
        raise OfferError("unsupported", f"the offer has {len(audio)} audio sections; one is supported")
    media = audio[0]
    codecs = tuple(c.mimeType.split("/", 1)[-1].lower() for c in media.rtp.codecs)
    if "opus" not in codecs:
        shown = ", ".join(codecs) or "none"
        raise OfferError("unsupported", f"the offer's audio codecs ({shown}) do not include Opus")
    if media.direction != "sendrecv":
        raise OfferError(
            "unsupported", f"the offer's audio is {media.direction}; it must be sendrecv (talk and listen)"
        )
    candidates = 0
    for section in description.media:
        if section.ice is None or not section.ice.usernameFragment or not section.ice.password:
            raise OfferError("bad_offer", "the offer has no ICE username fragment or password")
        if section.dtls is None or not section.dtls.fingerprints:
            raise OfferError("bad_offer", "the offer has no DTLS fingerprint")
        if section.kind == "audio" and not section.rtcp_mux:
            raise OfferError("unsupported", "the offer does not multiplex RTCP (a=rtcp-mux)")
        candidates += len(section.ice_candidates)
    if candidates == 0:
        raise OfferError(
            "bad_offer",
            "the offer carries no ICE candidates: wait for ICE gathering to complete before posting it "
            "(this endpoint does not take trickled candidates)",
        )
    data = any(m.kind == "application" for m in description.media)
    return OfferSummary(audio_codecs=codecs, candidates=candidates, data_channel=data)


def parse_offer(body: bytes, *, max_bytes: int) -> tuple[RTCSessionDescription, OfferSummary]:
    """The request body of ``POST /webrtc/offer`` -> the offer and its summary, or :class:`OfferError`."""
    if len(body) > max_bytes:
        raise OfferError("too_large", f"the offer is {len(body)} bytes; the limit is {max_bytes}")
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OfferError("bad_json", f"the body is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise OfferError("bad_json", 'the body must be a JSON object {"sdp": ..., "type": "offer"}')
    kind = message.get("type")
    if kind != "offer":
        raise OfferError("bad_offer", f'"type" must be "offer", not {kind!r}')
    sdp = message.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("bad_offer", '"sdp" must be a non-empty string')
    summary = check_offer_sdp(sdp)
    return RTCSessionDescription(sdp=sdp, type="offer"), summary


async def answer_offer(
    pc: RTCPeerConnection, offer: RTCSessionDescription, leg: WebRTCLeg, settings: WebRTCSettings
) -> RTCSessionDescription:
    """Apply ``offer`` to ``pc`` and return the complete answer (candidates included).

    The audio transceiver is created first with the leg's outbound track and Opus as the only codec, so the
    offer's audio section binds to it. Remote candidates the pinned addresses cannot reach are dropped, and
    end-of-candidates is signalled (the offer is complete), so that ICE reports failure when every check
    fails instead of waiting for candidates that never come. Gathering uses the pinned host addresses.
    aiortc's refusals become :class:`OfferError`.
    """
    sdp, kept, dropped = reachable_candidates(offer.sdp, loopback_only=settings.loopback_only)
    if kept == 0:
        raise OfferError(
            "unsupported", f"none of the offer's {dropped} ICE candidates is reachable from this service"
        )
    transceiver = pc.addTransceiver(leg.output_track, direction="sendrecv")
    opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
    transceiver.setCodecPreferences(opus)
    with pinned_host_addresses(settings.host_addresses):
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.addIceCandidate(None)  # no trickle: the offer held every candidate (ICE can fail)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except OfferError:
            raise
        except Exception as exc:  # aiortc raises ValueError, OperationError, InvalidStateError...
            raise OfferError("bad_offer", f"the offer was refused: {exc}") from None
    local = pc.localDescription
    if local is None:  # pragma: no cover - aiortc sets it above
        raise OfferError("bad_offer", "no answer could be made")
    if "a=candidate:" not in local.sdp:
        raise OfferError("unsupported", "this service has no address to offer (check webrtc.host_addresses)")
    return local


# -- sessions ----------------------------------------------------------------------------------------------

RunCall = Callable[[WebRTCLeg], Awaitable[str]]
"""Runs the call on a connected leg until it ends; returns the end reason."""
OnFailed = Callable[[WebRTCLeg, str], Awaitable[None]]
"""A peer that never connected: ``(leg, reason)`` (``connect_timeout``, ``ice_failed``, ``disconnected``)."""


class WebRTCGateway:
    """Answers offers and owns each peer connection until its call ends (see the module docstring)."""

    def __init__(self, settings: WebRTCSettings) -> None:
        self.settings = settings
        self.sessions: dict[str, WebRTCLeg] = {}
        """Live peer connections by call id (connecting or in a call)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.failed: dict[str, int] = {}
        """How many peers failed to connect, by reason."""

    async def answer(
        self,
        offer: RTCSessionDescription,
        *,
        agent: str,
        run_call: RunCall,
        on_failed: OnFailed,
        metadata: Mapping[str, Any] | None = None,
        call_id: str | None = None,
    ) -> tuple[WebRTCLeg, RTCSessionDescription]:
        """Answer ``offer`` and start the session task; :class:`OfferError` if it cannot be answered (the
        peer connection is closed again)."""
        pc = RTCPeerConnection(rtc_configuration(self.settings))
        leg = WebRTCLeg(
            pc, agent=agent, call_id=call_id, metadata=metadata, media_timeout_s=self.settings.media_timeout_s
        )
        try:
            answer = await answer_offer(pc, offer, leg, self.settings)
        except BaseException:
            await leg.close()
            raise
        self.sessions[leg.call_id] = leg
        task = asyncio.create_task(self._session(leg, run_call, on_failed), name=f"webrtc-{leg.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        leg.log.info("webrtc.answered", candidates=local_candidates(answer.sdp))
        return leg, answer

    async def _session(self, leg: WebRTCLeg, run_call: RunCall, on_failed: OnFailed) -> None:
        try:
            failure = await leg.wait_connected(self.settings.connect_timeout_s)
            if failure is not None:
                self.failed[failure] = self.failed.get(failure, 0) + 1
                leg.log.warning("webrtc.not_connected", reason=failure)
                await leg.close()
                await on_failed(leg, failure)
                return
            leg.log.info("webrtc.connected", remote=leg.metadata.get("remote_candidate"))
            reason = await run_call(leg)
            leg.log.info("webrtc.call_finished", end_reason=reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            leg.log.exception("webrtc.session_failed")
        finally:
            self.sessions.pop(leg.call_id, None)
            await leg.close()

    async def close(self) -> None:
        """Close every peer connection (shutdown; calls see their leg hang up) and wait for the sessions."""
        for leg in list(self.sessions.values()):
            await leg.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)


def local_candidates(sdp: str) -> list[str]:
    """``address:port typ`` of each candidate in ``sdp`` (for logs)."""
    out: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) >= 8:
                out.append(f"{fields[4]}:{fields[5]} {fields[7]}")
    return out
