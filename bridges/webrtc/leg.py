"""The WebRTC leg: a :class:`bridges.base.Leg` over an aiortc :class:`~aiortc.RTCPeerConnection`.

Media (DESIGN.md "Codec policy"): the call exchanges ``pcm16_24k`` with this leg, like the browser WebSocket,
and the upstream session uses ``audio/pcm`` 24 kHz.

- **Caller -> call.** aiortc decodes the caller's Opus to 48 kHz frames (Chromium sends stereo; any layout
  or rate is accepted); they are mixed to mono, cut into whole 10 ms blocks, resampled 48 -> 24 kHz by the
  low-delay :class:`~voice.audio.resample.StreamingResampler` and delivered as
  :class:`~bridges.base.CallerAudio` stamped with the caller's media clock (ms of audio received). The same
  24 kHz audio feeds a :class:`~voice.audio.dtmf.DtmfDetector`: in-band key tones become
  :class:`~bridges.base.CallerDtmf` too.
- **Call -> caller.** :meth:`WebRTCLeg.play` resamples each 20 ms frame 24 -> 48 kHz and queues it on the
  :class:`AgentAudioTrack`, the peer connection's outbound track. aiortc's sender pulls the track:
  ``recv()`` returns one 20 ms frame per 20 ms on absolute deadlines (silence when nothing is queued), and
  each agent frame that leaves ``recv()`` - i.e. is encoded and sent at once - is reported as
  ``PlaybackReport(item_id, item_ms)``: the playout clock is what the track really sent, so truncation on
  a barge-in is exact to a frame. :meth:`WebRTCLeg.clear` drops the queue at once.
- **Control.** The page's data channel (label ``control``) carries the JSON messages of the WebSocket widget
  (``bridges/browser/PROTOCOL.md``, codec :mod:`bridges.browser.protocol`): keypad ``dtmf`` and ``hangup``
  in; ``call.started``, transcripts, ``clear``, the cost meter, ``dtmf.ack``, ``tool``, ``error`` and
  ``call.ended`` out. ``playback`` reports from a page are ignored (the track is the clock). Messages for a
  channel not open yet are held and sent when it opens.

The end of the call (:meth:`events` ends with a :class:`~bridges.base.LegHangup`): a ``hangup`` message
(``caller_hangup``), the peer connection closing or the data channel or caller track ending
(``disconnected``: the page was closed), ICE or DTLS failing (``ice_failed``), or no caller audio for
``media_timeout_s`` on a connected call (``media_timeout``: the network went away; aioice's consent checks
would take about 30 s to notice).

A browser has no native DTMF and cannot be transferred: the runner plays DTMF in-band.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

import numpy as np
from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, AudioResampler, CodecContext, Packet
from av.audio.codeccontext import AudioCodecContext

from bridges.base import (
    AudioCodec,
    CallerAudio,
    CallerDtmf,
    LegCapabilities,
    LegEvent,
    LegHangup,
    LegKind,
    PlaybackReport,
)
from bridges.browser import protocol
from voice.audio.dtmf import DtmfDetector
from voice.audio.resample import StreamingResampler
from voice.errors import LocalProtocolError
from voice.logs import get_logger
from voice.realtime.ids import new_id

__all__ = [
    "CAPABILITIES",
    "CONTROL_LABEL",
    "TRACK_RATE",
    "WEBRTC_AUDIO",
    "AgentAudioTrack",
    "WebRTCLeg",
    "mono_pcm16_48k",
]

CAPABILITIES: Final = LegCapabilities(
    codecs=("pcm16_24k",), native_dtmf=False, can_transfer=False, reports_playback=True
)
CONTROL_LABEL: Final = "control"
"""The data channel the page opens for the JSON control messages."""
TRACK_RATE: Final = 48000
FRAME_S: Final = 0.02
FRAME_SAMPLES: Final = 960
"""One 20 ms frame at 48 kHz."""
FRAME_BYTES: Final = 2 * FRAME_SAMPLES
_BLOCK_BYTES: Final = FRAME_BYTES // 2
"""10 ms of PCM16 mono at 48 kHz: the resampler takes whole multiples of it."""
_SILENCE: Final = bytes(FRAME_BYTES)
_TIME_BASE: Final = Fraction(1, TRACK_RATE)
_MAX_LATE_S: Final = 0.2
"""A recv() this late (the loop stalled) restarts the frame grid instead of sending a burst."""
_KEEP_LATENESS: Final = 1000
_MAX_EVENTS: Final = 3000
_MAX_PENDING_CONTROL: Final = 200
_DRAIN_S: Final = 1.0
_CLOSE_TIMEOUT_S: Final = 5.0
OPUS_BITRATE: Final = 32000
"""Target Opus bit rate of the agent's voice (aiortc's own encoder: 96 kb/s stereo)."""

WEBRTC_AUDIO: Final[dict[str, Any]] = {"format": "opus", "rate": TRACK_RATE, "channels": 1, "frame_ms": 20}
"""The ``audio`` object of ``call.started`` on this transport (audio travels on the media tracks)."""


def mono_pcm16_48k(frame: AudioFrame, resampler: AudioResampler | None = None) -> bytes:
    """A decoded frame as PCM16 mono 48 kHz. Packed ``s16`` at 48 kHz (what aiortc's Opus decoder gives)
    is mixed down here; anything else goes through ``resampler`` (a PyAV ``AudioResampler`` to s16 mono
    48 kHz, which keeps state across frames)."""
    channels = len(frame.layout.channels)
    if frame.sample_rate == TRACK_RATE and frame.format.name == "s16":
        data = frame.to_ndarray()
        if channels == 1:
            return bytes(data.astype("<i2", copy=False).tobytes())
        mixed = data.reshape(-1, channels).astype(np.int32).sum(axis=1) // channels
        return bytes(mixed.astype("<i2").tobytes())
    if resampler is None:
        resampler = AudioResampler(format="s16", layout="mono", rate=TRACK_RATE)
    return b"".join(bytes(out.to_ndarray().astype("<i2").tobytes()) for out in resampler.resample(frame))


@dataclass(frozen=True, slots=True)
class _Queued:
    pcm: bytes
    item_id: str
    item_ms: int


class AgentAudioTrack(MediaStreamTrack):
    """The agent's voice as an outbound aiortc audio track: 20 ms frames of PCM16 mono at 48 kHz.

    :meth:`enqueue` adds a frame of agent item ``item_id`` ending at ``item_ms``; :meth:`recv` (called by
    aiortc's sender) returns one frame per 20 ms on absolute deadlines of the loop's monotonic clock,
    silence when the queue is empty, and calls ``on_played(item_id, item_ms)`` for every agent frame it
    hands over. After a gap, the first frame waits up to ``prebuffer_frames`` periods for more to queue
    behind it, so that timing jitter between the call's pacer and this track does not split speech into
    fragments (costs at most ``20 * prebuffer_frames`` ms of latency at the start of each burst).

    With ``encode`` (the default) each frame is returned Opus-encoded (an ``av.Packet``: mono, the
    ``lowdelay`` (CELT) mode with 2.5 ms of look-ahead instead of 6.5 ms, and about half the CPU of the
    ``voip`` mode for synthesized speech), which aiortc's sender packetizes as is: the encoding happens here,
    on the event loop, instead of in aiortc's thread pool (one thread hop per frame per call fewer), and
    aiortc skips its pure-Python audio-level computation (RFC 6464) of every frame. ``encode=False`` returns
    raw frames for aiortc to encode.
    """

    kind = "audio"

    def __init__(
        self,
        on_played: Callable[[str, int], None] | None = None,
        *,
        prebuffer_frames: int = 1,
        max_frames: int = 500,
        encode: bool = True,
    ) -> None:
        super().__init__()
        self.on_played = on_played
        self.encode = encode
        self._encoder: AudioCodecContext | None = None
        self.prebuffer_frames = prebuffer_frames
        self.max_frames = max_frames
        self._queue: deque[_Queued] = deque()
        self._playing = False
        self._waited = 0
        self._start: float | None = None
        self._index = 0
        self.frames_sent = 0
        """Frames returned by :meth:`recv` (silence included)."""
        self.agent_frames_sent = 0
        self.gaps = 0
        """Times the queue ran dry while playing (end of a burst or an underrun)."""
        self.dropped = 0
        """Frames dropped by :meth:`clear` or by overflow."""
        self.late_resyncs = 0
        self.lateness_ms: deque[float] = deque(maxlen=_KEEP_LATENESS)
        """How late each recent frame left :meth:`recv` after its deadline (benchmarks)."""
        self.last_item: tuple[str, int] | None = None
        """``(item_id, item_ms)`` of the last agent frame sent."""

    @property
    def queued(self) -> int:
        """Frames waiting to be sent."""
        return len(self._queue)

    def enqueue(self, pcm: bytes, item_id: str, item_ms: int) -> None:
        """Queue one 20 ms frame (1920 bytes of PCM16 mono 48 kHz) of agent item ``item_id``."""
        if len(pcm) != FRAME_BYTES:
            raise ValueError(f"an outbound frame is {FRAME_BYTES} bytes (20 ms at 48 kHz), got {len(pcm)}")
        if len(self._queue) >= self.max_frames:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(_Queued(pcm, item_id, item_ms))

    def clear(self) -> int:
        """Drop every queued frame at once; returns how many were dropped."""
        dropped = len(self._queue)
        self._queue.clear()
        self.dropped += dropped
        self._playing = False
        self._waited = 0
        return dropped

    def take(self) -> _Queued | None:
        """The frame to send now (``None``: silence). Pure queue logic, no clock: :meth:`recv` calls it once
        per 20 ms."""
        if not self._playing:
            if not self._queue:
                return None
            if len(self._queue) <= self.prebuffer_frames and self._waited < self.prebuffer_frames:
                self._waited += 1
                return None
            self._playing = True
            self._waited = 0
        if not self._queue:
            self._playing = False
            self.gaps += 1
            return None
        return self._queue.popleft()

    async def recv(self) -> AudioFrame | Packet[Any]:
        """The next 20 ms frame (Opus-encoded with ``encode``), at its deadline: aiortc's RTP sender sends it
        at once."""
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            deadline = self._start + self._index * FRAME_S
            wait = deadline - now
            if wait > 0:
                await asyncio.sleep(wait)
            elif -wait > _MAX_LATE_S:
                self._start = now - self._index * FRAME_S
                self.late_resyncs += 1
            self.lateness_ms.append(max(0.0, (time.monotonic() - deadline) * 1000))
        if self.readyState != "live":
            raise MediaStreamError
        queued = self.take()
        pcm = queued.pcm if queued is not None else _SILENCE
        frame = AudioFrame.from_ndarray(
            np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = TRACK_RATE
        frame.pts = self._index * FRAME_SAMPLES
        frame.time_base = _TIME_BASE
        out: AudioFrame | Packet[Any] = self._opus(frame) if self.encode else frame
        self._index += 1
        self.frames_sent += 1
        if queued is not None:
            self.agent_frames_sent += 1
            self.last_item = (queued.item_id, queued.item_ms)
            if self.on_played is not None:
                self.on_played(queued.item_id, queued.item_ms)
        return out

    def _opus(self, frame: AudioFrame) -> AudioFrame | Packet[Any]:
        """One Opus packet for ``frame`` with the frame's timestamp (the raw frame in the unexpected case that
        the encoder holds it back: aiortc then encodes it itself)."""
        if self._encoder is None:
            encoder = CodecContext.create("libopus", "w")
            encoder.bit_rate = OPUS_BITRATE
            encoder.format = "s16"
            encoder.layout = "mono"
            encoder.sample_rate = TRACK_RATE
            encoder.time_base = _TIME_BASE
            encoder.options = {"application": "lowdelay"}
            self._encoder = encoder
        packets = self._encoder.encode(frame)
        if not packets:
            return frame
        packet = packets[0]
        packet.pts = frame.pts
        packet.time_base = _TIME_BASE
        return packet


def _encode(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class WebRTCLeg:
    """One WebRTC caller on an aiortc peer connection (see the module docstring).

    Create it on a fresh :class:`~aiortc.RTCPeerConnection` *before* the offer is applied (it listens for
    the caller's track and data channel); :attr:`output_track` must be added to the connection
    (:func:`bridges.webrtc.signaling.answer_offer` does both). ``agent`` is announced in ``call.started``
    when the runner names none; ``media_timeout_s`` ends a connected call whose caller audio stopped;
    ``inband_dtmf`` turns the in-band tone detector on.
    """

    kind: LegKind = "webrtc"
    codec: AudioCodec = "pcm16_24k"
    capabilities: LegCapabilities = CAPABILITIES

    def __init__(
        self,
        pc: RTCPeerConnection,
        *,
        agent: str = "",
        call_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        media_timeout_s: float = 10.0,
        inband_dtmf: bool = True,
        max_errors: int = 50,
    ) -> None:
        self.pc = pc
        self.agent = agent
        self.call_id: str = call_id or new_id("call")
        self.metadata: dict[str, Any] = {"transport": "webrtc", **dict(metadata or {})}
        self.media_timeout_s = media_timeout_s
        self.max_errors = max_errors
        self.log = get_logger(call_id=self.call_id, component="webrtc_leg")
        self.output_track = AgentAudioTrack(self._played)
        self.channel: RTCDataChannel | None = None
        self.media_ms = 0
        """Caller audio delivered so far in ms: the caller's media clock."""
        self.errors = 0
        self.reports_ignored = 0
        self.end_reason: str | None = None
        self._events: asyncio.Queue[LegEvent] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._ended = asyncio.Event()
        self._closed = False
        self._ended_sent = False
        self._pending: list[str] = []
        self._channel_open = asyncio.Event()
        self._inbuf = bytearray()
        self._down = StreamingResampler(TRACK_RATE, 24000)
        self._up = StreamingResampler(24000, TRACK_RATE)
        self._dtmf = DtmfDetector(24000) if inband_dtmf else None
        self._av_resampler: AudioResampler | None = None
        self._last_audio: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)

    # -- state ----------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """ICE and DTLS are up (and the leg has not ended)."""
        return self._connected.is_set() and not self._ended.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_connected(self, timeout_s: float) -> str | None:
        """Wait for the peer connection to connect: ``None`` when it did, else why not (``connect_timeout``,
        ``ice_failed``, ``disconnected``, ...)."""
        if not self._connected.is_set() and not self._ended.is_set():
            waiters = {
                asyncio.ensure_future(self._connected.wait()),
                asyncio.ensure_future(self._ended.wait()),
            }
            try:
                await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        if self._ended.is_set():
            return self.end_reason or "disconnected"
        if self._connected.is_set():
            return None
        return "connect_timeout"

    def _end(self, reason: str) -> None:
        """The caller side is gone: queue the final LegHangup (once)."""
        if self._ended.is_set():
            return
        self.end_reason = reason
        self._ended.set()
        self.log.info("webrtc.leg_ended", reason=reason)
        self._events.put_nowait(LegHangup(reason))

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(f"{self.call_id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- peer connection events ------------------------------------------------------------------------

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        self.log.info("webrtc.connection_state", state=state)
        if state == "connected":
            if not self._connected.is_set():
                self._connected.set()
                self._last_audio = time.monotonic()
                self._spawn(self._watch_media(), "media-watchdog")
        elif state == "failed":
            self._end("ice_failed")
        elif state == "closed":
            self._end("disconnected")

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        self.log.info("webrtc.caller_track", track=track.id)
        self._spawn(self._read_caller(track), "caller-audio")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self.channel is not None:
            self.log.info("webrtc.extra_channel_ignored", label=channel.label)
            return
        self.channel = channel
        self.log.info("webrtc.data_channel", label=channel.label, state=channel.readyState)
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._end("disconnected"))
        if channel.readyState == "open":
            self._flush_pending()
        else:
            channel.on("open", self._flush_pending)

    # -- inbound --------------------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[LegEvent]:
        """Caller audio, DTMF and playback reports until the caller goes away (then a LegHangup)."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, LegHangup):
                return

    def _put(self, event: LegEvent) -> None:
        if self._ended.is_set():
            return
        if self._events.qsize() >= _MAX_EVENTS and isinstance(event, CallerAudio):
            return  # nobody is reading: never grow without bound
        self._events.put_nowait(event)

    def _played(self, item_id: str, item_ms: int) -> None:
        self._put(PlaybackReport(item_id, item_ms))

    async def _read_caller(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if isinstance(frame, AudioFrame):
                    self.feed_caller_frame(frame)
        except MediaStreamError:
            self._end("disconnected")
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("webrtc.caller_audio_failed")
            self._end("error")

    def feed_caller_frame(self, frame: AudioFrame) -> None:
        """One decoded caller frame -> 24 kHz CallerAudio (+ in-band DTMF) on the events queue."""
        self._last_audio = time.monotonic()
        if self._av_resampler is None and not (
            frame.sample_rate == TRACK_RATE and frame.format.name == "s16"
        ):
            self._av_resampler = AudioResampler(format="s16", layout="mono", rate=TRACK_RATE)
        self._inbuf += mono_pcm16_48k(frame, self._av_resampler)
        usable = len(self._inbuf) - len(self._inbuf) % _BLOCK_BYTES
        if usable == 0:
            return
        chunk = bytes(self._inbuf[:usable])
        del self._inbuf[:usable]
        audio = self._down.process(chunk)
        self._put(CallerAudio(audio, self.media_ms))
        self.media_ms += len(audio) // protocol.BYTES_PER_MS
        if self._dtmf is not None:
            for digit in self._dtmf.push(audio):
                self.log.info("webrtc.inband_dtmf", digit=digit.digit, start_ms=digit.start_ms)
                self._put(CallerDtmf(digit.digit, digit.start_ms))

    async def _watch_media(self) -> None:
        """End a connected call whose caller audio stopped for ``media_timeout_s`` (lost network)."""
        interval = min(1.0, self.media_timeout_s / 4)
        while not self._ended.is_set():
            await asyncio.sleep(interval)
            last = self._last_audio
            if last is not None and time.monotonic() - last > self.media_timeout_s:
                self.log.warning("webrtc.media_timeout", silent_s=round(time.monotonic() - last, 1))
                self._end("media_timeout")
                return

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._reject(
                protocol.BrowserProtocolError("bad_message", "the control channel carries JSON text")
            )
            return
        try:
            parsed = protocol.parse_page_message(message)
        except protocol.BrowserProtocolError as exc:
            self._reject(exc)
            return
        if isinstance(parsed, protocol.PagePlayback):
            self.reports_ignored += 1  # the outbound track is this leg's playout clock
        elif isinstance(parsed, protocol.PageDtmf):
            self.log.info("webrtc.keypad_dtmf", digit=parsed.digit)
            self._put(CallerDtmf(parsed.digit, self.media_ms))
        else:
            self.log.info("webrtc.hangup_requested")
            self._end("caller_hangup")

    def _reject(self, exc: protocol.BrowserProtocolError) -> None:
        self.errors += 1
        self.log.info("webrtc.bad_message", code=exc.code, error=exc.message)
        if self.errors <= self.max_errors:
            self._send_json(protocol.error(exc.code, exc.message))

    # -- outbound -------------------------------------------------------------------------------------

    async def play(self, frame: bytes, item_id: str, item_ms: int) -> None:
        """Queue one 20 ms frame (PCM16 24 kHz) of agent item ``item_id`` on the outbound track."""
        if self._closed:
            return
        self.output_track.enqueue(self._up.process(frame), item_id, item_ms)

    async def clear(self) -> None:
        """Drop all queued agent audio at once and tell the page (``clear``)."""
        dropped = self.output_track.clear()
        self._up.reset()
        self.log.info("webrtc.cleared", dropped_frames=dropped, heard=self.output_track.last_item)
        self._send_json(protocol.clear())

    async def send_control(self, message: dict[str, Any]) -> None:
        """The data-channel form of a call control message (:func:`bridges.browser.protocol.from_control`)."""
        wire = protocol.from_control(message, call_id=self.call_id, agent=self.agent)
        if wire is None:
            return
        if wire["type"] == "call.started":
            wire = {**wire, "audio": dict(WEBRTC_AUDIO), "transport": "webrtc"}
        elif wire["type"] == "call.ended":
            if self._ended_sent:
                return
            self._ended_sent = True
        self._send_json(wire)

    async def send_error(self, code: str, message: str) -> None:
        """An ``error`` message to the page (the call goes on)."""
        self._send_json(protocol.error(code, message))

    async def send_dtmf(self, digits: str) -> None:
        raise LocalProtocolError("a WebRTC leg has no native DTMF; play the tones in-band")

    async def transfer(self, target: str) -> None:
        raise LocalProtocolError("a WebRTC leg cannot be transferred")

    async def hangup(self, reason: str) -> None:
        """Send ``call.ended`` (once; waiting up to a second for a data channel that is about to open), let
        the channel drain briefly, close the peer connection."""
        if self._closed:
            return
        if not self._ended_sent:
            self._ended_sent = True
            self._send_json(protocol.call_ended(reason, self.call_id))
        if self._pending and self._connected.is_set() and not self._ended.is_set():
            with contextlib.suppress(TimeoutError):  # the page's channel is about to open: say goodbye
                async with asyncio.timeout(_DRAIN_S):
                    await self._channel_open.wait()
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            drained = asyncio.Event()
            channel.on("bufferedamountlow", drained.set)  # emitted when bufferedAmount falls to 0
            if channel.bufferedAmount > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_DRAIN_S):
                        await drained.wait()
            await asyncio.sleep(0.05)  # the last SCTP chunk on its way
        await self.close()

    async def close(self) -> None:
        """Stop everything and close the peer connection (idempotent; ends :meth:`events`)."""
        if self._closed:
            return
        self._closed = True
        self._end("closed")
        self.output_track.stop()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self.pc.close()
        except Exception as exc:  # closing a connection we are abandoning: nothing else to do
            self.log.info("webrtc.close_failed", error=repr(exc))
        self.log.info(
            "webrtc.closed",
            frames_sent=self.output_track.frames_sent,
            agent_frames=self.output_track.agent_frames_sent,
            caller_ms=self.media_ms,
        )

    # -- sending --------------------------------------------------------------------------------------

    def _send_json(self, message: Mapping[str, Any]) -> None:
        text = _encode(message)
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            try:
                channel.send(text)
            except Exception as exc:  # aiortc raises InvalidStateError once the channel closes
                self.log.info("webrtc.send_failed", error=repr(exc))
            return
        if self._closed or (channel is not None and channel.readyState == "closed"):
            return
        if len(self._pending) < _MAX_PENDING_CONTROL:
            self._pending.append(text)

    def _flush_pending(self) -> None:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        self._channel_open.set()
        pending, self._pending = self._pending, []
        for text in pending:
            with contextlib.suppress(Exception):
                channel.send(text)
