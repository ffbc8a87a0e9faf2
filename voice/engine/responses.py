"""Responses of an engine session: per-response options, output items and their event sequences.

protocols.md §A.5 (``response.create`` overrides) and §A.6 (the response lifecycle). One response, in
order: ``response.created`` -> ``rate_limits.updated`` -> for each output item ``response.output_item.added``
(+ ``conversation.item.added`` in the default conversation) -> its content events ->
``response.output_item.done`` (+ ``conversation.item.done``) -> ``response.done`` with the ``usage`` of §B.1.

Content events by kind of output:

- spoken message: ``response.content_part.added`` (``audio``), per synthesized sentence one
  ``response.output_audio_transcript.delta`` then ``response.output_audio.delta`` chunks of
  :data:`OUTPUT_CHUNK_MS` in the response's output format, then ``response.output_audio.done``,
  ``response.output_audio_transcript.done``, ``response.content_part.done``;
- text message (``output_modalities: ["text"]``): ``response.content_part.added`` (``text``),
  ``response.output_text.delta`` per sentence, ``response.output_text.done``, ``response.content_part.done``;
- function call: ``response.function_call_arguments.delta`` and ``.done`` with ``call_id``, ``name``,
  ``arguments``.

A response that ends early (cancelled, failed, or over ``max_output_tokens``) still gets every ``*.done``
event of the item it was producing, marked ``incomplete``, before its ``response.done`` (§A.6: "also emitted
when a Response is interrupted, incomplete, or cancelled").
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from voice.engine.checks import expect_object, expect_str
from voice.engine.conversation import Content, Conversation, Item
from voice.engine.effects import Cancel, Speak, Step
from voice.engine.formats import AudioFormat, parse_format
from voice.engine.responder import CallTool, ResponseRequest, Say
from voice.engine.session_config import (
    check_format,
    check_max_output_tokens,
    check_modalities,
    check_tool_choice,
    check_tools,
    check_voice,
)
from voice.engine.usage import (
    Block,
    InputUsage,
    assistant_audio_tokens,
    instructions_block,
    response_usage,
    text_tokens,
    tools_block,
)
from voice.errors import RealtimeError

__all__ = [
    "OUTPUT_CHUNK_MS",
    "RATE_LIMITS",
    "Response",
    "ResponseOptions",
    "ResponseOutput",
    "response_options",
    "split_sentences",
]

OUTPUT_CHUNK_MS: Final = 100
"""Audio per ``response.output_audio.delta``."""
RATE_LIMITS: Final = {"requests": 20_000, "tokens": 15_000_000}
"""What ``rate_limits.updated`` reports (the engine has no limits; the numbers only keep the shape)."""

ResponseStatus = Literal["in_progress", "completed", "cancelled", "failed", "incomplete"]
EventFactory = Callable[..., dict[str, Any]]

_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """``text`` cut after ``.``, ``!`` or ``?`` followed by white space (each piece stripped, none empty)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


# -- options ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseOptions:
    """The effective settings of one response: the session's, with the ``response.create`` overrides."""

    in_conversation: bool
    instructions: str
    """The session's instructions (the responder gets them and the override separately)."""
    override: str | None
    """``response.instructions``: for this response only (they replace the session's as model input)."""
    modalities: list[str]
    tools: list[dict[str, Any]]
    tool_choice: Any
    max_output_tokens: int | str
    metadata: dict[str, str] | None
    format_wire: dict[str, Any]
    voice: Any

    @property
    def usable_tools(self) -> list[dict[str, Any]]:
        """The tools the response may call under ``tool_choice`` (``none``: none; a function: that one)."""
        if self.tool_choice == "none":
            return []
        if isinstance(self.tool_choice, dict) and self.tool_choice.get("type") == "function":
            return [t for t in self.tools if t.get("name") == self.tool_choice.get("name")]
        return [t for t in self.tools if t.get("type", "function") == "function"]

    def input_blocks(self, context: list[Item]) -> list[Block]:
        """The response's input for usage: instructions, tools, then every context item (§B.1)."""
        blocks = [instructions_block(self.override if self.override is not None else self.instructions)]
        tools = tools_block(self.tools)
        if tools is not None:
            blocks.append(tools)
        blocks.extend(item.block() for item in context)
        return blocks


def _override(params: dict[str, Any], key: str, default: Any, check: Callable[[str, Any], Any]) -> Any:
    return check(f"response.{key}", params[key]) if key in params else default


def response_options(params: dict[str, Any], config: dict[str, Any]) -> ResponseOptions:
    """Validate the ``response`` of ``response.create`` against the session ``config`` (§A.5)."""
    conversation = params.get("conversation", "auto")
    if conversation not in ("auto", "none"):
        raise RealtimeError(
            f"Invalid value: '{conversation}'. Supported values are: 'auto' and 'none'.",
            code="invalid_value",
            param="response.conversation",
        )
    override = params.get("instructions")
    metadata = params.get("metadata")
    if metadata is not None:
        fields = expect_object("response.metadata", metadata).items()
        metadata = {k: expect_str(f"response.metadata.{k}", v) for k, v in fields}
    output = dict(config["audio"]["output"])
    if "audio" in params:
        audio = expect_object("response.audio", params["audio"])
        requested = expect_object("response.audio.output", audio.get("output", {}))
        if "format" in requested:
            output["format"] = check_format("response.audio.output.format", requested["format"])
        if "voice" in requested:
            output["voice"] = check_voice("response.audio.output.voice", requested["voice"])
    return ResponseOptions(
        in_conversation=conversation == "auto",
        instructions=config["instructions"],
        override=None if override is None else expect_str("response.instructions", override),
        modalities=_override(
            params, "output_modalities", list(config["output_modalities"]), check_modalities
        ),
        tools=_override(params, "tools", config["tools"], check_tools),
        tool_choice=_override(params, "tool_choice", config["tool_choice"], check_tool_choice),
        max_output_tokens=_override(
            params, "max_output_tokens", config["max_output_tokens"], check_max_output_tokens
        ),
        metadata=metadata,
        format_wire=output["format"],
        voice=output["voice"],
    )


# -- state --------------------------------------------------------------------------------------------------


@dataclass
class Speaking:
    """The assistant audio item a response is producing."""

    item: Item
    output_index: int
    sentences: tuple[str, ...]
    next_index: int = 0


@dataclass
class Response:
    """One response in progress (or just finished)."""

    id: str
    options: ResponseOptions
    conversation_id: str | None
    context: list[Item]
    inputs: InputUsage
    status: ResponseStatus = "in_progress"
    status_details: dict[str, Any] | None = None
    output: list[Item] = field(default_factory=list)
    actions: deque[Say | CallTool] = field(default_factory=deque)
    asked: bool = False
    speaking: Speaking | None = None
    out_text_tokens: int = 0
    out_audio_ms: float = 0.0

    @property
    def active(self) -> bool:
        return self.status == "in_progress"

    @property
    def in_conversation(self) -> bool:
        return self.options.in_conversation

    @property
    def output_format(self) -> AudioFormat:
        return parse_format(self.options.format_wire)

    @property
    def output_tokens(self) -> int:
        return self.out_text_tokens + assistant_audio_tokens(self.out_audio_ms)

    @property
    def over_limit(self) -> bool:
        limit = self.options.max_output_tokens
        return isinstance(limit, int) and self.output_tokens >= limit

    def request(self) -> ResponseRequest:
        """What the responder gets: the conversation as turns (caller audio as its transcript)."""
        return ResponseRequest(
            instructions=self.options.instructions,
            tools=self.options.usable_tools,
            turns=[item.turn() for item in self.context],
            response_instructions=self.options.override,
        )

    def to_wire(self, *, final: bool) -> dict[str, Any]:
        """The ``response`` object of ``response.created`` (``final=False``) or ``response.done``."""
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": self.status,
            "status_details": self.status_details,
            "output": [item.to_wire() for item in self.output] if final else [],
            "conversation_id": self.conversation_id,
            "output_modalities": list(self.options.modalities),
            "max_output_tokens": self.options.max_output_tokens,
            "audio": {"output": {"format": dict(self.options.format_wire), "voice": self.options.voice}},
            "usage": (
                response_usage(self.inputs, self.out_text_tokens, assistant_audio_tokens(self.out_audio_ms))
                if final
                else None
            ),
            "metadata": self.options.metadata,
        }


# -- output -------------------------------------------------------------------------------------------------

_INCOMPLETE: Final = {"type": "incomplete", "reason": "max_output_tokens"}


class ResponseOutput:
    """Turns responses' actions and synthesized audio into output items and events.

    ``event(kind, **fields)`` makes a server event, ``ids(prefix)`` an id; output items of responses in the
    default conversation are added to ``conversation``; ``finished(response)`` is called when a response
    ends, just before its ``response.done`` is made.
    """

    def __init__(
        self,
        event: EventFactory,
        ids: Callable[[str], str],
        conversation: Conversation,
        finished: Callable[[Response], None],
    ) -> None:
        self._event = event
        self._ids = ids
        self._conversation = conversation
        self._finished = finished

    def created(self, response: Response) -> Step:
        """``response.created`` and ``rate_limits.updated`` (output tokens reserved)."""
        limit = response.options.max_output_tokens
        reserved = limit if isinstance(limit, int) else 4096
        requests = {
            "name": "requests",
            "limit": RATE_LIMITS["requests"],
            "remaining": RATE_LIMITS["requests"] - 1,
        }
        tokens = {
            "name": "tokens",
            "limit": RATE_LIMITS["tokens"],
            "remaining": RATE_LIMITS["tokens"] - response.inputs.tokens - reserved,
        }
        return Step(
            events=[
                self._event("response.created", response=response.to_wire(final=False)),
                self._event(
                    "rate_limits.updated",
                    rate_limits=[{**requests, "reset_seconds": 0.003}, {**tokens, "reset_seconds": 0.06}],
                ),
            ]
        )

    def advance(self, response: Response) -> Step:
        """Turn the responder's next actions into output items until one needs speech (or none are left)."""
        step = Step()
        while response.actions and response.active:
            action = response.actions.popleft()
            if isinstance(action, CallTool):
                step.extend(self._call(response, action))
            elif "audio" in response.options.modalities:
                sentences = tuple(split_sentences(action.text))
                if sentences:
                    return step.extend(self._start_speaking(response, sentences))
            else:
                step.extend(self._text(response, action.text))
            if response.over_limit:
                return step.extend(self.finish(response, "incomplete", _INCOMPLETE))
        if response.active:
            step.extend(self.finish(response, "completed", None))
        return step

    def speech(self, response: Response, item_id: str, pcm16: bytes) -> Step:
        """The next sentence of the spoken item ``item_id``: its transcript delta and audio deltas."""
        speaking = response.speaking
        if speaking is None or speaking.item.id != item_id or speaking.next_index >= len(speaking.sentences):
            return Step()
        sentence = speaking.sentences[speaking.next_index]
        speaking.next_index += 1
        part = speaking.item.content[0]
        ids = {**self._ids_of(response, speaking.item, speaking.output_index), "content_index": 0}
        delta = sentence if not part.transcript else " " + sentence
        part.transcript = (part.transcript or "") + delta
        response.out_text_tokens += text_tokens(delta)
        step = Step(events=[self._event("response.output_audio_transcript.delta", **ids, delta=delta)])
        fmt = response.output_format
        audio = fmt.encode(pcm16[: len(pcm16) - len(pcm16) % 2])
        part.audio = (part.audio or b"") + audio
        response.out_audio_ms += fmt.duration_ms(len(audio))
        chunk = fmt.bytes_per_ms * OUTPUT_CHUNK_MS
        for start in range(0, len(audio), chunk):
            encoded = base64.b64encode(audio[start : start + chunk]).decode("ascii")
            step.events.append(self._event("response.output_audio.delta", **ids, delta=encoded))
        if response.over_limit:
            step.extend(self._finish_speaking(response, "incomplete"))
            step.effects.append(Cancel(response.id))
            step.extend(self.finish(response, "incomplete", _INCOMPLETE))
        return step

    def speech_done(self, response: Response, item_id: str) -> Step:
        """Every sentence of ``item_id`` was spoken: close the item and go on with the next action."""
        if response.speaking is None or response.speaking.item.id != item_id:
            return Step()
        return self._finish_speaking(response, "completed").extend(self.advance(response))

    def cancel(self, response: Response, reason: str) -> Step:
        """``response.done`` with status ``cancelled`` (``turn_detected`` or ``client_cancelled``)."""
        step = self._finish_speaking(response, "incomplete")
        step.effects.append(Cancel(response.id))
        return step.extend(self.finish(response, "cancelled", {"type": "cancelled", "reason": reason}))

    def fail(self, response: Response, code: str, message: str) -> Step:
        """``response.done`` with status ``failed`` and the error in ``status_details``."""
        step = self._finish_speaking(response, "incomplete")
        step.effects.append(Cancel(response.id))
        details = {"type": "failed", "error": {"type": "server_error", "code": code, "message": message}}
        return step.extend(self.finish(response, "failed", details))

    def finish(self, response: Response, status: ResponseStatus, details: dict[str, Any] | None) -> Step:
        response.status = status
        response.status_details = details
        response.actions.clear()
        self._finished(response)
        return Step(events=[self._event("response.done", response=response.to_wire(final=True))])

    # -- items ----------------------------------------------------------------------------------------------

    @staticmethod
    def _ids_of(response: Response, item: Item, output_index: int) -> dict[str, Any]:
        return {"response_id": response.id, "item_id": item.id, "output_index": output_index}

    def _open_item(self, response: Response, item: Item) -> tuple[Step, int]:
        """``response.output_item.added`` (+ ``conversation.item.added``) for a new output item."""
        output_index = len(response.output)
        response.output.append(item)
        added = self._event(
            "response.output_item.added",
            response_id=response.id,
            output_index=output_index,
            item=item.to_wire(),
        )
        step = Step(events=[added])
        if response.in_conversation:
            previous = self._conversation.insert(item)
            step.events.append(
                self._event("conversation.item.added", previous_item_id=previous, item=item.to_wire())
            )
        return step, output_index

    def _close_item(self, response: Response, item: Item, output_index: int, status: str) -> Step:
        item.status = status  # type: ignore[assignment]
        wire = item.to_wire()
        done = self._event(
            "response.output_item.done", response_id=response.id, output_index=output_index, item=wire
        )
        step = Step(events=[done])
        if response.in_conversation and item.id in self._conversation:
            previous = self._conversation.previous_id(item.id)
            step.events.append(
                self._event("conversation.item.done", previous_item_id=previous, item=copy.deepcopy(wire))
            )
        return step

    def _call(self, response: Response, action: CallTool) -> Step:
        arguments = json.dumps(action.arguments)
        item = Item(
            id=self._ids("item"),
            type="function_call",
            status="in_progress",
            call_id=self._ids("call"),
            name=action.name,
            arguments="",
        )
        step, output_index = self._open_item(response, item)
        ids = {**self._ids_of(response, item, output_index), "call_id": item.call_id}
        step.events.append(self._event("response.function_call_arguments.delta", **ids, delta=arguments))
        item.arguments = arguments
        step.events.append(
            self._event("response.function_call_arguments.done", **ids, name=action.name, arguments=arguments)
        )
        response.out_text_tokens += text_tokens(action.name + arguments)
        return step.extend(self._close_item(response, item, output_index, "completed"))

    def _text(self, response: Response, text: str) -> Step:
        item = Item(id=self._ids("item"), type="message", role="assistant", status="in_progress")
        step, output_index = self._open_item(response, item)
        ids = {**self._ids_of(response, item, output_index), "content_index": 0}
        part = Content("output_text", text="")
        item.content.append(part)
        step.events.append(
            self._event("response.content_part.added", **ids, part={"type": "text", "text": ""})
        )
        for index, sentence in enumerate(split_sentences(text)):
            delta = sentence if index == 0 else " " + sentence
            part.text = (part.text or "") + delta
            step.events.append(self._event("response.output_text.delta", **ids, delta=delta))
        response.out_text_tokens += text_tokens(part.text or "")
        step.events.append(self._event("response.output_text.done", **ids, text=part.text))
        step.events.append(
            self._event("response.content_part.done", **ids, part={"type": "text", "text": part.text})
        )
        return step.extend(self._close_item(response, item, output_index, "completed"))

    def _start_speaking(self, response: Response, sentences: tuple[str, ...]) -> Step:
        item = Item(id=self._ids("item"), type="message", role="assistant", status="in_progress")
        step, output_index = self._open_item(response, item)
        fmt = response.output_format
        item.content.append(Content("output_audio", transcript="", audio=b"", audio_format=fmt))
        ids = {**self._ids_of(response, item, output_index), "content_index": 0}
        step.events.append(
            self._event("response.content_part.added", **ids, part={"type": "audio", "transcript": ""})
        )
        response.speaking = Speaking(item, output_index, sentences)
        step.effects.append(Speak(response.id, item.id, sentences, fmt.sample_rate))
        return step

    def _finish_speaking(self, response: Response, status: str) -> Step:
        """The ``*.done`` events of the audio item being produced (complete or cut short)."""
        speaking = response.speaking
        if speaking is None:
            return Step()
        response.speaking = None
        item = speaking.item
        transcript = item.content[0].transcript or ""
        ids = {**self._ids_of(response, item, speaking.output_index), "content_index": 0}
        step = Step(
            events=[
                self._event("response.output_audio.done", **ids),
                self._event("response.output_audio_transcript.done", **ids, transcript=transcript),
                self._event(
                    "response.content_part.done", **ids, part={"type": "audio", "transcript": transcript}
                ),
            ]
        )
        return step.extend(self._close_item(response, item, speaking.output_index, status))
