"""Upstream event handlers of the call core (protocols.md §A.6, §C): one function per Realtime server
event ``type`` the call acts on, and :data:`UPSTREAM_HANDLERS`, the table that
:meth:`voice.call.core.CallCore.upstream_event` dispatches through.

Each handler is a function of :class:`voice.call.core.CallCore` (its state, passed as ``core``), the event
(already parsed and validated, :func:`voice.realtime.events.parse_server_event`) and the call-clock time, and
returns the actions to carry out. ``response.function_call_arguments.done`` goes to
:func:`voice.call.tool_calls.on_function_call`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from voice.call.actions import Action, Control, Metric, TranscriptEntry, UsageReported
from voice.call.tool_calls import after_audio_check, on_function_call

if TYPE_CHECKING:
    from voice.call.core import CallCore

__all__ = ["UPSTREAM_HANDLERS"]

_Handler: TypeAlias = Callable[["CallCore", Any, int], list[Action]]


def on_response_created(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    response_id = event.response.id or ""
    core._active[response_id] = None
    if core._outstanding_creates:
        del core._outstanding_creates[next(iter(core._outstanding_creates))]
    if core._want_response and not core._unacked_items:
        core._want_response = False  # this response already sees our items
    core._response_since_stop = True
    return []


def on_response_done(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    response = event.response
    response_id = response.id or ""
    core._active.pop(response_id, None)
    core.playout.response_done(response_id)
    actions: list[Action] = []
    for item in response.output or []:
        item_id = getattr(item, "id", None)
        if (
            getattr(item, "type", None) != "message"
            or getattr(item, "role", None) != "assistant"
            or not item_id
        ):
            continue
        record = core._text_record(item_id, response_id)
        if record is not None and not record.text:
            record.text = "".join(c.transcript or c.text or "" for c in item.content)
    for item_id, record in list(core._texts.items()):
        if record.response_id != response_id:
            continue
        record.final = True
        if item_id in core._awaiting_text:
            actions += core._text_final(item_id, now_ms)
        elif not core.playout.knows(item_id):  # a text-only turn (no audio was generated)
            core._texts.pop(item_id)
            if record.text and response_id not in core._dropped_responses:
                data = {
                    "item_id": item_id,
                    "interrupted": False,
                    "heard_ms": None,
                    "generated_text": record.text,
                }
                actions.append(TranscriptEntry("agent", record.text, data, now_ms))
    status = response.status or "completed"
    actions.append(Metric(f"response.{status}"))
    if status in ("failed", "incomplete"):
        details = response.status_details
        err = getattr(details, "error", None)
        reason = getattr(details, "reason", None)
        message = getattr(err, "message", None) or f"response {status}" + (f": {reason}" if reason else "")
        actions.append(
            TranscriptEntry(
                "error",
                message,
                {"type": f"response_{status}", "code": getattr(err, "code", None)},
                now_ms,
            )
        )
    if response.usage is not None:
        usage = response.usage.model_dump(exclude_none=True)
        actions.append(UsageReported("response", core.profile.model, usage))
        for key in ("input_tokens", "output_tokens"):
            if isinstance(usage.get(key), int):
                actions.append(Metric(f"usage.{key}", float(usage[key])))
    actions += core._flush_response(now_ms)
    actions += after_audio_check(core, now_ms)
    return actions


def on_output_item_added(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    item = event.item
    item_id = getattr(item, "id", None)
    if getattr(item, "type", None) == "message" and getattr(item, "role", None) == "assistant" and item_id:
        core._text_record(item_id, event.response_id)
    return []


def on_audio_delta(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    try:
        audio = base64.b64decode(event.delta, validate=True)
    except (binascii.Error, ValueError):
        return [Metric("upstream.bad_audio")]
    if not audio:
        return []
    record = core._text_record(event.item_id, event.response_id)
    if record is None or not core.playout.add_audio(
        event.item_id, event.response_id, event.content_index, audio
    ):
        return [Metric("playout.dropped_delta")]
    return []


def on_audio_done(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    core.playout.audio_done(event.item_id)
    return []


def on_transcript_delta(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    record = core._text_record(event.item_id, event.response_id)
    if record is None or record.final:
        return []
    record.text += event.delta
    return [Control({"type": "transcript", "role": "agent", "item_id": event.item_id, "delta": event.delta})]


def on_transcript_done(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    raw = event.transcript if hasattr(event, "transcript") else getattr(event, "text", "")
    text = raw if isinstance(raw, str) else ""
    record = core._text_record(event.item_id, event.response_id)
    if record is None:
        return []
    record.text = text
    record.final = True
    return core._text_final(event.item_id, now_ms)


def on_speech_started(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    core._caller_speaking = True
    if core.playout.speaking or core.window.active:
        return core._barge_in(now_ms, cause="speech")
    if core.upstream_interrupts:
        core._drop_active_responses()  # the server cancels them; audio still in flight is moot
    return []


def on_speech_stopped(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    core._caller_speaking = False
    core._caller_stopped_ms = now_ms
    core._response_since_stop = False
    return core._flush_response(now_ms)


def on_dtmf_event(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    return core._dtmf_key(event.event, now_ms, "upstream")


def on_item_added(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    item_id = getattr(event.item, "id", None)
    if item_id:
        core._unacked_items.discard(item_id)
    return []


def on_input_transcript_delta(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    if not event.delta:
        return []
    return [Control({"type": "transcript", "role": "caller", "item_id": event.item_id, "delta": event.delta})]


def on_input_transcript_completed(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    text = event.transcript
    actions: list[Action] = [
        TranscriptEntry("caller", text, {"item_id": event.item_id}, now_ms),
        Control(
            {
                "type": "transcript",
                "role": "caller",
                "item_id": event.item_id,
                "text": text,
                "final": True,
            }
        ),
    ]
    if event.usage is not None:
        model = core.profile.transcription.model if core.profile.transcription else ""
        actions.append(UsageReported("transcription", model, event.usage.model_dump(exclude_none=True)))
    return actions


def on_input_transcript_failed(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    message = getattr(event.error, "message", None) or "transcription failed"
    data = {
        "type": "transcription_failed",
        "code": getattr(event.error, "code", None),
        "item_id": event.item_id,
    }
    return [Metric("upstream.transcription_failed"), TranscriptEntry("error", message, data, now_ms)]


def on_error(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    err = event.error
    if err.event_id and err.event_id in core._outstanding_creates:
        del core._outstanding_creates[err.event_id]  # our response.create was refused
    data = {"type": err.type, "code": err.code, "param": err.param, "event_id": err.event_id}
    return [Metric("upstream.error"), TranscriptEntry("error", err.message, data, now_ms)]


def on_truncated(core: CallCore, event: Any, now_ms: int) -> list[Action]:
    return [Metric("upstream.truncated_ms", float(event.audio_end_ms))]


UPSTREAM_HANDLERS: Final[dict[str, _Handler]] = {
    "response.created": on_response_created,
    "response.done": on_response_done,
    "response.output_item.added": on_output_item_added,
    "response.output_audio.delta": on_audio_delta,
    "response.output_audio.done": on_audio_done,
    "response.output_audio_transcript.delta": on_transcript_delta,
    "response.output_audio_transcript.done": on_transcript_done,
    "response.output_text.delta": on_transcript_delta,
    "response.output_text.done": on_transcript_done,
    "response.function_call_arguments.done": on_function_call,
    "input_audio_buffer.speech_started": on_speech_started,
    "input_audio_buffer.speech_stopped": on_speech_stopped,
    "input_audio_buffer.dtmf_event_received": on_dtmf_event,
    "conversation.item.added": on_item_added,
    "conversation.item.created": on_item_added,
    "conversation.item.done": on_item_added,
    "conversation.item.truncated": on_truncated,
    "conversation.item.input_audio_transcription.delta": on_input_transcript_delta,
    "conversation.item.input_audio_transcription.completed": on_input_transcript_completed,
    "conversation.item.input_audio_transcription.failed": on_input_transcript_failed,
    "error": on_error,
}
"""Server event ``type`` -> handler. Types not listed are known events the call ignores."""
