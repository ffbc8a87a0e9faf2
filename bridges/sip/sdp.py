"""SDP (RFC 4566) parse/serialize and the offer/answer model (RFC 3264) for one G.711 audio stream.

Sans-I/O: text in, :class:`SessionDescription` out, and back. A description that keeps the RFC 4566 §5 line
order (``v o s i u e p c b t r z k a``, then per media ``m i c b k a``) with CRLF line ends and single
spaces serializes back byte for byte. On input, extra spaces in ``o=``, ``c=`` and ``m=`` and LF line ends
are tolerated; lines of an unknown type are ignored (kept out of the model).

Offer/answer (RFC 3264 §5-§8):

- :func:`build_offer` for outbound calls: PCMU/PCMA (our preference order) and ``telephone-event``.
- :func:`build_answer` answers an offer with our codecs: one m-line per offered m-line in order (§6), the
  first audio stream with a common codec accepted, every other stream rejected with port 0; the codec is the
  first offered one we support (the offerer's preference); ``telephone-event`` is answered when offered at
  the codec's clock rate, with its ``fmtp`` (RFC 4733 §2.4.1). Directions are mirrored (§6.1: sendonly ->
  recvonly) and intersected with ours; an offer with ``c=0.0.0.0`` (RFC 3264 §8.4, old-style hold) is
  answered ``recvonly``. No usable codec raises :class:`NoCommonCodec` (the UA answers 488).
- :func:`accept_answer` checks the answer to our offer and gives the :class:`NegotiatedMedia`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias, get_args

from voice.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "STATIC_PAYLOAD_TYPES",
    "Answer",
    "Attribute",
    "Codec",
    "Connection",
    "Direction",
    "MediaConfig",
    "MediaDescription",
    "NegotiatedMedia",
    "NoCommonCodec",
    "Origin",
    "SdpParseError",
    "SessionDescription",
    "accept_answer",
    "build_answer",
    "build_offer",
    "parse_sdp",
]

Direction: TypeAlias = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
_DIRECTIONS: Final[tuple[str, ...]] = get_args(Direction)

STATIC_PAYLOAD_TYPES: Final[dict[int, tuple[str, int]]] = {
    # RFC 3551 §6 Table 4 (audio)
    0: ("PCMU", 8000),
    3: ("GSM", 8000),
    4: ("G723", 8000),
    8: ("PCMA", 8000),
    9: ("G722", 8000),
    13: ("CN", 8000),
    18: ("G729", 8000),
}

_SUPPORTED: Final[dict[str, int]] = {"PCMU": 0, "PCMA": 8}
_TELEPHONE_EVENT: Final = "telephone-event"
_AUDIO_PROTOS: Final = frozenset({"RTP/AVP"})
_DIGITS_RE: Final = re.compile(r"[0-9]+")
_LINE_RE: Final = re.compile(r"([a-z])=(.*)", re.DOTALL)
_MAX_LINES: Final = 4096


class SdpParseError(RemoteProtocolError):
    """A session description from the peer could not be parsed (the UA answers 400)."""

    status_code = 400


class NoCommonCodec(RemoteProtocolError):
    """The offer or answer has no audio stream with a codec we support (RFC 3261 §21.4.26: answer 488)."""

    status_code = 488


# Model ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`` (RFC 4566 §5.2)."""

    username: str = "-"
    session_id: str = "0"
    session_version: int = 0
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )

    @classmethod
    def parse(cls, value: str) -> Origin:
        parts = value.split()
        if len(parts) != 6 or not _DIGITS_RE.fullmatch(parts[2]):
            raise SdpParseError(f"bad o= line: {value[:80]!r}")
        return cls(parts[0], parts[1], int(parts[2]), parts[3], parts[4], parts[5])


@dataclass(frozen=True, slots=True)
class Connection:
    """``c=<nettype> <addrtype> <connection-address>`` (RFC 4566 §5.7)."""

    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"

    @property
    def is_null(self) -> bool:
        """``0.0.0.0`` (or ``::``): the RFC 2543 way to put a call on hold (RFC 3264 §8.4)."""
        return self.address in ("0.0.0.0", "::")

    @classmethod
    def parse(cls, value: str) -> Connection:
        parts = value.split()
        if len(parts) != 3:
            raise SdpParseError(f"bad c= line: {value[:80]!r}")
        return cls(parts[2], parts[0], parts[1])

    @classmethod
    def for_address(cls, address: str) -> Connection:
        return cls(address, "IN", "IP6" if ":" in address else "IP4")


@dataclass(frozen=True, slots=True)
class Attribute:
    """``a=<name>`` or ``a=<name>:<value>`` (RFC 4566 §5.13)."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"

    @classmethod
    def parse(cls, text: str) -> Attribute:
        name, colon, value = text.partition(":")
        if not name:
            raise SdpParseError(f"bad a= line: {text[:80]!r}")
        return cls(name, value if colon else None)


@dataclass(frozen=True, slots=True)
class Codec:
    """One RTP payload format: ``a=rtpmap:<pt> <name>/<clock>[/<channels>]`` (+ ``a=fmtp``)."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int | None = None
    fmtp: str | None = None

    @property
    def rtpmap(self) -> str:
        tail = f"/{self.channels}" if self.channels is not None else ""
        return f"{self.payload_type} {self.name}/{self.clock_rate}{tail}"

    def same_format(self, other: Codec) -> bool:
        """Same encoding name (case-insensitive), clock rate and channel count (RFC 3264 §6.1)."""
        return (
            self.name.lower() == other.name.lower()
            and self.clock_rate == other.clock_rate
            and (self.channels or 1) == (other.channels or 1)
        )


@dataclass(frozen=True, slots=True)
class MediaDescription:
    """One media section: ``m=<media> <port>[/<count>] <proto> <fmt> ...`` and its lines (RFC 4566 §5.14)."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int | None = None
    title: str | None = None
    connection: Connection | None = None
    bandwidths: tuple[str, ...] = ()
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()

    def attribute(self, name: str) -> str | None:
        """The value of the first ``a=<name>`` ("" for a flag), or None."""
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute.value if attribute.value is not None else ""
        return None

    def attribute_values(self, name: str) -> list[str]:
        return [a.value for a in self.attributes if a.name == name and a.value is not None]

    @property
    def codecs(self) -> tuple[Codec, ...]:
        """The RTP payload formats in ``m=`` order, from ``rtpmap``/``fmtp`` or RFC 3551's static table."""
        rtpmaps: dict[int, tuple[str, int, int | None]] = {}
        fmtps: dict[int, str] = {}
        for value in self.attribute_values("rtpmap"):
            parsed = _parse_rtpmap(value)
            if parsed is not None:
                rtpmaps.setdefault(parsed[0], parsed[1:])
        for value in self.attribute_values("fmtp"):
            pt_text, _, params = value.partition(" ")
            if _DIGITS_RE.fullmatch(pt_text) and len(pt_text) <= 3:
                fmtps.setdefault(int(pt_text), params.strip())
        codecs: list[Codec] = []
        for fmt in self.formats:
            if not _DIGITS_RE.fullmatch(fmt) or len(fmt) > 3 or int(fmt) > 127:
                continue
            pt = int(fmt)
            if pt in rtpmaps:
                name, rate, channels = rtpmaps[pt]
            elif pt in STATIC_PAYLOAD_TYPES:
                name, rate = STATIC_PAYLOAD_TYPES[pt]
                channels = None
            else:
                continue
            codecs.append(Codec(pt, name, rate, channels, fmtps.get(pt)))
        return tuple(codecs)

    @property
    def ptime(self) -> int | None:
        """``a=ptime`` in ms (RFC 4566 §6), if present and valid."""
        value = self.attribute("ptime")
        if value and _DIGITS_RE.fullmatch(value.strip()) and 0 < len(value.strip()) <= 4:
            return int(value.strip()) or None
        return None

    @property
    def rtcp_port(self) -> int:
        """``a=rtcp`` (RFC 3605) or the RTP port + 1 (RFC 3550 §11)."""
        value = self.attribute("rtcp")
        if value:
            port_text = value.split(" ", 1)[0]
            if _DIGITS_RE.fullmatch(port_text) and len(port_text) <= 5 and int(port_text) <= 65535:
                return int(port_text)
        return self.port + 1

    def __str__(self) -> str:
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        lines = [f"m={self.media} {port} {' '.join((self.proto, *self.formats))}"]
        if self.title is not None:
            lines.append(f"i={self.title}")
        if self.connection is not None:
            lines.append(f"c={self.connection}")
        lines += [f"b={b}" for b in self.bandwidths]
        if self.key is not None:
            lines.append(f"k={self.key}")
        lines += [f"a={a}" for a in self.attributes]
        return "".join(line + "\r\n" for line in lines)


def _parse_rtpmap(value: str) -> tuple[int, str, int, int | None] | None:
    match = re.fullmatch(r"([0-9]{1,3}) +([^/ ]+)/([0-9]{1,9})(?:/([0-9]{1,3}))?\s*", value)
    if not match:
        return None
    channels = int(match[4]) if match[4] else None
    return int(match[1]), match[2], int(match[3]), channels


def _direction_of(attributes: Iterable[Attribute]) -> Direction | None:
    for attribute in attributes:
        if attribute.value is None and attribute.name in _DIRECTIONS:
            return attribute.name  # type: ignore[return-value]
    return None


@dataclass(frozen=True, slots=True)
class SessionDescription:
    """A whole session description (RFC 4566 §5)."""

    origin: Origin = field(default_factory=Origin)
    session_name: str = "-"
    media: tuple[MediaDescription, ...] = ()
    connection: Connection | None = None
    attributes: tuple[Attribute, ...] = ()
    version: int = 0
    info_lines: tuple[tuple[str, str], ...] = ()
    """``i=``, ``u=``, ``e=``, ``p=`` lines in order."""
    bandwidths: tuple[str, ...] = ()
    time_lines: tuple[tuple[str, str], ...] = (("t", "0 0"),)
    """``t=``, ``r=``, ``z=``, ``k=`` lines in order."""

    def connection_for(self, media: MediaDescription) -> Connection | None:
        """The media's ``c=`` or else the session's (RFC 4566 §5.7)."""
        return media.connection or self.connection

    def direction_for(self, media: MediaDescription) -> Direction:
        """The media's direction attribute, else the session's, else ``sendrecv`` (RFC 3264 §5.1)."""
        return _direction_of(media.attributes) or _direction_of(self.attributes) or "sendrecv"

    def __str__(self) -> str:
        lines = [f"v={self.version}", f"o={self.origin}", f"s={self.session_name}"]
        lines += [f"{kind}={value}" for kind, value in self.info_lines]
        if self.connection is not None:
            lines.append(f"c={self.connection}")
        lines += [f"b={b}" for b in self.bandwidths]
        lines += [f"{kind}={value}" for kind, value in self.time_lines]
        lines += [f"a={a}" for a in self.attributes]
        return "".join(line + "\r\n" for line in lines) + "".join(str(m) for m in self.media)

    def to_bytes(self) -> bytes:
        return str(self).encode("utf-8", "surrogateescape")


@dataclass(slots=True)
class _MediaLines:
    """The lines of one media section while parsing."""

    m: str
    title: str | None = None
    connection: Connection | None = None
    bandwidths: list[str] = field(default_factory=list)
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)

    def add(self, kind: str, value: str) -> None:
        if kind == "i":
            self.title = value
        elif kind == "c":
            self.connection = Connection.parse(value)
        elif kind == "b":
            self.bandwidths.append(value)
        elif kind == "k":
            self.key = value
        elif kind == "a":
            self.attributes.append(Attribute.parse(value))

    def build(self) -> MediaDescription:
        fields = self.m.split()
        if len(fields) < 3:
            raise SdpParseError(f"bad m= line: {self.m[:80]!r}")
        port_text, slash, count_text = fields[1].partition("/")
        if not _DIGITS_RE.fullmatch(port_text) or len(port_text) > 5 or int(port_text) > 65535:
            raise SdpParseError(f"bad m= port: {fields[1][:16]!r}")
        if slash and (not _DIGITS_RE.fullmatch(count_text) or len(count_text) > 5):
            raise SdpParseError(f"bad m= port count: {fields[1][:16]!r}")
        return MediaDescription(
            media=fields[0],
            port=int(port_text),
            proto=fields[2],
            formats=tuple(fields[3:]),
            port_count=int(count_text) if slash else None,
            title=self.title,
            connection=self.connection,
            bandwidths=tuple(self.bandwidths),
            key=self.key,
            attributes=tuple(self.attributes),
        )


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse a session description (RFC 4566 §5). Raises :class:`SdpParseError` and nothing else.

    Tolerates LF line ends and blank lines; ignores lines of an unknown type; requires ``v=0`` first and
    an ``o=`` line; a missing ``s=`` reads as ``-``.
    """
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    lines = [line for line in re.split(r"\r?\n", text) if line.strip()]
    if len(lines) > _MAX_LINES:
        raise SdpParseError("too many SDP lines")
    if not lines or lines[0].rstrip("\r") != "v=0":
        raise SdpParseError("SDP must start with v=0")
    origin: Origin | None = None
    session_name = "-"
    info: list[tuple[str, str]] = []
    connection: Connection | None = None
    bandwidths: list[str] = []
    times: list[tuple[str, str]] = []
    attributes: list[Attribute] = []
    sections: list[_MediaLines] = []
    for line in lines[1:]:
        match = _LINE_RE.fullmatch(line.rstrip("\r"))
        if not match:
            raise SdpParseError(f"bad SDP line: {line[:80]!r}")
        kind, value = match[1], match[2]
        if kind == "m":
            sections.append(_MediaLines(value))
        elif sections:
            sections[-1].add(kind, value)
        elif kind == "o":
            origin = Origin.parse(value)
        elif kind == "s":
            session_name = value
        elif kind in "iuep":
            info.append((kind, value))
        elif kind == "c":
            connection = Connection.parse(value)
        elif kind == "b":
            bandwidths.append(value)
        elif kind in "trzk":
            times.append((kind, value))
        elif kind == "a":
            attributes.append(Attribute.parse(value))
    if origin is None:
        raise SdpParseError("missing o= line")
    return SessionDescription(
        origin=origin,
        session_name=session_name,
        media=tuple(section.build() for section in sections),
        connection=connection,
        attributes=tuple(attributes),
        info_lines=tuple(info),
        bandwidths=tuple(bandwidths),
        time_lines=tuple(times),
    )


# Offer/answer --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """What we offer or accept for the audio stream, and where we receive it."""

    address: str
    """Our RTP address (the ``c=`` and ``o=`` address)."""
    port: int
    """Our RTP port."""
    codecs: tuple[str, ...] = ("PCMU", "PCMA")
    """Audio codecs we support, in our order of preference (only PCMU and PCMA are known)."""
    telephone_event: bool = True
    telephone_event_pt: int = 101
    """The dynamic payload type we offer for RFC 4733 events."""
    dtmf_events: str = "0-16"
    """The ``fmtp`` of ``telephone-event``: the events we can receive (RFC 4733 §2.4.1)."""
    ptime: int = 20
    direction: Direction = "sendrecv"
    """Our wish: ``sendonly`` to put the other side on hold, ``inactive`` to stop media."""
    session_id: str = "0"
    session_version: int = 0
    """Increment it for every new offer or answer in a session (RFC 3264 §8)."""
    username: str = "-"
    session_name: str = "-"

    def __post_init__(self) -> None:
        unknown = [c for c in self.codecs if c.upper() not in _SUPPORTED]
        if unknown or not self.codecs:
            raise LocalProtocolError(f"unsupported codecs {unknown or self.codecs}; use PCMU and/or PCMA")
        if not 96 <= self.telephone_event_pt <= 127:
            raise LocalProtocolError(f"telephone-event needs a dynamic PT: {self.telephone_event_pt}")
        if not 0 <= self.port <= 65535:
            raise LocalProtocolError(f"bad RTP port {self.port}")


@dataclass(frozen=True, slots=True)
class NegotiatedMedia:
    """The outcome of an offer/answer exchange for the audio stream, from our side."""

    codec: Codec
    """The audio codec both sides use (payload type as the remote side sends and expects it)."""
    telephone_event: Codec | None
    """RFC 4733 events, if both sides support them."""
    remote_address: str
    remote_port: int
    remote_rtcp_port: int
    ptime: int
    """The packetization the remote side asked to receive (``a=ptime``), else 20 ms."""
    direction: Direction
    """Our direction: ``sendrecv``, ``sendonly`` (we only send), ``recvonly`` or ``inactive``."""
    media_index: int
    """Index of the audio m-line."""

    @property
    def sends(self) -> bool:
        """Whether we may send RTP audio (RFC 3264 §6.1)."""
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")

    @property
    def audio_codec(self) -> Literal["pcmu", "pcma"]:
        """The leg codec name of :mod:`bridges.base` (``pcmu`` or ``pcma``)."""
        return "pcmu" if self.codec.name.upper() == "PCMU" else "pcma"


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer to an offer: the description to send and what was negotiated."""

    session: SessionDescription
    media: NegotiatedMedia


def _reverse(direction: Direction) -> Direction:
    return {"sendonly": "recvonly", "recvonly": "sendonly"}.get(direction, direction)  # type: ignore[return-value]


def _intersect(a: Direction, b: Direction) -> Direction:
    sends = a in ("sendrecv", "sendonly") and b in ("sendrecv", "sendonly")
    receives = a in ("sendrecv", "recvonly") and b in ("sendrecv", "recvonly")
    if sends and receives:
        return "sendrecv"
    if sends:
        return "sendonly"
    return "recvonly" if receives else "inactive"


def _audio_section(config: MediaConfig, codecs: list[Codec], direction: Direction) -> MediaDescription:
    attributes = [Attribute("rtpmap", codec.rtpmap) for codec in codecs]
    attributes += [Attribute("fmtp", f"{c.payload_type} {c.fmtp}") for c in codecs if c.fmtp is not None]
    attributes += [Attribute("ptime", str(config.ptime)), Attribute(direction)]
    formats = tuple(str(codec.payload_type) for codec in codecs)
    return MediaDescription("audio", config.port, "RTP/AVP", formats, attributes=tuple(attributes))


def _session(config: MediaConfig, media: tuple[MediaDescription, ...]) -> SessionDescription:
    connection = Connection.for_address(config.address)
    origin = Origin(
        config.username,
        config.session_id,
        config.session_version,
        "IN",
        connection.addrtype,
        config.address,
    )
    return SessionDescription(origin, config.session_name, media, connection)


def build_offer(config: MediaConfig) -> SessionDescription:
    """An offer for one audio stream (RFC 3264 §5): our codecs in order, then ``telephone-event``."""
    codecs = [Codec(_SUPPORTED[name.upper()], name.upper(), 8000) for name in config.codecs]
    if config.telephone_event:
        codecs.append(Codec(config.telephone_event_pt, _TELEPHONE_EVENT, 8000, None, config.dtmf_events))
    return _session(config, (_audio_section(config, codecs, config.direction),))


def _pick_codec(offered: Iterable[Codec], supported: Iterable[str]) -> Codec | None:
    names = {name.upper() for name in supported}
    for codec in offered:
        if codec.name.upper() in names and codec.clock_rate == 8000 and (codec.channels or 1) == 1:
            return codec
    return None


def _pick_event(offered: Iterable[Codec], clock_rate: int) -> Codec | None:
    for codec in offered:
        if codec.name.lower() == _TELEPHONE_EVENT and codec.clock_rate == clock_rate:
            return codec
    return None


def _rejected(media: MediaDescription) -> MediaDescription:
    return MediaDescription(media.media, 0, media.proto, media.formats[:1] or ("0",))


def build_answer(offer: SessionDescription, config: MediaConfig) -> Answer:
    """Answer ``offer`` with our codecs (RFC 3264 §6). Raises :class:`NoCommonCodec` if no audio stream
    can be accepted, :class:`SdpParseError` if the accepted stream has no connection address."""
    answers: list[MediaDescription] = []
    negotiated: NegotiatedMedia | None = None
    for index, media in enumerate(offer.media):
        codec = None
        if negotiated is None and media.media == "audio" and media.proto in _AUDIO_PROTOS and media.port:
            codec = _pick_codec(media.codecs, config.codecs)
        if codec is None or negotiated is not None:
            answers.append(_rejected(media))
            continue
        connection = offer.connection_for(media)
        if connection is None:
            raise SdpParseError("the offered audio stream has no connection address (c=)")
        offered_direction = offer.direction_for(media)
        if connection.is_null:
            offered_direction = _intersect(offered_direction, "sendonly")  # RFC 3264 §8.4: hold
        direction = _intersect(_reverse(offered_direction), config.direction)
        event = _pick_event(media.codecs, codec.clock_rate) if config.telephone_event else None
        local_codecs = [Codec(codec.payload_type, codec.name, codec.clock_rate, codec.channels)]
        if event is not None:
            answered = Codec(event.payload_type, event.name, event.clock_rate, fmtp=config.dtmf_events)
            local_codecs.append(answered)
        answers.append(_audio_section(config, local_codecs, direction))
        negotiated = NegotiatedMedia(
            codec=codec,
            telephone_event=event,
            remote_address=connection.address,
            remote_port=media.port,
            remote_rtcp_port=media.rtcp_port,
            ptime=media.ptime or 20,
            direction=direction,
            media_index=index,
        )
    if negotiated is None:
        raise NoCommonCodec("no audio stream in the offer with a supported codec (PCMU, PCMA)")
    return Answer(_session(config, tuple(answers)), negotiated)


def accept_answer(offer: SessionDescription, answer: SessionDescription) -> NegotiatedMedia:
    """Check the answer to our ``offer`` (RFC 3264 §7) and return what was negotiated.

    Raises :class:`SdpParseError` if the answer does not match the offer's m-lines and
    :class:`NoCommonCodec` if the audio stream was rejected or carries no codec we offered.
    """
    if len(answer.media) != len(offer.media):
        raise SdpParseError(f"the answer has {len(answer.media)} m-lines for {len(offer.media)} offered")
    for index, (ours, theirs) in enumerate(zip(offer.media, answer.media, strict=True)):
        if ours.media != "audio" or theirs.media != ours.media:
            continue
        if theirs.port == 0:
            continue
        offered = ours.codecs
        usable = [c for c in theirs.codecs if c.name.upper() in _SUPPORTED]
        codec = next((c for c in usable if any(c.same_format(o) for o in offered)), None)
        if codec is None:
            continue
        connection = answer.connection_for(theirs)
        if connection is None:
            raise SdpParseError("the answered audio stream has no connection address (c=)")
        event = _pick_event(theirs.codecs, codec.clock_rate)
        if event is not None and _pick_event(offered, codec.clock_rate) is None:
            event = None
        answered = answer.direction_for(theirs)
        if connection.is_null:
            answered = _intersect(answered, "sendonly")
        direction = _intersect(_reverse(answered), offer.direction_for(ours))
        return NegotiatedMedia(
            codec=codec,
            telephone_event=event,
            remote_address=connection.address,
            remote_port=theirs.port,
            remote_rtcp_port=theirs.rtcp_port,
            ptime=theirs.ptime or 20,
            direction=direction,
            media_index=index,
        )
    raise NoCommonCodec("the answer accepted no audio stream with a codec we offered")
