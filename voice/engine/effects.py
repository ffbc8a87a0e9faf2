"""What the engine's session core asks its adapter to do, and what one step of the core returns.

The core (:mod:`voice.engine.session`) is sans-I/O: it never waits, so slow work is handed out as effects
and its results are fed back in through the core's ``on_*`` methods:

- :class:`Transcribe` -> ``on_transcript`` / ``on_transcript_failed``
- :class:`Respond` -> ``on_actions`` / ``on_respond_failed``
- :class:`Speak` -> ``on_speech`` (once per sentence, in order) then ``on_speech_done`` (or
  ``on_speech_failed``)
- :class:`Cancel`: stop the work of a response (its result would be ignored anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voice.engine.responder import ResponseRequest

__all__ = ["Cancel", "Effect", "Respond", "Speak", "Step", "Transcribe"]


@dataclass(frozen=True)
class Transcribe:
    """Recognize caller speech: ``pcm16_16k`` is mono PCM16 at 16 kHz."""

    item_id: str
    content_index: int
    pcm16_16k: bytes
    prompt: str | None = None


@dataclass(frozen=True)
class Respond:
    """Ask the responder for the actions of a response."""

    response_id: str
    request: ResponseRequest


@dataclass(frozen=True)
class Speak:
    """Synthesize ``sentences`` one by one as PCM16 at ``sample_rate``, feeding each back as it is ready."""

    response_id: str
    item_id: str
    sentences: tuple[str, ...]
    sample_rate: int


@dataclass(frozen=True)
class Cancel:
    """Stop the pending work of a response."""

    response_id: str


Effect = Transcribe | Respond | Speak | Cancel


@dataclass
class Step:
    """The result of feeding the core: server events to send (in order) and effects to start."""

    events: list[dict[str, Any]] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)

    def extend(self, other: Step) -> Step:
        self.events.extend(other.events)
        self.effects.extend(other.effects)
        return self
