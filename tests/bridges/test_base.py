"""The leg contract (bridges/base.py; DESIGN.md "The leg contract", protocols.md §A.3)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.realtime.realtime_audio_formats import AudioPCM, AudioPCMA, AudioPCMU

from bridges.base import (
    AUDIO_CODECS,
    DTMF_DIGITS,
    AudioCodec,
    CallerAudio,
    CallerDtmf,
    Leg,
    LegCapabilities,
    LegEvent,
    LegHangup,
    LegKind,
    PlaybackReport,
    bytes_per_ms,
    frame_bytes,
    frame_ms,
    is_dtmf_digit,
    sample_rate,
    silence_frame,
    upstream_format,
)
from voice.audio.g711 import alaw_decode, ulaw_decode


def test_codecs_and_frame_sizes() -> None:
    assert AUDIO_CODECS == ("pcmu", "pcma", "pcm16_24k")
    assert [frame_bytes(c) for c in AUDIO_CODECS] == [160, 160, 960]
    assert [sample_rate(c) for c in AUDIO_CODECS] == [8000, 8000, 24000]
    assert [bytes_per_ms(c) for c in AUDIO_CODECS] == [8, 8, 48]


@pytest.mark.parametrize(
    ("codec", "nbytes", "ms"),
    [("pcmu", 160, 20), ("pcma", 4000, 500), ("pcm16_24k", 960, 20), ("pcm16_24k", 100, 2), ("pcmu", 0, 0)],
)
def test_frame_ms(codec: AudioCodec, nbytes: int, ms: int) -> None:
    assert frame_ms(codec, nbytes) == ms


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        frame_ms("pcmu", -1)
    with pytest.raises(ValueError):
        frame_bytes("opus")  # type: ignore[arg-type]


@pytest.mark.parametrize("codec", AUDIO_CODECS)
def test_silence_frame_decodes_to_zero(codec: AudioCodec) -> None:
    frame = silence_frame(codec)
    assert len(frame) == frame_bytes(codec)
    pcm = {"pcmu": ulaw_decode, "pcma": alaw_decode}.get(codec, bytes)(frame)
    assert max(abs(int.from_bytes(pcm[i : i + 2], "little", signed=True)) for i in range(0, len(pcm), 2)) <= 8


def test_upstream_format_matches_the_sdk_models() -> None:
    assert upstream_format("pcmu") == {"type": "audio/pcmu"}
    assert upstream_format("pcma") == {"type": "audio/pcma"}
    assert upstream_format("pcm16_24k") == {"type": "audio/pcm", "rate": 24000}
    AudioPCMU.model_validate(upstream_format("pcmu"))
    AudioPCMA.model_validate(upstream_format("pcma"))
    AudioPCM.model_validate(upstream_format("pcm16_24k"))
    fmt = upstream_format("pcmu")
    fmt["type"] = "changed"
    assert upstream_format("pcmu") == {"type": "audio/pcmu"}  # a fresh dict each time


def test_dtmf_digits() -> None:
    assert DTMF_DIGITS == "0123456789*#ABCD"
    assert all(is_dtmf_digit(d) for d in DTMF_DIGITS)
    assert not any(is_dtmf_digit(d) for d in ("", "12", "E", "a", " "))


def test_events_are_frozen() -> None:
    events: list[LegEvent] = [
        CallerAudio(b"\xff" * 160, 20),
        CallerDtmf("5", 40),
        PlaybackReport("i", 20),
        LegHangup("bye"),
    ]
    for ev in events:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(ev, dataclasses.fields(ev)[0].name, None)
    assert CallerDtmf("5", 40) == CallerDtmf("5", 40)


class FakeLeg:
    """A minimal leg: what a bridge has to provide."""

    def __init__(self) -> None:
        self.played: list[tuple[bytes, str, int]] = []

    @property
    def call_id(self) -> str:
        return "call_1"

    @property
    def kind(self) -> LegKind:
        return "browser"

    @property
    def codec(self) -> AudioCodec:
        return "pcm16_24k"

    @property
    def capabilities(self) -> LegCapabilities:
        return LegCapabilities(codecs=("pcm16_24k",), reports_playback=True)

    @property
    def metadata(self) -> dict[str, Any]:
        return {}

    async def events(self) -> AsyncIterator[LegEvent]:
        yield LegHangup("done")

    async def play(self, frame: bytes, item_id: str, item_ms: int) -> None:
        self.played.append((frame, item_id, item_ms))

    async def clear(self) -> None: ...

    async def send_dtmf(self, digits: str) -> None: ...

    async def transfer(self, target: str) -> None: ...

    async def hangup(self, reason: str) -> None: ...

    async def send_control(self, message: dict[str, Any]) -> None: ...


async def test_a_leg_satisfies_the_protocol() -> None:
    leg = FakeLeg()
    assert isinstance(leg, Leg)
    typed: Leg = leg
    await typed.play(silence_frame(typed.codec), "item_1", 20)
    assert leg.played == [(bytes(960), "item_1", 20)]
    assert [e async for e in typed.events()] == [LegHangup("done")]
    assert LegCapabilities(codecs=("pcmu",)).can_transfer is False
