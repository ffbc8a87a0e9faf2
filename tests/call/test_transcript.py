"""The transcript: ordered, typed events on the call timeline, and the heard-text cut."""

from __future__ import annotations

import pytest

from voice.call.transcript import (
    RecordError,
    Transcript,
    TranscriptEvent,
    heard_text,
)
from voice.errors import VoiceError


def test_events_keep_order_seq_and_data() -> None:
    tr = Transcript("call_1")
    tr.system(0, "call started", leg="twilio")
    tr.caller(1200, "I'd like a table for two", item_id="item_u1")
    tr.agent(
        2500,
        "Sure, for what time would you like the table?",
        item_id="item_a1",
        heard_ms=1000,
        audio_ms=4000,
        interrupted=True,
    )
    tr.barge_in(3500, item_id="item_a1", heard_ms=1000)
    tr.dtmf(4000, "12#")
    tr.tool_call(4100, "book_table", "call_abc", {"people": 2, "time": "19:00"})
    tr.tool_result(4300, "call_abc", output='{"ok": true}')
    tr.error(4400, "upstream hiccup", type="server_error", code=None)

    events = tr.events
    assert [e.seq for e in events] == list(range(8))
    assert [e.kind for e in events] == [
        "system",
        "caller",
        "agent",
        "barge_in",
        "dtmf",
        "tool_call",
        "tool_result",
        "error",
    ]
    assert all(e.call_id == "call_1" for e in events)
    agent = events[2]
    assert agent.t_ms == 2500
    assert agent.text == "Sure, for"  # a quarter heard (11 of 46 chars, inside "what"): whole words only
    assert agent.data == {
        "item_id": "item_a1",
        "interrupted": True,
        "heard_ms": 1000,
        "generated_text": "Sure, for what time would you like the table?",
    }
    assert events[4].data == {"digits": "12#"} and events[4].text == "12#"
    assert events[5].data == {
        "name": "book_table",
        "call_id": "call_abc",
        "arguments": '{"people": 2, "time": "19:00"}',
    }
    assert events[6].data == {"call_id": "call_abc", "output": '{"ok": true}', "error": None}
    assert events[7].data == {"type": "server_error", "code": None}


def test_uninterrupted_agent_turn_keeps_the_whole_text() -> None:
    tr = Transcript("c")
    ev = tr.agent(0, "Hello there.", item_id="i", heard_ms=900, audio_ms=900)
    assert ev.text == "Hello there."
    assert ev.data["interrupted"] is False


def test_add_accepts_any_data_key_and_events_are_frozen() -> None:
    tr = Transcript("c")
    ev = tr.add("system", 5, "note", call_id="other", kind="x", t_ms=1)
    assert ev.call_id == "c" and ev.kind == "system" and ev.t_ms == 5
    assert ev.data == {"call_id": "other", "kind": "x", "t_ms": 1}
    with pytest.raises(AttributeError):
        ev.text = "changed"  # type: ignore[misc]


def test_sink_receives_each_event_as_added() -> None:
    seen: list[TranscriptEvent] = []
    tr = Transcript("c", sink=seen.append)
    a = tr.caller(10, "hi")
    b = tr.dtmf(20, "5")
    assert seen == [a, b]


@pytest.mark.parametrize(
    ("kind", "t_ms", "message"),
    [
        ("speech", 0, "unknown transcript event kind 'speech'"),
        ("caller", -1, "t_ms must be >= 0"),
        ("caller", 1.5, "t_ms must be an int"),
        ("caller", True, "t_ms must be an int"),
    ],
)
def test_bad_input_is_a_record_error(kind: str, t_ms: object, message: str) -> None:
    tr = Transcript("c")
    with pytest.raises(RecordError, match=message) as info:
        tr.add(kind, t_ms)  # type: ignore[arg-type]
    assert isinstance(info.value, VoiceError)
    assert len(tr) == 0


def test_empty_call_id_is_rejected() -> None:
    with pytest.raises(RecordError):
        Transcript("")


def test_dict_round_trip_and_store_row_shape() -> None:
    ev = TranscriptEvent("c", 3, 1500, "agent", "Hi", {"interrupted": False})
    assert TranscriptEvent.from_dict(ev.to_dict()) == ev
    row = {
        "call_id": "c",
        "seq": 3,
        "t_ms": 1500,
        "kind": "agent",
        "text": "Hi",
        "data_json": '{"interrupted": false}',
    }
    assert TranscriptEvent.from_dict(row) == ev
    with pytest.raises(RecordError):
        TranscriptEvent.from_dict({**row, "kind": "bogus"})


def test_format_lines() -> None:
    tr = Transcript("c")
    tr.caller(61_250, "hello")
    tr.agent(62_000, "one two three four", heard_ms=500, audio_ms=1000, interrupted=True)
    tr.dtmf(63_000, "9")
    tr.tool_call(63_100, "lookup", "k1", '{"q":1}')
    tr.tool_result(63_200, "k1", error="timeout")
    assert tr.to_text().splitlines() == [
        "[01:01.250] caller: hello",
        "[01:02.000] agent (interrupted at 500 ms): one two",
        "[01:03.000] dtmf: 9",
        '[01:03.100] tool_call: lookup({"q":1})',
        "[01:03.200] tool_result: error: timeout",
    ]


@pytest.mark.parametrize(
    ("heard", "total", "expected"),
    [
        (0, 1000, ""),
        (1000, 1000, "alpha beta gamma"),
        (5000, 1000, "alpha beta gamma"),
        (625, 1000, "alpha beta"),  # 16 chars * 0.625 = 10: the space after "beta"
        (500, 1000, "alpha"),  # 8: inside "beta", back to the space before it
        (375, 1000, "alpha"),  # 6: the "b" of "beta"
        (300, 1000, ""),  # 4: inside "alpha", no whole word heard
        (10, 0, "alpha beta gamma"),  # unknown length: keep everything
    ],
)
def test_heard_text(heard: int, total: int, expected: str) -> None:
    assert heard_text("alpha beta gamma", heard, total) == expected
