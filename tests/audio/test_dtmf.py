"""DTMF: Q.23 tone generation and the Q.24-style detector (durations, frequency tolerance, twist, level,
talk-off on real speech, noise, tones mixed into speech)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice.audio.dtmf import COLUMN_HZ, KEYPAD, ROW_HZ, DtmfDetector, DtmfDigit, dtmf_frequencies, dtmf_tones
from voice.audio.g711 import ulaw_decode, ulaw_encode
from voice.audio.pcm import amplitude_for_dbfs, rms_dbfs, to_pcm16
from voice.errors import AudioError

Speech = Callable[[str, int], bytes]

ALL_KEYS = "123A456B789C*0#D"
RATES = [8000, 16000, 24000, 32000, 48000]

SENTENCES = [
    "Hello, I would like to book a table for two at seven tonight.",
    "Please press one for sales, two for support, or stay on the line for an operator.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Oh no! Really? Wow, that is amazing. Hmm, let me think about it for a moment. Okay, yes.",
    "The quick brown fox jumps over the lazy dog while nine zebras hum a tune.",
    "Aaaah, eeee, ooooh, my my my, hello hello hello, beep beep boop, la la la la.",
]


def pair(
    rate: int, low: float, high: float, ms: float, low_db: float = -10.0, high_db: float = -10.0
) -> bytes:
    """A tone pair of ``ms`` with 100 ms of silence on each side."""
    t = np.arange(round(rate * ms / 1000)) / rate
    tone = amplitude_for_dbfs(low_db) * np.sin(2 * np.pi * low * t)
    tone += amplitude_for_dbfs(high_db) * np.sin(2 * np.pi * high * t)
    pad = np.zeros(rate // 10)
    return to_pcm16(np.concatenate([pad, tone, pad]))


def detect(pcm: bytes, rate: int, chunk_ms: int = 20, **kwargs: float) -> list[DtmfDigit]:
    detector = DtmfDetector(rate, **kwargs)  # type: ignore[arg-type]
    step = 2 * rate * chunk_ms // 1000
    found: list[DtmfDigit] = []
    for i in range(0, len(pcm), step):
        found += detector.push(pcm[i : i + step])
    return found


def keys(found: list[DtmfDigit]) -> str:
    return "".join(d.digit for d in found)


# --- generator --------------------------------------------------------------------------------------------


def test_keypad_matches_q23() -> None:
    assert dtmf_frequencies("1") == (697.0, 1209.0)
    assert dtmf_frequencies("0") == (941.0, 1336.0)
    assert dtmf_frequencies("#") == (941.0, 1477.0)
    assert dtmf_frequencies("d") == (941.0, 1633.0)
    assert {dtmf_frequencies(k) for k in ALL_KEYS} == {(r, c) for r in ROW_HZ for c in COLUMN_HZ}


@pytest.mark.parametrize("rate", [8000, 16000])
def test_generator_emits_exact_pairs_at_the_requested_level(rate: int) -> None:
    pcm = dtmf_tones("5", rate, on_ms=500, off_ms=0, level_dbfs=-12.0, twist_db=2.0)
    assert len(pcm) == 2 * rate // 2
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x)) * 2 / len(x)  # 2 Hz bins: 770 and 1336 Hz are exact bins
    hz = np.fft.rfftfreq(len(x), 1 / rate)
    top2 = sorted(hz[np.argsort(spectrum)[-2:]])
    assert top2 == [770.0, 1336.0]
    assert 20 * np.log10(spectrum[hz == 770.0][0] / 32767) == pytest.approx(-12.0, abs=0.05)
    assert 20 * np.log10(spectrum[hz == 1336.0][0] / 32767) == pytest.approx(-10.0, abs=0.05)


def test_generator_timing_and_errors() -> None:
    pcm = dtmf_tones("12#", 8000, on_ms=70, off_ms=50)
    assert len(pcm) == 3 * 2 * 8 * 120
    x = np.frombuffer(pcm, "<i2")
    assert np.all(x[8 * 70 : 8 * 120] == 0) and np.any(x[8 * 120 : 8 * 190] != 0)
    assert dtmf_tones("", 8000) == b""
    for bad in ("x", "1 2", "E"):
        with pytest.raises(AudioError, match="DTMF digit"):
            dtmf_tones(bad, 8000)


# --- detector: genuine tones --------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", RATES)
def test_all_sixteen_keys_with_start_and_end(rate: int) -> None:
    pcm = bytes(2 * rate // 10) + dtmf_tones(ALL_KEYS, rate, on_ms=50, off_ms=50)
    found = detect(pcm, rate)
    assert keys(found) == ALL_KEYS
    for i, digit in enumerate(found):
        assert abs(digit.start_ms - (100 + 100 * i)) <= 2
        assert abs(digit.end_ms - (150 + 100 * i)) <= 2


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("key", ALL_KEYS)
def test_40ms_accepted_and_25ms_rejected(rate: int, key: str) -> None:
    low, high = dtmf_frequencies(key)
    assert keys(detect(pair(rate, low, high, 40), rate)) == key
    assert keys(detect(pair(rate, low, high, 25), rate)) == ""
    assert keys(detect(pair(rate, low, high, 20), rate)) == ""
    assert keys(detect(pair(rate, low, high, 10), rate)) == ""


def test_min_duration_is_configurable() -> None:
    low, high = dtmf_frequencies("7")
    assert keys(detect(pair(8000, low, high, 50), 8000, min_duration_ms=65)) == ""
    assert keys(detect(pair(8000, low, high, 70), 8000, min_duration_ms=65)) == "7"


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("key", ALL_KEYS)
@pytest.mark.parametrize("which", ["low", "high"])
def test_frequency_tolerance(rate: int, key: str, which: str) -> None:
    """Within +-1.5 % accepted; +-3.5 % and +-5 % rejected (Q.24)."""
    low, high = dtmf_frequencies(key)
    for deviation, expected in (
        (0.015, key),
        (-0.015, key),
        (0.035, ""),
        (-0.035, ""),
        (0.05, ""),
        (-0.05, ""),
    ):
        f_low = low * (1 + deviation) if which == "low" else low
        f_high = high * (1 + deviation) if which == "high" else high
        assert keys(detect(pair(rate, f_low, f_high, 60), rate)) == expected, deviation


def test_tone_between_two_rows_is_rejected() -> None:
    assert keys(detect(pair(8000, (697 + 770) / 2, 1209, 80), 8000)) == ""
    assert keys(detect(pair(8000, 697, (1477 + 1633) / 2, 80), 8000)) == ""


@pytest.mark.parametrize("key", ALL_KEYS)
def test_twist_limits(key: str) -> None:
    """Twist = high-group level minus low-group level; accepted from -8 dB (normal) to +4 dB (reverse)."""
    low, high = dtmf_frequencies(key)
    for twist, expected in ((0.0, key), (3.5, key), (-7.5, key), (5.0, ""), (-9.5, "")):
        pcm = pair(8000, low, high, 60, low_db=-15.0, high_db=-15.0 + twist)
        assert keys(detect(pcm, 8000)) == expected, twist


def test_twist_limits_are_configurable() -> None:
    pcm = pair(8000, 852, 1477, 60, low_db=-10.0, high_db=-16.0)
    assert keys(detect(pcm, 8000, normal_twist_db=4.0)) == ""
    assert keys(detect(pcm, 8000)) == "9"


@pytest.mark.parametrize("key", ALL_KEYS)
def test_level_range(key: str) -> None:
    low, high = dtmf_frequencies(key)
    assert keys(detect(pair(8000, low, high, 60, -3.0, -3.0), 8000)) == key  # near full scale
    assert keys(detect(pair(8000, low, high, 60, -35.0, -35.0), 8000)) == key
    assert keys(detect(pair(8000, low, high, 60, -45.0, -45.0), 8000)) == ""


def test_each_key_press_is_reported_once() -> None:
    long_press = bytes(1600) + dtmf_tones("3", 8000, on_ms=2000, off_ms=100)
    found = detect(long_press, 8000)
    assert [(d.digit, d.start_ms, d.end_ms) for d in found] == [("3", 100, 2100)]
    repeated = dtmf_tones("11", 8000, on_ms=45, off_ms=40)
    assert keys(detect(repeated, 8000)) == "11"


def test_a_10ms_dropout_does_not_split_a_digit() -> None:
    x = np.frombuffer(bytes(1600) + dtmf_tones("6", 8000, on_ms=200, off_ms=100), "<i2").copy()
    x[800 + 800 : 800 + 880] = 0  # 10 ms gap in the middle
    assert keys(detect(x.tobytes(), 8000)) == "6"


def test_detection_does_not_depend_on_chunking() -> None:
    pcm = bytes(800) + dtmf_tones("159#D*", 16000, on_ms=45, off_ms=45)
    reference = detect(pcm, 16000)
    assert keys(reference) == "159#D*"
    for chunk_ms in (1, 7, 33, 1000):
        detector = DtmfDetector(16000)
        step = 2 * 16 * chunk_ms + 2  # odd sizes in samples too
        found: list[DtmfDigit] = []
        for i in range(0, len(pcm), step):
            found += detector.push(pcm[i : i + step])
        assert found == reference


def test_through_ulaw() -> None:
    pcm = ulaw_decode(ulaw_encode(bytes(800) + dtmf_tones("0123456789", 8000, on_ms=40, off_ms=40)))
    assert keys(detect(pcm, 8000)) == "0123456789"


# --- detector: things that are not DTMF -------------------------------------------------------------------


def test_silence_gives_nothing() -> None:
    assert detect(bytes(2 * 8000 * 5), 8000) == []


@pytest.mark.parametrize("rate", [8000, 16000])
def test_noise_gives_nothing(rate: int) -> None:
    rng = np.random.default_rng(rate)
    for sigma in (30.0, 1000.0, 10000.0):
        assert detect(to_pcm16(rng.normal(0, sigma, rate * 10)), rate) == []


@pytest.mark.parametrize("rate", [8000, 16000])
def test_tones_in_noise_at_15_db_snr_are_detected(rate: int) -> None:
    digits = "5193#*0A"
    clean = np.frombuffer(
        bytes(rate // 5) + dtmf_tones(digits, rate, on_ms=50, off_ms=60, level_dbfs=-20.0), "<i2"
    )
    noise = np.random.default_rng(9).normal(0, amplitude_for_dbfs(-20.0) / 10 ** (15 / 20), len(clean))
    assert keys(detect(to_pcm16(clean + noise), rate)) == digits


@pytest.mark.parametrize("rate", [8000, 16000])
def test_speech_gives_no_digits(rate: int, speech: Speech) -> None:
    for text in SENTENCES:
        pcm = speech(text, rate)
        assert detect(pcm, rate) == [], text
        if rate == 8000:
            assert detect(ulaw_decode(ulaw_encode(pcm)), rate) == [], text


def active_level_dbfs(x: np.ndarray, rate: int) -> float:
    """RMS level of the 20 ms frames louder than -50 dBFS (a simple active speech level)."""
    n = rate // 50
    frames = x[: len(x) // n * n].reshape(-1, n)
    active = frames[np.sqrt(np.mean(frames**2, axis=1)) > 100]
    return rms_dbfs(active.ravel())


@pytest.mark.parametrize("rate", [8000, 16000])
def test_tones_mixed_into_speech_are_detected(rate: int, speech: Speech) -> None:
    """Telephone levels: speech at -22 dBFS active level (a loud talker), tones at -13 dBFS each (about
    -10 dBm0); the keys land at many different points of two sentences."""
    talk = np.frombuffer(speech(SENTENCES[0], rate) + speech(SENTENCES[1], rate), "<i2").astype(np.float64)
    talk *= 10 ** ((-22.0 - active_level_dbfs(talk, rate)) / 20)
    digits = "159#0D*"
    tones = np.frombuffer(dtmf_tones(digits, rate, on_ms=60, off_ms=600, level_dbfs=-13.0), "<i2")
    for offset_ms in (250, 400, 550, 700):
        mixed = talk.copy()
        start = rate * offset_ms // 1000
        mixed[start : start + len(tones)] += tones
        found = detect(to_pcm16(mixed), rate)
        assert keys(found) == digits, offset_ms
        for i, digit in enumerate(found):
            assert abs(digit.start_ms - (offset_ms + 660 * i)) <= 5
            assert abs(digit.end_ms - (offset_ms + 60 + 660 * i)) <= 5


# --- errors and robustness --------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [11025, 22050, 44100, 0])
def test_unsupported_rates_raise(rate: int) -> None:
    with pytest.raises(AudioError, match="Hz"):
        DtmfDetector(rate)


def test_odd_length_raises() -> None:
    with pytest.raises(AudioError, match="16-bit"):
        DtmfDetector(8000).push(b"\x01\x02\x03")


@given(st.lists(st.binary(max_size=3000), max_size=10), st.sampled_from([8000, 16000]))
@settings(max_examples=80, deadline=None)
def test_never_raises_on_random_even_length_bytes(chunks: list[bytes], rate: int) -> None:
    detector = DtmfDetector(rate)
    for chunk in chunks:
        for digit in detector.push(chunk[: len(chunk) // 2 * 2]):
            assert digit.digit in "".join(KEYPAD)
            assert 0 <= digit.start_ms < digit.end_ms


@given(st.binary(min_size=1, max_size=999).filter(lambda b: len(b) % 2 == 1))
def test_odd_lengths_always_raise_and_leave_the_detector_usable(pcm: bytes) -> None:
    detector = DtmfDetector(8000)
    with pytest.raises(AudioError):
        detector.push(pcm)
    assert keys(detector.push(dtmf_tones("7", 8000, on_ms=50, off_ms=60))) == "7"
