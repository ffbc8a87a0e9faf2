"""The input audio buffer of an engine session, its timeline and server VAD (protocols.md §A.4, §A.6).

Every appended byte advances the session's **audio timeline**: the milliseconds of all audio written this
session, on which ``speech_started.audio_start_ms`` and ``speech_stopped.audio_end_ms`` are positions. The
buffer holds the wire bytes not yet committed and knows where on the timeline it starts. With server VAD
the audio goes, as PCM16 at its own rate (8 kHz for G.711, 24 kHz for ``audio/pcm``), through a
:class:`~voice.audio.vad.VadSegmenter` whose start positions include the prefix padding and whose stop
positions include the silence duration. On a start the buffer drops what lies before the start; on a stop
the session commits the buffer up to the stop position. While nobody speaks the buffer keeps only the last
:data:`IDLE_KEEP_MS` (memory stays bounded on a long silent call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from voice.audio.resample import resample_pcm16
from voice.audio.vad import SpeechStarted, SpeechStopped, VadSegmenter
from voice.engine.formats import AudioFormat
from voice.engine.session_config import vad_silence_ms

__all__ = ["IDLE_KEEP_MS", "InputAudio", "SpeechStart", "SpeechStop", "to_pcm16_16k"]

IDLE_KEEP_MS: Final = 10_000


@dataclass(frozen=True)
class SpeechStart:
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStop:
    audio_end_ms: int


def to_pcm16_16k(audio: bytes, fmt: AudioFormat) -> bytes:
    """Wire audio as PCM16 at 16 kHz (what speech recognition takes)."""
    pcm = fmt.decode(audio)
    return resample_pcm16(pcm, fmt.sample_rate, 16000) if pcm else b""


class InputAudio:
    """The uncommitted input audio, the session timeline and the VAD (when turn detection is on)."""

    def __init__(self, fmt: AudioFormat, turn_detection: dict[str, Any] | None) -> None:
        self._format = fmt
        self._buffer = bytearray()
        self._buffer_start_ms = 0.0
        self._written = 0  # wire bytes written in the current format
        self._timeline_base_ms = 0.0  # timeline position where the current format started
        self._turn_detection = turn_detection
        self._vad: VadSegmenter | None = None
        self._vad_offset_ms = 0.0
        self._reset_vad()

    # -- state ----------------------------------------------------------------------------------------------

    @property
    def format(self) -> AudioFormat:
        return self._format

    @property
    def position_ms(self) -> float:
        """The end of the timeline: ms of all audio appended this session."""
        return self._timeline_base_ms + self._format.duration_ms(self._written)

    @property
    def buffered_ms(self) -> float:
        return self._format.duration_ms(len(self._buffer))

    @property
    def in_speech(self) -> bool:
        return self._vad is not None and self._vad.in_speech

    @property
    def vad_on(self) -> bool:
        return self._vad is not None

    # -- configuration -----------------------------------------------------------------------------------

    def reconfigure(self, fmt: AudioFormat, turn_detection: dict[str, Any] | None) -> None:
        """Apply a new input format (clears the buffer) and/or turn detection (restarts the VAD)."""
        if fmt != self._format:
            self._timeline_base_ms = self.position_ms
            self._written = 0
            self._format = fmt
            self.clear()
        if turn_detection != self._turn_detection:
            self._turn_detection = turn_detection
            self._reset_vad()

    def _reset_vad(self) -> None:
        """A fresh segmenter whose timeline starts at the current position (semantic VAD is emulated by
        server VAD: see :func:`~voice.engine.session_config.vad_silence_ms`)."""
        self._vad_offset_ms = self.position_ms
        td = self._turn_detection
        if td is None:
            self._vad = None
            return
        self._vad = VadSegmenter(
            self._format.sample_rate,
            threshold=float(td.get("threshold", 0.5)),
            prefix_padding_ms=int(td.get("prefix_padding_ms", 300)),
            silence_duration_ms=vad_silence_ms(td),
        )

    # -- audio ------------------------------------------------------------------------------------------

    def append(self, audio: bytes) -> list[SpeechStart | SpeechStop]:
        """Add wire audio; returns the VAD's turn events with positions on the session timeline."""
        audio = audio[: len(audio) - len(audio) % self._format.sample_width]
        if not audio:
            return []
        self._buffer += audio
        self._written += len(audio)
        if self._vad is None:
            return []
        events = self._run_vad(self._format.decode(audio))
        if not self._vad.in_speech and not events:
            self._trim_idle()
        return events

    def _run_vad(self, pcm: bytes) -> list[SpeechStart | SpeechStop]:
        assert self._vad is not None
        found: list[SpeechStart | SpeechStop] = []
        for event in self._vad.push(pcm):
            if isinstance(event, SpeechStarted):
                found.append(SpeechStart(round(self._vad_offset_ms + event.audio_start_ms)))
            elif isinstance(event, SpeechStopped):
                found.append(SpeechStop(round(self._vad_offset_ms + event.audio_end_ms)))
        return found

    def _trim_idle(self) -> None:
        excess = self.buffered_ms - IDLE_KEEP_MS
        if excess > 0:
            self.drop_before(self._buffer_start_ms + excess)

    def drop_before(self, ms: float) -> None:
        """Forget buffered audio before timeline position ``ms``."""
        cut = min(len(self._buffer), self._format.byte_offset(ms - self._buffer_start_ms))
        if cut <= 0:
            return
        del self._buffer[:cut]
        self._buffer_start_ms += self._format.duration_ms(cut)

    def take(self, end_ms: float | None = None) -> bytes:
        """Remove and return the buffered audio up to timeline position ``end_ms`` (all of it: ``None``)."""
        if end_ms is None:
            cut = len(self._buffer)
        else:
            cut = min(len(self._buffer), self._format.byte_offset(end_ms - self._buffer_start_ms))
        cut = max(0, cut)
        taken = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        self._buffer_start_ms += self._format.duration_ms(cut)
        return taken

    def clear(self) -> None:
        """Drop the buffer (and any speech in progress: the VAD starts over)."""
        self._buffer.clear()
        self._buffer_start_ms = self.position_ms
        self._reset_vad()

    def restart_vad(self) -> None:
        """Start the VAD over at the current position (after a manual commit during speech)."""
        self._reset_vad()
