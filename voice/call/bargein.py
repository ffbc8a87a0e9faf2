"""Local barge-in detection on the caller's audio, with an echo guard (DESIGN.md "Turn-taking and barge-in").

Two signals decide a barge-in: the upstream's ``input_audio_buffer.speech_started`` (authoritative,
protocols.md §C.2) and this module's local VAD, which is fast because it needs no network round trip. The
local VAD only *pauses* playout; the call core turns a pause into a real barge-in when the upstream confirms
within a short window, and resumes where it stopped otherwise (:class:`PauseWindow`: a cough is not a turn).

:class:`CallerSpeechDetector` frames caller audio in 20 ms, decodes it to PCM16 (G.711 decode at 8 kHz for
phone codecs; ``pcm16_24k`` decimated to 8 kHz: webrtcvad does not take 24 kHz) and runs the VAD. The level
gate comes first, so a quiet line costs one RMS per frame. A frame *counts* as caller speech when the VAD
says speech, its level is at least ``min_level_dbfs`` (line noise the VAD may flag is ignored), and, while
the agent is audible (a frame was played in the last ``echo_tail_ms``), it passes the **echo guard**.

Echo guard ("compare with what was just played", DESIGN.md): a line that returns the agent's voice returns a
delayed, attenuated and somewhat filtered copy of it. The detector keeps the last ``echo_tail_ms`` (+ the
analysis window) of agent audio it handed to the leg, and for each voiced caller frame computes the maximum
normalised cross-correlation between the last ``echo_window_ms`` (60 ms) of caller audio and that history,
over every lag (the echo delay — leg buffer, network, hybrid — is unknown but shorter than the tail). An echo
correlates almost perfectly whatever its level (measured: > 0.99 for the agent's audio fed back at -10 dB
through µ-law, 0.82-0.93 through a short dispersive hybrid-like filter), while a caller talking, alone or over
the echo, correlates far less (median about 0.5 against unrelated speech of the same synthetic voice). A frame
counts only if the similarity is below ``echo_similarity`` (0.8). Levels alone cannot separate the two: an
echo 10 dB down and a caller at the agent's level overlap frame by frame, because speech levels swing by
20 dB. All analysis is at 8 kHz (24 kHz legs decimated by three); the histories are kept as raw leg frames
and decoded only for a check, which costs about 0.2 ms and only runs on voiced caller frames while the
agent is audible.

Speech onset is ``min_speech_ms`` (60 ms) of consecutive counting frames; it is reported once per run.

Pure: times are the call clock ``now_ms`` passed in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from bridges.base import AudioCodec, frame_bytes
from voice.audio.g711 import alaw_decode, ulaw_decode
from voice.audio.pcm import FULL_SCALE, rms_dbfs
from voice.audio.vad import Vad


class SpeechClassifier(Protocol):
    """What the detector needs from a VAD (``voice.audio.vad.Vad`` satisfies it)."""

    def is_speech(self, frame: bytes) -> bool: ...


VadFactory = Callable[[int, int], SpeechClassifier]
"""``factory(sample_rate, aggressiveness)`` -> a VAD for 20 ms PCM16 frames at that rate."""


def default_vad(sample_rate: int, aggressiveness: int) -> SpeechClassifier:
    """:class:`voice.audio.vad.Vad` (the WebRTC VAD) for 20 ms PCM16 frames at ``sample_rate``."""
    return Vad(sample_rate, aggressiveness)


def pcm16_level(pcm16: bytes) -> float:
    """RMS level in dBFS of PCM16 audio (``-inf`` for silence)."""
    return rms_dbfs(np.frombuffer(pcm16[: len(pcm16) // 2 * 2], dtype="<i2"))


_ANALYSIS_RATE: Final = 8000
_SILENT_ENERGY: Final = 160 * 10.0**2  # below about -70 dBFS per sample: no meaningful correlation


def _decimate_24k_to_8k(pcm16: bytes) -> npt.NDArray[np.float64]:
    """PCM16 at 24 kHz -> float samples at 8 kHz: the mean of each three samples.

    Analysis only (VAD and echo guard): a 3-tap box filter leaves some aliasing from 4-12 kHz, which a VAD
    tolerates, and the echo guard compares caller and agent audio through the same filter. It costs one
    reshape and one mean per frame, against two polyphase filters per frame for the streaming resampler.
    """
    samples = np.frombuffer(pcm16[: len(pcm16) // 6 * 6], dtype="<i2")
    means: npt.NDArray[np.float64] = samples.reshape(-1, 3).mean(axis=1)
    return means


class _Decoder:
    """Leg audio -> PCM16 at 8 kHz for the VAD and the echo guard (G.711 decode; 24 kHz PCM decimated)."""

    def __init__(self, codec: AudioCodec) -> None:
        self.codec = codec
        self.wide = codec == "pcm16_24k"
        self.vad_rate = _ANALYSIS_RATE

    def pcm16(self, audio: bytes) -> bytes:
        """Leg audio -> PCM16 at the leg's own rate (G.711 decoded; PCM passes through)."""
        if self.wide:
            return audio
        return ulaw_decode(audio) if self.codec == "pcmu" else alaw_decode(audio)

    def analysis(self, pcm16: bytes) -> npt.NDArray[np.float64]:
        """PCM16 at the leg's rate (:meth:`pcm16`) -> float samples at 8 kHz."""
        if self.wide:
            return _decimate_24k_to_8k(pcm16)
        return np.frombuffer(pcm16, dtype="<i2").astype(np.float64)

    def vad_frame(self, pcm16: bytes) -> bytes:
        """PCM16 at the leg's rate -> a PCM16 frame at :attr:`vad_rate`."""
        if self.wide:
            return _decimate_24k_to_8k(pcm16).astype("<i2").tobytes()
        return pcm16


class CallerSpeechDetector:
    """Caller speech onsets from the leg's audio, with the echo guard described in the module docstring."""

    def __init__(
        self,
        codec: AudioCodec,
        *,
        aggressiveness: int = 2,
        min_speech_ms: int = 60,
        min_level_dbfs: float = -50.0,
        echo_similarity: float = 0.8,
        echo_tail_ms: int = 600,
        echo_window_ms: int = 60,
        vad_factory: VadFactory = default_vad,
    ) -> None:
        self._decoder = _Decoder(codec)
        self._vad = vad_factory(self._decoder.vad_rate, aggressiveness)
        self._frame = frame_bytes(codec)
        self._buffer = bytearray()
        self.min_frames = max(1, math.ceil(min_speech_ms / 20))
        self.min_level_dbfs = min_level_dbfs
        self.echo_similarity = echo_similarity
        self.echo_tail_ms = echo_tail_ms
        self._window = _ANALYSIS_RATE * echo_window_ms // 1000
        self._history_len = _ANALYSIS_RATE * (echo_tail_ms + echo_window_ms) // 1000
        # Raw leg frames, decoded only when the echo guard runs (a voiced caller frame while the agent is
        # audible): most frames of a call never need the analysis.
        self._agent: deque[bytes] = deque(maxlen=math.ceil((echo_tail_ms + echo_window_ms) / 20) + 1)
        self._caller: deque[bytes] = deque(maxlen=math.ceil(echo_window_ms / 20))
        self._last_agent_ms: int | None = None
        self._run = 0
        self.last_level_dbfs = -math.inf
        """Level of the last caller frame (``-inf`` too for a G.711 frame whose peak is under the gate:
        its level is not computed)."""
        self.last_similarity: float | None = None
        self._quiet = _quiet_codes(codec, self._decoder, min_level_dbfs)

    @property
    def in_speech(self) -> bool:
        """The current run of counting frames has reached the onset length."""
        return self._run >= self.min_frames

    def agent_audible(self, now_ms: int) -> bool:
        """An agent frame was handed to the leg within the last ``echo_tail_ms``."""
        last = self._last_agent_ms
        return last is not None and now_ms - last <= self.echo_tail_ms

    def agent_played(self, frame: bytes, now_ms: int) -> None:
        """Remember an agent frame handed to the leg at ``now_ms`` (the echo reference)."""
        self._agent.append(frame)
        self._last_agent_ms = now_ms

    def push(self, audio: bytes, now_ms: int) -> bool:
        """Feed caller audio (any length, leg codec); ``True`` when a speech onset happened in it."""
        self._buffer += audio
        onset = False
        while len(self._buffer) >= self._frame:
            frame = bytes(self._buffer[: self._frame])
            del self._buffer[: self._frame]
            if self._frame_counts(frame, now_ms):
                self._run += 1
                onset = onset or self._run == self.min_frames
            else:
                self._run = 0
        return onset

    def reset(self) -> None:
        """Forget the current voiced run and any partial frame."""
        self._run = 0
        self._buffer.clear()

    def echo_score(self) -> float:
        """Max normalised cross-correlation of the last caller window with the agent history (0..1)."""
        decoder = self._decoder
        x = decoder.analysis(decoder.pcm16(b"".join(self._caller)))[-self._window :]
        ex = float(np.dot(x, x))
        y = decoder.analysis(decoder.pcm16(b"".join(self._agent)))[-self._history_len :]
        if ex <= _SILENT_ENERGY or len(y) < len(x):
            return 0.0
        corr = np.correlate(y, x, "valid")
        energy = np.cumsum(np.concatenate(([0.0], y * y)))
        ey = energy[len(x) :] - energy[: -len(x)]
        valid = ey > _SILENT_ENERGY
        if not valid.any():
            return 0.0
        scores = np.abs(corr[valid]) / np.sqrt(ey[valid] * ex)
        return float(min(1.0, scores.max()))

    def _frame_counts(self, frame: bytes, now_ms: int) -> bool:
        self._caller.append(frame)
        quiet = self._quiet
        if quiet is not None and not frame.translate(None, quiet):
            # Every sample is under the gate's RMS, so the frame's RMS is too: no need to decode it.
            self.last_level_dbfs = -math.inf
            self.last_similarity = None
            return False
        pcm = self._decoder.pcm16(frame)
        level = pcm16_level(pcm)
        self.last_level_dbfs = level
        self.last_similarity = None
        if level < self.min_level_dbfs or not self._vad.is_speech(self._decoder.vad_frame(pcm)):
            return False
        if not self.agent_audible(now_ms):
            return True
        self.last_similarity = self.echo_score()
        return self.last_similarity < self.echo_similarity


def _quiet_codes(codec: AudioCodec, decoder: _Decoder, min_level_dbfs: float) -> bytes | None:
    """The G.711 codes whose sample is quieter than a sine at ``min_level_dbfs`` RMS (a frame of only these
    is under the level gate); ``None`` for PCM16."""
    if codec not in ("pcmu", "pcma"):
        return None
    samples = np.abs(np.frombuffer(decoder.pcm16(bytes(range(256))), dtype="<i2").astype(np.int32))
    gate = FULL_SCALE / math.sqrt(2.0) * 10.0 ** (min_level_dbfs / 20.0)
    return bytes(code for code in range(256) if samples[code] < gate)


class PauseWindow:
    """The barge-in window: local speech paused playout at ``paused_at``; the upstream has until
    ``paused_at + window_ms`` to confirm with ``speech_started``, or playout resumes."""

    def __init__(self, window_ms: int = 600) -> None:
        self.window_ms = window_ms
        self.paused_at: int | None = None

    @property
    def active(self) -> bool:
        return self.paused_at is not None

    def start(self, now_ms: int) -> None:
        self.paused_at = now_ms

    def expired(self, now_ms: int) -> bool:
        return self.paused_at is not None and now_ms - self.paused_at >= self.window_ms

    def stop(self, now_ms: int) -> int | None:
        """End the window; returns how long playout was paused (``None`` if it was not)."""
        if self.paused_at is None:
            return None
        held = now_ms - self.paused_at
        self.paused_at = None
        return held
