"""Sample payloads for the Realtime protocol tests.

``minimal_payload(model)`` builds the smallest payload an SDK model accepts (required fields only), from the
model's own type hints, so every server event type in the SDK union gets a sample. ``REAL_SAMPLES`` are
realistic shapes from protocols.md §A.6/§B.1 and live captures quoted there.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import pydantic


def _value(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is typing.Annotated:
        return _value(get_args(tp)[0])
    if tp is str:
        return "x"
    if tp is int:
        return 0
    if tp is float:
        return 0.5
    if tp is bool:
        return True
    if tp is object or tp is Any:
        return {}
    if tp is type(None):
        return None
    if origin is Literal:
        return get_args(tp)[0]
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _value(args[0])
    if origin in (list, typing.List):  # noqa: UP006
        return []
    if origin in (dict, typing.Dict):  # noqa: UP006
        return {}
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        return minimal_payload(tp)
    raise TypeError(tp)


def minimal_payload(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    return {
        info.alias or name: _value(info.annotation)
        for name, info in model.model_fields.items()
        if info.is_required()
    }


USAGE_B1 = {
    "total_tokens": 821,
    "input_tokens": 789,
    "output_tokens": 32,
    "input_token_details": {
        "text_tokens": 313,
        "audio_tokens": 476,
        "image_tokens": 0,
        "cached_tokens": 640,
        "cached_tokens_details": {"text_tokens": 256, "audio_tokens": 384, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 9, "audio_tokens": 23},
}
"""protocols.md §B.1 (a real WebRTC sample)."""

SESSION = {
    "type": "realtime",
    "object": "realtime.session",
    "id": "sess_C9x",
    "model": "gpt-realtime",
    "output_modalities": ["audio"],
    "instructions": "You are a helpful phone agent.",
    "tools": [],
    "tool_choice": "auto",
    "max_output_tokens": "inf",
    "truncation": "auto",
    "audio": {
        "input": {
            "format": {"type": "audio/pcmu"},
            "transcription": None,
            "noise_reduction": None,
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 200,
                "idle_timeout_ms": None,
                "create_response": True,
                "interrupt_response": True,
            },
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0},
    },
    "expires_at": 1789728574,
}

ASSISTANT_ITEM = {
    "id": "item_A1",
    "object": "realtime.item",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [{"type": "output_audio", "transcript": "Hi there, friend!"}],
}

REAL_SAMPLES: dict[str, dict[str, Any]] = {
    "session.created": {"type": "session.created", "event_id": "event_1", "session": SESSION},
    "session.updated": {"type": "session.updated", "event_id": "event_2", "session": SESSION},
    "conversation.item.added": {
        "type": "conversation.item.added",
        "event_id": "event_3",
        "previous_item_id": None,
        "item": {
            "id": "item_U1",
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        },
    },
    "conversation.item.created": {
        "type": "conversation.item.created",
        "event_id": "event_3b",
        "previous_item_id": "item_U1",
        "item": ASSISTANT_ITEM,
    },
    "input_audio_buffer.speech_started": {
        "type": "input_audio_buffer.speech_started",
        "event_id": "event_4",
        "audio_start_ms": 1000,
        "item_id": "item_U2",
    },
    "input_audio_buffer.speech_stopped": {
        "type": "input_audio_buffer.speech_stopped",
        "event_id": "event_5",
        "audio_end_ms": 2500,
        "item_id": "item_U2",
    },
    "input_audio_buffer.committed": {
        "type": "input_audio_buffer.committed",
        "event_id": "event_6",
        "previous_item_id": None,
        "item_id": "item_U2",
    },
    "conversation.item.input_audio_transcription.completed": {
        "type": "conversation.item.input_audio_transcription.completed",
        "event_id": "event_7",
        "item_id": "item_U2",
        "content_index": 0,
        "transcript": "Hello from the Gateway Probe.",
        "usage": {
            "type": "tokens",
            "total_tokens": 24,
            "input_tokens": 16,
            "input_token_details": {"text_tokens": 0, "audio_tokens": 16},
            "output_tokens": 8,
        },
    },
    "response.created": {
        "type": "response.created",
        "event_id": "event_8",
        "response": {
            "object": "realtime.response",
            "id": "resp_R1",
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "conversation_id": "conv_1",
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "audio": {"output": {"format": {"type": "audio/pcmu"}, "voice": "marin"}},
            "usage": None,
            "metadata": None,
        },
    },
    "response.output_audio.delta": {
        "type": "response.output_audio.delta",
        "event_id": "event_9",
        "response_id": "resp_R1",
        "item_id": "item_A1",
        "output_index": 0,
        "content_index": 0,
        "delta": "//79/fz8/Pz8",
    },
    "response.output_text.delta": {
        "type": "response.output_text.delta",
        "event_id": "event_10",
        "response_id": "resp_R1",
        "item_id": "item_A1",
        "output_index": 0,
        "content_index": 0,
        "delta": "Hi",
        "obfuscation": "A5Nj2cC01aseXj",
    },
    "response.done": {
        "type": "response.done",
        "event_id": "event_11",
        "response": {
            "object": "realtime.response",
            "id": "resp_R1",
            "status": "cancelled",
            "status_details": {"type": "cancelled", "reason": "turn_detected"},
            "output": [ASSISTANT_ITEM],
            "conversation_id": "conv_1",
            "output_modalities": ["audio"],
            "max_output_tokens": "inf",
            "usage": USAGE_B1,
            "metadata": None,
        },
    },
    "rate_limits.updated": {
        "type": "rate_limits.updated",
        "event_id": "event_12",
        "rate_limits": [{"name": "tokens", "limit": 15000000, "remaining": 14999716, "reset_seconds": 0.001}],
    },
    "error": {
        "type": "error",
        "event_id": "event_13",
        "error": {
            "type": "invalid_request_error",
            "code": "invalid_value",
            "message": "Invalid value: 'nope'. Supported values are: 'session.update' and 'response.cancel'.",
            "param": "type",
            "event_id": None,
        },
    },
    "conversation.item.truncated": {
        "type": "conversation.item.truncated",
        "event_id": "event_14",
        "item_id": "item_A1",
        "content_index": 0,
        "audio_end_ms": 1500,
    },
}
