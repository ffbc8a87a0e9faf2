"""The leg contract every bridge implements (DESIGN.md "The leg contract").

A *leg* is one caller-side transport (Twilio Media Streams, SIP + RTP, WebRTC, a browser WebSocket) seen
the way the call needs it:

- inbound events (:data:`LegEvent`): caller audio in the leg's codec with a media timestamp, DTMF digits,
  the leg's own playout clock (:class:`PlaybackReport`), hold and resume (:class:`LegHold`) and hang-up;
- outbound calls: ``play`` one paced 20 ms frame, ``clear`` what is not yet played, ``send_dtmf``,
  ``transfer``, ``hangup``, ``send_control`` (UI messages for legs that have a UI);
- capabilities (:class:`LegCapabilities`).

A leg may also offer the per-frame fast path (:class:`DirectLeg`): it hands inbound events straight to a
sink as they arrive and sends a frame synchronously when nothing is in its way, so the 20 ms path of a call
involves no queue and no task switch. The call uses it where offered and falls back to ``events`` and
``play`` whenever the leg says so.

Codec policy (DESIGN.md "Codec policy", protocols.md §A.3): a leg exchanges audio with the call in one
:data:`AudioCodec` and the upstream Realtime session uses the same format, so phone audio passes through
byte for byte (``audio/pcmu``, ``audio/pcma``) and browser audio is PCM16 at 24 kHz (``audio/pcm``).
Resampling to and from a transport's own rate (browser 48 kHz, Opus) happens inside the bridge.

Frames are 20 ms: 160 bytes for G.711 (8 kHz, one byte per sample) and 960 bytes for PCM16 at 24 kHz.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, TypeAlias, get_args, runtime_checkable

__all__ = [
    "AUDIO_CODECS",
    "DTMF_DIGITS",
    "FRAME_MS",
    "AudioCodec",
    "CallerAudio",
    "CallerDtmf",
    "DirectLeg",
    "EventSink",
    "Leg",
    "LegCapabilities",
    "LegEvent",
    "LegHangup",
    "LegHold",
    "LegKind",
    "PlaybackReport",
    "PlayoutClock",
    "bytes_per_ms",
    "frame_bytes",
    "frame_ms",
    "is_dtmf_digit",
    "sample_rate",
    "silence_frame",
    "upstream_format",
]

AudioCodec: TypeAlias = Literal["pcmu", "pcma", "pcm16_24k"]
"""The audio format a leg exchanges with the call, and the upstream session's format (no transcoding)."""

AUDIO_CODECS: Final[tuple[AudioCodec, ...]] = get_args(AudioCodec)

LegKind: TypeAlias = Literal["browser", "twilio", "sip", "webrtc"]

FRAME_MS: Final = 20
"""Duration of one paced frame (``Leg.play``) in ms."""

DTMF_DIGITS: Final = "0123456789*#ABCD"
"""The 16 DTMF keys (RFC 4733 events 0-15; protocols.md §D.1)."""

_SAMPLE_RATE: Final[dict[str, int]] = {"pcmu": 8000, "pcma": 8000, "pcm16_24k": 24000}
_BYTES_PER_MS: Final[dict[str, int]] = {"pcmu": 8, "pcma": 8, "pcm16_24k": 48}
# G.711 codes of a zero sample: µ-law 0xFF, A-law 0xD5 (ITU-T G.711 tables; voice.audio.g711 agrees).
_SILENCE_BYTE: Final[dict[str, int]] = {"pcmu": 0xFF, "pcma": 0xD5, "pcm16_24k": 0x00}
_UPSTREAM_FORMAT: Final[dict[str, dict[str, Any]]] = {
    "pcmu": {"type": "audio/pcmu"},
    "pcma": {"type": "audio/pcma"},
    "pcm16_24k": {"type": "audio/pcm", "rate": 24000},
}


def _check(codec: str) -> str:
    if codec not in _SAMPLE_RATE:
        raise ValueError(f"unknown audio codec {codec!r}; expected one of {list(AUDIO_CODECS)}")
    return codec


def sample_rate(codec: AudioCodec) -> int:
    """Sample rate of ``codec`` in Hz (8000 for G.711, 24000 for ``pcm16_24k``)."""
    return _SAMPLE_RATE[_check(codec)]


def bytes_per_ms(codec: AudioCodec) -> int:
    """Bytes of one millisecond of ``codec`` audio (8 for G.711, 48 for PCM16 at 24 kHz)."""
    return _BYTES_PER_MS[_check(codec)]


def frame_bytes(codec: AudioCodec) -> int:
    """Bytes in one 20 ms frame: 160 for G.711, 960 for ``pcm16_24k`` (protocols.md §A.3)."""
    return FRAME_MS * bytes_per_ms(codec)


def frame_ms(codec: AudioCodec, nbytes: int) -> int:
    """Whole milliseconds of audio in ``nbytes`` bytes of ``codec`` (rounded down)."""
    if nbytes < 0:
        raise ValueError(f"a byte count cannot be negative: {nbytes}")
    return nbytes // bytes_per_ms(codec)


def silence_frame(codec: AudioCodec) -> bytes:
    """One 20 ms frame of digital silence in ``codec`` (µ-law 0xFF, A-law 0xD5, PCM zeros)."""
    return bytes([_SILENCE_BYTE[_check(codec)]]) * frame_bytes(codec)


def upstream_format(codec: AudioCodec) -> dict[str, Any]:
    """The Realtime GA audio format object for ``codec`` (protocols.md §A.3, §A.7).

    ``{"type": "audio/pcmu"}``, ``{"type": "audio/pcma"}`` or ``{"type": "audio/pcm", "rate": 24000}``; used
    for both ``audio.input.format`` and ``audio.output.format`` so no transcoding happens in the call.
    """
    return dict(_UPSTREAM_FORMAT[_check(codec)])


def is_dtmf_digit(digit: str) -> bool:
    """Whether ``digit`` is exactly one DTMF key (``0-9``, ``*``, ``#``, ``A-D``)."""
    return len(digit) == 1 and digit in DTMF_DIGITS


# Inbound events ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallerAudio:
    """Caller audio in the leg's codec; ``media_ms`` is its position on the leg's media clock."""

    audio: bytes
    media_ms: int


@dataclass(frozen=True, slots=True)
class CallerDtmf:
    """One DTMF key from the caller (Twilio ``dtmf``, RFC 4733 event, browser keypad, in-band tone)."""

    digit: str
    media_ms: int


@dataclass(frozen=True, slots=True)
class PlaybackReport:
    """The leg's playout clock: ``played_ms`` of agent item ``item_id`` have really been heard.

    Sources: Twilio ``mark`` echoes, the browser's playback-position reports (protocols.md §C.2).
    """

    item_id: str
    played_ms: int


@dataclass(frozen=True, slots=True)
class LegHold:
    """The caller side stopped (``held``) or resumed taking our audio: a SIP re-INVITE that puts the call on
    hold (RFC 3264 §8.4: ``sendonly``/``inactive`` from the peer) or takes it off. While held, agent audio is
    not played (the playout clock stops, so nothing sent into the void counts as heard)."""

    held: bool


@dataclass(frozen=True, slots=True)
class LegHangup:
    """The caller side ended (BYE, stream stop, socket closed)."""

    reason: str


LegEvent: TypeAlias = CallerAudio | CallerDtmf | PlaybackReport | LegHold | LegHangup

EventSink: TypeAlias = Callable[[LegEvent], None]
"""Takes one inbound event synchronously (:meth:`DirectLeg.listen`)."""


@dataclass(frozen=True, slots=True)
class LegCapabilities:
    """What a leg can do.

    ``codecs``: the codecs it can exchange with the call (first = preferred); ``native_dtmf``: it can send
    DTMF out of band (RFC 4733, Twilio ``<Play digits>``) rather than as in-band tones; ``sends_dtmf_tones``:
    it renders DTMF itself as exact in-band tone pairs in its outbound audio, in sequence with the agent's
    frames and never mixed with them (the Twilio leg), so the call hands ``send_dtmf`` to the leg instead of
    mixing tones into the agent's audio; ``can_transfer``: it can hand the caller to another destination (SIP
    REFER, Twilio ``<Dial>``); ``reports_playback``: it sends :class:`PlaybackReport` events, so the call's
    idea of "heard" comes from the leg.
    """

    codecs: tuple[AudioCodec, ...]
    native_dtmf: bool = False
    sends_dtmf_tones: bool = False
    can_transfer: bool = False
    reports_playback: bool = False


@runtime_checkable
class Leg(Protocol):
    """One caller-side transport as the call drives it (DESIGN.md "The leg contract")."""

    @property
    def call_id(self) -> str: ...

    @property
    def kind(self) -> LegKind: ...

    @property
    def codec(self) -> AudioCodec: ...

    @property
    def capabilities(self) -> LegCapabilities: ...

    @property
    def metadata(self) -> dict[str, Any]:
        """Caller id, callee, SIP/HTTP headers, ... (whatever the transport knows)."""
        ...

    def events(self) -> AsyncIterator[LegEvent]:
        """Inbound events until the leg ends (the last one is a :class:`LegHangup`)."""
        ...

    async def play(self, frame: bytes, item_id: str, item_ms: int) -> None:
        """Play one paced 20 ms ``frame`` of agent item ``item_id``.

        ``item_ms`` is the position in the item at the *end* of this frame (ms of real audio, padding not
        counted); a leg that reports playback echoes it back as ``PlaybackReport(item_id, item_ms)`` once
        the frame has been heard.
        """
        ...

    async def clear(self) -> None:
        """Drop all agent audio not yet played (Twilio ``clear``, flush the RTP queue, browser stop)."""
        ...

    async def send_dtmf(self, digits: str) -> None: ...

    async def transfer(self, target: str) -> None: ...

    async def hangup(self, reason: str) -> None: ...

    async def send_control(self, message: dict[str, Any]) -> None:
        """A JSON control message for legs with a UI (browser); a no-op elsewhere."""
        ...


@runtime_checkable
class DirectLeg(Protocol):
    """The per-frame fast path a leg may offer besides :class:`Leg` (see the module docstring)."""

    def listen(self, sink: EventSink) -> None:
        """From now on hand inbound events to ``sink`` as they arrive, where the transport allows it, in
        order with those :meth:`Leg.events` yields (which keeps yielding the others, and the hang-up)."""
        ...

    def play_now(self, frame: bytes, item_id: str, item_ms: int) -> bool:
        """:meth:`Leg.play` done synchronously; ``False`` (nothing sent) when that cannot be done now in
        order (a send in progress, tones queued, back-pressure): the caller then uses :meth:`Leg.play`."""
        ...

    def audio_stopped(self) -> None:
        """The call had no frame to play on a tick after playing some (the agent's audio ended or paused),
        in order with the frames before (a leg that marks its audio in batches closes the batch)."""
        ...


@runtime_checkable
class PlayoutClock(Protocol):
    """A leg whose playout clock runs between its :class:`PlaybackReport` events (Twilio interpolates
    between mark echoes): the call asks it for the position right before it cuts the agent off, so the
    truncation is exact even when reports are sparse."""

    def heard_now(self) -> tuple[str, int] | None:
        """``(item_id, ms heard of it)`` for the agent item playing now; ``None`` when unknown."""
        ...
