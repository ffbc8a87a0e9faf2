"""SIP transactions (RFC 3261 §17, with the Accepted states of RFC 6026 §7): four state machines.

Sans-I/O: each transaction takes messages and an explicit ``now_ms`` and returns events; it never sends,
sleeps or reads a clock. The adapter sends every :class:`Transmit`, hands :class:`ResponseReceived` to the
transaction user (TU), calls :meth:`~Transaction.advance` at :attr:`~Transaction.next_deadline` (timers
A-M), and forgets the transaction once :attr:`~Transaction.terminated`.

====================  ==========================================================================
Client INVITE         calling -> proceeding -> completed (ACK sent for 300-699; timer D)
(§17.1.1, RFC 6026)   calling/proceeding -> accepted on 2xx (timer M absorbs 2xx retransmissions)
                      timer A retransmits (unreliable), timer B times out in calling
Client non-INVITE     trying -> proceeding -> completed (timer K); timer E retransmits, F times out
(§17.1.2)
Server INVITE         proceeding -> completed (300-699: timer G retransmits, H waits for the ACK)
(§17.2.1, RFC 6026)   -> confirmed on ACK (timer I); proceeding -> accepted on 2xx (timer L);
                      a 100 Trying goes out if the TU is silent for 200 ms
Server non-INVITE     trying -> proceeding -> completed (timer J); retransmitted requests get
(§17.2.2)             the last response again
====================  ==========================================================================

Transitions are tables: each class's ``TRANSITIONS`` maps ``(state, response class)`` to its handler. In a
client transaction a response with no entry is absorbed (e.g. a 1xx once completed); a TU that sends a
response a server transaction cannot send raises :class:`~voice.errors.LocalProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeAlias

from bridges.sip.message import (
    MAGIC_COOKIE,
    Headers,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    make_response,
)
from voice.errors import LocalProtocolError

__all__ = [
    "ClientTransaction",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "ResponseReceived",
    "ServerTransaction",
    "TimerConfig",
    "Transaction",
    "TransactionEvent",
    "TransactionState",
    "TransactionTerminated",
    "TransactionTimeout",
    "Transmit",
    "build_ack_for_non2xx",
    "build_cancel",
    "client_transaction_key",
    "server_transaction_key",
]

TransactionState: TypeAlias = Literal[
    "calling", "trying", "proceeding", "completed", "confirmed", "accepted", "terminated"
]


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 §17.1.1.1 / Table 4 timer values in ms."""

    t1: float = 500.0
    """RTT estimate."""
    t2: float = 4000.0
    """Maximum retransmit interval for non-INVITE requests and INVITE responses."""
    t4: float = 5000.0
    """Maximum time a message remains in the network."""
    trying: float = 200.0
    """Delay before an INVITE server transaction sends 100 Trying on its own (§17.2.1)."""


# Events --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send ``message`` on the transport (``retransmission`` for the copies timers and retransmitted
    requests cause)."""

    message: SipMessage
    retransmission: bool = False


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A client transaction passes a response up to the TU (§17.1.1.2, §17.1.2.2)."""

    response: SipResponse


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Timer B or F (no final response: the TU acts as on a 408), or H (no ACK for our final response)."""

    timer: Literal["B", "F", "H"]


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """The transaction is over; forget it."""

    reason: Literal["done", "timeout", "transport_error"]


TransactionEvent: TypeAlias = Transmit | ResponseReceived | TransactionTimeout | TransactionTerminated


# Keys (§17.1.3, §17.2.3) ---------------------------------------------------------------------------------


def client_transaction_key(message: SipMessage) -> tuple[str, str]:
    """``(branch, CSeq method)`` matching a response to its client transaction (§17.1.3).

    Raises :class:`SipParseError` if the top Via has no branch.
    """
    branch = message.top_via.branch
    if branch is None:
        raise SipParseError("top Via without a branch")
    return branch, message.cseq.method


def server_transaction_key(request: SipRequest) -> tuple[str, ...]:
    """The key matching a request to its server transaction (§17.2.3).

    With an RFC 3261 branch: ``(branch, sent-by, method)``, an ACK matching its INVITE. Otherwise the
    RFC 2543 fallback: Request-URI, From tag, Call-ID, CSeq number, top Via and method.
    """
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return (branch, via.sent_by.lower(), method)
    cseq = request.cseq
    return (request.uri, request.from_.tag or "", request.call_id, str(cseq.number), str(via), method)


# Building ACK and CANCEL ---------------------------------------------------------------------------------


def _same_transaction_request(method: str, request: SipRequest, to: str) -> SipRequest:
    """``method`` (ACK or CANCEL) for ``request``'s transaction: its Request-URI, top Via (same branch),
    ``Route`` headers, From, Call-ID and CSeq number, with the given ``To``."""
    headers = Headers(
        [
            ("Via", str(request.top_via)),
            ("Max-Forwards", "70"),
            *(("Route", route) for route in request.headers.get_all("Route")),
            ("From", request.headers.get("From") or ""),
            ("To", to),
            ("Call-ID", request.headers.get("Call-ID") or ""),
            ("CSeq", f"{request.cseq.number} {method}"),
            ("Content-Length", "0"),
        ]
    )
    return SipRequest(method, request.uri, headers)


def build_ack_for_non2xx(invite: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK a client INVITE transaction sends for a 300-699 response (§17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the INVITE; ``To`` from the response (with its tag);
    only the INVITE's top Via (same branch); the INVITE's ``Route`` headers.
    """
    return _same_transaction_request("ACK", invite, response.headers.get("To") or "")


def build_cancel(request: SipRequest) -> SipRequest:
    """A CANCEL for a pending request (§9.1): same Request-URI, Call-ID, From, To, CSeq number and top Via
    (so the same branch) as the request, and its ``Route`` headers."""
    if request.method == "ACK":
        raise LocalProtocolError("an ACK cannot be cancelled")
    return _same_transaction_request("CANCEL", request, request.headers.get("To") or "")


# Base ----------------------------------------------------------------------------------------------------

_Handler: TypeAlias = Callable[[float], list[TransactionEvent]]
_Transition: TypeAlias = Callable[[Any, SipResponse, float], list[TransactionEvent]]
_ResponseClass: TypeAlias = Literal["1xx", "2xx", "3xx-6xx"]


class Transaction:
    """Timers and state shared by the four machines."""

    state: TransactionState

    def __init__(self, request: SipRequest, *, reliable: bool, timers: TimerConfig) -> None:
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self._deadlines: dict[str, float] = {}
        self._intervals: dict[str, float] = {}
        self._timer_handlers: dict[str, _Handler] = {}

    @property
    def terminated(self) -> bool:
        return self.state == "terminated"

    @property
    def next_deadline(self) -> float | None:
        """When :meth:`advance` next has work to do (ms, on the caller's clock), or None."""
        return min(self._deadlines.values(), default=None)

    def advance(self, now_ms: float) -> list[TransactionEvent]:
        """Fire every timer due at ``now_ms``, in deadline order (late calls catch up deterministically)."""
        events: list[TransactionEvent] = []
        while self._deadlines:
            name, deadline = min(self._deadlines.items(), key=lambda item: item[1])
            if deadline > now_ms:
                break
            del self._deadlines[name]
            events += self._timer_handlers[name](deadline)
        return events

    def transport_error(self) -> list[TransactionEvent]:
        """The transport could not send (§17.1.4, §17.2.4): the transaction ends."""
        if self.terminated:
            return []
        return self._terminate("transport_error")

    def _arm(self, name: str, at: float, interval: float | None = None) -> None:
        self._deadlines[name] = at
        if interval is not None:
            self._intervals[name] = interval

    def _cancel(self, *names: str) -> None:
        for name in names:
            self._deadlines.pop(name, None)

    def _terminate(self, reason: Literal["done", "timeout", "transport_error"]) -> list[TransactionEvent]:
        self.state = "terminated"
        self._deadlines.clear()
        return [TransactionTerminated(reason)]

    def _wait_or_terminate(self, timer: str, now_ms: float, wait_ms: float) -> list[TransactionEvent]:
        """Arm the timer that ends a completed/confirmed state, or end now on a reliable transport."""
        if self.reliable or wait_ms <= 0:
            return self._terminate("done")
        self._arm(timer, now_ms + wait_ms)
        return []

    def _arm_retransmit(self, timer: str, now_ms: float) -> None:
        """Arm a retransmit timer (A, E, G) T1 from now; reliable transports never retransmit."""
        if not self.reliable:
            self._arm(timer, now_ms + self.timers.t1, self.timers.t1)

    def _end(self, now_ms: float) -> list[TransactionEvent]:
        """Handler of the timers that end a completed/confirmed/accepted state (D, I, J, K, L, M)."""
        return self._terminate("done")

    def _timeout(self, timer: Literal["B", "F", "H"]) -> _Handler:
        """Handler of a timer whose firing is a timeout (B, F, H): report it, then end."""

        def fire(now_ms: float) -> list[TransactionEvent]:
            return [TransactionTimeout(timer), *self._terminate("timeout")]

        return fire


def _response_class(response: SipResponse) -> _ResponseClass:
    if response.status_code < 200:
        return "1xx"
    return "2xx" if response.status_code < 300 else "3xx-6xx"


# Client transactions -------------------------------------------------------------------------------------


class ClientTransaction(Transaction):
    """Base of the client machines: ``start()`` sends the request, ``receive_response()`` takes responses.

    The request timers are the same in both machines but for their names and how retransmissions back off:
    a subclass names them and may override :meth:`_next_interval`.
    """

    TRANSITIONS: ClassVar[Mapping[tuple[str, _ResponseClass], _Transition]] = {}
    RETRANSMIT_TIMER: ClassVar[str]
    """Retransmits the request on unreliable transports: A (INVITE) or E."""
    TIMEOUT_TIMER: ClassVar[Literal["B", "F"]]
    """Gives up waiting for a final response after 64*T1: B (INVITE) or F."""
    END_TIMERS: ClassVar[tuple[str, ...]]
    """Timers whose firing ends the transaction (D and M, or K)."""

    def __init__(
        self, request: SipRequest, *, reliable: bool = False, timers: TimerConfig = TimerConfig()
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers)
        self.key = client_transaction_key(request)
        self.last_response: SipResponse | None = None
        self._started = False
        self._timer_handlers = {
            self.RETRANSMIT_TIMER: self._retransmit,
            self.TIMEOUT_TIMER: self._timeout(self.TIMEOUT_TIMER),
            **dict.fromkeys(self.END_TIMERS, self._end),
        }

    def start(self, now_ms: float) -> list[TransactionEvent]:
        """Send the request; arm the retransmit timer (unreliable transports) and the timeout timer."""
        if self._started:
            raise LocalProtocolError("transaction already started")
        self._started = True
        self._arm_retransmit(self.RETRANSMIT_TIMER, now_ms)
        self._arm(self.TIMEOUT_TIMER, now_ms + 64 * self.timers.t1)
        return [Transmit(self.request)]

    def matches(self, response: SipResponse) -> bool:
        """Whether ``response`` belongs to this transaction (§17.1.3)."""
        try:
            return client_transaction_key(response) == self.key
        except SipParseError:
            return False

    def receive_response(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        """Handle a response matched to this transaction."""
        transition = self.TRANSITIONS.get((self.state, _response_class(response)))
        if transition is None:
            return []  # absorbed
        return transition(self, response, now_ms)

    def _deliver(self, response: SipResponse) -> ResponseReceived:
        self.last_response = response
        return ResponseReceived(response)

    def _next_interval(self, previous: float) -> float:
        """The retransmit interval after ``previous``: doubled (timer A, §17.1.1.2)."""
        return 2 * previous

    def _retransmit(self, now_ms: float) -> list[TransactionEvent]:
        interval = self._next_interval(self._intervals[self.RETRANSMIT_TIMER])
        self._arm(self.RETRANSMIT_TIMER, now_ms + interval, interval)
        return [Transmit(self.request, retransmission=True)]

    def _stop_request_timers(self) -> None:
        """No more retransmissions of the request, and no timeout."""
        self._cancel(self.RETRANSMIT_TIMER, self.TIMEOUT_TIMER)


class InviteClientTransaction(ClientTransaction):
    """INVITE client transaction (RFC 3261 §17.1.1, RFC 6026 §7.2)."""

    RETRANSMIT_TIMER = "A"
    TIMEOUT_TIMER = "B"
    END_TIMERS = ("D", "M")

    def __init__(
        self, request: SipRequest, *, reliable: bool = False, timers: TimerConfig = TimerConfig()
    ) -> None:
        if request.method != "INVITE":
            raise LocalProtocolError(f"an INVITE transaction for a {request.method}")
        super().__init__(request, reliable=reliable, timers=timers)
        self.state = "calling"
        self.ack: SipRequest | None = None

    def _on_provisional(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        self.state = "proceeding"
        self._stop_request_timers()
        return [self._deliver(response)]

    def _on_success(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        self.state = "accepted"  # RFC 6026: stay to pass 2xx retransmissions (other forks) to the TU
        self._stop_request_timers()
        self._arm("M", now_ms + 64 * self.timers.t1)
        return [self._deliver(response)]

    def _on_success_again(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        return [self._deliver(response)]

    def _on_failure(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        self.state = "completed"
        self._stop_request_timers()
        self.ack = build_ack_for_non2xx(self.request, response)
        events: list[TransactionEvent] = [Transmit(self.ack), self._deliver(response)]
        return events + self._wait_or_terminate("D", now_ms, max(32_000.0, 64 * self.timers.t1))

    def _on_failure_again(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        assert self.ack is not None
        return [Transmit(self.ack, retransmission=True)]

    TRANSITIONS: ClassVar[Mapping[tuple[str, _ResponseClass], _Transition]] = {
        ("calling", "1xx"): _on_provisional,
        ("proceeding", "1xx"): _on_provisional,
        ("calling", "2xx"): _on_success,
        ("proceeding", "2xx"): _on_success,
        ("accepted", "2xx"): _on_success_again,
        ("calling", "3xx-6xx"): _on_failure,
        ("proceeding", "3xx-6xx"): _on_failure,
        ("completed", "3xx-6xx"): _on_failure_again,
    }


class NonInviteClientTransaction(ClientTransaction):
    """Non-INVITE client transaction (RFC 3261 §17.1.2)."""

    RETRANSMIT_TIMER = "E"
    TIMEOUT_TIMER = "F"
    END_TIMERS = ("K",)

    def __init__(
        self, request: SipRequest, *, reliable: bool = False, timers: TimerConfig = TimerConfig()
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise LocalProtocolError(f"a non-INVITE transaction for a {request.method}")
        super().__init__(request, reliable=reliable, timers=timers)
        self.state = "trying"

    def _next_interval(self, previous: float) -> float:
        """Timer E: in trying, doubling up to T2; in proceeding, every T2 (§17.1.2.2)."""
        return min(2 * previous, self.timers.t2) if self.state == "trying" else self.timers.t2

    def _on_provisional(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        self.state = "proceeding"
        return [self._deliver(response)]

    def _on_final(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        self.state = "completed"
        self._stop_request_timers()
        return [self._deliver(response), *self._wait_or_terminate("K", now_ms, self.timers.t4)]

    TRANSITIONS: ClassVar[Mapping[tuple[str, _ResponseClass], _Transition]] = {
        ("trying", "1xx"): _on_provisional,
        ("proceeding", "1xx"): _on_provisional,
        ("trying", "2xx"): _on_final,
        ("proceeding", "2xx"): _on_final,
        ("trying", "3xx-6xx"): _on_final,
        ("proceeding", "3xx-6xx"): _on_final,
    }


# Server transactions -------------------------------------------------------------------------------------


class ServerTransaction(Transaction):
    """Base of the server machines: made with the received request; the TU answers with
    ``send_response()``; retransmitted requests go to ``receive_request()``."""

    TRANSITIONS: ClassVar[Mapping[tuple[str, _ResponseClass], _Transition]] = {}

    def __init__(
        self, request: SipRequest, *, reliable: bool = False, timers: TimerConfig = TimerConfig()
    ) -> None:
        super().__init__(request, reliable=reliable, timers=timers)
        self.key = server_transaction_key(request)
        self.last_response: SipResponse | None = None

    def matches(self, request: SipRequest) -> bool:
        """Whether ``request`` (a retransmission, or an ACK) belongs to this transaction (§17.2.3)."""
        try:
            return server_transaction_key(request) == self.key
        except SipParseError:
            return False

    def send_response(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        """Send the TU's response; raises :class:`LocalProtocolError` if this state cannot send it."""
        transition = self.TRANSITIONS.get((self.state, _response_class(response)))
        if transition is None:
            raise LocalProtocolError(f"cannot send a {response.status_code} in state {self.state}")
        self.last_response = response
        return transition(self, response, now_ms)

    def _resend_last(self) -> list[TransactionEvent]:
        if self.last_response is None:
            return []
        return [Transmit(self.last_response, retransmission=True)]


class InviteServerTransaction(ServerTransaction):
    """INVITE server transaction (RFC 3261 §17.2.1, RFC 6026 §7.1)."""

    def __init__(
        self,
        request: SipRequest,
        now_ms: float,
        *,
        reliable: bool = False,
        timers: TimerConfig = TimerConfig(),
    ) -> None:
        if request.method != "INVITE":
            raise LocalProtocolError(f"an INVITE transaction for a {request.method}")
        super().__init__(request, reliable=reliable, timers=timers)
        self.state = "proceeding"
        self._timer_handlers = {
            "trying": self._timer_trying,
            "G": self._timer_g,
            "H": self._timeout("H"),
            "I": self._end,
            "L": self._end,
        }
        self._arm("trying", now_ms + timers.trying)

    def receive_request(self, request: SipRequest, now_ms: float) -> list[TransactionEvent]:
        """A retransmitted INVITE (answer again with the last response) or the ACK for a 300-699."""
        if request.method == "ACK":
            if self.state != "completed":
                return []  # confirmed: absorbed; an ACK for a 2xx is not part of this transaction
            self.state = "confirmed"
            self._cancel("G", "H")
            return self._wait_or_terminate("I", now_ms, self.timers.t4)
        if self.state in ("proceeding", "completed"):
            return self._resend_last()
        return []  # accepted / confirmed: absorbed (RFC 6026 §7.1)

    def _timer_trying(self, now_ms: float) -> list[TransactionEvent]:
        if self.state != "proceeding" or self.last_response is not None:
            return []
        self.last_response = make_response(self.request, 100)
        return [Transmit(self.last_response)]

    def _send_provisional(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        self._cancel("trying")
        return [Transmit(response)]

    def _send_success(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        self.state = "accepted"
        self._cancel("trying")
        self._arm("L", now_ms + 64 * self.timers.t1)
        return [Transmit(response)]

    def _send_success_again(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        return [Transmit(response, retransmission=True)]  # the TU (dialog) retransmits its 2xx (§13.3.1.4)

    def _send_failure(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        self.state = "completed"
        self._cancel("trying")
        self._arm_retransmit("G", now_ms)
        self._arm("H", now_ms + 64 * self.timers.t1)
        return [Transmit(response)]

    def _timer_g(self, now_ms: float) -> list[TransactionEvent]:
        interval = min(2 * self._intervals["G"], self.timers.t2)
        self._arm("G", now_ms + interval, interval)
        return self._resend_last()

    TRANSITIONS: ClassVar[Mapping[tuple[str, _ResponseClass], _Transition]] = {
        ("proceeding", "1xx"): _send_provisional,
        ("proceeding", "2xx"): _send_success,
        ("accepted", "2xx"): _send_success_again,
        ("proceeding", "3xx-6xx"): _send_failure,
    }


class NonInviteServerTransaction(ServerTransaction):
    """Non-INVITE server transaction (RFC 3261 §17.2.2)."""

    def __init__(
        self, request: SipRequest, *, reliable: bool = False, timers: TimerConfig = TimerConfig()
    ) -> None:
        if request.method in ("INVITE", "ACK"):
            raise LocalProtocolError(f"a non-INVITE transaction for a {request.method}")
        super().__init__(request, reliable=reliable, timers=timers)
        self.state = "trying"
        self._timer_handlers = {"J": self._end}

    def receive_request(self, request: SipRequest, now_ms: float) -> list[TransactionEvent]:
        """A retransmission of the request: answer with the last response, if any (§17.2.2)."""
        if self.state in ("proceeding", "completed"):
            return self._resend_last()
        return []

    def _send_provisional(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        self.state = "proceeding"
        return [Transmit(response)]

    def _send_final(self, response: SipResponse, now_ms: float) -> list[TransactionEvent]:
        self.state = "completed"
        return [Transmit(response), *self._wait_or_terminate("J", now_ms, 64 * self.timers.t1)]

    TRANSITIONS: ClassVar[Mapping[tuple[str, _ResponseClass], _Transition]] = {
        ("trying", "1xx"): _send_provisional,
        ("proceeding", "1xx"): _send_provisional,
        ("trying", "2xx"): _send_final,
        ("proceeding", "2xx"): _send_final,
        ("trying", "3xx-6xx"): _send_final,
        ("proceeding", "3xx-6xx"): _send_final,
    }
