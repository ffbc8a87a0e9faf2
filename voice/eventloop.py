"""The service's event loop: asyncio's selector loop, with the timers that are due run before the I/O.

Each pass of asyncio's loop polls the sockets, queues a callback for every one that is ready, then queues the
timers whose time has come, and runs the lot in that order. The frame pacer is a timer
(:mod:`voice.call.pacer`): at 200 calls a pass holds a few hundred socket callbacks, and the tick waited for
all of those that arrived while the pass before ran. :class:`TimersFirstLoop` queues the due timers first,
as libuv does (its timer phase comes before its poll phase), so a tick waits at most for the pass already
running when its deadline falls. Nothing else changes: every callback still runs once, in the same pass.

It reaches into the selector loop's internals (``_scheduled``, ``_ready``, ``_process_events``), which have
kept their shape since Python 3.7; where they are missing :func:`loop_factory` gives the plain loop.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Any

__all__ = ["TimersFirstLoop", "loop_factory"]


class TimersFirstLoop(asyncio.SelectorEventLoop):
    """A selector event loop that runs due timers before the I/O callbacks of the same pass."""

    _scheduled: list[asyncio.TimerHandle]
    _ready: Any  # collections.deque[asyncio.Handle]
    _clock_resolution: float

    def _process_events(self, event_list: list[Any]) -> None:
        end = self.time() + self._clock_resolution  # what the base loop counts as due in this pass
        scheduled = self._scheduled
        while scheduled and scheduled[0].when() < end:
            handle = heapq.heappop(scheduled)
            handle._scheduled = False  # type: ignore[attr-defined]
            self._ready.append(handle)
        super()._process_events(event_list)  # type: ignore[misc]


def _supported() -> bool:
    loop = asyncio.SelectorEventLoop()
    try:
        return (
            isinstance(getattr(loop, "_scheduled", None), list)
            and hasattr(loop, "_ready")
            and isinstance(getattr(loop, "_clock_resolution", None), float)
            and callable(getattr(loop, "_process_events", None))
        )
    finally:
        loop.close()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """What :class:`asyncio.Runner` should make the service's loop with."""
    return TimersFirstLoop if _supported() else asyncio.SelectorEventLoop
