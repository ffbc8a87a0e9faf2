"""Wiring of the SIP user agent into the service: inbound SIP calls become calls of the session manager, and
the operator places outbound SIP calls.

:func:`sip_lifespan` starts the :class:`~bridges.sip.ua.UserAgent` on ``settings.sip.port`` (0 or
``enabled = false``: no SIP; a port already in use is logged as ``sip.unavailable`` and the rest of the
service runs on) for the life of the service app. For each INVITE the UA asks
:class:`SipCalls` for admission before ringing (the manager's :meth:`~voice.manager.SessionManager.admit`:
``busy`` -> 486 Busy Here, ``draining`` -> 503 Service Unavailable, RFC 3261 §21.4.24, §21.5.4), and once
answered wraps the call in a :class:`~bridges.sip.leg.SipLeg` and starts it with the SIP agent's profile.

Outbound calls (``POST /api/sip/calls``, and ``POST /api/calls`` with a ``sip:`` URI, see
:func:`is_sip_target`) follow the Twilio path's shape (``bridges/twilio/routes.py``): a call slot is taken and
the record is created at once (status ``ringing``, ``metadata.sip.state`` ``dialing``), the operator gets
201 with the call id and ``"status": "dialing"``, and the INVITE runs in the background
(:meth:`SipCalls.place`). Provisional responses move ``metadata.sip.state`` to ``ringing`` or
``early_media``. Answered: the placed record hands its metadata (``placed_at``, the SIP details) to the
leg and makes way for the call runner's record under the same id. Not answered: the record ends with the
outcome as its end reason (``busy``, ``no_answer``, ``rejected``, ``canceled``, ``failed``:
:func:`~bridges.sip.ua.call_outcome`) and ``metadata.sip`` holds the SIP status code and reason.
``"wait": true`` in the body answers only once the call is answered (201, ``"status": "answered"``) or
failed (502 with the outcome).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridges.sip.leg import SipLeg, call_metadata
from bridges.sip.message import SipParseError, SipResponse
from bridges.sip.ua import SipCall, SipCallFailed, SipRefusal, UserAgent, parse_target
from voice.config import Settings
from voice.errors import ConfigError, RecordError, VoiceError
from voice.httputil import error_response as _error
from voice.httputil import operator_refusal, read_json_object
from voice.logs import get_logger
from voice.manager import Admission, CallRefused, SessionManager
from voice.profiles import AgentProfile
from voice.query import QueryError
from voice.realtime.ids import new_id
from voice.store import CallStore

__all__ = [
    "SIP_CALLS_PATH",
    "DialOutcome",
    "PlacedCall",
    "SipCalls",
    "cancel_dialing",
    "is_sip_target",
    "sip_call_response",
    "sip_lifespan",
    "sip_routes",
]

SIP_CALLS_PATH: Final = "/api/sip/calls"
DEFAULT_RING_TIMEOUT_S: Final = 60
MAX_PROVISIONAL_KEPT: Final = 20
"""Provisional responses kept per call in ``metadata.sip.provisional``."""
_RUNNING: dict[int, SipCalls] = {}

_log = get_logger(component="sip")


class ServiceLike(Protocol):
    settings: Settings
    manager: SessionManager
    store: CallStore

    def profile(self, name: str) -> AgentProfile: ...


def is_sip_target(to: str) -> bool:
    """Whether ``to`` is a ``sip:``/``sips:`` URI (a call for the service's own user agent)."""
    return to.strip().lower().startswith(("sip:", "sips:"))


@dataclass(frozen=True, slots=True)
class DialOutcome:
    """How an outbound call's dialing ended: ``answered`` or its outcome (the record's end reason)."""

    call_id: str
    state: str
    status_code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class PlacedCall:
    """An outbound call being dialed: its id and the task that dials it."""

    call_id: str
    to: str
    caller: str
    agent: str
    dialing: asyncio.Task[DialOutcome]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


_STATE_OF_PROVISIONAL: Final = {180: "ringing", 181: "ringing", 182: "queued"}


class SipCalls:
    """The UA's application: admission, start and release of inbound SIP calls; outbound calls."""

    def __init__(self, service: ServiceLike) -> None:
        self.service = service
        self.ua: UserAgent | None = None
        self._dialing: dict[str, asyncio.Task[DialOutcome]] = {}
        self._cancel_reasons: dict[str, str] = {}

    # -- inbound -----------------------------------------------------------------------------------------

    def admit(self, call: SipCall) -> None:
        try:
            call.app_data["admission"] = self.service.manager.admit()
        except CallRefused as exc:
            raise SipRefusal(486 if exc.reason == "busy" else 503, exc.message) from None

    async def answered(self, call: SipCall) -> None:
        settings = self.service.settings
        admission: Admission = call.app_data["admission"]
        agent = settings.sip.agent or settings.agent
        try:
            profile = self.service.profile(agent)
            leg = SipLeg(
                call,
                metadata=call_metadata(
                    call.invite, settings.sip.metadata_headers, f"{call.peer.host}:{call.peer.port}"
                ),
            )
            leg.start()
            await self.service.manager.start(leg, profile, admission)
        except BaseException:
            admission.release()
            raise

    def abandoned(self, call: SipCall) -> None:
        admission: Any = call.app_data.get("admission")
        if isinstance(admission, Admission):
            admission.release()

    # -- outbound ----------------------------------------------------------------------------------------

    def place(
        self,
        target: str,
        *,
        agent: str | None = None,
        from_user: str | None = None,
        ring_timeout_s: float = DEFAULT_RING_TIMEOUT_S,
    ) -> PlacedCall:
        """Start calling ``target`` (through the trunk if configured): a call slot and a ``ringing`` record
        now, the INVITE in the background (see the module docstring). Raises :class:`SipCallFailed` (SIP
        is not running), :class:`SipParseError` (not a usable ``sip:`` URI), :class:`ConfigError` (unknown
        agent), :class:`CallRefused` (no slot) or :class:`RecordError` (the record could not be made)."""
        ua = self.ua
        if ua is None:
            raise SipCallFailed(503, "SIP is not running")
        parse_target(target)
        settings = self.service.settings
        agent_name = agent or settings.sip.agent or settings.agent
        profile = self.service.profile(agent_name)
        trunk = settings.sip.trunk
        caller = from_user or (trunk.from_user if trunk is not None and trunk.from_user else None) or "voice"
        admission = self.service.manager.admit()
        call_id = new_id("call")
        meta: dict[str, Any] = {
            "direction": "outbound",
            "caller": caller,
            "callee": target,
            "from": caller,
            "to": target,
            "agent": agent_name,
            "sip": {"state": "dialing", "ring_timeout_s": ring_timeout_s},
        }
        try:
            self.service.store.create_call(
                call_id,
                leg="sip",
                caller=caller,
                callee=target,
                agent=agent_name,
                status="ringing",
                metadata=meta,
            )
        except BaseException:
            admission.release()
            raise
        task = asyncio.get_running_loop().create_task(
            self._dial(call_id, target, profile, admission, from_user, ring_timeout_s),
            name=f"sip-dial-{call_id}",
        )
        self._dialing[call_id] = task
        task.add_done_callback(functools.partial(self._dial_done, call_id, admission))
        _log.info("sip.outbound_placed", call_id=call_id, to=target, agent=agent_name)
        return PlacedCall(call_id, target, caller, agent_name, task)

    async def _dial(
        self,
        call_id: str,
        target: str,
        profile: AgentProfile,
        admission: Admission,
        from_user: str | None,
        ring_timeout_s: float,
    ) -> DialOutcome:
        log = _log.bind(call_id=call_id)
        assert self.ua is not None
        try:
            call = await self.ua.invite(
                target,
                call_id=call_id,
                from_user=from_user,
                ring_timeout_s=ring_timeout_s,
                on_progress=functools.partial(self._progress, call_id),
            )
        except SipCallFailed as exc:
            admission.release()
            return self._not_answered(call_id, exc.outcome, exc.status_code, exc.reason, log)
        except (OSError, VoiceError) as exc:  # no RTP port, the transport failed, a bad trunk URI
            admission.release()
            return self._not_answered(call_id, "failed", None, str(exc), log)
        try:
            await self._start(call, profile, admission, log)
        except Exception as exc:
            admission.release()
            log.exception("sip.outbound_start_failed")
            with contextlib.suppress(Exception):
                await call.bye()
            return self._not_answered(call_id, "failed", 200, f"the call could not start: {exc}", log)
        return DialOutcome(call_id, "answered", 200, "OK")

    def _dial_done(self, call_id: str, admission: Admission, task: asyncio.Task[DialOutcome]) -> None:
        """Cancelled (the service stops; perhaps before it began) or failed unexpectedly: the slot goes
        back and the record ends (``canceled``, ``failed``)."""
        self._dialing.pop(call_id, None)
        why = self._cancel_reasons.pop(call_id, "the service stopped while dialing")
        log = _log.bind(call_id=call_id)
        if task.cancelled():
            admission.release()
            self._not_answered(call_id, "canceled", None, why, log)
        elif (error := task.exception()) is not None:
            admission.release()
            log.error("sip.outbound_dial_failed", error=repr(error))
            self._not_answered(call_id, "failed", None, f"internal error: {type(error).__name__}", log)

    def _update_sip(self, call_id: str, log: Any, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply ``change`` to the placed record's ``metadata.sip`` (a record already gone: nothing)."""
        store = self.service.store
        try:
            row = store.get_call(call_id)
            if row is None or row.get("status") != "ringing":
                return
            meta = dict(row.get("metadata") or {})
            sip = dict(meta.get("sip") or {})
            change(sip)
            meta["sip"] = sip
            store.update_call(call_id, metadata=meta)
        except RecordError as exc:
            log.error("sip.outbound_record_failed", error=str(exc))

    def _progress(self, call_id: str, response: SipResponse) -> None:
        """A provisional response: the record's ``metadata.sip`` follows the call's progress."""
        code = response.status_code
        if code == 100:
            return
        log = _log.bind(call_id=call_id)
        early = bool(response.body) and response.content_type == "application/sdp"
        entry = {"at": _now_iso(), "status_code": code, "reason": response.reason[:64]}

        def change(sip: dict[str, Any]) -> None:
            if early or sip.get("state") != "early_media":  # once media flows it stays the state
                sip["state"] = "early_media" if early else _STATE_OF_PROVISIONAL.get(code, "progress")
            sip["provisional"] = [*(sip.get("provisional") or []), entry][-MAX_PROVISIONAL_KEPT:]

        self._update_sip(call_id, log, change)
        log.info("sip.outbound_progress", status=code, early_media=early)

    async def _start(self, call: SipCall, profile: AgentProfile, admission: Admission, log: Any) -> None:
        """The callee answered: the placed record hands over to the call runner's (same id)."""
        store = self.service.store
        meta: dict[str, Any] = {}
        started_at: Any = None
        try:
            row = store.get_call(call.call_id)
            if row is not None:
                meta = dict(row.get("metadata") or {})
                started_at = row.get("started_at")
                store.delete_call(call.call_id)
        except RecordError as exc:
            log.error("sip.placed_call_not_adopted", error=str(exc))
        meta.setdefault("placed_at", started_at)
        meta["sip_call_id"] = call.sip_call_id
        sip = dict(meta.get("sip") or {})
        sip.update(state="answered", status_code=200, reason="OK", answered_at=_now_iso())
        meta["sip"] = sip
        try:
            leg = SipLeg(call, metadata=meta)
            leg.start()  # early media first (bridges/sip/rtp_session.py)
            early = call.rtp.early_media
            if early is not None:
                sip.update(early_media_ms=early.received_ms, early_media_delivered_ms=early.delivered_ms)
            leg.metadata["sip"] = sip
            await self.service.manager.start(leg, profile, admission)
        except BaseException:
            with contextlib.suppress(RecordError):  # put the record back, for _not_answered to end
                store.create_call(
                    call.call_id,
                    leg="sip",
                    caller=meta.get("caller"),
                    callee=meta.get("callee"),
                    agent=profile.name,
                    status="ringing",
                    metadata=meta,
                )
            raise
        log.info("sip.outbound_started", early_media_ms=early.received_ms if early else 0)

    def _not_answered(
        self, call_id: str, outcome: str, status_code: int | None, reason: str, log: Any
    ) -> DialOutcome:
        """End the placed record with the outcome (the Twilio path's ``_end_placed``)."""
        log.warning("sip.outbound_not_answered", outcome=outcome, status=status_code, reason=reason)
        fields: dict[str, Any] = {"state": outcome, "outcome": outcome, "reason": reason[:200]}
        if status_code is not None:
            fields["status_code"] = status_code
        self._update_sip(call_id, log, lambda sip: sip.update(fields))
        try:
            row = self.service.store.get_call(call_id)
            if row is not None and row.get("status") == "ringing":  # never a record a runner took over
                self.service.store.end_call(call_id, outcome, duration_ms=0)
        except RecordError as exc:
            log.error("sip.outbound_record_failed", error=str(exc))
        return DialOutcome(call_id, outcome, status_code, reason)

    def dialing(self, call_id: str) -> bool:
        """``call_id`` is an outbound call still ringing (not answered, not failed yet)."""
        return call_id in self._dialing

    async def cancel(self, call_id: str, reason: str = "canceled by the operator") -> bool:
        """Stop dialing ``call_id`` (CANCEL, RFC 3261 §9); its record ends as ``canceled`` with ``reason``.
        ``False`` when it is not dialing (answered, ended or unknown)."""
        task = self._dialing.get(call_id)
        if task is None or task.done():
            return False
        self._cancel_reasons[call_id] = reason
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # let the CANCEL go out
        return True

    async def close(self) -> None:
        """Stop dialing (CANCEL what rings; the records end as ``canceled``)."""
        tasks = list(self._dialing.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0)  # let the CANCELs go out


@contextlib.asynccontextmanager
async def sip_lifespan(service: ServiceLike) -> AsyncIterator[UserAgent | None]:
    """Run the SIP user agent for the life of the app (None when SIP is off)."""
    settings = service.settings
    sip = settings.sip
    if not sip.enabled or sip.port == 0:
        yield None
        return
    app = SipCalls(service)
    ua = UserAgent(sip, app, host=sip.bind or settings.host)
    app.ua = ua
    try:
        await ua.start()
    except OSError as exc:  # the port is taken: the rest of the service still runs (browser, Twilio)
        _log.error("sip.unavailable", host=ua.host, port=sip.port, error=str(exc))
        await ua.close()
        yield None
        return
    _RUNNING[id(service)] = app
    _log.info("sip.started", host=ua.host, port=ua.port, transports=sip.transports)
    try:
        yield ua
    finally:
        _RUNNING.pop(id(service), None)
        await app.close()
        if service.manager.live():  # end calls politely (BYE) while the transports are still up
            with contextlib.suppress(Exception):
                await service.manager.drain(0)
        await ua.close()


async def cancel_dialing(service: ServiceLike, call_id: str) -> bool:
    """Cancel ``call_id`` if it is an outbound SIP call of ``service`` still ringing (the operator's
    hang-up before the answer); ``False`` otherwise."""
    app = _RUNNING.get(id(service))
    return app is not None and await app.cancel(call_id)


class _BadRequest(ValueError):
    """A body that cannot be used (400)."""


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _BadRequest(f"'{name}' must be a string")
    return value.strip()


async def sip_call_response(service: ServiceLike, body: dict[str, Any]) -> JSONResponse:
    """Place an outbound SIP call from an operator's JSON body and answer (see the module docstring).

    Body: ``to`` (a ``sip:`` URI), ``agent``, ``from`` (the user part of our From), ``ring_timeout_s``
    (1-600, default 60), ``wait`` (answer once answered or failed). 201 with ``{"call_id", "status":
    "dialing", "to", "from", "agent", "via": "sip"}``; 400 bad body, 404 unknown agent, 503 SIP off or no
    call slot; with ``wait``: 201 ``answered`` or 502 with the SIP status and the outcome."""
    sip = _RUNNING.get(id(service))
    try:
        to = _text(body, "to")
        if to is None:
            raise _BadRequest("'to' is required: the sip: URI to call")
        agent, from_user = _text(body, "agent"), _text(body, "from")
        ring = body.get("ring_timeout_s", DEFAULT_RING_TIMEOUT_S)
        if isinstance(ring, bool) or not isinstance(ring, int | float) or not 1 <= ring <= 600:
            raise _BadRequest("'ring_timeout_s' must be a number of seconds from 1 to 600")
        wait = body.get("wait", False)
        if not isinstance(wait, bool):
            raise _BadRequest("'wait' must be true or false")
        if body.get("machine_detection") not in (None, "", "off"):
            raise _BadRequest("'machine_detection' is a Twilio option; SIP calls have none")
        parse_target(to)
    except (_BadRequest, SipParseError) as exc:
        return _error(400, "invalid_request", str(exc))
    if sip is None:
        return _error(503, "sip_off", "SIP is not running (voice serve --sip-port)")
    try:
        placed = sip.place(to, agent=agent, from_user=from_user, ring_timeout_s=float(ring))
    except ConfigError as exc:
        return _error(404, "unknown_agent", str(exc))
    except CallRefused as exc:
        return _error(503, exc.reason, exc.message)
    except SipCallFailed as exc:
        return _error(503, "sip_off", str(exc))
    except RecordError as exc:
        _log.error("sip.outbound_record_failed", error=str(exc))
        return _error(500, "internal_error", "the call record could not be created")
    view = {"call_id": placed.call_id, "to": placed.to, "from": placed.caller, "agent": placed.agent}
    if not wait:
        return JSONResponse({**view, "status": "dialing", "via": "sip"}, status_code=201)
    outcome = await asyncio.shield(placed.dialing)
    if outcome.state == "answered":
        return JSONResponse({**view, "status": "answered", "via": "sip"}, status_code=201)
    return _error(
        502,
        "call_failed",
        f"{outcome.state} ({outcome.status_code or '-'} {outcome.reason})",
        call_id=placed.call_id,
        outcome=outcome.state,
        sip_status=outcome.status_code,
    )


async def place_sip_call(request: Request) -> JSONResponse:
    """``POST /api/sip/calls`` (operator): :func:`sip_call_response`."""
    from voice.server import _service

    service = _service(request)
    refused = operator_refusal(service.settings, request)
    if refused is not None:
        return refused
    try:
        body = await read_json_object(request)
    except QueryError as exc:
        return _error(400, "invalid_request", str(exc))
    return await sip_call_response(service, body)


def sip_routes() -> list[Route]:
    """The SIP operator routes: ``POST /api/sip/calls`` (an outbound SIP call)."""
    return [Route(SIP_CALLS_PATH, place_sip_call, methods=["POST"])]
