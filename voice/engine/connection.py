"""The asyncio adapter of one engine session: WebSocket messages in, the core's events out, effects run.

The adapter owns time and I/O only. Each client message is parsed (:func:`voice.realtime.events.
parse_client_event`, which enforces ``max_message_bytes``) and fed to the :class:`~voice.engine.session.
EngineSession`; each :class:`~voice.engine.effects.Step` it returns is applied at once: its events go to an
outbox drained by one writer task (so events leave in exactly the order the core made them), its effects
start tasks:

- :class:`~voice.engine.effects.Transcribe` runs the shared :class:`~voice.engine.asr.Transcriber` in the
  speech thread pool;
- :class:`~voice.engine.effects.Respond` awaits the session's responder;
- :class:`~voice.engine.effects.Speak` synthesizes sentence by sentence in the speech thread pool, one
  sentence ahead, and hands each sentence's audio to the core as soon as it is ready (the first sentence
  is on the wire while the next is being synthesized: faster than real time);
- :class:`~voice.engine.effects.Cancel` cancels a response's tasks.

Client messages arrive through the socket's :class:`voice.wsprotocol.DirectChannel` when the server offers
it: each is handled as it is read, with no queue or task switch in between (``input_audio_buffer.append``
comes fifty times a second per session); otherwise through ASGI ``receive``.

Nothing a client sends can end the session: a bad message becomes an ``error`` event, and an unexpected
exception while handling one is logged and reported as a ``server_error``. A client that disconnects
mid-response just stops the session's tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from starlette.websockets import WebSocket, WebSocketDisconnect

from voice.engine.effects import Cancel, Effect, Respond, Speak, Step, Transcribe
from voice.engine.responder import Responder
from voice.engine.services import EngineServices
from voice.engine.session import EngineSession
from voice.errors import RealtimeError, SpeechError
from voice.logs import get_logger
from voice.realtime.events import parse_client_event
from voice.wsprotocol import direct_channel

__all__ = ["EngineConnection"]

_GENERAL: Final = ""


class EngineConnection:
    """Pumps one WebSocket through one :class:`EngineSession` (see the module docstring)."""

    def __init__(
        self,
        websocket: WebSocket,
        services: EngineServices,
        session: EngineSession,
        responder: Responder,
        *,
        max_message_bytes: int,
    ) -> None:
        self._ws = websocket
        self._services = services
        self.session = session
        self._responder = responder
        self._max_bytes = max_message_bytes
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: dict[str, set[asyncio.Task[None]]] = {}
        self._closed = False
        self.log = get_logger(session_id=session.id)

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the session until the client disconnects."""
        self.apply(self.session.start())
        writer = asyncio.create_task(self._write(), name=f"{self.session.id}-writer")
        channel = direct_channel(self._ws.scope)
        if channel is not None:
            channel.on_text(self._on_direct)
        try:
            await self._read()
        finally:
            self._closed = True
            if channel is not None:
                channel.on_text(None)
            writer.cancel()
            pending = [t for tasks in self._tasks.values() for t in tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(writer, *pending, return_exceptions=True)

    async def _read(self) -> None:
        while not self._closed:
            try:
                message = await self._ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            self._on_message(raw)

    async def _write(self) -> None:
        while True:
            event = await self._outbox.get()
            try:
                await self._ws.send_text(json.dumps(event, separators=(",", ":")))
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                self.log.info("client_gone", error=str(exc))
                self._closed = True
                return
            except Exception as exc:  # e.g. the transport's ConnectionClosed: the peer is gone
                self.log.info("client_gone", error=repr(exc))
                self._closed = True
                return

    # -- input ----------------------------------------------------------------------------------------------

    def _on_direct(self, raw: str) -> bool:
        if self._closed:
            return False
        self._on_message(raw)
        return True

    def _on_message(self, raw: str | bytes) -> None:
        try:
            event = parse_client_event(raw, max_bytes=self._max_bytes)
        except RealtimeError as err:
            self.log.info("client_event_rejected", code=err.code, message=err.message)
            self.apply(self.session.reject(err))
            return
        try:
            step = self.session.handle(event)
        except Exception as exc:  # a bug must not end the caller's session
            self.log.exception("client_event_failed", event_type=event.get("type"))
            event_id = event.get("event_id")
            failure = RealtimeError(
                f"The server had an error while processing your request: {exc.__class__.__name__}",
                type="server_error",
                code="server_error",
                event_id=event_id if isinstance(event_id, str) else None,
            )
            self.apply(self.session.reject(failure))
            return
        self.apply(step)

    # -- output and effects ---------------------------------------------------------------------------------

    def apply(self, step: Step) -> None:
        """Queue the step's events and start its effects."""
        if self._closed:
            return
        for event in step.events:
            self._outbox.put_nowait(event)
            if event["type"] == "response.created":
                live = self._services.live.get(self.session.id)
                if live is not None:
                    live.responses += 1
        for effect in step.effects:
            _RUNNERS[type(effect)](self, effect)

    def _spawn(self, key: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        tasks = self._tasks.setdefault(key, set())
        tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            tasks.discard(finished)
            if not tasks:
                self._tasks.pop(key, None)
            if not finished.cancelled() and finished.exception() is not None:
                self.log.error("task_failed", error=repr(finished.exception()))

        task.add_done_callback(done)

    def _time(self, stage: str, started: float) -> None:
        self._services.record(stage, (time.perf_counter() - started) * 1000)

    def _start_transcribe(self, effect: Effect) -> None:
        assert isinstance(effect, Transcribe)
        self._spawn(_GENERAL, self._transcribe(effect))

    async def _transcribe(self, effect: Transcribe) -> None:
        transcriber = self._services.transcriber
        started = time.perf_counter()
        try:
            if transcriber is None:
                raise SpeechError("speech recognition is off")
            text = await self._services.run(transcriber.transcribe, effect.pcm16_16k, prompt=effect.prompt)
        except SpeechError as exc:
            self.log.warning("transcription_failed", item_id=effect.item_id, error=str(exc))
            self.apply(self.session.on_transcript_failed(effect.item_id, effect.content_index, str(exc)))
            return
        self._time("asr", started)
        self.log.debug("transcribed", item_id=effect.item_id, chars=len(text))
        self.apply(self.session.on_transcript(effect.item_id, effect.content_index, text))

    def _start_respond(self, effect: Effect) -> None:
        assert isinstance(effect, Respond)
        self._spawn(effect.response_id, self._respond(effect))

    async def _respond(self, effect: Respond) -> None:
        started = time.perf_counter()
        try:
            actions = await self._responder.respond(effect.request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.warning("responder_failed", response_id=effect.response_id, error=repr(exc))
            message = str(exc) or exc.__class__.__name__
            self.apply(self.session.on_respond_failed(effect.response_id, message))
            return
        self._time("responder", started)
        self.apply(self.session.on_actions(effect.response_id, actions))

    def _start_speak(self, effect: Effect) -> None:
        assert isinstance(effect, Speak)
        self._spawn(effect.response_id, self._speak(effect))

    async def _speak(self, effect: Speak) -> None:
        synthesize = self._services.synthesizer.synthesize
        started = time.perf_counter()

        def submit(index: int) -> asyncio.Task[bytes]:
            return asyncio.ensure_future(
                self._services.run(synthesize, effect.sentences[index], effect.sample_rate)
            )

        upcoming = submit(0)
        try:
            for index in range(len(effect.sentences)):
                current = upcoming
                if index + 1 < len(effect.sentences):
                    upcoming = submit(index + 1)
                try:
                    pcm = await current
                except SpeechError as exc:
                    self.log.warning("synthesis_failed", response_id=effect.response_id, error=str(exc))
                    message = str(exc)
                    self.apply(self.session.on_speech_failed(effect.response_id, effect.item_id, message))
                    return
                if index == 0:
                    self._time("tts_first_sentence", started)
                self.apply(self.session.on_speech(effect.response_id, effect.item_id, pcm))
            self.apply(self.session.on_speech_done(effect.response_id, effect.item_id))
        finally:
            if not upcoming.done():
                upcoming.cancel()
                with contextlib.suppress(asyncio.CancelledError, SpeechError):
                    await upcoming

    def _start_cancel(self, effect: Effect) -> None:
        assert isinstance(effect, Cancel)
        current = asyncio.current_task()
        for task in list(self._tasks.get(effect.response_id, ())):
            if task is not current:
                task.cancel()


_RUNNERS: Final[dict[type, Callable[[EngineConnection, Effect], None]]] = {
    Transcribe: EngineConnection._start_transcribe,
    Respond: EngineConnection._start_respond,
    Speak: EngineConnection._start_speak,
    Cancel: EngineConnection._start_cancel,
}
