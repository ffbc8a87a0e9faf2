"""A faithful simulated Twilio Media Streams caller (test-peers.md "Twilio Media Streams", protocols.md §E).

:class:`SimulatedTwilioCall` plays Twilio's side of a bidirectional ``<Connect><Stream>``:

- it opens the WebSocket with ``X-Twilio-Signature`` computed by the real ``RequestValidator`` over the
  ``wss://`` URL Twilio would have been given (``signed_url``), while connecting to the loopback URL;
- it sends ``connected`` then ``start`` (with ``customParameters``), then caller audio as ``media`` messages:
  by default one 20 ms µ-law frame every 20 ms on absolute deadlines, silence (0xFF) when the caller says
  nothing, like a phone line; :meth:`SimulatedTwilioCall.say` queues speech, ``continuous_media=False``
  leaves the sending to :meth:`SimulatedTwilioCall.send_media`. ``chunk`` counts from 1, ``timestamp`` is
  ms since the stream started, ``sequenceNumber`` counts every message after ``connected``; numbers are
  strings, as Twilio sends them (§E.2);
- it **plays** the agent audio we send at real-time speed (8 bytes per ms) from a queue, and echoes each
  ``mark`` only once all the audio queued before it has played; ``clear`` drops the queue (including the
  chunk playing) and echoes the outstanding marks at once (§E.2, §E.3);
- every message we send is parsed with the codec's Twilio-side parser; anything Twilio would not accept
  (malformed JSON, an unknown event, another ``streamSid``, a binary frame) is recorded in
  :attr:`SimulatedTwilioCall.protocol_errors`;
- :meth:`SimulatedTwilioCall.press` sends a ``dtmf`` message, :meth:`SimulatedTwilioCall.stop` a ``stop`` and
  closes (a hang-up), :meth:`SimulatedTwilioCall.send_raw` anything at all.

Observations: :attr:`heard` (what the caller heard, with the loop time each 20 ms finished playing),
:attr:`media_received` (when each media message arrived), :attr:`marks_echoed`, :attr:`clears`,
:attr:`close_code`. End-to-end tests and benchmarks reuse it against the real service.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bridges.twilio.errors import TwilioProtocolError
from bridges.twilio.protocol import (
    Clear,
    Connected,
    Dtmf,
    Mark,
    Media,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    Unknown,
    encode_message,
    parse_outbound,
)
from bridges.twilio.signature import SIGNATURE_HEADER, compute_signature

FRAME_BYTES = 160
FRAME_S = 0.020
BYTES_PER_S = 8000
SILENCE = b"\xff" * FRAME_BYTES


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two letters and 32 hex digits."""
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class HeardChunk:
    """Agent audio the caller heard: ``t`` is the loop time when this chunk finished playing."""

    t: float
    audio: bytes


@dataclass(frozen=True, slots=True)
class EchoedMark:
    name: str
    t: float
    cleared: bool


@dataclass(slots=True)
class _Entry:
    kind: str  # "audio" or "mark"
    audio: bytearray = field(default_factory=bytearray)
    name: str = ""


class SimulatedTwilioCall:
    """Twilio's side of one Media Stream (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        auth_token: str | None = "test-auth-token",
        signed_url: str | None = None,
        signature: str | None = None,
        account_sid: str | None = None,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        custom_parameters: Mapping[str, str] | None = None,
        continuous_media: bool = True,
        send_connected: bool = True,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.auth_token = auth_token
        self.signed_url = signed_url or url
        self.signature = signature
        self.account_sid = account_sid or new_sid("AC")
        self.call_sid = call_sid or new_sid("CA")
        self.stream_sid = stream_sid or new_sid("MZ")
        self.custom_parameters = dict(custom_parameters or {})
        self.continuous_media = continuous_media
        self.send_connected = send_connected
        self.extra_headers = dict(extra_headers or {})
        self.ws: ClientConnection | None = None
        # Observations.
        self.heard: list[HeardChunk] = []
        self.media_received: list[tuple[float, bytes]] = []
        self.marks_received: list[str] = []
        self.marks_echoed: list[EchoedMark] = []
        self.clears: list[float] = []
        self.protocol_errors: list[str] = []
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.closed = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        # Caller side.
        self._caller: bytearray = bytearray()
        self._seq = 0
        self._chunk = 0
        self._t_start: float | None = None
        # Playback side.
        self._queue: deque[_Entry] = deque()
        self._wake = asyncio.Event()
        self._clear_gen = 0
        self._play_clock = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._send_lock = asyncio.Lock()

    # Connection -------------------------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        headers = dict(self.extra_headers)
        if self.signature is not None:
            headers[SIGNATURE_HEADER] = self.signature
        elif self.auth_token is not None:
            headers[SIGNATURE_HEADER] = compute_signature(self.signed_url, {}, self.auth_token)
        return headers

    async def connect(self) -> None:
        """Open the WebSocket (the upgrade request carries the signature); raises if it is refused."""
        self.ws = await connect(
            self.url,
            additional_headers=self.headers(),
            proxy=None,
            open_timeout=5,
            close_timeout=1,
            compression=None,
        )
        self._tasks.append(asyncio.create_task(self._receiver(), name="twilio-sim-receiver"))
        self._tasks.append(asyncio.create_task(self._player(), name="twilio-sim-player"))

    async def start(self) -> None:
        """``connected`` (unless disabled), ``start``, then continuous caller media if enabled."""
        if self.send_connected:
            await self.send_raw(encode_message(Connected()))
        self._t_start = asyncio.get_running_loop().time()
        await self.send_raw(
            encode_message(
                Start(
                    stream_sid=self.stream_sid,
                    call_sid=self.call_sid,
                    account_sid=self.account_sid,
                    tracks=("inbound",),
                    custom_parameters=self.custom_parameters,
                    sequence_number=self._next_seq(),
                )
            )
        )
        if self.continuous_media:
            self._tasks.append(asyncio.create_task(self._media_sender(), name="twilio-sim-media"))

    async def __aenter__(self) -> SimulatedTwilioCall:
        await self.connect()
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the socket without ``stop`` (a dropped connection) and stop the tasks."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
            self._record_close()

    def _record_close(self) -> None:
        if self.ws is not None and self.close_code is None and self.ws.close_code is not None:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
        self.closed.set()

    # Caller side ------------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _timestamp_ms(self) -> int:
        if self._t_start is None:
            return 0
        return max(0, round((asyncio.get_running_loop().time() - self._t_start) * 1000))

    async def send_raw(self, data: str | bytes) -> None:
        if self.ws is None:
            raise RuntimeError("not connected")
        async with self._send_lock:
            await self.ws.send(data)

    async def send_media(self, payload: bytes, *, timestamp_ms: int | None = None) -> None:
        """One ``media`` message with ``payload`` (µ-law) now."""
        self._chunk += 1
        stamp = self._timestamp_ms() if timestamp_ms is None else timestamp_ms
        message = Media(self.stream_sid, self._chunk, stamp, payload, "inbound", self._next_seq())
        await self.send_raw(encode_message(message))

    def say(self, ulaw: bytes) -> None:
        """Queue caller audio for the continuous media sender (sent in 20 ms frames, real time)."""
        self._caller += ulaw

    @property
    def saying(self) -> bool:
        return bool(self._caller)

    async def press(self, digit: str) -> None:
        await self.send_raw(encode_message(Dtmf(self.stream_sid, digit, "inbound_track", self._next_seq())))

    async def stop(self) -> None:
        """The caller hangs up: ``stop``, then Twilio closes the socket."""
        with contextlib.suppress(ConnectionClosed):
            await self.send_raw(
                encode_message(Stop(self.stream_sid, self.account_sid, self.call_sid, self._next_seq()))
            )
        await self.close()

    async def _media_sender(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        try:
            while True:
                frame = bytes(self._caller[:FRAME_BYTES])
                del self._caller[:FRAME_BYTES]
                frame += SILENCE[len(frame) :]
                await self.send_media(frame)
                deadline += FRAME_S
                await asyncio.sleep(max(0.0, deadline - loop.time()))
        except ConnectionClosed:
            self._record_close()

    # Twilio's playback side -------------------------------------------------------------------------------

    async def _receiver(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                self._on_message(raw)
        except ConnectionClosed:
            pass
        finally:
            self._record_close()
            self._wake.set()

    def _on_message(self, raw: str | bytes) -> None:
        now = asyncio.get_running_loop().time()
        if isinstance(raw, bytes):
            self.protocol_errors.append("binary frame")
            return
        try:
            message = parse_outbound(raw)
        except TwilioProtocolError as exc:
            self.protocol_errors.append(f"{exc.reason}: {exc.message}")
            return
        if isinstance(message, Unknown):
            self.protocol_errors.append(f"unknown event {message.event!r}")
            return
        if message.stream_sid != self.stream_sid:
            self.protocol_errors.append(f"wrong streamSid {message.stream_sid!r}")
            return
        if isinstance(message, OutboundMedia):
            self.media_received.append((now, message.payload))
            if self._queue and self._queue[-1].kind == "audio":
                self._queue[-1].audio += message.payload
            else:
                self._queue.append(_Entry("audio", bytearray(message.payload)))
        elif isinstance(message, OutboundMark):
            self.marks_received.append(message.name)
            self._queue.append(_Entry("mark", name=message.name))
        elif isinstance(message, Clear):
            self.clears.append(now)
            self._clear_gen += 1
            for entry in list(self._queue):
                if entry.kind == "mark":
                    self._echo(entry.name, cleared=True)
            self._queue.clear()
        self.idle.clear()
        self._wake.set()

    def _echo(self, name: str, *, cleared: bool) -> None:
        self.marks_echoed.append(EchoedMark(name, asyncio.get_running_loop().time(), cleared))
        message = encode_message(Mark(self.stream_sid, name, self._next_seq()))
        self._tasks = [task for task in self._tasks if not task.done()]
        self._tasks.append(asyncio.create_task(self._send_quietly(message)))

    async def _send_quietly(self, text: str) -> None:
        with contextlib.suppress(ConnectionClosed, RuntimeError):
            await self.send_raw(text)

    async def _player(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._queue and self._queue[0].kind == "mark":
                self._echo(self._queue.popleft().name, cleared=False)
            if not self._queue:
                self.idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            head = self._queue[0]
            chunk = bytes(head.audio[:FRAME_BYTES])
            del head.audio[:FRAME_BYTES]
            if not head.audio:
                self._queue.popleft()
            self._play_clock = max(self._play_clock, loop.time()) + len(chunk) / BYTES_PER_S
            generation = self._clear_gen
            await asyncio.sleep(max(0.0, self._play_clock - loop.time()))
            if generation != self._clear_gen:
                self._play_clock = loop.time()  # cut off mid-chunk: nothing of it counts as heard
                continue
            self.heard.append(HeardChunk(loop.time(), chunk))

    # Observations -----------------------------------------------------------------------------------------

    def heard_audio(self) -> bytes:
        return b"".join(chunk.audio for chunk in self.heard)

    def heard_ms(self) -> int:
        return len(self.heard_audio()) // 8

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 5.0) -> None:
        """Poll ``predicate`` every 5 ms until it holds (``TimeoutError`` after ``within_s``)."""
        async with asyncio.timeout(within_s):
            while not predicate():  # noqa: ASYNC110 - a predicate over several observations, not one event
                await asyncio.sleep(0.005)

    async def wait_idle(self, within_s: float = 5.0) -> None:
        """Until everything queued has played and every mark has been echoed."""
        await self.wait_for(lambda: self.idle.is_set() and not self._queue, within_s)

    def summary(self) -> dict[str, Any]:
        return {
            "heard_ms": self.heard_ms(),
            "media_received": len(self.media_received),
            "marks_received": len(self.marks_received),
            "marks_echoed": len(self.marks_echoed),
            "clears": len(self.clears),
            "protocol_errors": list(self.protocol_errors),
            "close_code": self.close_code,
        }
