"""RFC 4733 long events (§2.5.1.3 segments) and the receiver under loss, duplication and reordering
(§2.5.1.4, §2.5.2, §2.6): byte vectors written out by hand from the RFC's layouts, and properties.

Byte layout of every packet below: RTP header (RFC 3550 §5.1) ``80`` (V=2), ``65`` or ``e5`` (PT 101,
marker), sequence number, timestamp, SSRC ``cafebabe``; then the event block (RFC 4733 §2.3): event, E|R|
volume (``0a`` = volume 10, ``8a`` with E), duration.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.sip.rtp import RtpPacket, RtpSender, uint32_add
from bridges.sip.telephone_event import (
    MAX_DURATION,
    MAX_SEGMENTS,
    DtmfKey,
    DtmfStarted,
    TelephoneEvent,
    TelephoneEventReceiver,
    TelephoneEventReport,
    TelephoneEventSender,
    segment_index,
)

PT = 101
SSRC = 0xCAFEBABE
T0 = 0x00010000
SEQ0 = 1000


def long_key(duration_ms: int = 10_000, *, end_repeats: int = 3) -> list[RtpPacket]:
    """Every packet of one key ``0`` of ``duration_ms`` (one per 20 ms tick) from a fresh sender."""
    rtp = RtpSender(SSRC, 0, sequence=SEQ0, timestamp=T0)
    sender = TelephoneEventSender(rtp, PT, end_repeats=end_repeats)
    sender.queue("0", duration_ms=duration_ms, pause_ms=0)
    packets: list[RtpPacket] = []
    while sender.busy:
        packets += sender.tick()
    return packets


# Sender: a 10 s key is 80000 units, over 0xFFFF: two segments (§2.5.1.3) ---------------------------------

# tick 1: the first packet, marker set, duration 160 (0x00a0)
FIRST = "80e5 03e8 00010000 cafebabe 000a00a0"
# tick 409: the last update of segment 1, duration 409 x 160 = 65440 (0xffa0)
LAST_UPDATE = "8065 0580 00010000 cafebabe 000affa0"
# ticks 410-412: segment 1 ends at the maximum duration, E bit NOT set, sent three times (§2.5.1.4)
SEGMENT_END = ["8065 0581 00010000 cafebabe 000affff",
               "8065 0582 00010000 cafebabe 000affff",
               "8065 0583 00010000 cafebabe 000affff"]  # fmt: skip
# tick 413: segment 2 starts at T0 + 0xffff = 0x0001ffff, no marker, duration 66080 - 65535 = 545 (0x0221)
SEGMENT_2 = "8065 0584 0001ffff cafebabe 000a0221"
# ticks 500-502: the event's end, E set, duration 80000 - 65535 = 14465 (0x3881), three times
END = ["8065 05db 0001ffff cafebabe 008a3881",
       "8065 05dc 0001ffff cafebabe 008a3881",
       "8065 05dd 0001ffff cafebabe 008a3881"]  # fmt: skip


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_sender_segments_a_long_event_byte_for_byte() -> None:
    wire = [p.serialize() for p in long_key()]
    assert len(wire) == 502
    assert wire[0] == hexbytes(FIRST)
    assert wire[408] == hexbytes(LAST_UPDATE)
    assert wire[409:412] == [hexbytes(h) for h in SEGMENT_END]
    assert wire[412] == hexbytes(SEGMENT_2)
    assert wire[499:] == [hexbytes(h) for h in END]
    packets = [RtpPacket.parse(w) for w in wire]
    assert [p.sequence_number for p in packets] == list(range(SEQ0, SEQ0 + 502))  # one sequence space
    assert sum(p.marker for p in packets) == 1  # only the event's first packet, not segment 2's
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [e.end for e in events].count(True) == 3  # only the complete event's end has the E bit
    segment_1 = [e.duration for p, e in zip(packets, events, strict=True) if p.timestamp == T0]
    segment_2 = [e.duration for p, e in zip(packets, events, strict=True) if p.timestamp != T0]
    assert segment_1 == sorted(segment_1) and segment_2 == sorted(segment_2)  # durations never go back
    assert max(segment_1) == MAX_DURATION and len(segment_1) == 412


def test_sender_three_segments() -> None:
    """20 s = 160000 units: segments at T0, T0 + 0xffff and T0 + 2 x 0xffff; the end has the rest."""
    packets = long_key(20_000)
    assert sorted({p.timestamp for p in packets}) == [T0 + k * MAX_DURATION for k in range(3)]
    assert TelephoneEvent.parse(packets[-1].payload) == TelephoneEvent(
        0, True, 10, 160_000 - 2 * MAX_DURATION
    )
    segment_ends = [p for p in packets if TelephoneEvent.parse(p.payload).duration == MAX_DURATION]
    assert [p.timestamp for p in segment_ends] == [T0] * 3 + [T0 + MAX_DURATION] * 3
    (key,) = [r for r in receive(packets) if isinstance(r, DtmfKey)]
    assert (key.timestamp, key.duration, key.ended_by) == (T0, 160_000, "end")


def test_cancel_in_the_second_segment_ends_at_once() -> None:
    """``cancel()`` during segment 2 ends the key on the next tick (the duration is counted from the event's
    start across segments, not from the segment's)."""
    rtp = RtpSender(SSRC, 0, timestamp=T0)
    sender = TelephoneEventSender(rtp, PT)
    sender.queue("0", duration_ms=20_000, pause_ms=0)
    sent = [p for _ in range(450) for p in sender.tick()]  # 9 s: in segment 2
    sender.cancel()
    rest: list[RtpPacket] = []
    while sender.busy:
        rest += sender.tick()
    assert len(rest) == 3
    ends = [TelephoneEvent.parse(p.payload) for p in rest]
    assert ends == [TelephoneEvent(0, True, 10, 451 * 160 - MAX_DURATION)] * 3
    assert {p.timestamp for p in rest} == {T0 + MAX_DURATION}
    (key,) = [r for r in receive(sent + rest) if isinstance(r, DtmfKey)]
    assert (key.duration, key.ended_by) == (451 * 160, "end")


# Receiver byte vectors -------------------------------------------------------------------------------


def receive(
    packets: list[RtpPacket], receiver: TelephoneEventReceiver | None = None, step_ms: float = 20.0
) -> list[TelephoneEventReport]:
    receiver = receiver or TelephoneEventReceiver()
    out: list[TelephoneEventReport] = []
    for i, packet in enumerate(packets):
        out += receiver.poll(step_ms * i)
        out += receiver.receive(packet, step_ms * i)
    return out


def wire(*hexes: str) -> list[RtpPacket]:
    return [RtpPacket.parse(hexbytes(h)) for h in hexes]


def test_receiver_counts_a_segmented_event_once_with_the_total_duration() -> None:
    reports = receive(wire(FIRST, LAST_UPDATE, *SEGMENT_END, SEGMENT_2, *END))
    assert reports == [
        DtmfStarted(0, "0", SSRC, T0),
        DtmfKey(0, "0", SSRC, T0, 80_000, 10_000, 10, "end"),
    ]


def test_receiver_segment_end_without_e_is_not_an_end() -> None:
    receiver = TelephoneEventReceiver()
    reports = receive(wire(FIRST, *SEGMENT_END), receiver)
    assert reports == [DtmfStarted(0, "0", SSRC, T0)] and receiver.active


def test_receiver_lost_segment_end_next_segment_continues() -> None:
    """All three segment-end packets lost: the next segment's timestamp, 0xffff later, continues the key."""
    reports = receive(wire(FIRST, LAST_UPDATE, SEGMENT_2, END[2]))
    assert [type(r) for r in reports] == [DtmfStarted, DtmfKey]
    assert reports[1] == DtmfKey(0, "0", SSRC, T0, 80_000, 10_000, 10, "end")


def test_receiver_late_packets_of_segment_1_after_segment_2_began() -> None:
    reports = receive(wire(FIRST, SEGMENT_2, SEGMENT_END[0], LAST_UPDATE, *END, SEGMENT_END[1]))
    assert [type(r) for r in reports] == [DtmfStarted, DtmfKey]
    assert reports[1] == DtmfKey(0, "0", SSRC, T0, 80_000, 10_000, 10, "end")


def test_receiver_segment_2_before_any_of_segment_1() -> None:
    """Reordered: segment 2 arrives first, then segment 1 late: still one key, which starts at T0."""
    reports = receive(wire(SEGMENT_2, FIRST, *SEGMENT_END, *END))
    assert [type(r) for r in reports] == [DtmfStarted, DtmfKey]
    key = reports[1]
    assert isinstance(key, DtmfKey) and (key.timestamp, key.duration) == (T0, 80_000)


def test_receiver_segment_1_entirely_lost() -> None:
    """Only segment 2 arrives: one key, its duration from what was seen (segment 1 cannot be known)."""
    reports = receive(wire(SEGMENT_2, *END))
    assert reports == [
        DtmfStarted(0, "0", SSRC, T0 + MAX_DURATION),
        DtmfKey(0, "0", SSRC, T0 + MAX_DURATION, 14_465, 1808, 10, "end"),
    ]


def test_receiver_timeout_between_segments_counts_once() -> None:
    """A gap longer than the timeout inside a long event (§2.6: heavy loss): the key is reported by the
    timeout, and the later segment and end packets do not report it again."""
    receiver = TelephoneEventReceiver(timeout_ms=250)
    reports = receiver.receive(wire(FIRST)[0], 0.0)
    reports += receiver.receive(wire(LAST_UPDATE)[0], 8180.0)
    reports += receiver.poll(8500.0)
    reports += receiver.receive(wire(SEGMENT_2)[0], 8600.0)
    for i, packet in enumerate(wire(*END)):
        reports += receiver.receive(packet, 10_000.0 + 20 * i)
    reports += receiver.poll(20_000.0)
    assert [type(r) for r in reports] == [DtmfStarted, DtmfKey]
    key = reports[1]
    assert isinstance(key, DtmfKey) and (key.ended_by, key.duration) == ("timeout", 65_440)


def test_a_new_press_of_the_same_key_is_not_a_segment() -> None:
    """``0`` held for 10 s then ``0`` again right after: two keys (a new press has its own timestamp, on the
    20 ms grid, which is never a whole number of segments away, MAX_SEGMENTS)."""
    rtp = RtpSender(SSRC, 0, timestamp=T0)
    sender = TelephoneEventSender(rtp, PT)
    sender.queue("00", duration_ms=10_000, pause_ms=0)
    packets: list[RtpPacket] = []
    while sender.busy:
        packets += sender.tick()
    keys = [r for r in receive(packets) if isinstance(r, DtmfKey)]
    assert [(k.digit, k.duration, k.ended_by) for k in keys] == [("0", 80_000, "end")] * 2
    second_start = keys[1].timestamp
    assert segment_index(second_start, T0) is None
    for k in range(1, 33):  # why 31 segments: k x 0xffff is on the 160-unit grid first at k = 32
        assert (k * MAX_DURATION % 160 == 0) == (k == 32)
    assert MAX_SEGMENTS == 31


def test_segment_index() -> None:
    assert segment_index(T0, T0) == 0
    assert segment_index(uint32_add(T0, MAX_DURATION), T0) == 1
    assert segment_index(T0, uint32_add(T0, 2 * MAX_DURATION)) == -2
    assert segment_index(uint32_add(0xFFFFFF00, MAX_DURATION), 0xFFFFFF00) == 1  # across the wrap
    assert segment_index(T0 + 160, T0) is None
    assert segment_index(uint32_add(T0, 32 * MAX_DURATION), T0) is None  # too far to be one event


def test_late_older_key_is_reported_once() -> None:
    """Key 1's packets all arrive after key 2 began (reordered behind it): key 1 is reported at once and
    only once; key 2 goes on."""
    rtp = RtpSender(SSRC, 0, timestamp=T0)
    sender = TelephoneEventSender(rtp, PT)
    sender.queue("12", pause_ms=60)
    packets: list[RtpPacket] = []
    while sender.busy:
        sent = sender.tick()
        if not sent:
            rtp.send(b"\xff" * 160)
        packets += sent
    one, two = packets[:7], packets[7:]
    reports = receive([two[0], *one, *two[1:]])
    assert [(type(r).__name__, r.digit) for r in reports] == [
        ("DtmfStarted", "2"),
        ("DtmfStarted", "1"),
        ("DtmfKey", "1"),
        ("DtmfKey", "2"),
    ]


# Properties ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    at_ms: float
    packet: RtpPacket
    key: int


def transmit(keys: list[tuple[str, int]], timestamp: int) -> tuple[list[Sent], list[int]]:
    """What a sender sends for ``keys`` (digit, ms) with 60 ms between them: every event packet with its send
    time and the index of its key; and each key's start timestamp."""
    rtp = RtpSender(SSRC, 0, sequence=65000, timestamp=timestamp)
    sender = TelephoneEventSender(rtp, PT)
    for digit, duration_ms in keys:
        sender.queue(digit, duration_ms=duration_ms, pause_ms=60)
    sent: list[Sent] = []
    starts: list[int] = []
    tick = 0
    while sender.busy:
        packets = sender.tick()
        if not packets:
            rtp.send(b"\xff" * 160)
        for packet in packets:
            if packet.marker:
                starts.append(packet.timestamp)
            sent.append(Sent(20.0 * tick, packet, len(starts) - 1))
        tick += 1
    return sent, starts


def impair(
    sent: list[Sent], rng: random.Random, loss: float, dup: float, delay: int
) -> list[tuple[float, Sent]]:
    """Drop, duplicate and delay (by 0 to ``delay`` frames each: reordering) the packets; arrival order."""
    arrivals: list[tuple[float, int, Sent]] = []
    for n, item in enumerate(sent):
        if rng.random() < loss:
            continue
        for copy in range(2 if rng.random() < dup else 1):
            arrivals.append((item.at_ms + 20.0 * rng.randint(0, delay), 2 * n + copy, item))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    return [(at, item) for at, _, item in arrivals]


def run(arrivals: list[tuple[float, Sent]]) -> list[TelephoneEventReport]:
    """Deliver the packets at their arrival times with :meth:`poll` every 20 ms, as the RTP session does."""
    receiver = TelephoneEventReceiver()
    reports: list[TelephoneEventReport] = []
    clock = 0.0
    for at, item in arrivals:
        while clock <= at:
            reports += receiver.poll(clock)
            clock += 20.0
        reports += receiver.receive(item.packet, at)
    reports += receiver.poll(clock + 1000.0)
    return reports


def owner(key: DtmfKey | DtmfStarted, starts: list[int]) -> int:
    """The index of the key a report is about: its timestamp is one of that key's segment boundaries."""
    (index,) = [i for i, start in enumerate(starts) if segment_index(key.timestamp, start) is not None]
    return index


key_strategy = st.tuples(
    st.sampled_from("0123456789*#ABCD"),
    st.one_of(st.integers(10, 400), st.sampled_from([8_300, 9_000, 17_000])),  # some cross 0xffff
)


@settings(max_examples=120, deadline=None)
@given(
    keys=st.lists(key_strategy, min_size=1, max_size=5),
    seed=st.integers(0, 2**32 - 1),
    timestamp=st.integers(0, 2**32 - 1),
    loss=st.floats(0, 0.7),
    dup=st.floats(0, 0.5),
    delay=st.integers(0, 12),
)
def test_each_key_reported_exactly_once(
    keys: list[tuple[str, int]], seed: int, timestamp: int, loss: float, dup: float, delay: int
) -> None:
    """Under loss, duplication and reordering across keys (a packet up to 240 ms late, past the next
    key's first packets), every key of which at least one packet arrives is started and reported exactly
    once, with its own digit, long events across their segments included; keys of which nothing arrives
    are not invented."""
    sent, starts = transmit(keys, timestamp)
    arrivals = impair(sent, random.Random(seed), loss, dup, delay)
    reports = run(arrivals)
    arrived = sorted({item.key for _, item in arrivals})
    reported = sorted(owner(r, starts) for r in reports if isinstance(r, DtmfKey))
    started = sorted(owner(r, starts) for r in reports if isinstance(r, DtmfStarted))
    assert reported == arrived
    assert started == arrived
    for report in reports:
        assert report.digit == keys[owner(report, starts)][0]


@settings(max_examples=120, deadline=None)
@given(
    keys=st.lists(key_strategy, min_size=1, max_size=5),
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0, 0.7),
    dup=st.floats(0, 0.5),
    delay=st.integers(0, 3),
)
def test_keys_in_order_when_reordering_stays_within_a_key(
    keys: list[tuple[str, int]], seed: int, loss: float, dup: float, delay: int
) -> None:
    """Reordering up to 60 ms, less than the 80 ms from one key's last packet to the next one's first:
    the keys come out in the order they were pressed, once each."""
    sent, starts = transmit(keys, 0xFFFF0000)  # the timestamps wrap during the keys
    arrivals = impair(sent, random.Random(seed), loss, dup, delay)
    reports = run(arrivals)
    arrived = sorted({item.key for _, item in arrivals})
    assert [owner(r, starts) for r in reports if isinstance(r, DtmfKey)] == arrived
    assert [owner(r, starts) for r in reports if isinstance(r, DtmfStarted)] == arrived


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(key_strategy, min_size=1, max_size=4), seed=st.integers(0, 2**32 - 1))
def test_durations_add_up_under_duplication_and_local_reordering(
    keys: list[tuple[str, int]], seed: int
) -> None:
    """Nothing lost, packets duplicated and swapped by one frame: each key's total duration is exact,
    across segments too."""
    sent, starts = transmit(keys, 0x7FFFFFF0)
    reports = run(impair(sent, random.Random(seed), 0.0, 0.3, 1))
    durations = {owner(r, starts): r.duration for r in reports if isinstance(r, DtmfKey)}
    assert durations == {i: max(1, ms * 8) for i, (_, ms) in enumerate(keys)}
    assert all(r.timestamp == starts[owner(r, starts)] for r in reports if isinstance(r, DtmfKey))
