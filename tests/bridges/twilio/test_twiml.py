"""TwiML builders (bridges/twilio/twiml.py; protocols.md §E.1, §E.5)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from bridges.twilio.errors import InvalidTransferTarget, TwimlError
from bridges.twilio.twiml import (
    TransferTarget,
    connect_stream,
    dial,
    hangup,
    parse_transfer_target,
    reject,
    say_and_hangup,
)

DECL = '<?xml version="1.0" encoding="UTF-8"?>'


def test_connect_stream_exact_document() -> None:
    xml = connect_stream(
        "wss://voice.example.com/twilio/stream", {"agent": "restaurant", "direction": "inbound"}
    )
    assert xml == (
        DECL + '<Response><Connect><Stream url="wss://voice.example.com/twilio/stream">'
        '<Parameter name="agent" value="restaurant" /><Parameter name="direction" value="inbound" />'
        "</Stream></Connect></Response>"
    )


def test_connect_stream_escapes_and_options() -> None:
    xml = connect_stream(
        "wss://h/twilio/stream",
        {"from": '+1 <555> & "x"'},
        name="call",
        status_callback="https://h/twilio/stream-status",
        action="https://h/after",
    )
    root = ET.fromstring(xml.removeprefix(DECL))
    connect = root.find("Connect")
    assert connect is not None and connect.get("action") == "https://h/after"
    stream = root.find("Connect/Stream")
    assert stream is not None
    assert stream.get("name") == "call" and stream.get("statusCallback") == "https://h/twilio/stream-status"
    param = root.find("Connect/Stream/Parameter")
    assert param is not None and param.get("value") == '+1 <555> & "x"'
    assert list(root) == [connect]  # nothing follows <Connect>: closing the socket ends the call


@pytest.mark.parametrize(
    "url",
    [
        "https://h/twilio/stream",
        "wss://h/twilio/stream?agent=x",
        "wss:///nohost",
        "wss://h/s#frag",
        "ftp://h/s",
    ],
)
def test_connect_stream_refuses_urls_twilio_would_refuse(url: str) -> None:
    with pytest.raises(TwimlError):
        connect_stream(url)


def test_connect_stream_refuses_empty_parameter_name() -> None:
    with pytest.raises(TwimlError):
        connect_stream("wss://h/s", {"": "x"})


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("+15551230000", TransferTarget("number", "+15551230000")),
        (" +1 (555) 123-0000 ", TransferTarget("number", "+15551230000")),
        ("tel:+442071838750", TransferTarget("number", "+442071838750")),
        ("sip:agent@pbx.example.com", TransferTarget("sip", "sip:agent@pbx.example.com")),
        (
            "SIPS:desk@pbx.example.com;transport=tls",
            TransferTarget("sip", "SIPS:desk@pbx.example.com;transport=tls"),
        ),
        ("client:alice", TransferTarget("client", "alice")),
    ],
)
def test_parse_transfer_target(target: str, expected: TransferTarget) -> None:
    assert parse_transfer_target(target) == expected


@pytest.mark.parametrize(
    "target",
    ["", "5551230000", "+0123", "+1555123000012345", "sip:", "sip:a b@c", "client:", "client:a b", "bob"],
)
def test_invalid_transfer_targets(target: str) -> None:
    with pytest.raises(InvalidTransferTarget):
        parse_transfer_target(target)
    with pytest.raises(ValueError):  # it is also a ValueError
        dial(target)


def test_dial_number_exact_document() -> None:
    assert dial("+15551230000", caller_id="+15559870000", timeout_s=20) == (
        DECL + '<Response><Dial answerOnBridge="true" callerId="+15559870000" timeout="20">'
        "<Number>+15551230000</Number></Dial></Response>"
    )


def test_dial_sip_and_client() -> None:
    sip = ET.fromstring(dial("sip:agent@pbx.example.com").removeprefix(DECL))
    node = sip.find("Dial/Sip")
    assert node is not None and node.text == "sip:agent@pbx.example.com"
    client = ET.fromstring(dial("client:alice", answer_on_bridge=False).removeprefix(DECL))
    dial_node = client.find("Dial")
    assert dial_node is not None and dial_node.get("answerOnBridge") is None
    identity = client.find("Dial/Client")
    assert identity is not None and identity.text == "alice"


def test_hangup_reject_say() -> None:
    assert hangup() == DECL + "<Response><Hangup /></Response>"
    assert reject() == DECL + '<Response><Reject reason="busy" /></Response>'
    assert say_and_hangup("All lines are busy & full.") == (
        DECL + "<Response><Say>All lines are busy &amp; full.</Say><Hangup /></Response>"
    )
