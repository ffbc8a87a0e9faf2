"""The process-wide 20 ms frame pacer (DESIGN.md "Adapters": they own time).

Agent audio arrives from the upstream faster than real time (protocols.md §A.3) and must leave towards each
caller at exactly one 20 ms frame per 20 ms. Rather than one timer per call, ONE event-loop timer ticks every
``frame_ms`` for the whole process and calls each registered call's ``tick``: with a hundred calls that is
one wake-up per frame period instead of a hundred, and every call sees the same clock.

Deadlines are absolute (multiples of ``frame_ms`` on a monotonic clock, see :func:`next_on_grid`), so
lateness never accumulates into drift. When the loop stalls (a garbage collection, a slow callback) the
pacer catches up by ticking immediately, up to :attr:`FramePacer.max_catch_up` ticks; past that it drops the
missed ticks and resumes on the grid (a burst of seconds of audio would only overflow the callers' buffers).

The tick is the loop's own timer callback, not a task: it runs in the loop pass its deadline falls in, where
a task woken by a timer would wait for the next pass and its I/O as well. asyncio's loop runs it after that
pass's I/O callbacks; the service's loop (:mod:`voice.eventloop`) before them, or, when the deadline falls
in the middle of a long pass, after the few callbacks that are running then.

Lateness (wake-up time minus deadline) of every tick is recorded in
:data:`voice.metrics.FRAME_LATENESS`; ticks more than :data:`voice.metrics.LATE_THRESHOLD_MS` late count in
:data:`voice.metrics.FRAMES_LATE`. The last lateness values are also kept in
:attr:`FramePacer.recent_lateness_ms` for benchmarks.

A ``tick`` is ``tick(now_ms) -> None`` or ``tick(now_ms) -> Awaitable[None]``; ``now_ms`` is the tick's
deadline on the pacer clock (:meth:`FramePacer.now_ms`). A synchronous tick is the fast path (the call
runner's tick is synchronous and hands I/O to its own tasks). An awaitable is run as a task; while one call's
previous tick task is still running, that call's next ticks are skipped (counted in
:attr:`FramePacer.overruns`) so a slow call never delays the others. An exception in a tick is logged with
the call id and never stops the pacer.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from voice import metrics
from voice.logs import get_logger

__all__ = ["FramePacer", "TickFn", "next_on_grid"]

TickFn = Callable[[int], Awaitable[None] | None]
"""A registered call's tick: called with the tick's deadline in ms on the pacer clock."""

_LATENESS_KEEP: Final = 20_000


def next_on_grid(now: float, period: float, offset: float = 0.0) -> float:
    """The first time after ``now`` on the grid ``offset + k * period`` (seconds, any clock).

    The pacer ticks on the grid of its period with offset 0 on the monotonic clock, the clock of asyncio's
    loop. Other periodic work of the process (the SIP receive clock) places itself on the same grid with
    an offset, so it never falls just before a tick and delays it.
    """
    return (int((now - offset) // period) + 1) * period + offset


class FramePacer:
    """One event-loop timer ticking every ``frame_ms`` on absolute deadlines, calling each call's tick.

    ``clock`` is a monotonic clock in seconds (default :func:`time.monotonic`, the same clock as asyncio's
    default loop); ``late_threshold_ms`` is the lateness that counts as a late frame.
    """

    def __init__(
        self,
        frame_ms: int = 20,
        *,
        clock: Callable[[], float] = time.monotonic,
        late_threshold_ms: float = metrics.LATE_THRESHOLD_MS,
        max_catch_up: int = 5,
    ) -> None:
        if frame_ms <= 0:
            raise ValueError(f"frame_ms must be positive, got {frame_ms}")
        self.frame_ms = frame_ms
        self.late_threshold_ms = late_threshold_ms
        self.max_catch_up = max_catch_up
        self._clock = clock
        self._ticks: dict[str, TickFn] = {}
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.Handle | None = None
        self._deadline = 0.0
        self._log = get_logger(component="pacer")
        self.ticks = 0
        """Ticks run since start."""
        self.late_ticks = 0
        """Ticks later than ``late_threshold_ms``."""
        self.skipped_ticks = 0
        """Ticks dropped after a stall longer than ``max_catch_up`` frames."""
        self.overruns = 0
        """Call ticks skipped because that call's previous (awaitable) tick was still running."""
        self.recent_lateness_ms: deque[float] = deque(maxlen=_LATENESS_KEEP)
        """Lateness of the most recent ticks in ms (for benchmarks and diagnostics)."""

    # -- clock --------------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The pacer clock in whole ms (monotonic; only differences mean anything)."""
        return int(self._clock() * 1000)

    # -- registration -------------------------------------------------------------------------------

    def register(self, call_id: str, tick: TickFn) -> None:
        """Call ``tick`` every frame from the next tick on; a second registration replaces the first."""
        self._ticks[call_id] = tick

    def unregister(self, call_id: str) -> None:
        """Stop ticking ``call_id`` (unknown ids are ignored); a tick task still running is left to finish."""
        self._ticks.pop(call_id, None)

    @property
    def calls(self) -> list[str]:
        """The registered call ids."""
        return list(self._ticks)

    @property
    def running(self) -> bool:
        return self._handle is not None

    # -- life cycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start ticking in the running event loop (idempotent)."""
        if self.running:
            return
        self._loop = asyncio.get_running_loop()
        self._deadline = next_on_grid(self._clock(), self.frame_ms / 1000)
        self._arm()

    async def stop(self) -> None:
        """Stop ticking and wait for any running tick tasks to finish."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()
        pending = list(self._pending.values())
        self._pending.clear()
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> FramePacer:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # -- the loop -----------------------------------------------------------------------------------

    def _arm(self) -> None:
        """Schedule the next tick at ``self._deadline``, or at once when it has passed (catching up: the
        loop still polls its sockets and runs what they made ready before the tick)."""
        loop = self._loop
        assert loop is not None
        delay = self._deadline - self._clock()
        if delay > 0:
            self._handle = loop.call_later(delay, self._fire)
        else:
            self._handle = loop.call_soon(self._fire)

    def _fire(self) -> None:
        """The tick, run straight from the event loop's timer.

        A plain timer callback rather than a task sleeping: a task woken by its timer only gets to run on
        the loop's NEXT pass, after a further poll and every I/O callback that poll made ready. Under load
        that pass is what the lateness is made of; here the tick runs in the pass its deadline falls in
        (module docstring).
        """
        period = self.frame_ms / 1000
        deadline = self._deadline
        now = self._clock()
        behind = now - deadline
        if behind > self.max_catch_up * period:
            missed = int(behind // period)
            self.skipped_ticks += missed
            self._log.warning("pacer.stalled", behind_ms=round(behind * 1000, 1), skipped=missed)
            deadline += missed * period
        self._record(max(0.0, (now - deadline) * 1000))
        try:
            self._tick_all(int(deadline * 1000))
        finally:
            self._deadline = deadline + period
            if self._handle is not None:  # not stopped by a tick
                self._arm()

    def _record(self, late_ms: float) -> None:
        self.ticks += 1
        self.recent_lateness_ms.append(late_ms)
        metrics.FRAME_LATENESS.observe(late_ms / 1000)
        if late_ms > self.late_threshold_ms:
            self.late_ticks += 1
            metrics.FRAMES_LATE.inc()

    def _tick_all(self, now_ms: int) -> None:
        for call_id, tick in list(self._ticks.items()):
            if call_id in self._pending:
                self.overruns += 1
                continue
            try:
                result = tick(now_ms)
            except Exception:
                self._log.exception("pacer.tick_failed", call_id=call_id)
                continue
            if result is not None and inspect.isawaitable(result):
                self._pending[call_id] = asyncio.ensure_future(self._await_tick(call_id, result))

    async def _await_tick(self, call_id: str, result: Awaitable[None]) -> None:
        try:
            await result
        except asyncio.CancelledError:
            raise
        except Exception:
            self._log.exception("pacer.tick_failed", call_id=call_id)
        finally:
            self._pending.pop(call_id, None)
