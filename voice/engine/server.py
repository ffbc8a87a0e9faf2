"""The local engine's HTTP/WebSocket server: a Starlette app and :func:`serve`.

Routes:

- ``WS /v1/realtime?model=...[&agent=...]``: one Realtime session per connection (protocols.md §A.1). The
  ``Authorization: Bearer ...`` header is accepted whatever the key (the engine is a local, offline stand-in
  for OpenAI and checks no credentials). A client that offers the ``realtime`` WebSocket subprotocol (as
  browser clients do) gets it. ``agent`` picks the profile whose script the responder plays, else
  ``settings.engine.agent``, else ``settings.agent``.
- ``GET /healthz``: JSON liveness and a session count.
- ``GET /``: the status page.

:func:`create_app` builds the app so a larger service can mount it; its lifespan warms the speech models
up. A mounting app must run that lifespan itself or call ``app.state.engine.warm_up()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from voice import __version__
from voice.config import Settings
from voice.engine.connection import EngineConnection
from voice.engine.responder import make_responder
from voice.engine.services import EngineServices, LiveSession
from voice.engine.session import EngineSession
from voice.engine.status import render_status
from voice.errors import ConfigError, RealtimeError
from voice.gcpolicy import tune_gc
from voice.logs import get_logger
from voice.wsprotocol import StreamingWSProtocol

__all__ = ["DEFAULT_MODEL", "create_app", "realtime_endpoint", "serve", "ws_max_size"]

DEFAULT_MODEL = "gpt-realtime"

_log = get_logger(component="engine.server")


def ws_max_size(settings: Settings) -> int:
    """The transport's frame limit: above ``max_message_bytes`` so that an oversized message reaches the
    session (which answers it with an ``error`` event) instead of closing the connection; messages more
    than twice the limit close the connection (code 1009)."""
    return 2 * settings.engine.max_message_bytes + 1024


def _services(websocket_or_request: WebSocket | Request) -> EngineServices:
    services: EngineServices = websocket_or_request.app.state.engine
    return services


async def _reject(websocket: WebSocket, error: RealtimeError, subprotocol: str | None) -> None:
    """Accept, send one ``error`` event and close (policy violation): the client sees why."""
    session = EngineSession(model=DEFAULT_MODEL, created_at=time.time())
    await websocket.accept(subprotocol=subprotocol)
    for event in session.reject(error).events:
        await websocket.send_json(event)
    await websocket.close(code=1008, reason=error.message[:120])


async def realtime_endpoint(websocket: WebSocket) -> None:
    services = _services(websocket)
    settings = services.settings
    params = websocket.query_params
    offered = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    subprotocol = "realtime" if "realtime" in offered else None
    model = params.get("model") or DEFAULT_MODEL
    agent = params.get("agent") or services.default_agent()
    if "call_id" in params and "model" not in params:
        error = RealtimeError("The local engine has no calls to join.", code="invalid_value", param="call_id")
        await _reject(websocket, error, subprotocol)
        return
    try:
        profile = services.profile(agent)
        responder = make_responder(settings, profile)
    except ConfigError as exc:
        await _reject(websocket, RealtimeError(str(exc), code="invalid_value", param="agent"), subprotocol)
        return
    session = EngineSession(model=model, created_at=time.time(), recognition=services.recognition)
    client = websocket.client
    peer = f"{client.host}:{client.port}" if client else "?"
    connection = EngineConnection(
        websocket, services, session, responder, max_message_bytes=settings.engine.max_message_bytes
    )
    await websocket.accept(subprotocol=subprotocol)
    services.live[session.id] = LiveSession(session.id, model, agent, peer, time.time())
    connection.log.info("session_started", model=model, agent=agent, peer=peer)
    try:
        await connection.run()
    finally:
        services.live.pop(session.id, None)
        connection.log.info("session_ended")


async def healthz(request: Request) -> JSONResponse:
    services = _services(request)
    return JSONResponse(
        {
            "status": "ok",
            "version": __version__,
            "sessions": len(services.live),
            "recognition": services.recognition,
            "agent": services.default_agent(),
        }
    )


async def status_page(request: Request) -> HTMLResponse:
    base = f"{request.url.scheme}://{request.url.netloc}"
    return HTMLResponse(render_status(_services(request), base))


def create_app(
    settings: Settings, *, services: EngineServices | None = None, warm_up: bool = True
) -> Starlette:
    """The engine as a Starlette app (``app.state.engine`` holds its :class:`EngineServices`)."""
    engine = services if services is not None else EngineServices(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if warm_up:
            await asyncio.to_thread(engine.warm_up)
        tune_gc()  # audio is streamed in real time: no long collection pauses (voice.gcpolicy.tune_gc)
        try:
            yield
        finally:
            engine.close()

    app = Starlette(
        routes=[
            WebSocketRoute("/v1/realtime", realtime_endpoint),
            Route("/healthz", healthz),
            Route("/", status_page),
        ],
        lifespan=lifespan,
    )
    app.state.engine = engine
    return app


def uvicorn_config(settings: Settings, host: str, port: int, app: Starlette | None = None) -> uvicorn.Config:
    return uvicorn.Config(
        app if app is not None else create_app(settings),
        host=host,
        port=port,
        ws=StreamingWSProtocol,
        ws_max_size=ws_max_size(settings),
        ws_per_message_deflate=False,
        log_config=None,
        access_log=False,
        lifespan="on",
    )


async def serve(settings: Settings, host: str, port: int) -> None:
    """Run the engine until cancelled or interrupted (``voice engine``)."""
    config = uvicorn_config(settings, host, port)
    _log.info("engine_starting", host=host, port=port, recognition=settings.engine.asr, version=__version__)
    await uvicorn.Server(config).serve()
