"""A Python WebSocket client that behaves like the browser page of ``bridges/browser/PROTOCOL.md``.

- **Microphone**: sends 20 ms binary frames of PCM16 24 kHz paced in real time on absolute deadlines;
  queued speech (:meth:`Page.say`) is sent as it comes, silence otherwise (a microphone never stops).
  Every frame's send time is kept, so a test knows when each part of the caller's speech was sent.
- **Speaker**: a real-time player on absolute 20 ms deadlines with a small jitter buffer (it starts an item
  once two frames are queued or 40 ms passed). Each played frame is logged with the time it started
  playing. After each frame it reports ``playback`` with the exact position of the item (every 20 ms);
  on ``clear`` it drops the queue at once and reports where playback stopped, to the millisecond.
- Everything the server sends is kept in order with its arrival time.

Times are ``time.monotonic()`` seconds; :attr:`Page.t0` is when ``call.started`` arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

FRAME = 960
FRAME_S = 0.02


@dataclass
class PlayedFrame:
    t: float
    item_id: str
    item_ms: int
    audio: bytes


@dataclass
class SentFrame:
    t: float
    media_ms: int
    speech: bool


class Page:
    """One simulated browser caller (see the module docstring)."""

    def __init__(self, url: str, *, prebuffer_frames: int = 2, report_every_frame: bool = True) -> None:
        self.url = url
        self.prebuffer_frames = prebuffer_frames
        self.report_every_frame = report_every_frame
        self.ws: ClientConnection | None = None
        self.t0 = 0.0
        self.call_id = ""
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.played: list[PlayedFrame] = []
        self.sent: list[SentFrame] = []
        self.clears: list[tuple[float, str | None, int]] = []
        """``(time, item_id, played_ms)`` at each ``clear``: what the caller had heard when it stopped."""
        self.closed_code: int | None = None
        self.frames_received: dict[str, int] = {}
        self._queue: deque[tuple[str, int, bytes]] = deque()
        self._current_item: str | None = None
        self._item_frames: dict[str, int] = {}
        self._playing: PlayedFrame | None = None
        self._speech: deque[bytes] = deque()
        self._media_ms = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._first_queued: float | None = None
        self._waiting = True
        self.changed = asyncio.Event()

    # -- life cycle -------------------------------------------------------------------------------------

    async def open(self, *, mic: bool = True, limit_s: float = 10.0) -> dict[str, Any]:
        """Connect, wait for ``call.started`` and start the speaker (and the microphone)."""
        self.ws = await connect(self.url, max_size=None, open_timeout=limit_s)
        raw = await asyncio.wait_for(self.ws.recv(), limit_s)
        started = json.loads(raw)
        assert started["type"] == "call.started", started
        self.t0 = time.monotonic()
        self.call_id = started["call_id"]
        self.messages.append((self.t0, started))
        self._tasks = [asyncio.create_task(self._receiver()), asyncio.create_task(self._speaker())]
        if mic:
            self._tasks.append(asyncio.create_task(self._microphone()))
        return dict(started)

    async def close(self) -> None:
        """Stop everything and close the socket (a caller who just goes away)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def hangup(self) -> None:
        await self.send_json({"type": "hangup"})

    # -- sending ----------------------------------------------------------------------------------------

    async def send_json(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(msg))

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(data)

    def say(self, pcm: bytes) -> float:
        """Queue speech for the microphone; returns when its first frame will go (estimated)."""
        pending = sum(len(c) for c in self._speech)
        for i in range(0, len(pcm), FRAME):
            chunk = pcm[i : i + FRAME]
            self._speech.append(chunk + bytes(FRAME - len(chunk)))
        return time.monotonic() + pending / FRAME * FRAME_S

    def speech_sent(self) -> list[SentFrame]:
        return [f for f in self.sent if f.speech]

    async def _microphone(self) -> None:
        assert self.ws is not None
        deadline = time.monotonic()
        while True:
            frame = self._speech.popleft() if self._speech else bytes(FRAME)
            now = time.monotonic()
            try:
                await self.ws.send(frame)
            except ConnectionClosed:
                return
            self.sent.append(SentFrame(now, self._media_ms, any(frame)))
            self._media_ms += 20
            deadline += FRAME_S
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    # -- receiving --------------------------------------------------------------------------------------

    async def _receiver(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                now = time.monotonic()
                if isinstance(raw, bytes):
                    item = self._current_item or "?"
                    n = self._item_frames.get(item, 0) + 1
                    self._item_frames[item] = n
                    self.frames_received[item] = self.frames_received.get(item, 0) + 1
                    if not self._queue and self._first_queued is None:
                        self._first_queued = now
                    self._queue.append((item, 20 * n, raw))
                    continue
                msg = json.loads(raw)
                self.messages.append((now, msg))
                if msg["type"] == "agent.item":
                    self._current_item = msg["item_id"]
                elif msg["type"] == "clear":
                    await self._clear(now)
                self.changed.set()
        except ConnectionClosed:
            pass
        finally:
            if self.ws is not None:
                self.closed_code = self.ws.close_code
            self.changed.set()

    async def _clear(self, now: float) -> None:
        self._queue.clear()
        self._first_queued = None
        self._waiting = True
        playing, self._playing = self._playing, None
        if playing is None:
            last = self.played[-1] if self.played else None
            self.clears.append((now, last.item_id if last else None, last.item_ms if last else 0))
            if last is not None:
                await self._report(last.item_id, last.item_ms)
            return
        elapsed = min(20, int((now - playing.t) * 1000))
        heard = playing.item_ms - 20 + elapsed
        self.clears.append((now, playing.item_id, heard))
        await self._report(playing.item_id, heard)

    async def _report(self, item_id: str, played_ms: int) -> None:
        if self.ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps({"type": "playback", "item_id": item_id, "played_ms": played_ms}))

    async def _speaker(self) -> None:
        deadline = time.monotonic()
        while True:
            deadline += FRAME_S
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            now = time.monotonic()
            finished, self._playing = self._playing, None
            if finished is not None:
                await self._report(finished.item_id, finished.item_ms)
            if self._waiting:
                ready = len(self._queue) >= self.prebuffer_frames or (
                    self._queue and self._first_queued is not None and now - self._first_queued >= 0.04
                )
                if not ready:
                    continue
                self._waiting = False
            if not self._queue:
                self._waiting = True  # underrun: the last report above said where playback ended
                self._first_queued = None
                continue
            item, item_ms, audio = self._queue.popleft()
            frame = PlayedFrame(now, item, item_ms, audio)
            self.played.append(frame)
            self._playing = frame

    # -- queries ----------------------------------------------------------------------------------------

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if m.get("type") == type_]

    def played_items(self) -> list[str]:
        out: list[str] = []
        for f in self.played:
            if not out or out[-1] != f.item_id:
                out.append(f.item_id)
        return out

    def frames_of(self, item_id: str) -> list[PlayedFrame]:
        return [f for f in self.played if f.item_id == item_id]

    async def wait_for(self, cond: Callable[[], Any], limit_s: float = 20.0) -> Any:
        """Wait until ``cond()`` is truthy (checked on every message and every 50 ms); return its value."""
        async with asyncio.timeout(limit_s):
            while True:
                value = cond()
                if value:
                    return value
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.05)

    async def wait_message(
        self, pred: Callable[[dict[str, Any]], bool], limit_s: float = 20.0, since: int = 0
    ) -> dict[str, Any]:
        """The first message (from index ``since``) matching ``pred``."""

        def find() -> dict[str, Any] | None:
            for _, m in self.messages[since:]:
                if pred(m):
                    return m
            return None

        found: dict[str, Any] = await self.wait_for(find, limit_s)
        return found

    def agent_done(self, since: int = 0) -> list[dict[str, Any]]:
        return [
            m
            for _, m in self.messages[since:]
            if m.get("type") == "transcript.done" and m.get("role") == "agent"
        ]
