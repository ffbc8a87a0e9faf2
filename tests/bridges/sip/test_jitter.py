"""Receive jitter buffer (bridges/sip/jitter.py): order, loss, lateness, wraparound, pauses, depth."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.sip.jitter import JitterBuffer, JitterFrame
from bridges.sip.rtp import RtpPacket, uint16_add, uint32_add
from voice.errors import LocalProtocolError

SSRC = 0x5EED


def audio(seq: int, ts: int, *, ssrc: int = SSRC, marker: bool = False) -> RtpPacket:
    """A 20 ms PCMU packet whose payload names its sequence number."""
    return RtpPacket(0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, bytes([seq & 0xFF]) * 160, marker=marker)


def stream(first_seq: int, count: int, first_ts: int = 0) -> list[RtpPacket]:
    return [audio(uint16_add(first_seq, i), uint32_add(first_ts, 160 * i)) for i in range(count)]


def run(
    buffer: JitterBuffer, arrivals: list[tuple[float, RtpPacket]], until_ms: float
) -> list[JitterFrame | None]:
    """Push packets at their arrival times and pop every 20 ms (push first at equal times)."""
    pending = sorted(arrivals, key=lambda item: item[0])
    out: list[JitterFrame | None] = []
    now = 0.0
    while now <= until_ms:
        while pending and pending[0][0] <= now:
            arrival, packet = pending.pop(0)
            buffer.push(packet, arrival)
        out.append(buffer.pop(now))
        now += 20
    return out


def played(frames: Sequence[JitterFrame | None]) -> list[int | str]:
    """Sequence numbers of real frames, 'C' for concealed ones; None (idle) and the concealment after
    the last real frame (the stream ended) left out."""
    out: list[int | str] = [("C" if f.concealed else f.sequence_number) for f in frames if f is not None]
    while out and out[-1] == "C":
        out.pop()
    return out


def on_time(
    packets: list[RtpPacket], start: float = 0.0, jitter: list[float] | None = None
) -> list[tuple[float, RtpPacket]]:
    return [(start + 20 * i + (jitter[i] if jitter else 0.0), p) for i, p in enumerate(packets)]


def test_in_order_stream_starts_after_the_target_delay() -> None:
    buffer = JitterBuffer(target_ms=60)
    frames = run(buffer, on_time(stream(100, 10)), 240)
    assert frames[:3] == [None, None, None]  # buffering 60 ms
    assert played(frames) == list(range(100, 110))
    assert buffer.stats.played == 10 and buffer.stats.concealed == 0
    assert frames[3] is not None and frames[3].payload == bytes([100]) * 160


def test_reordering_within_the_target_is_repaired() -> None:
    packets = stream(0, 6)
    order = [packets[0], packets[2], packets[1], packets[3], packets[5], packets[4]]
    arrivals = [(20.0 * i, p) for i, p in enumerate(order)]
    frames = run(JitterBuffer(target_ms=60), arrivals, 200)
    assert played(frames)[:6] == [0, 1, 2, 3, 4, 5]


def test_loss_is_concealed_by_repeat_then_silence() -> None:
    packets = [p for p in stream(0, 8) if p.sequence_number not in (3, 4)]
    buffer = JitterBuffer(target_ms=40)
    frames = [f for f in run(buffer, on_time(packets), 180) if f is not None]
    assert played(frames) == [0, 1, 2, "C", "C", 5, 6, 7]
    repeat, silence = frames[3], frames[4]
    assert repeat.payload == frames[2].payload  # the first concealed frame repeats the last one
    assert silence.payload == b"\xff" * 160  # then µ-law silence
    assert (repeat.sequence_number, repeat.timestamp) == (3, 480)
    assert (silence.sequence_number, silence.timestamp) == (4, 640)
    assert buffer.stats.concealed == 2


def test_a_late_packet_is_dropped_not_played_out_of_time() -> None:
    packets = stream(0, 8)
    arrivals = [(20.0 * i, p) for i, p in enumerate(packets) if i != 3]
    arrivals.append((200.0, packets[3]))  # far too late
    buffer = JitterBuffer(target_ms=40)
    frames = run(buffer, arrivals, 240)
    assert played(frames) == [0, 1, 2, "C", 4, 5, 6, 7]
    assert buffer.stats.late == 1


def test_duplicates_are_dropped() -> None:
    packets = stream(0, 4)
    arrivals = [*on_time(packets), (25.0, packets[1]), (30.0, packets[0])]
    buffer = JitterBuffer(target_ms=40)
    frames = run(buffer, arrivals, 140)
    assert played(frames) == [0, 1, 2, 3]
    assert buffer.stats.duplicates + buffer.stats.late == 2


def test_sequence_and_timestamp_wraparound() -> None:
    packets = stream(65533, 8, first_ts=0xFFFFFE00)
    order = packets[:]
    order[2], order[3] = order[3], order[2]  # reordered right at the wrap
    frames = run(JitterBuffer(target_ms=60), on_time(order), 260)
    assert played(frames) == [65533, 65534, 65535, 0, 1, 2, 3, 4]


def test_rfc4733_packets_in_the_sequence_space_cost_nothing() -> None:
    # Sequence numbers 3-5 went to telephone-event packets; the audio timestamps are contiguous.
    packets = [audio(seq, 160 * i) for i, seq in enumerate([0, 1, 2, 6, 7, 8])]
    buffer = JitterBuffer(target_ms=40)
    assert played(run(buffer, on_time(packets), 140)) == [0, 1, 2, 6, 7, 8]
    assert buffer.stats.concealed == 0


def test_talkspurt_after_silence_suppression_plays_at_once() -> None:
    first = stream(0, 3)
    later = [audio(3, 160 * 50, marker=True), audio(4, 160 * 51)]
    arrivals = [*on_time(first), (100.0, later[0]), (120.0, later[1])]
    frames = run(JitterBuffer(target_ms=40), arrivals, 200)
    assert played(frames)[:2] == [0, 1]
    assert [f for f in played(frames) if f != "C"] == [0, 1, 2, 3, 4]


def test_a_paused_stream_goes_idle_then_rebuffers() -> None:
    buffer = JitterBuffer(target_ms=40, max_concealed=3)
    first = stream(0, 3)
    resumed = stream(3, 3, first_ts=160 * 3)
    arrivals = on_time(first) + on_time(resumed, start=400.0)
    frames = run(buffer, arrivals, 480)
    assert played(frames) == [0, 1, 2, "C", "C", "C", 3, 4, 5]
    assert buffer.stats.rebuffers == 1
    idle = frames.index(None, 5)
    assert all(f is None for f in frames[idle : idle + 5])


def test_new_ssrc_or_a_big_jump_restarts_the_buffer() -> None:
    buffer = JitterBuffer(target_ms=20)
    arrivals = on_time(stream(0, 3)) + [(60.0 + 20 * i, audio(5000 + i, 160 * i, ssrc=7)) for i in range(3)]
    frames = run(buffer, arrivals, 200)
    # the new source flushes what was left of the old one (packet 2) and plays in order
    assert [f for f in played(frames) if f != "C"] == [0, 1, 5000, 5001, 5002]
    assert buffer.stats.resets == 1
    jump = JitterBuffer(target_ms=20)
    arrivals = on_time(stream(0, 3)) + on_time(stream(30000, 3), start=60.0)
    assert [f for f in played(run(jump, arrivals, 200)) if f != "C"] == [0, 1, 30000, 30001, 30002]
    assert jump.stats.resets == 1


def test_overflow_skips_the_oldest_frames() -> None:
    buffer = JitterBuffer(target_ms=60, max_ms=100)
    for packet in stream(0, 10):
        buffer.push(packet, 0.0)
    assert buffer.buffered_ms == 100
    assert buffer.stats.overflow == 5
    frame = buffer.pop(60.0)
    assert frame is not None and frame.sequence_number == 5


def test_adaptive_target_grows_with_jitter() -> None:
    rng = random.Random(7)
    buffer = JitterBuffer(adaptive=True, target_ms=40, min_target_ms=40, max_target_ms=200)
    packets = stream(0, 200)
    jitter = [rng.uniform(0, 80) for _ in packets]
    frames = run(buffer, on_time(packets, jitter=jitter), 4200)
    assert buffer.jitter_ms > 10
    assert buffer.target_ms > 40
    real = [f.sequence_number for f in frames if f is not None and not f.concealed]
    assert real == sorted(real) and len(real) >= 190
    steady = JitterBuffer(adaptive=True, target_ms=100)
    run(steady, on_time(stream(0, 20)), 500)
    assert steady.target_ms == 40  # no jitter: the minimum


def test_adaptive_buffer_catches_up_when_too_deep() -> None:
    buffer = JitterBuffer(adaptive=True, target_ms=40, min_target_ms=40, max_ms=400)
    # a burst: 15 packets at once, then a steady stream
    arrivals = [(0.0, p) for p in stream(0, 15)] + on_time(stream(15, 60, first_ts=160 * 15), start=20.0)
    frames = run(buffer, arrivals, 1400)
    assert buffer.buffered_ms <= buffer.target_ms + 2 * buffer.frame_ms + 20
    real = [f.sequence_number for f in frames if f is not None and not f.concealed]
    assert real == sorted(real)
    assert buffer.stats.overflow > 0


def test_bad_configuration() -> None:
    with pytest.raises(LocalProtocolError):
        JitterBuffer(frame_ms=0)
    with pytest.raises(LocalProtocolError):
        JitterBuffer(target_ms=100, max_ms=100)


@settings(max_examples=100, deadline=None)
@given(
    first=st.integers(0, 65535),
    count=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0, 0.3),
)
def test_output_is_always_in_order_without_repeats(first: int, count: int, seed: int, loss: float) -> None:
    """Whatever the jitter, loss and duplication: real frames come out in sequence order, each once."""
    rng = random.Random(seed)
    packets = stream(first, count)
    arrivals = []
    for i, packet in enumerate(packets):
        if rng.random() < loss:
            continue
        arrivals.append((20.0 * i + rng.uniform(0, 100), packet))
        if rng.random() < 0.1:
            arrivals.append((20.0 * i + rng.uniform(0, 150), packet))
    buffer = JitterBuffer(target_ms=60)
    frames = [f for f in run(buffer, arrivals, 20.0 * count + 400) if f is not None and not f.concealed]
    offsets = [(f.sequence_number - first) & 0xFFFF for f in frames]
    assert offsets == sorted(set(offsets))
    assert all(f.payload == bytes([f.sequence_number & 0xFF]) * 160 for f in frames)


def test_adaptive_underrun_waits_for_the_late_packet() -> None:
    """A 50 ms delay spike: the fixed buffer drops what arrives after its frame was concealed; the
    adaptive one stalls its timeline on the underrun, plays every packet and ends one frame deeper."""
    packets = stream(0, 10)
    arrivals = [(20.0 * i + (50.0 if i >= 4 else 0.0), p) for i, p in enumerate(packets)]
    fixed = JitterBuffer(target_ms=40)
    fixed_real = [f for f in played(run(fixed, arrivals, 300)) if f != "C"]
    assert 4 not in fixed_real and fixed.stats.late >= 1
    adaptive = JitterBuffer(target_ms=40, adaptive=True)
    assert [f for f in played(run(adaptive, arrivals, 300)) if f != "C"] == list(range(10))
    assert adaptive.stats.late == 0
