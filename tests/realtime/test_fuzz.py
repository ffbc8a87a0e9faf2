"""Hypothesis fuzz: the parsers only ever produce their documented outcomes on remote input."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from pydantic import TypeAdapter

from tests.realtime.samples import REAL_SAMPLES, minimal_payload
from tests.realtime.test_client_events import VALID
from voice.errors import RealtimeError
from voice.realtime.events import (
    CLIENT_EVENT_TYPES,
    SERVER_EVENT_MODELS,
    MalformedServerEvent,
    UnknownServerEvent,
    parse_client_event,
    parse_server_event,
)

FUZZ_EXAMPLES = int(os.environ.get("VOICE_FUZZ_EXAMPLES", "300"))
"""Raise for a longer local run (4000 examples per test pass in about a minute)."""
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SDK_CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeClientEvent)
ERROR_CODES = {
    "invalid_json",
    "invalid_type",
    "invalid_value",
    "unknown_parameter",
    "missing_required_parameter",
    "integer_below_min_value",
    "integer_above_max_value",
    "decimal_below_min_value",
    "decimal_above_max_value",
    "string_above_max_length",
    "message_too_large",
}

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
server_types = st.sampled_from(sorted(SERVER_EVENT_MODELS)) | st.text(max_size=30)
client_types = st.sampled_from(CLIENT_EVENT_TYPES) | st.text(max_size=30)


def check_server_outcome(raw: str | bytes) -> None:
    event = parse_server_event(raw)
    if isinstance(event, UnknownServerEvent):
        assert event.type not in SERVER_EVENT_MODELS
        assert isinstance(event.data, dict)
    elif isinstance(event, MalformedServerEvent):
        assert isinstance(event.reason, str) and event.reason
        assert len(event.raw) < 260
    else:
        assert isinstance(event, pydantic.BaseModel)
        assert SERVER_EVENT_MODELS[event.type] is type(event)


@FUZZ
@given(st.text() | st.binary())
def test_server_arbitrary_text(raw: str | bytes) -> None:
    check_server_outcome(raw)


@FUZZ
@given(server_types, st.dictionaries(st.text(max_size=15), json_values, max_size=6))
def test_server_random_objects(event_type: str, fields: dict[str, Any]) -> None:
    payload = {"type": event_type, **fields}
    check_server_outcome(json.dumps(payload))
    check_server_outcome(json.dumps({**fields, "type": event_type}).encode())


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, bases: list[dict[str, Any]]) -> dict[str, Any]:
    """A valid payload with one to three random changes: a value replaced, a key removed or added."""
    event: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(event) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = event
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(json_values)
    return event


SERVER_BASES = [minimal_payload(m) for m in SERVER_EVENT_MODELS.values()] + list(REAL_SAMPLES.values())


@FUZZ
@given(mutated(SERVER_BASES))
def test_server_mutated_events(payload: dict[str, Any]) -> None:
    check_server_outcome(json.dumps(payload, separators=(",", ":")))


def check_client_outcome(raw: str | bytes, max_bytes: int | None = None) -> None:
    try:
        event = parse_client_event(raw, max_bytes=max_bytes)
    except RealtimeError as err:
        assert err.type == "invalid_request_error"
        assert err.code in ERROR_CODES, err.code
        assert err.param is None or isinstance(err.param, str)
        assert err.message
        assert err.event_id is None or isinstance(err.event_id, str)
        json.dumps(err.to_error_body())
        return
    assert event["type"] in CLIENT_EVENT_TYPES
    # Whatever we accept, the SDK's own models accept too.
    SDK_CLIENT_EVENT.validate_python(event)


@FUZZ
@given(st.text() | st.binary(), st.none() | st.integers(0, 64))
def test_client_arbitrary_text(raw: str | bytes, max_bytes: int | None) -> None:
    check_client_outcome(raw, max_bytes)


@FUZZ
@given(client_types, st.dictionaries(st.text(max_size=15), json_values, max_size=5))
def test_client_random_objects(event_type: str, fields: dict[str, Any]) -> None:
    check_client_outcome(json.dumps({"type": event_type, **fields}))


@FUZZ
@given(mutated(VALID))
def test_client_mutated_events(payload: dict[str, Any]) -> None:
    check_client_outcome(json.dumps(payload))
