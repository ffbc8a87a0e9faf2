"""The Realtime audio formats of the engine's sessions (protocols.md §A.2, §A.3).

``audio/pcm`` is 16-bit little-endian mono PCM at 24 kHz; ``audio/pcmu`` and ``audio/pcma`` are G.711 at
8 kHz, one byte per sample. The engine keeps input and output audio in the session's wire format (so that
``conversation.item.retrieve`` and truncation work on exactly the bytes the client sent or received) and
converts at the edges: to PCM16 for VAD and speech recognition, from PCM16 for synthesized speech.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from voice.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

__all__ = ["PCM24K", "AudioFormat", "parse_format"]

FormatType = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]


@dataclass(frozen=True)
class AudioFormat:
    """One Realtime audio format: its wire ``type`` and what one millisecond of it weighs."""

    type: FormatType

    @property
    def sample_rate(self) -> int:
        return 24000 if self.type == "audio/pcm" else 8000

    @property
    def sample_width(self) -> int:
        """Bytes per sample on the wire."""
        return 2 if self.type == "audio/pcm" else 1

    @property
    def bytes_per_ms(self) -> int:
        return self.sample_rate * self.sample_width // 1000

    def to_wire(self) -> dict[str, Any]:
        """The format object as sessions and responses show it."""
        if self.type == "audio/pcm":
            return {"type": "audio/pcm", "rate": 24000}
        return {"type": self.type}

    def duration_ms(self, size: int) -> float:
        """Milliseconds of audio in ``size`` bytes of this format."""
        return size / self.bytes_per_ms

    def byte_offset(self, ms: float) -> int:
        """The byte offset of the sample at ``ms`` (whole samples, clamped at 0)."""
        samples = max(0, round(ms * self.sample_rate / 1000))
        return samples * self.sample_width

    def decode(self, data: bytes) -> bytes:
        """Wire bytes to PCM16 at :attr:`sample_rate` (a trailing odd byte of PCM is dropped)."""
        if self.type == "audio/pcmu":
            return ulaw_decode(data)
        if self.type == "audio/pcma":
            return alaw_decode(data)
        return data[: len(data) - len(data) % 2]

    def encode(self, pcm16: bytes) -> bytes:
        """PCM16 at :attr:`sample_rate` to wire bytes."""
        if self.type == "audio/pcmu":
            return ulaw_encode(pcm16)
        if self.type == "audio/pcma":
            return alaw_encode(pcm16)
        return pcm16


PCM24K: Final = AudioFormat("audio/pcm")
_TYPES: Final[tuple[FormatType, ...]] = ("audio/pcm", "audio/pcmu", "audio/pcma")


def parse_format(value: dict[str, Any]) -> AudioFormat:
    """An :class:`AudioFormat` from a validated wire format object (see :mod:`voice.engine.config`)."""
    kind = value.get("type", "audio/pcm")
    for known in _TYPES:
        if kind == known:
            return AudioFormat(known)
    raise ValueError(f"unknown audio format {kind!r}")
