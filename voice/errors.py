"""The project's one exception tree.

Every error the project raises on purpose derives from :class:`VoiceError`, so a caller can catch the
whole family at a boundary (a connection handler, a call runner) without catching programming errors.

Naming follows h11: ``LocalProtocolError`` means *we* broke a protocol rule (a bug or misuse on our side);
``RemoteProtocolError`` means the peer sent something invalid.
"""

from __future__ import annotations


class VoiceError(Exception):
    """Base of every error raised on purpose by this project."""


class ConfigError(VoiceError):
    """Settings or an agent profile are invalid or missing."""


class AudioError(VoiceError):
    """Audio of the wrong size, rate or format was given to an audio core."""


class ProtocolError(VoiceError):
    """A wire-protocol rule was broken."""


class LocalProtocolError(ProtocolError):
    """We tried to send or do something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids or that cannot be parsed."""


class RealtimeError(VoiceError):
    """An error in the Realtime API sense: it has the fields of a Realtime ``error`` event.

    The local engine raises it while handling a client event and turns it into an ``error`` event;
    the upstream client raises it when the server answers with an ``error`` the caller asked to see.
    """

    def __init__(
        self,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.event_id = event_id

    def to_error_body(self) -> dict[str, str | None]:
        """The ``error`` object of a Realtime ``error`` server event."""
        return {
            "type": self.type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
            "event_id": self.event_id,
        }


class UpstreamError(VoiceError):
    """The Realtime upstream (OpenAI, Azure, the local engine) could not be used."""


class UpstreamConnectError(UpstreamError):
    """The upstream could not be reached or refused the WebSocket handshake."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamAuthError(UpstreamConnectError):
    """The upstream refused our credentials (HTTP 401/403 on the handshake)."""


class UpstreamClosedError(UpstreamError):
    """The upstream connection closed while we were using it."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class SpeechError(VoiceError):
    """Offline speech recognition or synthesis failed or is not installed."""


class RecordError(VoiceError):
    """A call record (transcript, cost meter, store, recording) was given invalid input."""


class UnknownCallError(RecordError, LookupError):
    """No call with this id exists in the store."""

    def __init__(self, call_id: str) -> None:
        super().__init__(f"unknown call id: {call_id!r}")
        self.call_id = call_id
