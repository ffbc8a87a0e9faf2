"""voice.wsprotocol: reading pauses only when the application falls behind, over a real loopback socket."""

from __future__ import annotations

import asyncio
import contextlib
from typing import ClassVar

import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from tests.conftest import free_port
from voice.wsprotocol import QUEUE_HIGH_WATER, StreamingWSProtocol


class _Observed(StreamingWSProtocol):
    """Records, after each message queued for the app, the queue length and whether reading is paused."""

    seen: ClassVar[list[tuple[int, bool]]] = []

    def send_receive_event_to_app(self) -> None:
        super().send_receive_event_to_app()
        self.seen.append((self.queue.qsize(), self.read_paused))


async def _serve(
    delay_s: float, count: int, received: list[str]
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await asyncio.sleep(delay_s)  # an application that is busy before it reads
        for _ in range(count):
            received.append(await websocket.receive_text())
        await websocket.send_text("done")
        await websocket.close()

    port = free_port()
    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ws=_Observed, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.01)
    return server, task, port


async def _exchange(delay_s: float, count: int, gap_s: float) -> list[str]:
    _Observed.seen.clear()
    received: list[str] = []
    server, task, port = await _serve(delay_s, count, received)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
            for i in range(count):
                await ws.send(f"m{i}")
                if gap_s:
                    await asyncio.sleep(gap_s)
            assert await asyncio.wait_for(ws.recv(), 10) == "done"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return received


@pytest.mark.asyncio
async def test_an_app_that_keeps_up_never_pauses_reading() -> None:
    received = await _exchange(0.0, 60, 0.002)
    assert received == [f"m{i}" for i in range(60)]
    assert len(_Observed.seen) == 60
    assert not any(paused for _, paused in _Observed.seen)


@pytest.mark.asyncio
async def test_reading_pauses_at_the_high_water_mark_and_nothing_is_lost() -> None:
    count = QUEUE_HIGH_WATER * 3
    received = await _exchange(0.5, count, 0.0)
    assert received == [f"m{i}" for i in range(count)]  # every message, in order, after the pause
    paused_at = [queued for queued, paused in _Observed.seen if paused]
    assert paused_at, "reading never paused while the application was not reading"
    assert min(paused_at) == QUEUE_HIGH_WATER
    # Below the mark the socket kept being read: no pause after the first messages.
    assert not any(paused for queued, paused in _Observed.seen if queued < QUEUE_HIGH_WATER)
