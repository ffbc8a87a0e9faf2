"""The service's Twilio routes: incoming calls, status callbacks, the Media Stream and outbound calls.

:func:`twilio_routes` builds them for one service (``voice/server.py`` adds them to its app); the state they
share (the REST client, the ``CallSid`` -> call id map) lives in one :class:`TwilioRoutes` object.

- ``POST /twilio/voice``: Twilio's incoming-call webhook (signed, protocols.md §E.4). Picks the agent
  (``?agent=NAME`` on the webhook URL, else the called number's agent from ``VOICE_TWILIO_NUMBERS``, else
  the default) and answers ``<Connect><Stream url="wss://…/twilio/stream">`` with ``<Parameter>``s
  ``agent``, ``direction``, ``from``, ``to`` and a pre-assigned ``call_id`` (§E.1). All lines busy or
  draining: the busy message (``<Say>``, then ``<Hangup/>``; :mod:`bridges.twilio.busy`) and a record of the
  refused call (end reason ``refused``); an agent that does not exist: a short ``<Say>`` and ``<Hangup/>``.
  A missing or wrong signature: 403, logged.
- ``POST /twilio/status``: call status and asynchronous answering-machine callbacks (signed, §E.5),
  recorded on the call (``metadata.twilio``: the status history, ``answered_by``, the outcome, the machine
  action; a line in the transcript of a live call). A final status of a call that never reached the stream
  (``busy``, ``no-answer``, ``failed``, ``canceled``) ends its record with that outcome. A machine answer
  follows the agent's policy (:mod:`bridges.twilio.machine`: ``[answering_machine]`` of the profile, else
  ``VOICE_TWILIO_MACHINE_POLICY``): ``hangup`` (and a fax) hangs the call up through the REST API and ends
  the live call; ``leave_message`` gives the model a system note that it reached voicemail (leave the
  message after the beep, then ``end_call``) and ends the call ``max_message_s`` later at the latest;
  ``talk`` does nothing special. No status is lost to the stream's set-up: one that arrives before the call
  has its own record goes into the leg's metadata (from which the runner creates the record), and what the
  live call must hear of it (the transcript line, the machine action) waits until the call's record exists.
- ``WS /twilio/stream``: the bidirectional Media Stream. The upgrade's signature is checked before
  ``accept`` (a refusal closes with 1008, which answers the upgrade with 403), a call slot is taken, then a
  :class:`~bridges.twilio.leg.TwilioLeg` reads ``connected``/``start`` and the call runs under the
  :class:`~voice.manager.SessionManager` with the agent named in the stream's ``customParameters``. No slot
  left (the webhook saw one, the stream did not): the stream is accepted, the caller hears the busy prompt,
  the socket is closed (which ends the call) and the call is recorded as refused.
- ``POST /api/calls``: operator API (the same auth as the other ``/api`` routes): place an outbound call
  (a ``sip:``/``sips:`` URI goes through the service's own SIP user agent, ``bridges/sip/service.py``,
  unless the body says ``"via": "twilio"``).
  The record is created first (status ``ringing``; its id goes to Twilio as the stream's ``call_id``
  parameter), then the REST request (§E.5). Twilio's refusal comes back with Twilio's status, code and
  message (4xx mirrored where the request was at fault, else 502); an invalid number is 400; no credentials
  or no public URL is 503.

Signatures are checked against ``VOICE_PUBLIC_URL`` (:mod:`bridges.twilio.web`). Without a public URL the
URL the request arrived on is used (local development only: behind a proxy, set the public URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from bridges.base import LegHangup, PlaybackReport, frame_bytes
from bridges.sip.service import is_sip_target, sip_call_response
from bridges.twilio.busy import busy_prompt, busy_twiml
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
from bridges.twilio.machine import MachineAction, MachinePlan, machine_plan
from bridges.twilio.outbound import place_call
from bridges.twilio.rest import TwilioRest
from bridges.twilio.settings import STATUS_PATH, STREAM_PATH, VOICE_PATH, MachineDetection, TwilioSettings
from bridges.twilio.signature import stream_url
from bridges.twilio.twiml import connect_stream, parse_transfer_target, say_and_hangup
from bridges.twilio.web import forbidden, twiml_response, verify_webhook, verify_websocket
from voice.config import Settings
from voice.errors import ConfigError, RecordError, VoiceError
from voice.httputil import client_host as _client_host
from voice.httputil import error_response as _error
from voice.httputil import operator_refusal, read_json_object
from voice.logs import get_logger
from voice.manager import CallRefused, RunnerLike, SessionManager
from voice.profiles import AgentProfile, AnsweringMachine
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
MAX_WAITING_CALLS: Final = 1000
"""Calls whose status callbacks wait for the call's stream or record (the oldest are dropped beyond)."""
RECORD_WAIT_S: Final = 5.0
"""How long a new stream's call may take to create its record before waiting updates are applied anyway."""
REFUSED: Final = "refused"
"""End reason of a call turned away because no line was free (``metadata.refused``: busy or draining)."""
MACHINE_END_REASON: Final = "answering_machine"
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
        self._streams: dict[str, TwilioLeg] = {}
        """Call id -> the leg of a stream being set up or running in this process."""
        self._ready: set[str] = set()
        """Streams whose call has its record: status updates reach the live call at once."""
        self._waiting: OrderedDict[str, list[CallStatusUpdate]] = OrderedDict()
        """Updates the live call has not heard of yet (its record does not exist yet, or it still rings)."""
        self._unrecorded: OrderedDict[str, list[CallStatusUpdate]] = OrderedDict()
        """Updates of a known call with neither record nor stream yet (recorded when its stream starts)."""
        self._call_tasks: dict[str, set[asyncio.Task[None]]] = {}
        self._busy_render: asyncio.Task[bytes] | None = None

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
            call_id = new_id("call")
            self.remember(call.call_sid, call_id)
            meta = {
                "call_sid": call.call_sid,
                "direction": call.direction or "inbound",
                "caller": call.from_,
                "callee": call.to,
                "agent": agent,
            }
            self._record_refused(call_id, meta, exc.reason, "webhook", log.bind(call_id=call_id))
            return twiml_response(busy_twiml(self.twilio.busy_message))
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
        """Status and answering-machine callbacks: recorded on the call, heard by the live call (§E.5)."""
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
        plan = self._machine_plan(call_id, update) if update.is_machine_result else None
        before = self._record_status(call_id, update, plan.action if plan else None, log)
        if plan is not None:
            log.info("twilio.machine_result", answered_by=update.answered_by, action=plan.action)
            if plan.action == "hangup":
                await self._rest_hangup(update.call_sid, log)
        await self._deliver(call_id, update, before, log)
        return twiml_response("<Response/>")

    def _record_status(
        self, call_id: str, update: CallStatusUpdate, action: MachineAction | None, log: Any
    ) -> str | None:
        """Record ``update`` on the call and say where it went: the record's status before it (``ringing``,
        ``live``, ``ended``); ``"stream"`` when the call's stream is being set up and its record does not
        exist yet (the update goes into the leg's metadata, from which the runner creates the record); or
        ``None`` (no record, no stream yet: kept until the call's stream starts)."""
        store = self.host.store
        try:
            row = store.get_call(call_id)
        except RecordError as exc:
            log.error("twilio.status_not_recorded", error=str(exc))
            return None
        if row is None:
            leg = self._streams.get(call_id)
            if leg is not None:
                leg.metadata["twilio"] = _with_update(leg.metadata.get("twilio"), update, action)
                log.info("twilio.status_before_record", status=update.status)
                return "stream"
            _keep(self._unrecorded, call_id, update)
            log.info("twilio.status_before_stream", status=update.status)
            return None
        try:
            meta = dict(row.get("metadata") or {})
            meta["twilio"] = _with_update(meta.get("twilio"), update, action)
            store.update_call(call_id, metadata=meta)
            if update.final and row.get("status") == "ringing":
                store.end_call(call_id, update.outcome or "failed", duration_ms=0)
                log.info("twilio.call_not_connected", outcome=update.outcome)
        except RecordError as exc:
            log.error("twilio.status_not_recorded", error=str(exc))
        return str(row.get("status"))

    async def _deliver(self, call_id: str, update: CallStatusUpdate, before: str | None, log: Any) -> None:
        """Let the live call hear of ``update`` (a transcript line, the machine action): at once when its
        record exists, else once it does (a stream being set up) or once its stream has started (a machine
        result while the call still rings)."""
        if call_id in self._ready:
            runner = self.host.manager.get(call_id)
            if runner is not None:
                await self._apply(runner, call_id, update, log)
        elif call_id in self._streams or (before == "ringing" and update.is_machine_result):
            _keep(self._waiting, call_id, update)
        elif before == "ringing" and update.final:
            self._waiting.pop(call_id, None)  # the call never reached the stream: nothing left to hear

    async def _apply(self, runner: RunnerLike, call_id: str, update: CallStatusUpdate, log: Any) -> None:
        """The live call hears of ``update``: a transcript line, and the agent's answering-machine policy."""
        _transcript_line(runner, update)
        if not update.is_machine_result:
            return
        plan = self._machine_plan(call_id, update)
        if plan.action == "hangup":
            await self.host.manager.hangup(call_id, MACHINE_END_REASON)
        elif plan.action == "leave_message" and plan.note is not None:
            if not _tell_model(runner, plan.note, respond=plan.respond):
                log.error("twilio.voicemail_note_undelivered")
                return
            _system_line(
                runner, "answering machine: the agent leaves a message", answered_by=update.answered_by
            )
            limit = self._answering_machine(self._call_profile(call_id)).max_message_s
            self._spawn_for(call_id, self._end_message(call_id, limit, log), "voicemail-limit")
            log.info("twilio.voicemail", answered_by=update.answered_by, respond=plan.respond)

    def _call_profile(self, call_id: str) -> AgentProfile | None:
        """The agent of a call: the live runner's, else the one its stream or its record names."""
        profile = getattr(self.host.manager.get(call_id), "profile", None)
        if isinstance(profile, AgentProfile):
            return profile
        leg = self._streams.get(call_id)
        name = leg.custom_parameters.get("agent") if leg is not None else None
        if not name:
            with contextlib.suppress(RecordError):
                name = (self.host.store.get_call(call_id) or {}).get("agent")
        try:
            return self.host.profile(str(name or self.settings.agent))
        except ConfigError:
            return None

    def _answering_machine(self, profile: AgentProfile | None) -> AnsweringMachine:
        """The agent's ``[answering_machine]`` settings (the service's policy when it has none)."""
        if profile is not None and profile.answering_machine is not None:
            return profile.answering_machine
        return AnsweringMachine(policy=self.twilio.machine_policy)

    def _machine_plan(self, call_id: str, update: CallStatusUpdate) -> MachinePlan:
        profile = self._call_profile(call_id)
        amd = self._answering_machine(profile)
        turns = profile.turn_detection if profile is not None else None
        auto = turns is None or (turns.enabled and turns.create_response)
        return machine_plan(update.answered_by, amd.policy, message=amd.message, auto_turns=auto)

    async def _rest_hangup(self, call_sid: str, log: Any) -> None:
        try:
            await self.rest().hangup_call(call_sid)
        except (ConfigError, TwilioRestError) as exc:
            log.error("twilio.machine_hangup_failed", error=str(exc))

    async def _end_message(self, call_id: str, limit_s: float, log: Any) -> None:
        """The voicemail message's time limit: end the call should the model not end it itself."""
        await asyncio.sleep(limit_s)
        if await self.host.manager.hangup(call_id, MACHINE_END_REASON):
            log.info("twilio.voicemail_time_up", max_message_s=limit_s)

    def _spawn_for(self, call_id: str, coro: Any, name: str) -> None:
        """A background task of one call, cancelled when its stream ends."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"twilio-{name}-{call_id}")
        tasks = self._call_tasks.setdefault(call_id, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

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
            await self._refuse_stream(websocket, exc.reason, check.algorithm)
            return
        if self.host.manager.occupancy() >= self.host.manager.capacity:
            self._prepare_busy_prompt()  # this call took the last line: the next stream may need it
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
            self._register(leg)
            try:
                runner = await self.host.manager.start(leg, profile, admission)
            except CallRefused as exc:
                self._unregister(leg.call_id)
                await self._busy(leg, exc.reason, log)
                return
            except VoiceError as exc:
                self._unregister(leg.call_id)
                log.error("twilio.call_failed", error=str(exc))
                await leg.hangup("error")
                return
        ready = asyncio.create_task(self._when_recorded(runner, leg.call_id, log), name="twilio-record-wait")
        try:
            reason = await self.host.manager.wait(leg.call_id)
        finally:
            ready.cancel()
            self._unregister(leg.call_id)
        log.info("twilio.call_finished", end_reason=reason)
        if websocket.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):  # the peer may be gone already: nothing left to tell it
                await websocket.close(code=WS_CLOSE_NORMAL)

    def _register(self, leg: TwilioLeg) -> None:
        """The stream of ``leg`` is being set up: updates that came before it go into its metadata (the runner
        creates the record from it) and wait for the live call."""
        self._streams[leg.call_id] = leg
        for update in self._unrecorded.pop(leg.call_id, []):
            leg.metadata["twilio"] = _with_update(leg.metadata.get("twilio"), update, None)
            _keep(self._waiting, leg.call_id, update)

    def _unregister(self, call_id: str) -> None:
        self._streams.pop(call_id, None)
        self._ready.discard(call_id)
        self._waiting.pop(call_id, None)
        for task in self._call_tasks.pop(call_id, set()):
            task.cancel()

    async def _when_recorded(self, runner: RunnerLike, call_id: str, log: Any) -> None:
        """Once the call's runner has created its record (or after :data:`RECORD_WAIT_S`), give it the updates
        that waited, then let later ones through at once. No update is lost in between: the last batch is
        taken and the call marked ready with no ``await`` between them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECORD_WAIT_S
        while self.host.manager.get(call_id) is runner:
            try:
                if self.host.store.get_call(call_id) is not None:
                    break
            except RecordError as exc:
                log.error("twilio.record_check_failed", error=str(exc))
            if loop.time() >= deadline:
                log.warning("twilio.record_not_seen", waited_s=RECORD_WAIT_S)
                break
            await asyncio.sleep(0.02)
        while batch := self._waiting.pop(call_id, None):
            for update in batch:
                await self._apply(runner, call_id, update, log)
        self._ready.add(call_id)

    async def _refuse_stream(self, websocket: WebSocket, reason: str, algorithm: str) -> None:
        """No line left for a stream (the race after the webhook's check): read ``start`` to learn the call,
        then :meth:`_busy`."""
        _log.warning("twilio.stream_refused_busy", reason=reason, client=_client_host(websocket))
        try:
            leg = await TwilioLeg.open(
                websocket,
                start_timeout_s=self.twilio.start_timeout_s,
                metadata=self._leg_metadata(algorithm),
            )
        except StreamStartError as exc:
            _log.warning("twilio.stream_not_started", error=str(exc), client=_client_host(websocket))
            return
        await self._busy(leg, reason, leg.log)

    async def _busy(self, leg: TwilioLeg, reason: str, log: Any) -> None:
        """Record the call as refused, let the caller hear the busy prompt, then close the stream (which ends
        the call)."""
        if self._record_refused(leg.call_id, leg.metadata, reason, "stream", log):
            self.remember(leg.call_sid, leg.call_id)
        try:
            prompt = await asyncio.to_thread(busy_prompt, self.twilio.busy_message)
            await _play_prompt(leg, prompt, "busy")
        finally:
            await leg.hangup(REFUSED)

    def _prepare_busy_prompt(self) -> None:
        """Render the busy prompt in the background (once): a stream refused later hears it at once."""
        if self._busy_render is None:
            render = asyncio.to_thread(busy_prompt, self.twilio.busy_message)
            self._busy_render = asyncio.create_task(render, name="twilio-busy-prompt")

    def _record_refused(
        self, call_id: str, meta: Mapping[str, Any], reason: str, where: str, log: Any
    ) -> bool:
        """A record of a call turned away (end reason ``refused``; ``metadata.refused``: busy or draining);
        ``False`` when it could not be written (the id belongs to another call, or the store failed)."""
        store = self.host.store
        info = {"refused": reason, "refused_at": where}
        try:
            row = store.get_call(call_id)
            if row is None:
                store.create_call(
                    call_id,
                    leg="twilio",
                    caller=meta.get("caller"),
                    callee=meta.get("callee"),
                    agent=meta.get("agent"),
                    status="ringing",
                    metadata={**meta, **info},
                )
            elif row.get("status") == "ringing":
                store.update_call(call_id, metadata={**meta, **(row.get("metadata") or {}), **info})
            else:
                log.error("twilio.call_id_in_use", status=row.get("status"))
                return False
            store.end_call(call_id, REFUSED, duration_ms=0)
        except RecordError as exc:
            log.error("twilio.refused_not_recorded", error=str(exc))
            return False
        log.info("twilio.call_refused", reason=reason, at=where)
        return True

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
        """``POST /api/calls``: place an outbound call through Twilio (201 with the call id and CallSid); a
        ``sip:``/``sips:`` ``to`` (or ``"via": "sip"``) goes to the service's own SIP user agent instead
        (:func:`bridges.sip.service.sip_call_response`) unless the body says ``"via": "twilio"``."""
        refused = self._operator(request)
        if refused is not None:
            return refused
        try:
            body = await read_json_object(request)
            via = _text(body.get("via"), "via")
            if via not in (None, "twilio", "sip"):
                raise _BadRequest("via must be 'twilio' or 'sip'")
            to = _text(body.get("to"), "to")
            if via == "sip" or (via is None and to is not None and is_sip_target(to)):
                return await sip_call_response(self.host, body)  # our own SIP user agent
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


def _keep(table: OrderedDict[str, list[CallStatusUpdate]], call_id: str, update: CallStatusUpdate) -> None:
    """Add ``update`` to ``call_id``'s list in ``table``, both bounded (the oldest go first)."""
    updates = table.setdefault(call_id, [])
    table.move_to_end(call_id)
    updates.append(update)
    del updates[:-MAX_STATUS_HISTORY]
    while len(table) > MAX_WAITING_CALLS:
        table.popitem(last=False)


def _with_update(twilio: Any, update: CallStatusUpdate, action: MachineAction | None) -> dict[str, Any]:
    """``metadata.twilio`` with ``update`` recorded: the status history, status, ``answered_by``, the machine
    action taken, and for a final status the outcome and duration."""
    out: dict[str, Any] = dict(twilio) if isinstance(twilio, Mapping) else {}
    statuses = list(out.get("statuses") or [])
    statuses.append({"at": _now_iso(), **update.to_dict()})
    out["statuses"] = statuses[-MAX_STATUS_HISTORY:]
    if update.status:
        out["status"] = update.status
    if update.answered_by:
        out["answered_by"] = update.answered_by
    if action is not None:
        out["machine_action"] = action
    if update.final:
        out["outcome"] = update.outcome
        if update.duration_s is not None:
            out["duration_s"] = update.duration_s
    return out


def _system_line(runner: RunnerLike, text: str, **data: Any) -> None:
    """A system line in a live call's transcript (runners without a transcript are left alone)."""
    transcript = getattr(runner, "transcript", None)
    now_ms = getattr(runner, "now_ms", None)
    if transcript is not None and callable(now_ms):
        transcript.system(int(now_ms()), text, **data)


def _transcript_line(runner: RunnerLike, update: CallStatusUpdate) -> None:
    what = f"answered by {update.answered_by}" if update.answered_by else f"status {update.status}"
    _system_line(runner, f"twilio: {what}", **update.to_dict())


def _tell_model(runner: RunnerLike, note: str, *, respond: bool) -> bool:
    """Give the live call's model a system note and, with ``respond``, ask for a response
    (:meth:`voice.call.runner.CallRunner.instruct`); ``False`` when the runner offers no way to."""
    instruct = getattr(runner, "instruct", None)
    if not callable(instruct):
        return False
    instruct(note, respond=respond)
    return True


async def _play_prompt(leg: TwilioLeg, prompt: bytes, item_id: str) -> None:
    """Send ``prompt`` (µ-law, whole 20 ms frames) at once, Twilio queues it; return when the caller has
    heard it (the last mark echoed), the caller hung up, or its length plus two seconds have passed."""
    total_ms = len(prompt) // 8
    frame = frame_bytes("pcmu")
    for offset in range(0, len(prompt), frame):
        await leg.play(prompt[offset : offset + frame], item_id, min(total_ms, (offset + frame) // 8))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(total_ms / 1000 + 2):
            async for event in leg.events():
                if isinstance(event, LegHangup):
                    return
                if isinstance(event, PlaybackReport) and event.played_ms >= total_ms:
                    return


def twilio_routes(host: TwilioHost, *, rest: TwilioRest | None = None) -> list[Route | WebSocketRoute]:
    """The Twilio routes of the service ``host`` (see the module docstring); ``rest`` is for tests."""
    return TwilioRoutes(host, rest=rest).routes()
