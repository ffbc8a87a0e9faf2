"""The Twilio leg's playout clock from mark echoes (protocols.md §C.2, §E.2, §E.3). Pure: times come in.

Twilio queues the agent audio we send and plays it at real-time speed; we cannot see that queue, but a
``mark`` sent after a chunk of audio is echoed once everything queued before it has played (§E.2). So:

- every chunk sent is recorded (:meth:`MarkClock.sent` returns its name): its length, its end position on the
  stream's playback timeline and, when it is agent audio, the item and the position in the item at its end
  (``item_ms``, as :meth:`bridges.base.Leg.play` gives it). A chunk may go without a mark of its own
  (``mark=False``): marks cost a message each way, so the leg marks every few frames, and the newest
  unmarked chunk can get its mark later (:meth:`MarkClock.mark_last`, before audio of another item or when
  the audio stops);
- an echo (:meth:`MarkClock.echoed`) means the stream has played through that chunk: the *acknowledged*
  position moves to the chunk's end (earlier chunks still outstanding, marked or not, are acknowledged with
  it: Twilio echoes in order);
- between echoes the audio keeps playing, so the played position is (§C.2) the acknowledged position plus the
  time elapsed since, **capped at what was sent**. The elapsed time counts from the later of the last echo and
  the moment the next chunk was sent, because audio cannot play before it was sent (after an underrun
  Twilio's queue was empty);
- :meth:`MarkClock.cleared` (we sent ``clear``): Twilio drops its queue and echoes the outstanding marks at
  once (§E.3). The played position freezes at its value at the clear, those marks' echoes are reported as
  *not played* (``MarkEcho.played`` is ``False``) and the stream timeline continues from there. Unmarked
  chunks dropped by the clear are forgotten (no echo will come for them).

A mark echoed by Twilio just before it processed our ``clear`` is counted as cleared: the clock then
under-reports by at most one chunk, which keeps truncation on the safe side (never more than was heard, §C.1).

Positions are in ms of audio (µ-law: 8 bytes per ms). Times (``now_ms``) are any monotonic clock in ms.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

__all__ = ["MarkClock", "MarkEcho", "SentChunk", "mark_item"]

_MULAW_BYTES_PER_MS: Final = 8


@dataclass(slots=True)
class SentChunk:
    """One chunk of audio sent with its mark.

    ``start_ms``/``end_ms``: its span on the stream's playback timeline; ``item_id``/``item_start_ms``/
    ``item_ms``: the agent item and its positions at the chunk's start and end (``None`` item: audio that is
    not an agent item, e.g. DTMF tones); ``sent_at_ms``: when it was sent.
    """

    name: str
    start_ms: int
    end_ms: int
    item_id: str | None
    item_start_ms: int
    item_ms: int
    sent_at_ms: int
    marked: bool = True

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


@dataclass(frozen=True, slots=True)
class MarkEcho:
    """What an echoed mark means: ``played`` is ``False`` for a mark flushed by ``clear`` (audio dropped)."""

    name: str
    item_id: str | None
    item_ms: int
    played: bool
    position_ms: int
    """The acknowledged playback position after this echo (stream timeline, ms)."""


class MarkClock:
    """Playout clock of one Media Stream (see the module docstring)."""

    def __init__(self, *, bytes_per_ms: int = _MULAW_BYTES_PER_MS, prefix: str = "") -> None:
        if bytes_per_ms <= 0:
            raise ValueError("bytes_per_ms must be positive")
        self.bytes_per_ms = bytes_per_ms
        self.prefix = prefix
        self._seq = 0
        self._outstanding: OrderedDict[str, SentChunk] = OrderedDict()
        self._cleared: OrderedDict[str, SentChunk] = OrderedDict()
        self._sent_ms = 0
        self._acked_ms = 0
        self._acked_at: int | None = None
        self._last_acked: SentChunk | None = None
        self._item_pos: dict[str, int] = {}
        self._pending_bytes = 0  # sub-millisecond remainder of the bytes sent (carried into the next chunk)

    # Inputs ------------------------------------------------------------------------------------------------

    def sent(
        self,
        nbytes: int,
        now_ms: int,
        item_id: str | None = None,
        item_ms: int | None = None,
        *,
        mark: bool = True,
    ) -> str:
        """Record a chunk of ``nbytes`` just sent; returns its name, the mark to send right after it (with
        ``mark=False`` none is sent for now: see :meth:`mark_last`).

        ``item_id``/``item_ms``: the agent item and the position in it at the end of the chunk (``item_ms``
        defaults to the previous position of the item plus the chunk's length).
        """
        if nbytes < 0:
            raise ValueError(f"a byte count cannot be negative: {nbytes}")
        self._seq += 1
        total = self._pending_bytes + nbytes
        duration, self._pending_bytes = divmod(total, self.bytes_per_ms)
        start = self._sent_ms
        self._sent_ms += duration
        if item_id is None:
            item_start = end_item = 0
        else:
            previous = self._item_pos.get(item_id)
            end_item = item_ms if item_ms is not None else (previous or 0) + duration
            item_start = min(previous, end_item) if previous is not None else max(0, end_item - duration)
            self._item_pos[item_id] = end_item
        name = f"{self.prefix}{self._seq}" + (f":{item_id}:{end_item}" if item_id is not None else "")
        # (mark_item reads the item back out of this name)
        self._outstanding[name] = SentChunk(
            name=name,
            start_ms=start,
            end_ms=self._sent_ms,
            item_id=item_id,
            item_start_ms=item_start,
            item_ms=end_item,
            sent_at_ms=now_ms,
            marked=mark,
        )
        return name

    def mark_last(self) -> str | None:
        """The name of the newest chunk if it has no mark yet, now counted as marked (send the mark right
        away, before any other audio); ``None`` when it has one or nothing is outstanding."""
        if not self._outstanding:
            return None
        name = next(reversed(self._outstanding))
        chunk = self._outstanding[name]
        if chunk.marked:
            return None
        chunk.marked = True  # (one is made for every frame sent: a plain, mutable record)
        return name

    def echoed(self, name: str, now_ms: int) -> MarkEcho | None:
        """Twilio echoed mark ``name``; ``None`` if it is not one of ours (or was already echoed)."""
        chunk = self._cleared.pop(name, None)
        if chunk is not None:
            return MarkEcho(name, chunk.item_id, chunk.item_ms, played=False, position_ms=self._acked_ms)
        if name not in self._outstanding:
            return None
        while True:
            key, chunk = self._outstanding.popitem(last=False)
            if key == name:
                break
        self._acked_ms = chunk.end_ms
        self._acked_at = now_ms
        self._last_acked = chunk
        return MarkEcho(name, chunk.item_id, chunk.item_ms, played=True, position_ms=self._acked_ms)

    def cleared(self, now_ms: int) -> int:
        """We sent ``clear``: freeze the played position (returned) and expect the outstanding echoes."""
        played = self.played_ms(now_ms)
        position = self._position_at(played)
        self._cleared.update((name, chunk) for name, chunk in self._outstanding.items() if chunk.marked)
        self._outstanding.clear()
        self._sent_ms = played
        self._acked_ms = played
        self._acked_at = now_ms
        self._pending_bytes = 0
        if position is not None:
            item_id, item_ms = position
            self._last_acked = SentChunk("", played, played, item_id, item_ms, item_ms, now_ms)
        return played

    # Queries -----------------------------------------------------------------------------------------------

    @property
    def sent_ms(self) -> int:
        """Ms of audio sent on the stream's playback timeline (less what a ``clear`` dropped)."""
        return self._sent_ms

    @property
    def acked_ms(self) -> int:
        """Playback position through the last echoed mark."""
        return self._acked_ms

    @property
    def outstanding(self) -> int:
        """Marks sent and not echoed yet."""
        return sum(1 for chunk in self._outstanding.values() if chunk.marked)

    @property
    def awaiting_clear_echoes(self) -> int:
        """Marks flushed by ``clear`` whose echo has not come back yet."""
        return len(self._cleared)

    def played_ms(self, now_ms: int) -> int:
        """Playback position now: acknowledged + elapsed since (see the module docstring), capped at sent."""
        if not self._outstanding:
            return self._acked_ms
        first = next(iter(self._outstanding.values()))
        since = first.sent_at_ms if self._acked_at is None else max(self._acked_at, first.sent_at_ms)
        elapsed = max(0, now_ms - since)
        return min(self._acked_ms + elapsed, self._sent_ms)

    def remaining_ms(self, now_ms: int) -> int:
        """Audio sent but (by this clock) not yet played."""
        return self._sent_ms - self.played_ms(now_ms)

    def position(self, now_ms: int) -> tuple[str, int] | None:
        """``(item_id, ms heard of it)`` for the agent item playing now (interpolated), or ``None``."""
        return self._position_at(self.played_ms(now_ms))

    def _position_at(self, played: int) -> tuple[str, int] | None:
        for chunk in self._outstanding.values():
            if chunk.start_ms <= played <= chunk.end_ms and chunk.item_id is not None:
                into = played - chunk.start_ms
                return chunk.item_id, min(chunk.item_start_ms + into, chunk.item_ms)
            if chunk.start_ms > played:
                break
        last = self._last_acked
        if last is not None and last.item_id is not None:
            return last.item_id, last.item_ms
        return None


def mark_item(name: str) -> str | None:
    """The agent item of a mark named by :meth:`MarkClock.sent` (``<seq>:<item>:<ms>``); ``None`` for a
    chunk that was not agent audio (DTMF tones) or a name of another shape."""
    parts = name.split(":")
    return parts[1] if len(parts) == 3 else None
