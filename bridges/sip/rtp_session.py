"""One call's RTP endpoint in asyncio (RFC 3550, RFC 3551 G.711, RFC 4733): the adapter over the pure cores.

- **Ports.** :class:`RtpPortPool` hands out an even RTP port and the odd RTCP port above it (RFC 3550 §11)
  from the configured range, skipping ports something else holds.
- **Symmetric RTP** (RFC 4961): packets go to where the peer's packets come from (latched on every valid
  packet), else to the address and port of its SDP.
- **Receive.** Audio packets of the negotiated payload type go through the
  :class:`~bridges.sip.jitter.JitterBuffer`; a 20 ms clock pops one frame per tick and emits
  :class:`~bridges.base.CallerAudio` (concealment frames included) with the caller's media clock in ms. The
  clock is one :class:`RtpClock` for all the sessions of a port pool (one timer instead of one per call),
  on absolute deadlines (no drift), ticking the sessions in four groups 3 ms apart (no burst of every
  call's caller audio at once), just after the grid of the process's frame pacer (so a group's work never
  delays the tick that sends every call's frame). RFC 4733 packets go to the
  :class:`~bridges.sip.telephone_event.TelephoneEventReceiver` and become one
  :class:`~bridges.base.CallerDtmf` per key; in-band tones in the decoded audio are detected too
  (:class:`voice.audio.dtmf.DtmfDetector`, about 80 µs per frame) when ``inband_dtmf`` is ``always``, or
  with ``auto`` (the default) when the peer did not negotiate ``telephone-event`` (a peer that did sends
  its keys as events and not as tones, RFC 4733 §2.5.1.2); never two keys for one press: in-band
  detection pauses for 2 s after an RFC 4733 event.
- **Send.** :meth:`RtpSession.send_audio` sends one 20 ms frame at once: the call's shared pacer paces it.
  The first packet after a pause carries the marker bit and the timestamp jumps by the pause (RFC 3551
  §4.1). Keys queued with :meth:`RtpSession.send_dtmf` replace audio frames while they are sent
  (:class:`~bridges.sip.telephone_event.TelephoneEventSender`); with no audio flowing the receive clock
  sends them. The playout clock of the leg is this send clock: heard = sent.
- **Early media** (RFC 3261 §13.2.1, RFC 3960): :meth:`RtpSession.listen_early` starts the receive clock
  when an outbound call's ``183`` brings an SDP answer, before the call starts. The frames the jitter
  buffer plays out then go to an :class:`~bridges.sip.early_media.EarlyMedia` (RFC 4733 keys are dropped:
  nobody listens yet). :meth:`RtpSession.start` hands the part of it the agent should hear (from the first
  speech; ringback and silence alone give nothing) to the call first, every frame stamped ``media_ms`` 0:
  it came before the call's media clock, which starts at the answer as for any call. (A recorder that
  places caller audio by ``media_ms`` so keeps only what came after the answer; the model hears it all.)
- **RTCP** every 5 s on port + 1: an SR while we send, else an RR, with a report block for the peer's
  source and an SDES CNAME (RFC 3550 §6.4, §6.5); received SRs feed the LSR/DLSR of our reports.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Callable
from typing import Final, Literal, Protocol, cast

from bridges.base import CallerAudio, CallerDtmf, LegEvent
from bridges.sip.early_media import EarlyMedia, EarlyMediaSummary
from bridges.sip.jitter import JitterBuffer
from bridges.sip.rtp import (
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    RtpPacket,
    RtpParseError,
    RtpReceiverStats,
    RtpSender,
    ntp_from_unix,
    parse_rtcp,
    serialize_rtcp,
)
from bridges.sip.sdp import NegotiatedMedia
from bridges.sip.telephone_event import DtmfKey, TelephoneEventReceiver, TelephoneEventSender
from voice.audio.dtmf import DtmfDetector
from voice.audio.g711 import alaw_decode, ulaw_decode
from voice.call.pacer import next_on_grid
from voice.logs import get_logger
from voice.readsize import small_reads

__all__ = ["FRAME_MS", "RTCP_INTERVAL_S", "Clocked", "RtpClock", "RtpPortPool", "RtpSession"]

FRAME_MS: Final = 20
RTCP_INTERVAL_S: Final = 5.0
_SAMPLES: Final = 160
_INBAND_QUIET_MS: Final = 2000.0
"""In-band detection stays off this long after an RFC 4733 event."""


class _Rtp(asyncio.DatagramProtocol):
    def __init__(self, session: RtpSession, rtcp: bool) -> None:
        self.session = session
        self.rtcp = rtcp
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        small_reads(transport)  # a packet every 20 ms: not a 256 KiB allocation per read
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        source = (str(addr[0]), int(addr[1]))
        try:
            if self.rtcp:
                self.session._rtcp_received(data, source)
            else:
                self.session._rtp_received(data, source)
        except Exception:  # never let one packet kill the endpoint
            self.session.log.exception("rtp.receive_failed")

    def error_received(self, exc: Exception) -> None:
        self.session.log.debug("rtp.socket_error", error=repr(exc))


class Clocked(Protocol):
    """What the receive clock needs of a session: a step every 20 ms."""

    def _tick(self) -> None: ...


class RtpClock:
    """The 20 ms receive clock of many RTP sessions (see the module docstring). Sessions join with
    :meth:`add` and leave with :meth:`remove`; the timer runs while any session is on it."""

    GROUPS: Final = 4

    def __init__(self) -> None:
        self._groups: list[dict[Clocked, None]] = [{} for _ in range(self.GROUPS)]
        self._next_group = 0
        self._phase = 0
        self._period = 0.0  # the pacer tick that starts the current round of groups (loop clock)
        self._handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups)

    def add(self, session: Clocked) -> None:
        self._groups[self._next_group][session] = None
        self._next_group = (self._next_group + 1) % self.GROUPS
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._period = next_on_grid(loop.time(), _PERIOD_S)
            self._phase = 0
            self._handle = loop.call_at(self._period + _OFFSETS_S[0], self._step)

    def remove(self, session: Clocked) -> None:
        for group in self._groups:
            group.pop(session, None)
        if self._handle is not None and not any(self._groups):
            self._handle.cancel()
            self._handle = None

    def _step(self) -> None:
        loop = asyncio.get_running_loop()
        group = self._groups[self._phase]
        self._phase += 1
        if self._phase == self.GROUPS:
            self._phase = 0
            self._period += _PERIOD_S
        for session in list(group):
            session._tick()
        now = loop.time()
        if self._period + _OFFSETS_S[self._phase] < now - 0.2:  # a long stall: do not try to catch up
            self._period = next_on_grid(now, _PERIOD_S)
        self._handle = loop.call_at(self._period + _OFFSETS_S[self._phase], self._step)


_PERIOD_S: Final = FRAME_MS / 1000
_OFFSETS_S: Final = (0.0002, 0.0032, 0.0062, 0.0092)
"""When each group's step falls after a tick of the frame pacer (whose ticks fall on the same 20 ms grid
of the loop's clock): the first just after the tick, the rest 3 ms apart, all in the first half of the
period. The tick, which sends every call's frame, never waits behind a group's receive work, and the
I/O that gathers while the groups run is done well before the next tick."""


class RtpPortPool:
    """Even RTP ports (RTCP = port + 1) from ``[port_min, port_max]``, in turn, and their shared clock."""

    def __init__(
        self,
        host: str,
        port_min: int,
        port_max: int,
        *,
        jitter_target_ms: int = 60,
        inband_dtmf: Literal["auto", "always", "off"] = "auto",
    ) -> None:
        self.host = host
        self.jitter_target_ms = jitter_target_ms
        self.inband_dtmf = inband_dtmf
        self.port_min = port_min + (port_min % 2)
        self.port_max = port_max
        self._used: set[int] = set()
        self._next = self.port_min
        self.clock = RtpClock()

    async def open(self, call_id: str) -> RtpSession:
        """Bind a session on the next free pair; raises OSError when the range is exhausted."""
        loop = asyncio.get_running_loop()
        count = (self.port_max - self.port_min) // 2 + 1
        for _ in range(count):
            port = self._next
            self._next = port + 2 if port + 3 <= self.port_max else self.port_min
            if port in self._used:
                continue
            session = RtpSession(
                call_id, self, jitter_target_ms=self.jitter_target_ms, inband_dtmf=self.inband_dtmf
            )
            try:
                rtp_t, _ = await loop.create_datagram_endpoint(
                    functools.partial(_Rtp, session, False), local_addr=(self.host, port)
                )
            except OSError:
                continue
            try:
                rtcp_t, _ = await loop.create_datagram_endpoint(
                    functools.partial(_Rtp, session, True), local_addr=(self.host, port + 1)
                )
            except OSError:
                rtp_t.close()
                continue
            session._bind(rtp_t, rtcp_t, port)
            self._used.add(port)
            return session
        raise OSError(f"no free RTP port pair in {self.port_min}-{self.port_max}")

    def release(self, port: int) -> None:
        self._used.discard(port)


class RtpSession:
    """One call's RTP/RTCP endpoint (see the module docstring)."""

    def __init__(
        self,
        call_id: str,
        pool: RtpPortPool | None = None,
        *,
        jitter_target_ms: int = 60,
        inband_dtmf: Literal["auto", "always", "off"] = "auto",
    ) -> None:
        self.call_id = call_id
        self.log = get_logger(call_id=call_id, component="rtp")
        self._pool = pool
        self.port = 0
        self._rtp: asyncio.DatagramTransport | None = None
        self._rtcp: asyncio.DatagramTransport | None = None
        self.media: NegotiatedMedia | None = None
        self.remote: tuple[str, int] | None = None
        self.remote_rtcp: tuple[str, int] | None = None
        self._latched = False
        self._rtcp_latched = False
        self.jitter = JitterBuffer(target_ms=jitter_target_ms)
        self.events = TelephoneEventReceiver()
        self.sender = RtpSender.random(0)
        self.dtmf_sender: TelephoneEventSender | None = None
        self._stats: RtpReceiverStats | None = None
        self._emit: Callable[[LegEvent], None] | None = None
        self._decode: Callable[[bytes], bytes] = ulaw_decode
        self.inband_dtmf = inband_dtmf
        self._detector: DtmfDetector | None = None
        self._last_rfc4733_ms = -1e12
        self.media_ms = 0
        """Caller audio emitted so far, in ms (the caller's media clock)."""
        self._early: EarlyMedia | None = None
        self.early_media: EarlyMediaSummary | None = None
        """What came before the answer (set by :meth:`start` when :meth:`listen_early` ran)."""
        self._clock = pool.clock if pool is not None else RtpClock()
        self._clocked = False
        self._last_sent_ms: float | None = None
        self._played_since_tick = False
        self._next_rtcp = 0.0
        self._sent_since_report = False
        self.closed = False
        self.cname = f"voice-{secrets.token_hex(4)}@{call_id}"
        self.packets_received = 0
        self.bad_packets = 0

    # -- set-up ------------------------------------------------------------------------------------------

    def _bind(self, rtp: asyncio.DatagramTransport, rtcp: asyncio.DatagramTransport, port: int) -> None:
        self._rtp, self._rtcp, self.port = rtp, rtcp, port

    def configure(self, media: NegotiatedMedia) -> None:
        """Apply an offer/answer outcome (first answer, re-INVITE for hold/resume, a new address)."""
        first = self.media is None
        codec_changed = self.media is not None and self.media.codec.payload_type != media.codec.payload_type
        self.media = media
        if not self._latched or (self.remote is not None and self.remote[0] != media.remote_address):
            self.remote = (media.remote_address, media.remote_port) if media.remote_port else None
            self._latched = False
        if not self._rtcp_latched:
            self.remote_rtcp = (media.remote_address, media.remote_rtcp_port)
        self._decode = ulaw_decode if media.audio_codec == "pcmu" else alaw_decode
        wanted = self.inband_dtmf == "always" or (
            self.inband_dtmf == "auto" and media.telephone_event is None
        )
        if wanted and self._detector is None:
            self._detector = DtmfDetector(8000)
        elif not wanted:
            self._detector = None
        if first or codec_changed:
            self.sender.payload_type = media.codec.payload_type
            silence = bytes([0xFF if media.audio_codec == "pcmu" else 0xD5]) * _SAMPLES
            self.jitter.silence = silence
        if media.telephone_event is not None:
            if (
                self.dtmf_sender is None
                or self.dtmf_sender.payload_type != media.telephone_event.payload_type
            ):
                self.dtmf_sender = TelephoneEventSender(self.sender, media.telephone_event.payload_type)
        else:
            self.dtmf_sender = None

    def listen_early(self) -> None:
        """Receive early media: start the receive clock now and keep what it plays out until :meth:`start`
        (an outbound call's ``183`` with SDP; idempotent)."""
        if self.closed or self._emit is not None or self._early is not None:
            return
        self._early = EarlyMedia()
        self._start_clock()

    def start(self, emit: Callable[[LegEvent], None]) -> None:
        """Start the 20 ms receive clock (unless early media runs it already); events go to ``emit``,
        the early media the call should hear first (see the module docstring)."""
        self._emit = emit
        early, self._early = self._early, None
        if early is not None:
            self.early_media = early.summary()
            frames = early.frames()
            for payload in frames:
                emit(CallerAudio(payload, 0))
            self.log.info(
                "rtp.early_media",
                received_ms=self.early_media.received_ms,
                delivered_ms=self.early_media.delivered_ms,
                speech_ms=self.early_media.speech_ms,
            )
        if not self._clocked:
            self._start_clock()

    def _start_clock(self) -> None:
        self._next_rtcp = time.monotonic() + RTCP_INTERVAL_S  # the clock of _now_ms
        self._clocked = True
        self._clock.add(self)

    @property
    def sending_allowed(self) -> bool:
        return self.media is not None and self.media.sends and self.remote is not None

    # -- receive -----------------------------------------------------------------------------------------

    def _now_ms(self) -> float:
        return time.monotonic() * 1000.0

    def _rtp_received(self, data: bytes, source: tuple[str, int]) -> None:
        media = self.media
        if media is None or self.closed:
            return
        try:
            packet = RtpPacket.parse(data)
        except RtpParseError:
            self.bad_packets += 1
            return
        now = self._now_ms()
        self.packets_received += 1
        if self.remote != source:  # symmetric RTP: answer where the packets come from
            self.remote = source
        self._latched = True
        if self._stats is None or self._stats.ssrc != packet.ssrc:
            self._stats = RtpReceiverStats(packet.ssrc)
        self._stats.update(packet, now)
        event = media.telephone_event
        if event is not None and packet.payload_type == event.payload_type:
            self._last_rfc4733_ms = now
            try:
                reports = self.events.receive(packet, now)
            except RtpParseError:
                self.bad_packets += 1
                return
            for report in reports:
                if isinstance(report, DtmfKey):
                    self._key(report)
            return
        if packet.payload_type == media.codec.payload_type:
            self.jitter.push(packet, now)

    def _key(self, key: DtmfKey) -> None:
        if key.digit is not None and self._emit is not None:
            self.log.info("rtp.dtmf", digit=key.digit, duration_ms=key.duration_ms, ended_by=key.ended_by)
            self._emit(CallerDtmf(key.digit, self.media_ms))

    def _rtcp_received(self, data: bytes, source: tuple[str, int]) -> None:
        if self.closed:
            return
        try:
            packets = parse_rtcp(data)
        except RtpParseError:
            self.bad_packets += 1
            return
        self.remote_rtcp = source
        self._rtcp_latched = True
        for packet in packets:
            if (
                isinstance(packet, RtcpSenderReport)
                and self._stats is not None
                and packet.ssrc == self._stats.ssrc
            ):
                self._stats.on_sender_report(packet, self._now_ms())

    def _tick(self) -> None:
        """One 20 ms tick of the receive clock (:class:`RtpClock`); never raises."""
        if self.closed:
            return
        now = self._now_ms()
        try:
            self._receive_tick(now)
            self._send_tick()
            if now >= self._next_rtcp * 1000:
                self._next_rtcp += RTCP_INTERVAL_S
                self._send_rtcp()
        except Exception:
            self.log.exception("rtp.tick_failed")

    def _receive_tick(self, now: float) -> None:
        for key in self.events.poll(now):
            self._key(key)
        frame = self.jitter.pop(now)
        if frame is None:
            return
        if self._emit is None:
            if self._early is not None:
                self._early.push(frame.payload, self._decode(frame.payload))
            return
        self._emit(CallerAudio(frame.payload, self.media_ms))
        self.media_ms += FRAME_MS
        if self._detector is None:
            return
        digits = self._detector.push(self._decode(frame.payload))
        if now - self._last_rfc4733_ms > _INBAND_QUIET_MS:
            for digit in digits:
                self.log.info("rtp.dtmf_inband", digit=digit.digit)
                self._emit(CallerDtmf(digit.digit, self.media_ms))

    # -- send --------------------------------------------------------------------------------------------

    def send_audio(self, frame: bytes) -> bool:
        """Send one 20 ms frame now (or a DTMF event packet in its place); False when nothing may be sent
        (on hold, no remote address yet)."""
        if self.closed or not self.sending_allowed:
            return False
        self._played_since_tick = True
        if self.dtmf_sender is not None and self.dtmf_sender.sending:
            self._send_packets(self.dtmf_sender.tick())
            return True
        now = self._now_ms()
        if self._last_sent_ms is not None and now - self._last_sent_ms > 3 * FRAME_MS:
            gap_frames = round((now - self._last_sent_ms) / FRAME_MS) - 1
            self.sender.advance(gap_frames * _SAMPLES)  # the timeline moves through the pause
            self.sender.start_talkspurt()
        self._send_packets([self.sender.send(frame)])
        return True

    def send_dtmf(self, digits: str) -> bool:
        """Queue RFC 4733 events; False when the peer did not negotiate telephone-event."""
        if self.dtmf_sender is None:
            return False
        self.dtmf_sender.queue(digits)
        return True

    def _send_tick(self) -> None:
        played = self._played_since_tick
        self._played_since_tick = False
        if played or self.dtmf_sender is None or not self.dtmf_sender.busy or not self.sending_allowed:
            return
        packets = self.dtmf_sender.tick()
        if packets:
            self._send_packets(packets)
        else:
            self.sender.advance(_SAMPLES)  # the pause between keys

    def _send_packets(self, packets: list[RtpPacket]) -> None:
        if self._rtp is None or self.remote is None:
            return
        for packet in packets:
            self._rtp.sendto(packet.serialize(), self.remote)
        self._last_sent_ms = self._now_ms()
        self._sent_since_report = True

    def _send_rtcp(self) -> None:
        if self._rtcp is None or self.remote_rtcp is None:
            return
        blocks = (self._stats.report_block(self._now_ms()),) if self._stats is not None else ()
        ssrc = self.sender.ssrc
        report: RtcpSenderReport | RtcpReceiverReport
        if self._sent_since_report:
            info = self.sender.sender_info(ntp_from_unix(time.time()))
            report = RtcpSenderReport(ssrc, info, blocks)
        else:
            report = RtcpReceiverReport(ssrc, blocks)
        self._sent_since_report = False
        self._rtcp.sendto(serialize_rtcp([report, RtcpSdes.cname(ssrc, self.cname)]), self.remote_rtcp)

    # -- end ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the clock and close both sockets (idempotent)."""
        if self.closed:
            return
        self.closed = True
        if self._clocked:
            self._clock.remove(self)
        for transport in (self._rtp, self._rtcp):
            if transport is not None:
                transport.close()
        if self._pool is not None and self.port:
            self._pool.release(self.port)
        self.log.info(
            "rtp.closed",
            received=self.packets_received,
            bad=self.bad_packets,
            sent=self.sender.packets_sent,
            concealed=self.jitter.stats.concealed,
            late=self.jitter.stats.late,
        )
