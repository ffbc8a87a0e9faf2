"""No client input can break an engine session: random events through the real parser into the core."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.engine.helpers import Driver, new_session, tone, validate_server_event
from voice.errors import RealtimeError
from voice.realtime.events import CLIENT_EVENT_TYPES, parse_client_event

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=5000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["", "root", "item_1", "audio/pcmu", "audio/pcm", "text", "audio", "user", "assistant",
                     "function_call", "function_call_output", "message", "input_text", "output_audio", "none",
                     "auto", "server_vad", "realtime", base64.b64encode(tone(120, 24000)).decode()]),
)  # fmt: skip
_KEYS = ["type", "role", "content", "text", "audio", "item", "id", "call_id", "name", "output", "arguments",
         "format", "turn_detection", "input", "output_modalities", "tools", "instructions", "conversation",
         "session", "transcription", "voice", "rate"]  # fmt: skip
_EVENT_KEYS = ["event_id", "audio", "item", "item_id", "previous_item_id", "content_index", "audio_end_ms",
               "response", "response_id", "session"]  # fmt: skip
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(_KEYS),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=12,
)  # fmt: skip
_fields = st.dictionaries(
    st.sampled_from(_EVENT_KEYS),
    _values,
    max_size=4,
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(CLIENT_EVENT_TYPES), _fields), min_size=1, max_size=8))
def test_random_client_events_never_break_the_session(events: list[tuple[str, dict[str, Any]]]) -> None:
    driver = Driver(new_session())
    driver.start()
    for kind, fields in events:
        raw = json.dumps({"type": kind, **fields})
        try:
            event = parse_client_event(raw)
        except RealtimeError as err:
            driver.apply(driver.session.reject(err))
            continue
        for out in driver.send(event):  # validated against the SDK's models by the driver
            validate_server_event(out)
    # The session still works afterwards.
    kinds = [e["type"] for e in driver.send({"type": "input_audio_buffer.clear"})]
    assert kinds[-1] == "input_audio_buffer.cleared"


_ids = st.sampled_from([f"item_{i}" for i in range(1, 12)] + ["root", "nope"])
_AUDIO = base64.b64encode(tone(150, 24000)).decode()
_content = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "input_audio", "output_text", "output_audio", "input_image"])},
    optional={
        "text": st.text(max_size=20),
        "audio": st.sampled_from([_AUDIO, "!"]),
        "transcript": st.text(max_size=5),
    },
)
_item = st.fixed_dictionaries(
    {"type": st.sampled_from(["message", "function_call", "function_call_output"])},
    optional={
        "role": st.sampled_from(["user", "assistant", "system"]),
        "content": st.lists(_content, max_size=2),
        "call_id": st.sampled_from(["call_1", "x"]),
        "output": st.just("{}"),
        "name": st.just("f"),
        "arguments": st.just("{}"),
        "id": _ids,
    },
)
_reference = st.builds(lambda i: {"type": "item_reference", "id": i}, _ids)
_response = st.fixed_dictionaries(
    {},
    optional={
        "conversation": st.sampled_from(["auto", "none"]),
        "output_modalities": st.sampled_from([["audio"], ["text"]]),
        "input": st.lists(st.one_of(_item, _reference), max_size=2),
        "max_output_tokens": st.one_of(st.integers(1, 50), st.just("inf")),
        "instructions": st.just("Say: Hi. Bye."),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
    },
)
_MANUAL = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
_near_valid = st.one_of(
    st.builds(
        lambda item, prev: {"type": "conversation.item.create", "item": item, "previous_item_id": prev},
        _item,
        st.one_of(st.none(), _ids),
    ),
    st.builds(
        lambda i, c, ms: {
            "type": "conversation.item.truncate",
            "item_id": i,
            "content_index": c,
            "audio_end_ms": ms,
        },
        _ids,
        st.integers(0, 2),
        st.integers(0, 3000),
    ),
    st.builds(lambda i: {"type": "conversation.item.delete", "item_id": i}, _ids),
    st.builds(lambda i: {"type": "conversation.item.retrieve", "item_id": i}, _ids),
    st.builds(lambda r: {"type": "response.create", "response": r}, _response),
    st.just({"type": "response.cancel"}),
    st.just({"type": "input_audio_buffer.commit"}),
    st.just({"type": "input_audio_buffer.append", "audio": _AUDIO}),
    st.just({"type": "session.update", "session": _MANUAL}),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_near_valid, min_size=1, max_size=12))
def test_near_valid_event_sequences_never_break_the_session(events: list[dict[str, Any]]) -> None:
    driver = Driver(new_session())
    driver.start()
    for event in events:
        try:
            parsed = parse_client_event(json.dumps(event))
        except RealtimeError as err:
            driver.apply(driver.session.reject(err))
            continue
        driver.send(parsed)
    assert [e["type"] for e in driver.send({"type": "input_audio_buffer.clear"})][
        -1
    ] == "input_audio_buffer.cleared"
    assert driver.session.active_response_id is None  # every response the fakes ran has finished
