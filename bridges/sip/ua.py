"""The SIP user agent (RFC 3261 §8, §12-§17): routes messages between the transports, the transaction state
machines and the calls' dialogs, and owns their timers.

Routing of a received message:

- a **response** goes to its client transaction (by branch and method, §17.1.3); a 2xx retransmission for
  an INVITE whose transaction is gone is ACKed again from the dialog (§13.2.2.4); others are dropped;
- a **request** that matches a server transaction (by branch, sent-by and method, §17.2.3) is a
  retransmission and goes to it (it answers with its last response); an ``ACK`` for a 2xx has its own
  branch and goes to the dialog (stops the 2xx retransmissions, §13.3.1.4); ``CANCEL`` finds the INVITE it
  cancels (§9.2): 200 for the CANCEL, 487 for the INVITE;
- a new request from outside ``allowed_networks`` gets 403 (§21.4.4); then out-of-dialog ``INVITE`` starts
  a call (optional Digest authentication: 401 with challenges, §22.4, unknown users 403), ``OPTIONS`` gets
  200 (§11.2), a request with a To tag but no dialog gets 481 (§12.2.2), unknown methods get 501 with
  ``Allow`` (§8.2.1), a ``Require`` of any extension 420 with ``Unsupported`` (§8.2.2.3); in-dialog
  ``BYE`` (200, the call ends), re-``INVITE`` (new SDP answer: hold/resume, §14.2, RFC 3264 §8.4; without
  SDP: our offer in the 200, the answer applied from the ACK, §13.2.1; the codec in use is kept),
  ``INFO`` with ``application/dtmf-relay`` (a key), ``NOTIFY`` with a ``message/sipfrag`` (the progress of
  our REFER, RFC 3515 §2.4.4);
- malformed input: 400 (or 505/513) when a reply is possible, else dropped and logged; never an exception.

An inbound call (:class:`SipCall`) is answered 100, 180, then 200 with the SDP answer (RFC 3264 §6) that the
UA retransmits until the ACK (§13.3.1.4: T1 doubling to T2, BYE after 64*T1 without ACK); an offer with no
usable codec gets 488 (§13.3.1.1). An INVITE without an offer gets ours in the 200 and the answer is taken
from the ACK (§13.2.1). The application decides admission (:class:`InboundCalls`: 486/503 when
refused) and starts the call once it is answered.

An outbound call (:meth:`UserAgent.invite`) that is not answered raises :class:`SipCallFailed` with the
final status and the outcome to record (:func:`call_outcome`: ``busy``, ``no_answer``, ``rejected``,
``canceled``, ``failed``); early media (a 1xx with SDP) is received before the answer
(:meth:`~bridges.sip.rtp_session.RtpSession.listen_early`).

Timers: every transaction's :attr:`~bridges.sip.transaction.Transaction.next_deadline` is scheduled with
``loop.call_at`` on the loop's monotonic clock (``now_ms = loop.time() * 1000``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from bridges.sip.dialog import Dialog, DialogRequestError
from bridges.sip.digest import DigestError, DigestServer, parse_credentials
from bridges.sip.message import (
    NameAddr,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    error_response,
    generate_branch,
    generate_tag,
    make_response,
    parse_uri,
)
from bridges.sip.rtp_session import RtpPortPool, RtpSession
from bridges.sip.sdp import (
    MediaConfig,
    NegotiatedMedia,
    NoCommonCodec,
    SdpParseError,
    SessionDescription,
    build_answer,
    parse_sdp,
)
from bridges.sip.settings import SipSettings
from bridges.sip.transaction import (
    ClientTransaction,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ResponseReceived,
    ServerTransaction,
    TimerConfig,
    Transaction,
    TransactionEvent,
    TransactionTerminated,
    TransactionTimeout,
    Transmit,
    server_transaction_key,
)
from bridges.sip.transport import Peer, SipTransports, TransportName
from voice.errors import LocalProtocolError, RemoteProtocolError, VoiceError
from voice.logs import get_logger

__all__ = [
    "ALLOWED_METHODS",
    "CALL_OUTCOMES",
    "InboundCalls",
    "SipCall",
    "SipCallFailed",
    "SipRefusal",
    "UserAgent",
    "call_outcome",
    "parse_target",
]

ALLOWED_METHODS: Final = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY"
_TIMERS: Final = TimerConfig()
_DTMF_INFO_TYPES: Final = frozenset({"application/dtmf-relay", "application/dtmf"})

_log = get_logger(component="sip_ua")


class SipRefusal(VoiceError):
    """The application refuses an inbound call with ``status_code`` (486 busy, 503 draining, 403 ...)."""

    def __init__(self, status_code: int, reason: str | None = None) -> None:
        super().__init__(reason or str(status_code))
        self.status_code = status_code
        self.reason = reason


class SipCallFailed(VoiceError):
    """An outbound INVITE ended without a call: ``status_code`` is the final response (408 when nothing
    answered), ``outcome`` the end reason to record (:func:`call_outcome`)."""

    def __init__(self, status_code: int, reason: str, *, outcome: str = "failed") -> None:
        super().__init__(f"{status_code} {reason}")
        self.status_code = status_code
        self.reason = reason
        self.outcome = outcome


CALL_OUTCOMES: Final = frozenset({"busy", "no_answer", "rejected", "canceled", "failed"})
"""End reasons of outbound calls that were never answered (the Twilio path's ``busy``, ``no_answer``,
``failed``, ``canceled``, plus ``rejected`` for an explicit decline)."""
_BUSY: Final = frozenset({486, 600})
_NO_ANSWER: Final = frozenset({408, 480})
_REJECTED: Final = frozenset({603, 607, 608})


def call_outcome(status_code: int, *, ring_timeout: bool = False, provisional: bool = True) -> str:
    """The end reason of an outbound call whose INVITE got the final ``status_code`` (RFC 3261 §21).

    ``ring_timeout``: we gave up ringing (CANCEL, §9.1): ``no_answer`` whatever came back. Else 486 Busy
    Here and 600 Busy Everywhere are ``busy``; 480 Temporarily Unavailable and a 408 after the callee
    rang are ``no_answer`` (a 408 with no provisional response: nothing reached the callee, ``failed``);
    603 Decline, 607 Unwanted and 608 Rejected are ``rejected``; 487 without our ring timeout is
    ``canceled``; every other failure (401/407 authentication, 403, 404, 488, 5xx, ...) is ``failed``.
    """
    if ring_timeout:
        return "no_answer"
    if status_code in _BUSY:
        return "busy"
    if status_code in _NO_ANSWER:
        return "no_answer" if provisional or status_code == 480 else "failed"
    if status_code in _REJECTED:
        return "rejected"
    if status_code == 487:
        return "canceled"
    return "failed"


@dataclass(slots=True)
class _Ringing:
    """How an INVITE's ringing ended: the final response, and what came before it."""

    response: SipResponse
    provisional: bool = False
    """A provisional response came (a CANCEL may be sent, §9.1)."""
    rang: bool = False
    """A provisional response other than 100 came: the callee's side was reached."""
    ring_timeout: bool = False
    """We gave up ringing and CANCELled."""
    early: NegotiatedMedia | None = None
    """The media of the first 1xx with an SDP answer (early media)."""


class InboundCalls(Protocol):
    """What the UA asks of the application for an inbound call."""

    def admit(self, call: SipCall) -> None:
        """Reserve a slot or raise :class:`SipRefusal` (called before ringing)."""
        ...

    async def answered(self, call: SipCall) -> None:
        """The call was answered (200 sent): start it."""
        ...

    def abandoned(self, call: SipCall) -> None:
        """The call ended before it was answered (CANCEL, no usable codec, failure): release the slot."""
        ...


@dataclass(eq=False)
class SipCall:
    """One call's SIP state: the dialog, the media session and the hooks the leg listens on."""

    ua: UserAgent
    call_id: str
    """Our call id (``call_...`` for records); :attr:`sip_call_id` is the SIP Call-ID."""
    sip_call_id: str
    peer: Peer
    invite: SipRequest
    rtp: RtpSession
    local_tag: str = field(default_factory=generate_tag)
    dialog: Dialog | None = None
    media: NegotiatedMedia | None = None
    state: str = "ringing"
    """ringing, answered, ended."""
    app_data: dict[str, Any] = field(default_factory=dict)
    on_ended: Callable[[str], None] = lambda reason: None
    on_dtmf: Callable[[str], None] = lambda digit: None
    on_notify: Callable[[int], None] = lambda status: None
    on_media: Callable[[NegotiatedMedia], None] = lambda media: None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    sdp_version: int = 0
    sdp_session_id: str = field(default_factory=lambda: str(int(time.time())))
    """The ``o=`` session id: the same in every offer and answer of the call (RFC 4566 §5.2)."""
    _retransmit: asyncio.TimerHandle | None = None
    _acked: bool = True
    _final_2xx: SipResponse | None = None
    _invite_txn: InviteServerTransaction | None = None
    _ack: SipRequest | None = None
    """Our ACK for the 2xx of our INVITE (sent again for each 2xx retransmission, §13.2.2.4)."""
    _late_offer: SessionDescription | None = None
    _ack_event: asyncio.Event = field(default_factory=asyncio.Event)
    _ack_body: bytes = b""
    _reoffer: tuple[int, SessionDescription] | None = None
    """Our offer in the 200 to a re-INVITE without SDP and that re-INVITE's CSeq: the answer comes in
    its ACK (§14.2, §13.2.1)."""

    @property
    def caller(self) -> str:
        """The caller's address (the From URI, without tag)."""
        try:
            uri = self.invite.from_.uri
        except SipParseError:
            return ""
        return str(uri)

    def end(self, reason: str) -> None:
        """Mark the call ended (once), stop media and tell the listener."""
        if self.state == "ended":
            return
        self.state = "ended"
        if self._retransmit is not None:
            self._retransmit.cancel()
        self.rtp.close()
        with contextlib.suppress(SipParseError):
            self.ua._calls.pop(_call_key(self.invite), None)
        if self.dialog is not None:
            self.dialog.terminate()
            self.ua._dialogs.pop(self._dialog_key, None)
        self.on_ended(reason)

    @property
    def _dialog_key(self) -> tuple[str, str, str]:
        if self.dialog is not None:
            return (self.dialog.call_id, self.dialog.local_tag, self.dialog.remote_tag)
        return (self.sip_call_id, self.local_tag, self.invite.from_.tag or "")

    async def bye(self) -> SipResponse | None:
        """Send BYE in the dialog (§15.1.1) and end the call; None if there is no confirmed dialog."""
        dialog = self.dialog
        if dialog is None or dialog.state == "terminated" or self.state != "answered":
            self.end("local_hangup")
            return None
        request = dialog.create_request("BYE", via=self.ua.via(self.peer.transport, self.peer.host))
        self.end("local_hangup")
        return await self.ua.request(request, self.ua.destination(dialog, self.peer.transport))

    async def refer(self, target: str) -> SipResponse:
        """Send REFER to transfer the caller to ``target`` (RFC 3515 §2.4.1)."""
        dialog = self.dialog
        if dialog is None or self.state != "answered":
            raise LocalProtocolError("no answered dialog to transfer")
        if not target.startswith(("sip:", "sips:", "tel:")):
            target = f"sip:{target}@{self.peer.host}"
        request = dialog.create_request(
            "REFER",
            via=self.ua.via(self.peer.transport, self.peer.host),
            contact=self.ua.contact(self.peer.transport, self.peer.host),
            headers=[("Refer-To", f"<{target}>"), ("Referred-By", str(dialog.local_uri))],
        )
        return await self.ua.request(request, self.ua.destination(dialog, self.peer.transport))


class UserAgent:
    """The SIP user agent (see the module docstring)."""

    def __init__(
        self,
        settings: SipSettings,
        app: InboundCalls,
        *,
        host: str,
        timers: TimerConfig = _TIMERS,
        new_call_id: Callable[[], str] | None = None,
    ) -> None:
        self.settings = settings
        self.app = app
        self.host = host
        self.timers = timers
        self.transports = SipTransports(self._received)
        self.rtp_pool = RtpPortPool(
            host,
            settings.rtp_port_min,
            settings.rtp_port_max,
            jitter_target_ms=settings.jitter_target_ms,
            inband_dtmf=settings.inband_dtmf,
        )
        self._new_call_id = new_call_id or (lambda: "call_" + secrets.token_hex(12))
        self._server: dict[tuple[str, ...], ServerTransaction] = {}
        self._client: dict[tuple[str, str], ClientTransaction] = {}
        self._peers: dict[Transaction, Peer] = {}
        self._handles: dict[Transaction, asyncio.TimerHandle] = {}
        self._waiters: dict[ClientTransaction, asyncio.Future[SipResponse]] = {}
        self._provisional: dict[ClientTransaction, Callable[[SipResponse], None]] = {}
        self._dialogs: dict[tuple[str, str, str], SipCall] = {}
        self._calls: dict[str, SipCall] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.digest: DigestServer | None = None
        if settings.auth_users:
            self.digest = DigestServer(
                settings.auth_realm, secrets.token_bytes(32), algorithms=tuple(settings.auth_algorithms)
            )
        self.port = 0
        self._routes: dict[str, str] = {}
        self._register_call_id = f"{secrets.token_hex(12)}@{self.address}"
        self._register_cseq = 0
        self.registration_status: int | None = None
        """The final status of the last REGISTER (200: bound)."""
        self._register_task: asyncio.Task[None] | None = None

    # -- life --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.transports.start(self.host, self.settings.port, list(self.settings.transports))
        self.port = self.transports.port
        if self.settings.registration is not None:
            self._register_task = asyncio.get_running_loop().create_task(self._keep_registered())

    async def close(self) -> None:
        if self._register_task is not None:
            self._register_task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.register(expires=0), 2.0)
        for call in list(self._calls.values()):
            with contextlib.suppress(Exception):
                if call.state == "answered":
                    await asyncio.wait_for(call.bye(), 2.0)
                call.end("shutdown")
        for handle in self._handles.values():
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.transports.close()

    @property
    def address(self) -> str:
        """Our configured address (``public_address``, else the bind address)."""
        return self.settings.public_address or self.host

    def local_address(self, toward: str | None = None) -> str:
        """The address peers reach us at, for Via, Contact and SDP: ``public_address``, else the bind
        address, else (bound to a wildcard) the local address of the route toward ``toward``, found with an
        unconnected-UDP ``connect`` (no packet is sent)."""
        if self.settings.public_address:
            return self.settings.public_address
        if self.host not in ("", "0.0.0.0", "::"):
            return self.host
        if not toward:
            return "127.0.0.1"
        cached = self._routes.get(toward)
        if cached is None:
            family = socket.AF_INET6 if ":" in toward else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect((toward, 9))
                    cached = str(probe.getsockname()[0])
            except OSError:
                cached = "127.0.0.1"
            self._routes[toward] = cached
        return cached

    def via(self, transport: str, toward: str | None = None) -> Via:
        from bridges.sip.message import Params

        params = Params().set("branch", generate_branch()).set("rport", None)
        return Via(transport.upper(), self.local_address(toward), self.port, params)

    def contact(self, transport: str, toward: str | None = None) -> NameAddr:
        from bridges.sip.message import Params

        params = Params().set("transport", "tcp") if transport == "tcp" else Params()
        return NameAddr(SipUri(self.local_address(toward), "voice", port=self.port, params=params))

    def destination(self, dialog: Dialog, transport: str) -> Peer:
        """Where a request in ``dialog`` goes: the first route or the remote target (§12.2.1.1)."""
        uri = dialog.route_set[0].uri if dialog.route_set else dialog.remote_target
        if not isinstance(uri, SipUri):
            raise LocalProtocolError(f"cannot send to {uri}")
        kind = "tcp" if uri.transport == "tcp" else transport
        return Peer("tcp" if kind == "tcp" else "udp", uri.host.strip("[]"), uri.port or 5060)

    def now_ms(self) -> float:
        return asyncio.get_running_loop().time() * 1000.0

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("sip.task_failed", error=repr(task.exception()))

    # -- transactions and timers -------------------------------------------------------------------------

    def _run(self, txn: Transaction, events: list[TransactionEvent]) -> None:
        peer = self._peers.get(txn)
        for event in events:
            if isinstance(event, Transmit):
                if peer is not None:
                    self.transports.send_nowait(event.message.to_bytes(), peer)
            elif isinstance(event, ResponseReceived):
                assert isinstance(txn, ClientTransaction)
                self._response_for(txn, event.response)
            elif isinstance(event, TransactionTimeout):
                if isinstance(txn, ClientTransaction):
                    self._resolve(txn, make_response(txn.request, 408))
                else:
                    _log.info("sip.no_ack", timer=event.timer, call_id=txn.request.call_id)
            elif isinstance(event, TransactionTerminated):
                self._forget(txn)
        if not txn.terminated:
            self._schedule(txn)

    def _schedule(self, txn: Transaction) -> None:
        handle = self._handles.pop(txn, None)
        if handle is not None:
            handle.cancel()
        deadline = txn.next_deadline
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._handles[txn] = loop.call_at(deadline / 1000.0, self._fire, txn)

    def _fire(self, txn: Transaction) -> None:
        self._handles.pop(txn, None)
        self._run(txn, txn.advance(self.now_ms()))

    def _forget(self, txn: Transaction) -> None:
        handle = self._handles.pop(txn, None)
        if handle is not None:
            handle.cancel()
        self._peers.pop(txn, None)
        if isinstance(txn, ServerTransaction):
            self._server.pop(txn.key, None)
        else:
            assert isinstance(txn, ClientTransaction)
            self._client.pop(txn.key, None)
            future = self._waiters.pop(txn, None)
            if future is not None and not future.done():
                future.set_result(make_response(txn.request, 408))

    def _respond(self, txn: ServerTransaction, response: SipResponse) -> None:
        try:
            events = txn.send_response(response, self.now_ms())
        except LocalProtocolError as exc:
            _log.warning("sip.cannot_respond", status=response.status_code, error=str(exc))
            return
        self._run(txn, events)

    def _reply(self, request: SipRequest, peer: Peer, status: int, **kwargs: Any) -> None:
        """Answer a request through a new server transaction (so retransmissions get the same answer)."""
        txn = self._new_server_txn(request, peer)
        self._respond(txn, make_response(request, status, **kwargs))

    def _new_server_txn(self, request: SipRequest, peer: Peer) -> ServerTransaction:
        reliable = peer.transport == "tcp"
        txn: ServerTransaction
        if request.method == "INVITE":
            txn = InviteServerTransaction(request, self.now_ms(), reliable=reliable, timers=self.timers)
        else:
            txn = NonInviteServerTransaction(request, reliable=reliable, timers=self.timers)
        self._server[txn.key] = txn
        self._peers[txn] = peer
        self._schedule(txn)
        return txn

    async def request(
        self,
        request: SipRequest,
        peer: Peer,
        *,
        on_provisional: Callable[[SipResponse], None] | None = None,
    ) -> SipResponse:
        """Send a request in a client transaction; return its final response (408 on timeout).
        ``on_provisional`` sees each 1xx (ringing, early media)."""
        reliable = peer.transport == "tcp"
        txn: ClientTransaction
        if request.method == "INVITE":
            txn = InviteClientTransaction(request, reliable=reliable, timers=self.timers)
        else:
            txn = NonInviteClientTransaction(request, reliable=reliable, timers=self.timers)
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self._client[txn.key] = txn
        self._peers[txn] = peer
        self._waiters[txn] = future
        if on_provisional is not None:
            self._provisional[txn] = on_provisional
        self._run(txn, txn.start(self.now_ms()))
        try:
            return await future
        finally:
            self._provisional.pop(txn, None)

    def _response_for(self, txn: ClientTransaction, response: SipResponse) -> None:
        future = self._waiters.get(txn)
        if 200 <= response.status_code < 300 and future is not None and future.done():
            self._ack_again(response)  # a 2xx retransmission: ACK it again (§13.2.2.4)
            return
        if response.status_code >= 200:
            self._resolve(txn, response)
            return
        callback = self._provisional.get(txn)
        if callback is not None:
            try:
                callback(response)
            except Exception:
                _log.exception("sip.provisional_handler_failed")

    def _ack_again(self, response: SipResponse) -> None:
        call = self._dialogs.get((response.call_id, response.from_.tag or "", response.to.tag or ""))
        if call is not None and call._ack is not None and call.dialog is not None:
            peer = self.destination(call.dialog, call.peer.transport)
            self.transports.send_nowait(call._ack.to_bytes(), peer)

    def _resolve(self, txn: ClientTransaction, response: SipResponse) -> None:
        future = self._waiters.get(txn)
        if future is not None and not future.done():
            future.set_result(response)

    # -- outbound INVITE (UAC) ---------------------------------------------------------------------------

    async def invite(
        self,
        target: str,
        *,
        call_id: str | None = None,
        from_user: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        ring_timeout_s: float = 60.0,
        on_progress: Callable[[SipResponse], None] | None = None,
    ) -> SipCall:
        """Call ``target`` (a ``sip:`` URI), through the trunk when one is configured; return the answered
        call (ACK sent, media configured) or raise :class:`SipCallFailed` with the final status and the
        outcome to record (:func:`call_outcome`).

        Sends the SDP offer (RFC 3264 §5), answers a 401/407 with Digest credentials of the trunk (RFC 3261
        §22.2, MD5 or SHA-256; a second challenge that is not ``stale`` means the credentials are wrong:
        ``failed``), and builds the dialog from the 2xx (§12.1.2, §13.2.2.4). ``on_progress`` sees each
        provisional response. A 1xx with an SDP answer sets the media up early and starts receiving early
        media (RFC 3261 §13.2.1, :meth:`RtpSession.listen_early`); a 2xx without SDP after such a 1xx keeps
        that media. No answer within ``ring_timeout_s``: CANCEL (§9.1), ``no_answer``. Cancelling the
        coroutine CANCELs the INVITE too.
        """
        from bridges.sip.digest import DigestError, authorize, pick_challenge
        from bridges.sip.message import Params, build_request
        from bridges.sip.sdp import accept_answer, build_offer

        uri = parse_target(target)
        trunk = self.settings.trunk
        next_hop = parse_target(trunk.uri) if trunk is not None else uri
        transport: TransportName = "tcp" if next_hop.transport == "tcp" else "udp"
        peer = Peer(transport, next_hop.host.strip("[]"), next_hop.port or 5060)
        our_id = call_id or self._new_call_id()
        rtp = await self.rtp_pool.open(our_id)
        local_tag = generate_tag()
        sip_call_id = f"{secrets.token_hex(12)}@{self.local_address(peer.host)}"
        user = from_user or (trunk.from_user if trunk is not None and trunk.from_user else None) or "voice"
        from_ = NameAddr(SipUri(self.local_address(peer.host), user), params=Params().set("tag", local_tag))
        call = SipCall(self, our_id, sip_call_id, peer, SipRequest("INVITE", target), rtp, local_tag)
        offer = build_offer(self._media_config(call))
        route = [NameAddr(next_hop.with_params(next_hop.params.set("lr", None)))] if trunk is not None else []
        extra = [("User-Agent", self.settings.user_agent), ("Allow", ALLOWED_METHODS), *(headers or [])]
        cseq = 1
        log = _log.bind(call_id=our_id, target=target)
        try:
            answered_challenge = False
            for _attempt in range(3):
                request = build_request(
                    "INVITE",
                    uri,
                    via=self.via(transport, peer.host),
                    from_=from_,
                    to=NameAddr(uri),
                    call_id=sip_call_id,
                    cseq=cseq,
                    contact=self.contact(transport, peer.host),
                    route=route,
                    headers=extra,
                    body=offer.to_bytes(),
                    content_type="application/sdp",
                )
                log.info("sip.inviting", attempt=_attempt)
                ring = await self._ring(request, peer, rtp, offer, ring_timeout_s, on_progress)
                response = ring.response
                code = response.status_code
                if code in (401, 407) and trunk is not None and trunk.username and trunk.password:
                    name = "WWW-Authenticate" if code == 401 else "Proxy-Authenticate"
                    try:
                        challenge = pick_challenge(response.headers.get_all(name))
                        if answered_challenge and not challenge.stale:
                            raise DigestError("the trunk refused our credentials")
                        credentials = authorize(
                            challenge,
                            username=trunk.username,
                            password=trunk.password.get_secret_value(),
                            method="INVITE",
                            uri=str(uri),
                        )
                    except DigestError as exc:
                        raise SipCallFailed(code, f"authentication failed: {exc}") from None
                    answered_challenge = True
                    answer_name = "Authorization" if code == 401 else "Proxy-Authorization"
                    extra = [(n, v) for n, v in extra if n not in ("Authorization", "Proxy-Authorization")]
                    extra.append((answer_name, credentials.to_header()))
                    cseq += 1
                    continue
                break
            if not 200 <= response.status_code < 300:
                outcome = call_outcome(
                    response.status_code, ring_timeout=ring.ring_timeout, provisional=ring.rang
                )
                raise SipCallFailed(response.status_code, response.reason, outcome=outcome)
            dialog = Dialog.from_uac(request, response)
            ack = dialog.ack(cseq, via=self.via(transport, peer.host))
            call.invite = request
            call.dialog = dialog
            call._ack = ack
            self.transports.send_nowait(ack.to_bytes(), self.destination(dialog, transport))
            try:
                if response.body or ring.early is None:
                    media = accept_answer(offer, parse_sdp(response.body))
                else:  # the answer came in the 183 (no 100rel) and the 200 repeats none: keep it
                    media = ring.early
            except (SdpParseError, NoCommonCodec) as exc:
                self._dialogs[call._dialog_key] = call
                call.state = "answered"
                await call.bye()
                raise SipCallFailed(488, f"unusable answer: {exc}") from None
            call.media = media
            rtp.configure(media)
            call.state = "answered"
            self._dialogs[call._dialog_key] = call
            log.info("sip.outbound_answered", codec=media.codec.name, early_media=ring.early is not None)
            return call
        except BaseException:
            rtp.close()
            raise

    async def _ring(
        self,
        request: SipRequest,
        peer: Peer,
        rtp: RtpSession,
        offer: SessionDescription,
        ring_timeout_s: float,
        on_progress: Callable[[SipResponse], None] | None = None,
    ) -> _Ringing:
        """Send the INVITE and wait for its final response; CANCEL it after ``ring_timeout_s`` or when
        cancelled (once a provisional response came, §9.1)."""
        from bridges.sip.sdp import accept_answer
        from bridges.sip.transaction import build_cancel

        ringing = _Ringing(make_response(request, 408))

        def on_provisional(response: SipResponse) -> None:
            ringing.provisional = True
            ringing.rang = ringing.rang or response.status_code > 100
            if response.body and response.content_type == "application/sdp" and ringing.early is None:
                with contextlib.suppress(SdpParseError, NoCommonCodec):
                    ringing.early = accept_answer(offer, parse_sdp(response.body))
                    rtp.configure(ringing.early)  # early media (§13.2.1)
                    rtp.listen_early()
                    _log.info("sip.early_media", status=response.status_code, codec=ringing.early.codec.name)
            if on_progress is not None:
                on_progress(response)

        def cancel() -> None:
            if ringing.provisional:
                self._spawn(self.request(build_cancel(request), peer))

        task = asyncio.ensure_future(self.request(request, peer, on_provisional=on_provisional))
        try:
            ringing.response = await asyncio.wait_for(asyncio.shield(task), ring_timeout_s)
            return ringing
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            cancel()
            task.cancel()
            raise
        _log.info("sip.ring_timeout", sip_call_id=request.call_id, provisional=ringing.provisional)
        ringing.ring_timeout = True
        cancel()
        try:
            ringing.response = await asyncio.wait_for(task, 64 * self.timers.t1 / 1000)
        except TimeoutError:
            task.cancel()
        return ringing

    # -- REGISTER (RFC 3261 §10) -------------------------------------------------------------------------

    async def register(self, *, expires: int | None = None) -> SipResponse:
        """Register our Contact with the configured registrar once (Digest on 401/407, §10.2, §22.2);
        returns the final response. ``expires=0`` removes the binding (§10.2.2)."""
        from bridges.sip.digest import DigestError, authorize, pick_challenge
        from bridges.sip.message import Params, build_request

        reg = self.settings.registration
        if reg is None:
            raise LocalProtocolError("no registrar configured")
        registrar = parse_target(reg.registrar)
        transport: TransportName = "tcp" if registrar.transport == "tcp" else "udp"
        peer = Peer(transport, registrar.host.strip("[]"), registrar.port or 5060)
        username = reg.username or (self.settings.trunk.username if self.settings.trunk else None)
        password = reg.password or (self.settings.trunk.password if self.settings.trunk else None)
        aor = parse_target(reg.aor) if reg.aor else SipUri(registrar.host, username or "voice")
        lifetime = reg.expires if expires is None else expires
        extra: list[tuple[str, str]] = [("Expires", str(lifetime)), ("User-Agent", self.settings.user_agent)]
        request_uri = SipUri(registrar.host, port=registrar.port, params=registrar.params)
        response: SipResponse | None = None
        for _attempt in range(3):
            self._register_cseq += 1
            request = build_request(
                "REGISTER",
                request_uri,
                via=self.via(transport, peer.host),
                from_=NameAddr(aor, params=Params().set("tag", generate_tag())),
                to=NameAddr(aor),
                call_id=self._register_call_id,
                cseq=self._register_cseq,
                contact=self.contact(transport, peer.host),
                headers=extra,
            )
            response = await self.request(request, peer)
            code = response.status_code
            if code in (401, 407) and username and password:
                name = "WWW-Authenticate" if code == 401 else "Proxy-Authenticate"
                try:
                    challenge = pick_challenge(response.headers.get_all(name))
                except DigestError:
                    break
                credentials = authorize(
                    challenge,
                    username=username,
                    password=password.get_secret_value(),
                    method="REGISTER",
                    uri=str(request_uri),
                )
                header = "Authorization" if code == 401 else "Proxy-Authorization"
                extra = [(n, v) for n, v in extra if n not in ("Authorization", "Proxy-Authorization")]
                extra.append((header, credentials.to_header()))
                continue
            break
        assert response is not None
        self.registration_status = response.status_code
        _log.info("sip.registered", status=response.status_code, registrar=str(registrar), expires=lifetime)
        return response

    async def _keep_registered(self) -> None:
        """Register, then refresh before the binding expires (at 80 % of the granted time, §10.2.4)."""
        reg = self.settings.registration
        assert reg is not None
        while True:
            delay = 30.0
            try:
                response = await self.register()
                if 200 <= response.status_code < 300:
                    delay = max(5.0, 0.8 * _granted_expires(response, reg.expires))
            except (OSError, VoiceError) as exc:
                _log.warning("sip.register_failed", error=str(exc))
            await asyncio.sleep(delay)

    # -- receiving ---------------------------------------------------------------------------------------

    def _received(self, message: SipMessage | SipParseError, peer: Peer) -> None:
        if isinstance(message, SipParseError):
            self._malformed(message, peer)
            return
        try:
            if isinstance(message, SipResponse):
                self._on_response(message)
            else:
                self._on_request(self._stamp_via(message, peer), peer)
        except SipParseError as exc:  # a header the parser accepted lazily turned out bad
            self._malformed(exc, peer, message)
        except RemoteProtocolError as exc:
            _log.warning("sip.peer_error", peer=f"{peer.host}:{peer.port}", error=str(exc))

    def _malformed(self, error: SipParseError, peer: Peer, message: SipMessage | None = None) -> None:
        response = error_response(error)
        if response is None and isinstance(message, SipRequest) and message.method != "ACK":
            with contextlib.suppress(SipParseError, LocalProtocolError):
                response = make_response(message, 400, f"Bad Request ({error.detail[:60]})")
        if response is None:
            _log.warning("sip.dropped_malformed", peer=f"{peer.host}:{peer.port}", error=error.detail[:200])
            return
        _log.info("sip.rejected_malformed", peer=f"{peer.host}:{peer.port}", status=response.status_code)
        with contextlib.suppress(LocalProtocolError):
            self.transports.send_nowait(response.to_bytes(), peer)

    def _stamp_via(self, request: SipRequest, peer: Peer) -> SipRequest:
        """Add ``received``/``rport`` to the top Via (§18.2.1, RFC 3581 §4) so responses find the peer."""
        via = request.top_via
        params = via.params
        changed = False
        if via.host != peer.host:
            params, changed = params.set("received", peer.host), True
        if via.wants_rport and via.rport is None:
            params, changed = params.set("rport", str(peer.port)), True
        if not changed:
            return request
        vias = request.headers.get_all("Via")
        headers = request.headers.remove("Via")
        first, rest = vias[0], vias[1:]
        parts = first.split(",", 1)
        top = str(via.with_params(params)) + ("," + parts[1] if len(parts) > 1 else "")
        for value in reversed([top, *rest]):
            headers = headers.prepend("Via", value)
        return request.with_headers(headers)

    def _on_response(self, response: SipResponse) -> None:
        try:
            key = (response.top_via.branch or "", response.cseq.method)
        except SipParseError:
            return
        txn = self._client.get(key)
        if txn is not None:
            self._run(txn, txn.receive_response(response, self.now_ms()))
            return
        _log.debug("sip.stray_response", status=response.status_code, method=key[1])

    def _on_request(self, request: SipRequest, peer: Peer) -> None:
        method = request.method
        key = server_transaction_key(request)
        txn = self._server.get(key)
        if txn is not None:
            if isinstance(txn, InviteServerTransaction | NonInviteServerTransaction):
                self._run(txn, txn.receive_request(request, self.now_ms()))
            return
        if method == "ACK":
            self._on_ack(request)
            return
        if not self.settings.allows(peer.host):
            _log.warning("sip.forbidden_source", peer=peer.host, method=method)
            self._reply(request, peer, 403)
            return
        if method == "CANCEL":
            self._on_cancel(request, peer)
            return
        required = request.headers.get_list("Require")
        if required:  # we support no extensions (§8.2.2.3)
            self._reply(request, peer, 420, headers=[("Unsupported", ", ".join(required))])
            return
        to_tag = request.to.tag
        if to_tag is not None:
            call = self._dialogs.get((request.call_id, to_tag, request.from_.tag or ""))
            if call is None:
                self._reply(request, peer, 481)
                return
            self._in_dialog(call, request, peer)
            return
        if method == "INVITE":
            self._on_invite(request, peer)
        elif method == "OPTIONS":
            self._reply(request, peer, 200, headers=self._capabilities())
        elif method in ("BYE", "INFO", "NOTIFY"):
            self._reply(request, peer, 481)
        else:
            self._reply(request, peer, 501, headers=[("Allow", ALLOWED_METHODS)])

    def _capabilities(self) -> list[tuple[str, str]]:
        return [
            ("Allow", ALLOWED_METHODS),
            ("Accept", "application/sdp, application/dtmf-relay, message/sipfrag"),
            ("User-Agent", self.settings.user_agent),
        ]

    def _on_ack(self, request: SipRequest) -> None:
        to_tag = request.to.tag or ""
        call = self._dialogs.get((request.call_id, to_tag, request.from_.tag or ""))
        if call is None:
            return
        call._acked = True
        if not call._ack_event.is_set():
            call._ack_body = request.body
            call._ack_event.set()
        with contextlib.suppress(SipParseError):
            self._reoffer_answered(call, request)
        if call._retransmit is not None:
            call._retransmit.cancel()
            call._retransmit = None

    def _on_cancel(self, request: SipRequest, peer: Peer) -> None:
        invite_key = (*server_transaction_key(request)[:-1], "INVITE")
        txn = self._server.get(invite_key)
        if not isinstance(txn, InviteServerTransaction):
            self._reply(request, peer, 481)
            return
        self._reply(request, peer, 200)
        call = self._calls.get(_call_key(txn.request))
        if txn.state == "proceeding":
            tag = call.local_tag if call is not None else None
            self._respond(txn, make_response(txn.request, 487, to_tag=tag))
            if call is not None:
                call.cancelled.set()
                self._abandon(call, "cancelled")

    # -- inbound INVITE ----------------------------------------------------------------------------------

    def _on_invite(self, request: SipRequest, peer: Peer) -> None:
        txn = self._new_server_txn(request, peer)
        assert isinstance(txn, InviteServerTransaction)
        self._respond(txn, make_response(request, 100))
        refusal = self._authenticate(request)
        if refusal is not None:
            self._respond(txn, refusal)
            return
        self._spawn(self._answer(request, peer, txn))

    def _authenticate(self, request: SipRequest) -> SipResponse | None:
        """None when the caller may go on, else the 401/403 to send (§22.4, RFC 7616 §3.3)."""
        if self.digest is None:
            return None
        value = request.headers.get("Authorization")
        now_s = time.time()
        if value is None:
            return self._challenge(request, stale=False, now_s=now_s)
        try:
            credentials = parse_credentials(value)
        except DigestError:
            return make_response(request, 403)
        password = self.settings.auth_users.get(credentials.username)
        if password is None:
            _log.warning("sip.unknown_user", user=credentials.username[:64])
            return make_response(request, 403)
        result = self.digest.verify(
            credentials, method=request.method, now_s=now_s, password=password.get_secret_value()
        )
        if result == "ok":
            return None
        if result == "stale":
            return self._challenge(request, stale=True, now_s=now_s)
        return make_response(request, 403)

    def _challenge(self, request: SipRequest, *, stale: bool, now_s: float) -> SipResponse:
        assert self.digest is not None
        headers = [("WWW-Authenticate", c.to_header()) for c in self.digest.challenges(now_s, stale=stale)]
        return make_response(request, 401, headers=headers)

    async def _answer(self, request: SipRequest, peer: Peer, txn: InviteServerTransaction) -> None:
        log = _log.bind(sip_call_id=request.call_id, peer=f"{peer.host}:{peer.port}")
        offer: SessionDescription | None = None
        if request.body and request.content_type != "application/sdp":
            self._respond(txn, make_response(request, 415, headers=[("Accept", "application/sdp")]))
            return
        try:
            offer = parse_sdp(request.body) if request.body else None
        except SdpParseError as exc:
            self._respond(txn, make_response(request, 400, f"Bad Request (SDP: {str(exc)[:60]})"))
            return
        if request.contact is None:
            self._respond(txn, make_response(request, 400, "Bad Request (no Contact)"))
            return
        call_id = self._new_call_id()
        try:
            rtp = await self.rtp_pool.open(call_id)
        except OSError as exc:
            log.error("sip.no_rtp_port", error=str(exc))
            self._respond(txn, make_response(request, 503))
            return
        call = SipCall(self, call_id, request.call_id, peer, request, rtp)
        call._invite_txn = txn
        log = log.bind(call_id=call_id)
        media: NegotiatedMedia | None = None
        try:
            if offer is not None:
                answer = build_answer(offer, self._media_config(call))
                session, media = answer.session, answer.media
            else:  # late offer (§13.2.1): our offer goes in the 200, the answer comes in the ACK
                from bridges.sip.sdp import build_offer

                session = call._late_offer = build_offer(self._media_config(call))
        except (NoCommonCodec, SdpParseError) as exc:
            log.warning("sip.no_common_codec", error=str(exc))
            rtp.close()
            self._respond(txn, make_response(request, 488, to_tag=call.local_tag, headers=_warning(str(exc))))
            return
        try:
            self.app.admit(call)
        except SipRefusal as exc:
            log.warning("sip.refused", status=exc.status_code, reason=exc.reason)
            rtp.close()
            retry = [("Retry-After", "30")] if exc.status_code in (486, 503) else []
            self._respond(txn, make_response(request, exc.status_code, to_tag=call.local_tag, headers=retry))
            return
        self._calls[_call_key(request)] = call
        call.media = media
        if media is not None:
            rtp.configure(media)
        self._respond(
            txn, make_response(request, 180, to_tag=call.local_tag, headers=[self._contact_h(peer)])
        )
        if self.settings.answer_delay_ms:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(call.cancelled.wait(), self.settings.answer_delay_ms / 1000)
        if call.cancelled.is_set() or txn.state != "proceeding":
            self._abandon(call, "cancelled")
            return
        body = session.to_bytes()
        ok = make_response(
            request,
            200,
            to_tag=call.local_tag,
            headers=[self._contact_h(peer), *self._capabilities()[:1]],
            body=body,
            content_type="application/sdp",
        )
        call.dialog = Dialog.from_uas(request, call.local_tag)
        self._dialogs[call._dialog_key] = call
        call.state = "answered"
        self._send_2xx(call, txn, ok)
        if call.media is None and not await self._late_answer(call):
            self.app.abandoned(call)
            return
        assert call.media is not None
        log.info("sip.answered", caller=call.caller, codec=call.media.codec.name, rtp_port=rtp.port)
        try:
            await self.app.answered(call)
        except Exception:
            log.exception("sip.start_failed")
            await call.bye()

    async def _late_answer(self, call: SipCall) -> bool:
        """Wait for the ACK carrying the answer to our offer (§13.2.1); a bad or missing one: BYE."""
        from bridges.sip.sdp import accept_answer

        offer = call._late_offer
        assert offer is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call._ack_event.wait(), 64 * self.timers.t1 / 1000)
        try:
            if not call._ack_body:
                raise SdpParseError("the ACK carries no SDP answer")
            media = accept_answer(offer, parse_sdp(call._ack_body))
        except (SdpParseError, NoCommonCodec) as exc:
            _log.warning("sip.late_answer_unusable", call_id=call.call_id, error=str(exc))
            if call.state == "answered":
                await call.bye()
            return False
        call.media = media
        call.rtp.configure(media)
        return True

    def _abandon(self, call: SipCall, reason: str) -> None:
        self._calls.pop(_call_key(call.invite), None)
        if call.state == "ringing":
            call.state = "ended"
            call.rtp.close()
            self.app.abandoned(call)
            _log.info("sip.abandoned", call_id=call.call_id, reason=reason)

    def _contact_h(self, peer: Peer) -> tuple[str, str]:
        return ("Contact", str(self.contact(peer.transport, peer.host)))

    def _media_config(self, call: SipCall) -> MediaConfig:
        call.sdp_version += 1
        return MediaConfig(
            address=self.local_address(call.peer.host),
            port=call.rtp.port,
            session_id=call.sdp_session_id,
            session_version=call.sdp_version,
            username="voice",
        )

    def _send_2xx(self, call: SipCall, txn: InviteServerTransaction, response: SipResponse) -> None:
        """Send a 2xx to an INVITE and retransmit it until the ACK (§13.3.1.4)."""
        call._acked = False
        call._final_2xx = response
        self._respond(txn, response)  # retransmitted on TCP too: proxies on the way may use UDP (§13.3.1.4)
        loop = asyncio.get_running_loop()
        started = loop.time()
        t1, t2 = self.timers.t1 / 1000, self.timers.t2 / 1000

        def again(interval: float) -> None:
            if call._acked or call.state == "ended":
                return
            if loop.time() - started >= 64 * t1:
                _log.warning("sip.no_ack_for_2xx", call_id=call.call_id)
                self._spawn(call.bye())
                return
            self.transports.send_nowait(response.to_bytes(), call.peer)
            nxt = min(2 * interval, t2)
            call._retransmit = loop.call_later(nxt, again, nxt)

        call._retransmit = loop.call_later(t1, again, t1)

    # -- inside a dialog ---------------------------------------------------------------------------------

    def _in_dialog(self, call: SipCall, request: SipRequest, peer: Peer) -> None:
        dialog = call.dialog
        assert dialog is not None
        try:
            dialog.receive_request(request)
        except DialogRequestError as exc:
            self._reply(request, peer, exc.status_code)
            return
        method = request.method
        if method == "BYE":
            self._reply(request, peer, 200)
            _log.info("sip.bye_received", call_id=call.call_id)
            call.end("caller_hangup")
        elif method == "INVITE":
            self._reinvite(call, request, peer)
        elif method == "INFO":
            self._info(call, request, peer)
        elif method == "NOTIFY":
            self._notify(call, request, peer)
        elif method == "OPTIONS":
            self._reply(request, peer, 200, headers=self._capabilities())
        else:
            self._reply(request, peer, 501, headers=[("Allow", ALLOWED_METHODS)])

    def _reinvite(self, call: SipCall, request: SipRequest, peer: Peer) -> None:
        """A re-INVITE (§14.2): answer the new offer (hold: ``sendonly``/``c=0.0.0.0``; resume). Without
        an offer, ours goes in the 200 and the answer is applied from the ACK (§13.2.1, :meth:`_on_ack`).
        Offers and answers keep the codec in use: the call passes its audio through to the model in that
        codec (an offer without it: 488)."""
        from bridges.sip.sdp import build_offer

        txn = self._new_server_txn(request, peer)
        assert isinstance(txn, InviteServerTransaction)
        config = self._media_config(call)
        if call.media is not None:
            config = replace(config, codecs=(call.media.codec.name.upper(),))
        if request.body:
            try:
                answer = build_answer(parse_sdp(request.body), config)
            except (SdpParseError, NoCommonCodec) as exc:
                self._respond(txn, make_response(request, 488, headers=_warning(str(exc))))
                return
            call._reoffer = None
            self._apply_media(call, answer.media)
            body = answer.session.to_bytes()
        else:
            offer = build_offer(config)
            call._reoffer = (request.cseq.number, offer)
            body = offer.to_bytes()
            _log.info("sip.reinvite_without_offer", call_id=call.call_id)
        ok = make_response(
            request,
            200,
            headers=[self._contact_h(peer)],
            body=body,
            content_type="application/sdp",
        )
        self._send_2xx(call, txn, ok)

    def _apply_media(self, call: SipCall, media: NegotiatedMedia) -> None:
        call.media = media
        call.rtp.configure(media)
        call.on_media(media)
        _log.info("sip.reinvite", call_id=call.call_id, direction=media.direction, codec=media.codec.name)

    def _reoffer_answered(self, call: SipCall, ack: SipRequest) -> None:
        """The ACK for our 200 to a re-INVITE without SDP carries the answer to our offer (§13.2.1). No or
        a bad answer: the media stays as it was (logged)."""
        from bridges.sip.sdp import accept_answer

        pending = call._reoffer
        if pending is None or ack.cseq.number != pending[0]:
            return
        call._reoffer = None
        try:
            if not ack.body:
                raise SdpParseError("the ACK carries no SDP answer")
            media = accept_answer(pending[1], parse_sdp(ack.body))
        except (SdpParseError, NoCommonCodec) as exc:
            _log.warning("sip.reinvite_answer_unusable", call_id=call.call_id, error=str(exc))
            return
        self._apply_media(call, media)

    def _info(self, call: SipCall, request: SipRequest, peer: Peer) -> None:
        if request.content_type not in _DTMF_INFO_TYPES:
            self._reply(request, peer, 415, headers=[("Accept", ", ".join(sorted(_DTMF_INFO_TYPES)))])
            return
        digit = _dtmf_relay_digit(request.body)
        if digit is None:
            self._reply(request, peer, 400, reason="Bad Request (no Signal)")
            return
        self._reply(request, peer, 200)
        _log.info("sip.info_dtmf", call_id=call.call_id, digit=digit)
        call.on_dtmf(digit)

    def _notify(self, call: SipCall, request: SipRequest, peer: Peer) -> None:
        self._reply(request, peer, 200)
        text = request.body.decode("utf-8", "replace").strip()
        if request.content_type == "message/sipfrag" and text.startswith("SIP/2.0 "):
            code = text[8:11]
            if code.isdigit():
                call.on_notify(int(code))


def _granted_expires(response: SipResponse, asked: int) -> int:
    """The binding time the registrar granted: our Contact's ``expires`` or the ``Expires`` header."""
    try:
        for contact in response.contacts:
            value = contact.params.get("expires")
            if value is not None and value.isdigit():
                return int(value)
    except SipParseError:
        pass
    header = (response.headers.get("Expires") or "").strip()
    return int(header) if header.isdigit() else asked


def _call_key(request: SipRequest) -> str:
    return f"{request.call_id}|{request.from_.tag or ''}|{request.top_via.branch or ''}"


def _warning(text: str) -> list[tuple[str, str]]:
    clean = "".join(c for c in text if c >= " " and c != '"')[:100]
    return [("Warning", f'399 voice "{clean}"')]


def _dtmf_relay_digit(body: bytes) -> str | None:
    """The key of an ``application/dtmf-relay`` body (``Signal=5``) or an ``application/dtmf`` one."""
    text = body.decode("utf-8", "replace")
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.strip().lower() == "signal":
            digit = value.strip().upper()
            return digit if len(digit) == 1 and digit in "0123456789*#ABCD" else None
    digit = text.strip().upper()
    if len(digit) == 1 and digit in "0123456789*#ABCD":
        return digit
    return None


def parse_target(target: str) -> SipUri:
    """A ``sip:`` URI to call; raises :class:`SipParseError` for anything else, ``sips:`` included: it needs
    TLS on every hop (RFC 3261 §26.2.2), which this user agent does not offer."""
    uri = parse_uri(target)
    if not isinstance(uri, SipUri):
        raise SipParseError(f"not a SIP URI: {target[:64]}")
    if uri.scheme.lower() == "sips":
        raise SipParseError("sips: URIs need TLS, which this SIP user agent does not offer")
    return uri
