"""G.711 µ-law / A-law: bit-exact against CPython's ``audioop`` on every input, plus literal vectors."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from voice.errors import AudioError


def _audioop() -> ModuleType | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:  # removed from the standard library in Python 3.13
            return None
    return audioop


audioop = _audioop()
needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop is not in this Python (removed in 3.13)")

Codec = Callable[[bytes], bytes]

ALL_PCM = np.arange(-32768, 32768, dtype="<i2").tobytes()
ALL_CODES = bytes(range(256))


@needs_audioop
def test_ulaw_encode_matches_audioop_on_all_65536_samples() -> None:
    assert audioop is not None
    assert ulaw_encode(ALL_PCM) == audioop.lin2ulaw(ALL_PCM, 2)


@needs_audioop
def test_alaw_encode_matches_audioop_on_all_65536_samples() -> None:
    assert audioop is not None
    assert alaw_encode(ALL_PCM) == audioop.lin2alaw(ALL_PCM, 2)


@needs_audioop
def test_ulaw_decode_matches_audioop_on_all_256_codes() -> None:
    assert audioop is not None
    assert ulaw_decode(ALL_CODES) == audioop.ulaw2lin(ALL_CODES, 2)


@needs_audioop
def test_alaw_decode_matches_audioop_on_all_256_codes() -> None:
    assert audioop is not None
    assert alaw_decode(ALL_CODES) == audioop.alaw2lin(ALL_CODES, 2)


def _pcm(*values: int) -> bytes:
    return np.array(values, dtype="<i2").tobytes()


@pytest.mark.parametrize(
    ("sample", "ulaw", "alaw"),
    [
        (0, 0xFF, 0xD5),  # silence: µ-law all ones, A-law 0x80 ^ 0x55
        (-1, 0x7E, 0x55),  # µ-law: the 14-bit value -1 is magnitude 1, step 1 of segment 0
        (32767, 0x80, 0xAA),
        (-32768, 0x00, 0x2A),
        (1000, 0xCE, 0xFA),
        (-1000, 0x4E, 0x7A),
    ],
)
def test_encode_literal_vectors(sample: int, ulaw: int, alaw: int) -> None:
    assert ulaw_encode(_pcm(sample)) == bytes([ulaw])
    assert alaw_encode(_pcm(sample)) == bytes([alaw])


@pytest.mark.parametrize(
    ("code", "ulaw_value", "alaw_value"),
    [
        (0xFF, 0, 848),
        (0x7F, 0, -848),
        (0x80, 32124, 5504),  # the largest µ-law magnitude
        (0x00, -32124, -5504),
        (0xAA, 5372, 32256),  # the largest A-law magnitude
        (0x2A, -5372, -32256),
        (0xD5, 716, 8),  # A-law's smallest positive value
        (0x55, -716, -8),
    ],
)
def test_decode_literal_vectors(code: int, ulaw_value: int, alaw_value: int) -> None:
    assert ulaw_decode(bytes([code])) == _pcm(ulaw_value)
    assert alaw_decode(bytes([code])) == _pcm(alaw_value)


def test_frame_sizes_and_empty_input() -> None:
    frame = np.linspace(-30000, 30000, 160).astype("<i2").tobytes()
    assert len(ulaw_encode(frame)) == len(alaw_encode(frame)) == 160
    assert len(ulaw_decode(bytes(160))) == len(alaw_decode(bytes(160))) == 320
    assert ulaw_encode(b"") == alaw_encode(b"") == ulaw_decode(b"") == alaw_decode(b"") == b""


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode])
def test_odd_length_pcm_raises_audio_error(encode: Codec) -> None:
    with pytest.raises(AudioError, match="16-bit samples"):
        encode(b"\x00\x01\x02")


def test_every_code_survives_decode_then_encode() -> None:
    # A-law has no negative zero, so every code maps back to itself; µ-law's 0x7F (-0) decodes to 0 = 0xFF.
    assert alaw_encode(alaw_decode(ALL_CODES)) == ALL_CODES
    expected = bytearray(ALL_CODES)
    expected[0x7F] = 0xFF
    assert ulaw_encode(ulaw_decode(ALL_CODES)) == bytes(expected)


def _roundtrip_error_bound(x: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """G.711 quantisation error: half a step, steps double each segment (1/32 of the magnitude) + clip."""
    return np.abs(x) / 32.0 + 8.0


@pytest.mark.parametrize(("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)])
def test_roundtrip_of_every_sample_is_monotonic_and_within_quantisation(
    encode: object, decode: object
) -> None:
    assert callable(encode) and callable(decode)
    x = np.frombuffer(ALL_PCM, dtype="<i2").astype(np.int64)
    y = np.frombuffer(decode(encode(ALL_PCM)), dtype="<i2").astype(np.int64)
    assert np.all(np.diff(y) >= 0)
    assert np.all(np.abs(y - x) <= _roundtrip_error_bound(x))
    assert len(np.unique(y)) == 256 - (1 if encode is ulaw_encode else 0)  # µ-law: +0 and -0 coincide


@given(st.binary(max_size=2000).map(lambda b: b[: len(b) // 2 * 2]))
def test_roundtrip_property(pcm: bytes) -> None:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int64)
    for encode, decode in ((ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)):
        codes = encode(pcm)
        assert len(codes) == len(x)
        y = np.frombuffer(decode(codes), dtype="<i2").astype(np.int64)
        assert np.all(np.abs(y - x) <= _roundtrip_error_bound(x))
        again = codes.replace(b"\x7f", b"\xff") if encode is ulaw_encode else codes
        assert encode(decode(codes)) == again


@given(st.binary(min_size=1, max_size=501).filter(lambda b: len(b) % 2 == 1))
def test_odd_lengths_always_raise(pcm: bytes) -> None:
    with pytest.raises(AudioError):
        ulaw_encode(pcm)
    with pytest.raises(AudioError):
        alaw_encode(pcm)
