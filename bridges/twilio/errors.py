"""Errors of the Twilio bridge, all in the project's one tree (:mod:`voice.errors`).

- :class:`TwilioProtocolError` (a :class:`~voice.errors.RemoteProtocolError`): a Media Streams message from
  Twilio could not be understood (protocols.md §E.2). ``reason`` is one of :data:`PROTOCOL_ERROR_REASONS`.
- :class:`TwilioError`: base of the rest; :class:`TwilioRestError` carries Twilio's own HTTP status, error
  code and message when the REST API refuses a request (protocols.md §E.5);
  :class:`InvalidTransferTarget` names a transfer target that cannot be dialled;
  :class:`StreamStartError` means a Media Streams WebSocket ended or timed out before its ``start``.
- :class:`TwimlError` (a :class:`~voice.errors.LocalProtocolError`): we asked for TwiML that Twilio would
  refuse (a stream URL with a query string, TwiML over the REST size limit).
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

from voice.errors import LocalProtocolError, RemoteProtocolError, VoiceError

__all__ = [
    "PROTOCOL_ERROR_REASONS",
    "InvalidTransferTarget",
    "ProtocolErrorReason",
    "StreamStartError",
    "TwilioError",
    "TwilioProtocolError",
    "TwilioRestError",
    "TwimlError",
]

ProtocolErrorReason: TypeAlias = Literal[
    "malformed_json", "not_an_object", "missing_field", "bad_field", "bad_base64", "bad_digit", "too_large"
]

PROTOCOL_ERROR_REASONS: Final[tuple[ProtocolErrorReason, ...]] = (
    "malformed_json",
    "not_an_object",
    "missing_field",
    "bad_field",
    "bad_base64",
    "bad_digit",
    "too_large",
)


class TwilioProtocolError(RemoteProtocolError):
    """A Media Streams message that cannot be used (protocols.md §E.2, §E.3).

    ``reason``: ``malformed_json`` (not UTF-8 JSON), ``not_an_object`` (JSON but not an object),
    ``missing_field``, ``bad_field`` (wrong type or value), ``bad_base64`` (a ``media.payload`` that is not
    base64), ``bad_digit`` (a ``dtmf.digit`` that is not one DTMF key), ``too_large`` (over the size limit).
    ``event`` is the message's ``event`` when it could be read.
    """

    def __init__(self, reason: ProtocolErrorReason, message: str, *, event: str | None = None) -> None:
        super().__init__(message)
        self.reason: ProtocolErrorReason = reason
        self.message = message
        self.event = event


class TwilioError(VoiceError):
    """Base of the Twilio bridge's own errors (other than malformed messages)."""


class TwilioRestError(TwilioError):
    """Twilio's REST API refused a request, or could not be reached (``status`` is then ``None``).

    ``code`` is Twilio's error code (e.g. 21211, "invalid To number") and ``twilio_message`` its message,
    as Twilio sent them; ``more_info`` links to Twilio's page for the code.
    """

    def __init__(
        self,
        twilio_message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        method: str | None = None,
        uri: str | None = None,
    ) -> None:
        self.twilio_message = twilio_message
        self.status = status
        self.code = code
        self.method = method
        self.uri = uri
        self.more_info = f"https://www.twilio.com/docs/errors/{code}" if code else None
        super().__init__(self.describe())

    def describe(self) -> str:
        """One line for a person: ``Twilio refused the request (HTTP 400, error 21211): <message>``."""
        if self.status is None:
            return f"Twilio could not be reached: {self.twilio_message}"
        what = f"HTTP {self.status}" + (f", error {self.code}" if self.code else "")
        text = f"Twilio refused the request ({what}): {self.twilio_message}"
        return text + (f" (see {self.more_info})" if self.more_info else "")

    def to_dict(self) -> dict[str, str | int | None]:
        """The error as JSON for an API answer (``POST /api/calls``)."""
        return {
            "error": "twilio_error",
            "message": self.describe(),
            "twilio_status": self.status,
            "twilio_code": self.code,
            "twilio_message": self.twilio_message,
            "more_info": self.more_info,
        }


class InvalidTransferTarget(TwilioError, ValueError):
    """A transfer target that is not an E.164 number, a ``sip:``/``sips:`` URI or ``client:NAME``."""


class StreamStartError(TwilioError):
    """The Media Streams WebSocket closed, stopped or timed out before Twilio sent ``start`` (§E.2)."""


class TwimlError(LocalProtocolError):
    """TwiML that Twilio would refuse (protocols.md §E.1, §E.5)."""
