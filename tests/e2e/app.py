"""The service under test for the end-to-end tests, served in-process on loopback.

By default this is the real service app, :func:`voice.server.create_app` (``/ws/browser`` with its
authorization and admission, the session manager, the operator API and the embedded local engine at
``/v1/realtime``), with one change: the session manager opens upstream connections through
:class:`RecordingOpener`, an :class:`~voice.call.upstream.UpstreamOpener` that keeps, per call, the client
events the runner sends and the server events it receives (audio deltas and appends left out) in
:attr:`Observed.upstream_log`, and lets the test kill a call's upstream connection
(:meth:`ServiceThread.kill_upstream`).

``minimal=True`` serves :func:`create_test_app` instead: the local engine and a bare ``/ws/browser`` that
wraps the socket in a :class:`~bridges.browser.leg.BrowserLeg` and runs a
:class:`~voice.call.runner.CallRunner` directly (no auth, no manager) -- the smallest path through the
call code, useful when the service itself is in question.

:class:`ServiceThread` runs uvicorn in a thread with its own event loop, so the test's WebSocket client (in
the test's loop) paces audio in real time independently of the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount, WebSocketRoute
from starlette.websockets import WebSocket

from bridges.browser import BrowserLeg
from voice.call.agent_tools import restaurant_registry
from voice.call.pacer import FramePacer
from voice.call.runner import CallRunner, warm_up
from voice.call.upstream import Backoff, UpstreamOpener
from voice.config import Settings
from voice.engine.server import create_app as create_engine_app
from voice.engine.server import ws_max_size
from voice.manager import SessionManager
from voice.profiles import load_profile
from voice.realtime.client import RealtimeConnection
from voice.realtime.events import ServerEvent
from voice.realtime.pricing import default_price_table
from voice.store import CallStore
from voice.wsprotocol import StreamingWSProtocol

_NOT_LOGGED = frozenset({"input_audio_buffer.append", "response.output_audio.delta"})

LogEntry = tuple[float, str, dict[str, Any]]


@dataclass
class Observed:
    """What the test can look at: the store and each call's upstream traffic and connections."""

    store: CallStore
    upstream_log: dict[str, list[LogEntry]] = field(default_factory=dict)
    connections: dict[str, list[RealtimeConnection]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None

    def record(self, call_id: str, conn: RealtimeConnection) -> None:
        """Keep ``conn`` as the call's latest upstream and log its traffic."""
        self.loop = asyncio.get_running_loop()
        self.connections.setdefault(call_id, []).append(conn)
        _instrument(conn, self.upstream_log.setdefault(call_id, []))


class RecordingOpener(UpstreamOpener):
    """An :class:`UpstreamOpener` that hands every connection to :meth:`Observed.record` (keyed by the call
    id the runner binds in its logging context)."""

    def __init__(self, settings: Settings, observed: Observed, *, agent: str | None = None) -> None:
        super().__init__(settings, agent=agent)
        self.observed = observed

    def for_agent(self, agent: str) -> UpstreamOpener:
        return RecordingOpener(self.settings, self.observed, agent=agent)

    async def __call__(self, model: str, **bind: Any) -> RealtimeConnection:
        conn = await super().__call__(model, **bind)
        call_id = str(structlog.contextvars.get_contextvars().get("call_id", "?"))
        self.observed.record(call_id, conn)
        return conn


def _instrument(conn: RealtimeConnection, log: list[LogEntry]) -> None:
    send, send_nowait, recv = conn.send, conn.send_nowait, conn.recv

    async def logged_send(event: Any) -> None:
        if event.get("type") not in _NOT_LOGGED:
            log.append((time.monotonic(), "sent", dict(event)))
        await send(event)

    def logged_send_nowait(event: Any) -> bool:
        sent = send_nowait(event)
        if sent and event.get("type") not in _NOT_LOGGED:
            log.append((time.monotonic(), "sent", dict(event)))
        return sent

    async def logged_recv() -> ServerEvent:
        event = await recv()
        kind = getattr(event, "type", "")
        if kind not in _NOT_LOGGED:
            dump = getattr(event, "model_dump", None)
            log.append((time.monotonic(), "recv", dump() if callable(dump) else {"type": kind}))
        return event

    conn.send = logged_send  # type: ignore[method-assign]
    conn.send_nowait = logged_send_nowait  # type: ignore[method-assign]
    conn.recv = logged_recv  # type: ignore[method-assign]


BACKOFF = Backoff(attempts=3, base_s=0.1, max_s=0.5)


def create_service_app(settings: Settings, observed: Observed, pacer: FramePacer) -> Starlette:
    """The real service (:func:`voice.server.create_app`) with a :class:`RecordingOpener`."""
    from voice.server import create_app, tools_for

    manager = SessionManager(
        settings,
        observed.store,
        pacer,
        RecordingOpener(settings, observed),
        default_price_table(),
        tools_for,
    )
    return create_app(settings, pacer=pacer, manager=manager)


def create_test_app(settings: Settings, observed: Observed, pacer: FramePacer) -> Starlette:
    """The minimal app: the local engine and a bare ``/ws/browser`` running a CallRunner directly."""
    engine_app = create_engine_app(settings, warm_up=False)
    opener = RecordingOpener(settings, observed)

    async def browser(websocket: WebSocket) -> None:
        agent = websocket.query_params.get("agent") or settings.agent
        profile = load_profile(agent, settings.prompts_dir)
        await websocket.accept()
        leg = BrowserLeg(websocket, agent=agent)
        runner = CallRunner(
            leg=leg,
            profile=profile,
            settings=settings,
            store=observed.store,
            pacer=pacer,
            open_upstream=opener,
            tools=restaurant_registry(),
            price_table=default_price_table(),
            backoff=BACKOFF,
        )
        observed.reasons[leg.call_id] = await runner.run()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(engine_app.state.engine.warm_up)
        pacer.start()
        try:
            yield
        finally:
            await pacer.stop()
            engine_app.state.engine.close()

    return Starlette(
        routes=[WebSocketRoute("/ws/browser", browser), Mount("/", engine_app)],
        lifespan=lifespan,
    )


class ServiceThread:
    """Serve the service (or the minimal app) with uvicorn on loopback in a background thread."""

    def __init__(self, settings: Settings, port: int, *, minimal: bool = False) -> None:
        self.port = port
        self.settings = settings
        self.minimal = minimal
        self.observed = Observed(CallStore(settings.db_path))
        pacer = FramePacer()
        make = create_test_app if minimal else create_service_app
        config = uvicorn.Config(
            make(settings, self.observed, pacer),
            host="127.0.0.1",
            port=port,
            ws=StreamingWSProtocol,
            ws_max_size=ws_max_size(settings),
            ws_per_message_deflate=False,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="e2e-service", daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/browser"

    @property
    def store(self) -> CallStore:
        return self.observed.store

    def start(self, timeout: float = 120.0) -> None:
        """Start and wait until the service is ready (speech models warmed up)."""
        warm_up()  # the call core's one-time set-up, process wide
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the e2e service did not start")
            time.sleep(0.1)

    def _ready(self) -> bool:
        """The service's ``/readyz`` says ready (the engine's ``/healthz`` answers, for the minimal app,
        whose lifespan warms the engine up before serving)."""
        if not self.server.started:
            return False
        path = "/healthz" if self.minimal else "/readyz"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return bool(resp.status == 200 and json.loads(resp.read()).get("ready", True))
        except OSError:  # 503 (an HTTPError is an OSError) until the engine is warm
            return False

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.observed.store.close()

    def kill_upstream(self, call_id: str) -> None:
        """Abort the call's current upstream TCP connection (no close frame: the runner sees 1006)."""
        conn = self.observed.connections[call_id][-1]
        loop = self.observed.loop
        assert loop is not None
        loop.call_soon_threadsafe(conn._ws.transport.abort)

    def connections(self, call_id: str) -> list[RealtimeConnection]:
        return list(self.observed.connections.get(call_id, []))

    def upstream_log(self, call_id: str) -> list[LogEntry]:
        return list(self.observed.upstream_log.get(call_id, []))

    def events(self, call_id: str, direction: str, type_: str) -> list[tuple[float, dict[str, Any]]]:
        """Upstream traffic of one call: ``(monotonic time, event)`` of ``type_`` sent or received."""
        return [(t, e) for t, d, e in self.upstream_log(call_id) if d == direction and e.get("type") == type_]


def service_settings(tmp: Path, port: int, **extra: Any) -> Settings:
    """Settings for the test service: the embedded local engine on the same port, records under ``tmp``."""
    return Settings(
        host="127.0.0.1",
        port=port,
        openai_api_key=None,
        upstream_url=None,
        azure_endpoint=None,
        recordings_dir=tmp / "recordings",
        db_path=tmp / "voice.db",
        sip={"enabled": False},  # browser calls only: no SIP port to bind
        **extra,
    )
