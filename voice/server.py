"""The service: one Starlette app with the caller page, the browser call socket, the operator API, metrics
and health, plus the embedded local Realtime engine when no upstream is configured.

Routes (the operator API is documented in :mod:`voice.api_spec`, served at ``/api/openapi.json`` and
``/api/docs``):

=================================  ==========================================================================
``GET /``                          the caller page (Talk button, transcript, keypad, cost meter, agent choice)
``GET /static/*``                  ``voice/web``: ``widget.js`` (embeddable), ``app.js``, ``worklet.js``, css
``WS /ws/browser?agent=&token=``   one browser call (``bridges/browser/PROTOCOL.md``)
``GET /api/agents``                public: the agents a caller may choose
``GET /api/calls``                 operator: live and past calls (filters: status leg agent since until ...)
``GET /api/calls/{id}``            operator: one call with transcript, usage, cost and recording link
``POST /api/calls/{id}/hangup``    operator: end a live call politely
``GET /api/calls/{id}/recording``  operator: the stereo WAV recording
``POST /api/tokens``               operator: mint a short-lived browser caller token
``GET /metrics``                   operator: Prometheus text format
``GET /healthz`` ``GET /readyz``   liveness; readiness (503 while draining or before the upstream is usable)
``WS /v1/realtime``                the local engine (only when no API key, no upstream URL, no Azure)
=================================  ==========================================================================

Operator routes need ``Authorization: Bearer <settings.api_token>``; with no token configured they answer
only to loopback clients (:func:`voice.auth.check_operator`). Browser calls are authorized by
:func:`voice.auth.check_browser` (signed token, origin allowlist, open on loopback for development); each
client address may start only so many (:mod:`voice.ratelimit`, checked first), and a token starts one call
(:func:`voice.auth.spend`, once the call is admitted).

Start-up (:func:`create_app`): open the call store and close calls a crash left open
(:meth:`~voice.store.CallStore.mark_interrupted_calls`). Lifespan: start the frame pacer, warm the local
engine up (in the background; ``/readyz`` waits for it) or probe the remote upstream. :func:`serve` runs the
app with uvicorn, prints the page URL and drains on SIGTERM (:meth:`Service.drain`): refuse new calls, let
live ones finish up to ``settings.drain_timeout_s``, then end them politely with their records saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final
from urllib.parse import quote, urlsplit

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketState

from bridges.sip.service import cancel_dialing, sip_lifespan, sip_routes
from bridges.twilio.routes import twilio_routes
from bridges.webrtc.routes import routes as webrtc_routes
from voice import __version__, api_spec, native
from voice.auth import MAX_TOKEN_TTL_S, AuthError, check_browser, mint, spend
from voice.call.agent_tools import restaurant_registry
from voice.call.pacer import FramePacer
from voice.call.tools import ToolRegistry
from voice.call.upstream import UpstreamOpener
from voice.config import Settings
from voice.errors import ConfigError, RecordError, UpstreamError, VoiceError
from voice.eventloop import loop_factory
from voice.gcpolicy import tune_gc
from voice.httputil import client_host as _client_host
from voice.httputil import error_response as _error
from voice.httputil import operator_refusal, read_json_object
from voice.logs import get_logger
from voice.manager import Admission, CallRefused, SessionManager
from voice.metrics import CALLS_REFUSED
from voice.profiles import AgentProfile, load_profile, profile_names
from voice.query import QueryError, parse_limit, parse_when
from voice.ratelimit import ClientRateLimiter
from voice.realtime.client import safe_url, upstream_target
from voice.realtime.pricing import PriceTable, default_price_table, with_overrides
from voice.store import CALL_STATUSES, CallStore
from voice.wsprotocol import StreamingWSProtocol

__all__ = [
    "WEB_DIR",
    "Service",
    "create_app",
    "database_lock",
    "page_url",
    "run",
    "serve",
    "tools_for",
    "upstream_mode",
]

WEB_DIR: Final = Path(__file__).resolve().parent / "web"
DEFAULT_TOKEN_TTL_S: Final = 300
WS_CLOSE_NORMAL: Final = 1000
WS_CLOSE_POLICY: Final = 1008
WS_CLOSE_INTERNAL: Final = 1011
WS_CLOSE_TRY_LATER: Final = 1013
PROBE_INTERVAL_S: Final = 30.0
MAX_WS_FRAME: Final = 1024 * 1024

_log = get_logger(component="server")

_TOOL_FACTORIES: Final[dict[str, Callable[[], ToolRegistry]]] = {"restaurant": restaurant_registry}


def tools_for(profile: AgentProfile) -> ToolRegistry:
    """The Python function tools of an agent (built-ins only for agents without their own)."""
    factory = _TOOL_FACTORIES.get(profile.name)
    return factory() if factory is not None else ToolRegistry()


def upstream_mode(settings: Settings) -> str:
    """``"local"`` (the embedded engine), ``"url"`` (``upstream_url``), ``"azure"`` or ``"openai"``."""
    if settings.upstream_url:
        return "url"
    if settings.azure_endpoint:
        return "azure"
    if settings.openai_api_key is not None:
        return "openai"
    return "local"


def page_url(host: str, port: int) -> str:
    """The URL a person opens (``0.0.0.0`` and ``::`` shown as loopback)."""
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


@dataclass
class Service:
    """Everything one service process shares (``app.state.service``)."""

    settings: Settings
    store: CallStore
    pacer: FramePacer
    manager: SessionManager
    price_table: PriceTable
    token_secret: str
    mode: str
    browser_limiter: ClientRateLimiter
    """New browser calls per client address (``settings.browser_rate_*``)."""
    engine: Any | None = None
    """The local engine's ``EngineServices`` when it runs in this process."""
    upstream_ready: bool = False
    upstream_detail: str = "starting"
    started_at: float = field(default_factory=time.time)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _profiles: dict[str, AgentProfile] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Calls can be taken: the upstream is usable and the service is not draining."""
        return self.upstream_ready and not self.manager.draining

    def profile(self, name: str) -> AgentProfile:
        """An agent profile by name (loaded once; :class:`ConfigError` if unknown or invalid)."""
        profile = self._profiles.get(name)
        if profile is None:
            profile = load_profile(name, self.settings.prompts_dir)
            self._profiles[name] = profile
        return profile

    def agents(self) -> list[dict[str, str]]:
        """Name and description of every agent in ``prompts_dir`` that loads."""
        out: list[dict[str, str]] = []
        for name in profile_names(self.settings.prompts_dir):
            try:
                out.append({"name": name, "description": self.profile(name).description})
            except ConfigError as exc:
                _log.warning("agent_profile_invalid", agent=name, error=str(exc))
        return out

    async def start(self) -> None:
        """Lifespan start: the pacer, then warm-up or upstream probing in the background."""
        self.pacer.start()
        job = self._warm_up() if self.engine is not None else self._probe_upstream()
        task = asyncio.create_task(job, name="upstream-readiness")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _warm_up(self) -> None:
        self.upstream_detail = "local engine warming up"
        try:
            await asyncio.to_thread(self.engine.warm_up)  # type: ignore[union-attr]
        except Exception as exc:  # speech models missing: calls still work without recognition
            _log.exception("engine_warm_up_failed")
            self.upstream_detail = f"local engine warm-up failed: {exc}"
        else:
            self.upstream_detail = "local engine"
            tune_gc()  # the speech models are loaded: keep collections from walking them
        self.upstream_ready = True

    async def _probe_upstream(self) -> None:
        """Readiness for a remote upstream: its host accepts TCP connections (no session is opened)."""
        url, _headers = upstream_target(self.settings, "gpt-realtime")
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        while True:
            try:
                _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5.0)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                self.upstream_ready = True
                self.upstream_detail = safe_url(url)
            except (OSError, TimeoutError) as exc:
                self.upstream_ready = False
                self.upstream_detail = f"{safe_url(url)} unreachable: {exc}"
                _log.warning("upstream_unreachable", upstream=safe_url(url), error=str(exc))
            await asyncio.sleep(PROBE_INTERVAL_S if self.upstream_ready else 5.0)

    async def drain(self, timeout_s: float | None = None) -> list[str]:
        """Refuse new calls, let live ones finish up to ``timeout_s``, then end them politely."""
        return await self.manager.drain(timeout_s)

    async def stop(self) -> None:
        """Lifespan end: end whatever is still live (records saved), stop the pacer and the engine, close
        the store."""
        await self.manager.drain(0)
        for task in list(self._tasks):
            task.cancel()
        await self.pacer.stop()
        if self.engine is not None:
            self.engine.close()
        self.store.close()


# -- helpers ---------------------------------------------------------------------------------------------


def _service(conn: HTTPConnection) -> Service:
    service: Service = conn.app.state.service
    return service


def _operator(request: Request) -> JSONResponse | None:
    """None if the request may use the operator API, else the refusal to return (logged)."""
    return operator_refusal(_service(request).settings, request)


def _call_view(row: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(row)
    out["recording_url"] = (
        f"/api/calls/{quote(row['id'], safe='')}/recording" if row.get("recording_path") else None
    )
    out["live"] = live
    return out


# -- pages, health, metrics ------------------------------------------------------------------------------


async def index(request: Request) -> Response:
    """``GET /``: the caller page."""
    return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def healthz(request: Request) -> JSONResponse:
    """``GET /healthz``: liveness (the process answers), live call count, uptime."""
    service = _service(request)
    return JSONResponse(
        {
            "status": "ok",
            "version": __version__,
            "live_calls": len(service.manager.live()),
            "uptime_s": round(time.time() - service.started_at, 1),
        }
    )


async def readyz(request: Request) -> JSONResponse:
    """``GET /readyz``: 200 when calls can be taken; 503 while draining or before the upstream is usable."""
    service = _service(request)
    body = {
        "ready": service.ready,
        "draining": service.manager.draining,
        "upstream": service.mode,
        "upstream_ready": service.upstream_ready,
        "detail": service.upstream_detail,
        "live_calls": len(service.manager.live()),
        "max_calls": service.settings.max_calls,
    }
    return JSONResponse(body, status_code=200 if service.ready else 503)


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: Prometheus text exposition (operator auth)."""
    refused = _operator(request)
    if refused is not None:
        return refused
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def openapi_json(request: Request) -> JSONResponse:
    """``GET /api/openapi.json``: the operator API's OpenAPI document."""
    return JSONResponse(api_spec.openapi(__version__))


async def api_docs(request: Request) -> HTMLResponse:
    """``GET /api/docs``: the OpenAPI document as an HTML page."""
    return HTMLResponse(api_spec.render_docs(api_spec.openapi(__version__)))


# -- operator API ----------------------------------------------------------------------------------------


async def list_agents(request: Request) -> JSONResponse:
    """``GET /api/agents`` (public): the agents a caller may choose, and the default."""
    service = _service(request)
    response = JSONResponse({"default": service.settings.agent, "agents": service.agents()})
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


async def list_calls(request: Request) -> JSONResponse:
    """``GET /api/calls``: stored calls, newest first, with live snapshots for live ones."""
    refused = _operator(request)
    if refused is not None:
        return refused
    service = _service(request)
    q = request.query_params
    try:
        status = q.get("status") or None
        if status is not None and status not in CALL_STATUSES:
            raise QueryError(f"status must be one of {sorted(CALL_STATUSES)}, got {status!r}")
        since = parse_when(q["since"]) if q.get("since") else None
        until = parse_when(q["until"]) if q.get("until") else None
        limit = parse_limit(q.get("limit"), 100)
        offset = parse_limit(q.get("offset"), 0, name="offset", maximum=10**9)
        filters: dict[str, Any] = {
            "status": status,
            "leg": q.get("leg") or None,
            "agent": q.get("agent") or None,
            "since": since,
            "until": until,
        }
        rows = service.store.list_calls(**filters, limit=limit, offset=offset)
        total = service.store.count_calls(**filters)
    except (QueryError, RecordError) as exc:
        return _error(400, "invalid_query", str(exc))
    live = service.manager.snapshots()
    calls = [_call_view(row, live.get(row["id"])) for row in rows]
    return JSONResponse({"calls": calls, "total": total, "limit": limit, "offset": offset})


async def get_call(request: Request) -> JSONResponse:
    """``GET /api/calls/{id}``: one call with transcript, usage events, cost and recording link."""
    refused = _operator(request)
    if refused is not None:
        return refused
    service = _service(request)
    call_id = request.path_params["call_id"]
    try:
        detail = service.store.call_detail(call_id)
    except RecordError:
        return _error(404, "not_found", f"no call {call_id!r}")
    return JSONResponse(_call_view(detail, service.manager.snapshots().get(call_id)))


async def hangup_call(request: Request) -> JSONResponse:
    """``POST /api/calls/{id}/hangup``: end a live call politely (202), 404 unknown, 409 not live."""
    refused = _operator(request)
    if refused is not None:
        return refused
    service = _service(request)
    call_id = request.path_params["call_id"]
    if await service.manager.hangup(call_id, "operator"):
        return JSONResponse({"call_id": call_id, "status": "ending"}, status_code=202)
    if await cancel_dialing(service, call_id):  # an outbound SIP call still ringing: CANCEL it
        return JSONResponse({"call_id": call_id, "status": "canceled"}, status_code=202)
    row = service.store.get_call(call_id)
    if row is None:
        return _error(404, "not_found", f"no call {call_id!r}")
    return _error(409, "not_live", f"call {call_id!r} is not live here (status {row['status']})")


async def call_recording(request: Request) -> Response:
    """``GET /api/calls/{id}/recording``: the WAV, only from inside ``recordings_dir``."""
    refused = _operator(request)
    if refused is not None:
        return refused
    service = _service(request)
    call_id = request.path_params["call_id"]
    row = service.store.get_call(call_id)
    if row is None:
        return _error(404, "not_found", f"no call {call_id!r}")
    raw = row.get("recording_path")
    if not raw:
        return _error(404, "no_recording", f"call {call_id!r} has no recording")
    path = Path(raw)
    if not path.is_absolute():
        path = service.settings.recordings_dir / path
    path = path.resolve()
    if not path.is_relative_to(service.settings.recordings_dir.resolve()) or not path.is_file():
        return _error(404, "no_recording", f"the recording of call {call_id!r} is not available")
    return FileResponse(path, media_type="audio/wav", filename=f"{call_id}.wav")


async def create_token(request: Request) -> JSONResponse:
    """``POST /api/tokens``: mint a short-lived browser caller token (201)."""
    refused = _operator(request)
    if refused is not None:
        return refused
    service = _service(request)
    try:
        body = await read_json_object(request)
        agent = body.get("agent")
        origin = body.get("origin")
        ttl = body.get("ttl_s", DEFAULT_TOKEN_TTL_S)
        if agent is not None and not isinstance(agent, str):
            raise QueryError("agent must be a string")
        if origin is not None and not isinstance(origin, str):
            raise QueryError("origin must be a string")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TOKEN_TTL_S:
            raise QueryError(f"ttl_s must be a number of seconds in (0, {MAX_TOKEN_TTL_S}]")
        if agent is not None:
            service.profile(agent)
        now = time.time()
        token = mint(service.token_secret, float(ttl), agent=agent, origin=origin, now=now)
    except (QueryError, ValueError) as exc:
        return _error(400, "invalid_request", str(exc))
    except ConfigError as exc:
        return _error(404, "unknown_agent", str(exc))
    ws_query = f"token={quote(token, safe='')}" + (f"&agent={quote(agent, safe='')}" if agent else "")
    return JSONResponse(
        {
            "token": token,
            "expires_at": int(now + float(ttl)),
            "agent": agent,
            "origin": origin,
            "ws_path": f"/ws/browser?{ws_query}",
        },
        status_code=201,
    )


# -- browser calls ---------------------------------------------------------------------------------------


async def _refuse(websocket: WebSocket, close_code: int, code: str, message: str) -> None:
    """Accept, say why in one ``error`` message, then close: a browser cannot read a handshake refusal."""
    _log.warning(
        "browser_call_refused", client=_client_host(websocket), code=code, why=message, close_code=close_code
    )
    with contextlib.suppress(Exception):
        if websocket.client_state == WebSocketState.CONNECTING:
            await websocket.accept()
        await websocket.send_json({"type": "error", "code": code, "message": message})
        await websocket.close(code=close_code, reason=message[:120])


async def browser_call(websocket: WebSocket) -> None:
    """``/ws/browser``: authorize, admit, then run one call on a :class:`~bridges.browser.leg.BrowserLeg`."""
    service = _service(websocket)
    settings = service.settings
    limited = service.browser_limiter.check(_client_host(websocket), time.monotonic())
    if not limited.allowed:
        CALLS_REFUSED.labels(reason="rate_limited").inc()
        wait = limited.retry_after_whole_s
        await _refuse(
            websocket, WS_CLOSE_TRY_LATER, "rate_limited",
            f"rate limited: too many new calls from your address; try again in {wait} s",
        )  # fmt: skip
        return
    agent = websocket.query_params.get("agent") or settings.agent
    try:
        grant = check_browser(
            secret=service.token_secret,
            token=websocket.query_params.get("token") or None,
            client_host=_client_host(websocket),
            headers=websocket.headers,
            allowed_origins=settings.allowed_origins,
            open_on_loopback=settings.browser_open_on_loopback,
            agent=agent,
            now=time.time(),
        )
    except AuthError as exc:
        await _refuse(websocket, WS_CLOSE_POLICY, exc.code, exc.message)
        return
    try:
        profile = service.profile(agent)
    except ConfigError as exc:
        await _refuse(websocket, WS_CLOSE_POLICY, "unknown_agent", str(exc))
        return
    try:
        admission = service.manager.admit()
    except CallRefused as exc:
        await _refuse(websocket, WS_CLOSE_TRY_LATER, exc.reason, exc.message)
        return
    with admission:
        try:
            spend(grant, service.store, time.time())
        except AuthError as exc:  # a replayed token: refused and counted (the jti is no secret)
            CALLS_REFUSED.labels(reason=exc.code).inc()
            _log.warning(
                "browser_token_replayed", client=_client_host(websocket), jti=grant.claims.get("jti")
            )
            await _refuse(websocket, WS_CLOSE_POLICY, exc.code, exc.message)
            return
        except RecordError as exc:  # fail closed: a token that cannot be recorded as spent is not honoured
            _log.error("browser_token_not_recorded", error=str(exc))
            await _refuse(websocket, WS_CLOSE_INTERNAL, "internal_error", "the call could not be started")
            return
        await _run_browser_call(websocket, service, profile, admission, grant.mode)


async def _run_browser_call(
    websocket: WebSocket, service: Service, profile: AgentProfile, admission: Admission, auth_mode: str
) -> None:
    from bridges.browser.leg import BrowserLeg

    await websocket.accept()
    leg = BrowserLeg(websocket, agent=profile.name, metadata={"auth": auth_mode})
    log = _log.bind(call_id=leg.call_id)
    log.info("browser_call_started", agent=profile.name, client=leg.metadata.get("caller"), auth=auth_mode)
    try:
        reason = await service.manager.run(leg, profile, admission)
    except CallRefused as exc:
        await _refuse(websocket, WS_CLOSE_TRY_LATER, exc.reason, exc.message)
        return
    except (UpstreamError, VoiceError) as exc:
        log.error("browser_call_failed", error=str(exc))
        await _refuse(websocket, WS_CLOSE_INTERNAL, "internal_error", "the call could not be started")
        return
    log.info("browser_call_finished", end_reason=reason)
    if websocket.application_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(Exception):
            await websocket.close(code=WS_CLOSE_NORMAL)


# -- app -------------------------------------------------------------------------------------------------


class _PublicStatic:
    """Static files with ``Access-Control-Allow-Origin: *`` (the widget's worklet is fetched with CORS from
    other sites) and ``Cache-Control: no-cache``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Any) -> None:
            """Add the CORS and cache headers to the response start."""
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"access-control-allow-origin", b"*"))
                headers.append((b"cache-control", b"no-cache"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _price_table(settings: Settings) -> PriceTable:
    table = default_price_table()
    if settings.prices:
        table = with_overrides(table, settings.prices)
    return table


def create_app(
    settings: Settings,
    *,
    pacer: FramePacer | None = None,
    manager: SessionManager | None = None,
    engine: bool | None = None,
) -> Starlette:
    """The service app (``app.state.service`` is its :class:`Service`).

    Opens the call store at ``settings.db_path`` and marks calls a crash left open. ``engine`` forces the
    embedded local engine on or off (default: on when no upstream is configured). ``pacer`` and ``manager``
    replace the real ones (tests).
    """
    mode = upstream_mode(settings)
    store = CallStore(settings.db_path)
    interrupted = store.mark_interrupted_calls()
    if interrupted:
        _log.warning("interrupted_calls_closed", calls=interrupted)
    frame_pacer = pacer if pacer is not None else FramePacer()
    price_table = _price_table(settings)
    session_manager = manager or SessionManager(
        settings, store, frame_pacer, UpstreamOpener(settings), price_table, tools_for
    )
    secret = settings.token_secret.get_secret_value() if settings.token_secret else None
    if not secret:
        secret = secrets.token_urlsafe(32)
        _log.info("token_secret_ephemeral", note="browser tokens are valid until this process restarts")
    run_engine = (mode == "local") if engine is None else engine
    engine_services: Any | None = None
    routes: list[Route | WebSocketRoute | Mount] = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        Route("/api/openapi.json", openapi_json),
        Route("/api/docs", api_docs),
        Route("/api/agents", list_agents),
        Route("/api/calls", list_calls),
        Route("/api/calls/{call_id}", get_call),
        Route("/api/calls/{call_id}/hangup", hangup_call, methods=["POST"]),
        Route("/api/calls/{call_id}/recording", call_recording),
        Route("/api/tokens", create_token, methods=["POST"]),
        WebSocketRoute("/ws/browser", browser_call),
        Mount("/static", app=_PublicStatic(StaticFiles(directory=WEB_DIR)), name="static"),
    ]
    if run_engine:
        from voice.engine.server import realtime_endpoint
        from voice.engine.services import EngineServices

        engine_services = EngineServices(settings)
        routes.append(WebSocketRoute("/v1/realtime", realtime_endpoint))
    service = Service(
        settings=settings,
        store=store,
        pacer=frame_pacer,
        manager=session_manager,
        price_table=price_table,
        token_secret=secret,
        mode=mode,
        browser_limiter=ClientRateLimiter(
            settings.browser_rate_per_s,
            settings.browser_rate_burst,
            max_clients=settings.browser_rate_max_clients,
            limit_loopback=settings.browser_rate_loopback,
        ),
        engine=engine_services,
    )
    if not run_engine and mode == "local":
        service.upstream_ready = True
        service.upstream_detail = "no upstream in this process"
    routes.extend(twilio_routes(service))  # /twilio/voice, /twilio/status, /twilio/stream, POST /api/calls
    routes.extend(webrtc_routes())  # POST /webrtc/offer, GET /webrtc/config (bridges/webrtc/routes.py)
    routes.extend(sip_routes())  # POST /api/sip/calls (bridges/sip/service.py)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        """Start the pacer and the readiness job; on exit end live calls and close everything."""
        await service.start()
        try:
            async with sip_lifespan(service):  # the SIP user agent (bridges/sip/service.py)
                tune_gc()  # no long collection pauses in the middle of pacing (voice.gcpolicy.tune_gc)
                yield
        finally:
            await service.stop()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = service
    if engine_services is not None:
        app.state.engine = engine_services  # what voice.engine.server.realtime_endpoint reads
    return app


# -- running ---------------------------------------------------------------------------------------------


class _ServiceServer(uvicorn.Server):
    """uvicorn with a graceful drain: the first SIGTERM/SIGINT drains calls before the server stops, a second
    one ends live calls at once, a third is uvicorn's forced exit."""

    def __init__(self, config: uvicorn.Config, service: Service, announce: Callable[[str], None]) -> None:
        super().__init__(config)
        self.service = service
        self.announce = announce
        self._drain_task: asyncio.Task[None] | None = None
        self._signals = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up, then note the bound port and announce the page URL."""
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if not self.started:
            return
        port = self.config.port
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                port = int(sock.getsockname()[1])
                break
        self.service.settings.port = port  # the local engine's URL when port 0 was asked for
        self.announce(page_url(self.config.host, port))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: drain on the first signal, end calls at once on the second."""
        self._signals += 1
        loop = self._loop
        if loop is None or self._signals > 2:
            super().handle_exit(sig, frame)
            return
        timeout = None if self._signals == 1 else 0.0
        loop.call_soon_threadsafe(self._start_drain, timeout)

    def _start_drain(self, timeout: float | None) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(timeout_s=timeout))

    async def _drain(self, *, timeout_s: float | None) -> None:
        live = len(self.service.manager.live())
        _log.info("shutdown_requested", live=live, timeout_s=timeout_s)
        if live and timeout_s is None:
            deadline = self.service.settings.drain_timeout_s
            print(
                f"voice: draining {live} live call(s) for up to {deadline:g} s; signal again to end them now",
                file=sys.stderr,
                flush=True,
            )
        try:
            await self.service.drain(timeout_s)
        finally:
            self.should_exit = True


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    """uvicorn settings for the service. WebSocket frames may be as large as the embedded engine accepts
    when it runs here (its clients send large audio appends), else 1 MiB; ``/ws/browser`` applies its own,
    much smaller per-message limits (``bridges.browser.protocol``)."""
    from voice.engine.server import ws_max_size

    service: Service = app.state.service
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=StreamingWSProtocol,
        ws_max_size=ws_max_size(settings) if service.engine is not None else MAX_WS_FRAME,
        ws_per_message_deflate=False,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def _print_url(url: str) -> None:
    print(f"voice: open {url} and press Talk (operator API docs: {url}api/docs)", flush=True)


@contextlib.contextmanager
def database_lock(db_path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the call database for the life of one service process.

    A second ``voice serve`` on the same database would mark the first one's live calls as crashed at its
    start-up (:meth:`CallStore.mark_interrupted_calls`), so it is refused with a clear error. The OS drops the
    lock when the process dies, even on ``kill -9``.
    """
    db_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = db_path.with_name(db_path.name + ".lock")
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(
                f"another voice service is using {db_path} (lock {lock_path}); stop it or use another --db"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


async def serve(settings: Settings, *, announce: Callable[[str], None] = _print_url) -> None:
    """Run the service until SIGTERM/SIGINT (``voice serve``): print the page URL, drain on exit."""
    with database_lock(settings.db_path):
        await _serve(settings, announce)


async def _serve(settings: Settings, announce: Callable[[str], None]) -> None:
    app = create_app(settings)
    service: Service = app.state.service
    server = _ServiceServer(uvicorn_config(app, settings), service, announce)
    _log.info(
        "service_starting",
        host=settings.host,
        port=settings.port,
        upstream=service.mode,
        agent=settings.agent,
        db=str(settings.db_path),
        version=__version__,
        pid=os.getpid(),
        modules=str(native.state()),
    )
    await server.serve()
    _log.info("service_stopped")


def run(settings: Settings) -> None:
    """Blocking entry point for the CLI."""
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(settings))
    except KeyboardInterrupt:  # a forced exit (third signal)
        print("voice: stopped", file=sys.stderr)
