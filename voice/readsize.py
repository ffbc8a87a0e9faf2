"""How much an asyncio socket transport asks the kernel for per read.

asyncio's selector transports read with ``sock.recv(max_size)`` / ``sock.recvfrom(max_size)``, and
``max_size`` is 256 KiB. CPython allocates the whole ``bytes`` object before the call and shrinks it after.
Whether that is cheap depends on the process's history: glibc serves an allocation over its ``mmap``
threshold (128 KiB at start) with ``mmap``, and raises the threshold only once a larger mapped block has
been freed (numpy arrays do that). Until then every read costs an ``mmap``, an ``mremap``, a ``munmap`` and
a page fault: measured on the 2-core machine, 13-21 µs for a 420-byte message, against 1.1 µs after the
threshold has moved or with a 64 KiB read. A call reads a message or a packet every 20 ms each way.

:func:`small_reads` sets 64 KiB on one transport, so a read costs the same in any process: still the
largest UDP datagram (nothing is truncated), and a TCP stream is only read in more steps. Transports of
other event loops (uvloop, proactor) have no ``max_size`` and are left alone.
"""

from __future__ import annotations

import asyncio
from typing import Final

__all__ = ["READ_SIZE", "small_reads"]

READ_SIZE: Final = 65536
"""Bytes per read: at least the largest UDP datagram (65 535), below glibc's ``mmap`` threshold (128 KiB)."""


def small_reads(transport: asyncio.BaseTransport | None) -> None:
    """Make ``transport`` read at most :data:`READ_SIZE` bytes at a time (see the module docstring)."""
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = READ_SIZE  # type: ignore[attr-defined]
