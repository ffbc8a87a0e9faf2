"""The call's playout queue and playout clock (DESIGN.md "The leg contract", protocols.md §A.3, §C).

The upstream produces agent audio faster than real time (``response.output_audio.delta``, §A.3), so the call
buffers it per assistant item and hands the leg one 20 ms frame per pacer tick. For every item it keeps:

- ``received``: bytes the upstream has sent us (the server's audio is at least that long);
- ``sent``: bytes of real audio handed to the leg (padding excluded);
- ``reported``: the leg's own playout clock (:class:`bridges.base.PlaybackReport`), when it has one.

*Heard* (what truncation and transcripts use, §C.1) is ``min(reported, sent)`` on a leg that reports playback
and ``sent`` on one that does not. It never exceeds ``sent``, which never exceeds ``received``, so a
``conversation.item.truncate`` built from it cannot ask for more audio than the server has (§C.1: that is an
error).

Items play strictly in the order their first audio arrived, and truncation names the item actually playing,
not the most recently received one (§C.2 pitfall: a short preamble item queued ahead of the answer).

Final partial frame: when an item's audio ends with less than 20 ms left (``output_audio.done`` or
``response.done`` seen), the remainder is **padded with codec silence to a full frame**, because RTP and
Twilio expect constant 20 ms frames. Padding is not counted in ``sent``/``item_ms``. While more audio may
still come, a short remainder waits (an underrun plays nothing rather than a fragment).

Item life cycle: ``queued`` (audio received, nothing sent) -> ``sending`` -> ``sent`` (all audio handed to
the leg, waiting for the leg to confirm it was heard) -> closed. Without playback reports an item closes as
soon as it is fully sent. With reports it closes when the report reaches the end, when a later item is
reported playing, or ``grace_ms`` after its last frame (a leg that lost a report must not hold the call).
Closed items and interrupted responses are remembered so that late deltas for them are dropped.

Pure: no clock reads; every time is the call clock ``now_ms`` passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from bridges.base import AudioCodec, bytes_per_ms, frame_bytes, silence_frame

ItemState = Literal["queued", "sending", "sent"]


@dataclass(slots=True)
class _Item:
    item_id: str
    response_id: str
    content_index: int
    pending: bytearray
    received: int = 0
    sent: int = 0
    reported_ms: int = 0
    audio_done: bool = False
    state: ItemState = "queued"
    started_ms: int | None = None
    last_frame_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Frame:
    """One 20 ms frame for the leg: ``item_ms`` is the item position at the end of the frame (real audio)."""

    audio: bytes
    item_id: str
    item_ms: int
    padded: bool


@dataclass(frozen=True, slots=True)
class PlayedItem:
    """An item leaving the playout: fully played, or cut short by :meth:`Playout.interrupt`.

    ``heard_ms`` is what the caller heard, ``sent_ms`` what the leg was given, ``received_ms`` what the
    upstream generated so far, ``started_ms`` the call time of its first frame (``None``: never played).
    """

    item_id: str
    response_id: str
    content_index: int
    heard_ms: int
    sent_ms: int
    received_ms: int
    started_ms: int | None
    interrupted: bool


class Playout:
    """Per-item agent audio queue, paced frames and the playout clock (see the module docstring)."""

    def __init__(self, codec: AudioCodec, *, reports_playback: bool, grace_ms: int = 1000) -> None:
        self.codec: AudioCodec = codec
        self.reports_playback = reports_playback
        self.grace_ms = grace_ms
        self.paused = False
        self._bpm = bytes_per_ms(codec)
        self._frame = frame_bytes(codec)
        self._silence = silence_frame(codec)
        self._items: dict[str, _Item] = {}  # live items in arrival order (dicts keep insertion order)
        self._closed: set[str] = set()
        self._dropped_responses: set[str] = set()

    # Inputs ---------------------------------------------------------------------------------------------

    def add_audio(self, item_id: str, response_id: str, content_index: int, audio: bytes) -> bool:
        """Queue upstream audio for ``item_id``; ``False`` (dropped) if the item or its response was cut."""
        if item_id in self._closed or response_id in self._dropped_responses:
            return False
        item = self._items.get(item_id)
        if item is None:
            item = _Item(item_id, response_id, content_index, bytearray())
            self._items[item_id] = item
        elif item.audio_done:
            return False  # audio after output_audio.done: the item is final
        item.pending += audio
        item.received += len(audio)
        return True

    def audio_done(self, item_id: str) -> None:
        """``response.output_audio.done`` for the item: no more audio will come."""
        item = self._items.get(item_id)
        if item is not None:
            item.audio_done = True

    def response_done(self, response_id: str) -> None:
        """``response.done``: every item of the response is final (also when cancelled or failed)."""
        for item in self._items.values():
            if item.response_id == response_id:
                item.audio_done = True

    def drop_responses(self, response_ids: Iterable[str]) -> None:
        """Drop any later audio of these responses (they are being cancelled)."""
        self._dropped_responses.update(response_ids)

    def report(self, item_id: str, played_ms: int) -> list[PlayedItem]:
        """The leg's playout clock for ``item_id``; returns the items this closes (played to the end)."""
        item = self._items.get(item_id)
        if item is None or played_ms < 0:
            return []
        item.reported_ms = max(item.reported_ms, played_ms)
        done: list[PlayedItem] = []
        for other in list(self._items.values()):
            if other is item:
                break
            if other.state == "sent":  # a later item is playing, so this one was heard to the end
                done.append(self._close(other, self._sent_ms(other), interrupted=False))
        if item.state == "sent" and item.reported_ms >= self._sent_ms(item):
            done.append(self._close(item, self._sent_ms(item), interrupted=False))
        return done

    # Pacing ---------------------------------------------------------------------------------------------

    def next_frame(self, now_ms: int) -> tuple[Frame | None, list[PlayedItem]]:
        """The frame to play at this tick (``None``: paused, underrun or nothing queued) and closed items."""
        closed: list[PlayedItem] = []
        if self.paused:
            return None, closed
        for item in list(self._items.values()):
            if item.state == "sent":
                continue
            if len(item.pending) >= self._frame or (item.audio_done and item.pending):
                return self._take_frame(item, now_ms, closed), closed
            if not item.audio_done:
                return None, closed  # underrun: wait for more of this item, keep the order
            # Fully sent and final.
            item.state = "sent"
            if not self.reports_playback:
                closed.append(self._close(item, self._sent_ms(item), interrupted=False))
        return None, closed

    def _take_frame(self, item: _Item, now_ms: int, closed: list[PlayedItem]) -> Frame:
        chunk = bytes(item.pending[: self._frame])
        del item.pending[: self._frame]
        item.sent += len(chunk)
        if item.started_ms is None:
            item.started_ms = now_ms
        item.last_frame_ms = now_ms
        item.state = "sending"
        padded = len(chunk) < self._frame
        if padded:
            chunk += self._silence[len(chunk) :]
        frame = Frame(chunk, item.item_id, self._sent_ms(item), padded)
        if item.audio_done and not item.pending:
            item.state = "sent"
            if not self.reports_playback:
                closed.append(self._close(item, self._sent_ms(item), interrupted=False))
        return frame

    def expire(self, now_ms: int) -> list[PlayedItem]:
        """Close fully sent items whose end the leg never reported within ``grace_ms``."""
        done: list[PlayedItem] = []
        for item in list(self._items.values()):
            last = item.last_frame_ms
            if item.state == "sent" and (last is None or now_ms - last >= self.grace_ms):
                done.append(self._close(item, self._sent_ms(item), interrupted=False))
        return done

    def interrupt(self) -> list[PlayedItem]:
        """Barge-in: drop everything queued and return every live item with what was heard of it.

        The first returned item with ``started_ms`` set is the one that was actually playing. Their
        responses are marked dropped so that late deltas do not start playing again.
        """
        cut = [
            self._close(item, self.heard_ms(item.item_id), interrupted=True)
            for item in list(self._items.values())
        ]
        self._dropped_responses.update(p.response_id for p in cut)
        self.paused = False
        return cut

    # Queries --------------------------------------------------------------------------------------------

    @property
    def speaking(self) -> bool:
        """Agent audio is playing or queued (including audio sent but not yet confirmed heard)."""
        return bool(self._items)

    @property
    def has_audio_to_play(self) -> bool:
        """Some live item still has audio to hand to the leg (or may get more)."""
        for item in self._items.values():  # noqa: SIM110 - asked for every caller frame: no generator
            if item.state != "sent":
                return True
        return False

    @property
    def drained(self) -> bool:
        """Nothing queued, nothing playing, nothing waiting for the leg's report."""
        return not self._items

    def playing_item(self) -> str | None:
        """The item the caller is hearing now: the oldest live item that has started playing."""
        for item in self._items.values():
            if item.started_ms is not None:
                return item.item_id
        return None

    def heard_ms(self, item_id: str) -> int:
        """Ms of ``item_id`` heard: the leg's report capped at what was sent, else what was sent."""
        item = self._items.get(item_id)
        if item is None:
            return 0
        sent_ms = self._sent_ms(item)
        return min(item.reported_ms, sent_ms) if self.reports_playback else sent_ms

    def sent_ms(self, item_id: str) -> int:
        item = self._items.get(item_id)
        return 0 if item is None else self._sent_ms(item)

    def is_closed(self, item_id: str) -> bool:
        return item_id in self._closed

    def knows(self, item_id: str) -> bool:
        """The item has (or had) audio in the playout."""
        return item_id in self._items or item_id in self._closed

    # Internals ------------------------------------------------------------------------------------------

    def _sent_ms(self, item: _Item) -> int:
        return item.sent // self._bpm

    def _close(self, item: _Item, heard_ms: int, *, interrupted: bool) -> PlayedItem:
        self._items.pop(item.item_id, None)
        self._closed.add(item.item_id)
        return PlayedItem(
            item_id=item.item_id,
            response_id=item.response_id,
            content_index=item.content_index,
            heard_ms=heard_ms,
            sent_ms=self._sent_ms(item),
            received_ms=item.received // self._bpm,
            started_ms=item.started_ms,
            interrupted=interrupted,
        )
