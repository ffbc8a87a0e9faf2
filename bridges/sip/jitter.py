"""Receive jitter buffer for one RTP audio stream (RFC 3550 §A.8 jitter; RFC 3551 §4.1 talkspurts).

Sans-I/O: ``push(packet, now_ms)`` as packets arrive, ``pop(now_ms)`` once per frame (every 20 ms). Nothing
reads a clock.

Behaviour:

- **Start.** Playout starts when the oldest buffered packet has waited ``target_ms`` (default 60 ms), so
  packets up to that late are still played in order, or at once when a burst brings more than that.
- **Order.** Packets are played by sequence number (wraparound-safe) along the media timeline. The next
  sequence number plays whatever its timestamp (silence suppression moves the timeline); after a gap in
  sequence numbers the next packet plays when its timestamp is due, so a gap whose timestamps are
  contiguous (RFC 4733 event packets share the sequence space) costs nothing, and a missing frame is
  concealed.
- **Loss.** A frame that is due but missing is *concealed*: the previous frame is repeated once (packet
  loss concealment by repetition), then silence; each such frame has ``concealed=True``. After
  ``max_concealed`` consecutive concealed frames the stream is taken as paused (silence suppression, a
  hold, the end of the stream): :meth:`pop` returns None and the buffer re-buffers on the next packet.
- **Late and duplicate packets** (for a frame already played or concealed, or already buffered) are
  dropped and counted: by sequence number when they arrive, and by timestamp when their frame's time was
  already filled with concealment.
- **Jumps.** A new SSRC, or a sequence number more than ``max_jump`` away from where playout is, restarts
  the buffer on the new stream (RFC 3550 §A.1: the source restarted).
- **Overflow.** When more than ``max_ms`` is buffered the oldest frames are skipped (counted).
- **Adaptive depth** (``adaptive=True``): the target follows the interarrival jitter (RFC 3550 §A.8),
  ``frame + 3 x jitter`` rounded up to whole frames within ``[min_target_ms, max_target_ms]``. An
  underrun (nothing buffered when a frame is due) conceals one frame *without* moving the timeline, so the
  late packet still plays and the buffer is one frame deeper; a buffer more than two frames deeper than
  the target for 100 ms skips its oldest frame to catch up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from bridges.sip.rtp import RtpPacket, seq_diff, ts_diff, uint16_add, uint32_add
from voice.errors import LocalProtocolError

__all__ = ["JitterBuffer", "JitterFrame", "JitterStats"]

_ULAW_SILENCE: Final = 0xFF


@dataclass(frozen=True, slots=True)
class JitterFrame:
    """One frame of playout. ``concealed`` frames were made up for a missing packet (repeat or silence)."""

    payload: bytes
    sequence_number: int
    """The packet's sequence number, or the one expected for a concealed frame."""
    timestamp: int
    """The frame's RTP timestamp on the sender's media clock."""
    concealed: bool = False
    marker: bool = False
    """The packet began a talkspurt (RFC 3551 §4.1)."""


@dataclass(slots=True)
class JitterStats:
    """Counters since the buffer was made."""

    received: int = 0
    played: int = 0
    concealed: int = 0
    late: int = 0
    duplicates: int = 0
    overflow: int = 0
    resets: int = 0
    rebuffers: int = 0


class JitterBuffer:
    """Reorders, de-jitters and conceals one stream's audio packets; see the module docstring.

    ``frame_ms`` is the packetization (the ptime the sender uses); ``silence`` is one frame of the codec's
    silence (µ-law 0xFF by default; A-law is 0xD5).
    """

    def __init__(
        self,
        *,
        clock_rate: int = 8000,
        frame_ms: int = 20,
        target_ms: int = 60,
        max_ms: int = 300,
        adaptive: bool = False,
        min_target_ms: int = 40,
        max_target_ms: int = 200,
        max_concealed: int = 5,
        max_jump: int = 1000,
        silence: bytes | None = None,
    ) -> None:
        if frame_ms <= 0 or clock_rate <= 0 or target_ms < 0 or max_ms < target_ms + frame_ms:
            raise LocalProtocolError("jitter buffer: need frame_ms > 0 and max_ms >= target_ms + frame_ms")
        self.clock_rate = clock_rate
        self.frame_ms = frame_ms
        self.frame_samples = clock_rate * frame_ms // 1000
        self.target_ms = target_ms
        self.max_ms = max_ms
        self.adaptive = adaptive
        self.min_target_ms = min_target_ms
        self.max_target_ms = max_target_ms
        self.max_concealed = max_concealed
        self.max_jump = max_jump
        self.silence = silence if silence is not None else bytes([_ULAW_SILENCE]) * self.frame_samples
        self.stats = JitterStats()
        self._packets: dict[int, RtpPacket] = {}
        self._arrivals: dict[int, float] = {}
        self._ssrc: int | None = None
        self._playing = False
        self._next_seq = 0
        self._next_ts = 0
        self._last_payload: bytes | None = None
        self._concealed_run = 0
        self._deep_run = 0
        self._transit: float | None = None
        self.jitter_ms = 0.0
        """Interarrival jitter estimate in ms (RFC 3550 §A.8)."""

    # Input ---------------------------------------------------------------------------------------------

    def push(self, packet: RtpPacket, now_ms: float) -> None:
        """Buffer one received audio packet (route RFC 4733 events elsewhere first)."""
        self.stats.received += 1
        if self._ssrc is not None and packet.ssrc != self._ssrc:
            self._reset()
        self._ssrc = packet.ssrc
        self._update_jitter(packet, now_ms)
        seq = packet.sequence_number
        if self._playing:
            distance = seq_diff(seq, self._next_seq)
            if abs(distance) > self.max_jump:
                self._reset()
                self._ssrc = packet.ssrc
            elif distance < 0:
                self.stats.late += 1
                return
        if seq in self._packets:
            self.stats.duplicates += 1
            return
        if self._packets and not self._playing:
            oldest = self._oldest()
            if abs(seq_diff(seq, oldest)) > self.max_jump:
                self._reset()
                self._ssrc = packet.ssrc
        self._packets[seq] = packet
        self._arrivals[seq] = now_ms
        self._trim()

    def _update_jitter(self, packet: RtpPacket, now_ms: float) -> None:
        transit = now_ms - packet.timestamp * 1000.0 / self.clock_rate
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < 10_000:  # ignore timestamp jumps
                self.jitter_ms += (d - self.jitter_ms) / 16.0
        self._transit = transit

    def _trim(self) -> None:
        """Skip the oldest frames while more than ``max_ms`` is buffered."""
        while len(self._packets) > self.max_ms // self.frame_ms:
            self._skip_oldest()

    def _skip_oldest(self) -> None:
        oldest = self._oldest()
        packet = self._packets[oldest]
        self._drop(oldest)
        self.stats.overflow += 1
        if self._playing:
            self._next_seq = uint16_add(oldest, 1)
            self._next_ts = uint32_add(packet.timestamp, self.frame_samples)

    # Output --------------------------------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def buffered_ms(self) -> int:
        """Audio waiting in the buffer, in ms."""
        return len(self._packets) * self.frame_ms

    def pop(self, now_ms: float) -> JitterFrame | None:
        """The frame to play now, or None while (re-)buffering or paused."""
        if self.adaptive:
            self.target_ms = self._adaptive_target()
        if not self._playing and not self._start(now_ms):
            return None
        while (candidate := self._candidate(self._next_seq)) is not None:
            lag = ts_diff(candidate.timestamp, self._next_ts)
            if self._concealed_run and lag < 0:
                # Its frame was already concealed: too late to play in time.
                self._drop(candidate.sequence_number)
                self._next_seq = uint16_add(candidate.sequence_number, 1)
                self.stats.late += 1
                continue
            if (
                candidate.sequence_number
                == self._next_seq  # the next packet: play it, whatever its timestamp
                or lag <= 0  # due: the skipped sequence numbers were not audio
                or candidate.marker  # a new talkspurt
            ):
                return self._play(candidate)
            return self._conceal(skip=True)  # a packet is missing before this one: conceal its frame
        return self._conceal(skip=False)  # nothing buffered: late, lost, or the stream paused

    def _start(self, now_ms: float) -> bool:
        if not self._packets:
            return False
        oldest = self._oldest()
        if now_ms - self._arrivals[oldest] < self.target_ms and self.buffered_ms <= self.target_ms:
            return False
        self._playing = True
        self._next_seq = oldest
        self._next_ts = self._packets[oldest].timestamp
        self._concealed_run = 0
        return True

    def _adaptive_target(self) -> int:
        wanted = self.frame_ms + 3 * self.jitter_ms
        frames = -(-int(wanted) // self.frame_ms)
        return max(self.min_target_ms, min(self.max_target_ms, frames * self.frame_ms))

    def _play(self, packet: RtpPacket) -> JitterFrame:
        self._drop(packet.sequence_number)
        self._next_seq = uint16_add(packet.sequence_number, 1)
        self._next_ts = uint32_add(packet.timestamp, self.frame_samples)
        self._last_payload = packet.payload
        self._concealed_run = 0
        self.stats.played += 1
        if self.adaptive:
            self._catch_up()
        return JitterFrame(packet.payload, packet.sequence_number, packet.timestamp, False, packet.marker)

    def _conceal(self, *, skip: bool) -> JitterFrame | None:
        """A concealment frame for the expected timestamp; ``skip``: the expected packet is known lost
        (a later one is buffered), so its sequence number is passed over."""
        if self._concealed_run >= self.max_concealed:
            self._playing = False  # the stream paused: re-buffer on the next packet
            self.stats.rebuffers += 1
            self._last_payload = None
            return None
        repeat = self._concealed_run == 0 and self._last_payload is not None
        payload = self._last_payload if repeat and self._last_payload is not None else self.silence
        frame = JitterFrame(payload, self._next_seq, self._next_ts, concealed=True)
        self._concealed_run += 1
        self.stats.concealed += 1
        if skip:
            self._next_seq = uint16_add(self._next_seq, 1)
        if skip or not self.adaptive:
            self._next_ts = uint32_add(self._next_ts, self.frame_samples)
        # else (adaptive underrun): the timeline waits, so the late packet still plays: one frame deeper
        return frame

    def _catch_up(self) -> None:
        if self.buffered_ms > self.target_ms + 2 * self.frame_ms:
            self._deep_run += 1
            if self._deep_run >= 5 and self._packets:
                self._skip_oldest()
                self._deep_run = 0
        else:
            self._deep_run = 0

    # Helpers -------------------------------------------------------------------------------------------

    def _candidate(self, from_seq: int) -> RtpPacket | None:
        """The buffered packet with the lowest sequence number at or after ``from_seq``."""
        packet = self._packets.get(from_seq)
        if packet is not None:  # the usual case: the very next one
            return packet
        best: int | None = None
        for seq in self._packets:
            distance = seq_diff(seq, from_seq)
            if distance >= 0 and (best is None or distance < seq_diff(best, from_seq)):
                best = seq
        return self._packets[best] if best is not None else None

    def _oldest(self) -> int:
        seqs = list(self._packets)
        oldest = seqs[0]
        for seq in seqs[1:]:
            if seq_diff(seq, oldest) < 0:
                oldest = seq
        return oldest

    def _drop(self, seq: int) -> None:
        self._packets.pop(seq, None)
        self._arrivals.pop(seq, None)

    def _reset(self) -> None:
        self._packets.clear()
        self._arrivals.clear()
        self._playing = False
        self._last_payload = None
        self._concealed_run = 0
        self._transit = None
        self.stats.resets += 1
