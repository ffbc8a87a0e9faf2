"""parse_server_event: every GA server event type, the fast path, unknown and malformed messages."""

from __future__ import annotations

import json
import time
from typing import Any, get_args

import pytest
from openai.types.realtime import (
    ConversationItemCreatedEvent,
    ResponseAudioDeltaEvent,
    ResponseDoneEvent,
)
from openai.types.realtime.realtime_server_event import RealtimeServerEvent

from tests.realtime.samples import REAL_SAMPLES, USAGE_B1, minimal_payload
from voice.realtime.events import (
    RAW_PREVIEW_CHARS,
    SERVER_EVENT_MODELS,
    MalformedServerEvent,
    UnknownServerEvent,
    parse_server_event,
)


def test_table_covers_the_sdk_union() -> None:
    members = get_args(get_args(RealtimeServerEvent)[0])
    assert set(SERVER_EVENT_MODELS.values()) == set(members)
    assert len(SERVER_EVENT_MODELS) == len(members) == 46
    # The beta name is still typed and must be accepted (protocols.md §A.6, §A.7).
    assert SERVER_EVENT_MODELS["conversation.item.created"] is ConversationItemCreatedEvent
    assert "conversation.item.added" in SERVER_EVENT_MODELS


@pytest.mark.parametrize("event_type", sorted(SERVER_EVENT_MODELS))
def test_every_type_parses_from_a_minimal_payload(event_type: str) -> None:
    model = SERVER_EVENT_MODELS[event_type]
    payload = minimal_payload(model)
    assert payload["type"] == event_type
    text = json.dumps(payload)
    event = parse_server_event(text)
    assert type(event) is model
    assert event.to_dict() == payload
    # Same result from bytes, and when "type" is not the first key (the general path).
    assert type(parse_server_event(text.encode())) is model
    reordered = {k: v for k, v in payload.items() if k != "type"} | {"type": event_type}
    assert parse_server_event(json.dumps(reordered)) == event


@pytest.mark.parametrize("event_type", sorted(REAL_SAMPLES))
def test_real_samples(event_type: str) -> None:
    payload = REAL_SAMPLES[event_type]
    event = parse_server_event(json.dumps(payload, separators=(",", ":")))
    assert type(event) is SERVER_EVENT_MODELS[event_type]
    assert event.to_dict(exclude_unset=True) == payload


def test_response_done_usage_is_typed() -> None:
    event = parse_server_event(json.dumps(REAL_SAMPLES["response.done"]))
    assert isinstance(event, ResponseDoneEvent)
    usage = event.response.usage
    assert usage is not None and usage.input_token_details is not None
    assert usage.input_token_details.cached_tokens_details is not None
    assert usage.input_token_details.cached_tokens_details.audio_tokens == 384
    assert event.response.status_details is not None
    assert event.response.status_details.reason == "turn_detected"
    assert USAGE_B1["total_tokens"] == usage.total_tokens


def test_audio_delta_fast_path_fields() -> None:
    raw = json.dumps(REAL_SAMPLES["response.output_audio.delta"], separators=(",", ":"))
    event = parse_server_event(raw)
    assert isinstance(event, ResponseAudioDeltaEvent)
    assert (event.item_id, event.content_index, event.delta) == ("item_A1", 0, "//79/fz8/Pz8")


def test_extra_fields_are_kept() -> None:
    # Servers add fields (e.g. "obfuscation" on deltas); the SDK models keep them as extras.
    payload = dict(REAL_SAMPLES["response.output_audio.delta"], obfuscation="abc", new_field=[1])
    event = parse_server_event(json.dumps(payload))
    assert isinstance(event, ResponseAudioDeltaEvent)
    assert event.model_extra == {"obfuscation": "abc", "new_field": [1]}


def test_unknown_type() -> None:
    event = parse_server_event('{"type":"response.brand_new","event_id":"event_9","x":1}')
    assert event == UnknownServerEvent(
        "response.brand_new", {"type": "response.brand_new", "event_id": "event_9", "x": 1}
    )
    assert isinstance(event, UnknownServerEvent) and event.event_id == "event_9"
    # Beta-only names are unknown in GA (protocols.md §A.7).
    beta = parse_server_event('{"type":"response.audio.delta","delta":"AA=="}')
    assert isinstance(beta, UnknownServerEvent) and beta.type == "response.audio.delta"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json", "not JSON"),
        ("", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        ("[1,2]", "not a JSON object but an array"),
        ('"text"', "not a JSON object but a string"),
        ("null", "not a JSON object but null"),
        ('{"event_id":"e"}', "no 'type'"),
        ('{"type":7}', "'type' is an integer, not a string"),
        ('{"type":null}', "no 'type'"),
        ('{"type":"response.output_audio.delta"}', "invalid 'response.output_audio.delta' event"),
        (
            '{"type":"response.output_audio.delta","event_id":"e","response_id":"r","item_id":"i",'
            '"output_index":"zero","content_index":0,"delta":""}',
            "output_index",
        ),
        ('{"type":"error","event_id":"e","error":"boom"}', "invalid 'error' event: error"),
        ("[" * 50_000, "nested too deeply"),
        ('{"type":"session.created","session":' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
        ('{"type":"session.created","session":' + "[" * 150 + "]" * 150 + "}", "invalid 'session.created'"),
    ],
)
def test_malformed(raw: str | bytes, reason: str) -> None:
    event = parse_server_event(raw)
    assert isinstance(event, MalformedServerEvent)
    assert reason in event.reason


def test_malformed_raw_is_shortened() -> None:
    raw = '{"type":"response.output_audio.delta","delta":' + '"' + "A" * 100_000 + '"}'
    event = parse_server_event(raw)
    assert isinstance(event, MalformedServerEvent)
    assert len(event.raw) < RAW_PREVIEW_CHARS + 30
    assert event.raw.endswith(f"...<{len(raw)} chars>")


def test_duplicate_type_key_takes_the_last_like_json_loads() -> None:
    # The prefix says audio delta, but the last "type" wins (as in json.loads): the fast path must not lie.
    payload: dict[str, Any] = dict(REAL_SAMPLES["response.output_text.delta"])
    raw = '{"type":"response.output_audio.delta",' + json.dumps(payload)[1:]
    event = parse_server_event(raw)
    assert type(event) is SERVER_EVENT_MODELS["response.output_text.delta"]


def test_hot_path_is_cheap() -> None:
    raw = json.dumps(
        dict(REAL_SAMPLES["response.output_audio.delta"], delta="A" * 216), separators=(",", ":")
    )
    parse_server_event(raw)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        parse_server_event(raw)
    per_event_us = (time.perf_counter() - start) / n * 1e6
    # ~2 µs on the development machine; a generous bound that still catches a fall back to slow parsing.
    assert per_event_us < 60
