"""Garbage collection for processes that pace audio in real time (the service and the local engine)."""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc(gen0: int = 50_000, gen1: int = 20, gen2: int = 100) -> None:
    """Make garbage collection pauses rare and short for a process that paces audio (call once, after
    start-up and warm-up).

    A full (generation 2) collection walks every tracked object; in a service process that is some 200 000
    objects from the imported libraries alone, a 20-100 ms pause that stalls every call's pacing at once.
    :func:`gc.freeze` moves everything alive now to a permanent generation that collections skip, and higher
    thresholds make collections of the (smaller) rest rarer. Cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0, gen1, gen2)
