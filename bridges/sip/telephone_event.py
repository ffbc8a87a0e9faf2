"""RFC 4733 telephone-events (DTMF over RTP): payload codec, receiver and sender (protocols.md §F.2).

Payload (RFC 4733 §2.3), 4 bytes in network order: ``event`` (8 bits: 0-9, ``*`` 10, ``#`` 11, A-D 12-15,
flash 16), ``E`` (end), ``R`` (reserved), ``volume`` (6 bits, -dBm0), ``duration`` (16 bits, timestamp units
since the event began). Digit 5, E=1, volume 10, duration 800 is ``05 8a 03 20``.

Receiving (§2.5.2): every packet of one event (or one segment of a long one) carries the same RTP timestamp
and a growing duration; the final packet is sent three times. :class:`TelephoneEventReceiver` reports a
:class:`DtmfStarted` on the first packet of a key and exactly one :class:`DtmfKey` with the total duration,
whatever is lost, repeated or reordered:

- on the first packet with E=1; the repeats are dropped (de-duplicated by SSRC, event and start timestamp);
- when a packet with a new timestamp begins while the previous event had no end packet (it was lost);
- on :meth:`~TelephoneEventReceiver.poll` once no packet came for ``timeout_ms`` (a lost end packet);
- long events (§2.5.1.3, §2.5.2.3) arrive as segments: the sender ends a segment at duration 0xFFFF
  without the E bit and goes on with a new timestamp, the old one + 0xFFFF, and a duration counted from
  there. A timestamp a whole number of segments away from a key's (later: its next segment, possibly
  after a lost segment end; earlier: a late packet of a segment before) with the same event and SSRC
  belongs to that key, which is counted once and whose durations add up, even when it was already
  reported (its end came by timeout, and then its next segment turned up);
- a packet of a key older than the one going on, none of whose packets came before (reordered behind the
  next key's first packets), reports that key at once rather than losing it.

Sending (§2.5.1): :class:`TelephoneEventSender` turns digits into packets, one tick per packet interval
(20 ms): a first packet with the marker bit, updates with a growing duration, the final packet with E=1 sent
three times (§2.5.1.4), the RTP timestamp constant for the event. An event longer than 0xFFFF units is cut
into segments (§2.5.1.3): the segment's last packet reports 0xFFFF without the E bit and is sent three
times like any final packet; the next segment has the timestamp where that one ended (+ 0xFFFF), no marker
bit, and durations counted from its own start; only the last segment's final packet has the E bit.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from bridges.sip.rtp import RtpPacket, RtpParseError, RtpSender, ts_diff, uint32_add
from voice.errors import LocalProtocolError

__all__ = [
    "EVENT_DIGITS",
    "FLASH",
    "MAX_DURATION",
    "MAX_SEGMENTS",
    "DtmfKey",
    "DtmfStarted",
    "TelephoneEvent",
    "TelephoneEventReceiver",
    "TelephoneEventReport",
    "TelephoneEventSender",
    "digit_to_event",
    "event_to_digit",
    "segment_index",
]

EVENT_DIGITS: Final = "0123456789*#ABCD"
"""The DTMF keys by event code 0-15 (RFC 4733 §3.2, Table 7)."""
FLASH: Final = 16
MAX_DURATION: Final = 0xFFFF


def digit_to_event(digit: str) -> int:
    """The event code of a DTMF key (``"5"`` -> 5, ``"*"`` -> 10, ``"#"`` -> 11, ``"A"`` -> 12)."""
    if len(digit) != 1 or digit.upper() not in EVENT_DIGITS:
        raise LocalProtocolError(f"not a DTMF key: {digit!r}")
    return EVENT_DIGITS.index(digit.upper())


def event_to_digit(event: int) -> str | None:
    """The DTMF key of an event code, or None for other events (flash, tones)."""
    return EVENT_DIGITS[event] if 0 <= event < len(EVENT_DIGITS) else None


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 §2.3 event payload."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.event <= 255 or not 0 <= self.volume <= 63 or not 0 <= self.duration <= MAX_DURATION:
            raise LocalProtocolError(f"telephone-event field out of range: {self}")

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """Parse the first event block of a payload; raises :class:`RtpParseError` if it is too short.

        The R bit is ignored (§2.3: receivers ignore it); extra blocks (RFC 2198 redundancy) are not read.
        """
        if len(payload) < 4:
            raise RtpParseError(f"telephone-event payload too short: {len(payload)} bytes")
        event, flags, duration = struct.unpack_from("!BBH", payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def serialize(self) -> bytes:
        return struct.pack("!BBH", self.event, (0x80 if self.end else 0) | self.volume, self.duration)


# Receiving -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DtmfStarted:
    """The first packet of a new event arrived (use it to barge in early)."""

    event: int
    digit: str | None
    ssrc: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class DtmfKey:
    """One key press, reported once, with its total duration."""

    event: int
    digit: str | None
    """The DTMF key, or None for a non-DTMF event (flash)."""
    ssrc: int
    timestamp: int
    """RTP timestamp of the event's start (of its first segment)."""
    duration: int
    """Total duration in timestamp units."""
    duration_ms: int
    volume: int
    ended_by: Literal["end", "new_event", "timeout"]
    """How the end was known: an E packet, a new event starting, or no packet for ``timeout_ms``."""


TelephoneEventReport: TypeAlias = DtmfStarted | DtmfKey

MAX_SEGMENTS: Final = 31
"""How many 0xFFFF-unit segments apart two timestamps of one event may be (31 x 8.19 s at 8 kHz).

Segment timestamps are ``start + k * 0xFFFF``. For a sender on a 20 ms frame grid (160 units at 8 kHz,
320 at 16 kHz, 960 at 48 kHz) ``k * 0xFFFF`` lands on the grid only when ``k`` is a multiple of 32, so
within 31 segments a new key press of the same key can never be taken for a segment of an old one."""


def segment_index(timestamp: int, start: int) -> int | None:
    """Which segment of an event starting at ``start`` has ``timestamp`` (negative: an earlier one), or
    None when ``timestamp`` is no segment boundary of it (RFC 4733 §2.5.1.3)."""
    distance = ts_diff(timestamp, start)
    if distance % MAX_DURATION or abs(distance) > MAX_SEGMENTS * MAX_DURATION:
        return None
    return distance // MAX_DURATION


@dataclass(slots=True)
class _Current:
    ssrc: int
    event: int
    start_timestamp: int
    """Timestamp of the earliest segment seen."""
    timestamp: int
    """Timestamp of the latest segment seen."""
    duration: int
    """The largest duration seen in the latest segment."""
    volume: int
    updated_ms: float


class TelephoneEventReceiver:
    """Turns received RFC 4733 packets into one :class:`DtmfKey` per key press (module docstring).

    Call :meth:`receive` for every packet with the negotiated telephone-event payload type and
    :meth:`poll` now and then (every 20 ms frame) to report keys whose end packets were lost.
    """

    def __init__(self, *, clock_rate: int = 8000, timeout_ms: float = 250.0, history: int = 64) -> None:
        self.clock_rate = clock_rate
        self.timeout_ms = timeout_ms
        self._current: _Current | None = None
        self._done: deque[tuple[int, int, int]] = deque(maxlen=history)
        """(SSRC, event, start timestamp) of the keys already reported, newest last."""

    def receive(self, packet: RtpPacket, now_ms: float) -> list[TelephoneEventReport]:
        """Account one packet; raises :class:`RtpParseError` if its payload is not a telephone-event."""
        event = TelephoneEvent.parse(packet.payload)
        ssrc, timestamp = packet.ssrc, packet.timestamp
        if self._reported(ssrc, event.event, timestamp):
            return []  # a repeated end packet, a late update or a later segment of a reported key
        current = self._current
        if current is not None and current.ssrc == ssrc and current.event == event.event:
            index = segment_index(timestamp, current.timestamp)
            if index is not None:
                return self._update(current, event, timestamp, index, now_ms)
        out: list[TelephoneEventReport] = []
        if current is not None:
            if current.ssrc == ssrc and ts_diff(timestamp, current.start_timestamp) < 0:
                # A key older than the one going on, none of whose packets came before (lost or
                # reordered behind the next key's): report it now, once, and keep the current one.
                out.append(DtmfStarted(event.event, event_to_digit(event.event), ssrc, timestamp))
                late = _Current(ssrc, event.event, timestamp, timestamp, event.duration, event.volume, now_ms)
                out.append(self._report(late, "new_event"))
                return out
            out.append(self._finish("new_event"))
        self._current = _Current(
            ssrc, event.event, timestamp, timestamp, event.duration, event.volume, now_ms
        )
        out.append(DtmfStarted(event.event, event_to_digit(event.event), ssrc, timestamp))
        if event.end:
            out.append(self._finish("end"))
        return out

    def _update(
        self, current: _Current, event: TelephoneEvent, timestamp: int, index: int, now_ms: float
    ) -> list[TelephoneEventReport]:
        """A packet of the key going on: of its latest segment (``index`` 0), a later or an earlier one."""
        if index > 0:  # the next segment of a long event (§2.5.1.3): the durations add up
            current.timestamp = timestamp
            current.duration = event.duration
        elif index == 0:
            current.duration = max(current.duration, event.duration)
        else:  # a late packet of an earlier segment: it may move the start back, never the end
            if ts_diff(timestamp, current.start_timestamp) < 0:
                current.start_timestamp = timestamp
            return []
        current.updated_ms = now_ms
        return [self._finish("end")] if event.end else []

    def poll(self, now_ms: float) -> list[DtmfKey]:
        """Report the current key if no packet came for ``timeout_ms`` (its end packets were lost)."""
        current = self._current
        if current is not None and now_ms - current.updated_ms >= self.timeout_ms:
            return [self._finish("timeout")]
        return []

    @property
    def active(self) -> bool:
        """Whether a key is down (started and not yet reported)."""
        return self._current is not None

    def _reported(self, ssrc: int, event: int, timestamp: int) -> bool:
        """Whether a packet belongs to a key already reported: the same SSRC and event, and its
        timestamp that key's start or another segment boundary of it."""
        for done_ssrc, done_event, start in reversed(self._done):
            if done_ssrc == ssrc and done_event == event and segment_index(timestamp, start) is not None:
                return True
        return False

    def _finish(self, ended_by: Literal["end", "new_event", "timeout"]) -> DtmfKey:
        current = self._current
        assert current is not None
        self._current = None
        return self._report(current, ended_by)

    def _report(self, key: _Current, ended_by: Literal["end", "new_event", "timeout"]) -> DtmfKey:
        self._done.append((key.ssrc, key.event, key.start_timestamp))
        total = ts_diff(key.timestamp, key.start_timestamp) + key.duration
        return DtmfKey(
            event=key.event,
            digit=event_to_digit(key.event),
            ssrc=key.ssrc,
            timestamp=key.start_timestamp,
            duration=total,
            duration_ms=total * 1000 // self.clock_rate,
            volume=key.volume,
            ended_by=ended_by,
        )


# Sending -------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tone:
    event: int
    duration: int
    """Total duration in timestamp units."""
    start: int = 0
    """RTP timestamp of the event's start."""
    ticks: int = 0
    segment: int = 0
    started: bool = False


class TelephoneEventSender:
    """Sends DTMF keys as RFC 4733 events on a stream numbered by ``rtp`` (the audio stream's sender).

    :meth:`queue` digits, then call :meth:`tick` once per packet interval instead of sending an audio frame
    whenever it returns packets (:attr:`sending` says so beforehand). A tick that sends moves the RTP clock
    by one interval; between digits (``pause_ms``) it returns nothing and audio flows again (the caller
    moves the clock as usual). One key of ``duration_ms`` = 100 at 20 ms: updates with durations 160, 320,
    480, 640, then three end packets with 800, all with the timestamp of the first, which has the marker.
    """

    def __init__(
        self,
        rtp: RtpSender,
        payload_type: int,
        *,
        clock_rate: int = 8000,
        interval_ms: int = 20,
        volume: int = 10,
        end_repeats: int = 3,
    ) -> None:
        if not 0 <= volume <= 63 or end_repeats < 1 or interval_ms <= 0:
            raise LocalProtocolError("telephone-event sender: bad volume, interval or repeat count")
        self.rtp = rtp
        self.payload_type = payload_type
        self.clock_rate = clock_rate
        self.interval = clock_rate * interval_ms // 1000
        self.interval_ms = interval_ms
        self.volume = volume
        self.end_repeats = end_repeats
        self._queue: deque[_Tone | int] = deque()  # a tone, or a pause in ticks
        self._repeats: list[tuple[TelephoneEvent, int]] = []

    def queue(self, digits: Iterable[str], *, duration_ms: int = 100, pause_ms: int = 60) -> None:
        """Queue DTMF keys; raises :class:`~voice.errors.LocalProtocolError` for a non-DTMF character."""
        if duration_ms <= 0 or pause_ms < 0:
            raise LocalProtocolError("DTMF duration must be positive and the pause not negative")
        events = [digit_to_event(d) for d in digits]
        duration = max(1, duration_ms * self.clock_rate // 1000)
        pause_ticks = -(-pause_ms // self.interval_ms)
        for event in events:
            self._queue.append(_Tone(event, duration))
            if pause_ticks:
                self._queue.append(pause_ticks)

    @property
    def busy(self) -> bool:
        """Whether keys are queued or being sent."""
        return bool(self._queue or self._repeats)

    @property
    def sending(self) -> bool:
        """Whether the next :meth:`tick` sends an event packet (suppress the audio frame)."""
        return bool(self._repeats) or (bool(self._queue) and isinstance(self._queue[0], _Tone))

    def cancel(self) -> None:
        """Drop queued keys; a key being sent is still ended properly."""
        head = self._queue[0] if self._queue else None
        self._queue.clear()
        if isinstance(head, _Tone) and head.started:
            # ``ticks`` counts from the start of the event, across segments
            head.duration = min(head.duration, (head.ticks + 1) * self.interval)
            self._queue.append(head)

    def tick(self) -> list[RtpPacket]:
        """The packets for this interval (zero or one)."""
        if self._repeats:
            event, timestamp = self._repeats.pop(0)
            head = self._queue[0] if self._queue else None
            if isinstance(head, _Tone) and head.started:
                head.ticks += 1  # a long event goes on while its segment end is repeated
            return [self._send(event, timestamp, marker=False)]
        if not self._queue:
            return []
        head = self._queue[0]
        if isinstance(head, int):
            if head <= 1:
                self._queue.popleft()
            else:
                self._queue[0] = head - 1
            return []
        return [self._tone_tick(head)]

    def _tone_tick(self, tone: _Tone) -> RtpPacket:
        first = not tone.started
        if first:
            tone.started = True
            tone.start = self.rtp.timestamp
        tone.ticks += 1
        elapsed = tone.ticks * self.interval
        segment_start = tone.segment * MAX_DURATION
        in_segment = elapsed - segment_start
        timestamp = uint32_add(tone.start, segment_start)
        if in_segment >= MAX_DURATION and tone.duration - segment_start > MAX_DURATION:
            event = TelephoneEvent(tone.event, False, self.volume, MAX_DURATION)  # segment end (§2.5.1.3)
            tone.segment += 1
        elif elapsed >= tone.duration:
            event = TelephoneEvent(tone.event, True, self.volume, tone.duration - segment_start)
            self._queue.popleft()
        else:
            return self._send(TelephoneEvent(tone.event, False, self.volume, in_segment), timestamp, first)
        self._repeats = [(event, timestamp)] * (self.end_repeats - 1)
        return self._send(event, timestamp, first)

    def _send(self, event: TelephoneEvent, timestamp: int, marker: bool) -> RtpPacket:
        packet = self.rtp.packet(
            event.serialize(), payload_type=self.payload_type, timestamp=timestamp, marker=marker
        )
        self.rtp.advance(self.interval)
        return packet
