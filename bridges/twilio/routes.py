"""The service's Twilio routes: incoming calls, status callbacks, the Media Stream and outbound calls.

:func:`twilio_routes` builds them for one service (``voice/server.py`` adds them to its app); the state they
share (the REST client, the ``CallSid`` -> call id map) lives in one :class:`TwilioRoutes` object.

- ``POST /twilio/voice``: Twilio's incoming-call webhook (signed, protocols.md §E.4). Picks the agent
  (``?agent=NAME`` on the webhook URL, else the called number's agent from ``VOICE_TWILIO_NUMBERS``, else
  the default) and answers ``<Connect><Stream url="wss://…/twilio/stream">`` with ``<Parameter>``s
  ``agent``, ``direction``, ``from``, ``to`` and a pre-assigned ``call_id`` (§E.1). All lines busy or
  draining: ``<Reject reason="busy"/>``; an agent that does not exist: a short ``<Say>`` and ``<Hangup/>``.
  A missing or wrong signature: 403, logged.
- ``POST /twilio/status``: call status and asynchronous answering-machine callbacks (signed, §E.5),
  recorded on the call (``metadata.twilio``: the status history, ``answered_by``, the outcome; a line in the
  transcript of a live call). A final status of a call that never reached the stream (``busy``,
  ``no-answer``, ``failed``, ``canceled``) ends its record with that outcome; a machine answer under
  ``VOICE_TWILIO_MACHINE_POLICY=hangup`` (or a fax) hangs the call up through the REST API.
- ``WS /twilio/stream``: the bidirectional Media Stream. The upgrade's signature is checked before
  ``accept`` (a refusal closes with 1008, which answers the upgrade with 403), a call slot is taken (busy or
  draining: closed), then a :class:`~bridges.twilio.leg.TwilioLeg` reads ``connected``/``start`` and the
  call runs under the :class:`~voice.manager.SessionManager` with the agent named in the stream's
  ``customParameters``.
- ``POST /api/calls``: operator API (the same auth as the other ``/api`` routes): place an outbound call.
  The record is created first (status ``ringing``; its id goes to Twilio as the stream's ``call_id``
  parameter), then the REST request (§E.5). Twilio's refusal comes back with Twilio's status, code and
  message (4xx mirrored where the request was at fault, else 502); an invalid number is 400; no credentials
  or no public URL is 503.

Signatures are checked against ``VOICE_PUBLIC_URL`` (:mod:`bridges.twilio.web`). Without a public URL the
URL the request arrived on is used (local development only: behind a proxy, set the public URL).
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from bridges.twilio.callbacks import (
    CallStatusUpdate,
    choose_agent,
    parse_status_callback,
    parse_voice_request,
)
from bridges.twilio.errors import (
    InvalidTransferTarget,
    StreamStartError,
    TwilioProtocolError,
    TwilioRestError,
    TwimlError,
)
from bridges.twilio.leg import TwilioLeg
from bridges.twilio.outbound import place_call
from bridges.twilio.rest import TwilioRest
from bridges.twilio.settings import STATUS_PATH, STREAM_PATH, VOICE_PATH, MachineDetection, TwilioSettings
from bridges.twilio.signature import stream_url
from bridges.twilio.twiml import (
    connect_stream,
    machine_action,
    parse_transfer_target,
    reject,
    say_and_hangup,
)
from bridges.twilio.web import forbidden, twiml_response, verify_webhook, verify_websocket
from voice.config import Settings
from voice.errors import ConfigError, RecordError, VoiceError
from voice.httputil import client_host as _client_host
from voice.httputil import error_response as _error
from voice.httputil import operator_refusal, read_json_object
from voice.logs import get_logger
from voice.manager import CallRefused, SessionManager
from voice.profiles import AgentProfile
from voice.query import QueryError
from voice.realtime.ids import new_id
from voice.store import CallStore

__all__ = ["API_CALLS_PATH", "TwilioHost", "TwilioRoutes", "twilio_routes"]

API_CALLS_PATH: Final = "/api/calls"
WS_CLOSE_NORMAL: Final = 1000
WS_CLOSE_POLICY: Final = 1008
WS_CLOSE_TRY_LATER: Final = 1013
MAX_REMEMBERED_CALLS: Final = 10_000
"""``CallSid`` -> call id entries kept in memory (older ones are found in the store)."""
MAX_STATUS_HISTORY: Final = 50
"""Status callbacks kept per call in ``metadata.twilio.statuses``."""
UNKNOWN_AGENT_MESSAGE: Final = "Sorry, this number is not set up to take calls. Goodbye."
_MACHINE_DETECTION: Final[dict[str, MachineDetection]] = {
    "off": "off",
    "Enable": "Enable",
    "DetectMessageEnd": "DetectMessageEnd",
}
_MIRRORED_TWILIO_STATUSES: Final = frozenset({400, 404, 409, 422, 429})
"""Twilio refusals passed on to the operator with Twilio's own status (the request was at fault). Others
(401/403: our credentials, 5xx, no answer) are 502: the service could not get Twilio to do it."""

_log = get_logger(component="twilio_routes")


class TwilioHost(Protocol):
    """What the routes need of the service (``voice.server.Service`` is one)."""

    settings: Settings
    store: CallStore
    manager: SessionManager

    def profile(self, name: str) -> AgentProfile:
        """An agent profile by name (:class:`ConfigError` when unknown or invalid)."""
        ...


class _BadRequest(VoiceError):
    """A ``POST /api/calls`` body that cannot be used (400)."""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _text(value: Any, name: str) -> str | None:
    """An optional string field of a JSON body (``None`` when absent or empty)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _BadRequest(f"{name} must be a string")
    return value.strip()


class TwilioRoutes:
    """The Twilio endpoints of one service and the state they share (see the module docstring).

    ``rest`` replaces the REST client built from settings (tests); without one, it is built on first use
    from ``TWILIO_ACCOUNT_SID``/``TWILIO_AUTH_TOKEN`` (and ``VOICE_TWILIO_API_BASE``).
    """

    def __init__(self, host: TwilioHost, *, rest: TwilioRest | None = None) -> None:
        self.host = host
        self._rest = rest
        self._calls: OrderedDict[str, str] = OrderedDict()

    @property
    def settings(self) -> Settings:
        return self.host.settings

    @property
    def twilio(self) -> TwilioSettings:
        return self.host.settings.twilio

    # -- shared ------------------------------------------------------------------------------------------

    def rest(self) -> TwilioRest:
        """The REST client (:class:`ConfigError` when the credentials are not configured)."""
        if self._rest is None:
            self._rest = TwilioRest.from_settings(self.twilio)
        return self._rest

    def rest_or_none(self) -> TwilioRest | None:
        """The REST client, or ``None`` without credentials (calls then cannot be transferred)."""
        try:
            return self.rest()
        except ConfigError:
            return None

    def remember(self, call_sid: str, call_id: str) -> None:
        """Map a Twilio ``CallSid`` to our call id (for the status callbacks)."""
        self._calls[call_sid] = call_id
        self._calls.move_to_end(call_sid)
        while len(self._calls) > MAX_REMEMBERED_CALLS:
            self._calls.popitem(last=False)

    def call_for(self, call_sid: str) -> str | None:
        """Our call id for a ``CallSid``: remembered, else found in the stored Twilio calls' metadata."""
        known = self._calls.get(call_sid)
        if known is not None:
            return known
        try:
            rows = self.host.store.list_calls(leg="twilio", limit=1000)
        except RecordError as exc:
            _log.error("twilio.call_lookup_failed", call_sid=call_sid, error=str(exc))
            return None
        for row in rows:
            meta = row.get("metadata") or {}
            if meta.get("call_sid") == call_sid:
                self.remember(call_sid, str(row["id"]))
                return str(row["id"])
        return None

    def _public_stream_url(self, request: Request) -> str:
        if self.twilio.public_url:
            return self.twilio.stream_url
        return stream_url(str(request.base_url), STREAM_PATH)

    # -- POST /twilio/voice --------------------------------------------------------------------------------

    async def voice(self, request: Request) -> Response:
        """The incoming-call webhook: TwiML that connects the call to our Media Stream (§E.1)."""
        check, form = await verify_webhook(request, self.twilio, path=VOICE_PATH)
        if not check.ok:
            return forbidden(check)
        try:
            call = parse_voice_request(form)
        except TwilioProtocolError as exc:
            _log.warning("twilio.voice_request_invalid", error=exc.message)
            return PlainTextResponse(f"bad request: {exc.message}\n", status_code=400)
        requested = request.query_params.get("agent") or None
        agent = choose_agent(call, self.twilio, requested=requested, default=self.settings.agent)
        log = _log.bind(call_sid=call.call_sid, agent=agent)
        try:
            self.host.profile(agent)
        except ConfigError as exc:
            log.error("twilio.unknown_agent", to=call.to, error=str(exc))
            return twiml_response(say_and_hangup(UNKNOWN_AGENT_MESSAGE))
        try:
            self.host.manager.admit().release()  # only a probe: the stream takes its own slot
        except CallRefused as exc:
            log.warning("twilio.call_rejected", reason=exc.reason)
            return twiml_response(reject("busy"))
        call_id = new_id("call")
        self.remember(call.call_sid, call_id)
        parameters = {
            "agent": agent,
            "direction": "inbound",
            "from": call.from_ or "",
            "to": call.to or "",
            "call_id": call_id,
        }
        try:
            xml = connect_stream(self._public_stream_url(request), {k: v for k, v in parameters.items() if v})
        except TwimlError as exc:
            log.error("twilio.stream_url_invalid", error=str(exc))
            return twiml_response(say_and_hangup(UNKNOWN_AGENT_MESSAGE))
        log.info("twilio.incoming_call", call_id=call_id, caller=call.from_, callee=call.to)
        return twiml_response(xml)

    # -- POST /twilio/status -------------------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        """Status and answering-machine callbacks: recorded on the call (§E.5)."""
        check, form = await verify_webhook(request, self.twilio, path=STATUS_PATH)
        if not check.ok:
            return forbidden(check)
        try:
            update = parse_status_callback(form)
        except TwilioProtocolError as exc:
            _log.warning("twilio.status_invalid", error=exc.message)
            return PlainTextResponse(f"bad request: {exc.message}\n", status_code=400)
        call_id = self.call_for(update.call_sid)
        log = _log.bind(call_id=call_id, call_sid=update.call_sid)
        log.info(
            "twilio.status",
            status=update.status,
            answered_by=update.answered_by,
            duration_s=update.duration_s,
            error_code=update.error_code,
        )
        if call_id is None:
            log.warning("twilio.status_unknown_call")
            return twiml_response("<Response/>")
        self._record_status(call_id, update, log)
        if update.is_machine_result:
            await self._machine_result(call_id, update, log)
        return twiml_response("<Response/>")

    def _record_status(self, call_id: str, update: CallStatusUpdate, log: Any) -> None:
        store = self.host.store
        try:
            row = store.get_call(call_id)
            if row is None:
                log.warning("twilio.status_no_record")
                return
            meta = dict(row.get("metadata") or {})
            twilio = dict(meta.get("twilio") or {})
            statuses = list(twilio.get("statuses") or [])
            statuses.append({"at": _now_iso(), **update.to_dict()})
            twilio["statuses"] = statuses[-MAX_STATUS_HISTORY:]
            if update.status:
                twilio["status"] = update.status
            if update.answered_by:
                twilio["answered_by"] = update.answered_by
            if update.final:
                twilio["outcome"] = update.outcome
                if update.duration_s is not None:
                    twilio["duration_s"] = update.duration_s
            meta["twilio"] = twilio
            store.update_call(call_id, metadata=meta)
            if update.final and row.get("status") == "ringing":
                store.end_call(call_id, update.outcome or "failed", duration_ms=0)
                log.info("twilio.call_not_connected", outcome=update.outcome)
        except RecordError as exc:
            log.error("twilio.status_not_recorded", error=str(exc))
        runner = self.host.manager.get(call_id)
        transcript = getattr(runner, "transcript", None) if runner is not None else None
        now_ms = getattr(runner, "now_ms", None)
        if transcript is not None and callable(now_ms):
            what = f"answered by {update.answered_by}" if update.answered_by else f"status {update.status}"
            transcript.system(int(now_ms()), f"twilio: {what}", **update.to_dict())

    async def _machine_result(self, call_id: str, update: CallStatusUpdate, log: Any) -> None:
        action = machine_action(update.answered_by, self.twilio.machine_policy)
        log.info("twilio.machine_result", answered_by=update.answered_by, action=action)
        if action != "hangup":
            return
        try:
            await self.rest().hangup_call(update.call_sid)
        except (ConfigError, TwilioRestError) as exc:
            log.error("twilio.machine_hangup_failed", error=str(exc))
        await self.host.manager.hangup(call_id, "answering_machine")

    # -- WS /twilio/stream ---------------------------------------------------------------------------------

    async def stream(self, websocket: WebSocket) -> None:
        """One call's Media Stream: check, admit, read ``start``, run the call to its end."""
        check = verify_websocket(websocket, self.twilio, path=STREAM_PATH)
        if not check.ok:
            await websocket.close(code=WS_CLOSE_POLICY)
            return
        try:
            admission = self.host.manager.admit()
        except CallRefused as exc:
            _log.warning("twilio.stream_refused_busy", reason=exc.reason, client=_client_host(websocket))
            await websocket.close(code=WS_CLOSE_TRY_LATER)
            return
        with admission:
            try:
                leg = await TwilioLeg.open(
                    websocket,
                    start_timeout_s=self.twilio.start_timeout_s,
                    rest=self.rest_or_none(),
                    metadata=self._leg_metadata(check.algorithm),
                )
            except StreamStartError as exc:
                _log.warning("twilio.stream_not_started", error=str(exc), client=_client_host(websocket))
                return
            log = leg.log
            profile = self._stream_profile(leg, log)
            if profile is None:
                await leg.hangup("unknown_agent")
                return
            if not self._adopt_placed_call(leg, log):
                await leg.hangup("call_id_in_use")
                return
            self.remember(leg.call_sid, leg.call_id)
            try:
                reason = await self.host.manager.run(leg, profile, admission)
            except CallRefused as exc:
                log.warning("twilio.call_refused", reason=exc.reason)
                await leg.hangup(exc.reason)
                return
            except VoiceError as exc:
                log.error("twilio.call_failed", error=str(exc))
                await leg.hangup("error")
                return
        log.info("twilio.call_finished", end_reason=reason)
        if websocket.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):  # the peer may be gone already: nothing left to tell it
                await websocket.close(code=WS_CLOSE_NORMAL)

    def _leg_metadata(self, algorithm: str) -> dict[str, Any]:
        """What the route adds to the leg's metadata: how the stream was signed and the default transfer
        target (``VOICE_TWILIO_TRANSFER_TO``), which the call runner reads as ``transfer_target``."""
        meta: dict[str, Any] = {"signature": algorithm}
        if self.twilio.transfer_to:
            meta["transfer_target"] = self.twilio.transfer_to
        return meta

    def _stream_profile(self, leg: TwilioLeg, log: Any) -> AgentProfile | None:
        """The agent named in the stream's parameters (else the default agent)."""
        wanted = leg.custom_parameters.get("agent") or self.settings.agent
        for name in dict.fromkeys((wanted, self.settings.agent)):
            try:
                profile = self.host.profile(name)
            except ConfigError as exc:
                log.error("twilio.stream_unknown_agent", agent=name, error=str(exc))
                continue
            return profile
        return None

    def _adopt_placed_call(self, leg: TwilioLeg, log: Any) -> bool:
        """An outbound call placed by ``POST /api/calls`` has a ``ringing`` record under the leg's call id.

        The call runner creates the record of the call it runs, so the placed record hands what it knows (the
        placement time, Twilio's statuses so far, the operator's choices) over to the leg's metadata and makes
        way. No transcript is ever written to a ``ringing`` record, so nothing else is lost. A stream whose
        call id belongs to a live or ended call is refused (``False``): a replayed stream must not write into
        another call's record.
        """
        store = self.host.store
        try:
            row = store.get_call(leg.call_id)
            if row is None:
                return self.host.manager.get(leg.call_id) is None
            if row.get("status") != "ringing":
                log.error("twilio.call_id_in_use", status=row.get("status"))
                return False
            placed = dict(row.get("metadata") or {})
            placed.setdefault("placed_at", row.get("started_at"))
            leg.metadata.update({k: v for k, v in placed.items() if k not in leg.metadata})
            store.delete_call(leg.call_id)
        except RecordError as exc:
            log.error("twilio.placed_call_not_adopted", error=str(exc))
        return True

    # -- POST /api/calls -----------------------------------------------------------------------------------

    def _operator(self, request: Request) -> JSONResponse | None:
        return operator_refusal(self.settings, request)

    async def place(self, request: Request) -> JSONResponse:
        """``POST /api/calls``: place an outbound call through Twilio (201 with the call id and CallSid)."""
        refused = self._operator(request)
        if refused is not None:
            return refused
        try:
            body = await read_json_object(request)
            to = _text(body.get("to"), "to")
            if to is None:
                raise _BadRequest("to is required: the number to call (E.164), a sip: URI or client:NAME")
            from_ = _text(body.get("from"), "from") or self.twilio.from_number
            agent = _text(body.get("agent"), "agent") or self.settings.agent
            amd = _text(body.get("machine_detection"), "machine_detection")
            if amd is not None and amd not in _MACHINE_DETECTION:
                raise _BadRequest(f"machine_detection must be one of {list(_MACHINE_DETECTION)}")
            ring = body.get("ring_timeout_s")
            if ring is not None and (
                isinstance(ring, bool) or not isinstance(ring, int) or not 5 <= ring <= 600
            ):
                raise _BadRequest("ring_timeout_s must be an integer from 5 to 600")
            if not from_:
                raise _BadRequest("no caller id: pass 'from' or set VOICE_TWILIO_FROM_NUMBER")
            callee = parse_transfer_target(to)
        except (_BadRequest, QueryError, InvalidTransferTarget) as exc:
            return _error(400, "invalid_request", str(exc))
        try:
            self.host.profile(agent)
        except ConfigError as exc:
            return _error(404, "unknown_agent", str(exc))
        if self.host.manager.draining:
            return _error(503, "draining", "the service is shutting down; no new calls")
        try:
            rest = self.rest()
            self.twilio.require_public_url()
        except ConfigError as exc:
            return _error(503, "twilio_not_configured", str(exc))
        machine = _MACHINE_DETECTION[amd] if amd is not None else None
        call_id = new_id("call")
        log = _log.bind(call_id=call_id)
        to_shown = f"client:{callee.value}" if callee.kind == "client" else callee.value
        meta: dict[str, Any] = {"direction": "outbound", "from": from_, "to": to_shown, "agent": agent}
        try:
            self.host.store.create_call(
                call_id,
                leg="twilio",
                caller=from_,
                callee=to_shown,
                agent=agent,
                status="ringing",
                metadata=meta,
            )
        except RecordError as exc:
            log.error("twilio.outbound_record_failed", error=str(exc))
            return _error(500, "internal_error", "the call record could not be created")
        started = time.monotonic()
        try:
            info = await place_call(
                rest,
                self.twilio,
                to=to,
                agent=agent,
                from_=from_,
                call_id=call_id,
                machine_detection=machine,
                ring_timeout_s=ring,
            )
        except TwilioRestError as exc:
            log.warning("twilio.outbound_refused", status=exc.status, code=exc.code, error=exc.twilio_message)
            self._end_placed(call_id, "failed", {"error": exc.to_dict()}, log)
            status = exc.status if exc.status in _MIRRORED_TWILIO_STATUSES else 502
            details = {k: v for k, v in exc.to_dict().items() if k not in ("error", "message")}
            return _error(status, "twilio_error", exc.describe(), call_id=call_id, **details)
        except (ConfigError, TwimlError, InvalidTransferTarget) as exc:
            log.error("twilio.outbound_not_placed", error=str(exc))
            self._end_placed(call_id, "failed", {"error": str(exc)}, log)
            return _error(503 if isinstance(exc, ConfigError) else 400, "invalid_request", str(exc))
        self.remember(info.sid, call_id)
        meta.update({"call_sid": info.sid, "twilio": {"status": info.status, "statuses": []}})
        try:
            self.host.store.update_call(call_id, metadata=meta)
        except RecordError as exc:
            log.error("twilio.outbound_record_failed", error=str(exc))
        log.info(
            "twilio.outbound_placed",
            call_sid=info.sid,
            to=to_shown,
            agent=agent,
            ms=round((time.monotonic() - started) * 1000),
        )
        return JSONResponse(
            {
                "call_id": call_id,
                "call_sid": info.sid,
                "status": info.status,
                "to": to_shown,
                "from": from_,
                "agent": agent,
            },
            status_code=201,
        )

    def _end_placed(self, call_id: str, reason: str, twilio: dict[str, Any], log: Any) -> None:
        try:
            row = self.host.store.get_call(call_id)
            meta = dict((row or {}).get("metadata") or {})
            meta["twilio"] = twilio
            self.host.store.update_call(call_id, metadata=meta)
            self.host.store.end_call(call_id, reason, duration_ms=0)
        except RecordError as exc:
            log.error("twilio.outbound_record_failed", error=str(exc))

    # -- routes --------------------------------------------------------------------------------------------

    def routes(self) -> list[Route | WebSocketRoute]:
        """``/twilio/voice``, ``/twilio/status``, ``/twilio/stream`` and ``POST /api/calls``."""
        return [
            Route(VOICE_PATH, self.voice, methods=["POST"]),
            Route(STATUS_PATH, self.status, methods=["POST"]),
            WebSocketRoute(STREAM_PATH, self.stream),
            Route(API_CALLS_PATH, self.place, methods=["POST"]),
        ]


def twilio_routes(host: TwilioHost, *, rest: TwilioRest | None = None) -> list[Route | WebSocketRoute]:
    """The Twilio routes of the service ``host`` (see the module docstring); ``rest`` is for tests."""
    return TwilioRoutes(host, rest=rest).routes()
