"""The playout clock from mark echoes (bridges/twilio/marks.py; protocols.md §C.2, §E.2, §E.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridges.twilio.marks import MarkClock, MarkEcho, mark_item

FRAME = 160  # 20 ms of µ-law


def _send_frames(clock: MarkClock, item: str, count: int, now: int, *, start_ms: int = 0) -> list[str]:
    return [clock.sent(FRAME, now, item, start_ms + 20 * (k + 1)) for k in range(count)]


def test_mark_names_are_unique_and_carry_the_item() -> None:
    clock = MarkClock()
    names = _send_frames(clock, "item_a", 3, 0)
    assert names == ["1:item_a:20", "2:item_a:40", "3:item_a:60"]
    assert clock.sent(FRAME, 0) == "4"  # not agent audio (DTMF tones)
    assert clock.sent_ms == 80
    assert clock.outstanding == 4


def test_echo_reports_item_position_and_acknowledges() -> None:
    clock = MarkClock()
    names = _send_frames(clock, "item_a", 5, 1000)
    echo = clock.echoed(names[1], 1045)
    assert echo == MarkEcho(names[1], "item_a", 40, played=True, position_ms=40)
    assert clock.acked_ms == 40
    assert clock.outstanding == 3
    assert clock.echoed(names[1], 1046) is None  # already echoed
    assert clock.echoed("not-ours", 1046) is None


def test_echo_of_a_later_mark_acknowledges_the_earlier_ones() -> None:
    clock = MarkClock()
    names = _send_frames(clock, "item_a", 4, 0)
    echo = clock.echoed(names[2], 70)
    assert echo is not None and echo.item_ms == 60
    assert clock.outstanding == 1
    assert clock.echoed(names[0], 71) is None


def test_played_is_acked_plus_elapsed_capped_at_sent() -> None:
    clock = MarkClock()
    names = _send_frames(clock, "item_a", 10, 0)  # 200 ms queued at t=0
    assert clock.played_ms(0) == 0
    assert clock.played_ms(15) == 15  # nothing echoed yet: elapsed since the first chunk was sent
    clock.echoed(names[1], 50)  # 40 ms confirmed at t=50 (network delay)
    assert clock.played_ms(50) == 40
    assert clock.played_ms(65) == 55
    assert clock.played_ms(10_000) == 200  # never more than was sent
    assert clock.remaining_ms(65) == 145


def test_after_an_underrun_elapsed_counts_from_the_send() -> None:
    clock = MarkClock()
    first = clock.sent(FRAME, 0, "item_a", 20)
    clock.echoed(first, 25)  # played through at t=25
    clock.sent(FRAME, 500, "item_a", 40)  # the next frame only left us at t=500
    assert clock.played_ms(500) == 20
    assert clock.played_ms(510) == 30  # not 20 + (510 - 25)
    assert clock.played_ms(600) == 40


def test_everything_echoed_means_played_equals_sent() -> None:
    clock = MarkClock()
    names = _send_frames(clock, "item_a", 3, 0)
    clock.echoed(names[-1], 80)
    assert clock.outstanding == 0
    assert clock.played_ms(10_000) == clock.sent_ms == 60


def test_clear_freezes_position_and_flushed_marks_report_not_played() -> None:
    clock = MarkClock()
    names = _send_frames(clock, "item_a", 50, 0)  # 1 s queued
    clock.echoed(names[9], 205)  # 200 ms played
    played = clock.cleared(230)
    assert played == 225
    assert clock.sent_ms == 225
    assert clock.outstanding == 0
    assert clock.awaiting_clear_echoes == 40
    assert clock.played_ms(5000) == 225
    echo = clock.echoed(names[10], 232)
    assert echo == MarkEcho(names[10], "item_a", 220, played=False, position_ms=225)
    assert clock.awaiting_clear_echoes == 39
    # The timeline continues after the clear.
    nxt = clock.sent(FRAME, 300, "item_b", 20)
    assert clock.sent_ms == 245
    assert clock.played_ms(310) == 235
    echo = clock.echoed(nxt, 330)
    assert echo is not None and echo.played and echo.item_id == "item_b" and echo.position_ms == 245


def test_position_interpolates_inside_the_item() -> None:
    clock = MarkClock()
    names = _send_frames(clock, "item_a", 3, 0)
    clock.sent(FRAME, 0)  # a DTMF chunk between items
    _send_frames(clock, "item_b", 2, 0)
    assert clock.position(0) == ("item_a", 0)
    assert clock.position(30) == ("item_a", 30)
    clock.echoed(names[2], 60)
    assert clock.position(60) == ("item_a", 60)
    assert clock.position(75) == ("item_a", 60)  # inside the DTMF chunk: the last item heard
    assert clock.position(95) == ("item_b", 15)
    assert clock.position(1000) == ("item_b", 40)


def test_position_before_anything_and_after_clear() -> None:
    clock = MarkClock()
    assert clock.position(0) is None
    _send_frames(clock, "item_a", 5, 0)
    clock.cleared(50)
    assert clock.position(60) == ("item_a", 50)


def test_item_positions_follow_item_ms_with_padding() -> None:
    clock = MarkClock()
    clock.sent(FRAME, 0, "item_a", 20)
    last = clock.sent(FRAME, 0, "item_a", 25)  # a padded final frame: 5 ms of real audio
    assert clock.sent_ms == 40  # it still takes 20 ms to play
    echo = clock.echoed(last, 50)
    assert echo is not None and echo.item_ms == 25


def test_odd_byte_counts_carry_over() -> None:
    clock = MarkClock()
    clock.sent(4, 0)
    clock.sent(4, 0)
    assert clock.sent_ms == 1
    with pytest.raises(ValueError):
        clock.sent(-1, 0)
    with pytest.raises(ValueError):
        MarkClock(bytes_per_ms=0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["send", "echo", "tick", "clear"]), st.integers(0, 400), st.integers(1, 60)
        ),
        max_size=60,
    )
)
def test_played_stays_between_acknowledged_and_sent(ops: list[tuple[str, int, int]]) -> None:
    clock = MarkClock()
    now = 0
    names: list[str] = []
    for op, size, step in ops:
        now += step
        if op == "send":
            names.append(clock.sent(size, now, "item", None))
        elif op == "echo" and names:
            clock.echoed(names[size % len(names)], now)
        elif op == "clear":
            before = clock.played_ms(now)
            assert clock.cleared(now) == before
        played = clock.played_ms(now)
        assert clock.acked_ms <= played <= clock.sent_ms
        assert clock.played_ms(now + 1_000_000) == clock.sent_ms  # given time, everything sent plays


def test_unmarked_chunks_are_acknowledged_by_a_later_mark_and_interpolated() -> None:
    clock = MarkClock()
    names = [clock.sent(FRAME, 1000 + 20 * k, "item_a", 20 * (k + 1), mark=k == 4) for k in range(7)]
    assert clock.outstanding == 1  # only the fifth frame's mark went out
    echo = clock.echoed(names[4], 1110)
    assert echo == MarkEcho(names[4], "item_a", 100, played=True, position_ms=100)
    assert clock.outstanding == 0
    # Frames 6 and 7 are unmarked: the clock runs on from the echo, capped at what was sent.
    assert clock.position(1130) == ("item_a", 120)
    assert clock.position(1500) == ("item_a", 140)


def test_mark_last_marks_the_newest_chunk_once() -> None:
    clock = MarkClock()
    assert clock.mark_last() is None  # nothing sent
    clock.sent(FRAME, 0, "item_a", 20, mark=False)
    last = clock.sent(FRAME, 0, "item_a", 40, mark=False)
    assert clock.mark_last() == last
    assert clock.mark_last() is None  # already marked
    assert clock.outstanding == 1
    echo = clock.echoed(last, 60)
    assert echo is not None and echo.item_ms == 40 and clock.outstanding == 0


def test_clear_waits_only_for_the_marks_that_were_sent() -> None:
    clock = MarkClock()
    names = [clock.sent(FRAME, 0, "item_a", 20 * (k + 1), mark=k % 5 == 4) for k in range(12)]
    clock.cleared(30)
    assert clock.awaiting_clear_echoes == 2  # frames 5 and 10 carried marks; the rest go unwaited for
    assert clock.echoed(names[4], 31) == MarkEcho(names[4], "item_a", 100, played=False, position_ms=30)
    assert clock.echoed(names[9], 31) is not None and clock.awaiting_clear_echoes == 0
    assert clock.echoed(names[11], 31) is None  # never marked, never expected


def test_mark_item_reads_the_item_back_out_of_a_marks_name() -> None:
    clock = MarkClock(prefix="m")
    agent = clock.sent(800, 0, "item_abc", 100)
    tones = clock.sent(800, 100)  # DTMF tones: no item
    assert mark_item(agent) == "item_abc"
    assert mark_item(tones) is None
    assert mark_item("something else") is None
