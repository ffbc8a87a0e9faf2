"""Agent profiles: ``prompts/NAME.md`` (instructions) plus ``prompts/NAME.toml`` (settings).

A profile says everything a call needs to configure its upstream session (model, voice, turn detection,
transcription, tools), how DTMF reaches the model, what an outbound call does when an answering machine
picks up, price overrides, and the local engine's script (what the offline engine says when it plays this
agent).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from voice.config import ModelPriceOverride
from voice.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TurnDetection(_Strict):
    """Realtime ``audio.input.turn_detection`` (server_vad); ``enabled = false`` means manual turns."""

    enabled: bool = True
    type: Literal["server_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(300, ge=0)
    silence_duration_ms: int = Field(500, ge=0)
    create_response: bool = True
    interrupt_response: bool = True

    def to_session(self) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        return self.model_dump(exclude={"enabled"})


class Transcription(_Strict):
    model: str = "gpt-4o-mini-transcribe"
    language: str | None = "en"


class LocalVad(_Strict):
    """The service's own VAD on caller audio (fast barge-in), webrtcvad aggressiveness 0..3."""

    aggressiveness: int = Field(2, ge=0, le=3)


class DtmfPolicy(_Strict):
    """``each``: every key goes to the model at once; ``collect``: keys gather until the terminator or a
    pause of ``timeout_ms``, then go as one entry."""

    mode: Literal["each", "collect"] = "each"
    terminator: str = "#"
    timeout_ms: int = Field(3000, gt=0)
    barge_in: bool = True


class AnsweringMachine(_Strict):
    """Outbound calls with answering-machine detection (Twilio AMD): what the agent does when a machine
    answers.

    ``policy``: ``leave_message`` (the model is told it reached voicemail, leaves its message after the beep
    and then ends the call with ``end_call``), ``hangup`` (the call ends at once) or ``talk`` (nothing
    special: the agent goes on as with a person). ``message``: what the message should say, added to that
    note (empty: the model decides from its instructions). ``max_message_s``: a message call is ended this
    long after the note at the latest, should the model not end it.
    """

    policy: Literal["leave_message", "hangup", "talk"] = "leave_message"
    message: str = Field("", max_length=2000)
    max_message_s: float = Field(60.0, gt=0, le=600)


class ToolSpec(_Strict):
    """A function tool as the Realtime API declares it."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_session(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


class ScriptRule(_Strict):
    """One rule of the local engine's scripted agent.

    A rule fires when the caller's last turn contains any of ``match`` (case-insensitive words or phrases)
    or when the caller pressed exactly the keys in ``dtmf``. It then either says ``say`` or calls the
    function ``call`` with ``arguments``, where ``extract`` maps argument names to regular expressions whose
    first group, found in the caller's words, overrides the default. After the function's output comes
    back, ``say_after`` is spoken, formatted with the arguments and the fields of the JSON output.
    """

    match: list[str] = Field(default_factory=list)
    dtmf: str | None = None
    say: str | None = None
    call: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    extract: dict[str, str] = Field(default_factory=dict)
    say_after: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ScriptRule:
        if not self.match and self.dtmf is None:
            raise ValueError("a rule needs 'match' phrases or a 'dtmf' key sequence")
        if (self.say is None) == (self.call is None):
            raise ValueError("a rule needs exactly one of 'say' or 'call'")
        return self


class EngineScript(_Strict):
    greeting: str = "Hello, how can I help you?"
    fallback: str = "Sorry, I did not catch that. Could you say it again?"
    after_tool: str = "Done."
    rules: list[ScriptRule] = Field(default_factory=list)


def _audio_only() -> list[Literal["audio", "text"]]:
    return ["audio"]


class AgentProfile(_Strict):
    name: str
    description: str = ""
    instructions: str = ""
    model: str = "gpt-realtime"
    voice: str = "marin"
    output_modalities: list[Literal["audio", "text"]] = Field(default_factory=lambda: _audio_only())
    turn_detection: TurnDetection = Field(default_factory=TurnDetection)
    transcription: Transcription | None = Field(default_factory=Transcription)
    vad: LocalVad = Field(default_factory=LocalVad)
    dtmf: DtmfPolicy = Field(default_factory=DtmfPolicy)
    answering_machine: AnsweringMachine | None = None
    """``None``: the service's default (``VOICE_TWILIO_MACHINE_POLICY``)."""
    tools: list[ToolSpec] = Field(default_factory=list)
    prices: dict[str, ModelPriceOverride] = Field(default_factory=dict)
    engine: EngineScript = Field(default_factory=EngineScript)

    def session_config(self, audio_format: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``session`` object of a Realtime ``session.update`` for this agent.

        Stable fields (instructions, tools) come first and per-call data goes last, which keeps the
        upstream's prompt cache warm across calls.
        """
        fmt = audio_format or {"type": "audio/pcm", "rate": 24000}
        session: dict[str, Any] = {
            "type": "realtime",
            "model": self.model,
            "instructions": self.instructions,
            "tools": [t.to_session() for t in self.tools],
            "tool_choice": "auto",
            "output_modalities": list(self.output_modalities),
            "audio": {
                "input": {
                    "format": fmt,
                    "turn_detection": self.turn_detection.to_session(),
                    "transcription": (
                        self.transcription.model_dump(exclude_none=True) if self.transcription else None
                    ),
                },
                "output": {"format": fmt, "voice": self.voice},
            },
        }
        return session


def profile_names(prompts_dir: Path) -> list[str]:
    """Names of the profiles in ``prompts_dir`` (each ``NAME.toml``)."""
    return sorted(p.stem for p in prompts_dir.glob("*.toml"))


def load_profile(name: str, prompts_dir: Path) -> AgentProfile:
    """Load ``NAME.toml`` and ``NAME.md`` from ``prompts_dir``; raise :class:`ConfigError` with the reason."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"invalid agent name: {name!r}")
    toml_path = prompts_dir / f"{name}.toml"
    md_path = prompts_dir / f"{name}.md"
    if not toml_path.is_file():
        known = ", ".join(profile_names(prompts_dir)) or "none"
        raise ConfigError(f"unknown agent {name!r} (profiles in {prompts_dir}: {known})")
    try:
        data = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{toml_path}: {exc}") from exc
    data.setdefault("name", name)
    if md_path.is_file():
        data["instructions"] = md_path.read_text(encoding="utf-8").strip()
    try:
        return AgentProfile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{toml_path}: {exc}") from exc


def load_profiles(prompts_dir: Path) -> dict[str, AgentProfile]:
    return {name: load_profile(name, prompts_dir) for name in profile_names(prompts_dir)}
