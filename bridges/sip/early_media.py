"""Early media of an outbound call (RFC 3261 §13.2.1, RFC 3960): what the callee's side plays before it
answers, kept until the call starts, and the part of it the agent should hear.

A callee that answers ``183 Session Progress`` with SDP sends RTP before its ``200 OK``. Two kinds are
common, and an agent placed on an outbound call needs one of them and not the other:

- an **announcement**: an IVR or a carrier speaking before it answers ("Thank you for calling ...; for
  sales press 1"). The agent must hear it, as a person holding the phone would, to navigate the menu;
- **call progress tones**: ringback played in-band (many carriers send a 183 with ringback on every
  call), busy or special information tones. These are not speech and would only cost input tokens and
  could start a turn on a voice activity detector (the WebRTC VAD calls ringback speech).

So :class:`EarlyMedia` keeps the early frames (the last ``max_ms``, 30 s by default) and classifies each
20 ms frame: *speech-like* when the WebRTC VAD calls it voiced **and** its spectrum is not a tone (the 4
strongest bins of a Hann-windowed FFT hold less than ``tone_share`` of the energy: single and dual tones
hold 0.92-1.0, speech about 0.65). :meth:`EarlyMedia.frames` returns the frames from the first onset of
speech (``onset_frames`` speech-like frames within ``onset_window`` frames) less ``preroll_ms``, to the
end; nothing when no speech came (ringback only). Pure: payloads and their PCM16 in, payloads out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

import numpy as np

from voice.audio.vad import Vad

__all__ = ["EarlyMedia", "EarlyMediaSummary", "is_tone"]

FRAME_MS: Final = 20
_PCM_FRAME_BYTES: Final = 2 * 8 * FRAME_MS
_WINDOW: Final = np.hanning(8 * FRAME_MS)


def is_tone(pcm16: bytes, *, share: float = 0.8) -> bool:
    """Whether 20 ms of 8 kHz PCM16 is a tone: its 4 strongest FFT bins hold at least ``share`` of the
    energy (silence counts as a tone: nothing to hear)."""
    samples = np.frombuffer(pcm16[:_PCM_FRAME_BYTES], dtype="<i2").astype(np.float64)
    if len(samples) < len(_WINDOW):
        return True
    power = np.abs(np.fft.rfft(samples * _WINDOW)) ** 2
    total = float(power.sum())
    if total <= 0.0:
        return True
    return float(np.sort(power)[-4:].sum()) / total >= share


@dataclass(frozen=True, slots=True)
class EarlyMediaSummary:
    """What came before the answer and what of it the call got."""

    received_ms: int
    """Early media received (frames played out by the jitter buffer), in ms."""
    delivered_ms: int
    """What :meth:`EarlyMedia.frames` returned, in ms (0: ringback or silence only)."""
    speech_ms: int
    """Speech-like frames among those kept, in ms."""


class EarlyMedia:
    """Early-media frames kept until the call starts (see the module docstring)."""

    def __init__(
        self,
        *,
        max_ms: int = 30_000,
        preroll_ms: int = 300,
        onset_frames: int = 8,
        onset_window: int = 25,
        tone_share: float = 0.8,
        vad_aggressiveness: int = 3,
    ) -> None:
        self._frames: deque[bytes] = deque(maxlen=max(1, max_ms // FRAME_MS))
        self._speech: deque[bool] = deque(maxlen=max(1, max_ms // FRAME_MS))
        self.preroll_frames = preroll_ms // FRAME_MS
        self.onset_frames = onset_frames
        self.onset_window = onset_window
        self.tone_share = tone_share
        self._vad = Vad(8000, vad_aggressiveness)
        self.received_ms = 0

    def push(self, payload: bytes, pcm16: bytes) -> bool:
        """Keep one frame (``payload`` in the call's codec, ``pcm16`` its 8 kHz decoding); returns whether
        it is speech-like."""
        speech = len(pcm16) >= _PCM_FRAME_BYTES and self._vad.is_speech(pcm16[:_PCM_FRAME_BYTES])
        speech = speech and not is_tone(pcm16, share=self.tone_share)
        self._frames.append(payload)
        self._speech.append(speech)
        self.received_ms += FRAME_MS
        return speech

    def onset(self) -> int | None:
        """Index (in the kept frames) where the agent's early media starts, or None (no speech)."""
        flags = list(self._speech)
        window = self.onset_window
        count = sum(flags[:window])
        for index, speech in enumerate(flags):
            if speech and count >= self.onset_frames:
                return max(0, index - self.preroll_frames)
            count -= speech
            if index + window < len(flags):
                count += flags[index + window]
        return None

    def frames(self) -> list[bytes]:
        """The frames the call should get, oldest first (see the module docstring)."""
        start = self.onset()
        return [] if start is None else list(self._frames)[start:]

    def summary(self) -> EarlyMediaSummary:
        start = self.onset()
        delivered = 0 if start is None else len(self._frames) - start
        return EarlyMediaSummary(self.received_ms, delivered * FRAME_MS, sum(self._speech) * FRAME_MS)
