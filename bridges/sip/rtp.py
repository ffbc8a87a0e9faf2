"""RTP and basic RTCP (RFC 3550): packets, wraparound arithmetic, a sender and receiver statistics.

Sans-I/O: bytes in, packets out, and back; times are arguments (``arrival_ms``, ``now_ms``), never read.

- :class:`RtpPacket` parses and serializes the fixed header, CSRC list, header extension and padding
  (RFC 3550 §5.1, §5.3.1) with length checks: anything malformed raises :class:`RtpParseError`.
- Sequence numbers and timestamps wrap; compare them with the named helpers (:func:`uint16_add`,
  :func:`seq_lt`, :func:`seq_diff`, :func:`uint32_add`, :func:`ts_diff` ...), never with ``<``.
- :class:`RtpSender` numbers outgoing packets: one SSRC, the sequence number +1 per packet, the timestamp +160
  per 20 ms G.711 frame (one sample per byte, RFC 3551 §4.5.14), the marker bit on the first packet of a
  talkspurt (RFC 3551 §4.1).
- RTCP: sender and receiver reports with report blocks (§6.4), SDES (§6.5, for the CNAME every compound
  packet carries) and BYE (§6.6); other packet types pass through as :class:`RtcpUnknown`.
- :class:`RtpReceiverStats` keeps the per-source state of RFC 3550 Appendix A.1 (sequence validation),
  A.3 (expected/lost, fraction lost) and A.8 (interarrival jitter) and produces a :class:`ReportBlock`.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias

from voice.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "NTP_UNIX_OFFSET",
    "RTCP_BYE",
    "RTCP_RR",
    "RTCP_SDES",
    "RTCP_SR",
    "RTP_HEADER_SIZE",
    "ReportBlock",
    "RtcpBye",
    "RtcpPacket",
    "RtcpReceiverReport",
    "RtcpSdes",
    "RtcpSenderReport",
    "RtcpUnknown",
    "RtpExtension",
    "RtpPacket",
    "RtpParseError",
    "RtpReceiverStats",
    "RtpSender",
    "SenderInfo",
    "is_rtcp",
    "ntp_from_unix",
    "ntp_middle32",
    "parse_rtcp",
    "seq_diff",
    "seq_gt",
    "seq_lt",
    "serialize_rtcp",
    "ts_diff",
    "ts_gt",
    "ts_lt",
    "uint16_add",
    "uint32_add",
]

RTP_VERSION: Final = 2
RTP_HEADER_SIZE: Final = 12
RTCP_SR: Final = 200
RTCP_RR: Final = 201
RTCP_SDES: Final = 202
RTCP_BYE: Final = 203
NTP_UNIX_OFFSET: Final = 2_208_988_800
"""Seconds from the NTP epoch (1900) to the Unix epoch (1970)."""

_SEQ_MOD: Final = 1 << 16
_TS_MOD: Final = 1 << 32
_REPORT_BLOCK_FORMAT: Final = "!IB3sIIII"


class RtpParseError(RemoteProtocolError):
    """An RTP or RTCP packet from the peer is malformed (drop it; RFC 3550 §A.1, §A.2)."""


# Wraparound arithmetic (RFC 3550 §A.1; the names follow aiortc) -------------------------------------------


def uint16_add(a: int, b: int) -> int:
    """``a + b`` modulo 2**16 (sequence numbers)."""
    return (a + b) & 0xFFFF


def seq_diff(a: int, b: int) -> int:
    """The signed distance ``a - b`` between two sequence numbers, in ``[-32768, 32767]``."""
    d = (a - b) & 0xFFFF
    return d - _SEQ_MOD if d >= 0x8000 else d


def seq_lt(a: int, b: int) -> bool:
    """Whether sequence number ``a`` comes before ``b`` (RFC 1982 serial number arithmetic)."""
    return seq_diff(a, b) < 0


def seq_gt(a: int, b: int) -> bool:
    """Whether sequence number ``a`` comes after ``b``."""
    return seq_diff(a, b) > 0


def uint32_add(a: int, b: int) -> int:
    """``a + b`` modulo 2**32 (timestamps)."""
    return (a + b) & 0xFFFFFFFF


def ts_diff(a: int, b: int) -> int:
    """The signed distance ``a - b`` between two RTP timestamps, in ``[-2**31, 2**31 - 1]``."""
    d = (a - b) & 0xFFFFFFFF
    return d - _TS_MOD if d >= 0x80000000 else d


def ts_lt(a: int, b: int) -> bool:
    return ts_diff(a, b) < 0


def ts_gt(a: int, b: int) -> bool:
    return ts_diff(a, b) > 0


def ntp_from_unix(seconds: float) -> int:
    """A 64-bit NTP timestamp (32.32 fixed point since 1900, RFC 3550 §4) for Unix time ``seconds``."""
    return round((seconds + NTP_UNIX_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the ``LSR`` of a report block (RFC 3550 §6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


def is_rtcp(data: bytes) -> bool:
    """Whether a datagram on a shared RTP/RTCP port is RTCP (RFC 5761 §4: packet type 192-223)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


# RTP packets ---------------------------------------------------------------------------------------------


def _check_range(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise LocalProtocolError(f"RTP {name} out of range: {value}")


_COMPILED: Final = type(_check_range).__name__ != "function"
"""This module was compiled by mypyc: its functions are not Python functions."""


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """The RTP header extension (RFC 3550 §5.3.1): a 16-bit profile value and 32-bit words of data."""

    profile: int
    data: bytes = b""

    def __post_init__(self) -> None:
        _check_range("extension profile", self.profile, 16)
        if len(self.data) % 4 or len(self.data) > 4 * 0xFFFF:
            raise LocalProtocolError("an RTP header extension holds whole 32-bit words")


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1). ``padding`` counts the padding bytes, the count byte included."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding: int = 0

    def __post_init__(self) -> None:
        _check_range("payload type", self.payload_type, 7)
        _check_range("sequence number", self.sequence_number, 16)
        _check_range("timestamp", self.timestamp, 32)
        _check_range("SSRC", self.ssrc, 32)
        if len(self.csrc) > 15:
            raise LocalProtocolError("at most 15 CSRCs")
        for csrc in self.csrc:
            _check_range("CSRC", csrc, 32)
        _check_range("padding", self.padding, 8)

    @classmethod
    def _unchecked(
        cls,
        payload_type: int,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        payload: bytes,
        marker: bool,
        csrc: tuple[int, ...] = (),
        extension: RtpExtension | None = None,
        padding: int = 0,
    ) -> RtpPacket:
        """A packet whose fields cannot be out of range (read from the header's fixed-width fields, or
        numbered by an :class:`RtpSender`): the checks of ``__post_init__`` are skipped, as a packet is
        made for every 20 ms frame each way. Compiled (``voice.native``), the class is built natively and
        its constructor is cheap; interpreted, the instance is filled in without it."""
        if _COMPILED:
            return cls(
                payload_type, sequence_number, timestamp, ssrc, payload, marker, csrc, extension, padding
            )
        packet = object.__new__(cls)
        put = object.__setattr__
        put(packet, "payload_type", payload_type)
        put(packet, "sequence_number", sequence_number)
        put(packet, "timestamp", timestamp)
        put(packet, "ssrc", ssrc)
        put(packet, "payload", payload)
        put(packet, "marker", marker)
        put(packet, "csrc", csrc)
        put(packet, "extension", extension)
        put(packet, "padding", padding)
        return packet

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse an RTP packet; raises :class:`RtpParseError` if it is too short or inconsistent."""
        if len(data) < RTP_HEADER_SIZE:
            raise RtpParseError(f"RTP packet too short: {len(data)} bytes")
        first, second, seq, timestamp, ssrc = struct.unpack_from("!BBHII", data)
        if first >> 6 != RTP_VERSION:
            raise RtpParseError(f"RTP version {first >> 6}, expected 2")
        cc = first & 0x0F
        pos = RTP_HEADER_SIZE + 4 * cc
        if len(data) < pos:
            raise RtpParseError("RTP packet shorter than its CSRC list")
        csrc = struct.unpack_from(f"!{cc}I", data, RTP_HEADER_SIZE)
        extension = None
        if first & 0x10:
            if len(data) < pos + 4:
                raise RtpParseError("RTP packet shorter than its header extension")
            profile, words = struct.unpack_from("!HH", data, pos)
            pos += 4
            if len(data) < pos + 4 * words:
                raise RtpParseError("RTP header extension longer than the packet")
            extension = RtpExtension(profile, data[pos : pos + 4 * words])
            pos += 4 * words
        end = len(data)
        padding = 0
        if first & 0x20:
            padding = data[-1]
            if padding == 0 or padding > end - pos:
                raise RtpParseError(f"bad RTP padding count {padding}")
            end -= padding
        return cls._unchecked(
            second & 0x7F, seq, timestamp, ssrc, data[pos:end], bool(second & 0x80), tuple(csrc), extension,
            padding,
        )  # fmt: skip

    def serialize(self) -> bytes:
        """The packet's bytes; padding bytes are zeros with the count in the last one."""
        first = RTP_VERSION << 6 | len(self.csrc)
        if self.padding:
            first |= 0x20
        if self.extension is not None:
            first |= 0x10
        out = [
            struct.pack(
                "!BBHII",
                first,
                self.payload_type | (0x80 if self.marker else 0),
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            ),
            struct.pack(f"!{len(self.csrc)}I", *self.csrc),
        ]
        if self.extension is not None:
            ext = self.extension
            out.append(struct.pack("!HH", ext.profile, len(ext.data) // 4) + ext.data)
        out.append(self.payload)
        if self.padding:
            out.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(out)


class RtpSender:
    """Numbers outgoing RTP packets of one stream (RFC 3550 §5.1, RFC 3551 §4.1).

    ``send()`` an audio frame: it gets the next sequence number and the current timestamp, then the
    timestamp advances by the frame's samples (G.711: one per byte, 160 per 20 ms). The first packet, and
    the first after :meth:`start_talkspurt`, carries the marker bit. :meth:`packet` numbers a packet
    without moving the clock (RFC 4733 events keep their start timestamp); :meth:`advance` moves the clock
    without sending.
    """

    def __init__(self, ssrc: int, payload_type: int, *, sequence: int = 0, timestamp: int = 0) -> None:
        _check_range("SSRC", ssrc, 32)
        _check_range("payload type", payload_type, 7)
        _check_range("sequence number", sequence, 16)
        _check_range("timestamp", timestamp, 32)
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.sequence = sequence
        """The sequence number of the next packet."""
        self.timestamp = timestamp
        """The RTP timestamp of the next audio frame."""
        self.packets_sent = 0
        self.octets_sent = 0
        self._talkspurt = True

    @classmethod
    def random(cls, payload_type: int) -> RtpSender:
        """A sender with a random SSRC, initial sequence number and timestamp (RFC 3550 §5.1, §8)."""
        return cls(
            secrets.randbits(32),
            payload_type,
            sequence=secrets.randbits(16),
            timestamp=secrets.randbits(32),
        )

    def start_talkspurt(self) -> None:
        """Mark the next audio packet as the first of a talkspurt (after silence or a pause)."""
        self._talkspurt = True

    def send(self, payload: bytes, samples: int | None = None) -> RtpPacket:
        """The packet for one audio frame; ``samples`` defaults to ``len(payload)`` (G.711)."""
        packet = self._count(
            RtpPacket._unchecked(
                self.payload_type, self.sequence, self.timestamp, self.ssrc, payload, self._talkspurt
            )
        )
        self._talkspurt = False
        self.advance(len(payload) if samples is None else samples)
        return packet

    def packet(
        self,
        payload: bytes,
        *,
        payload_type: int | None = None,
        timestamp: int | None = None,
        marker: bool = False,
    ) -> RtpPacket:
        """A packet with the next sequence number; the clock does not move."""
        return self._count(
            RtpPacket(
                payload_type=self.payload_type if payload_type is None else payload_type,
                sequence_number=self.sequence,
                timestamp=self.timestamp if timestamp is None else timestamp,
                ssrc=self.ssrc,
                payload=payload,
                marker=marker,
            )
        )

    def _count(self, packet: RtpPacket) -> RtpPacket:
        """``packet`` takes this sequence number: move to the next one and count what is sent."""
        self.sequence = uint16_add(self.sequence, 1)
        self.packets_sent += 1
        self.octets_sent += len(packet.payload)
        return packet

    def advance(self, samples: int) -> None:
        """Move the media clock by ``samples`` without sending."""
        self.timestamp = uint32_add(self.timestamp, samples)

    def sender_info(self, ntp_timestamp: int) -> SenderInfo:
        """Sender info for an SR sent at wall-clock ``ntp_timestamp`` (RFC 3550 §6.4.1)."""
        return SenderInfo(
            ntp_timestamp=ntp_timestamp,
            rtp_timestamp=self.timestamp,
            packet_count=self.packets_sent & 0xFFFFFFFF,
            octet_count=self.octets_sent & 0xFFFFFFFF,
        )


# RTCP ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int
    """Fraction of packets lost since the previous report, in 1/256."""
    cumulative_lost: int
    """Packets lost since the start (signed 24-bit: duplicates can make it negative)."""
    highest_sequence: int
    """Extended highest sequence number received (cycles << 16 | max seq)."""
    jitter: int
    """Interarrival jitter in timestamp units (§6.4.1, §A.8)."""
    lsr: int = 0
    """Middle 32 bits of the last SR's NTP timestamp from this source, 0 if none."""
    dlsr: int = 0
    """Delay since that SR in 1/65536 s."""

    def __post_init__(self) -> None:
        _check_range("fraction lost", self.fraction_lost, 8)
        if not -(1 << 23) <= self.cumulative_lost < (1 << 23):
            raise LocalProtocolError(f"cumulative lost out of range: {self.cumulative_lost}")
        for name in ("ssrc", "highest_sequence", "jitter", "lsr", "dlsr"):
            _check_range(name, getattr(self, name), 32)

    def serialize(self) -> bytes:
        lost = (self.cumulative_lost & 0xFFFFFF).to_bytes(3, "big")
        return struct.pack(
            _REPORT_BLOCK_FORMAT,
            self.ssrc,
            self.fraction_lost,
            lost,
            self.highest_sequence,
            self.jitter,
            self.lsr,
            self.dlsr,
        )

    @classmethod
    def parse(cls, data: bytes, offset: int) -> ReportBlock:
        fields = struct.unpack_from(_REPORT_BLOCK_FORMAT, data, offset)
        ssrc, fraction, lost_bytes, highest, jitter, lsr, dlsr = fields
        lost = int.from_bytes(lost_bytes, "big")
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, fraction, lost, highest, jitter, lsr, dlsr)


@dataclass(frozen=True, slots=True)
class SenderInfo:
    """The sender information of an SR (RFC 3550 §6.4.1)."""

    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int

    def __post_init__(self) -> None:
        _check_range("NTP timestamp", self.ntp_timestamp, 64)
        for name in ("rtp_timestamp", "packet_count", "octet_count"):
            _check_range(name, getattr(self, name), 32)


@dataclass(frozen=True, slots=True)
class RtcpSenderReport:
    """RTCP SR, packet type 200 (RFC 3550 §6.4.1)."""

    ssrc: int
    sender_info: SenderInfo
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""
    """Profile-specific extension words, kept as bytes."""

    def serialize(self) -> bytes:
        info = self.sender_info
        body = struct.pack(
            "!IQIII", self.ssrc, info.ntp_timestamp, info.rtp_timestamp, info.packet_count, info.octet_count
        )
        body += b"".join(block.serialize() for block in self.reports) + self.extension
        return _rtcp_header(RTCP_SR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class RtcpReceiverReport:
    """RTCP RR, packet type 201 (RFC 3550 §6.4.2)."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""

    def serialize(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + b"".join(b.serialize() for b in self.reports) + self.extension
        return _rtcp_header(RTCP_RR, len(self.reports), body)


@dataclass(frozen=True, slots=True)
class RtcpSdes:
    """RTCP SDES, packet type 202 (RFC 3550 §6.5): ``(ssrc, ((item type, text), ...))`` chunks.

    Item type 1 is CNAME, which every compound RTCP packet carries (§6.1).
    """

    chunks: tuple[tuple[int, tuple[tuple[int, bytes], ...]], ...]

    @classmethod
    def cname(cls, ssrc: int, cname: str) -> RtcpSdes:
        return cls(((ssrc, ((1, cname.encode("utf-8")),)),))

    def serialize(self) -> bytes:
        body = bytearray()
        for ssrc, items in self.chunks:
            chunk = bytearray(struct.pack("!I", ssrc))
            for item_type, text in items:
                if not 1 <= item_type <= 255 or len(text) > 255:
                    raise LocalProtocolError("bad SDES item")
                chunk += bytes([item_type, len(text)]) + text
            chunk += b"\x00" * (4 - len(chunk) % 4)  # at least one null octet ends the item list
            body += chunk
        return _rtcp_header(RTCP_SDES, len(self.chunks), bytes(body))


@dataclass(frozen=True, slots=True)
class RtcpBye:
    """RTCP BYE, packet type 203 (RFC 3550 §6.6)."""

    sources: tuple[int, ...]
    reason: bytes = b""

    def serialize(self) -> bytes:
        body = struct.pack(f"!{len(self.sources)}I", *self.sources)
        if self.reason:
            reason = bytes([len(self.reason)]) + self.reason
            body += reason + b"\x00" * (-len(reason) % 4)
        return _rtcp_header(RTCP_BYE, len(self.sources), body)


@dataclass(frozen=True, slots=True)
class RtcpUnknown:
    """Any other RTCP packet (APP, feedback, XR...), kept as its count field and body."""

    packet_type: int
    count: int
    body: bytes

    def serialize(self) -> bytes:
        return _rtcp_header(self.packet_type, self.count, self.body)


RtcpPacket: TypeAlias = RtcpSenderReport | RtcpReceiverReport | RtcpSdes | RtcpBye | RtcpUnknown


def _rtcp_header(packet_type: int, count: int, body: bytes) -> bytes:
    if not 0 <= count <= 31:
        raise LocalProtocolError(f"RTCP count out of range: {count}")
    if len(body) % 4:
        raise LocalProtocolError("an RTCP packet is made of whole 32-bit words")
    return struct.pack("!BBH", RTP_VERSION << 6 | count, packet_type, len(body) // 4) + body


def serialize_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """A compound RTCP packet (RFC 3550 §6.1)."""
    return b"".join(packet.serialize() for packet in packets)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet (RFC 3550 §6.1, validity checks of §A.2).

    Raises :class:`RtpParseError` for a bad version, a length past the end, padding anywhere but in the
    last packet, or a body too short for its count.
    """
    packets: list[RtcpPacket] = []
    pos = 0
    if len(data) < 4:
        raise RtpParseError("RTCP packet too short")
    while pos < len(data):
        if len(data) - pos < 4:
            raise RtpParseError("trailing bytes after RTCP packets")
        first, packet_type, words = struct.unpack_from("!BBH", data, pos)
        if first >> 6 != RTP_VERSION:
            raise RtpParseError(f"RTCP version {first >> 6}, expected 2")
        end = pos + 4 + 4 * words
        if end > len(data):
            raise RtpParseError("RTCP length past the end of the packet")
        body = data[pos + 4 : end]
        if first & 0x20:
            if end != len(data) or not body or body[-1] == 0 or body[-1] > len(body):
                raise RtpParseError("bad RTCP padding")
            body = body[: -body[-1]]
        packets.append(_parse_rtcp_packet(packet_type, first & 0x1F, body))
        pos = end
    return packets


def _parse_rtcp_packet(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    if packet_type == RTCP_SR:
        if len(body) < 24 + 24 * count:
            raise RtpParseError("RTCP SR shorter than its report count")
        ssrc, ntp, rtp_ts, packets, octets = struct.unpack_from("!IQIII", body)
        reports = tuple(ReportBlock.parse(body, 24 + 24 * i) for i in range(count))
        info = SenderInfo(ntp, rtp_ts, packets, octets)
        return RtcpSenderReport(ssrc, info, reports, body[24 + 24 * count :])
    if packet_type == RTCP_RR:
        if len(body) < 4 + 24 * count:
            raise RtpParseError("RTCP RR shorter than its report count")
        reports = tuple(ReportBlock.parse(body, 4 + 24 * i) for i in range(count))
        return RtcpReceiverReport(struct.unpack_from("!I", body)[0], reports, body[4 + 24 * count :])
    if packet_type == RTCP_SDES:
        return _parse_sdes(count, body)
    if packet_type == RTCP_BYE:
        if len(body) < 4 * count:
            raise RtpParseError("RTCP BYE shorter than its source count")
        sources = struct.unpack_from(f"!{count}I", body)
        rest = body[4 * count :]
        reason = b""
        if rest:
            if rest[0] + 1 > len(rest):
                raise RtpParseError("RTCP BYE reason longer than the packet")
            reason = rest[1 : 1 + rest[0]]
        return RtcpBye(tuple(sources), reason)
    return RtcpUnknown(packet_type, count, body)


def _parse_sdes(count: int, body: bytes) -> RtcpSdes:
    chunks: list[tuple[int, tuple[tuple[int, bytes], ...]]] = []
    pos = 0
    for _ in range(count):
        if len(body) - pos < 4:
            raise RtpParseError("RTCP SDES shorter than its chunk count")
        ssrc = struct.unpack_from("!I", body, pos)[0]
        pos += 4
        items: list[tuple[int, bytes]] = []
        while True:
            if pos >= len(body):
                raise RtpParseError("RTCP SDES chunk without its end")
            item_type = body[pos]
            if item_type == 0:
                pos += 4 - pos % 4  # the null octet and the padding to the next word
                break
            if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
                raise RtpParseError("RTCP SDES item longer than the packet")
            length = body[pos + 1]
            items.append((item_type, body[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        chunks.append((ssrc, tuple(items)))
    return RtcpSdes(tuple(chunks))


# Receiver statistics (RFC 3550 Appendix A) ---------------------------------------------------------------


class RtpReceiverStats:
    """Per-source reception state: sequence validation (§A.1), loss (§A.3) and jitter (§A.8).

    Call :meth:`update` for every RTP packet of the source with its arrival time, :meth:`on_sender_report`
    for every SR from it, and :meth:`report_block` when sending an RR or SR.
    """

    MAX_DROPOUT: Final = 3000
    MAX_MISORDER: Final = 100

    def __init__(self, ssrc: int, clock_rate: int = 8000, *, min_sequential: int = 2) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.min_sequential = max(1, min_sequential)
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self.jitter = 0.0
        """Interarrival jitter estimate in timestamp units (§A.8)."""
        self._bad_seq = _SEQ_MOD + 1
        self._probation = 0
        self._started = False
        self._expected_prior = 0
        self._received_prior = 0
        self._transit: int | None = None
        self._lsr = 0
        self._sr_arrival_ms: float | None = None

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self._bad_seq = _SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self._received_prior = 0
        self._expected_prior = 0

    def _update_seq(self, seq: int) -> bool:
        if not self._started:
            self._started = True
            self._init_seq(seq)
            self.max_seq = (seq - 1) & 0xFFFF
            self._probation = self.min_sequential
        udelta = (seq - self.max_seq) & 0xFFFF
        if self._probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self._probation -= 1
                self.max_seq = seq
                if self._probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self._probation = self.min_sequential - 1
                self.max_seq = seq
            return False
        if udelta < self.MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += _SEQ_MOD  # wrapped
            self.max_seq = seq
        elif udelta <= _SEQ_MOD - self.MAX_MISORDER:
            if seq == self._bad_seq:
                self._init_seq(seq)  # two sequential packets after a jump: the source restarted
            else:
                self._bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: a duplicate or reordered packet
        self.received += 1
        return True

    def update(self, packet: RtpPacket, arrival_ms: float) -> bool:
        """Account one packet; False while the source is on probation or after a wild jump (§A.1)."""
        valid = self._update_seq(packet.sequence_number)
        if valid:
            arrival = int(arrival_ms * self.clock_rate / 1000) & 0xFFFFFFFF
            transit = (arrival - packet.timestamp) & 0xFFFFFFFF
            if self._transit is not None:
                d = abs(ts_diff(transit, self._transit))
                self.jitter += (d - self.jitter) / 16.0
            self._transit = transit
        return valid

    def on_sender_report(self, report: RtcpSenderReport, arrival_ms: float) -> None:
        """Remember an SR from this source for the LSR/DLSR of our next report block (§6.4.1)."""
        self._lsr = ntp_middle32(report.sender_info.ntp_timestamp)
        self._sr_arrival_ms = arrival_ms

    @property
    def extended_max(self) -> int:
        """The extended highest sequence number received (§A.3)."""
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1 if self.received else 0

    @property
    def lost(self) -> int:
        """Cumulative packets lost, clamped to the signed 24 bits of a report block (§A.3)."""
        return max(-(1 << 23), min((1 << 23) - 1, self.expected - self.received))

    def report_block(self, now_ms: float) -> ReportBlock:
        """A report block for this source; starts a new interval for the fraction lost (§A.3)."""
        expected = self.expected
        expected_interval = expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = expected
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self._sr_arrival_ms is not None:
            dlsr = max(0, int((now_ms - self._sr_arrival_ms) * 65536 / 1000)) & 0xFFFFFFFF
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            cumulative_lost=self.lost,
            highest_sequence=self.extended_max & 0xFFFFFFFF,
            jitter=int(self.jitter) & 0xFFFFFFFF,
            lsr=self._lsr,
            dlsr=dlsr,
        )
