"""The Twilio leg: a :class:`bridges.base.Leg` over a Media Streams WebSocket (protocols.md §E, §C.2).

Setup (:meth:`TwilioLeg.open`): after the route has checked the upgrade's ``X-Twilio-Signature``
(:func:`bridges.twilio.signature.check_websocket`) it hands over the WebSocket; ``open`` accepts it if needed
and reads ``connected`` then ``start`` (§E.2). Media, DTMF or marks before ``start`` are logged and dropped; a
``start`` that does not come within ``start_timeout_s`` closes the socket and raises
:class:`~bridges.twilio.errors.StreamStartError`, as does a ``stop`` or a closed socket before it.

Inbound (:meth:`TwilioLeg.events`):

- ``media`` -> :class:`~bridges.base.CallerAudio`: the µ-law payload byte for byte (the call and the upstream
  use ``audio/pcmu``, no transcoding) with Twilio's ``timestamp`` as media time;
- ``dtmf`` -> :class:`~bridges.base.CallerDtmf` (the call applies the agent's DTMF policy);
- ``mark`` -> :class:`~bridges.base.PlaybackReport` ``(item_id, item_ms)`` of the frame the mark followed:
  the caller has heard the item up to there (:class:`~bridges.twilio.marks.MarkClock`); marks flushed by a
  ``clear`` report nothing;
- ``stop`` -> :class:`~bridges.base.LegHangup` (``caller_hangup``, or ``transferred`` after
  :meth:`TwilioLeg.transfer`); a closed socket -> ``disconnected``.

Malformed JSON, unknown events, bad base64, wrong ``streamSid``, binary frames: logged with the call id and
dropped; the call goes on.

The per-frame fast path (:class:`bridges.base.DirectLeg`), when the server offers the socket's
:class:`voice.wsprotocol.DirectChannel`: :meth:`~TwilioLeg.listen` takes ``media``, ``mark`` and ``dtmf``
messages as they arrive and hands the events to the call at once (anything else, and anything that arrives
while older messages still wait, goes through :meth:`~TwilioLeg.events` as before);
:meth:`~TwilioLeg.play_now` writes a frame's ``media`` and its ``mark`` in one socket write when no other
send is in progress and no tones are queued.

Outbound: :meth:`~TwilioLeg.play` sends one ``media`` message per frame, with a ``mark`` after every
:data:`MARK_EVERY_FRAMES`-th frame of an item (§E.3, §C.2), after the last frame of an item when another
item follows, and after the last frame sent when the audio stops (:meth:`~TwilioLeg.audio_stopped`, which the
call's pacer tick calls; the DTMF pump marks its own last frame). A mark costs
a message each way, and the playout clock interpolates between echoes (:class:`~bridges.twilio.marks.
MarkClock`), so :meth:`~TwilioLeg.heard_now` tells the call how much of the playing item the caller has
heard at any moment, to the ms, for truncation at a barge-in;
:meth:`~TwilioLeg.clear` sends ``clear`` (Twilio drops its queue and echoes the outstanding marks);
:meth:`~TwilioLeg.send_dtmf` plays exact Q.23 tone pairs (:func:`voice.audio.dtmf.dtmf_tones`) encoded to
µ-law into the stream, one 20 ms frame per 20 ms on absolute deadlines (a Media Stream has no out-of-band
DTMF; the alternative, ``<Play digits>`` by REST, would end the stream, §E.5). The leg declares
``capabilities.sends_dtmf_tones``, so the call hands it the keys rather than mixing tones into the agent's
audio. The tones are never mixed with speech: they follow the agent audio already sent (Twilio plays a
stream's media in order) and agent frames that arrive meanwhile wait behind them, so the agent's speech
pauses for the keys and goes on after them, still at real-time speed (marks keep the playout clock
honest: the waiting frames count as heard only when Twilio has played them). A barge-in ``clear`` drops
the waiting agent frames; keys not yet sent still go out. :meth:`~TwilioLeg.transfer` replaces the
call's TwiML with ``<Dial>`` through the REST API (Twilio then stops the stream); :meth:`~TwilioLeg.hangup`
lets the audio already sent play out (bounded by ``hangup_drain_ms``) and closes the socket, which ends the
call (nothing follows ``<Connect>`` in our TwiML, §E.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from bridges.base import (
    FRAME_MS,
    AudioCodec,
    CallerAudio,
    CallerDtmf,
    EventSink,
    LegCapabilities,
    LegEvent,
    LegHangup,
    LegKind,
    PlaybackReport,
    frame_bytes,
    is_dtmf_digit,
    silence_frame,
)
from bridges.twilio.errors import StreamStartError, TwilioProtocolError
from bridges.twilio.marks import MarkClock
from bridges.twilio.protocol import (
    DEFAULT_MAX_BYTES,
    Connected,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    TwilioMessage,
    Unknown,
    clear_message,
    mark_message,
    media_message,
    parse_message,
)
from bridges.twilio.rest import TwilioRest
from bridges.twilio.twiml import parse_transfer_target
from voice.audio.dtmf import dtmf_tones
from voice.audio.g711 import ulaw_encode
from voice.errors import LocalProtocolError
from voice.logs import get_logger
from voice.realtime.ids import new_id
from voice.wsprotocol import DirectChannel, direct_channel

__all__ = ["CLOSE_NORMAL", "CLOSE_NO_START", "MARK_EVERY_FRAMES", "TwilioLeg"]

MARK_EVERY_FRAMES: Final = 5
"""Frames of agent audio per ``mark`` (100 ms): between echoes the playout clock interpolates."""

CLOSE_NORMAL: Final = 1000
CLOSE_NO_START: Final = 1008
"""Close code when ``start`` never came (policy violation)."""

_CALL_ID: Final = re.compile(r"^call_[A-Za-z0-9]{1,64}$")
_SOCKET_ERRORS: Final = (WebSocketDisconnect, RuntimeError, OSError)
_FRAME: Final = frame_bytes("pcmu")
_SILENCE: Final = silence_frame("pcmu")


def _now_ms(clock: Callable[[], float]) -> int:
    return int(clock() * 1000)


class _Problems:
    """Counts what the peer got wrong and logs it (the first ``max_logged``, then one notice)."""

    def __init__(self, max_logged: int) -> None:
        self.max_logged = max_logged
        self.total = 0
        self.by_reason: dict[str, int] = {}

    def report(self, log: Any, reason: str, message: str, **context: Any) -> None:
        self.total += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if self.total <= self.max_logged:
            log.warning("twilio.bad_message", reason=reason, error=message, count=self.total, **context)
        elif self.total == self.max_logged + 1:
            log.warning("twilio.too_many_bad_messages", count=self.total)


async def _close(websocket: WebSocket, code: int, reason: str, log: Any) -> None:
    if websocket.application_state == WebSocketState.DISCONNECTED:
        return
    try:
        await websocket.close(code=code, reason=reason[:120])
    except _SOCKET_ERRORS as exc:
        log.debug("twilio.close_failed", error=repr(exc))


class TwilioLeg:
    """One Twilio call's Media Stream (see the module docstring). Build it with :meth:`open`.

    ``rest`` enables :meth:`transfer` (``capabilities.can_transfer``); ``transfer_caller_id`` is the caller id
    shown to the transfer target. ``clock`` is a monotonic clock in seconds (the mark clock's time base).
    """

    kind: LegKind = "twilio"
    codec: AudioCodec = "pcmu"

    def __init__(
        self,
        websocket: WebSocket,
        start: Start,
        *,
        call_id: str | None = None,
        rest: TwilioRest | None = None,
        metadata: Mapping[str, Any] | None = None,
        transfer_caller_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        hangup_drain_ms: int = 2000,
        dtmf_on_ms: int = 100,
        dtmf_off_ms: int = 60,
        dtmf_level_dbfs: float = -10.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_logged_errors: int = 50,
        problems: _Problems | None = None,
    ) -> None:
        self.websocket = websocket
        self.start = start
        self.call_id: str = call_id or new_id("call")
        self.rest = rest
        self.transfer_caller_id = transfer_caller_id
        self.clock = clock
        self.hangup_drain_ms = hangup_drain_ms
        self.dtmf_on_ms = dtmf_on_ms
        self.dtmf_off_ms = dtmf_off_ms
        self.dtmf_level_dbfs = dtmf_level_dbfs
        self.max_bytes = max_bytes
        self.capabilities = LegCapabilities(
            codecs=("pcmu",),
            native_dtmf=False,
            sends_dtmf_tones=True,
            can_transfer=rest is not None,
            reports_playback=True,
        )
        self.metadata: dict[str, Any] = {**self._start_metadata(start), **dict(metadata or {})}
        self.log = get_logger(call_id=self.call_id, component="twilio_leg", call_sid=start.call_sid)
        self.marks = MarkClock()
        self.problems = problems or _Problems(max_logged_errors)
        self.media_ms = 0
        """Twilio's ``timestamp`` of the last caller media frame: the caller's media clock."""
        self.frames_in = 0
        self._send_lock = asyncio.Lock()
        self._tones: deque[bytes] = deque()
        self._backlog: deque[tuple[bytes, str, int]] = deque()
        self._pump: asyncio.Task[None] | None = None
        self._closed = False
        self._stopped = False
        self._transferred = False
        self._hangup_reason: str | None = None
        self._channel = direct_channel(websocket.scope)
        self._sink: EventSink | None = None
        self._unmarked = 0  # frames sent since the last mark
        self._last_item: str | None = None  # the item of the last frame sent
        self._flush_task: asyncio.Task[None] | None = None
        fmt = start.media_format
        if not fmt.is_mulaw_8k:
            self.log.error(
                "twilio.unexpected_media_format",
                encoding=fmt.encoding,
                sample_rate=fmt.sample_rate,
                channels=fmt.channels,
            )

    # Setup -------------------------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        websocket: WebSocket,
        *,
        start_timeout_s: float = 10.0,
        call_id: str | None = None,
        **options: Any,
    ) -> TwilioLeg:
        """Accept (if not yet accepted) and read up to ``start``; see the module docstring.

        The call id is ``call_id``, else a ``call_id`` custom parameter of the stream (set by our own TwiML
        for outbound calls) when it has the ``call_…`` shape, else a new id. ``options`` go to the
        constructor.
        """
        provisional = call_id or new_id("call")
        log = get_logger(call_id=provisional, component="twilio_leg")
        problems = _Problems(int(options.pop("max_logged_errors", 50)))
        max_bytes = int(options.get("max_bytes", DEFAULT_MAX_BYTES))
        if websocket.application_state == WebSocketState.CONNECTING:
            await websocket.accept()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + start_timeout_s
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                message = await asyncio.wait_for(websocket.receive(), remaining)
            except TimeoutError:
                log.warning("twilio.start_timeout", timeout_s=start_timeout_s)
                await _close(websocket, CLOSE_NO_START, "no start message", log)
                raise StreamStartError(f"no start message within {start_timeout_s} s") from None
            except _SOCKET_ERRORS as exc:
                log.info("twilio.closed_before_start", error=repr(exc))
                raise StreamStartError("the stream closed before its start message") from None
            if message["type"] == "websocket.disconnect":
                log.info("twilio.closed_before_start", code=message.get("code"))
                raise StreamStartError("the stream closed before its start message")
            text = message.get("text")
            if text is None:
                problems.report(log, "binary_frame", "binary frame before start")
                continue
            try:
                parsed = parse_message(text, max_bytes=max_bytes)
            except TwilioProtocolError as exc:
                problems.report(log, exc.reason, exc.message, twilio_event=exc.event, phase="before_start")
                continue
            if isinstance(parsed, Start):
                break
            if isinstance(parsed, Connected):
                log.debug("twilio.connected", protocol=parsed.protocol, version=parsed.version)
            elif isinstance(parsed, Stop):
                log.info("twilio.stopped_before_start")
                await _close(websocket, CLOSE_NORMAL, "stopped", log)
                raise StreamStartError("the stream stopped before its start message")
            elif isinstance(parsed, Unknown):
                log.info("twilio.unknown_event", twilio_event=parsed.event[:64], phase="before_start")
            else:
                problems.report(log, "before_start", f"{type(parsed).__name__.lower()} before start")
        param_id = parsed.custom_parameters.get("call_id")
        final_id = call_id or (param_id if param_id and _CALL_ID.match(param_id) else None) or provisional
        leg = cls(websocket, parsed, call_id=final_id, problems=problems, **options)
        leg.log.info(
            "twilio.start",
            stream_sid=parsed.stream_sid,
            tracks=list(parsed.tracks),
            parameters=sorted(parsed.custom_parameters),
            provisional_id=provisional if provisional != final_id else None,
        )
        return leg

    @staticmethod
    def _start_metadata(start: Start) -> dict[str, Any]:
        params = dict(start.custom_parameters)
        meta: dict[str, Any] = {
            "call_sid": start.call_sid,
            "stream_sid": start.stream_sid,
            "account_sid": start.account_sid,
            "tracks": list(start.tracks),
            "custom_parameters": params,
        }
        for key in ("from", "to", "direction", "agent"):
            if params.get(key):
                meta[key] = params[key]
        if params.get("from"):
            meta["caller"] = params["from"]
        if params.get("to"):
            meta["callee"] = params["to"]
        return meta

    # Identity ----------------------------------------------------------------------------------------------

    @property
    def call_sid(self) -> str:
        return self.start.call_sid

    @property
    def stream_sid(self) -> str:
        return self.start.stream_sid

    @property
    def custom_parameters(self) -> Mapping[str, str]:
        return self.start.custom_parameters

    @property
    def closed(self) -> bool:
        return self._closed

    # Inbound -----------------------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[LegEvent]:
        """Caller audio, DTMF and playback reports until the stream ends (then one :class:`LegHangup`)."""
        while True:
            try:
                message = await self.websocket.receive()
            except _SOCKET_ERRORS as exc:
                self._closed = True
                self.log.info("twilio.receive_failed", error=repr(exc))
                yield LegHangup(self._end_reason("disconnected"))
                return
            if message["type"] == "websocket.disconnect":
                self._closed = True
                self.log.info("twilio.disconnected", code=message.get("code"))
                yield LegHangup(self._end_reason("disconnected"))
                return
            text = message.get("text")
            if text is None:
                self.problems.report(self.log, "binary_frame", "Media Streams frames are JSON text")
                continue
            parsed = self._parse(text)
            if parsed is None:
                continue
            event = _HANDLERS[type(parsed)](self, parsed)
            if event is None:
                continue
            yield event
            if isinstance(event, LegHangup):
                await _close(self.websocket, CLOSE_NORMAL, "stopped", self.log)
                return

    def listen(self, sink: EventSink) -> None:
        """Hand ``media``, ``mark`` and ``dtmf`` events to ``sink`` as they arrive (module docstring)."""
        if self._channel is not None:
            self._sink = sink
            self._channel.on_text(self._on_text)

    def _parse(self, text: str) -> TwilioMessage | None:
        """One message from Twilio; ``None`` for one it got wrong (logged and counted)."""
        try:
            return parse_message(text, max_bytes=self.max_bytes)
        except TwilioProtocolError as exc:
            self.problems.report(self.log, exc.reason, exc.message, twilio_event=exc.event)
            return None

    def _on_text(self, text: str) -> bool:
        sink = self._sink
        if sink is None or self._closed:
            return False
        parsed = self._parse(text)
        if parsed is None:
            return True
        kind = type(parsed)
        if kind is not Media and kind is not Mark and kind is not Dtmf:
            return False  # stop, start, connected, unknown: through events()
        event = _HANDLERS[kind](self, parsed)
        if event is not None:
            sink(event)
        return True

    def _end_reason(self, default: str) -> str:
        if self._transferred:
            return "transferred"
        return self._hangup_reason or default

    def _wrong_stream(self, message: Media | Dtmf | Mark | Stop) -> bool:
        if message.stream_sid == self.stream_sid:
            return False
        self.problems.report(
            self.log, "wrong_stream", "message for another stream", stream_sid=message.stream_sid[:64]
        )
        return True

    def _on_media(self, message: TwilioMessage) -> LegEvent | None:
        assert isinstance(message, Media)
        if self._wrong_stream(message) or not message.track.startswith("inbound") or not message.payload:
            return None
        self.frames_in += 1
        self.media_ms = message.timestamp_ms
        return CallerAudio(message.payload, message.timestamp_ms)

    def _on_dtmf(self, message: TwilioMessage) -> LegEvent | None:
        assert isinstance(message, Dtmf)
        if self._wrong_stream(message):
            return None
        self.log.debug("twilio.dtmf")  # the key itself stays out of the log (PINs, card numbers)
        return CallerDtmf(message.digit, self.media_ms)

    def _on_mark(self, message: TwilioMessage) -> LegEvent | None:
        assert isinstance(message, Mark)
        if self._wrong_stream(message):
            return None
        echo = self.marks.echoed(message.name, _now_ms(self.clock))
        if echo is None:
            self.log.debug("twilio.unknown_mark", name=message.name[:80])
            return None
        if not echo.played or echo.item_id is None:
            return None
        return PlaybackReport(echo.item_id, echo.item_ms)

    def _on_stop(self, message: TwilioMessage) -> LegEvent | None:
        assert isinstance(message, Stop)
        if self._wrong_stream(message):
            return None
        self._stopped = True
        self._closed = True
        self.log.info("twilio.stop", transferred=self._transferred)
        return LegHangup(self._end_reason("caller_hangup"))

    def _on_connected(self, message: TwilioMessage) -> LegEvent | None:
        self.log.debug("twilio.connected_again")
        return None

    def _on_start(self, message: TwilioMessage) -> LegEvent | None:
        assert isinstance(message, Start)
        self.problems.report(self.log, "duplicate_start", "a second start on one stream")
        return None

    def _on_unknown(self, message: TwilioMessage) -> LegEvent | None:
        assert isinstance(message, Unknown)
        self.log.info("twilio.unknown_event", twilio_event=message.event[:64])
        return None

    # Outbound ----------------------------------------------------------------------------------------------

    async def play(self, frame: bytes, item_id: str, item_ms: int) -> None:
        """Send one frame of agent item ``item_id`` as ``media`` plus a ``mark`` (§E.3, §C.2)."""
        if self._closed or not frame:
            return
        if self._pump is not None:
            self._backlog.append((bytes(frame), item_id, item_ms))
            return
        await self._send_chunk(bytes(frame), item_id, item_ms)

    def _channel_now(self) -> DirectChannel | None:
        """The direct channel, when a write on it now keeps the order of what is sent (nothing in the way:
        no send in progress, no DTMF pump, no back-pressure); else ``None``."""
        channel = self._channel
        if (
            channel is None
            or self._closed
            or self._pump is not None
            or self._send_lock.locked()
            or not channel.ready
        ):
            return None
        return channel

    def play_now(self, frame: bytes, item_id: str, item_ms: int) -> bool:
        """:meth:`play` in one socket write, now, when nothing is in its way (module docstring)."""
        channel = self._channel_now()
        if channel is None:
            return False
        if frame:
            channel.send_texts(*self._chunk_messages(bytes(frame), item_id, item_ms))
        return True

    def heard_now(self) -> tuple[str, int] | None:
        """``(item_id, ms heard of it)`` for the agent item playing now, by the playout clock (interpolated
        between mark echoes, never ahead of what was sent); ``None`` when no agent item is known."""
        return self.marks.position(_now_ms(self.clock))

    async def clear(self) -> None:
        """Barge-in: drop Twilio's queue (``clear``) and the agent frames queued behind DTMF tones."""
        async with self._send_lock:
            self._backlog.clear()
            if self._closed:
                return
            self._unmarked = 0
            played = self.marks.cleared(_now_ms(self.clock))
            await self._send_text(clear_message(self.stream_sid))
        self.log.info("twilio.clear", played_ms=played, cleared_marks=self.marks.awaiting_clear_echoes)

    async def send_dtmf(self, digits: str) -> None:
        """Queue ``digits`` as in-band tone pairs (``dtmf_on_ms`` on, ``dtmf_off_ms`` off); returns at once.

        :meth:`wait_dtmf_sent` waits until the last tone frame has been sent.
        """
        if not digits:
            return
        bad = [d for d in digits if not is_dtmf_digit(d)]
        if bad:
            raise LocalProtocolError(f"not DTMF keys: {''.join(bad)!r} (use 0-9, *, #, A-D)")
        pcm = dtmf_tones(
            digits, 8000, on_ms=self.dtmf_on_ms, off_ms=self.dtmf_off_ms, level_dbfs=self.dtmf_level_dbfs
        )
        codes = ulaw_encode(pcm)
        for offset in range(0, len(codes), _FRAME):
            frame = codes[offset : offset + _FRAME]
            self._tones.append(frame + _SILENCE[len(frame) :])
        self.log.info("twilio.send_dtmf", keys=len(digits), frames=len(self._tones))
        if self._pump is None and not self._closed:
            self._pump = asyncio.create_task(self._run_pump(), name=f"twilio-dtmf-{self.call_id}")

    async def wait_dtmf_sent(self) -> None:
        """Wait until every queued DTMF tone frame (and agent frame queued behind them) has been sent."""
        pump = self._pump
        if pump is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(pump)

    async def _run_pump(self) -> None:
        """Send tone frames, then agent frames queued meanwhile, one per 20 ms on absolute deadlines."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        try:
            while (self._tones or self._backlog) and not self._closed:
                if self._tones:
                    await self._send_chunk(self._tones.popleft(), None, None)
                else:
                    frame, item_id, item_ms = self._backlog.popleft()
                    await self._send_chunk(frame, item_id, item_ms)
                deadline += FRAME_MS / 1000
                delay = deadline - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.1:
                    deadline = loop.time()  # the loop stalled: resume on a fresh grid, no burst
            await self._send_pending_mark()  # the last frame sent, if it is unmarked
        except Exception:
            self.log.exception("twilio.dtmf_pump_failed")
        finally:
            self._pump = None

    async def transfer(self, target: str) -> None:
        """Dial ``target`` (E.164, ``sip:``, ``client:``) by replacing the call's TwiML (REST, §E.5).

        Twilio then stops the stream; :meth:`events` ends with ``LegHangup("transferred")``. Raises
        :class:`LocalProtocolError` without a REST client, :class:`InvalidTransferTarget` for a target that
        cannot be dialled and :class:`TwilioRestError` when Twilio refuses.
        """
        if self.rest is None:
            raise LocalProtocolError("this Twilio leg has no REST client: it cannot transfer")
        where = parse_transfer_target(target)
        self._transferred = True
        try:
            await self.rest.transfer(self.call_sid, where, caller_id=self.transfer_caller_id)
        except BaseException:
            self._transferred = False
            raise
        self.log.info("twilio.transferred", kind=where.kind, target=where.value)

    async def hangup(self, reason: str) -> None:
        """Let the sent audio play out (at most ``hangup_drain_ms``), then close the socket; idempotent."""
        if self._closed:
            return
        self._hangup_reason = reason
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hangup_drain_ms / 1000
        pump = self._pump
        if pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(pump), max(0.0, deadline - loop.time()))
            pump.cancel()
        remaining_s = self.marks.remaining_ms(_now_ms(self.clock)) / 1000
        wait_s = min(remaining_s, deadline - loop.time())
        if wait_s > 0 and not self._closed:
            await asyncio.sleep(wait_s)
        async with self._send_lock:
            if self._closed:
                return
            self._closed = True
        await _close(self.websocket, CLOSE_NORMAL, reason, self.log)
        self.log.info("twilio.hangup", reason=reason)

    async def send_control(self, message: dict[str, Any]) -> None:
        """A phone has no UI: nothing to send."""
        return None

    # Sending -----------------------------------------------------------------------------------------------

    async def _send_chunk(self, payload: bytes, item_id: str | None, item_ms: int | None) -> None:
        async with self._send_lock:
            if self._closed:
                return
            for text in self._chunk_messages(payload, item_id, item_ms):
                if not await self._send_text(text):
                    return

    def _chunk_messages(self, payload: bytes, item_id: str | None, item_ms: int | None) -> list[str]:
        """The messages that send one frame: a pending mark of the previous item first, the ``media``, and
        a ``mark`` after it when it is due (DTMF tones, ``item_id`` ``None``, are marked one by one)."""
        messages: list[str] = []
        if item_id != self._last_item:
            pending = self._pending_mark()
            if pending is not None:
                messages.append(pending)
            self._unmarked = 0
        self._last_item = item_id
        self._unmarked += 1
        mark = item_id is None or self._unmarked >= MARK_EVERY_FRAMES
        name = self.marks.sent(len(payload), _now_ms(self.clock), item_id, item_ms, mark=mark)
        messages.append(media_message(self.stream_sid, payload))
        if mark:
            messages.append(mark_message(self.stream_sid, name))
            self._unmarked = 0
        return messages

    def audio_stopped(self) -> None:
        """No frame followed the last one sent: send its mark if it has none yet, so that the call learns
        when the item was heard to its end (:class:`bridges.base.DirectLeg`)."""
        if self._closed or self._pump is not None:
            return  # the DTMF pump marks the last frame it sends
        channel = self._channel_now()
        if channel is None:
            if self._flush_task is None or self._flush_task.done():
                self._flush_task = asyncio.get_running_loop().create_task(self._send_pending_mark())
            return
        pending = self._pending_mark()
        if pending is not None:
            channel.send_texts(pending)

    async def _send_pending_mark(self) -> None:
        async with self._send_lock:
            pending = None if self._closed else self._pending_mark()
            if pending is not None:
                await self._send_text(pending)

    def _pending_mark(self) -> str | None:
        """The ``mark`` message for the last frame sent if it has none yet (now counted as marked)."""
        name = self.marks.mark_last()
        if name is None:
            return None
        self._unmarked = 0
        return mark_message(self.stream_sid, name)

    async def _send_text(self, text: str) -> bool:
        if self._closed:
            return False
        try:
            await self.websocket.send_text(text)
        except _SOCKET_ERRORS as exc:
            self._closed = True
            self.log.info("twilio.send_failed", error=repr(exc))
            return False
        return True


_HANDLERS: Final[dict[type, Callable[[TwilioLeg, TwilioMessage], LegEvent | None]]] = {
    Media: TwilioLeg._on_media,
    Dtmf: TwilioLeg._on_dtmf,
    Mark: TwilioLeg._on_mark,
    Stop: TwilioLeg._on_stop,
    Connected: TwilioLeg._on_connected,
    Start: TwilioLeg._on_start,
    Unknown: TwilioLeg._on_unknown,
}
"""Message type -> handler (a table, not an ``if`` chain: DESIGN.md "Examples to follow")."""
