"""RTP send jitter as seen on the wire: kernel timestamps of the service's RTP packets on loopback.

The service's pacer lateness (``voice_frame_lateness_seconds``) says how late each 20 ms tick woke up; the
RTP packet itself leaves later, from the call's leg-writer task. This module measures the packets: a
packet socket (``AF_PACKET``, Linux, needs ``CAP_NET_RAW``) on ``lo`` with a classic BPF filter that keeps
only IPv4 UDP packets from a source port range (the service's RTP ports), optionally one port in every few
(a sample of the calls, so capturing costs little CPU). Each packet carries a kernel timestamp
(``SO_TIMESTAMPNS``, CLOCK_REALTIME) taken when loopback hands it to the receive path, inside the sender's
``sendto``, so the capturing thread's own scheduling does not enter the figure.

:func:`ipdv_ms` turns the packets into the jitter a receiver sees: the IP packet delay variation of
RFC 5481 §1.1 between consecutive packets of a stream, ``(t[i] - t[i-1]) - (ts[i] - ts[i-1]) / 8000``, the
difference of their send times minus the difference of their RTP timestamps (the D of RFC 3550 §6.4.1,
from which RTCP's interarrival jitter is smoothed). A frame sent 7 ms late gives +7 ms, then -7 ms when
the next one is back on time. A pause in the agent's audio longer than 60 ms starts a talkspurt (marker
bit, timestamp moved on by whole frames) and is left out: the pause is not jitter, and the timestamp's
rounding to whole frames would look like it.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "RtpWireCapture",
    "WirePacket",
    "histogram_quantile",
    "ipdv_ms",
    "udp_source_filter",
]

_ETH_P_IP: Final = 0x0800
_PACKET_OUTGOING: Final = 4
_SKF_AD_PKTTYPE: Final = 0xFFFFF000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE (linux/filter.h)
_SO_TIMESTAMPNS: Final = getattr(socket, "SO_TIMESTAMPNS", 35)
_SNAP: Final = 64  # IPv4 (20, more with options) + UDP (8) + the RTP fixed header (12)

# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
_LD_B_ABS: Final = 0x30
_LD_H_ABS: Final = 0x28
_LD_H_IND: Final = 0x48
_LDX_B_MSH: Final = 0xB1
_JEQ_K: Final = 0x15
_JGE_K: Final = 0x35
_JGT_K: Final = 0x25
_JSET_K: Final = 0x45
_AND_K: Final = 0x54
_RET_K: Final = 0x06
_DROP: Final = -1
_SO_ATTACH_FILTER: Final = 26
_SO_RCVBUFFORCE: Final = 33
_SOL_PACKET: Final = 263
_PACKET_STATISTICS: Final = 6


@dataclass(frozen=True)
class WirePacket:
    """One captured RTP packet: kernel send time (s, CLOCK_REALTIME), source port, RTP header fields."""

    t: float
    port: int
    seq: int
    timestamp: int
    payload_type: int
    marker: bool = False


def udp_source_filter(port_min: int, port_max: int, *, every: int = 1, snap: int = _SNAP) -> bytes:
    """A classic BPF program (``struct sock_filter[]``, for ``SO_ATTACH_FILTER`` on a ``SOCK_DGRAM`` packet
    socket: offsets from the IP header) keeping unfragmented IPv4 UDP packets whose source port is in
    ``[port_min, port_max]`` and a multiple of ``every`` (a power of two), truncated to ``snap`` bytes; the
    transmit copies an ``ETH_P_ALL`` socket also sees on loopback are dropped, so each packet counts once."""
    if every < 1 or every & (every - 1):
        raise ValueError(f"every must be a power of two, got {every}")
    if not 0 <= port_min <= port_max <= 65535:
        raise ValueError(f"bad port range {port_min}-{port_max}")
    program = [  # (code, jump if true, jump if false, k); jumps: 0 = next instruction, _DROP = drop
        (_LD_B_ABS, 0, 0, 9),  # A = IP protocol
        (_JEQ_K, 0, _DROP, socket.IPPROTO_UDP),
        (_LD_H_ABS, 0, 0, 6),  # A = flags + fragment offset
        (_JSET_K, _DROP, 0, 0x1FFF),  # a later fragment carries no UDP header
        (_LDX_B_MSH, 0, 0, 0),  # X = IP header length
        (_LD_H_IND, 0, 0, 0),  # A = UDP source port
        (_JGE_K, 0, _DROP, port_min),
        (_JGT_K, _DROP, 0, port_max),
        (_AND_K, 0, 0, every - 1),
        (_JEQ_K, 0, _DROP, 0),  # one port in ``every``
        (_LD_B_ABS, 0, 0, _SKF_AD_PKTTYPE),  # A = packet type
        (_JEQ_K, _DROP, 0, _PACKET_OUTGOING),  # transmit copies (an ETH_P_ALL socket sees loopback twice)
        (_RET_K, 0, 0, snap),  # keep
        (_RET_K, 0, 0, 0),  # drop
    ]
    last = len(program) - 1
    out = bytearray()
    for i, (code, jt, jf, k) in enumerate(program):
        out += struct.pack(
            "HBBI", code, last - i - 1 if jt == _DROP else jt, last - i - 1 if jf == _DROP else jf, k
        )
    return bytes(out)


def _parse(data: bytes, t: float) -> WirePacket | None:
    """The RTP fields of a captured IPv4/UDP packet (``data`` from the IP header), or None for RTCP and
    anything too short or not RTP version 2."""
    if len(data) < 20:
        return None
    ihl = (data[0] & 0x0F) * 4
    if len(data) < ihl + 8 + 12:
        return None
    port = int.from_bytes(data[ihl : ihl + 2], "big")
    rtp = ihl + 8
    if data[rtp] >> 6 != 2:
        return None
    payload_type = data[rtp + 1] & 0x7F
    if 72 <= payload_type <= 76:  # RTCP SR, RR, SDES, BYE, APP (RFC 5761 §4)
        return None
    seq = int.from_bytes(data[rtp + 2 : rtp + 4], "big")
    timestamp = int.from_bytes(data[rtp + 4 : rtp + 8], "big")
    return WirePacket(t, port, seq, timestamp, payload_type, bool(data[rtp + 1] & 0x80))


@dataclass
class RtpWireCapture:
    """Captures the service's outgoing RTP on ``lo`` in a background thread (see the module docstring).

    ``start`` raises :class:`OSError` (``PermissionError``) where packet sockets are not allowed.
    """

    port_min: int
    port_max: int
    every: int = 1
    packets: list[WirePacket] = field(default_factory=list, init=False)
    dropped: int = field(default=0, init=False)
    """Packets the kernel dropped because the socket buffer was full (``PACKET_STATISTICS``)."""
    _sock: socket.socket | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def start(self) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_IP))
        try:
            code = udp_source_filter(self.port_min, self.port_max, every=self.every)
            program = ctypes.create_string_buffer(code, len(code))
            fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(program))  # struct sock_fprog
            sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 16 << 20)
            sock.bind(("lo", 0))
            sock.settimeout(0.2)
        except BaseException:
            sock.close()
            raise
        self._drain(sock)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="rtp-wire-capture", daemon=True)
        self._thread.start()

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        """Drop what arrived between ``socket()`` and the filter (the unfiltered start of the socket)."""
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sock.recv(_SNAP)
        sock.settimeout(0.2)

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        with contextlib.suppress(OSError):  # the capture matters less than the service: run it niced
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        space = socket.CMSG_SPACE(16)
        batch: list[WirePacket] = []
        flushed = time.monotonic()
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = sock.recvmsg(_SNAP, space)
            except TimeoutError:
                data, ancdata = b"", []
            except OSError:
                break
            t = time.time()
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("qq", value[:16])
                    t = sec + nsec / 1e9
            packet = _parse(data, t)
            if packet is not None:
                batch.append(packet)
            if batch and (len(batch) >= 256 or time.monotonic() - flushed > 0.1):
                self._flush(batch)
                flushed = time.monotonic()
        self._flush(batch)

    def _flush(self, batch: list[WirePacket]) -> None:
        if batch:
            with self._lock:
                self.packets.extend(batch)
            batch.clear()

    def take(self, since: float, until: float) -> list[WirePacket]:
        """The packets captured so far with ``since <= t <= until`` (CLOCK_REALTIME, ``time.time()``); the
        last tenth of a second or so may still be on its way."""
        with self._lock:
            return [p for p in self.packets if since <= p.t <= until]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                stats = self._sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)
                self.dropped += struct.unpack("II", stats)[1]
            self._sock.close()
            self._sock = None

    def __enter__(self) -> RtpWireCapture:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def ipdv_ms(packets: Iterable[WirePacket], *, clock_rate: int = 8000) -> list[float]:
    """The delay variation (ms) of each packet against the one before it in its stream (see the module
    docstring); pairs that are not consecutive (a packet the capture missed) or that start a talkspurt are
    left out."""
    streams: dict[int, list[WirePacket]] = {}
    for packet in packets:
        streams.setdefault(packet.port, []).append(packet)
    out: list[float] = []
    for stream in streams.values():
        stream.sort(key=lambda p: p.t)
        for previous, packet in itertools.pairwise(stream):
            if packet.marker or (packet.seq - previous.seq) % 65536 != 1:  # wraparound: RFC 3550 §A.1
                continue
            if packet.payload_type != previous.payload_type:
                continue
            media_s = ((packet.timestamp - previous.timestamp) % 2**32) / clock_rate
            out.append((packet.t - previous.t - media_s) * 1000)
    return out


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The ``q`` quantile of a cumulative histogram (``(upper bound, count)`` pairs ending at ``+Inf``),
    interpolated linearly inside its bucket as Prometheus' ``histogram_quantile`` does; NaN when empty,
    the highest finite bound when the quantile falls in the ``+Inf`` bucket."""
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    target = q * buckets[-1][1]
    lower_le, lower_n = 0.0, 0.0
    for le, n in buckets:
        if n >= target:
            if le == float("inf"):
                return lower_le
            share = (target - lower_n) / max(n - lower_n, 1e-12)
            return lower_le + share * (le - lower_le)
        lower_le, lower_n = le, n
    return lower_le
