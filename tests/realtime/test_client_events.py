"""parse_client_event: the 11 GA client events accepted, and OpenAI's error payloads for bad ones."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from pydantic import TypeAdapter

from voice.errors import RealtimeError
from voice.realtime.events import CLIENT_EVENT_TYPES, parse_client_event
from voice.realtime.validate import MAX_APPEND_AUDIO_CHARS

SDK_CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeClientEvent)

# protocols.md §A.2, the verified Twilio passthrough example.
SESSION_UPDATE_A2 = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "model": "gpt-realtime",
        "instructions": "You are a helpful phone agent.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "noise_reduction": {"type": "near_field"},
                "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "idle_timeout_ms": 6000,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0},
        },
        "tools": [
            {
                "type": "function",
                "name": "transfer_call",
                "description": "Transfer to a human",
                "parameters": {
                    "type": "object",
                    "properties": {"reason": {"type": "string"}},
                    "required": ["reason"],
                },
            }
        ],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "truncation": {"type": "retention_ratio", "retention_ratio": 0.8},
    },
}

VALID: list[dict[str, Any]] = [
    SESSION_UPDATE_A2,
    {
        "type": "session.update",
        "session": {"type": "realtime", "audio": {"input": {"noise_reduction": None}}},
    },
    {"type": "session.update", "session": {"type": "realtime", "instructions": "", "tools": []}},
    {
        "type": "session.update",
        "session": {
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": {"model": "gpt-4o-mini-transcribe"},
                    "turn_detection": {"type": "server_vad"},
                }
            },
        },
    },
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {
                "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}},
                "output": {"voice": {"id": "voice_123"}},
            },
            "tool_choice": {"type": "function", "name": "transfer_call"},
            "truncation": "disabled",
            "max_output_tokens": 4096,
        },
    },
    {"type": "input_audio_buffer.append", "audio": "//79/fz8", "event_id": "event_a"},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear", "event_id": "e"},
    {"type": "output_audio_buffer.clear"},
    {
        "type": "conversation.item.create",
        "previous_item_id": "root",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
    },
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": "pressed 5"}],
        },
    },
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello"}],
        },
    },
    {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"ok":true}'},
    },
    {
        "type": "conversation.item.create",
        "item": {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
    },
    {"type": "conversation.item.truncate", "item_id": "item_abc", "content_index": 0, "audio_end_ms": 1500},
    {"type": "conversation.item.delete", "item_id": "item_abc"},
    {"type": "conversation.item.retrieve", "item_id": "item_abc"},
    {"type": "response.create"},
    {"type": "response.create", "response": {}},
    {
        "type": "response.create",
        "response": {
            "instructions": "Say goodbye.",
            "conversation": "none",
            "output_modalities": ["text"],
            "metadata": {"purpose": "summary"},
            "tools": [{"name": "f", "parameters": {"type": "object"}}],
            "tool_choice": "none",
            "max_output_tokens": 200,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}],
            "audio": {"output": {"voice": "cedar", "format": {"type": "audio/pcma"}}},
        },
    },
    {"type": "response.cancel"},
    {"type": "response.cancel", "response_id": "resp_1"},
]


@pytest.mark.parametrize("event", VALID, ids=lambda e: str(e["type"]))
def test_valid_events_are_returned_unchanged(event: dict[str, Any]) -> None:
    raw = json.dumps(event)
    assert parse_client_event(raw) == event
    assert parse_client_event(raw.encode()) == event
    SDK_CLIENT_EVENT.validate_python(event)  # our acceptance never exceeds the SDK's


def test_all_eleven_types_are_covered() -> None:
    assert len(CLIENT_EVENT_TYPES) == 11
    assert {e["type"] for e in VALID} == set(CLIENT_EVENT_TYPES)


def test_integral_decimals_become_ints() -> None:
    raw = '{"type":"conversation.item.truncate","item_id":"i","content_index":0.0,"audio_end_ms":1500.0}'
    event = parse_client_event(raw)
    assert event["audio_end_ms"] == 1500 and type(event["audio_end_ms"]) is int
    assert type(event["content_index"]) is int


def expect_error(raw: str | bytes, **kwargs: Any) -> RealtimeError:
    with pytest.raises(RealtimeError) as info:
        parse_client_event(raw, **kwargs)
    err = info.value
    assert err.type == "invalid_request_error"
    body = err.to_error_body()
    assert set(body) == {"type", "code", "message", "param", "event_id"}
    return err


def _ev(**fields: Any) -> str:
    return json.dumps(fields)


SUPPORTED = (
    "'session.update', 'input_audio_buffer.append', 'input_audio_buffer.commit', 'input_audio_buffer.clear', "
    "'conversation.item.create', 'conversation.item.truncate', 'conversation.item.delete', "
    "'conversation.item.retrieve', 'response.create', 'response.cancel', and 'output_audio_buffer.clear'"
)

ERRORS: list[tuple[str, str, str | None, str]] = [
    # (raw, code, param, exact message)
    (
        _ev(type="nope"),
        "invalid_value",
        "type",
        f"Invalid value: 'nope'. Supported values are: {SUPPORTED}.",
    ),
    (
        _ev(type="transcription_session.update", session={}),
        "invalid_value",
        "type",
        f"Invalid value: 'transcription_session.update'. Supported values are: {SUPPORTED}.",
    ),
    (_ev(item_id="i"), "missing_required_parameter", "type", "Missing required parameter: 'type'."),
    (
        _ev(type=5),
        "invalid_type",
        "type",
        "Invalid type for 'type': expected a string, but got an integer instead.",
    ),
    (
        _ev(type="session.update", session={"type": "realtime", "bogus_field": 1}),
        "unknown_parameter",
        "session.bogus_field",
        "Unknown parameter: 'session.bogus_field'.",
    ),
    (
        _ev(type="session.update", session={"type": "realtime", "temperature": 0.8}),
        "unknown_parameter",
        "session.temperature",
        "Unknown parameter: 'session.temperature'.",
    ),
    (
        # Beta field names are unknown in GA (protocols.md §A.7).
        _ev(type="session.update", session={"type": "realtime", "input_audio_format": "pcm16"}),
        "unknown_parameter",
        "session.input_audio_format",
        "Unknown parameter: 'session.input_audio_format'.",
    ),
    (
        _ev(type="session.update", session={"instructions": "x"}),
        "missing_required_parameter",
        "session.type",
        "Missing required parameter: 'session.type'.",
    ),
    (
        _ev(type="session.update", session={"type": "chat"}),
        "invalid_value",
        "session.type",
        "Invalid value: 'chat'. Supported values are: 'realtime' and 'transcription'.",
    ),
    (
        _ev(type="session.update"),
        "missing_required_parameter",
        "session",
        "Missing required parameter: 'session'.",
    ),
    (
        _ev(type="session.update", session={"type": "realtime", "audio": {"input": {"format": "pcm16"}}}),
        "invalid_type",
        "session.audio.input.format",
        "Invalid type for 'session.audio.input.format': expected an object, but got a string instead.",
    ),
    (
        _ev(
            type="session.update",
            session={"type": "realtime", "audio": {"input": {"format": {"type": "g711_ulaw"}}}},
        ),
        "invalid_value",
        "session.audio.input.format.type",
        "Invalid value: 'g711_ulaw'. Supported values are: 'audio/pcm', 'audio/pcmu', and 'audio/pcma'.",
    ),
    (
        _ev(
            type="session.update",
            session={"type": "realtime", "audio": {"input": {"format": {"rate": 24000}}}},
        ),
        "missing_required_parameter",
        "session.audio.input.format.type",
        "Missing required parameter: 'session.audio.input.format.type'.",
    ),
    (
        _ev(
            type="session.update",
            session={
                "type": "transcription",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
            },
        ),
        "integer_below_min_value",
        "session.audio.input.format.rate",
        "Invalid 'session.audio.input.format.rate': integer below minimum value. "
        "Expected a value >= 24000, but got 16000 instead.",
    ),
    (
        _ev(
            type="session.update",
            session={"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm"}}}},
        ),
        "missing_required_parameter",
        "session.audio.output.format.rate",
        "Missing required parameter: 'session.audio.output.format.rate'.",
    ),
    (
        _ev(type="session.update", session={"type": "realtime", "audio": {"output": {"speed": 2.0}}}),
        "decimal_above_max_value",
        "session.audio.output.speed",
        "Invalid 'session.audio.output.speed': decimal above maximum value. "
        "Expected a value <= 1.5, but got 2.0 instead.",
    ),
    (
        _ev(type="session.update", session={"type": "realtime", "audio": {"output": {"speed": 0.1}}}),
        "decimal_below_min_value",
        "session.audio.output.speed",
        "Invalid 'session.audio.output.speed': decimal below minimum value. "
        "Expected a value >= 0.25, but got 0.1 instead.",
    ),
    (
        _ev(
            type="session.update",
            session={
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.2}}},
            },
        ),
        "decimal_above_max_value",
        "session.audio.input.turn_detection.threshold",
        "Invalid 'session.audio.input.turn_detection.threshold': decimal above maximum value. "
        "Expected a value <= 1.0, but got 1.2 instead.",
    ),
    (
        _ev(
            type="session.update",
            session={"type": "realtime", "audio": {"input": {"turn_detection": {"type": "vad"}}}},
        ),
        "invalid_value",
        "session.audio.input.turn_detection.type",
        "Invalid value: 'vad'. Supported values are: 'server_vad' and 'semantic_vad'.",
    ),
    (
        _ev(
            type="session.update",
            session={
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}},
            },
        ),
        "invalid_value",
        "session.audio.input.turn_detection.eagerness",
        "Invalid value: 'eager'. Supported values are: 'low', 'medium', 'high', and 'auto'.",
    ),
    (
        _ev(type="session.update", session={"type": "realtime", "output_modalities": ["text", "video"]}),
        "invalid_value",
        "session.output_modalities[1]",
        "Invalid value: 'video'. Supported values are: 'text' and 'audio'.",
    ),
    (
        _ev(type="session.update", session={"type": "realtime", "max_output_tokens": 0}),
        "integer_below_min_value",
        "session.max_output_tokens",
        "Invalid 'session.max_output_tokens': integer below minimum value. "
        "Expected a value >= 1, but got 0 instead.",
    ),
    (
        _ev(type="session.update", session={"type": "realtime", "max_output_tokens": True}),
        "invalid_type",
        "session.max_output_tokens",
        "Invalid type for 'session.max_output_tokens': expected an integer or 'inf', "
        "but got a boolean instead.",
    ),
    (
        _ev(type="session.update", session={"type": "realtime", "tools": [{"name": "f"}]}),
        "missing_required_parameter",
        "session.tools[0].type",
        "Missing required parameter: 'session.tools[0].type'.",
    ),
    (
        _ev(
            type="session.update",
            session={"type": "realtime", "tools": [{"type": "function", "name": "f", "strict": True}]},
        ),
        "unknown_parameter",
        "session.tools[0].strict",
        "Unknown parameter: 'session.tools[0].strict'.",
    ),
    (
        _ev(
            type="session.update",
            session={"type": "realtime", "truncation": {"type": "retention_ratio", "retention_ratio": 1.5}},
        ),
        "decimal_above_max_value",
        "session.truncation.retention_ratio",
        "Invalid 'session.truncation.retention_ratio': decimal above maximum value. "
        "Expected a value <= 1.0, but got 1.5 instead.",
    ),
    (
        _ev(type="input_audio_buffer.append"),
        "missing_required_parameter",
        "audio",
        "Missing required parameter: 'audio'.",
    ),
    (
        _ev(type="input_audio_buffer.append", audio=123),
        "invalid_type",
        "audio",
        "Invalid type for 'audio': expected a string, but got an integer instead.",
    ),
    (
        _ev(type="input_audio_buffer.commit", extra=1),
        "unknown_parameter",
        "extra",
        "Unknown parameter: 'extra'.",
    ),
    (
        _ev(type="conversation.item.create", item={"role": "user", "content": []}),
        "missing_required_parameter",
        "item.type",
        "Missing required parameter: 'item.type'.",
    ),
    (
        _ev(type="conversation.item.create", item={"type": "text", "text": "hi"}),
        "invalid_value",
        "item.type",
        "Invalid value: 'text'. Supported values are: 'message', 'function_call', 'function_call_output', "
        "'mcp_approval_response', 'mcp_list_tools', 'mcp_call', and 'mcp_approval_request'.",
    ),
    (
        _ev(type="conversation.item.create", item={"type": "message", "content": []}),
        "missing_required_parameter",
        "item.role",
        "Missing required parameter: 'item.role'.",
    ),
    (
        _ev(type="conversation.item.create", item={"type": "message", "role": "bot", "content": []}),
        "invalid_value",
        "item.role",
        "Invalid value: 'bot'. Supported values are: 'system', 'user', and 'assistant'.",
    ),
    (
        _ev(type="conversation.item.create", item={"type": "message", "role": "user", "content": "hello"}),
        "invalid_type",
        "item.content",
        "Invalid type for 'item.content': expected an array of objects, but got a string instead.",
    ),
    (
        _ev(
            type="conversation.item.create",
            item={"type": "message", "role": "user", "content": [{"type": "text", "text": "x"}]},
        ),
        "invalid_value",
        "item.content[0].type",
        "Invalid value: 'text'. Supported values are: 'input_text', 'input_audio', and 'input_image'.",
    ),
    (
        _ev(
            type="conversation.item.create",
            item={"type": "message", "role": "system", "content": [{"type": "input_audio"}]},
        ),
        "invalid_value",
        "item.content[0].type",
        "Invalid value: 'input_audio'. Supported values are: 'input_text'.",
    ),
    (
        _ev(type="conversation.item.create", item={"type": "function_call_output", "output": "x"}),
        "missing_required_parameter",
        "item.call_id",
        "Missing required parameter: 'item.call_id'.",
    ),
    (
        _ev(
            type="conversation.item.create",
            item={"type": "function_call_output", "call_id": "c", "output": {"ok": 1}},
        ),
        "invalid_type",
        "item.output",
        "Invalid type for 'item.output': expected a string, but got an object instead.",
    ),
    (
        _ev(type="conversation.item.create"),
        "missing_required_parameter",
        "item",
        "Missing required parameter: 'item'.",
    ),
    (
        _ev(type="conversation.item.truncate", item_id="i", content_index=0, audio_end_ms=12.5),
        "invalid_type",
        "audio_end_ms",
        "Invalid type for 'audio_end_ms': expected an integer, but got a decimal number instead.",
    ),
    (
        _ev(type="conversation.item.truncate", item_id="i", content_index=0, audio_end_ms=-1),
        "integer_below_min_value",
        "audio_end_ms",
        "Invalid 'audio_end_ms': integer below minimum value. Expected a value >= 0, but got -1 instead.",
    ),
    (
        _ev(type="conversation.item.truncate", item_id="i", audio_end_ms=10),
        "missing_required_parameter",
        "content_index",
        "Missing required parameter: 'content_index'.",
    ),
    (
        _ev(type="conversation.item.truncate", item_id=None, content_index=0, audio_end_ms=10),
        "invalid_type",
        "item_id",
        "Invalid type for 'item_id': expected a string, but got null instead.",
    ),
    (
        _ev(type="conversation.item.delete"),
        "missing_required_parameter",
        "item_id",
        "Missing required parameter: 'item_id'.",
    ),
    (
        _ev(type="response.create", response={"max_output_tokens": 16384}),
        "integer_above_max_value",
        "response.max_output_tokens",
        "Invalid 'response.max_output_tokens': integer above maximum value. "
        "Expected a value <= 4096, but got 16384 instead.",
    ),
    (
        _ev(type="response.create", response={"tool_choice": "sometimes"}),
        "invalid_value",
        "response.tool_choice",
        "Invalid value: 'sometimes'. Supported values are: 'none', 'auto', and 'required'.",
    ),
    (
        _ev(type="response.create", response={"modalities": ["text", "audio"]}),
        "unknown_parameter",
        "response.modalities",
        "Unknown parameter: 'response.modalities'.",
    ),
    (
        _ev(type="response.create", response={"metadata": {"k": 1}}),
        "invalid_type",
        "response.metadata.k",
        "Invalid type for 'response.metadata.k': expected a string, but got an integer instead.",
    ),
    (
        _ev(type="response.create", response="now"),
        "invalid_type",
        "response",
        "Invalid type for 'response': expected an object, but got a string instead.",
    ),
    (
        _ev(type="response.cancel", response_id=7),
        "invalid_type",
        "response_id",
        "Invalid type for 'response_id': expected a string, but got an integer instead.",
    ),
    (
        _ev(type="response.cancel", event_id=5),
        "invalid_type",
        "event_id",
        "Invalid type for 'event_id': expected a string, but got an integer instead.",
    ),
]


@pytest.mark.parametrize(("raw", "code", "param", "message"), ERRORS, ids=[e[2] or e[1] for e in ERRORS])
def test_validation_errors(raw: str, code: str, param: str | None, message: str) -> None:
    err = expect_error(raw)
    assert (err.code, err.param, err.message) == (code, param, message)
    assert err.event_id is None


def test_event_id_is_echoed() -> None:
    err = expect_error(_ev(type="conversation.item.delete", event_id="event_mine"))
    assert err.event_id == "event_mine"
    assert err.to_error_body()["event_id"] == "event_mine"
    err = expect_error(_ev(type="nope", event_id="event_x"))
    assert err.event_id == "event_x"
    # A non-string event_id cannot be echoed.
    err = expect_error(_ev(type="nope", event_id=["x"]))
    assert err.event_id is None


@pytest.mark.parametrize(
    "raw", ["not json", "", "{", b"\xff\xfe", '{"type":"response.create","x":NaN}', "[" * 100_000]
)
def test_invalid_json(raw: str | bytes) -> None:
    err = expect_error(raw)
    assert err.code == "invalid_json"
    assert err.param is None
    assert err.message.startswith("Invalid event: failed to parse JSON value.")


@pytest.mark.parametrize(
    ("raw", "kind"), [("[]", "an array"), ('"x"', "a string"), ("3", "an integer"), ("null", "null")]
)
def test_not_an_object(raw: str, kind: str) -> None:
    err = expect_error(raw)
    assert err.code == "invalid_type"
    assert err.message == f"Invalid event: expected a JSON object, but got {kind} instead."


def test_oversized_message() -> None:
    raw = _ev(type="input_audio_buffer.append", audio="A" * 1000, event_id="event_big")
    assert parse_client_event(raw, max_bytes=len(raw))["audio"] == "A" * 1000
    err = expect_error(raw, max_bytes=len(raw) - 1)
    assert err.code == "message_too_large"
    assert str(len(raw)) in err.message and str(len(raw) - 1) in err.message
    assert err.event_id is None  # rejected before it is parsed
    # Multi-byte characters count as their UTF-8 size, for str as for bytes.
    wide = _ev(type="response.create", response={"instructions": "é" * 100})
    wide = wide.replace("\\u00e9", "é")
    size = len(wide.encode())
    assert size > len(wide)
    expect_error(wide, max_bytes=size - 1)
    expect_error(wide.encode(), max_bytes=size - 1)
    assert parse_client_event(wide, max_bytes=size)["response"]["instructions"] == "é" * 100


def test_append_audio_limit() -> None:
    ok = "A" * MAX_APPEND_AUDIO_CHARS
    assert len(parse_client_event(_ev(type="input_audio_buffer.append", audio=ok))["audio"]) == len(ok)
    err = expect_error(_ev(type="input_audio_buffer.append", audio=ok + "AAAA"))
    assert err.code == "string_above_max_length"
    assert err.param == "audio"
    assert err.message == (
        f"Invalid 'audio': string too long. Expected a string with maximum length {MAX_APPEND_AUDIO_CHARS}, "
        f"but got a string with length {MAX_APPEND_AUDIO_CHARS + 4} instead."
    )
