"""The Media Streams codec (bridges/twilio/protocol.py; protocols.md §E.2, §E.3)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.base import DTMF_DIGITS
from bridges.twilio.errors import PROTOCOL_ERROR_REASONS, TwilioProtocolError
from bridges.twilio.protocol import (
    Clear,
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    TwilioMessage,
    Unknown,
    clear_message,
    encode_message,
    encode_outbound,
    mark_message,
    media_message,
    parse_message,
    parse_outbound,
)

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL = "CA0123456789abcdef0123456789abcdef"
ACCOUNT = "AC0123456789abcdef0123456789abcdef"

# Vectors: the messages of protocols.md §E.2, as Twilio sends them.
CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
START = (
    '{"event":"start","sequenceNumber":"1","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
    '"start":{"accountSid":"AC0123456789abcdef0123456789abcdef","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
    '"callSid":"CA0123456789abcdef0123456789abcdef","tracks":["inbound"],'
    '"customParameters":{"tenant":"acme","agent":"restaurant"},'
    '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}'
)
MEDIA = (
    '{"event":"media","sequenceNumber":"3","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
    '"media":{"track":"inbound","chunk":"2","timestamp":"5","payload":"/38AAQ=="}}'
)
DTMF = (
    '{"event":"dtmf","sequenceNumber":"5","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
    '"dtmf":{"track":"inbound_track","digit":"1"}}'
)
MARK = (
    '{"event":"mark","sequenceNumber":"4","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
    '"mark":{"name":"item_abc:17"}}'
)
STOP = (
    '{"event":"stop","sequenceNumber":"9","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
    '"stop":{"accountSid":"AC0123456789abcdef0123456789abcdef","callSid":"CA0123456789abcdef0123456789abcdef"}}'
)


def test_connected_vector() -> None:
    assert parse_message(CONNECTED) == Connected("Call", "1.0.0")
    assert encode_message(Connected()) == CONNECTED


def test_start_vector() -> None:
    start = parse_message(START)
    assert start == Start(
        stream_sid=SID,
        call_sid=CALL,
        account_sid=ACCOUNT,
        tracks=("inbound",),
        custom_parameters={"tenant": "acme", "agent": "restaurant"},
        media_format=MediaFormat("audio/x-mulaw", 8000, 1),
        sequence_number=1,
    )
    assert isinstance(start, Start) and start.media_format.is_mulaw_8k
    assert encode_message(start) == START


def test_media_vector_decodes_payload_bytes() -> None:
    media = parse_message(MEDIA.encode())  # bytes frames are accepted too
    assert media == Media(
        SID, chunk=2, timestamp_ms=5, payload=b"\xff\x7f\x00\x01", track="inbound", sequence_number=3
    )
    assert encode_message(media) == MEDIA


def test_dtmf_mark_stop_vectors() -> None:
    assert parse_message(DTMF) == Dtmf(SID, "1", "inbound_track", 5)
    assert parse_message(MARK) == Mark(SID, "item_abc:17", 4)
    assert parse_message(STOP) == Stop(SID, ACCOUNT, CALL, 9)
    for raw in (DTMF, MARK, STOP):
        assert encode_message(parse_message(raw)) == raw


def test_numbers_may_be_json_numbers_and_optional_fields_default() -> None:
    raw = json.dumps(
        {"event": "media", "streamSid": SID, "media": {"chunk": 7, "timestamp": 140, "payload": ""}}
    )
    assert parse_message(raw) == Media(SID, 7, 140, b"", "inbound", None)
    start = parse_message(
        json.dumps({"event": "start", "streamSid": SID, "start": {"callSid": CALL, "accountSid": ACCOUNT}})
    )
    assert start == Start(SID, CALL, ACCOUNT)
    # streamSid only inside "start" (older captures) is accepted.
    inner = json.dumps(
        {"event": "start", "start": {"streamSid": SID, "callSid": CALL, "accountSid": ACCOUNT}}
    )
    assert parse_message(inner) == Start(SID, CALL, ACCOUNT)
    assert parse_message(json.dumps({"event": "stop", "streamSid": SID})) == Stop(SID)


def test_custom_parameter_scalars_become_text() -> None:
    raw = {
        "event": "start",
        "streamSid": SID,
        "start": {"callSid": CALL, "accountSid": ACCOUNT, "customParameters": {"n": 3, "b": True}},
    }
    start = parse_message(json.dumps(raw))
    assert isinstance(start, Start)
    assert start.custom_parameters == {"n": "3", "b": "true"}


def test_unknown_event_is_a_value_not_an_exception() -> None:
    raw = '{"event":"transcription","streamSid":"MZ1","text":"hi"}'
    message = parse_message(raw)
    assert message == Unknown("transcription", {"event": "transcription", "streamSid": "MZ1", "text": "hi"})
    assert json.loads(encode_message(message)) == json.loads(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "malformed_json"),
        (b"\xff\xfe{}", "malformed_json"),
        ("", "malformed_json"),
        ("[1,2]", "not_an_object"),
        ('"media"', "not_an_object"),
        ('{"streamSid":"MZ1"}', "missing_field"),
        ('{"event":5}', "bad_field"),
        ('{"event":"media","streamSid":"MZ1"}', "missing_field"),
        ('{"event":"media","media":{"chunk":"1","timestamp":"0","payload":""}}', "missing_field"),
        ('{"event":"media","streamSid":"MZ1","media":{"timestamp":"0","payload":""}}', "missing_field"),
        ('{"event":"media","streamSid":"MZ1","media":{"chunk":"1","payload":""}}', "missing_field"),
        ('{"event":"media","streamSid":"MZ1","media":{"chunk":"1","timestamp":"0"}}', "missing_field"),
        (
            '{"event":"media","streamSid":"MZ1","media":{"chunk":"x","timestamp":"0","payload":""}}',
            "bad_field",
        ),
        (
            '{"event":"media","streamSid":"MZ1","media":{"chunk":"1","timestamp":"-5","payload":""}}',
            "bad_field",
        ),
        (
            '{"event":"media","streamSid":"MZ1","media":{"chunk":1.5,"timestamp":"0","payload":""}}',
            "bad_field",
        ),
        (
            '{"event":"media","streamSid":"MZ1","media":{"chunk":true,"timestamp":"0","payload":""}}',
            "bad_field",
        ),
        (
            '{"event":"media","streamSid":"MZ1","media":{"chunk":"1","timestamp":"0","payload":"!!"}}',
            "bad_base64",
        ),
        (
            '{"event":"media","streamSid":"MZ1","media":{"chunk":"1","timestamp":"0","payload":"AAA"}}',
            "bad_base64",
        ),
        (
            '{"event":"media","streamSid":"MZ1","media":{"chunk":"1","timestamp":"0","payload":5}}',
            "bad_field",
        ),
        ('{"event":"media","streamSid":"MZ1","media":[]}', "bad_field"),
        ('{"event":"media","streamSid":7,"media":{"chunk":"1","timestamp":"0","payload":""}}', "bad_field"),
        ('{"event":"dtmf","streamSid":"MZ1","dtmf":{"digit":"12"}}', "bad_digit"),
        ('{"event":"dtmf","streamSid":"MZ1","dtmf":{"digit":"x"}}', "bad_digit"),
        ('{"event":"dtmf","streamSid":"MZ1","dtmf":{}}', "missing_field"),
        ('{"event":"mark","streamSid":"MZ1","mark":{}}', "missing_field"),
        ('{"event":"mark","streamSid":"MZ1","mark":{"name":3}}', "bad_field"),
        ('{"event":"start","streamSid":"MZ1","start":{"callSid":"CA1"}}', "missing_field"),
        (
            '{"event":"start","streamSid":"MZ1","start":{"callSid":"CA1","accountSid":"AC1","tracks":"in"}}',
            "bad_field",
        ),
        (
            '{"event":"start","streamSid":"MZ1","start":{"callSid":"CA1","accountSid":"AC1",'
            '"customParameters":{"a":{"b":1}}}}',
            "bad_field",
        ),
        ('{"event":"stop","streamSid":"MZ1","sequenceNumber":"x"}', "bad_field"),
    ],
)
def test_documented_errors(raw: str | bytes, reason: str) -> None:
    with pytest.raises(TwilioProtocolError) as info:
        parse_message(raw)
    assert info.value.reason == reason
    assert info.value.reason in PROTOCOL_ERROR_REASONS
    assert str(info.value)


def test_error_names_the_event() -> None:
    with pytest.raises(TwilioProtocolError) as info:
        parse_message('{"event":"mark","streamSid":"MZ1"}')
    assert info.value.event == "mark"


def test_size_limit() -> None:
    with pytest.raises(TwilioProtocolError) as info:
        parse_message(CONNECTED, max_bytes=10)
    assert info.value.reason == "too_large"


def test_every_dtmf_key_parses() -> None:
    for digit in DTMF_DIGITS:
        raw = json.dumps(
            {"event": "dtmf", "streamSid": SID, "dtmf": {"track": "inbound_track", "digit": digit}}
        )
        assert parse_message(raw) == Dtmf(SID, digit)


# us -> Twilio ----------------------------------------------------------------------------------------------


def test_outbound_builders_exact_json() -> None:
    assert media_message(SID, b"\xff\x7f\x00\x01") == (
        '{"event":"media","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","media":{"payload":"/38AAQ=="}}'
    )
    assert mark_message(SID, "item_abc:17") == (
        '{"event":"mark","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","mark":{"name":"item_abc:17"}}'
    )
    assert clear_message(SID) == '{"event":"clear","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}'


def test_outbound_payload_is_raw_mulaw_without_header() -> None:
    frame = bytes(range(160))
    sent = json.loads(media_message(SID, frame))
    assert base64.b64decode(sent["media"]["payload"]) == frame


def test_parse_outbound_round_trip_and_errors() -> None:
    for message in (OutboundMedia(SID, b"\x01\x02"), OutboundMark(SID, "m1"), Clear(SID)):
        assert parse_outbound(encode_outbound(message)) == message
    assert parse_outbound('{"event":"bogus","streamSid":"MZ1"}') == Unknown(
        "bogus", {"event": "bogus", "streamSid": "MZ1"}
    )
    with pytest.raises(TwilioProtocolError) as info:
        parse_outbound('{"event":"media","streamSid":"MZ1","media":{"payload":"%%"}}')
    assert info.value.reason == "bad_base64"


# Fuzz -----------------------------------------------------------------------------------------------------

_json_leaf = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text()
_json = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
_fields = st.sampled_from(
    ["streamSid", "sequenceNumber", "start", "media", "dtmf", "mark", "stop", "chunk", "timestamp",
     "payload", "track", "digit", "name", "callSid", "accountSid", "tracks", "customParameters",
     "mediaFormat", "protocol"]
)  # fmt: skip
_events = st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "clear", "other"])
_values = (
    _json
    | st.text(alphabet="0123456789", min_size=1, max_size=6)
    | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
)
_shaped = st.fixed_dictionaries(
    {"event": _events},
    optional={
        "streamSid": st.text(max_size=8) | _json,
        "start": st.dictionaries(_fields, _values, max_size=6),
        "media": st.dictionaries(_fields, _values, max_size=5),
        "dtmf": st.dictionaries(_fields, _values, max_size=3),
        "mark": st.dictionaries(_fields, _values, max_size=3),
        "stop": st.dictionaries(_fields, _values, max_size=3),
        "sequenceNumber": _values,
    },
)


def _only_documented(raw: str | bytes) -> None:
    try:
        message = parse_message(raw)
    except TwilioProtocolError as exc:
        assert exc.reason in PROTOCOL_ERROR_REASONS
        return
    assert isinstance(message, Connected | Start | Media | Dtmf | Mark | Stop | Unknown)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_bytes_only_documented_errors(raw: bytes) -> None:
    _only_documented(raw)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_text_only_documented_errors(raw: str) -> None:
    _only_documented(raw)


@settings(max_examples=600, deadline=None)
@given(_json)
def test_fuzz_any_json_only_documented_errors(value: Any) -> None:
    _only_documented(json.dumps(value))


@settings(max_examples=1000, deadline=None)
@given(_shaped)
def test_fuzz_shaped_messages_only_documented_errors(value: dict[str, Any]) -> None:
    _only_documented(json.dumps(value))
    try:
        parse_outbound(json.dumps(value))
    except TwilioProtocolError as exc:
        assert exc.reason in PROTOCOL_ERROR_REASONS


_sids = st.text(alphabet="0123456789abcdef", min_size=1, max_size=34)
_seq = st.none() | st.integers(0, 10**9)
_messages: st.SearchStrategy[TwilioMessage] = st.one_of(
    st.builds(Connected, st.text(max_size=8), st.text(max_size=8)),
    st.builds(
        Start,
        _sids,
        _sids,
        _sids,
        st.lists(st.sampled_from(["inbound", "outbound"]), max_size=2).map(tuple),
        st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
        st.builds(MediaFormat, st.text(max_size=12), st.integers(0, 48000), st.integers(0, 2)),
        _seq,
    ),
    st.builds(
        Media,
        _sids,
        st.integers(0, 10**9),
        st.integers(0, 10**9),
        st.binary(max_size=320),
        st.text(max_size=9),
        _seq,
    ),
    st.builds(Dtmf, _sids, st.sampled_from(list(DTMF_DIGITS)), st.text(max_size=14), _seq),
    st.builds(Mark, _sids, st.text(max_size=40), _seq),
    st.builds(Stop, _sids, _sids, _sids, _seq),
)


@settings(max_examples=500, deadline=None)
@given(_messages)
def test_round_trip(message: TwilioMessage) -> None:
    assert parse_message(encode_message(message)) == message


@given(st.text(max_size=40), st.text(max_size=40), st.binary(max_size=400))
@settings(max_examples=200, deadline=None)
def test_per_frame_messages_are_the_general_encoding(stream_sid: str, name: str, payload: bytes) -> None:
    """media_message and mark_message take a formatted shortcut when nothing needs escaping; whatever the
    ids, the text is the one encode_outbound gives."""
    for sid in (stream_sid, "MZ" + "0123456789abcdef" * 2):
        assert media_message(sid, payload) == encode_outbound(OutboundMedia(sid, payload))
        assert mark_message(sid, name) == encode_outbound(OutboundMark(sid, name))
        assert mark_message(sid, "17:item_abc:340") == encode_outbound(OutboundMark(sid, "17:item_abc:340"))


_TEXTS = st.one_of(
    st.text(max_size=8), st.from_regex(r"[0-9]{1,20}", fullmatch=True), st.integers(-5, 10**19)
)
_VALUES = st.one_of(st.none(), st.booleans(), _TEXTS, st.just("//8="), st.just("//8"), st.just([]))


@given(
    sid=_VALUES,
    seq=_VALUES,
    chunk=_VALUES,
    stamp=_VALUES,
    payload=st.one_of(_VALUES, st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode())),
    track=_VALUES,
    body_is_dict=st.booleans(),
)
def test_media_fast_path_agrees_with_the_checked_path(
    sid: object, seq: object, chunk: object, stamp: object, payload: object, track: object, body_is_dict: bool
) -> None:
    from bridges.twilio.protocol import _media, _media_checked

    body = {"chunk": chunk, "timestamp": stamp, "payload": payload, "track": track}
    data = {"event": "media", "streamSid": sid, "sequenceNumber": seq, "media": body if body_is_dict else "x"}
    results = []
    for parse in (_media, _media_checked):
        try:
            results.append(parse(data))
        except TwilioProtocolError as exc:
            results.append((exc.reason, exc.message))
    assert results[0] == results[1]
