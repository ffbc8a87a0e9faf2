"""The browser WebSocket leg: a :class:`bridges.base.Leg` over an accepted Starlette WebSocket.

The page exchanges PCM16 mono 24 kHz with the service (``PROTOCOL.md``), which is also the upstream session's
format (``audio/pcm`` 24 kHz, protocols.md §A.3), so no audio is converted here: the page's AudioWorklet
resamples from the AudioContext rate.

Inbound (:meth:`BrowserLeg.events`): binary frames become :class:`~bridges.base.CallerAudio` stamped with the
caller's media clock (ms of audio received so far), ``playback`` reports become
:class:`~bridges.base.PlaybackReport` (the page's playout clock: truncation uses it, protocols.md §C.2),
``dtmf`` becomes :class:`~bridges.base.CallerDtmf`, ``hangup`` or a closed socket a final
:class:`~bridges.base.LegHangup`. A malformed message, oversized message or audio with an odd byte count is
answered with an ``error`` message and dropped; the call goes on (after :attr:`BrowserLeg.max_errors` error
replies the leg stops answering, to bound the work a misbehaving page can cause, but still drops the input).

Outbound: :meth:`~BrowserLeg.play` sends ``agent.item`` whenever the item changes, then the binary frame;
:meth:`~BrowserLeg.clear` sends ``clear``; :meth:`~BrowserLeg.send_control` maps the call's control messages
with :func:`bridges.browser.protocol.from_control`; :meth:`~BrowserLeg.hangup` sends ``call.ended`` (once)
and closes the socket (1000, or 1011 when the call failed). Sends after the page went away are dropped
quietly: the end of the call is learnt from :meth:`events`.

A browser has no native DTMF and cannot be transferred: :meth:`~BrowserLeg.send_dtmf` and
:meth:`~BrowserLeg.transfer` raise :class:`~voice.errors.LocalProtocolError` (the runner plays DTMF in-band
on legs without native DTMF and never transfers a leg whose capabilities say it cannot).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

from starlette.websockets import WebSocket, WebSocketDisconnect

from bridges.base import (
    AudioCodec,
    CallerAudio,
    CallerDtmf,
    LegCapabilities,
    LegEvent,
    LegHangup,
    LegKind,
    PlaybackReport,
)
from bridges.browser import protocol
from voice.errors import LocalProtocolError
from voice.logs import get_logger
from voice.realtime.ids import new_id

__all__ = ["CAPABILITIES", "BrowserLeg"]

CAPABILITIES: Final = LegCapabilities(
    codecs=("pcm16_24k",), native_dtmf=False, can_transfer=False, reports_playback=True
)

_ERROR_REASONS: Final = frozenset({"error", "upstream_failed"})
"""End reasons closed with 1011 (internal error) rather than 1000."""

_SAFE_HEADERS: Final = ("user-agent", "origin", "x-forwarded-for")


def _encode(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class BrowserLeg:
    """One browser caller over an accepted WebSocket (see the module docstring).

    ``agent`` is the profile name announced in ``call.started`` when the runner's ``call_start`` control
    message names none (it normally does); ``call_id`` defaults to a new
    ``call_...`` id; ``metadata`` is merged over what the socket tells (client address, user agent,
    origin). Message limits: ``max_text_bytes`` for JSON, ``max_audio_bytes`` for one binary message.
    """

    kind: LegKind = "browser"
    codec: AudioCodec = "pcm16_24k"
    capabilities: LegCapabilities = CAPABILITIES

    def __init__(
        self,
        websocket: WebSocket,
        *,
        agent: str = "",
        call_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        max_text_bytes: int = protocol.MAX_TEXT_BYTES,
        max_audio_bytes: int = protocol.MAX_AUDIO_BYTES,
        max_errors: int = 50,
    ) -> None:
        self.websocket = websocket
        self.agent = agent
        self.call_id: str = call_id or new_id("call")
        self.max_text_bytes = max_text_bytes
        self.max_audio_bytes = max_audio_bytes
        self.max_errors = max_errors
        self.metadata: dict[str, Any] = {**self._socket_metadata(websocket), **dict(metadata or {})}
        self.log = get_logger(call_id=self.call_id, component="browser_leg")
        self.media_ms = 0
        """Caller audio received so far in ms: the caller's media clock."""
        self.errors = 0
        """Malformed inputs received."""
        self._audio_bytes = 0
        self._announced: str | None = None
        self._ended_sent = False
        self._closed = False
        self._send_lock = asyncio.Lock()

    @staticmethod
    def _socket_metadata(websocket: WebSocket) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        client = websocket.client
        if client is not None:
            meta["caller"] = f"{client.host}:{client.port}"
        for name in _SAFE_HEADERS:
            value = websocket.headers.get(name)
            if value:
                meta[name.replace("-", "_")] = value[:256]
        return meta

    @property
    def closed(self) -> bool:
        """The socket is closed (by us or by the page)."""
        return self._closed

    # -- inbound --------------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[LegEvent]:
        """Caller audio, DTMF and playback reports until the page hangs up or goes away (then a LegHangup)."""
        while True:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                self._closed = True
                self.log.info("browser.receive_failed", error=repr(exc))
                yield LegHangup("disconnected")
                return
            if message["type"] == "websocket.disconnect":
                self._closed = True
                self.log.info("browser.disconnected", code=message.get("code"))
                yield LegHangup("disconnected")
                return
            data = message.get("bytes")
            text = message.get("text")
            try:
                if data is not None:
                    audio = protocol.check_audio(data, max_bytes=self.max_audio_bytes)
                    event: LegEvent = CallerAudio(audio, self.media_ms)
                    self._audio_bytes += len(audio)
                    self.media_ms = self._audio_bytes // protocol.BYTES_PER_MS
                    yield event
                    continue
                if text is None:
                    raise protocol.BrowserProtocolError("bad_message", "empty WebSocket message")
                parsed = protocol.parse_page_message(text, max_bytes=self.max_text_bytes)
            except protocol.BrowserProtocolError as exc:
                await self._reject(exc)
                continue
            if isinstance(parsed, protocol.PagePlayback):
                yield PlaybackReport(parsed.item_id, parsed.played_ms)
            elif isinstance(parsed, protocol.PageDtmf):
                yield CallerDtmf(parsed.digit, self.media_ms)
            else:
                self.log.info("browser.hangup_requested")
                yield LegHangup("caller_hangup")
                return

    async def _reject(self, exc: protocol.BrowserProtocolError) -> None:
        self.errors += 1
        if self.errors <= self.max_errors:
            self.log.warning("browser.bad_message", code=exc.code, error=exc.message, count=self.errors)
            await self._send_json(protocol.error(exc.code, exc.message))
        elif self.errors == self.max_errors + 1:
            self.log.warning("browser.too_many_bad_messages", count=self.errors)

    # -- outbound -------------------------------------------------------------------------------------

    async def play(self, frame: bytes, item_id: str, item_ms: int) -> None:
        """Send one 20 ms frame of agent item ``item_id`` (after ``agent.item`` when the item changes)."""
        async with self._send_lock:
            if item_id != self._announced:
                if not await self._send_locked(_encode(protocol.agent_item(item_id))):
                    return
                self._announced = item_id
            await self._send_locked(bytes(frame))

    async def clear(self) -> None:
        """Tell the page to drop all queued agent audio (it then reports its playback position)."""
        async with self._send_lock:
            self._announced = None
            await self._send_locked(_encode(protocol.clear()))

    async def send_control(self, message: dict[str, Any]) -> None:
        """Send the wire form of a call control message (:func:`protocol.from_control`), if it has one."""
        wire = protocol.from_control(message, call_id=self.call_id, agent=self.agent)
        if wire is None:
            return
        if wire["type"] == "call.ended":
            if self._ended_sent:
                return
            self._ended_sent = True
        await self._send_json(wire)

    async def send_error(self, code: str, message: str) -> None:
        """An ``error`` message to the page (the call goes on)."""
        await self._send_json(protocol.error(code, message))

    async def send_dtmf(self, digits: str) -> None:
        raise LocalProtocolError("a browser leg has no native DTMF; play the tones in-band")

    async def transfer(self, target: str) -> None:
        raise LocalProtocolError("a browser leg cannot be transferred")

    async def hangup(self, reason: str) -> None:
        """Send ``call.ended`` (unless already sent) and close the socket; idempotent."""
        if self._closed:
            return
        if not self._ended_sent:
            self._ended_sent = True
            await self._send_json(protocol.call_ended(reason, self.call_id))
        code = protocol.CLOSE_INTERNAL_ERROR if reason in _ERROR_REASONS else protocol.CLOSE_NORMAL
        async with self._send_lock:
            if self._closed:
                return
            self._closed = True
            try:
                await self.websocket.close(code=code, reason=reason[:120])
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                self.log.debug("browser.close_failed", error=repr(exc))
        self.log.info("browser.closed", code=code, reason=reason)

    # -- sending --------------------------------------------------------------------------------------

    async def _send_json(self, message: Mapping[str, Any]) -> bool:
        text = _encode(message)
        async with self._send_lock:
            return await self._send_locked(text)

    async def _send_locked(self, data: str | bytes) -> bool:
        if self._closed:
            return False
        try:
            if isinstance(data, bytes):
                await self.websocket.send_bytes(data)
            else:
                await self.websocket.send_text(data)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            self._closed = True
            self.log.info("browser.send_failed", error=repr(exc))
            return False
        return True
