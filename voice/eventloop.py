"""The service's event loop: asyncio's selector loop, with the timers that are due run before the I/O,
and again between the I/O callbacks of a long pass.

Each pass of asyncio's loop polls the sockets, queues a callback for every one that is ready, then queues the
timers whose time has come, and runs the lot in that order. The frame pacer is a timer
(:mod:`voice.call.pacer`): at 200 calls a pass holds a few hundred socket callbacks, and the tick waited for
all of those that arrived while the pass before ran. :class:`TimersFirstLoop` changes two things:

- it queues the due timers first, as libuv does (its timer phase comes before its poll phase);
- in a pass of more than :attr:`~TimersFirstLoop.check_every` callbacks (socket callbacks, mostly), it runs
  a check after every ``check_every`` of them that runs the timers that have come due meanwhile, there and
  then.

So a tick whose deadline falls in the middle of a long pass waits for at most ``check_every`` callbacks,
not for the rest of the pass. That is what keeps the pacing steady when the machine is slower or busier:
the longer the passes grow, the more a tick used to wait. Nothing else changes: every callback still runs
once, in the same pass and in the same order; a timer runs once, in deadline order, never before it is
due, and not at all once cancelled.

It reaches into the selector loop's internals (``_scheduled``, ``_ready``, ``_process_events``,
``_timer_cancelled_count``), which have kept their shape since Python 3.7; where they are missing
:func:`loop_factory` gives the plain loop.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Any

__all__ = ["TimersFirstLoop", "loop_factory"]


class TimersFirstLoop(asyncio.SelectorEventLoop):
    """A selector event loop that runs due timers before the I/O callbacks of the same pass, and between
    them in a long pass (see the module docstring)."""

    check_every: int = 8
    """Callbacks between two checks for due timers in a long pass."""

    _scheduled: list[asyncio.TimerHandle]
    _ready: Any  # collections.deque[asyncio.Handle]
    _clock_resolution: float
    _timer_cancelled_count: int

    def __init__(self, selector: Any = None) -> None:
        super().__init__(selector)
        self._check = asyncio.Handle(self._run_due_timers, (), self)

    def _pop_due(self, end: float) -> asyncio.TimerHandle | None:
        """Take the next timer due before ``end`` off the heap (dropping cancelled ones); ``None`` if none."""
        scheduled = self._scheduled
        while scheduled and scheduled[0].when() < end:
            handle = heapq.heappop(scheduled)
            handle._scheduled = False  # type: ignore[attr-defined]
            if not handle.cancelled():
                return handle
            self._timer_cancelled_count = max(0, self._timer_cancelled_count - 1)
        return None

    def _process_events(self, event_list: list[Any]) -> None:
        end = self.time() + self._clock_resolution  # what the base loop counts as due in this pass
        while (handle := self._pop_due(end)) is not None:
            self._ready.append(handle)
        super()._process_events(event_list)  # type: ignore[misc]
        ready = self._ready
        every = self.check_every
        if len(ready) > every:
            handles = list(ready)
            ready.clear()
            for start in range(0, len(handles), every):
                ready.extend(handles[start : start + every])
                ready.append(self._check)

    def _run_due_timers(self) -> None:
        """The check between callbacks: run the timers due by now, in deadline order."""
        if not self._scheduled:
            return
        end = self.time() + self._clock_resolution
        while (handle := self._pop_due(end)) is not None:
            handle._run()


def _supported() -> bool:
    loop = asyncio.SelectorEventLoop()
    try:
        return (
            isinstance(getattr(loop, "_scheduled", None), list)
            and hasattr(loop, "_ready")
            and isinstance(getattr(loop, "_clock_resolution", None), float)
            and isinstance(getattr(loop, "_timer_cancelled_count", None), int)
            and callable(getattr(loop, "_process_events", None))
        )
    finally:
        loop.close()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """What :class:`asyncio.Runner` should make the service's loop with."""
    return TimersFirstLoop if _supported() else asyncio.SelectorEventLoop
