"""Settings of the Twilio bridge (protocols.md §E).

Twilio's own variable names are used for the credentials (``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN``, as
the ``twilio`` library and Twilio's console use them). ``VOICE_PUBLIC_URL`` is the service's public base URL
(``https://voice.example.com``, optionally with a path prefix): the webhook, status-callback and stream URLs
that Twilio calls, and therefore signs (§E.4), are derived from it, never from the ``Host`` header a proxy may
have rewritten. Everything else is ``VOICE_TWILIO_*``.

``TwilioSettings()`` reads the environment by itself; it can also be nested in :class:`voice.config.Settings`
(``twilio: TwilioSettings = Field(default_factory=TwilioSettings)``) or built from a TOML table with the field
names as keys.
"""

from __future__ import annotations

from typing import Final, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from voice.errors import ConfigError

__all__ = [
    "DEFAULT_BUSY_MESSAGE",
    "STATUS_EVENTS",
    "STATUS_PATH",
    "STREAM_PATH",
    "VOICE_PATH",
    "MachineDetection",
    "MachinePolicy",
    "TwilioSettings",
]

VOICE_PATH: Final = "/twilio/voice"
"""The incoming-call webhook (answers TwiML)."""
STATUS_PATH: Final = "/twilio/status"
"""Call status and answering-machine callbacks."""
STREAM_PATH: Final = "/twilio/stream"
"""The bidirectional Media Streams WebSocket."""

STATUS_EVENTS: Final = ("initiated", "ringing", "answered", "completed")
"""Every call progress event an outbound call reports (protocols.md §E.5)."""

MachineDetection = Literal["off", "Enable", "DetectMessageEnd"]
MachinePolicy = Literal["leave_message", "hangup", "talk"]
"""What an outbound call does when a machine answers (:mod:`bridges.twilio.machine`)."""

DEFAULT_BUSY_MESSAGE: Final = "Sorry, all our lines are busy. Please call again in a few minutes."


class TwilioSettings(BaseSettings):
    """Credentials, public URL and outbound-call defaults of the Twilio bridge (see the module docstring)."""

    model_config = SettingsConfigDict(env_prefix="VOICE_TWILIO_", extra="ignore", populate_by_name=True)

    account_sid: str | None = Field(default=None, validation_alias=AliasChoices("TWILIO_ACCOUNT_SID"))
    auth_token: SecretStr | None = Field(default=None, validation_alias=AliasChoices("TWILIO_AUTH_TOKEN"))
    """Signs every webhook and stream upgrade (HMAC-SHA1, §E.4) and authenticates REST calls."""
    public_url: str | None = Field(default=None, validation_alias=AliasChoices("VOICE_PUBLIC_URL"))
    """The service's public base URL as Twilio reaches it (``https://host[:port][/prefix]``)."""
    webhook_key: SecretStr | None = None
    """The secret of a Webhooks SharedKey (``VOICE_TWILIO_WEBHOOK_KEY``): requests that announce
    ``algorithm=HMAC_SHA256`` in ``X-Twilio-Webhooks-Signature-Settings`` are checked with it (with the auth
    token when it is not set)."""
    from_number: str | None = None
    """Default caller id of outbound calls (a Twilio number or verified caller id)."""
    numbers: dict[str, str] = Field(default_factory=dict)
    """Called number -> agent name for incoming calls (JSON in ``VOICE_TWILIO_NUMBERS``)."""
    api_base: str | None = None
    """Override of ``https://api.twilio.com`` for the REST client (a test double or an egress proxy)."""
    rest_timeout_s: float = Field(15.0, gt=0)
    ring_timeout_s: int = Field(30, ge=5, le=600)
    """Outbound calls: how long the callee's phone rings before the call is ``no-answer``."""
    time_limit_s: int | None = Field(None, ge=1)
    """Outbound calls: the longest a call may last (Twilio's ``TimeLimit``)."""
    machine_detection: MachineDetection = "off"
    """Outbound answering-machine detection: ``Enable`` (result as soon as known) or ``DetectMessageEnd``
    (after the greeting's beep, the moment to leave a message). Results arrive asynchronously (``AsyncAmd``)
    on the status callback as ``AnsweredBy``."""
    machine_detection_timeout_s: int = Field(30, ge=3, le=59)
    machine_policy: MachinePolicy = "talk"
    """When a machine answers and the agent's profile has no ``[answering_machine]`` policy:
    ``leave_message`` (the model is told it reached voicemail, leaves its message after the beep and ends
    the call), ``hangup``, or ``talk`` (nothing special). ``continue`` is accepted as the old name of
    ``talk``."""
    busy_message: str = Field(DEFAULT_BUSY_MESSAGE, min_length=1, max_length=300)
    """What a caller hears when every line is busy (``<Say>`` on the webhook; synthesized on the stream)."""
    transfer_to: str | None = None
    """The staff line the agent's ``transfer_call`` dials when the model names no target (E.164 number,
    ``sip:`` URI or ``client:NAME``); it reaches the call as the leg's ``transfer_target`` metadata."""
    start_timeout_s: float = Field(10.0, gt=0)
    """How long a Media Streams socket may stay open without a ``start`` message before it is closed."""

    @field_validator("machine_policy", mode="before")
    @classmethod
    def _old_policy_name(cls, value: object) -> object:
        return "talk" if value == "continue" else value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError(
                "VOICE_PUBLIC_URL must be an absolute http(s) URL, e.g. https://voice.example.com"
            )
        if parts.query or parts.fragment:
            raise ValueError("VOICE_PUBLIC_URL must not have a query string or fragment")
        return value.strip().rstrip("/")

    # Derived URLs ------------------------------------------------------------------------------------------

    def require_public_url(self) -> str:
        if not self.public_url:
            raise ConfigError("VOICE_PUBLIC_URL is not set: Twilio needs the service's public https URL")
        return self.public_url

    def url(self, path: str, query: str = "") -> str:
        """The public URL of ``path`` on this service (what Twilio requests and signs, §E.4)."""
        base = self.require_public_url()
        return base + path + (f"?{query}" if query else "")

    @property
    def voice_url(self) -> str:
        return self.url(VOICE_PATH)

    @property
    def status_url(self) -> str:
        return self.url(STATUS_PATH)

    @property
    def stream_url(self) -> str:
        """``wss://host[/prefix]/twilio/stream`` (``ws://`` when the public URL is plain http)."""
        base = self.require_public_url()
        scheme, rest = base.split("://", 1)
        return ("wss" if scheme == "https" else "ws") + "://" + rest + STREAM_PATH

    # Credentials -------------------------------------------------------------------------------------------

    def require_credentials(self) -> tuple[str, str]:
        """``(account_sid, auth_token)`` for the REST API; :class:`ConfigError` when either is missing."""
        if not self.account_sid or self.auth_token is None or not self.auth_token.get_secret_value():
            raise ConfigError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set to use Twilio's REST API")
        return self.account_sid, self.auth_token.get_secret_value()

    def secret_token(self) -> str | None:
        return self.auth_token.get_secret_value() if self.auth_token is not None else None

    def shared_key(self) -> str | None:
        return self.webhook_key.get_secret_value() if self.webhook_key is not None else None

    def agent_for_number(self, number: str | None) -> str | None:
        """The agent configured for a called number (exact match, then ignoring spaces and dashes)."""
        if not number:
            return None
        if number in self.numbers:
            return self.numbers[number]
        wanted = _plain(number)
        for key, agent in self.numbers.items():
            if _plain(key) == wanted:
                return agent
        return None


def _plain(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit() or ch == "+")
