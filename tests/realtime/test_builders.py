"""Builders: every output validates against the SDK's GA client event model and our own validator."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pydantic
import pytest
from openai.types.realtime import (
    ConversationItemCreateEvent,
    ConversationItemDeleteEvent,
    ConversationItemRetrieveEvent,
    ConversationItemTruncateEvent,
    InputAudioBufferAppendEvent,
    InputAudioBufferClearEvent,
    InputAudioBufferCommitEvent,
    OutputAudioBufferClearEvent,
    ResponseCancelEvent,
    ResponseCreateEvent,
    SessionUpdateEvent,
)

from voice.errors import LocalProtocolError
from voice.realtime import builders as b
from voice.realtime.events import parse_client_event
from voice.realtime.ids import ID_RANDOM_CHARS, new_event_id, new_id

EVENT_ID = re.compile(r"^event_[0-9A-Za-z]{20}$")

CASES: list[tuple[dict[str, Any], type[pydantic.BaseModel]]] = [
    (
        b.session_update({"instructions": "Be brief.", "audio": {"output": {"voice": "marin"}}}),
        SessionUpdateEvent,
    ),
    (
        b.session_update(
            {
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}},
                },
            }
        ),
        SessionUpdateEvent,
    ),
    (b.input_audio_append(b"\x00\x01\xff"), InputAudioBufferAppendEvent),
    (b.input_audio_append("//79/fz8"), InputAudioBufferAppendEvent),
    (b.input_audio_commit(), InputAudioBufferCommitEvent),
    (b.input_audio_clear(), InputAudioBufferClearEvent),
    (b.output_audio_clear(), OutputAudioBufferClearEvent),
    (b.item_create(b.message_item("user", "hello")), ConversationItemCreateEvent),
    (
        b.item_create(b.message_item("system", "Caller pressed 5"), previous_item_id="root"),
        ConversationItemCreateEvent,
    ),
    (b.item_create(b.function_call_output_item("call_1", '{"ok":true}')), ConversationItemCreateEvent),
    (b.item_truncate("item_abc", 0, 1500), ConversationItemTruncateEvent),
    (b.item_delete("item_abc"), ConversationItemDeleteEvent),
    (b.item_retrieve("item_abc"), ConversationItemRetrieveEvent),
    (b.response_create(), ResponseCreateEvent),
    (
        b.response_create(
            instructions="Say goodbye.", tool_choice="none", conversation="none", output_modalities=["text"]
        ),
        ResponseCreateEvent,
    ),
    (b.response_cancel(), ResponseCancelEvent),
    (b.response_cancel("resp_1"), ResponseCancelEvent),
]


@pytest.mark.parametrize(("event", "model"), CASES, ids=[c[1].__name__ for c in CASES])
def test_builder_output_is_a_valid_client_event(
    event: dict[str, Any], model: type[pydantic.BaseModel]
) -> None:
    parsed = model.model_validate(event)
    assert parsed.model_extra == {}  # no field the SDK does not know
    assert EVENT_ID.match(event["event_id"])
    wire = json.dumps(event, separators=(",", ":"))
    assert parse_client_event(wire) == event


def test_every_client_event_type_has_a_builder() -> None:
    assert {c[0]["type"] for c in CASES} == {
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "output_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.truncate",
        "conversation.item.delete",
        "conversation.item.retrieve",
        "response.create",
        "response.cancel",
    }


def test_details() -> None:
    assert b.session_update({})["session"] == {"type": "realtime"}
    assert b.session_update({"type": "transcription"})["session"]["type"] == "transcription"
    assert b.input_audio_append(b"\x00\x01\xff")["audio"] == base64.b64encode(b"\x00\x01\xff").decode()
    assert b.input_audio_append("abcd")["audio"] == "abcd"  # base64 passes through (Twilio payloads)
    assert "previous_item_id" not in b.item_create(b.message_item("user", "x"))
    assert b.item_create({"type": "message"}, "root")["previous_item_id"] == "root"
    assert "response" not in b.response_create()
    assert b.response_create(instructions="x")["response"] == {"instructions": "x"}
    assert "response_id" not in b.response_cancel()
    assert b.response_cancel(event_id="event_mine")["event_id"] == "event_mine"
    truncate = b.item_truncate("item_1", 0, 0)
    assert (truncate["item_id"], truncate["content_index"], truncate["audio_end_ms"]) == ("item_1", 0, 0)


def test_input_mappings_are_copied() -> None:
    session = {"instructions": "x"}
    event = b.session_update(session)
    assert session == {"instructions": "x"}  # the caller's dict is not modified
    event["session"]["instructions"] = "y"
    assert session["instructions"] == "x"


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (("item_1", 0, -1), "audio_end_ms"),
        (("item_1", 0, 12.5), "audio_end_ms"),
        (("item_1", 0, True), "audio_end_ms"),
        (("item_1", -1, 10), "content_index"),
        (("", 0, 10), "item_id"),
    ],
)
def test_truncate_misuse_is_a_local_error(args: tuple[Any, ...], what: str) -> None:
    with pytest.raises(LocalProtocolError, match=what):
        b.item_truncate(*args)


def test_empty_ids_are_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        b.item_delete("")
    with pytest.raises(LocalProtocolError):
        b.item_retrieve("")
    with pytest.raises(LocalProtocolError):
        b.function_call_output_item("", "x")


def test_ids() -> None:
    ids = {new_event_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(EVENT_ID.match(i) for i in ids)
    for prefix in ("item", "resp", "sess", "call", "conv", "item_"):
        value = new_id(prefix)
        assert re.fullmatch(rf"{prefix.rstrip('_')}_[0-9A-Za-z]{{{ID_RANDOM_CHARS}}}", value), value
    # Random ids use all 62 characters over many ids (the encoding is not stuck on a subset).
    chars = set("".join(new_id("item")[5:] for _ in range(2000)))
    assert len(chars) == 62
    # Event ids are a process prefix and a counter: unique in order, no randomness per event.
    first, second = new_event_id(), new_event_id()
    assert first[:14] == second[:14] and int(second[14:]) == int(first[14:]) + 1
