"""RTP/RTCP packets, wraparound helpers, sender and receiver statistics (bridges/sip/rtp.py; RFC 3550)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridges.sip.rtp import (
    NTP_UNIX_OFFSET,
    ReportBlock,
    RtcpBye,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    RtcpUnknown,
    RtpExtension,
    RtpPacket,
    RtpParseError,
    RtpReceiverStats,
    RtpSender,
    SenderInfo,
    is_rtcp,
    ntp_from_unix,
    ntp_middle32,
    parse_rtcp,
    seq_diff,
    seq_gt,
    seq_lt,
    serialize_rtcp,
    ts_diff,
    ts_gt,
    ts_lt,
    uint16_add,
    uint32_add,
)
from tests.bridges.sip import vector
from voice.errors import LocalProtocolError, RemoteProtocolError

# Wraparound ----------------------------------------------------------------------------------------------


def test_uint16_helpers_wrap() -> None:
    assert uint16_add(65535, 1) == 0
    assert uint16_add(65530, 10) == 4
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(5, 5) == 0
    assert seq_diff(0x8000, 0) == -0x8000
    assert seq_lt(65535, 0) and seq_gt(0, 65535)
    assert seq_lt(100, 200) and not seq_lt(200, 100)
    assert not seq_lt(7, 7) and not seq_gt(7, 7)


def test_uint32_helpers_wrap() -> None:
    assert uint32_add(0xFFFFFFF0, 0x20) == 0x10
    assert ts_diff(0x10, 0xFFFFFFF0) == 0x20
    assert ts_diff(0xFFFFFFF0, 0x10) == -0x20
    assert ts_lt(0xFFFFFF60, 0) and ts_gt(0, 0xFFFFFF60)


@given(st.integers(0, 65535), st.integers(-32767, 32767))
def test_seq_diff_inverts_add(a: int, delta: int) -> None:
    b = uint16_add(a, delta)
    assert seq_diff(b, a) == delta
    assert seq_lt(a, b) == (delta > 0)


@given(st.integers(0, 2**32 - 1), st.integers(-(2**31) + 1, 2**31 - 1))
def test_ts_diff_inverts_add(a: int, delta: int) -> None:
    assert ts_diff(uint32_add(a, delta), a) == delta


# RTP packets ---------------------------------------------------------------------------------------------


def test_event_vector() -> None:
    data = vector("rtp_event_digit5_end.bin")
    packet = RtpPacket.parse(data)
    assert packet == RtpPacket(101, 0x1234, 8000, 0xDEADBEEF, bytes.fromhex("058a0320"), marker=True)
    assert packet.serialize() == data


def test_pcmu_vector_at_the_wrap() -> None:
    data = vector("rtp_pcmu_20ms_marker.bin")
    packet = RtpPacket.parse(data)
    assert (packet.payload_type, packet.sequence_number, packet.timestamp) == (0, 65535, 0xFFFFFFF0)
    assert packet.marker and packet.payload == b"\xff" * 160
    assert packet.serialize() == data


def test_csrc_extension_padding_vector() -> None:
    data = vector("rtp_pcma_csrc_ext_padding.bin")
    packet = RtpPacket.parse(data)
    assert packet.csrc == (0x22222222, 0x33333333)
    assert packet.extension == RtpExtension(0xBEDE, bytes.fromhex("10ff0000"))
    assert packet.padding == 4
    assert packet.payload == b"\xd5" * 4
    assert (packet.payload_type, packet.sequence_number, packet.timestamp, packet.ssrc) == (
        8,
        7,
        320,
        0x11111111,
    )
    assert packet.serialize() == data


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "too short"),
        (bytes.fromhex("80000001000000000000"), "too short"),
        (bytes.fromhex("400000010000000000000001"), "version"),
        (bytes.fromhex("8200000100000000000000010000"), "CSRC"),
        (bytes.fromhex("9000000100000000000000010000"), "extension"),
        (bytes.fromhex("900000010000000000000001bede0002abcd0000"), "extension"),
        (bytes.fromhex("a000000100000000000000010000"), "padding"),
        (bytes.fromhex("a000000100000000000000010005"), "padding"),
    ],
)
def test_malformed_rtp(data: bytes, why: str) -> None:
    with pytest.raises(RtpParseError, match=why) as caught:
        RtpPacket.parse(data)
    assert isinstance(caught.value, RemoteProtocolError)


def test_packet_field_ranges() -> None:
    for kwargs in (
        {"payload_type": 128},
        {"sequence_number": 65536},
        {"timestamp": -1},
        {"ssrc": 2**32},
        {"csrc": tuple(range(16))},
        {"padding": 256},
    ):
        fields: dict[str, Any] = {"payload_type": 0, "sequence_number": 0, "timestamp": 0, "ssrc": 0} | kwargs
        with pytest.raises(LocalProtocolError):
            RtpPacket(**fields)
    with pytest.raises(LocalProtocolError):
        RtpExtension(1, b"abc")


@given(
    st.builds(
        RtpPacket,
        payload_type=st.integers(0, 127),
        sequence_number=st.integers(0, 65535),
        timestamp=st.integers(0, 2**32 - 1),
        ssrc=st.integers(0, 2**32 - 1),
        payload=st.binary(max_size=200),
        marker=st.booleans(),
        csrc=st.lists(st.integers(0, 2**32 - 1), max_size=15).map(tuple),
        extension=st.none()
        | st.builds(
            RtpExtension, profile=st.integers(0, 65535), data=st.binary(max_size=12).map(lambda b: b * 4)
        ),
        padding=st.integers(0, 255),
    )
)
def test_rtp_round_trip(packet: RtpPacket) -> None:
    assert RtpPacket.parse(packet.serialize()) == packet


def test_is_rtcp_demux() -> None:
    assert is_rtcp(vector("rtcp_sr_sdes.bin"))
    assert not is_rtcp(vector("rtp_pcmu_20ms_marker.bin"))
    assert not is_rtcp(vector("rtp_event_digit5_end.bin"))
    assert not is_rtcp(b"\x80")


# Sender --------------------------------------------------------------------------------------------------


def test_sender_numbers_g711_frames() -> None:
    sender = RtpSender(0x01020304, 0, sequence=65534, timestamp=0xFFFFFF60)
    frame = b"\xff" * 160
    packets = [sender.send(frame) for _ in range(4)]
    assert [p.sequence_number for p in packets] == [65534, 65535, 0, 1]
    assert [p.timestamp for p in packets] == [0xFFFFFF60, 0, 160, 320]
    assert [p.marker for p in packets] == [True, False, False, False]
    assert {p.ssrc for p in packets} == {0x01020304}
    sender.advance(160 * 10)  # silence: nothing sent for 200 ms
    sender.start_talkspurt()
    resumed = sender.send(frame)
    assert resumed.marker and resumed.timestamp == 480 + 1600 and resumed.sequence_number == 2
    assert sender.send(frame, samples=80).marker is False
    assert sender.packets_sent == 6 and sender.octets_sent == 960
    info = sender.sender_info(ntp_from_unix(0.0))
    assert info.rtp_timestamp == sender.timestamp and info.packet_count == 6 and info.octet_count == 960


def test_random_sender_and_raw_packets() -> None:
    sender = RtpSender.random(8)
    seq, ts = sender.sequence, sender.timestamp
    event = sender.packet(b"\x05\x0a\x00\xa0", payload_type=101, marker=True)
    assert (event.payload_type, event.sequence_number, event.timestamp, event.marker) == (101, seq, ts, True)
    assert sender.timestamp == ts  # the clock does not move
    with pytest.raises(LocalProtocolError):
        RtpSender(2**32, 0)


# RTCP ----------------------------------------------------------------------------------------------------


def test_sr_sdes_vector() -> None:
    data = vector("rtcp_sr_sdes.bin")
    sr, sdes = parse_rtcp(data)
    assert isinstance(sr, RtcpSenderReport)
    assert sr.ssrc == 0xDEADBEEF
    assert sr.sender_info == SenderInfo(0xE8F2C1A440000000, 8000, 50, 8000)
    (block,) = sr.reports
    assert block == ReportBlock(0x01020304, 25, 3, 0x1FFFF, 16, 0xC1A44000, 0x8000)
    assert ntp_middle32(sr.sender_info.ntp_timestamp) == block.lsr
    assert sdes == RtcpSdes.cname(0xDEADBEEF, "alice@pc33")
    assert serialize_rtcp([sr, sdes]) == data


def test_rr_bye_vector() -> None:
    data = vector("rtcp_rr_bye.bin")
    packets = parse_rtcp(data)
    assert packets == [RtcpReceiverReport(0x01020304), RtcpBye((0x01020304,), b"bye")]
    assert serialize_rtcp(packets) == data


def test_negative_cumulative_lost_and_unknown_packets() -> None:
    block = ReportBlock(1, 0, -5, 100, 0)
    rr = RtcpReceiverReport(7, (block,))
    app = RtcpUnknown(204, 3, b"nameDATA")
    parsed = parse_rtcp(serialize_rtcp([rr, app]))
    assert parsed == [rr, app]
    with pytest.raises(LocalProtocolError):
        ReportBlock(1, 256, 0, 0, 0)
    with pytest.raises(LocalProtocolError):
        ReportBlock(1, 0, 1 << 23, 0, 0)
    with pytest.raises(LocalProtocolError):
        RtcpUnknown(204, 0, b"abc").serialize()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes.fromhex("80c9"),
        bytes.fromhex("40c9000101020304"),  # version 1
        bytes.fromhex("80c9000501020304"),  # length past the end
        bytes.fromhex("81c9000101020304"),  # RR count 1 without the block
        bytes.fromhex("81c8000101020304"),  # SR without sender info
        bytes.fromhex("a0c9000101020304"),  # padding 4 > body... last byte 04 but body is the SSRC
        bytes.fromhex("a0c900010102030080c9000101020304"),  # padding on a non-last packet
        bytes.fromhex("81ca0001deadbeef"),  # SDES chunk without its end
        bytes.fromhex("81ca0002deadbeef0120"),  # SDES item longer than the packet
        bytes.fromhex("82cb000101020304"),  # BYE count 2, one source
        bytes.fromhex("81cb00020102030409616263"),  # BYE reason longer than the packet
        bytes.fromhex("80c9000101020304ff"),  # trailing byte
    ],
)
def test_malformed_rtcp(data: bytes) -> None:
    with pytest.raises(RtpParseError):
        parse_rtcp(data)


def test_rtcp_padding_on_the_last_packet() -> None:
    packet = bytes.fromhex("a0c900020102030400000004")
    assert parse_rtcp(packet) == [RtcpReceiverReport(0x01020304)]


def test_ntp_conversion() -> None:
    assert ntp_from_unix(0.0) == NTP_UNIX_OFFSET << 32
    assert ntp_from_unix(1.5) == ((NTP_UNIX_OFFSET + 1) << 32) | 0x80000000
    assert ntp_middle32(0x0123456789ABCDEF) == 0x456789AB


# Receiver statistics (RFC 3550 A.1, A.3, A.8) ------------------------------------------------------------


def packet(seq: int, ts: int) -> RtpPacket:
    return RtpPacket(0, seq, ts, 0xABCD)


def test_stats_probation_loss_and_wrap() -> None:
    stats = RtpReceiverStats(0xABCD)
    assert not stats.update(packet(65530, 0), 0.0)  # probation (MIN_SEQUENTIAL = 2)
    for seq in range(65531, 65536):
        ts = (seq - 65530) * 160
        assert stats.update(packet(seq, ts), ts / 8)  # arrivals exactly on the media clock
    for seq in (0, 1, 3, 4):  # 2 is lost, across the wrap
        ts = (seq + 6) * 160
        assert stats.update(packet(seq, ts), ts / 8)
    arrival = 10 * 20.0
    assert stats.extended_max == 65536 + 4
    assert stats.expected == 10 and stats.received == 9 and stats.lost == 1
    block = stats.report_block(arrival)
    assert block.highest_sequence == 0x10004
    assert block.cumulative_lost == 1
    assert block.fraction_lost == (1 << 8) // 10
    assert block.jitter == 0
    # the next interval has no loss
    stats.update(packet(5, 11 * 160), arrival)
    assert stats.report_block(arrival + 20).fraction_lost == 0


def test_stats_duplicates_and_restarts() -> None:
    stats = RtpReceiverStats(1, min_sequential=1)
    assert stats.update(packet(100, 0), 0.0)
    assert stats.update(packet(101, 160), 20.0)
    assert stats.update(packet(101, 160), 21.0)  # a duplicate still counts as received
    assert stats.lost == -1
    # a wild jump is refused once, then accepted as a restart when the next one follows it
    assert not stats.update(packet(40000, 0), 40.0)
    assert stats.update(packet(40001, 160), 60.0)
    assert stats.base_seq == 40001 and stats.received == 1


def test_stats_jitter_follows_a_8() -> None:
    stats = RtpReceiverStats(1, min_sequential=1)
    stats.update(packet(0, 0), 0.0)
    stats.update(packet(1, 160), 30.0)  # 10 ms late: D = 80 timestamp units
    assert stats.jitter == pytest.approx(80 / 16)
    stats.update(packet(2, 320), 40.0)  # back on time
    assert stats.jitter == pytest.approx(80 / 16 + (80 - 80 / 16) / 16)


def test_stats_lsr_dlsr() -> None:
    stats = RtpReceiverStats(1, min_sequential=1)
    stats.update(packet(0, 0), 0.0)
    sr = RtcpSenderReport(1, SenderInfo(0xE8F2C1A440000000, 0, 1, 160))
    stats.on_sender_report(sr, 1000.0)
    block = stats.report_block(1500.0)
    assert block.lsr == 0xC1A44000 and block.dlsr == 0x8000
