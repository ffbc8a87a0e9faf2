"""The RTP endpoint on real loopback sockets: reordering and loss on the way in, symmetric RTP, RFC 4733
both ways, marker bits and RTCP."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from bridges.base import CallerAudio, CallerDtmf, LegEvent
from bridges.sip.rtp import RtcpSenderReport, RtpPacket, RtpSender, parse_rtcp
from bridges.sip.rtp_session import RtpClock, RtpPortPool
from bridges.sip.sdp import Codec, NegotiatedMedia
from bridges.sip.telephone_event import TelephoneEvent
from tests.bridges.sip.sipp import free_even_port
from voice.readsize import READ_SIZE


class Peer(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.packets.append(RtpPacket.parse(data))


class Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.data.append(data)


def media(port: int, te: bool = True) -> NegotiatedMedia:
    return NegotiatedMedia(
        codec=Codec(0, "PCMU", 8000),
        telephone_event=Codec(101, "telephone-event", 8000) if te else None,
        remote_address="127.0.0.1",
        remote_port=port,
        remote_rtcp_port=port + 1,
        ptime=20,
        direction="sendrecv",
        media_index=0,
    )


async def test_reordered_and_lost_packets_play_in_order_and_symmetric_rtp() -> None:
    loop = asyncio.get_running_loop()
    base = free_even_port()
    pool = RtpPortPool("127.0.0.1", base, base + 10)
    session = await pool.open("call_test")
    assert getattr(session._rtp, "max_size", None) == READ_SIZE  # no 256 KiB allocation per packet
    # The SDP names a port nobody listens on: we must answer where the packets really come from.
    transport, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    session.configure(media(9))
    events: list[LegEvent] = []
    session.start(events.append)
    sender = RtpSender(4242, 0)
    packets = [sender.send(bytes([n]) * 160) for n in range(60)]
    rng = random.Random(3)
    lost = {17, 33}
    order = list(range(60))
    for i in range(0, 60, 3):  # shuffle within windows of 3 packets (up to 40 ms late: within the buffer)
        window = order[i : i + 3]
        rng.shuffle(window)
        order[i : i + 3] = window
    start = loop.time()
    for k, n in enumerate(order):
        if n not in lost:
            transport.sendto(packets[n].serialize(), ("127.0.0.1", session.port))
        await asyncio.sleep(max(0.0, start + (k + 1) * 0.02 - loop.time()))
    for _n in range(20):
        session.send_audio(bytes([0x55]) * 160)
    await asyncio.sleep(0.4)
    session.close()
    transport.close()
    audio = [e for e in events if isinstance(e, CallerAudio)]
    firsts = [e.audio[0] for e in audio]
    played = [b for b in firsts if b not in (17, 33)]
    assert played == sorted(played)  # in order despite the reordering
    assert set(range(60)) - lost <= set(firsts) | lost  # every packet that arrived was played
    assert [e.media_ms for e in audio] == [20 * i for i in range(len(audio))]
    assert session.jitter.stats.concealed >= 2  # the lost ones were concealed
    assert len(peer.packets) == 20  # symmetric RTP: sent back to the source, not to the SDP port
    assert peer.packets[0].marker and not any(p.marker for p in peer.packets[1:])


async def test_rfc4733_in_and_out_and_rtcp() -> None:
    loop = asyncio.get_running_loop()
    base = free_even_port()
    pool = RtpPortPool("127.0.0.1", base, base + 10)
    session = await pool.open("call_test")
    transport, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    rtcp_t, rtcp_peer = await loop.create_datagram_endpoint(Collect, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    session.configure(media(port))
    events: list[LegEvent] = []
    session.start(events.append)
    sender = RtpSender(777, 0)
    for duration, end in ((160, False), (320, False), (480, True), (480, True), (480, True)):
        packet = sender.packet(TelephoneEvent(7, end, 10, duration).serialize(), payload_type=101)
        transport.sendto(packet.serialize(), ("127.0.0.1", session.port))
        await asyncio.sleep(0.02)
    assert session.send_dtmf("9")
    await asyncio.sleep(0.5)
    session.remote_rtcp = rtcp_t.get_extra_info("sockname")[:2]
    session._send_rtcp()  # the 5 s report, now
    await asyncio.sleep(0.05)
    session.close()
    transport.close()
    rtcp_t.close()
    assert [e.digit for e in events if isinstance(e, CallerDtmf)] == [
        "7"
    ]  # one key, end packets deduplicated
    sent = [TelephoneEvent.parse(p.payload) for p in peer.packets if p.payload_type == 101]
    assert sent and sent[0].event == 9 and [e.end for e in sent][-3:] == [True, True, True]
    report = parse_rtcp(rtcp_peer.data[0])
    assert isinstance(report[0], RtcpSenderReport) and report[0].reports[0].ssrc == 777


class _Ticked:
    def __init__(self) -> None:
        self.at: list[float] = []

    def _tick(self) -> None:
        self.at.append(asyncio.get_running_loop().time())


async def test_one_clock_ticks_every_session_every_20ms_in_groups_after_the_pacer_tick() -> None:

    clock = RtpClock()
    sessions = [_Ticked() for _ in range(8)]
    for session in sessions:
        clock.add(session)
    assert len(clock) == 8
    await asyncio.sleep(0.41)
    counts = [len(s.at) for s in sessions]
    assert all(19 <= n <= 21 for n in counts), counts
    for s in sessions:  # absolute deadlines: 20 ms apart on average, no drift
        assert abs((s.at[-1] - s.at[0]) / (len(s.at) - 1) - 0.020) < 0.002
    first = sorted(s.at[0] for s in sessions[:4])  # one session per group: 3 ms apart
    assert all(0.0015 < b - a < 0.006 for a, b in itertools.pairwise(first))
    # A round starts on the frame pacer's 20 ms grid; its steps fall 0.2, 3.2, 6.2 and 9.2 ms after the
    # tick, all in the first half of the period: none just before the next tick.
    periods = clock._period / 0.02
    assert periods == pytest.approx(round(periods), abs=1e-6)
    assert clock._handle is not None
    offset = clock._handle.when() - clock._period
    assert any(offset == pytest.approx(o, abs=1e-6) for o in (0.0002, 0.0032, 0.0062, 0.0092))
    for session in sessions:
        clock.remove(session)
    assert len(clock) == 0 and clock._handle is None
    before = [len(s.at) for s in sessions]
    await asyncio.sleep(0.05)
    assert [len(s.at) for s in sessions] == before  # nothing ticks once all have left
