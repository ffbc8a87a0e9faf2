"""Real speech audio for tests: text synthesized by the engine's :class:`Synthesizer`, cached on disk.

``speech_pcm16(text, rate)`` is what the ``speech`` fixture in ``conftest.py`` returns. The first call for a
given (text, rate, voice, speaking rate) synthesizes it (a few ms with libespeak-ng) and stores a WAV file
under ``.cache/speech/`` (git-ignored); later calls and later test runs read that file back. The WAV files can
be listened to when a test that uses them fails.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO / ".cache" / "speech"
DEFAULT_VOICE = "en-us"
DEFAULT_WPM = 175
_CACHE_VERSION = "1"  # bump when the synthesis or resampling changes in a way tests could notice

_memo: dict[str, bytes] = {}
_memo_lock = threading.Lock()


def _cache_key(text: str, rate: int, voice: str, wpm: int) -> str:
    raw = "\x1f".join([_CACHE_VERSION, voice, str(wpm), str(rate), text])
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


def speech_pcm16(
    text: str, rate: int, *, voice: str = DEFAULT_VOICE, words_per_minute: int = DEFAULT_WPM
) -> bytes:
    """``text`` spoken as 16-bit little-endian mono PCM at ``rate`` Hz (``b""`` for blank text)."""
    key = _cache_key(text, rate, voice, words_per_minute)
    with _memo_lock:
        cached = _memo.get(key)
    if cached is not None:
        return cached
    path = CACHE_DIR / f"{key}.wav"
    pcm: bytes | None = None
    if path.is_file():
        try:
            pcm, file_rate = read_wav(path)
            if file_rate != rate:
                pcm = None
        except (OSError, EOFError, wave.Error):
            pcm = None  # a damaged cache entry: synthesize again and overwrite it
    if pcm is None:
        from voice.engine.tts import Synthesizer

        pcm = Synthesizer(voice, words_per_minute).synthesize(text, rate)
        write_wav(path, pcm, rate)
    with _memo_lock:
        _memo[key] = pcm
    return pcm


def silence(ms: int, rate: int) -> bytes:
    """``ms`` milliseconds of digital silence as PCM16 at ``rate`` Hz."""
    return bytes(2 * (rate * ms // 1000))


def write_wav(path: Path | str, pcm: bytes, rate: int) -> None:
    """Write mono PCM16 ``pcm`` as a WAV file atomically (temp file + rename): never half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as raw, wave.open(raw, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(pcm)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_wav(path: Path | str) -> tuple[bytes, int]:
    """Read a mono PCM16 WAV file: ``(pcm, rate)``."""
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise wave.Error(f"{path}: expected mono 16-bit PCM")
        return wav.readframes(wav.getnframes()), wav.getframerate()
