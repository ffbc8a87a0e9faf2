"""The sans-I/O core of one local-engine Realtime session (protocols.md §A, §B, §C).

:class:`EngineSession` takes parsed client events (:meth:`~EngineSession.handle`), client errors
(:meth:`~EngineSession.reject`) and the results of the work it handed out (``on_*`` methods), and returns a
:class:`~voice.engine.effects.Step`: the server events to send, in order, and the effects to start
(speech recognition, the responder, speech synthesis, cancellation). It never blocks, never reads a clock
and holds no global state, so every protocol rule is testable with byte vectors and explicit values.

What it implements, by protocols.md section:

- §A.2 session configuration: ``session.created`` with the full default session, ``session.update`` merging
  (:mod:`voice.engine.session_config`). Like OpenAI's GA server, no ``conversation.created`` is sent; the
  default conversation's id appears as ``conversation_id`` in responses.
- §A.3/§A.4 input audio: ``input_audio_buffer.append/commit/clear``, server VAD turns with
  ``speech_started``/``speech_stopped`` on the session's audio timeline, automatic commit, response and
  interruption (``create_response``, ``interrupt_response``), manual turns with ``turn_detection: null``,
  ``idle_timeout_ms`` (``input_audio_buffer.timeout_triggered``), measured on the audio timeline (the core
  reads no clock: a client streaming audio, as a phone line does, advances it in real time).
- §A.5 conversation items: create (with ``previous_item_id``, ``"root"``), delete, retrieve, truncate (§C.1).
- §A.6 responses (:mod:`voice.engine.responses`): the full event sequence for audio, text and function-call
  output, one response at a time in the default conversation, out-of-band responses
  (``conversation: "none"``), cancellation by the client (``client_cancelled``) or by a detected turn
  (``turn_detected``, §C.2), each ``*.done`` event emitted for partial output before ``response.done``.
- §B usage on every ``response.done`` and on each input transcription (:mod:`voice.engine.usage`).

Caller audio reaches the responder as text: every committed or created caller audio item is transcribed
(when recognition is on), and a response waits for the transcripts of the audio in its input before it asks
the responder. The ``input_audio_transcription.*`` events are only sent when the session asked for input
transcription (``audio.input.transcription``). With recognition off, caller audio has an empty transcript:
a session that asked for transcription still gets ``input_audio_transcription.completed`` with
``transcript: ""`` for each item, so clients waiting for it keep working.
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Callable, Sequence
from typing import Any, Final

from voice.engine.checks import expect_int, expect_list, expect_object, expect_str, missing
from voice.engine.conversation import Content, Conversation, Item, parse_item
from voice.engine.effects import Respond, Step, Transcribe
from voice.engine.formats import AudioFormat, parse_format
from voice.engine.input_audio import InputAudio, SpeechStart, SpeechStop, to_pcm16_16k
from voice.engine.responder import CallTool, Say
from voice.engine.responses import Response, ResponseOutput, response_options
from voice.engine.session_config import apply_session_update, default_session
from voice.engine.usage import Block, input_usage, transcription_usage
from voice.errors import RealtimeError
from voice.realtime.ids import new_event_id, new_id

__all__ = ["MIN_COMMIT_MS", "EngineSession"]

MIN_COMMIT_MS: Final = 100
"""A commit needs at least this much buffered audio (OpenAI's rule)."""


Handler = Callable[["EngineSession", dict[str, Any]], Step]


class EngineSession:
    """One Realtime session of the local engine (sans-I/O; see the module docstring).

    ``model`` is the connection's ``model`` query parameter; ``created_at`` (Unix seconds) only sets the
    session's ``expires_at``; ``recognition`` says whether the adapter can transcribe caller audio;
    ``ids`` makes ids (``ids("item")`` -> ``item_...``) and ``event_ids`` event ids, both injectable for
    deterministic tests.
    """

    def __init__(
        self,
        *,
        model: str,
        created_at: float,
        recognition: bool = True,
        ids: Callable[[str], str] = new_id,
        event_ids: Callable[[], str] = new_event_id,
    ) -> None:
        self._ids = ids
        self._event_ids = event_ids
        self.id = ids("sess")
        self.conversation_id = ids("conv")
        self.recognition = recognition
        self.config: dict[str, Any] = default_session(self.id, model, created_at)
        self.conversation = Conversation()
        self.input = InputAudio(self._input_format, self.config["audio"]["input"]["turn_detection"])
        self._responses: dict[str, Response] = {}
        self._default_response: str | None = None
        self._pending_transcripts: set[str] = set()
        self._speech_item_id: str | None = None
        self._audio_produced = False
        self._last_input: list[Block] | None = None
        self._idle_deadline_ms: float | None = None
        self._output = ResponseOutput(self._event, self._ids, self.conversation, self._response_finished)

    # -- public API ----------------------------------------------------------------------------------------

    def start(self) -> Step:
        """The first events of the session (``session.created``)."""
        return Step(events=[self._event("session.created", session=copy.deepcopy(self.config))])

    def handle(self, event: dict[str, Any]) -> Step:
        """Handle one parsed client event; errors become an ``error`` event (the session stays open)."""
        handler = _HANDLERS.get(str(event.get("type")))
        try:
            if handler is None:
                raise RealtimeError(
                    f"Invalid value: '{event.get('type')}'. This event type is not supported.",
                    code="invalid_value",
                    param="type",
                )
            return handler(self, event)
        except RealtimeError as err:
            if err.event_id is None and isinstance(event.get("event_id"), str):
                err.event_id = event["event_id"]
            return self.reject(err)

    def reject(self, error: RealtimeError) -> Step:
        """An ``error`` event for a client event that could not be handled."""
        return Step(events=[self._event("error", error=error.to_error_body())])

    @property
    def active_response_id(self) -> str | None:
        """The response writing to the default conversation, if any."""
        return self._default_response

    @property
    def busy(self) -> bool:
        """Any response still in progress."""
        return any(r.active for r in self._responses.values())

    # -- results of effects -------------------------------------------------------------------------------

    def on_transcript(self, item_id: str, content_index: int, transcript: str) -> Step:
        """Recognition of an item's audio finished."""
        step = Step()
        self._pending_transcripts.discard(item_id)
        item = self.conversation.get(item_id)
        if item is not None and content_index < len(item.content):
            part = item.content[content_index]
            part.recognized = transcript
            config = self._transcription_config
            if config is not None:
                part.transcript = transcript
                if transcript:
                    step.events.append(
                        self._event(
                            "conversation.item.input_audio_transcription.delta",
                            item_id=item_id,
                            content_index=content_index,
                            delta=transcript,
                        )
                    )
                step.events.append(self._transcription_completed(item_id, content_index, part, config))
        return step.extend(self._ask_waiting())

    def on_transcript_failed(self, item_id: str, content_index: int, message: str) -> Step:
        step = Step()
        self._pending_transcripts.discard(item_id)
        item = self.conversation.get(item_id)
        if item is not None and content_index < len(item.content):
            item.content[content_index].recognized = ""
            if self._transcription_config is not None:
                step.events.append(
                    self._event(
                        "conversation.item.input_audio_transcription.failed",
                        item_id=item_id,
                        content_index=content_index,
                        error={
                            "type": "transcription_error",
                            "code": "audio_unintelligible",
                            "message": message,
                            "param": None,
                        },
                    )
                )
        return step.extend(self._ask_waiting())

    def on_actions(self, response_id: str, actions: Sequence[Say | CallTool]) -> Step:
        """The responder answered ``response_id``."""
        response = self._active(response_id)
        if response is None:
            return Step()
        response.actions.extend(actions)
        return self._output.advance(response)

    def on_respond_failed(self, response_id: str, message: str) -> Step:
        response = self._active(response_id)
        return Step() if response is None else self._output.fail(response, "responder_error", message)

    def on_speech(self, response_id: str, item_id: str, pcm16: bytes) -> Step:
        """The next sentence of ``item_id`` was synthesized (PCM16 at the rate :class:`Speak` asked for)."""
        response = self._active(response_id)
        if response is None:
            return Step()
        step = self._output.speech(response, item_id, pcm16)
        self._audio_produced = self._audio_produced or response.out_audio_ms > 0
        return step

    def on_speech_done(self, response_id: str, item_id: str) -> Step:
        """Every sentence of ``item_id`` was synthesized."""
        response = self._active(response_id)
        return Step() if response is None else self._output.speech_done(response, item_id)

    def on_speech_failed(self, response_id: str, item_id: str, message: str) -> Step:
        response = self._active(response_id)
        return Step() if response is None else self._output.fail(response, "speech_synthesis_error", message)

    # -- helpers --------------------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": self._event_ids(), **fields}

    def _active(self, response_id: str) -> Response | None:
        """The response ``response_id`` if it is still in progress (late results of others are dropped)."""
        response = self._responses.get(response_id)
        return response if response is not None and response.active else None

    def _response_finished(self, response: Response) -> None:
        del self._responses[response.id]
        if self._default_response == response.id:
            self._default_response = None
            self._arm_idle_timeout(response)

    @property
    def _input_format(self) -> AudioFormat:
        return parse_format(self.config["audio"]["input"]["format"])

    @property
    def _turn_detection(self) -> dict[str, Any] | None:
        td: dict[str, Any] | None = self.config["audio"]["input"]["turn_detection"]
        return td

    @property
    def _transcription_config(self) -> dict[str, Any] | None:
        config: dict[str, Any] | None = self.config["audio"]["input"]["transcription"]
        return config

    def _transcription_completed(
        self, item_id: str, content_index: int, part: Content, config: dict[str, Any]
    ) -> dict[str, Any]:
        transcript = part.recognized or ""
        return self._event(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=content_index,
            transcript=transcript,
            usage=transcription_usage(part.audio_ms, transcript, config.get("prompt") or ""),
        )

    def _transcribe(self, item: Item) -> Step:
        """Start recognition of the caller audio in ``item`` (or, with recognition off, settle it)."""
        step = Step()
        config = self._transcription_config
        for index, part in enumerate(item.content):
            if part.type != "input_audio" or part.audio is None or part.audio_format is None:
                continue
            if self.recognition:
                self._pending_transcripts.add(item.id)
                prompt = (config or {}).get("prompt") or None
                step.effects.append(
                    Transcribe(item.id, index, to_pcm16_16k(part.audio, part.audio_format), prompt)
                )
            else:
                part.recognized = ""
                if config is not None:
                    part.transcript = ""
                    step.events.append(self._transcription_completed(item.id, index, part, config))
        return step

    def _add_item(self, item: Item, previous_item_id: str | None = None) -> tuple[Step, str | None]:
        previous = self.conversation.insert(item, previous_item_id)
        wire = item.to_wire()
        step = Step(
            events=[
                self._event("conversation.item.added", previous_item_id=previous, item=wire),
                self._event("conversation.item.done", previous_item_id=previous, item=copy.deepcopy(wire)),
            ]
        )
        return step, previous

    # -- session.update -------------------------------------------------------------------------------------

    def _on_session_update(self, event: dict[str, Any]) -> Step:
        if "session" not in event:
            raise missing("session")
        self.config = apply_session_update(self.config, event["session"], voice_locked=self._audio_produced)
        self.input.reconfigure(self._input_format, self._turn_detection)
        if self._turn_detection is None:
            self._speech_item_id = None
        return Step(events=[self._event("session.updated", session=copy.deepcopy(self.config))])

    # -- input audio ----------------------------------------------------------------------------------------

    def _on_append(self, event: dict[str, Any]) -> Step:
        if "audio" not in event:
            raise missing("audio")
        text = expect_str("audio", event["audio"])
        try:
            audio = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError(
                "Invalid 'audio'. Expected base64-encoded audio data.", code="invalid_value", param="audio"
            ) from None
        step = Step()
        for turn in self.input.append(audio):
            if isinstance(turn, SpeechStart):
                step.extend(self._speech_started(turn))
            else:
                step.extend(self._speech_stopped(turn))
        deadline = self._idle_deadline_ms
        if deadline is not None and not self.input.in_speech and self.input.position_ms >= deadline:
            step.extend(self._idle_timeout())
        return step

    def _arm_idle_timeout(self, response: Response) -> None:
        """After a response: time out if the caller says nothing for ``idle_timeout_ms`` after its audio
        would have finished playing (protocols.md §A.4). Time is the input audio timeline: a streaming client
        (a phone line) advances it in real time; a client that sends no audio never times out."""
        td = self._turn_detection or {}
        timeout = td.get("idle_timeout_ms") if td.get("type") == "server_vad" else None
        self._idle_deadline_ms = (
            None if timeout is None else self.input.position_ms + response.out_audio_ms + float(timeout)
        )

    def _idle_timeout(self) -> Step:
        """``input_audio_buffer.timeout_triggered``: commit the silent audio and respond."""
        td = self._turn_detection or {}
        self._idle_deadline_ms = None
        end_ms = self.input.position_ms
        self.input.drop_before(end_ms - float(td.get("idle_timeout_ms") or 0))
        start_ms = end_ms - self.input.buffered_ms
        item_id = self._ids("item")
        step = Step(
            events=[
                self._event(
                    "input_audio_buffer.timeout_triggered",
                    item_id=item_id,
                    audio_start_ms=round(start_ms),
                    audio_end_ms=round(end_ms),
                )
            ]
        )
        audio = self.input.take()
        if audio:
            step.extend(self._commit(audio, item_id))
        if self._default_response is None:
            step.extend(self._create_response({}))
        return step

    def _speech_started(self, turn: SpeechStart) -> Step:
        item_id = self._ids("item")
        self._speech_item_id = item_id
        self._idle_deadline_ms = None
        self.input.drop_before(turn.audio_start_ms)
        step = Step(
            events=[
                self._event(
                    "input_audio_buffer.speech_started", audio_start_ms=turn.audio_start_ms, item_id=item_id
                )
            ]
        )
        td = self._turn_detection or {}
        active = self._responses.get(self._default_response or "")
        if td.get("interrupt_response", True) and active is not None and active.active:
            step.extend(self._output.cancel(active, "turn_detected"))
        return step

    def _speech_stopped(self, turn: SpeechStop) -> Step:
        item_id = self._speech_item_id or self._ids("item")
        self._speech_item_id = None
        step = Step(
            events=[
                self._event(
                    "input_audio_buffer.speech_stopped", audio_end_ms=turn.audio_end_ms, item_id=item_id
                )
            ]
        )
        audio = self.input.take(turn.audio_end_ms)
        if not audio:
            return step
        step.extend(self._commit(audio, item_id))
        td = self._turn_detection or {}
        if td.get("create_response", True):
            active = self._responses.get(self._default_response or "")
            if active is None or not active.active:
                step.extend(self._create_response({}))
        return step

    def _commit(self, audio: bytes, item_id: str) -> Step:
        fmt = self.input.format
        item = Item(
            id=item_id,
            type="message",
            role="user",
            content=[Content("input_audio", audio=audio, audio_format=fmt, transcript=None)],
        )
        previous = self.conversation.last_id
        step = Step(
            events=[self._event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)]
        )
        added, _ = self._add_item(item)
        step.extend(added)
        return step.extend(self._transcribe(item))

    def _on_commit(self, event: dict[str, Any]) -> Step:
        buffered = self.input.buffered_ms
        if buffered < MIN_COMMIT_MS:
            raise RealtimeError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item_id = self._speech_item_id or self._ids("item")
        self._speech_item_id = None
        if self.input.in_speech:
            self.input.restart_vad()
        return self._commit(self.input.take(), item_id)

    def _on_clear(self, event: dict[str, Any]) -> Step:
        self.input.clear()
        self._speech_item_id = None
        return Step(events=[self._event("input_audio_buffer.cleared")])

    # -- conversation items ---------------------------------------------------------------------------------

    def _on_item_create(self, event: dict[str, Any]) -> Step:
        if "item" not in event:
            raise missing("item")
        item = parse_item(event["item"], input_format=self.input.format, new_id=self._ids)
        previous = event.get("previous_item_id")
        if previous is not None:
            expect_str("previous_item_id", previous)
        step, _ = self._add_item(item, previous)
        return step.extend(self._transcribe(item))

    def _item_or_error(self, event: dict[str, Any], action: str, code: str) -> Item:
        if "item_id" not in event:
            raise missing("item_id")
        item_id = expect_str("item_id", event["item_id"])
        item = self.conversation.get(item_id)
        if item is None:
            raise RealtimeError(
                f"Error {action} item: the item with id '{item_id}' does not exist.",
                code=code,
                param="item_id",
            )
        return item

    def _on_item_delete(self, event: dict[str, Any]) -> Step:
        item = self._item_or_error(event, "deleting", "item_delete_invalid_item_id")
        self.conversation.delete(item.id)
        self._pending_transcripts.discard(item.id)
        return Step(events=[self._event("conversation.item.deleted", item_id=item.id)])

    def _on_item_retrieve(self, event: dict[str, Any]) -> Step:
        item = self._item_or_error(event, "retrieving", "item_retrieve_invalid_item_id")
        return Step(events=[self._event("conversation.item.retrieved", item=item.to_wire(with_audio=True))])

    def _on_item_truncate(self, event: dict[str, Any]) -> Step:
        item = self._item_or_error(event, "truncating", "item_truncate_invalid_item_id")
        if "content_index" not in event:
            raise missing("content_index")
        if "audio_end_ms" not in event:
            raise missing("audio_end_ms")
        content_index = expect_int("content_index", event["content_index"], minimum=0)
        audio_end_ms = expect_int("audio_end_ms", event["audio_end_ms"], minimum=0)
        item.truncate(content_index, audio_end_ms)
        return Step(
            events=[
                self._event(
                    "conversation.item.truncated",
                    item_id=item.id,
                    content_index=content_index,
                    audio_end_ms=audio_end_ms,
                )
            ]
        )

    # -- responses ------------------------------------------------------------------------------------------

    def _on_response_create(self, event: dict[str, Any]) -> Step:
        params = event.get("response")
        return self._create_response({} if params is None else expect_object("response", params))

    def _on_response_cancel(self, event: dict[str, Any]) -> Step:
        wanted = event.get("response_id")
        if wanted is not None:
            expect_str("response_id", wanted)
            response = self._responses.get(wanted)
        else:
            response = self._responses.get(self._default_response or "") or next(
                (r for r in reversed(list(self._responses.values())) if r.active), None
            )
        if response is None or not response.active:
            raise RealtimeError(
                "Cancellation failed: no active response found", code="response_cancel_not_active"
            )
        return self._output.cancel(response, "client_cancelled")

    def _on_output_audio_buffer_clear(self, event: dict[str, Any]) -> Step:
        raise RealtimeError(
            "output_audio_buffer.clear is only supported for WebRTC and SIP sessions.",
            code="invalid_value",
            param="type",
        )

    def _input_items(self, value: Any) -> list[Item]:
        items: list[Item] = []
        for index, raw in enumerate(expect_list("response.input", value)):
            entry = expect_object(f"response.input[{index}]", raw)
            if entry.get("type") == "item_reference":
                ref = expect_str(f"response.input[{index}].id", entry.get("id"))
                found = self.conversation.get(ref)
                if found is None:
                    raise RealtimeError(
                        f"Invalid 'response.input[{index}].id': the item with id '{ref}' does not exist.",
                        code="invalid_value",
                        param=f"response.input[{index}].id",
                    )
                items.append(found)
            else:
                items.append(parse_item(entry, input_format=self.input.format, new_id=self._ids))
        return items

    def _create_response(self, params: dict[str, Any]) -> Step:
        options = response_options(params, self.config)
        if options.in_conversation and self._default_response is not None:
            raise RealtimeError(
                f"Conversation already has an active response in progress: {self._default_response}. "
                "Wait until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
            )
        context = self._input_items(params["input"]) if "input" in params else list(self.conversation)
        blocks = options.input_blocks(context)
        response = Response(
            id=self._ids("resp"),
            options=options,
            conversation_id=self.conversation_id if options.in_conversation else None,
            context=context,
            inputs=input_usage(blocks, self._last_input),
        )
        self._last_input = blocks
        self._responses[response.id] = response
        if options.in_conversation:
            self._default_response = response.id
            self._idle_deadline_ms = None
        return self._output.created(response).extend(self._ask_waiting())

    def _ask_waiting(self) -> Step:
        """Hand every response whose input is fully transcribed to the responder."""
        step = Step()
        for response in self._responses.values():
            if not response.active or response.asked:
                continue
            if any(item.id in self._pending_transcripts for item in response.context):
                continue
            response.asked = True
            step.effects.append(Respond(response.id, response.request()))
        return step


_HANDLERS: Final[dict[str, Handler]] = {
    "session.update": EngineSession._on_session_update,
    "input_audio_buffer.append": EngineSession._on_append,
    "input_audio_buffer.commit": EngineSession._on_commit,
    "input_audio_buffer.clear": EngineSession._on_clear,
    "conversation.item.create": EngineSession._on_item_create,
    "conversation.item.delete": EngineSession._on_item_delete,
    "conversation.item.retrieve": EngineSession._on_item_retrieve,
    "conversation.item.truncate": EngineSession._on_item_truncate,
    "response.create": EngineSession._on_response_create,
    "response.cancel": EngineSession._on_response_cancel,
    "output_audio_buffer.clear": EngineSession._on_output_audio_buffer_clear,
}
