"""RFC 4733 telephone-events: payload, sender and receiver (bridges/sip/telephone_event.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.sip.rtp import RtpPacket, RtpParseError, RtpSender, uint32_add
from bridges.sip.telephone_event import (
    EVENT_DIGITS,
    MAX_DURATION,
    DtmfKey,
    DtmfStarted,
    TelephoneEvent,
    TelephoneEventReceiver,
    TelephoneEventReport,
    TelephoneEventSender,
    digit_to_event,
    event_to_digit,
)
from tests.bridges.sip import vector
from voice.errors import LocalProtocolError

PT = 101


def send(
    digits: str, *, duration_ms: int = 100, pause_ms: int = 60, timestamp: int = 1000
) -> list[RtpPacket]:
    """Every event packet the sender makes for ``digits``, ticking until it is idle; on the ticks without
    an event the audio stream sends a frame (which moves the clock)."""
    rtp = RtpSender(0xCAFE, 0, sequence=65530, timestamp=timestamp)
    sender = TelephoneEventSender(rtp, PT)
    sender.queue(digits, duration_ms=duration_ms, pause_ms=pause_ms)
    packets: list[RtpPacket] = []
    while sender.busy:
        sent = sender.tick()
        if not sent:
            rtp.send(b"\xff" * 160)
        packets += sent
    return packets


def receive(
    packets: list[RtpPacket], receiver: TelephoneEventReceiver | None = None
) -> list[TelephoneEventReport]:
    receiver = receiver or TelephoneEventReceiver()
    out: list[TelephoneEventReport] = []
    for i, packet in enumerate(packets):
        out += receiver.receive(packet, 20.0 * i)
    return out


def keys(reports: list[TelephoneEventReport]) -> list[DtmfKey]:
    return [r for r in reports if isinstance(r, DtmfKey)]


# Payload (§2.3) -----------------------------------------------------------------------------------------


def test_rfc4733_example_payload() -> None:
    data = vector("rfc4733_digit5_end.bin")
    assert data == bytes.fromhex("058a0320")
    event = TelephoneEvent.parse(data)
    assert event == TelephoneEvent(event=5, end=True, volume=10, duration=800)
    assert event.serialize() == data


def test_payload_checks() -> None:
    with pytest.raises(RtpParseError):
        TelephoneEvent.parse(b"\x05\x8a\x03")
    assert TelephoneEvent.parse(bytes.fromhex("05ca0320ffff")).volume == 10  # R bit ignored, extra bytes too
    with pytest.raises(LocalProtocolError):
        TelephoneEvent(5, volume=64)
    with pytest.raises(LocalProtocolError):
        TelephoneEvent(5, duration=0x10000)


def test_digit_mapping() -> None:
    assert [digit_to_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert digit_to_event("a") == 12
    assert event_to_digit(11) == "#" and event_to_digit(16) is None
    assert EVENT_DIGITS[10] == "*"
    for bad in ("", "55", "E", "!"):
        with pytest.raises(LocalProtocolError):
            digit_to_event(bad)


# Sending (§2.5.1) ----------------------------------------------------------------------------------------


def test_one_key_of_100_ms() -> None:
    rtp = RtpSender(0xCAFE, 0, sequence=65534, timestamp=0xFFFFFF00)
    sender = TelephoneEventSender(rtp, PT)
    sender.queue("5")
    assert sender.sending and sender.busy
    packets = [p for _ in range(7) for p in sender.tick()]
    assert [p.payload_type for p in packets] == [PT] * 7
    assert [p.sequence_number for p in packets] == [65534, 65535, 0, 1, 2, 3, 4]
    assert {p.timestamp for p in packets} == {0xFFFFFF00}  # constant for the event
    assert [p.marker for p in packets] == [True] + [False] * 6
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert {e.event for e in events} == {5} and {e.volume for e in events} == {10}
    assert events[-1].serialize() == bytes.fromhex("058a0320")
    assert rtp.timestamp == uint32_add(0xFFFFFF00, 7 * 160)  # the media clock went on
    assert not sender.sending and sender.busy  # the pause after the key
    assert [sender.tick() for _ in range(3)] == [[], [], []]
    assert not sender.busy and sender.tick() == []


def test_several_keys_have_their_own_timestamps() -> None:
    packets = send("1#")
    starts = [p for p in packets if p.marker]
    assert [TelephoneEvent.parse(p.payload).event for p in starts] == [1, 11]
    assert starts[1].timestamp - starts[0].timestamp == (7 + 3) * 160  # 7 packets, 3 silent ticks
    assert len(packets) == 14


def test_short_key_and_odd_duration() -> None:
    packets = send("9", duration_ms=10)
    assert len(packets) == 3 and packets[0].marker
    assert [TelephoneEvent.parse(p.payload).duration for p in packets] == [80, 80, 80]
    assert all(TelephoneEvent.parse(p.payload).end for p in packets)
    odd = send("9", duration_ms=130)
    assert [TelephoneEvent.parse(p.payload).duration for p in odd][-4:] == [960, 1040, 1040, 1040]


def test_long_event_is_segmented() -> None:
    packets = send("0", duration_ms=10_000)  # 80000 units > 0xFFFF
    timestamps = sorted({p.timestamp for p in packets})
    assert timestamps == [1000, 1000 + MAX_DURATION]
    first_segment = [TelephoneEvent.parse(p.payload) for p in packets if p.timestamp == 1000]
    assert first_segment[-3:] == [TelephoneEvent(0, False, 10, MAX_DURATION)] * 3
    last = [TelephoneEvent.parse(p.payload) for p in packets if p.timestamp != 1000]
    assert last[-1] == TelephoneEvent(0, True, 10, 80000 - MAX_DURATION)
    assert sum(1 for p in packets if p.marker) == 1
    (key,) = keys(receive(packets))
    assert (key.digit, key.duration, key.duration_ms, key.ended_by) == ("0", 80000, 10_000, "end")


def test_sender_rejects_bad_input_and_can_cancel() -> None:
    rtp = RtpSender(1, 0)
    sender = TelephoneEventSender(rtp, PT)
    with pytest.raises(LocalProtocolError):
        sender.queue("12x")
    assert not sender.busy  # nothing was queued
    with pytest.raises(LocalProtocolError):
        sender.queue("1", duration_ms=0)
    with pytest.raises(LocalProtocolError):
        TelephoneEventSender(rtp, PT, volume=64)
    sender.queue("123", duration_ms=1000)
    first = sender.tick() + sender.tick()
    sender.cancel()
    rest: list[RtpPacket] = []
    while sender.busy:
        rest += sender.tick()
    events = [TelephoneEvent.parse(p.payload) for p in first + rest]
    assert {e.event for e in events} == {1}  # 2 and 3 were dropped
    assert [e.end for e in events][-3:] == [True] * 3  # the key being sent still ends properly
    assert events[-1].duration == 480


# Receiving (§2.5.2) --------------------------------------------------------------------------------------


def test_vector_packet_reports_one_key() -> None:
    packet = RtpPacket.parse(vector("rtp_event_digit5_end.bin"))
    receiver = TelephoneEventReceiver()
    reports = receiver.receive(packet, 0.0)
    assert reports == [
        DtmfStarted(5, "5", 0xDEADBEEF, 8000),
        DtmfKey(5, "5", 0xDEADBEEF, 8000, 800, 100, 10, "end"),
    ]
    assert receiver.receive(packet, 20.0) == []  # the repeats are de-duplicated
    assert receiver.receive(packet, 40.0) == []


def test_sent_keys_are_received_once_each() -> None:
    reports = receive(send("159#"))
    assert [type(r) for r in reports] == [DtmfStarted, DtmfKey] * 4
    assert [(k.digit, k.duration, k.ended_by) for k in keys(reports)] == [
        ("1", 800, "end"),
        ("5", 800, "end"),
        ("9", 800, "end"),
        ("#", 800, "end"),
    ]


def test_lost_end_packets_are_reported_when_the_next_key_starts() -> None:
    packets = [p for p in send("12") if not (TelephoneEvent.parse(p.payload).end and p.payload[0] == 1)]
    reported = keys(receive(packets))
    assert [(k.digit, k.duration, k.ended_by) for k in reported] == [
        ("1", 640, "new_event"),
        ("2", 800, "end"),
    ]


def test_lost_end_packets_are_reported_on_timeout() -> None:
    packets = [p for p in send("7") if not TelephoneEvent.parse(p.payload).end]
    receiver = TelephoneEventReceiver(timeout_ms=250)
    reports = receive(packets, receiver)
    assert keys(reports) == []
    assert receiver.active
    last = 20.0 * (len(packets) - 1)
    assert receiver.poll(last + 100) == []
    (key,) = receiver.poll(last + 250)
    assert (key.digit, key.duration, key.ended_by) == ("7", 640, "timeout")
    assert not receiver.active and receiver.poll(last + 1000) == []
    # an end packet that turns up afterwards does not report the key again
    end = RtpPacket(
        PT, 9, packets[0].timestamp, packets[0].ssrc, TelephoneEvent(7, True, 10, 800).serialize()
    )
    assert receiver.receive(end, last + 1100) == []


def test_only_the_end_packets_arrive() -> None:
    packets = [p for p in send("3") if TelephoneEvent.parse(p.payload).end]
    reports = receive(packets)
    assert [type(r) for r in reports] == [DtmfStarted, DtmfKey]
    assert keys(reports)[0].duration == 800


def test_a_late_packet_of_an_older_event_is_ignored() -> None:
    packets = send("45")
    first_update = packets[1]
    reports = receive([*packets, first_update])
    assert [k.digit for k in keys(reports)] == ["4", "5"]


def test_new_ssrc_starts_a_new_key() -> None:
    a = RtpPacket(PT, 1, 100, 1, TelephoneEvent(1, False, 10, 160).serialize())
    b = RtpPacket(PT, 1, 100, 2, TelephoneEvent(2, True, 10, 320).serialize())
    reports = receive([a, b])
    assert [(k.digit, k.ssrc, k.ended_by) for k in keys(reports)] == [("1", 1, "new_event"), ("2", 2, "end")]


def test_flash_is_reported_without_a_digit() -> None:
    packet = RtpPacket(PT, 1, 100, 1, TelephoneEvent(16, True, 0, 1600).serialize())
    (_, key) = TelephoneEventReceiver().receive(packet, 0.0)
    assert isinstance(key, DtmfKey) and key.event == 16 and key.digit is None


def test_garbage_payload_is_a_documented_error() -> None:
    with pytest.raises(RtpParseError):
        TelephoneEventReceiver().receive(RtpPacket(PT, 1, 1, 1, b"\x01"), 0.0)


@settings(max_examples=150, deadline=None)
@given(
    digits=st.text(alphabet=EVENT_DIGITS, min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0, 0.6),
)
def test_loss_duplication_and_local_reordering(digits: str, seed: int, loss: float) -> None:
    """Each key is reported exactly once, in order, if at least one of its packets arrives."""
    rng = random.Random(seed)
    by_event: list[list[RtpPacket]] = []
    for packet in send(digits):
        if packet.marker:
            by_event.append([])
        by_event[-1].append(packet)
    received: list[RtpPacket] = []
    for group in by_event:
        kept = [p for p in group if rng.random() >= loss] or [rng.choice(group)]
        kept += [p for p in kept if rng.random() < 0.3]  # duplicates
        for i in range(len(kept) - 1):  # swaps of neighbours within the key
            if rng.random() < 0.3:
                kept[i], kept[i + 1] = kept[i + 1], kept[i]
        received += kept
    receiver = TelephoneEventReceiver()
    reports = receive(received, receiver)
    reports += receiver.poll(1e9)
    assert "".join(k.digit or "?" for k in keys(reports)) == digits
    assert sum(1 for r in reports if isinstance(r, DtmfStarted)) == len(digits)
