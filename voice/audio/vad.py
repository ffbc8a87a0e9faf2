"""Voice activity detection: the WebRTC VAD, and a segmenter that turns frames into speech start/stop events.

:class:`Vad` wraps the WebRTC project's GMM-based detector (``webrtcvad-wheels``, import name ``webrtcvad``),
which classifies 10, 20 or 30 ms frames of PCM16 at 8, 16, 32 or 48 kHz. Aggressiveness runs from 0
(rarely misses speech, often calls noise speech) to 3 (rarely calls noise speech, may clip weak speech).

:class:`VadSegmenter` is the turn detector of the local engine's ``server_vad``: it takes audio of any
length, decides each frame voiced or not, and reports :class:`SpeechStarted` / :class:`SpeechStopped` with
the same meaning as the Realtime API's ``input_audio_buffer.speech_started`` / ``speech_stopped``:

- ``audio_start_ms``: where the speech began, minus ``prefix_padding_ms`` (clamped at 0);
- ``audio_end_ms``: where the speech ended plus the ``silence_duration_ms`` that confirmed the end (the end of
  the last frame of that silence), both on the timeline of all audio pushed since creation (or since
  ``reset(position_ms)``).

Mapping of the Realtime ``threshold`` (0..1, higher means a louder, clearer voice is needed):

- WebRTC aggressiveness ``min(3, floor(4 * threshold))``: 0 below 0.25, 1 below 0.5, 2 below 0.75, else 3;
- an energy gate: a frame counts as voiced only if its RMS level is at least ``-55 + 30 * threshold`` dBFS
  (-55 dBFS at 0, -40 dBFS at the default 0.5, -25 dBFS at 1), so line noise and quiet background never
  start a turn whatever the GMM says.

Speech starts only after ``min_speech_ms`` (60 ms by default) of consecutive voiced frames, so a click or a
knock does not start a turn; it ends after ``silence_duration_ms`` of consecutive unvoiced frames.
24 kHz audio (the Realtime API's PCM rate) is converted to 16 kHz with a :class:`StreamingResampler` for
the detector (its 1.1 ms delay is ignored; positions are those of the 24 kHz input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from voice.audio.pcm import rms_dbfs, samples
from voice.audio.resample import StreamingResampler
from voice.errors import AudioError

__all__ = ["SpeechStarted", "SpeechStopped", "Vad", "VadEvent", "VadSegmenter"]

VAD_RATES: Final = (8000, 16000, 32000, 48000)
"""Rates the WebRTC VAD accepts."""
VAD_FRAME_MS: Final = (10, 20, 30)
"""Frame durations the WebRTC VAD accepts."""
SEGMENTER_RATES: Final = (8000, 16000, 24000, 32000, 48000)
"""Rates :class:`VadSegmenter` accepts (24 kHz is resampled to 16 kHz internally)."""


class Vad:
    """The WebRTC voice activity detector for one stream (it adapts to the stream's noise; not shared)."""

    def __init__(self, sample_rate: int, aggressiveness: int = 2) -> None:
        if sample_rate not in VAD_RATES:
            raise AudioError(f"the WebRTC VAD supports {list(VAD_RATES)} Hz, not {sample_rate} Hz")
        if not isinstance(aggressiveness, int) or not 0 <= aggressiveness <= 3:
            raise AudioError(f"VAD aggressiveness must be 0, 1, 2 or 3; got {aggressiveness!r}")
        self.sample_rate = sample_rate
        self.aggressiveness = aggressiveness
        self._frame_bytes = {2 * sample_rate * ms // 1000 for ms in VAD_FRAME_MS}
        self._vad = self._new()

    def _new(self) -> object:
        import webrtcvad

        return webrtcvad.Vad(self.aggressiveness)

    def reset(self) -> None:
        """Forget the adapted noise model (start of a new stream)."""
        self._vad = self._new()

    def is_speech(self, frame: bytes) -> bool:
        """Whether a 10, 20 or 30 ms PCM16 frame at ``sample_rate`` contains speech."""
        if len(frame) not in self._frame_bytes:
            raise AudioError(
                f"the WebRTC VAD takes 10, 20 or 30 ms frames ({sorted(self._frame_bytes)} bytes at "
                f"{self.sample_rate} Hz); got {len(frame)} bytes"
            )
        return bool(self._vad.is_speech(frame, self.sample_rate))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class SpeechStarted:
    """Speech began at ``audio_start_ms`` (prefix padding included) on the segmenter's timeline."""

    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    """Speech ended; ``audio_end_ms`` includes the silence that confirmed the end."""

    audio_end_ms: int


VadEvent = SpeechStarted | SpeechStopped


class VadSegmenter:
    """Server-side turn detection: PCM16 of any length in, speech start/stop events out (see module doc)."""

    def __init__(
        self,
        sample_rate: int,
        *,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
        frame_ms: int = 20,
        min_speech_ms: int = 60,
    ) -> None:
        if sample_rate not in SEGMENTER_RATES:
            raise AudioError(f"VadSegmenter supports {list(SEGMENTER_RATES)} Hz, not {sample_rate} Hz")
        if frame_ms not in VAD_FRAME_MS:
            raise AudioError(f"frame_ms must be 10, 20 or 30; got {frame_ms!r}")
        if not 0.0 <= threshold <= 1.0:
            raise AudioError(f"threshold must be between 0 and 1; got {threshold!r}")
        for name, value in (
            ("prefix_padding_ms", prefix_padding_ms),
            ("silence_duration_ms", silence_duration_ms),
            ("min_speech_ms", min_speech_ms),
        ):
            if value < 0:
                raise AudioError(f"{name} must not be negative; got {value!r}")
        self.sample_rate = sample_rate
        self.threshold = threshold
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self.frame_ms = frame_ms
        self.aggressiveness = min(3, math.floor(4 * threshold))
        self.gate_dbfs = -55.0 + 30.0 * threshold
        self._frame_bytes = 2 * sample_rate * frame_ms // 1000
        self._speech_frames = max(1, math.ceil(min_speech_ms / frame_ms))
        self._silence_frames = max(1, math.ceil(silence_duration_ms / frame_ms))
        self._resampler = StreamingResampler(24000, 16000) if sample_rate == 24000 else None
        self._vad = Vad(16000 if self._resampler else sample_rate, self.aggressiveness)
        self._pending = bytearray()
        self._next_frame_ms = 0
        self._in_speech = False
        self._run = 0  # consecutive voiced frames (before start) or unvoiced frames (in speech)
        self._run_start_ms = 0

    @property
    def in_speech(self) -> bool:
        """Whether a :class:`SpeechStarted` has been reported without its :class:`SpeechStopped`."""
        return self._in_speech

    @property
    def position_ms(self) -> int:
        """Timeline position of the end of all audio pushed so far, in ms."""
        return self._next_frame_ms + (len(self._pending) // 2) * 1000 // self.sample_rate

    def reset(self, position_ms: int | None = None) -> None:
        """Start over: no speech, no buffered audio, fresh detector state.

        The timeline continues from ``position_ms`` if given, else from the current :attr:`position_ms`.
        """
        if position_ms is not None and position_ms < 0:
            raise AudioError(f"position_ms must not be negative; got {position_ms}")
        self._next_frame_ms = self.position_ms if position_ms is None else position_ms
        self._pending.clear()
        self._in_speech = False
        self._run = 0
        self._vad.reset()
        if self._resampler is not None:
            self._resampler.reset()

    def push(self, pcm16: bytes) -> list[VadEvent]:
        """Add PCM16 audio (any whole number of samples); return the events its complete frames caused."""
        if len(pcm16) % 2:
            raise AudioError(f"PCM16 audio must be a whole number of 16-bit samples; got {len(pcm16)} bytes")
        self._pending += pcm16
        events: list[VadEvent] = []
        size = self._frame_bytes
        consumed = 0
        while len(self._pending) - consumed >= size:
            frame = bytes(self._pending[consumed : consumed + size])
            consumed += size
            event = self._frame(frame)
            if event is not None:
                events.append(event)
        if consumed:
            del self._pending[:consumed]
        return events

    def _voiced(self, frame: bytes) -> bool:
        if rms_dbfs(samples(frame)) < self.gate_dbfs:
            if self._resampler is not None:
                self._resampler.skip(frame)  # keep the filter history continuous
            return False
        if self._resampler is not None:
            frame = self._resampler.process(frame)
        return self._vad.is_speech(frame)

    def _frame(self, frame: bytes) -> VadEvent | None:
        start = self._next_frame_ms
        end = start + self.frame_ms
        self._next_frame_ms = end
        voiced = self._voiced(frame)
        if not self._in_speech:
            if not voiced:
                self._run = 0
                return None
            if self._run == 0:
                self._run_start_ms = start
            self._run += 1
            if self._run < self._speech_frames:
                return None
            self._in_speech, self._run = True, 0
            return SpeechStarted(max(0, self._run_start_ms - self.prefix_padding_ms))
        if voiced:
            self._run = 0
            return None
        self._run += 1
        if self._run < self._silence_frames:
            return None
        self._in_speech, self._run = False, 0
        return SpeechStopped(end)
