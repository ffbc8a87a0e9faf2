"""Test doubles for the call runner: an in-memory leg and a scripted Realtime upstream on loopback.

:class:`FakeLeg` implements the leg contract without a transport: the test pushes caller events into
``inbox`` and reads what the call did (``played``, ``clears``, ``controls``, ``hung_up``). With
``echo_playback`` it behaves like a page that plays frames at once and reports each position.

:class:`FakeUpstream` is a WebSocket server speaking enough of the Realtime protocol for the runner: it sends
``session.created`` on connect, records every client event per connection, and answers ``response.create``
with a scripted spoken response (audio deltas, transcript, ``response.done`` with usage). Tests can push any
server event, drop the connection abruptly, or stop listening.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

from bridges.base import AudioCodec, LegCapabilities, LegEvent, LegHangup, PlaybackReport, bytes_per_ms
from tests.realtime.samples import SESSION

USAGE: dict[str, Any] = {
    "total_tokens": 100,
    "input_tokens": 80,
    "output_tokens": 20,
    "input_token_details": {
        "text_tokens": 60,
        "audio_tokens": 20,
        "image_tokens": 0,
        "cached_tokens": 0,
        "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 5, "audio_tokens": 15},
}
"""Priced at gpt-realtime: 60x4 + 20x32 + 5x16 + 15x64 per 1M = 0.00192 USD."""


def tone(ms: int, codec: AudioCodec = "pcm16_24k", freq: float = 440.0, level: int = 8000) -> bytes:
    """A sine of ``ms`` in ``codec`` (G.711 codecs get µ-law/A-law of an 8 kHz sine)."""
    rate = 24000 if codec == "pcm16_24k" else 8000
    n = rate * ms // 1000
    pcm = b"".join(struct.pack("<h", int(level * math.sin(2 * math.pi * freq * i / rate))) for i in range(n))
    if codec == "pcmu":
        from voice.audio.g711 import ulaw_encode

        return ulaw_encode(pcm)
    if codec == "pcma":
        from voice.audio.g711 import alaw_encode

        return alaw_encode(pcm)
    return pcm


@dataclass
class Played:
    t: float
    frame: bytes
    item_id: str
    item_ms: int


class FakeLeg:
    """An in-memory leg (see the module docstring)."""

    kind = "browser"

    def __init__(
        self,
        call_id: str,
        codec: AudioCodec = "pcm16_24k",
        *,
        reports_playback: bool = False,
        echo_playback: bool = False,
        fail_events: BaseException | None = None,
        report_lag_ms: int = 0,
    ) -> None:
        self.call_id = call_id
        self.codec: AudioCodec = codec
        self.capabilities = LegCapabilities((codec,), reports_playback=reports_playback)
        self.metadata: dict[str, Any] = {"caller": f"test:{call_id}"}
        self.inbox: asyncio.Queue[LegEvent] = asyncio.Queue()
        self.played: list[Played] = []
        self.clears = 0
        self.controls: list[dict[str, Any]] = []
        self.hung_up: str | None = None
        self.echo_playback = echo_playback
        self.fail_events = fail_events
        self.dtmf_sent: list[str] = []
        self.report_lag_ms = report_lag_ms

    async def events(self) -> AsyncIterator[LegEvent]:
        if self.fail_events is not None:
            await asyncio.sleep(0.05)
            raise self.fail_events
        while True:
            ev = await self.inbox.get()
            yield ev
            if isinstance(ev, LegHangup):
                return

    async def play(self, frame: bytes, item_id: str, item_ms: int) -> None:
        self.played.append(Played(asyncio.get_running_loop().time(), frame, item_id, item_ms))
        if self.echo_playback and item_ms - self.report_lag_ms > 0:  # a page with a playout buffer
            self.inbox.put_nowait(PlaybackReport(item_id, item_ms - self.report_lag_ms))

    async def clear(self) -> None:
        self.clears += 1

    async def send_dtmf(self, digits: str) -> None:
        self.dtmf_sent.append(digits)

    async def transfer(self, target: str) -> None:
        raise NotImplementedError

    async def hangup(self, reason: str) -> None:
        self.hung_up = reason

    async def send_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)

    def frames(self, item_id: str | None = None) -> list[Played]:
        return [p for p in self.played if item_id is None or p.item_id == item_id]

    def control_types(self) -> list[str]:
        return [str(c.get("type")) for c in self.controls]


Handler = Callable[["FakeUpstream", ServerConnection, dict[str, Any]], Awaitable[None]]


@dataclass
class FakeUpstream:
    """A scripted Realtime server on loopback (see the module docstring).

    ``reply_ms``: length of the spoken answer to each ``response.create`` (0: do not answer);
    ``codec``: the audio format of the answers; ``on_event``: an extra handler for every client event.
    """

    reply_ms: int = 400
    codec: AudioCodec = "pcm16_24k"
    usage: dict[str, Any] = field(default_factory=lambda: dict(USAGE))
    on_event: Handler | None = None
    received: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    connections: list[ServerConnection] = field(default_factory=list)
    responses: int = 0
    _server: Server | None = None
    url: str = ""

    async def __aenter__(self) -> FakeUpstream:
        self._server = await serve(self._handle, "127.0.0.1", 0)
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v1/realtime"
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def events(self, type_: str, conn: int | None = None) -> list[dict[str, Any]]:
        return [e for c, e in self.received if e.get("type") == type_ and (conn is None or c == conn)]

    def types(self, conn: int | None = None) -> list[str]:
        return [str(e.get("type")) for c, e in self.received if conn is None or c == conn]

    async def drop(self) -> None:
        """Kill the latest connection without a close frame (the client sees code 1006)."""
        self.connections[-1].transport.abort()

    async def _handle(self, ws: ServerConnection) -> None:
        index = len(self.connections)
        self.connections.append(ws)
        await ws.send(json.dumps({"type": "session.created", "event_id": "event_s", "session": SESSION}))
        try:
            async for raw in ws:
                event = json.loads(raw)
                self.received.append((index, event))
                if self.on_event is not None:
                    await self.on_event(self, ws, event)
                if event.get("type") == "response.create" and self.reply_ms > 0:
                    await self.speak(ws, f"Answer number {self.responses + 1}.", self.reply_ms)
        except Exception:
            pass

    async def speak(
        self, ws: ServerConnection, text: str, ms: int, *, usage: dict[str, Any] | None = None
    ) -> str:
        """One complete spoken response; returns its item id."""
        self.responses += 1
        rid = f"resp_{self.responses}"
        item_id = f"item_agent_{self.responses}"
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        base = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self.send(
            ws,
            "response.created",
            response={"id": rid, "object": "realtime.response", "status": "in_progress"},
        )
        await self.send(ws, "response.output_item.added", response_id=rid, output_index=0, item=item)
        audio = tone(ms, self.codec)
        chunk = bytes_per_ms(self.codec) * 100
        for start in range(0, len(audio), chunk):
            await self.send(
                ws,
                "response.output_audio.delta",
                delta=base64.b64encode(audio[start : start + chunk]).decode(),
                **base,
            )
        await self.send(ws, "response.output_audio_transcript.delta", delta=text, **base)
        await self.send(ws, "response.output_audio.done", **base)
        await self.send(ws, "response.output_audio_transcript.done", transcript=text, **base)
        done = {
            "id": rid,
            "object": "realtime.response",
            "status": "completed",
            "output": [
                {**item, "status": "completed", "content": [{"type": "output_audio", "transcript": text}]}
            ],
            "usage": usage or self.usage,
        }
        await self.send(ws, "response.done", response=done)
        return item_id

    async def send(self, ws: ServerConnection, type_: str, **fields: Any) -> None:
        await ws.send(json.dumps({"type": type_, "event_id": f"event_{type_}", **fields}))
