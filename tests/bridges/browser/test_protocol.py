"""The browser WebSocket protocol codec (bridges/browser/protocol.py, PROTOCOL.md)."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.browser import protocol as p
from bridges.browser.protocol import BrowserProtocolError, PageDtmf, PageHangup, PagePlayback

PROTOCOL_MD = Path(__file__).resolve().parents[3] / "bridges" / "browser" / "PROTOCOL.md"


# Page -> server --------------------------------------------------------------------------------------------


def test_parse_playback_dtmf_hangup() -> None:
    assert p.parse_page_message('{"type":"playback","item_id":"item_1","played_ms":120}') == PagePlayback(
        "item_1", 120
    )
    assert p.parse_page_message(b'{"type":"dtmf","digit":"5"}') == PageDtmf("5")
    assert p.parse_page_message('{"type":"dtmf","digit":"a"}') == PageDtmf("A")
    assert p.parse_page_message('{"type":"hangup"}') == PageHangup()


def test_unknown_fields_are_ignored_and_whole_float_ms_accepted() -> None:
    msg = {"type": "playback", "item_id": "i", "played_ms": 40.0, "extra": [1, 2]}
    assert p.parse_page_message(json.dumps(msg)) == PagePlayback("i", 40)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('{"no": "type"}', "bad_message"),
        ('{"type": 5}', "bad_message"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "playback", "played_ms": 10}', "bad_field"),
        ('{"type": "playback", "item_id": "", "played_ms": 10}', "bad_field"),
        ('{"type": "playback", "item_id": 7, "played_ms": 10}', "bad_field"),
        ('{"type": "playback", "item_id": "i"}', "bad_field"),
        ('{"type": "playback", "item_id": "i", "played_ms": -1}', "bad_field"),
        ('{"type": "playback", "item_id": "i", "played_ms": 1.5}', "bad_field"),
        ('{"type": "playback", "item_id": "i", "played_ms": true}', "bad_field"),
        ('{"type": "playback", "item_id": "i", "played_ms": "10"}', "bad_field"),
        ('{"type": "playback", "item_id": "i", "played_ms": 1e12}', "bad_field"),
        ('{"type": "dtmf"}', "bad_field"),
        ('{"type": "dtmf", "digit": "55"}', "bad_field"),
        ('{"type": "dtmf", "digit": "E"}', "bad_field"),
        ('{"type": "dtmf", "digit": 5}', "bad_field"),
    ],
)
def test_malformed_messages_raise_with_a_code(raw: str | bytes, code: str) -> None:
    with pytest.raises(BrowserProtocolError) as info:
        p.parse_page_message(raw)
    assert info.value.code == code
    assert info.value.message


def test_long_item_id_and_oversized_message_are_refused() -> None:
    with pytest.raises(BrowserProtocolError) as info:
        p.parse_page_message(json.dumps({"type": "playback", "item_id": "x" * 200, "played_ms": 1}))
    assert info.value.code == "bad_field"
    with pytest.raises(BrowserProtocolError) as info:
        p.parse_page_message(json.dumps({"type": "hangup", "pad": "x" * 5000}))
    assert info.value.code == "too_large"
    assert (
        p.parse_page_message(json.dumps({"type": "hangup", "pad": "x" * 5000}), max_bytes=10_000)
        == PageHangup()
    )


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_parse_never_raises_anything_but_the_protocol_error(raw: str | bytes) -> None:
    with contextlib.suppress(BrowserProtocolError):
        p.parse_page_message(raw)


@given(
    st.dictionaries(
        st.sampled_from(["type", "item_id", "played_ms", "digit"]),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.lists(st.integers())
        ),
    )
)
def test_parse_arbitrary_objects(msg: dict[str, Any]) -> None:
    with contextlib.suppress(BrowserProtocolError):
        p.parse_page_message(json.dumps(msg))


def test_check_audio() -> None:
    frame = bytes(960)
    assert p.check_audio(frame) is frame
    assert p.check_audio(bytes(480)) == bytes(480)
    assert p.check_audio(bytes(100)) == bytes(100)  # any whole samples are taken
    for bad, code in ((b"", "bad_audio"), (bytes(961), "bad_audio"), (bytes(48_002), "too_large")):
        with pytest.raises(BrowserProtocolError) as info:
            p.check_audio(bad)
        assert info.value.code == code
    assert p.check_audio(bytes(96_000), max_bytes=96_000)


def test_protocol_error_is_a_remote_protocol_error() -> None:
    from voice.errors import RemoteProtocolError, VoiceError

    err = BrowserProtocolError("bad_json", "nope")
    assert isinstance(err, RemoteProtocolError)
    assert isinstance(err, VoiceError)
    assert str(err) == "nope"


# Server -> page --------------------------------------------------------------------------------------------


def test_builders() -> None:
    assert p.call_started("call_1", "restaurant") == {
        "type": "call.started",
        "call_id": "call_1",
        "agent": "restaurant",
        "audio": {"format": "pcm16", "rate": 24000, "channels": 1, "frame_ms": 20},
    }
    assert p.agent_item("item_9") == {"type": "agent.item", "item_id": "item_9"}
    assert p.transcript_delta("agent", "i", "Hel") == {
        "type": "transcript.delta",
        "role": "agent",
        "item_id": "i",
        "delta": "Hel",
    }
    assert p.transcript_done("caller", "i", "hi") == {
        "type": "transcript.done",
        "role": "caller",
        "item_id": "i",
        "text": "hi",
    }
    assert p.transcript_done("agent", "i", "He", interrupted=True)["interrupted"] is True
    assert p.clear() == {"type": "clear"}
    assert p.cost("0.01", None, {"a": 1}) == {
        "type": "cost",
        "total_usd": "0.01",
        "per_minute_usd": None,
        "breakdown": {"a": 1},
    }
    assert p.dtmf_ack("5") == {"type": "dtmf.ack", "digit": "5"}
    assert p.tool("book_table", "running") == {"type": "tool", "name": "book_table", "status": "running"}
    assert p.error("bad_json", "x") == {"type": "error", "code": "bad_json", "message": "x"}
    assert p.call_ended("caller_hangup", "call_1") == {
        "type": "call.ended",
        "reason": "caller_hangup",
        "call_id": "call_1",
    }


def test_from_control_maps_the_call_vocabulary() -> None:
    def f(msg: dict[str, Any]) -> dict[str, Any] | None:
        return p.from_control(msg, call_id="call_1", agent="default")

    assert f({"type": "call_start", "agent": "restaurant"}) == p.call_started("call_1", "restaurant")
    assert f({"type": "call_start"}) == p.call_started("call_1", "default")
    assert f({"type": "transcript", "role": "agent", "item_id": "i", "delta": "He"}) == p.transcript_delta(
        "agent", "i", "He"
    )
    assert f(
        {"type": "transcript", "role": "caller", "item_id": "u", "text": "hi", "final": True}
    ) == p.transcript_done("caller", "u", "hi")
    assert f(
        {
            "type": "transcript",
            "role": "agent",
            "item_id": "i",
            "text": "He",
            "final": True,
            "interrupted": True,
        }
    ) == p.transcript_done("agent", "i", "He", interrupted=True)
    assert f({"type": "dtmf", "digit": "2", "source": "leg"}) == p.dtmf_ack("2")
    assert f({"type": "call_end", "reason": "budget"}) == p.call_ended("budget", "call_1")
    assert f({"type": "barge_in", "cause": "speech"}) is None
    assert f({"type": "something_new"}) is None
    cost = p.cost("1", "2", {})
    assert f(cost) == cost
    assert f(p.tool("x", "done")) == p.tool("x", "done")
    assert f(p.error("upstream", "lost")) == p.error("upstream", "lost")


# PROTOCOL.md -----------------------------------------------------------------------------------------------


def _json_examples() -> list[dict[str, Any]]:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    examples: list[dict[str, Any]] = []
    for block in blocks:
        for line in block.strip().splitlines():
            line = line.strip()
            if line.startswith("{"):
                examples.append(json.loads(line))
    return examples


def test_protocol_md_examples_are_what_the_codec_reads_and_writes() -> None:
    examples = _json_examples()
    types = {e["type"] for e in examples}
    page = {"playback", "dtmf", "hangup"}
    server = {
        "call.started",
        "agent.item",
        "transcript.delta",
        "transcript.done",
        "clear",
        "cost",
        "dtmf.ack",
        "tool",
        "error",
        "call.ended",
    }
    assert page | server <= types
    for example in examples:
        if example["type"] in page:
            p.parse_page_message(json.dumps(example))  # every documented page message parses
        else:
            assert example["type"] in server
            if example["type"] == "call.started":
                assert example["audio"] == p.AUDIO_FORMAT
