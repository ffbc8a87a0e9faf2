"""The shared 20 ms frame pacer: absolute deadlines, lateness metrics, isolation between calls."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from voice import metrics
from voice.call.pacer import FramePacer, next_on_grid


async def test_ticks_every_frame_on_absolute_deadlines_without_drift() -> None:
    pacer = FramePacer(20)
    stamps: list[int] = []
    pacer.register("a", stamps.append)
    started = time.monotonic()
    async with pacer:
        await asyncio.sleep(1.0)
    elapsed = time.monotonic() - started
    # One tick per 20 ms: about 50 in a second (a tick or two either side for start/stop timing).
    assert abs(len(stamps) - elapsed * 50) <= 2
    steps = {b - a for a, b in itertools.pairwise(stamps)}
    assert steps <= {19, 20, 21}  # deadlines are a 20 ms grid (int ms rounding gives 19/21)
    assert abs(stamps[-1] - stamps[0] - 20 * (len(stamps) - 1)) <= 1  # no drift over the second
    assert pacer.ticks >= len(stamps)
    assert len(pacer.recent_lateness_ms) == pacer.ticks


async def test_lateness_is_recorded_in_the_metrics() -> None:
    before = metrics.FRAME_LATENESS._sum.get()  # type: ignore[attr-defined]
    late_before = metrics.FRAMES_LATE._value.get()  # type: ignore[attr-defined]
    pacer = FramePacer(20)

    def hog(_now: int) -> None:
        time.sleep(0.045)  # a tick that blocks the loop: the next deadline is missed by ~25 ms

    pacer.register("hog", hog)
    async with pacer:
        await asyncio.sleep(0.3)
    assert metrics.FRAME_LATENESS._sum.get() > before  # type: ignore[attr-defined]
    assert metrics.FRAMES_LATE._value.get() > late_before  # type: ignore[attr-defined]
    assert pacer.late_ticks > 0
    assert max(pacer.recent_lateness_ms) > 10


async def test_register_unregister_and_replace() -> None:
    pacer = FramePacer(20)
    a: list[int] = []
    b: list[int] = []
    pacer.register("x", a.append)
    async with pacer:
        await asyncio.sleep(0.1)
        pacer.register("x", b.append)  # replaces
        n_a = len(a)
        await asyncio.sleep(0.1)
        assert len(a) == n_a
        assert b
        pacer.unregister("x")
        pacer.unregister("unknown")
        n_b = len(b)
        await asyncio.sleep(0.1)
        assert len(b) == n_b
        assert pacer.calls == []


async def test_a_failing_tick_does_not_stop_the_pacer_or_other_calls() -> None:
    pacer = FramePacer(20)
    good: list[int] = []

    def bad(_now: int) -> None:
        raise RuntimeError("boom")

    pacer.register("bad", bad)
    pacer.register("good", good.append)
    async with pacer:
        await asyncio.sleep(0.2)
    assert len(good) >= 8


async def test_a_slow_awaitable_tick_is_skipped_not_waited_for() -> None:
    pacer = FramePacer(20)
    fast: list[int] = []
    slow_runs: list[int] = []

    async def slow(now: int) -> None:
        slow_runs.append(now)
        await asyncio.sleep(0.1)

    pacer.register("slow", slow)
    pacer.register("fast", fast.append)
    async with pacer:
        await asyncio.sleep(0.4)
    assert len(fast) >= 17  # the fast call kept its 20 ms cadence
    assert 2 <= len(slow_runs) <= 5  # the slow one ran about every 100 ms
    assert pacer.overruns > 0


async def test_stall_longer_than_catch_up_skips_missed_ticks() -> None:
    pacer = FramePacer(20, max_catch_up=3)
    stamps: list[int] = []
    pacer.register("a", stamps.append)
    async with pacer:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # noqa: ASYNC251 - the whole loop stalls for 15 frames, on purpose
        await asyncio.sleep(0.1)
    assert pacer.skipped_ticks >= 10


async def test_start_is_idempotent_and_stop_without_start_is_fine() -> None:
    pacer = FramePacer()
    await pacer.stop()
    pacer.start()
    pacer.start()
    assert pacer.running
    await pacer.stop()
    assert not pacer.running


async def test_ticks_run_straight_from_the_loop_on_the_frame_grid() -> None:
    # A tick runs as the loop's own timer callback, not in a task (a task woken by a timer runs one loop
    # pass later, after another poll's I/O), and deadlines are multiples of frame_ms on the clock.
    pacer = FramePacer(20)
    seen: list[tuple[int, asyncio.Task[object] | None]] = []
    pacer.register("a", lambda now: seen.append((now, asyncio.current_task())))
    async with pacer:
        await asyncio.sleep(0.15)
    assert len(seen) >= 5
    assert all(task is None for _, task in seen)
    assert all(now % 20 in (0, 19) for now, _ in seen)  # int ms of k * 0.02 s: 0, or 19 from float rounding


async def test_stop_from_inside_a_tick_stops_ticking() -> None:
    pacer = FramePacer(20)
    stamps: list[int] = []
    stopping: list[asyncio.Task[None]] = []

    def tick(now: int) -> None:
        stamps.append(now)
        if len(stamps) == 2:
            stopping.append(asyncio.ensure_future(pacer.stop()))

    pacer.register("a", tick)
    pacer.start()
    await asyncio.sleep(0.15)
    await asyncio.gather(*stopping)
    assert len(stamps) == 2 and not pacer.running


@pytest.mark.parametrize(
    ("now", "period", "offset", "expected"),
    [
        (0.0, 0.02, 0.0, 0.02),
        (0.031, 0.02, 0.0, 0.04),
        (0.04, 0.02, 0.0, 0.06),
        (1.0031, 0.005, 0.0002, 1.0052),
    ],
)
def test_next_on_grid_is_the_first_grid_point_after_now(
    now: float, period: float, offset: float, expected: float
) -> None:
    assert next_on_grid(now, period, offset) == pytest.approx(expected)


def test_frame_ms_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FramePacer(0)
