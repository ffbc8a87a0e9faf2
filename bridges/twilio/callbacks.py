"""Twilio's webhook requests, parsed (protocols.md §E.4, §E.5). Pure: form fields in, dataclasses out.

- :func:`parse_voice_request`: the incoming-call webhook (``POST /twilio/voice``): ``CallSid``, ``From``,
  ``To``, ``Direction``, …; :func:`choose_agent` picks the agent (explicit parameter, then the called number's
  agent from settings, then the default).
- :func:`parse_status_callback`: call progress and answering-machine results (``POST /twilio/status``):
  ``CallStatus`` (``initiated|queued|ringing|in-progress|completed|busy|failed|no-answer|canceled``),
  ``CallDuration``, ``AnsweredBy``, ``SequenceNumber``, error fields. :attr:`CallStatusUpdate.final` tells
  whether the call is over and :attr:`CallStatusUpdate.outcome` is the end reason to record.

Form values arrive as strings; a number that does not parse is kept as ``None`` rather than refusing the
callback (the field list is partly unverified, §E.5). A request without ``CallSid`` raises
:class:`TwilioProtocolError` (``missing_field``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from bridges.twilio.errors import TwilioProtocolError
from bridges.twilio.settings import TwilioSettings

__all__ = [
    "CALL_STATUSES",
    "FINAL_STATUSES",
    "CallStatusUpdate",
    "VoiceRequest",
    "choose_agent",
    "parse_status_callback",
    "parse_voice_request",
]

CALL_STATUSES: Final = frozenset(
    {"initiated", "queued", "ringing", "in-progress", "completed", "busy", "failed", "no-answer", "canceled"}
)
FINAL_STATUSES: Final = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


def _first(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return None if value is None else str(value)


def _number(params: Mapping[str, Any], key: str) -> int | None:
    text = _first(params, key)
    if text is None or not text.strip().isdigit() or not text.strip().isascii():
        return None
    return int(text.strip())


def _call_sid(params: Mapping[str, Any], what: str) -> str:
    sid = _first(params, "CallSid")
    if not sid:
        raise TwilioProtocolError("missing_field", f"{what} without CallSid")
    return sid


@dataclass(frozen=True, slots=True)
class VoiceRequest:
    """The incoming-call webhook's fields (Twilio's names in the docstring of each)."""

    call_sid: str
    account_sid: str | None
    from_: str | None
    to: str | None
    direction: str | None
    call_status: str | None
    params: Mapping[str, str] = field(default_factory=dict)
    """Every form field (first value of each), for the call's metadata."""


def parse_voice_request(params: Mapping[str, Any]) -> VoiceRequest:
    """Parse the ``POST /twilio/voice`` form (a dict or a multi-dict such as Starlette's ``FormData``)."""
    return VoiceRequest(
        call_sid=_call_sid(params, "voice webhook"),
        account_sid=_first(params, "AccountSid"),
        from_=_first(params, "From"),
        to=_first(params, "To"),
        direction=_first(params, "Direction"),
        call_status=_first(params, "CallStatus"),
        params={key: _first(params, key) or "" for key in params},
    )


def choose_agent(
    request: VoiceRequest,
    settings: TwilioSettings,
    *,
    requested: str | None = None,
    default: str,
) -> str:
    """The agent for an incoming call: ``requested`` (e.g. ``?agent=NAME`` on the signed webhook URL), else
    the agent configured for the called number (``VOICE_TWILIO_NUMBERS``), else ``default``."""
    if requested:
        return requested
    return settings.agent_for_number(request.to) or default


@dataclass(frozen=True, slots=True)
class CallStatusUpdate:
    """One status or answering-machine callback (§E.5)."""

    call_sid: str
    status: str | None
    answered_by: str | None = None
    duration_s: int | None = None
    sequence_number: int | None = None
    direction: str | None = None
    from_: str | None = None
    to: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    sip_response_code: int | None = None
    machine_detection_duration_ms: int | None = None

    @property
    def final(self) -> bool:
        """The call is over (``completed``, ``busy``, ``failed``, ``no-answer``, ``canceled``)."""
        return self.status in FINAL_STATUSES

    @property
    def outcome(self) -> str | None:
        """The end reason to record for a final status (``no-answer`` -> ``no_answer``), else ``None``."""
        return self.status.replace("-", "_") if self.status in FINAL_STATUSES and self.status else None

    @property
    def is_machine_result(self) -> bool:
        """This callback carries an answering-machine detection result."""
        return self.answered_by is not None

    def to_dict(self) -> dict[str, Any]:
        """The non-empty fields, for a transcript or record entry."""
        data = {
            "call_sid": self.call_sid,
            "status": self.status,
            "answered_by": self.answered_by,
            "duration_s": self.duration_s,
            "sequence_number": self.sequence_number,
            "direction": self.direction,
            "from": self.from_,
            "to": self.to,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "sip_response_code": self.sip_response_code,
            "machine_detection_duration_ms": self.machine_detection_duration_ms,
        }
        return {key: value for key, value in data.items() if value is not None}


def parse_status_callback(params: Mapping[str, Any]) -> CallStatusUpdate:
    """Parse a ``POST /twilio/status`` form (call progress or asynchronous AMD result)."""
    status = _first(params, "CallStatus")
    return CallStatusUpdate(
        call_sid=_call_sid(params, "status callback"),
        status=status or None,
        answered_by=_first(params, "AnsweredBy"),
        duration_s=_number(params, "CallDuration"),
        sequence_number=_number(params, "SequenceNumber"),
        direction=_first(params, "Direction"),
        from_=_first(params, "From"),
        to=_first(params, "To"),
        error_code=_first(params, "ErrorCode"),
        error_message=_first(params, "ErrorMessage"),
        sip_response_code=_number(params, "SipResponseCode"),
        machine_detection_duration_ms=_number(params, "MachineDetectionDuration"),
    )
