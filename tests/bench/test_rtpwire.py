"""The wire jitter helpers of ``voice bench sip``: packet delay variation, histogram quantiles, the BPF
filter, and the packet capture itself on real loopback sockets."""

from __future__ import annotations

import math
import socket
import struct
import time

import pytest

from voice.bench.rtpwire import (
    RtpWireCapture,
    WirePacket,
    histogram_quantile,
    ipdv_ms,
    udp_source_filter,
)


def stream(port: int, times_ms: list[float], *, seq0: int = 0, ts0: int = 0) -> list[WirePacket]:
    """Packets of one 20 ms PCMU stream sent at ``times_ms``, numbered from ``seq0`` / ``ts0`` (wrapping)."""
    return [
        WirePacket(t / 1000, port, (seq0 + k) % 65536, (ts0 + 160 * k) % 2**32, 0)
        for k, t in enumerate(times_ms)
    ]


def test_ipdv_of_a_regular_stream_is_zero() -> None:
    assert ipdv_ms(stream(40000, [20.0 * k for k in range(10)])) == pytest.approx([0.0] * 9)


def test_a_late_packet_shows_as_plus_then_minus() -> None:
    times = [20.0 * k for k in range(6)]
    times[3] += 7.0
    assert ipdv_ms(stream(40000, times)) == pytest.approx([0.0, 0.0, 7.0, -7.0, 0.0])


def test_sequence_and_timestamp_wraparound() -> None:
    packets = stream(40000, [0.0, 20.0, 45.0, 60.0], seq0=65534, ts0=2**32 - 320)
    assert [p.seq for p in packets] == [65534, 65535, 0, 1]
    assert ipdv_ms(packets) == pytest.approx([0.0, 5.0, -5.0])


def test_talkspurt_starts_and_missed_packets_are_left_out() -> None:
    first = stream(40000, [0.0, 20.0, 40.0])
    # After a 300 ms pause the sender moves its timestamp on by whole frames and sets the marker bit.
    resumed = [
        WirePacket(0.347, 40000, 3, 160 * 17, 0, marker=True),
        WirePacket(0.367, 40000, 4, 160 * 18, 0),
        WirePacket(0.407, 40000, 6, 160 * 20, 0),  # seq 5 was not captured
        WirePacket(0.427, 40000, 7, 160 * 21, 0),
    ]
    assert ipdv_ms(first + resumed) == pytest.approx([0.0, 0.0, 0.0, 0.0])


def test_streams_are_measured_apart_and_in_time_order() -> None:
    a = stream(40000, [0.0, 20.0, 40.0])
    b = stream(40008, [5.0, 28.0, 45.0])
    mixed = [b[2], a[1], b[0], a[2], a[0], b[1]]
    assert sorted(ipdv_ms(mixed)) == pytest.approx(sorted([0.0, 0.0, 3.0, -3.0]))


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.001, 50.0), (0.002, 90.0), (0.005, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.001)
    assert histogram_quantile(buckets, 0.7) == pytest.approx(0.0015)
    assert histogram_quantile(buckets, 0.95) == pytest.approx(0.0035)


def test_histogram_quantile_edges() -> None:
    assert math.isnan(histogram_quantile([], 0.99))
    assert math.isnan(histogram_quantile([(0.001, 0.0), (math.inf, 0.0)], 0.99))
    # Beyond the last finite bound: the bound is all a histogram can say.
    assert histogram_quantile([(0.25, 10.0), (math.inf, 100.0)], 0.99) == 0.25


def test_filter_arguments_are_checked() -> None:
    assert len(udp_source_filter(40000, 41000, every=8)) % 8 == 0  # whole struct sock_filter entries
    with pytest.raises(ValueError, match="power of two"):
        udp_source_filter(40000, 41000, every=3)
    with pytest.raises(ValueError, match="port range"):
        udp_source_filter(41000, 40000)


def _bound_pair(base: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", base))
    return sock


def _free_block(size: int) -> int:
    for base in range(45000, 60000, 64):
        try:
            socks = [_bound_pair(p) for p in range(base, base + size)]
        except OSError:
            continue
        for s in socks:
            s.close()
        return base
    raise RuntimeError("no free block of UDP ports")


def test_capture_keeps_sampled_rtp_from_the_port_range() -> None:
    base = _free_block(24)  # a multiple of 8: ports base, base + 8, base + 16 are sampled
    capture = RtpWireCapture(base, base + 15, every=8)
    try:
        capture.start()
    except PermissionError:
        pytest.skip("packet sockets need CAP_NET_RAW")
    sinks = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sinks.bind(("127.0.0.1", 0))
    senders = {port: _bound_pair(port) for port in (base, base + 2, base + 8, base + 9, base + 16)}
    try:
        start = time.time()
        for k in range(5):
            for port, sock in senders.items():
                rtp = struct.pack("!BBHII", 0x80, 0, 100 + k, 160 * k, port) + b"\xff" * 160
                sock.sendto(rtp, sinks.getsockname())
            time.sleep(0.02)
        rtcp = struct.pack("!BBHI", 0x80, 200, 6, base) + bytes(20)  # a sender report: not RTP
        senders[base].sendto(rtcp, sinks.getsockname())
        time.sleep(0.3)
        end = time.time()
    finally:
        capture.stop()
        for sock in senders.values():
            sock.close()
        sinks.close()
    packets = capture.take(start, end)
    # base + 2 and base + 9 are not multiples of 8, base + 16 is out of range, the RTCP packet is not RTP.
    assert sorted({p.port for p in packets}) == [base, base + 8]
    assert len(packets) == 10
    assert [p.seq for p in packets if p.port == base] == [100, 101, 102, 103, 104]
    assert all(start <= p.t <= end for p in packets)
    assert len(ipdv_ms(packets)) == 8  # four consecutive pairs per stream: RTP fields parsed
