"""Webhook forms and settings (bridges/twilio/callbacks.py, settings.py; protocols.md §E.4, §E.5)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from starlette.datastructures import FormData

from bridges.twilio.callbacks import (
    FINAL_STATUSES,
    CallStatusUpdate,
    choose_agent,
    parse_status_callback,
    parse_voice_request,
)
from bridges.twilio.errors import TwilioProtocolError
from bridges.twilio.settings import TwilioSettings
from voice.errors import ConfigError

VOICE_FORM = {
    "AccountSid": "AC" + "1" * 32,
    "ApiVersion": "2010-04-01",
    "CallSid": "CA" + "2" * 32,
    "CallStatus": "ringing",
    "Direction": "inbound",
    "From": "+15559870000",
    "To": "+15551230000",
}


def test_parse_voice_request() -> None:
    request = parse_voice_request(FormData(list(VOICE_FORM.items())))
    assert request.call_sid == VOICE_FORM["CallSid"]
    assert (request.from_, request.to, request.direction, request.call_status) == (
        "+15559870000",
        "+15551230000",
        "inbound",
        "ringing",
    )
    assert request.params["ApiVersion"] == "2010-04-01"
    with pytest.raises(TwilioProtocolError) as info:
        parse_voice_request({"From": "+1"})
    assert info.value.reason == "missing_field"


def test_choose_agent() -> None:
    settings = TwilioSettings(numbers={"+1 (555) 123-0000": "sales", "+15550000000": "support"})
    request = parse_voice_request(VOICE_FORM)
    assert choose_agent(request, settings, default="restaurant") == "sales"  # number match ignoring format
    assert choose_agent(request, settings, requested="billing", default="restaurant") == "billing"
    other = parse_voice_request({**VOICE_FORM, "To": "+15557770000"})
    assert choose_agent(other, settings, default="restaurant") == "restaurant"
    assert settings.agent_for_number(None) is None


def test_status_callback_progress_and_outcome() -> None:
    ringing = parse_status_callback({"CallSid": "CA1", "CallStatus": "ringing", "SequenceNumber": "1"})
    assert ringing.status == "ringing" and not ringing.final and ringing.outcome is None
    done = parse_status_callback(
        {"CallSid": "CA1", "CallStatus": "no-answer", "CallDuration": "0", "SequenceNumber": "3"}
    )
    assert done.final and done.outcome == "no_answer" and done.duration_s == 0 and done.sequence_number == 3
    assert done.to_dict() == {"call_sid": "CA1", "status": "no-answer", "duration_s": 0, "sequence_number": 3}
    for status in FINAL_STATUSES:
        assert parse_status_callback({"CallSid": "CA1", "CallStatus": status}).final


def test_status_callback_answering_machine_and_errors() -> None:
    amd = parse_status_callback(
        {"CallSid": "CA1", "AnsweredBy": "machine_end_beep", "MachineDetectionDuration": "4321"}
    )
    assert amd == CallStatusUpdate(
        call_sid="CA1", status=None, answered_by="machine_end_beep", machine_detection_duration_ms=4321
    )
    assert amd.is_machine_result and not amd.final
    failed = parse_status_callback(
        {"CallSid": "CA1", "CallStatus": "failed", "ErrorCode": "13224", "SipResponseCode": "404",
         "CallDuration": "n/a"}
    )  # fmt: skip
    assert failed.error_code == "13224" and failed.sip_response_code == 404 and failed.duration_s is None
    with pytest.raises(TwilioProtocolError):
        parse_status_callback({"CallStatus": "completed"})


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "9" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "secret-token")
    monkeypatch.setenv("VOICE_PUBLIC_URL", "https://voice.example.com/prefix/")
    monkeypatch.setenv("VOICE_TWILIO_NUMBERS", '{"+15551230000": "sales"}')
    monkeypatch.setenv("VOICE_TWILIO_MACHINE_DETECTION", "DetectMessageEnd")
    monkeypatch.setenv("VOICE_TWILIO_WEBHOOK_KEY", "shared")
    settings = TwilioSettings()
    assert settings.require_credentials() == ("AC" + "9" * 32, "secret-token")
    assert settings.public_url == "https://voice.example.com/prefix"
    assert settings.voice_url == "https://voice.example.com/prefix/twilio/voice"
    assert settings.status_url == "https://voice.example.com/prefix/twilio/status"
    assert settings.stream_url == "wss://voice.example.com/prefix/twilio/stream"
    assert settings.url("/twilio/voice", "agent=x") == "https://voice.example.com/prefix/twilio/voice?agent=x"
    assert settings.numbers == {"+15551230000": "sales"}
    assert settings.machine_detection == "DetectMessageEnd"
    assert settings.shared_key() == "shared" and settings.secret_token() == "secret-token"
    assert "secret-token" not in repr(settings)


def test_settings_defaults_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "VOICE_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = TwilioSettings()
    assert settings.public_url is None and settings.secret_token() is None and settings.shared_key() is None
    with pytest.raises(ConfigError):
        settings.require_credentials()
    with pytest.raises(ConfigError):
        _ = settings.stream_url
    assert (
        TwilioSettings(public_url="http://127.0.0.1:8080").stream_url == "ws://127.0.0.1:8080/twilio/stream"
    )
    assert TwilioSettings(public_url="  ").public_url is None
    for bad in ("voice.example.com", "ftp://h", "https://h/?q=1"):
        with pytest.raises(ValidationError):
            TwilioSettings(public_url=bad)
    with pytest.raises(ValidationError):
        TwilioSettings(ring_timeout_s=1)
