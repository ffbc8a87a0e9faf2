"""SIP dialog state (RFC 3261 §12): identity, sequence numbers, route set and remote target.

A :class:`Dialog` is made from the INVITE and the response that creates it, on either side
(:meth:`Dialog.from_uac`, :meth:`Dialog.from_uas`, §12.1), builds requests inside the dialog with the
right Request-URI, ``Route``, tags and ``CSeq`` (§12.2.1.1, loose and strict routing) and follows the
requests and responses the peer sends (§12.2.1.2, §12.2.2: out-of-order ``CSeq``, target refresh,
early -> confirmed, termination on 481/408). Pure: no I/O, no clock; the caller supplies the ``Via``
(with a fresh branch) of each request it builds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from bridges.sip.message import (
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    Uri,
    Via,
)
from voice.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "TARGET_REFRESH_METHODS",
    "Dialog",
    "DialogId",
    "DialogRequestError",
    "DialogState",
]

DialogState: TypeAlias = Literal["early", "confirmed", "terminated"]

TARGET_REFRESH_METHODS: Final = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
"""Methods whose Contact replaces the remote target (§12.2, RFC 3311, RFC 6665, RFC 3515)."""

# URI parameters not allowed in a Request-URI (§19.1.1, Table 1): stripped when strict routing (§12.2.1.1).
_NOT_IN_REQUEST_URI: Final = ("method", "ttl", "maddr", "lr")


class DialogRequestError(RemoteProtocolError):
    """A request inside a dialog must be refused: ``status_code`` is the answer (500 for a ``CSeq`` lower
    than the last one, §12.2.2)."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class DialogId:
    """Call-ID, local tag and remote tag (§12)."""

    call_id: str
    local_tag: str
    remote_tag: str


class Dialog:
    """One dialog's state, seen from our side (§12)."""

    def __init__(
        self,
        *,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_uri: NameAddr,
        remote_uri: NameAddr,
        remote_target: Uri,
        route_set: Iterable[NameAddr] = (),
        local_seq: int | None = None,
        remote_seq: int | None = None,
        secure: bool = False,
        state: DialogState = "confirmed",
        is_uac: bool = True,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri
        """Our address (From of our requests), without tag."""
        self.remote_uri = remote_uri
        """The peer's address (To of our requests), without tag."""
        self.remote_target = remote_target
        """Where requests go: the peer's Contact URI."""
        self.route_set = tuple(route_set)
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.secure = secure
        self.state: DialogState = state
        self.is_uac = is_uac

    # Creation (§12.1) ----------------------------------------------------------------------------------

    @classmethod
    def from_uac(cls, request: SipRequest, response: SipResponse) -> Dialog:
        """The dialog a response with a To tag (101-199 early, 2xx confirmed) creates for the UAC (§12.1.2).

        Route set: the response's ``Record-Route`` reversed; remote target: its ``Contact`` (the
        Request-URI while an early response has none). Raises :class:`SipParseError` for a response
        without a To tag.
        """
        remote_tag = response.to.tag
        if remote_tag is None:
            raise SipParseError("a dialog-creating response needs a To tag")
        local_tag = request.from_.tag
        if local_tag is None:
            raise LocalProtocolError("our request has no From tag")
        contact = response.contact
        target = contact.uri if contact is not None else request.request_uri
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=_untagged(request.from_),
            remote_uri=_untagged(request.to),
            remote_target=target,
            route_set=reversed(response.record_route),
            local_seq=request.cseq.number,
            remote_seq=None,
            secure=_is_sips(request.request_uri),
            state="confirmed" if 200 <= response.status_code < 300 else "early",
            is_uac=True,
        )

    @classmethod
    def from_uas(cls, request: SipRequest, local_tag: str, *, state: DialogState = "confirmed") -> Dialog:
        """The dialog the UAS creates when it answers ``request`` with To tag ``local_tag`` (§12.1.1).

        Route set: the request's ``Record-Route`` in order; remote target: its ``Contact``; remote
        sequence number: its ``CSeq``. Raises :class:`SipParseError` for a request without Contact.
        """
        contact = request.contact
        if contact is None:
            raise SipParseError(f"a dialog-creating {request.method} needs a Contact")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag or "",
            local_uri=_untagged(request.to),
            remote_uri=_untagged(request.from_),
            remote_target=contact.uri,
            route_set=request.record_route,
            local_seq=None,
            remote_seq=request.cseq.number,
            secure=_is_sips(request.request_uri),
            state=state,
            is_uac=False,
        )

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def matches(self, message: SipRequest | SipResponse) -> bool:
        """Whether ``message`` belongs to this dialog (Call-ID and tags, §12.2.2)."""
        try:
            if message.call_id != self.call_id:
                return False
            ours, theirs = message.from_, message.to
            if isinstance(message, SipRequest):  # the peer's request: From is theirs, To is ours
                ours, theirs = theirs, ours
        except SipParseError:
            return False
        return ours.tag == self.local_tag and (theirs.tag or "") == self.remote_tag

    # Requests we send (§12.2.1) ------------------------------------------------------------------------

    def create_request(
        self,
        method: str,
        *,
        via: Via,
        contact: NameAddr | None = None,
        cseq: int | None = None,
        max_forwards: int = 70,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> SipRequest:
        """A request inside the dialog (§12.2.1.1).

        ``CSeq`` is the local sequence number + 1 (1 to start), except for ``cseq`` given (an ACK uses
        its INVITE's: see :meth:`ack`). Loose routing (first route has ``lr``) or no route set: the
        Request-URI is the remote target and ``Route`` the route set; strict routing: the Request-URI is
        the first route and the remote target goes last in ``Route``. Target refresh requests need
        ``contact`` (§12.2.1.1).
        """
        if self.state == "terminated":
            raise LocalProtocolError(f"the dialog is terminated: cannot send {method}")
        if method in TARGET_REFRESH_METHODS and contact is None:
            raise LocalProtocolError(f"a {method} in a dialog needs a Contact")
        if cseq is None:
            if method in ("ACK", "CANCEL"):
                raise LocalProtocolError(f"a {method} takes the CSeq number of the request it acknowledges")
            self.local_seq = 1 if self.local_seq is None else self.local_seq + 1
            cseq = self.local_seq
        request_uri, routes = self._request_uri_and_routes()
        to = self.remote_uri.with_tag(self.remote_tag) if self.remote_tag else self.remote_uri
        out: list[tuple[str, str]] = [("Via", str(via)), ("Max-Forwards", str(max_forwards))]
        out += [("Route", route) for route in routes]
        out += [
            ("From", str(self.local_uri.with_tag(self.local_tag))),
            ("To", str(to)),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        if contact is not None:
            out.append(("Contact", str(contact)))
        out += list(headers)
        if content_type is not None:
            out.append(("Content-Type", content_type))
        out.append(("Content-Length", str(len(body))))
        return SipRequest(method, str(request_uri), Headers(out), body)

    def ack(
        self, invite_cseq: int, *, via: Via, body: bytes = b"", content_type: str | None = None
    ) -> SipRequest:
        """The ACK for a 2xx to the INVITE with ``CSeq`` number ``invite_cseq`` (§13.2.2.4): a new
        transaction (so a new branch in ``via``) with the INVITE's sequence number."""
        return self.create_request("ACK", via=via, cseq=invite_cseq, body=body, content_type=content_type)

    def _request_uri_and_routes(self) -> tuple[Uri, list[str]]:
        if not self.route_set:
            return self.remote_target, []
        first = self.route_set[0]
        if isinstance(first.uri, SipUri) and first.uri.loose_route:
            return self.remote_target, [str(route) for route in self.route_set]
        # Strict routing (RFC 2543 proxies, §12.2.1.1)
        request_uri = first.uri
        if isinstance(request_uri, SipUri):
            params = request_uri.params
            for name in _NOT_IN_REQUEST_URI:
                params = params.remove(name)
            request_uri = request_uri.with_params(params)
        routes = [str(route) for route in self.route_set[1:]] + [str(NameAddr(self.remote_target))]
        return request_uri, routes

    # What the peer sends (§12.2.1.2, §12.2.2) ----------------------------------------------------------

    def receive_request(self, request: SipRequest) -> None:
        """Follow a request the peer sent in the dialog (§12.2.2).

        Raises :class:`DialogRequestError` (answer 500) when its ``CSeq`` is lower than the last one;
        updates the remote sequence number, and the remote target on a target refresh with a Contact.
        """
        cseq = request.cseq.number
        if request.method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and cseq < self.remote_seq:
                raise DialogRequestError(
                    f"CSeq {cseq} is lower than the dialog's {self.remote_seq}", status_code=500
                )
            self.remote_seq = cseq
        if request.method in TARGET_REFRESH_METHODS:
            contact = request.contact
            if contact is not None:
                self.remote_target = contact.uri

    def receive_response(self, method: str, response: SipResponse) -> None:
        """Follow a response to a request we sent in the dialog (§12.2.1.2, §13.2.2.4).

        A 2xx to an INVITE confirms an early dialog (the UAC recomputes the route set from it); a 2xx to a
        target refresh with a Contact replaces the remote target; 481 or 408 ends the dialog; a failure
        to the INVITE of an early dialog ends it.
        """
        code = response.status_code
        if code in (408, 481):
            self.state = "terminated"
            return
        if 200 <= code < 300:
            if method == "INVITE" and self.state == "early":
                self.state = "confirmed"
                if self.is_uac:
                    self.route_set = tuple(reversed(response.record_route))
            if method in TARGET_REFRESH_METHODS:
                contact = response.contact
                if contact is not None:
                    self.remote_target = contact.uri
        elif code >= 300 and method == "INVITE" and self.state == "early":
            self.state = "terminated"

    def terminate(self) -> None:
        """End the dialog (BYE sent or received and answered)."""
        self.state = "terminated"


def _untagged(address: NameAddr) -> NameAddr:
    return NameAddr(address.uri, address.display_name, address.params.remove("tag"))


def _is_sips(uri: Uri) -> bool:
    return isinstance(uri, SipUri) and uri.scheme == "sips"
