"""Offline speech synthesis (libespeak-ng through ctypes) and the test-speech helpers built on it."""

from __future__ import annotations

import threading
import wave
from pathlib import Path

import numpy as np
import pytest

from tests import speech as speech_module
from tests.speech import read_wav, silence, speech_pcm16, write_wav
from voice.engine.tts import Synthesizer, split_sentences
from voice.errors import SpeechError

BOOKING = "I would like to book a table for four people."


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def _rms(pcm: bytes) -> float:
    return float(np.sqrt(np.mean(np.square(_samples(pcm)))))


@pytest.fixture(scope="module")
def synth() -> Synthesizer:
    return Synthesizer()


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_speech_is_loud_enough_and_of_plausible_duration(synth: Synthesizer, rate: int) -> None:
    pcm = synth.synthesize(BOOKING, rate)
    assert len(pcm) % 2 == 0
    seconds = len(pcm) / 2 / rate
    # Nine words at 175 words per minute: about three seconds (espeak is brisk); never a fraction or ten.
    assert 1.2 < seconds < 5.0
    assert _rms(pcm) > 1000
    assert np.abs(_samples(pcm)).max() > 8000


def test_every_rate_is_the_same_utterance(synth: Synthesizer) -> None:
    durations = {rate: len(synth.synthesize(BOOKING, rate)) / 2 / rate for rate in (8000, 16000, 24000)}
    native = len(synth.synthesize(BOOKING, synth.native_rate)) / 2 / synth.native_rate
    for seconds in durations.values():
        # espeak's pitch flutter carries over between utterances: lengths differ by a few ms, never more.
        assert seconds == pytest.approx(native, rel=0.02)


def test_native_rate_is_espeaks() -> None:
    assert Synthesizer().native_rate == 22050


def test_resampling_to_8k_keeps_the_energy_in_the_telephone_band(synth: Synthesizer) -> None:
    pcm = synth.synthesize(BOOKING, 8000)
    spectrum = np.abs(np.fft.rfft(_samples(pcm))) ** 2
    freqs = np.fft.rfftfreq(len(pcm) // 2, d=1 / 8000)
    voice_band = spectrum[(freqs > 100) & (freqs < 3400)].sum()
    assert voice_band / spectrum.sum() > 0.9
    assert np.abs(_samples(pcm)).max() < 32767  # no clipping after the filter


@pytest.mark.parametrize("text", ["", "   ", "\n\t ", "\x00"])
def test_blank_text_is_no_audio(synth: Synthesizer, text: str) -> None:
    assert synth.synthesize(text, 16000) == b""
    assert list(synth.synthesize_sentences(text, 16000)) == []


def test_speaking_rate_changes_duration() -> None:
    slow = Synthesizer(words_per_minute=120).synthesize(BOOKING, 16000)
    fast = Synthesizer(words_per_minute=300).synthesize(BOOKING, 16000)
    assert len(slow) > 1.6 * len(fast)


@pytest.mark.parametrize(
    "voice", ["en-us", "en", "en-gb", "en-gb-x-rp", "en-us+f3", "English (America)", "es-mx"]
)
def test_voices_by_file_name_variant_or_language(voice: str) -> None:
    assert _rms(Synthesizer(voice).synthesize("Hola, hello.", 16000)) > 500


@pytest.mark.parametrize("voice", ["xx-nonexistent", "zz", "en-us+nonexistent", ""])
def test_unknown_voice_is_a_speech_error(voice: str) -> None:
    with pytest.raises(SpeechError, match="no voice or language named"):
        Synthesizer(voice)


def test_a_failed_voice_change_does_not_break_the_next_synthesis(synth: Synthesizer) -> None:
    with pytest.raises(SpeechError):
        Synthesizer("xx-nonexistent")
    assert _rms(synth.synthesize(BOOKING, 16000)) > 1000


@pytest.mark.parametrize("wpm", [0, 79, 451, -5])
def test_speaking_rate_out_of_range_is_a_speech_error(wpm: int) -> None:
    with pytest.raises(SpeechError, match="words_per_minute"):
        Synthesizer(words_per_minute=wpm)


def test_bad_sample_rate_is_a_speech_error(synth: Synthesizer) -> None:
    with pytest.raises(SpeechError, match="sample_rate"):
        synth.synthesize("hello", 0)


def test_odd_characters_are_spoken_not_fatal(synth: Synthesizer) -> None:
    pcm = synth.synthesize('Café <b>naïve</b> & "quotes" — 42 € 😀', 16000)
    assert _rms(pcm) > 500


def test_repeated_synthesis_is_nearly_identical(synth: Synthesizer) -> None:
    first, second = synth.synthesize(BOOKING, 16000), synth.synthesize(BOOKING, 16000)
    assert len(second) == pytest.approx(len(first), rel=0.02)
    assert _rms(second) == pytest.approx(_rms(first), rel=0.05)


def test_repeated_phrases_come_from_the_cache_within_its_bound() -> None:
    synth = Synthesizer("en-us", 175)
    first = synth.synthesize(BOOKING, 16000)
    assert synth.synthesize(BOOKING, 16000) is first  # the same audio, not synthesized again
    assert synth.synthesize(BOOKING, 8000) is not first  # another rate is another entry
    small = Synthesizer("en-us", 175, cache_bytes=4 * len(first))
    phrases = [f"Table number {n} is ready." for n in range(12)]
    for phrase in phrases:
        small.synthesize(phrase, 16000)
    assert small._cache_bytes <= small.cache_limit
    assert (phrases[0], 16000, False) not in small._cache  # least recently used went first
    assert (phrases[-1], 16000, False) in small._cache
    uncached = Synthesizer("en-us", 175, cache_bytes=0)
    assert uncached.synthesize(BOOKING, 16000) is not uncached.synthesize(BOOKING, 16000)


def test_sentences_stream_one_chunk_each(synth: Synthesizer) -> None:
    text = "Hello there. Your table is booked for Friday! Is there anything else?"
    chunks = list(synth.synthesize_sentences(text, 24000))
    assert len(chunks) == 3
    assert all(_rms(chunk) > 500 for chunk in chunks)
    whole = synth.synthesize(text, 24000)
    joined = b"".join(chunks)
    # The same words; the joins carry espeak's sentence pauses, so the lengths agree to within a second.
    assert abs(len(joined) - len(whole)) / 2 / 24000 < 1.0
    # The first chunk is only the first sentence: a short wait before playback can start.
    assert len(chunks[0]) < len(whole) / 3


def test_split_sentences() -> None:
    text = 'Hello there. How are you?  I am "fine." Dr. Smith sees you at noon, e.g. today.\nNew line\n\nEnd!'
    assert split_sentences(text) == [
        "Hello there.",
        "How are you?",
        'I am "fine."',
        "Dr. Smith sees you at noon, e.g. today.",
        "New line",
        "End!",
    ]
    assert split_sentences("no punctuation at all") == ["no punctuation at all"]
    assert split_sentences(" \n ") == []
    assert split_sentences("3.5 people. No.") == ["3.5 people.", "No."]


def test_threads_share_the_engine_safely() -> None:
    """Voice and rate are process-global in libespeak-ng: interleaved synthesizers must not mix them.

    The four jobs differ in speaking rate and text, so a job that ran with another's settings would come out
    with a clearly different duration.
    """
    jobs = [  # no phrase cache: every round must really synthesize
        (Synthesizer("en-us", 175, cache_bytes=0), "Table for two at eight.", 16000),
        (Synthesizer("en-gb", 140, cache_bytes=0), "Could you repeat that, please?", 8000),
        (Synthesizer("en-us", 260, cache_bytes=0), "Your booking is confirmed.", 24000),
        (Synthesizer("en-gb", 200, cache_bytes=0), "Goodbye and thank you for calling.", 16000),
    ]
    expected = [s.synthesize(text, rate) for s, text, rate in jobs]
    results: dict[tuple[int, int], bytes] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def work(index: int) -> None:
        s, text, rate = jobs[index]
        try:
            barrier.wait()
            for round_ in range(4):
                results[index, round_] = s.synthesize(text, rate)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    for (index, _round), pcm in results.items():
        assert len(pcm) == pytest.approx(len(expected[index]), rel=0.03), jobs[index][1]
    assert len(results) == 4 * len(jobs)


# -- tests/speech.py helpers ---------------------------------------------------------------------------


def test_speech_helper_matches_the_synthesizer_and_caches_on_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "The speech helper caches this sentence."
    pcm = speech_pcm16(text, 16000)
    assert len(pcm) == pytest.approx(len(Synthesizer().synthesize(text, 16000)), rel=0.02)
    key = speech_module._cache_key(text, 16000, speech_module.DEFAULT_VOICE, speech_module.DEFAULT_WPM)
    cached = speech_module.CACHE_DIR / f"{key}.wav"
    assert read_wav(cached) == (pcm, 16000)

    # A fresh process (no in-memory copy) reads the file and never synthesizes.
    monkeypatch.setattr(speech_module, "_memo", {})

    def fail(*_args: object, **_kwargs: object) -> bytes:
        raise AssertionError("synthesized although the cache had it")

    monkeypatch.setattr(Synthesizer, "synthesize", fail)
    assert speech_pcm16(text, 16000) == pcm


def test_speech_helper_rebuilds_a_damaged_cache_entry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(speech_module, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(speech_module, "_memo", {})
    text = "A damaged cache file."
    key = speech_module._cache_key(text, 8000, speech_module.DEFAULT_VOICE, speech_module.DEFAULT_WPM)
    (tmp_path / f"{key}.wav").write_bytes(b"RIFF garbage")
    pcm = speech_pcm16(text, 8000)
    assert _rms(pcm) > 500
    assert read_wav(tmp_path / f"{key}.wav") == (pcm, 8000)


def test_speech_fixture(speech: object) -> None:
    assert callable(speech)
    pcm = speech("Fixture speech.", 8000)
    assert isinstance(pcm, bytes) and _rms(pcm) > 500


def test_silence() -> None:
    assert silence(20, 8000) == bytes(320)
    assert silence(0, 16000) == b""
    assert len(silence(1000, 24000)) == 48000


def test_write_wav_round_trip(tmp_path: Path) -> None:
    pcm = np.arange(-800, 800, dtype="<i2").tobytes()
    path = tmp_path / "sub" / "x.wav"
    write_wav(path, pcm, 24000)
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24000)
    assert read_wav(path) == (pcm, 24000)
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
