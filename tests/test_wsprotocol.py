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
from voice.wsprotocol import QUEUE_HIGH_WATER, StreamingWSProtocol, direct_channel, text_frame


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


# -- the direct frame parser and the direct channel ---------------------------------------------------


def _client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"7\xfa!=") -> bytes:
    """A masked client frame built by hand (RFC 6455 §5.2), independent of the code under test."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(head) + mask + masked


def _read_server_frame(buf: bytearray) -> tuple[int, bytes] | None:
    if len(buf) < 2:
        return None
    opcode, n, offset = buf[0] & 0x0F, buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, offset = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, offset = int.from_bytes(buf[2:10], "big"), 10
    if len(buf) < offset + n:
        return None
    payload = bytes(buf[offset : offset + n])
    del buf[: offset + n]
    return opcode, payload


class _RawClient:
    """A WebSocket client on a bare TCP stream: the upgrade by hand, then whatever bytes a test writes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = bytearray()

    @classmethod
    async def connect(cls, port: int) -> _RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def write_in_pieces(self, data: bytes, sizes: list[int]) -> None:
        """Write ``data`` split at the given piece sizes (cycled), flushing each piece on its own."""
        offset, k = 0, 0
        while offset < len(data):
            size = sizes[k % len(sizes)]
            self.writer.write(data[offset : offset + size])
            await self.writer.drain()
            if k % 8 == 0:
                await asyncio.sleep(0.001)  # let the server read what is there: it sees the stream in pieces
            offset += size
            k += 1

    async def frame(self) -> tuple[int, bytes]:
        while True:
            got = _read_server_frame(self.buf)
            if got is not None:
                return got
            chunk = await asyncio.wait_for(self.reader.read(65536), 10)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def close(self) -> None:
        self.writer.close()


async def _direct_server(
    log: list[tuple[str, str]], *, direct: bool = True, replies: tuple[str, ...] = ()
) -> tuple[uvicorn.Server, asyncio.Task[None], int, list[bool]]:
    """A server that logs every message with the path it took; "bye" and texts starting "queue:" are
    declined by the direct handler. On "bye" it writes ``replies`` through the direct channel, then "done"
    and closes."""
    sent: list[bool] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        channel = direct_channel(websocket.scope)
        assert channel is not None

        def handler(text: str) -> bool:
            if text.startswith("queue:") or text == "bye":
                return False
            log.append(("direct", text))
            return True

        if direct:
            channel.on_text(handler)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            log.append(("queued", text if text is not None else f"bytes:{message['bytes'].hex()}"))
            if text == "bye":
                sent.append(channel.send_texts(*replies))
                await websocket.send_text("done")
                await websocket.close()
                sent.append(channel.send_texts("after close"))
                return

    port = free_port()
    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, ws=StreamingWSProtocol, log_config=None, lifespan="off",
        ws_per_message_deflate=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.01)
    return server, task, port, sent


async def _stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("pieces", [[1], [7], [5, 200, 3], [100_000]])
async def test_frames_split_anywhere_with_control_frames_and_fragments_between_arrive_in_order(
    pieces: list[int],
) -> None:
    log: list[tuple[str, str]] = []
    server, task, port, _ = await _direct_server(log)
    expected: list[tuple[str, str]] = []
    stream = bytearray()

    def text(value: str, *, declined: bool = False) -> None:
        stream.extend(_client_frame(1, value.encode()))
        expected.append(("queued" if declined else "direct", value))

    try:
        client = await _RawClient.connect(port)
        text("short")
        text("é" * 100)  # 200 bytes: the 16-bit length form
        if pieces[0] > 1:  # (byte by byte, 64 KiB would take long)
            text("x" * 70_000)  # the 64-bit length form: the generic parser's, then the handler's
        text("queue:declined", declined=True)
        text("after the generic parser")
        stream.extend(_client_frame(9, b"are you there"))  # a ping between data frames
        text("after a ping")
        stream.extend(_client_frame(1, b"frag", fin=False) + _client_frame(0, b"mented"))
        expected.append(("direct", "fragmented"))  # the generic parser joins the fragments
        stream.extend(_client_frame(2, b"\x00\x01\xff"))
        expected.append(("queued", "bytes:0001ff"))  # binary always goes through receive
        text("")
        for i in range(50):
            text(f"m{i}")
        stream.extend(_client_frame(1, b"bye"))
        expected.append(("queued", "bye"))
        await client.write_in_pieces(bytes(stream), pieces)
        frames = [await client.frame(), await client.frame()]
        assert frames[0] == (10, b"are you there")  # the pong, from the generic parser
        assert frames[1] == (1, b"done")
        client.close()
    finally:
        await _stop(server, task)
    assert [text for _, text in log] == [text for _, text in expected]  # all of them, in order
    for (path, text), (wanted, _) in zip(log, expected, strict=True):
        if wanted == "queued":  # declined or binary: through receive (others may queue behind them)
            assert path == "queued", text[:40]
    assert ("direct", "short") in log  # the first message meets an empty queue


async def test_direct_messages_wait_behind_queued_ones() -> None:
    """While messages wait in the ASGI queue, later ones queue too: the handler never jumps ahead."""
    log: list[tuple[str, str]] = []
    server, task, port, _ = await _direct_server(log)
    try:
        client = await _RawClient.connect(port)
        burst = _client_frame(1, b"queue:first")
        burst += b"".join(_client_frame(1, f"n{i}".encode()) for i in range(5))
        client.writer.write(burst + _client_frame(1, b"bye"))
        assert await client.frame() == (1, b"done")
        client.close()
    finally:
        await _stop(server, task)
    assert log == [("queued", "queue:first"), *[("queued", f"n{i}") for i in range(5)], ("queued", "bye")]


async def test_invalid_utf8_closes_with_1007() -> None:
    log: list[tuple[str, str]] = []
    server, task, port, _ = await _direct_server(log)
    try:
        client = await _RawClient.connect(port)
        client.writer.write(_client_frame(1, b"fine") + _client_frame(1, b"\xff\xfe broken"))
        opcode, payload = await client.frame()
        assert opcode == 8 and int.from_bytes(payload[:2], "big") == 1007
        client.close()
    finally:
        await _stop(server, task)
    assert log == [("direct", "fine")]


async def test_an_unmasked_client_frame_is_a_protocol_error() -> None:
    log: list[tuple[str, str]] = []
    server, task, port, _ = await _direct_server(log)
    try:
        client = await _RawClient.connect(port)
        client.writer.write(bytes([0x81, 3]) + b"bad")
        opcode, payload = await client.frame()
        assert opcode == 8 and int.from_bytes(payload[:2], "big") == 1002
        client.close()
    finally:
        await _stop(server, task)
    assert log == []


async def test_send_texts_writes_frames_in_order_and_refuses_after_close() -> None:
    log: list[tuple[str, str]] = []
    replies = ("one", "two" * 100, "three")
    server, task, port, sent = await _direct_server(log, replies=replies)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
            await ws.send("hello")
            await ws.send("bye")
            got = [await asyncio.wait_for(ws.recv(), 10) for _ in range(4)]
    finally:
        await _stop(server, task)
    assert got == [*replies, "done"]
    assert sent == [True, False]
    assert log == [("direct", "hello"), ("queued", "bye")]


def test_text_frame_lengths() -> None:
    for n in (0, 125, 126, 65535, 65536):
        frame = text_frame(b"a" * n)
        assert _read_server_frame(bytearray(frame)) == (1, b"a" * n)
