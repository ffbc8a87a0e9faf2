"""Outbound calls and live-call updates through the real ``twilio`` client (bridges/twilio/rest.py,
outbound.py; protocols.md §E.5), against a local stand-in for Twilio's API on 127.0.0.1."""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from bridges.twilio.errors import InvalidTransferTarget, TwilioRestError, TwimlError
from bridges.twilio.outbound import outbound_request, place_call
from bridges.twilio.rest import CallInfo, OutboundCallRequest, TwilioRest
from bridges.twilio.settings import TwilioSettings
from bridges.twilio.twiml import connect_stream
from tests.bridges.twilio.fake_api import FakeTwilioApi, fake_twilio_api
from voice.errors import ConfigError

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "auth-token-for-tests"
CALLS = f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
STREAM = "wss://voice.example.com/twilio/stream"


@pytest.fixture
def api() -> Iterator[FakeTwilioApi]:
    with fake_twilio_api() as server:
        yield server


@pytest.fixture
def rest(api: FakeTwilioApi) -> TwilioRest:
    return TwilioRest(ACCOUNT, TOKEN, api_base=api.base_url, timeout_s=5)


def _settings(api: FakeTwilioApi, **extra: object) -> TwilioSettings:
    return TwilioSettings(
        account_sid=ACCOUNT,
        auth_token=TOKEN,
        public_url="https://voice.example.com",
        api_base=api.base_url,
        from_number="+15559870000",
        **extra,  # type: ignore[arg-type]
    )


def test_create_call_sends_exact_form(api: FakeTwilioApi, rest: TwilioRest) -> None:
    twiml = connect_stream(STREAM, {"agent": "restaurant", "direction": "outbound"})
    request = OutboundCallRequest(
        to="+15551230000",
        from_="+15559870000",
        twiml=twiml,
        status_callback="https://voice.example.com/twilio/status",
        machine_detection="DetectMessageEnd",
        machine_detection_timeout_s=25,
        ring_timeout_s=20,
        time_limit_s=600,
    )
    info = rest.create_call_sync(request)
    assert info.status == "queued" and info.sid.startswith("CA")
    assert info.to == "+15551230000" and info.from_ == "+15559870000"
    (sent,) = api.requests
    assert sent.method == "POST" and sent.path == CALLS
    assert sent.basic_auth == (ACCOUNT, TOKEN)
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert sent.field("To") == "+15551230000"
    assert sent.field("From") == "+15559870000"
    assert sent.field("Twiml") == twiml
    assert sent.field("StatusCallback") == "https://voice.example.com/twilio/status"
    assert sent.field("StatusCallbackMethod") == "POST"
    assert sent.fields("StatusCallbackEvent") == ["initiated", "ringing", "answered", "completed"]
    assert sent.field("MachineDetection") == "DetectMessageEnd"
    assert sent.field("MachineDetectionTimeout") == "25"
    assert sent.field("AsyncAmd") == "true"
    assert sent.field("AsyncAmdStatusCallback") == "https://voice.example.com/twilio/status"
    assert sent.field("AsyncAmdStatusCallbackMethod") == "POST"
    assert sent.field("Timeout") == "20"
    assert sent.field("TimeLimit") == "600"
    assert sent.keys == {
        "To", "From", "Twiml", "StatusCallback", "StatusCallbackMethod", "StatusCallbackEvent",
        "MachineDetection", "MachineDetectionTimeout", "AsyncAmd", "AsyncAmdStatusCallback",
        "AsyncAmdStatusCallbackMethod", "Timeout", "TimeLimit",
    }  # fmt: skip


def test_create_call_without_options_sends_only_the_basics(api: FakeTwilioApi, rest: TwilioRest) -> None:
    rest.create_call_sync(OutboundCallRequest(to="+15551230000", from_="+15559870000", twiml="<Response/>"))
    (sent,) = api.requests
    assert sent.keys == {"To", "From", "Twiml"}


def test_refused_call_returns_twilios_error(api: FakeTwilioApi, rest: TwilioRest) -> None:
    message = "The 'To' number +1555 is not a valid phone number."
    api.respond(
        400,
        {
            "code": 21211,
            "message": message,
            "more_info": "https://www.twilio.com/docs/errors/21211",
            "status": 400,
        },
    )
    with pytest.raises(TwilioRestError) as info:
        rest.create_call_sync(OutboundCallRequest(to="+1555", from_="+15559870000", twiml="<Response/>"))
    error = info.value
    assert error.status == 400 and error.code == 21211
    assert error.twilio_message == message
    assert error.more_info == "https://www.twilio.com/docs/errors/21211"
    assert str(error) == (
        f"Twilio refused the request (HTTP 400, error 21211): {message} "
        "(see https://www.twilio.com/docs/errors/21211)"
    )
    assert error.to_dict()["twilio_code"] == 21211
    assert error.method == "POST" and error.uri is not None and error.uri.endswith("/Calls.json")


def test_error_without_a_twilio_code(api: FakeTwilioApi, rest: TwilioRest) -> None:
    api.respond(503, {"message": "Service Unavailable"})
    with pytest.raises(TwilioRestError) as info:
        rest.create_call_sync(
            OutboundCallRequest(to="+15551230000", from_="+15559870000", twiml="<Response/>")
        )
    assert info.value.status == 503 and info.value.code is None
    assert info.value.twilio_message == "Service Unavailable"
    assert str(info.value) == "Twilio refused the request (HTTP 503): Service Unavailable"


def test_rfc9457_error_is_mapped_too(api: FakeTwilioApi, rest: TwilioRest) -> None:
    api.respond(
        403,
        {"type": "https://www.twilio.com/docs/errors/20003", "title": "Permission denied", "status": 403,
         "code": 20003, "detail": "Your account is suspended"},
    )  # fmt: skip
    with pytest.raises(TwilioRestError) as info:
        rest.create_call_sync(
            OutboundCallRequest(to="+15551230000", from_="+15559870000", twiml="<Response/>")
        )
    assert (info.value.status, info.value.code) == (403, 20003)
    assert info.value.twilio_message == "Your account is suspended"


def test_unreachable_api_is_a_clear_error() -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rest = TwilioRest(ACCOUNT, TOKEN, api_base=f"http://127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(TwilioRestError) as info:
        rest.create_call_sync(
            OutboundCallRequest(to="+15551230000", from_="+15559870000", twiml="<Response/>")
        )
    assert info.value.status is None
    assert str(info.value).startswith("Twilio could not be reached: ConnectionError")


def test_twiml_over_the_limit_is_refused_before_sending(api: FakeTwilioApi, rest: TwilioRest) -> None:
    with pytest.raises(TwimlError):
        rest.create_call_sync(OutboundCallRequest(to="+15551230000", from_="+1555", twiml="x" * 4001))
    assert api.requests == []


async def test_update_transfer_and_hangup(api: FakeTwilioApi, rest: TwilioRest) -> None:
    sid = "CA" + "f" * 32
    info = await rest.transfer(sid, "+15550001111", caller_id="+15559870000")
    assert info == CallInfo(sid, "in-progress", None, None, "outbound-api", ACCOUNT)
    done = await rest.hangup_call(sid)
    assert done.status == "completed"
    transfer, hangup = api.requests
    assert transfer.path == hangup.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json"
    assert transfer.keys == {"Twiml"}
    root = ET.fromstring(transfer.field("Twiml") or "")
    number = root.find("Dial/Number")
    assert number is not None and number.text == "+15550001111"
    dial_node = root.find("Dial")
    assert dial_node is not None and dial_node.get("callerId") == "+15559870000"
    assert hangup.form == [("Status", "completed")]
    with pytest.raises(ValueError):
        await rest.update_call(sid)


async def test_update_error_is_mapped(api: FakeTwilioApi, rest: TwilioRest) -> None:
    api.respond(404, {"code": 20404, "message": "The requested resource was not found", "status": 404})
    with pytest.raises(TwilioRestError) as info:
        await rest.hangup_call("CA" + "0" * 32)
    assert (info.value.status, info.value.code) == (404, 20404)


def test_api_base_with_a_path_prefix(api: FakeTwilioApi) -> None:
    rest = TwilioRest(ACCOUNT, TOKEN, api_base=api.base_url + "/proxy/twilio/")
    api.respond(201, {"sid": "CA1", "status": "queued"})
    rest.create_call_sync(OutboundCallRequest(to="+15551230000", from_="+15559870000", twiml="<Response/>"))
    assert api.requests[0].path == "/proxy/twilio" + CALLS
    with pytest.raises(ValueError):
        TwilioRest(ACCOUNT, TOKEN, api_base="not a url")


# Outbound requests from settings ------------------------------------------------------------------------


def test_outbound_request_from_settings(api: FakeTwilioApi) -> None:
    settings = _settings(api, machine_detection="Enable", ring_timeout_s=25)
    request = outbound_request(settings, to="+1 555 123 0000", agent="restaurant", call_id="call_abc123")
    assert request.to == "+15551230000" and request.from_ == "+15559870000"
    assert request.status_callback == "https://voice.example.com/twilio/status"
    assert request.machine_detection == "Enable" and request.machine_detection_timeout_s == 30
    assert request.ring_timeout_s == 25
    root = ET.fromstring(request.twiml.split("?>", 1)[1])
    stream = root.find("Connect/Stream")
    assert stream is not None and stream.get("url") == STREAM
    params = {p.get("name"): p.get("value") for p in root.iter("Parameter")}
    assert params == {
        "agent": "restaurant",
        "direction": "outbound",
        "to": "+15551230000",
        "from": "+15559870000",
        "call_id": "call_abc123",
    }
    off = outbound_request(settings, to="client:alice", agent="a", machine_detection="off", ring_timeout_s=15)
    assert off.to == "client:alice" and off.machine_detection is None and off.ring_timeout_s == 15


def test_outbound_request_errors(api: FakeTwilioApi) -> None:
    with pytest.raises(ConfigError):
        outbound_request(TwilioSettings(public_url="https://h"), to="+15551230000", agent="a")
    with pytest.raises(ConfigError):
        outbound_request(TwilioSettings(from_number="+15559870000"), to="+15551230000", agent="a")
    with pytest.raises(InvalidTransferTarget):
        outbound_request(_settings(api), to="12345", agent="a")
    with pytest.raises(ConfigError):
        TwilioRest.from_settings(TwilioSettings())


async def test_place_call_end_to_end(api: FakeTwilioApi) -> None:
    settings = _settings(api)
    info = await place_call(
        TwilioRest.from_settings(settings),
        settings,
        to="+15551230000",
        agent="restaurant",
        from_="+15550000001",
    )
    assert info.status == "queued"
    (sent,) = api.requests
    assert sent.field("From") == "+15550000001"
    assert sent.field("Timeout") == "30"
    assert "MachineDetection" not in sent.keys
    assert STREAM in (sent.field("Twiml") or "")


async def test_place_call_refused(api: FakeTwilioApi) -> None:
    settings = _settings(api)
    api.respond(
        400,
        {"code": 21210, "message": "The source phone number provided is not yet verified.", "status": 400},
    )
    with pytest.raises(TwilioRestError) as info:
        await place_call(TwilioRest.from_settings(settings), settings, to="+15551230000", agent="a")
    assert info.value.code == 21210
    assert "not yet verified" in str(info.value)
