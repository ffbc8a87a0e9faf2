"""Offline speech synthesis for the local Realtime engine: libespeak-ng through ctypes.

The library comes from the ``espeakng-loader`` wheel (``pip install -e .[speech]``), which ships both the
shared object and its ``espeak-ng-data`` directory, so nothing is looked up on the system and nothing is
downloaded. libespeak-ng keeps its state in globals: it is initialized once per process (in
``AUDIO_OUTPUT_SYNCHRONOUS`` mode, so ``espeak_Synth`` returns only after our callback has received every
sample) and every call into it happens under one module-level lock. Voice and rate are process-global
settings too, so each synthesis sets the ones its :class:`Synthesizer` asks for (skipped when unchanged).

Voices are named as espeak-ng names them: a voice file ("en-us", "en", "en-gb-x-rp", "es-419"), optionally
with a variant ("en-us+f3"), or a language tag ("en-gb", "es-mx") for which espeak picks its best voice.
libespeak-ng keeps a little state from one utterance to the next (its pitch flutter position), so the same
text can come out a few samples different; nothing should compare synthesized audio byte for byte.

Speech is produced at the library's native rate (22050 Hz) and resampled to the rate the caller wants with
a polyphase filter (``scipy.signal.resample_poly``): an offline whole-buffer conversion, not a live-path one.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from math import gcd
from pathlib import Path
from typing import Final

import numpy as np

from voice.errors import SpeechError
from voice.logs import get_logger

__all__ = ["MAX_WORDS_PER_MINUTE", "MIN_WORDS_PER_MINUTE", "Synthesizer", "split_sentences"]

MIN_WORDS_PER_MINUTE: Final = 80
MAX_WORDS_PER_MINUTE: Final = 450

# speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_DONT_EXIT: Final = 0x8000  # return an error instead of calling exit() when the data is missing
_POS_CHARACTER: Final = 1
_CHARS_UTF8: Final = 1
_ENDPAUSE: Final = 0x1000  # add the sentence-final pause after the text
_PARAM_RATE: Final = 1
_EE_OK: Final = 0


class _EspeakVoice(ctypes.Structure):
    """speak_lib.h ``espeak_VOICE``: the voice properties ``espeak_SetVoiceByProperties`` matches on."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][\"')\]])\s+|\s*\n\s*")
_ABBREVIATION = re.compile(r"(?:^|\s)(?:Mr|Mrs|Ms|Dr|Prof|St|Mt|Jr|Sr|vs|e\.g|i\.e)\.$", re.IGNORECASE)

_log = get_logger(component="tts")


class _Espeak:
    """The process's one libespeak-ng instance; every method must be called with ``_LOCK`` held."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise SpeechError(
                "speech synthesis needs the espeakng-loader package: pip install -e .[speech]"
            ) from exc
        try:
            lib_path = str(espeakng_loader.get_library_path())
            data_path = str(espeakng_loader.get_data_path())
            lib = ctypes.CDLL(lib_path)
        except (OSError, RuntimeError) as exc:
            raise SpeechError(f"cannot load libespeak-ng from the espeakng-loader wheel: {exc}") from exc

        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_EspeakVoice)]
        lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,  # text
            ctypes.c_size_t,  # size in bytes, including the terminating NUL
            ctypes.c_uint,  # position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position (0: none)
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique identifier out-pointer
            ctypes.c_void_p,  # user data
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int

        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise SpeechError(f"libespeak-ng failed to initialize (data path {data_path}, status {rate})")
        self.lib = lib
        self.native_rate: int = rate
        self._variants_dir = Path(data_path) / "voices" / "!v"
        self._chunks: list[bytes] = []
        # The ctypes callback object must outlive every synthesis: keep a reference on the instance.
        self._callback = _SYNTH_CALLBACK(self._on_samples)
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: str | None = None
        self._wpm: int | None = None
        _log.info("tts_initialized", native_rate=rate, library=lib_path)

    def _on_samples(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int | None) -> int:
        """libespeak-ng's synth callback: collect ``count`` samples; 0 means "go on"."""
        if wav and count > 0:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        return 0

    def configure(self, voice: str, wpm: int) -> None:
        """Make ``voice`` and ``wpm`` the current global settings (no-op when they already are)."""
        if voice != self._voice:
            self._voice = self._wpm = None  # unknown until the new voice is in place
            base, _, variant = voice.partition("+")
            # espeak silently ignores an unknown variant and picks a default voice for a blank name.
            if not base.strip() or (
                variant and ("/" in variant or not (self._variants_dir / variant).is_file())
            ):
                raise SpeechError(f"espeak-ng has no voice or language named {voice!r}")
            encoded = voice.encode()
            status = self.lib.espeak_SetVoiceByName(encoded)
            if status != _EE_OK and "+" not in voice:
                wanted = _EspeakVoice(languages=encoded)
                status = self.lib.espeak_SetVoiceByProperties(ctypes.byref(wanted))
            if status != _EE_OK:
                raise SpeechError(
                    f"espeak-ng has no voice or language named {voice!r} (status {status}); "
                    "try e.g. 'en-us', 'en-gb', 'en-us+f3'"
                )
            self._voice = voice  # a voice change also resets the rate: it is set again below
        if wpm != self._wpm:
            status = self.lib.espeak_SetParameter(_PARAM_RATE, wpm, 0)
            if status != _EE_OK:
                raise SpeechError(f"espeak-ng refused the rate {wpm} wpm (status {status})")
            self._wpm = wpm

    def synth(self, text: str, *, end_pause: bool) -> bytes:
        """Synthesize ``text`` with the current settings; PCM16 at :attr:`native_rate`."""
        data = text.encode("utf-8")
        flags = _CHARS_UTF8 | (_ENDPAUSE if end_pause else 0)
        self._chunks = []
        try:
            status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, flags, None, None)
            if status != _EE_OK:
                raise SpeechError(f"espeak-ng synthesis failed (status {status})")
            self.lib.espeak_Synchronize()
            return b"".join(self._chunks)
        finally:
            self._chunks = []


_LOCK = threading.Lock()

CACHE_BYTES: Final = 32 * 1024 * 1024
"""Synthesized audio kept per :class:`Synthesizer` for phrases spoken again (scripted agents repeat their
greeting and answers on every call): least recently used first out beyond this many bytes."""
_ENGINE: _Espeak | None = None


def _engine() -> _Espeak:
    """The process-wide engine, initialized on first use; call with ``_LOCK`` held."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak()
    return _ENGINE


def _resample(pcm: bytes, in_rate: int, out_rate: int) -> bytes:
    """Whole-buffer polyphase resampling of PCM16 (offline; the filter delay is compensated by scipy)."""
    if in_rate == out_rate or not pcm:
        return pcm
    from scipy.signal import resample_poly

    g = gcd(in_rate, out_rate)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    out = resample_poly(samples, out_rate // g, in_rate // g)
    return bytes(np.clip(np.rint(out), -32768, 32767).astype("<i2").tobytes())


def split_sentences(text: str) -> list[str]:
    """Split ``text`` after sentence-ending punctuation and at line breaks; drops empty pieces.

    A full stop after a common abbreviation ("Dr.", "Mr.", "e.g.") does not end a sentence.
    """
    sentences: list[str] = []
    pending = ""
    for piece in _SENTENCE_END.split(text):
        piece = piece.strip()
        if not piece:
            continue
        pending = f"{pending} {piece}" if pending else piece
        if not _ABBREVIATION.search(pending):
            sentences.append(pending)
            pending = ""
    if pending:
        sentences.append(pending)
    return sentences


class Synthesizer:
    """Text to PCM16 speech with a given espeak-ng voice and speaking rate; blocking and thread-safe.

    Construction initializes libespeak-ng (once per process, about a millisecond) and checks the voice,
    so a bad configuration fails at startup rather than on the first response.
    """

    def __init__(
        self, voice: str = "en-us", words_per_minute: int = 175, *, cache_bytes: int = CACHE_BYTES
    ) -> None:
        if not MIN_WORDS_PER_MINUTE <= words_per_minute <= MAX_WORDS_PER_MINUTE:
            raise SpeechError(
                f"words_per_minute must be in {MIN_WORDS_PER_MINUTE}..{MAX_WORDS_PER_MINUTE}, "
                f"got {words_per_minute}"
            )
        self.voice = voice
        self.words_per_minute = words_per_minute
        self._cache: OrderedDict[tuple[str, int, bool], bytes] = OrderedDict()
        self._cache_bytes = 0
        self.cache_limit = max(0, cache_bytes)
        """Bytes of synthesized audio kept for repeated phrases (0: no cache)."""
        self._cache_lock = threading.Lock()
        with _LOCK:
            engine = _engine()
            engine.configure(voice, words_per_minute)
            self._native_rate = engine.native_rate

    @property
    def native_rate(self) -> int:
        """The rate libespeak-ng synthesizes at (22050 Hz); other rates are resampled from it."""
        return self._native_rate

    def synthesize(self, text: str, sample_rate: int) -> bytes:
        """``text`` spoken as 16-bit little-endian mono PCM at ``sample_rate``; ``b""`` for blank text."""
        return self._speak(text, sample_rate, end_pause=False)

    def synthesize_sentences(self, text: str, sample_rate: int) -> Iterator[bytes]:
        """Speak ``text`` one sentence at a time so playback can start after the first sentence.

        Every chunk but the last ends with espeak's sentence pause, so the joined chunks sound like one
        utterance. Sentences that produce no audio are skipped.
        """
        sentences = split_sentences(text)
        for index, sentence in enumerate(sentences):
            pcm = self._speak(sentence, sample_rate, end_pause=index < len(sentences) - 1)
            if pcm:
                yield pcm

    def _speak(self, text: str, sample_rate: int, *, end_pause: bool) -> bytes:
        if sample_rate <= 0:
            raise SpeechError(f"sample_rate must be positive, got {sample_rate}")
        clean = text.replace("\x00", " ").strip()
        if not clean:
            return b""
        key = (clean, sample_rate, end_pause)
        with self._cache_lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        with _LOCK:
            engine = _engine()
            engine.configure(self.voice, self.words_per_minute)
            pcm = engine.synth(clean, end_pause=end_pause)
        audio = _resample(pcm, self._native_rate, sample_rate)
        self._remember(key, audio)
        return audio

    def _remember(self, key: tuple[str, int, bool], audio: bytes) -> None:
        if len(audio) > self.cache_limit // 4:
            return  # a long text is unlikely to come back word for word
        with self._cache_lock:
            if key in self._cache:
                return
            self._cache[key] = audio
            self._cache_bytes += len(audio)
            while self._cache_bytes > self.cache_limit:
                _, dropped = self._cache.popitem(last=False)
                self._cache_bytes -= len(dropped)
