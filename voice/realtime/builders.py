"""Builders for the client events this service sends upstream (protocols.md §A.5, §C.1).

Each returns a plain dict ready for :meth:`voice.realtime.client.RealtimeConnection.send`, with an
``event_id`` (generated unless given) so that an ``error`` the server sends back can be matched to the
event that caused it (``error.event_id``). The tests validate every builder's output against the SDK's GA
client event models (``openai/types/realtime/*_event.py``).

Arguments that would make OpenAI answer with an ``error`` (a negative or fractional ``audio_end_ms``, an
empty item id) raise :class:`voice.errors.LocalProtocolError` here instead: that is a bug on our side.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Literal

from voice.errors import LocalProtocolError
from voice.realtime.ids import new_event_id

Event = dict[str, Any]


def _event(event_type: str, event_id: str | None, **fields: Any) -> Event:
    event: Event = {"type": event_type, "event_id": event_id or new_event_id()}
    event.update((k, v) for k, v in fields.items() if v is not None)
    return event


def _require_id(name: str, value: str) -> str:
    if not isinstance(value, str) or not value:
        raise LocalProtocolError(f"{name} must be a non-empty string, not {value!r}")
    return value


def session_update(session: Mapping[str, Any], *, event_id: str | None = None) -> Event:
    """``session.update``; ``session.type`` defaults to ``"realtime"`` (it is required in GA, §A.2)."""
    body = dict(session)
    body.setdefault("type", "realtime")
    return _event("session.update", event_id, session=body)


def input_audio_append(audio: bytes | str, *, event_id: str | None = None) -> Event:
    """``input_audio_buffer.append``: raw audio bytes (base64-encoded here) or an already base64 string.

    The audio must be in the session's input format (§A.3). A Twilio ``media.payload`` is already base64
    ``audio/pcmu`` and passes through unchanged.
    """
    b64 = base64.b64encode(audio).decode("ascii") if isinstance(audio, bytes | bytearray) else audio
    # Built directly: one of these goes upstream for every 20 ms of caller audio.
    return {"type": "input_audio_buffer.append", "event_id": event_id or new_event_id(), "audio": b64}


def input_audio_commit(*, event_id: str | None = None) -> Event:
    """``input_audio_buffer.commit`` (manual turns; the server errors if the buffer is empty)."""
    return _event("input_audio_buffer.commit", event_id)


def input_audio_clear(*, event_id: str | None = None) -> Event:
    """``input_audio_buffer.clear``."""
    return _event("input_audio_buffer.clear", event_id)


def output_audio_clear(*, event_id: str | None = None) -> Event:
    """``output_audio_buffer.clear`` (WebRTC/SIP only: send ``response.cancel`` first, §A.5)."""
    return _event("output_audio_buffer.clear", event_id)


def item_create(
    item: Mapping[str, Any], previous_item_id: str | None = None, *, event_id: str | None = None
) -> Event:
    """``conversation.item.create``; ``previous_item_id="root"`` inserts at the beginning (§A.5)."""
    return _event("conversation.item.create", event_id, item=dict(item), previous_item_id=previous_item_id)


def item_truncate(
    item_id: str, content_index: int, audio_end_ms: int, *, event_id: str | None = None
) -> Event:
    """``conversation.item.truncate`` (§C.1): keep ``audio_end_ms`` ms of an assistant item's audio.

    ``audio_end_ms`` must be a non-negative integer, already clamped by the caller to what was sent (the
    server answers with an error when it exceeds the item's audio).
    """
    _require_id("item_id", item_id)
    for name, value in (("content_index", content_index), ("audio_end_ms", audio_end_ms)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LocalProtocolError(f"{name} must be a non-negative integer, not {value!r}")
    return _event(
        "conversation.item.truncate",
        event_id,
        item_id=item_id,
        content_index=content_index,
        audio_end_ms=audio_end_ms,
    )


def item_delete(item_id: str, *, event_id: str | None = None) -> Event:
    """``conversation.item.delete``."""
    return _event("conversation.item.delete", event_id, item_id=_require_id("item_id", item_id))


def item_retrieve(item_id: str, *, event_id: str | None = None) -> Event:
    """``conversation.item.retrieve`` (the server's copy, audio included)."""
    return _event("conversation.item.retrieve", event_id, item_id=_require_id("item_id", item_id))


def response_create(*, event_id: str | None = None, **overrides: Any) -> Event:
    """``response.create``; keyword arguments become the ``response`` object of per-response overrides.

    E.g. ``response_create(instructions="Say goodbye.", tool_choice="none")`` or
    ``response_create(conversation="none", output_modalities=["text"])`` for an out-of-band response (§A.5).
    """
    if overrides:
        return _event("response.create", event_id, response=overrides)
    return _event("response.create", event_id)


def response_cancel(response_id: str | None = None, *, event_id: str | None = None) -> Event:
    """``response.cancel``; without an id the in-progress response of the default conversation."""
    return _event("response.cancel", event_id, response_id=response_id)


# Conversation items (§A.5 "Conversation item shapes").


def message_item(role: Literal["user", "system"], text: str) -> dict[str, Any]:
    """A user or system text message item, e.g. a DTMF note ``message_item("system", "Caller pressed 5")``."""
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


def function_call_output_item(call_id: str, output: str) -> dict[str, Any]:
    """The result of a tool call, sent back before a new ``response.create`` (§A.5 function round trip)."""
    return {"type": "function_call_output", "call_id": _require_id("call_id", call_id), "output": output}
