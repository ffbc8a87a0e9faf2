"""An in-process WebRTC caller (aiortc): what a browser page does, in Python.

:class:`WebRTCCaller` creates a peer connection with a microphone track (:class:`SpeechTrack`: queued PCM at
48 kHz, paced in real time, silence in between - a microphone never stops) and the ``control`` data channel,
gathers its candidates, posts the offer to ``/webrtc/offer`` (with ``agent``, ``token`` and an ``Origin``
like a page would), applies the answer and waits for the connection. It records everything the service sends
(data-channel messages with their arrival times, the agent's audio as 20 ms RMS values and optionally the
PCM itself) and can press keys (data channel), hang up politely or go away abruptly.

Used by the tests and ``voice bench webrtc``; also handy to smoke-test a deployment. ``host_addresses``
pins the caller's own host candidates (``["127.0.0.1"]`` keeps a test on loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Final

import httpx
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from bridges.webrtc.leg import CONTROL_LABEL, FRAME_BYTES, FRAME_S, FRAME_SAMPLES, TRACK_RATE, mono_pcm16_48k
from bridges.webrtc.signaling import pinned_host_addresses

__all__ = ["CallerError", "SpeechTrack", "WebRTCCaller"]

_TIME_BASE: Final = Fraction(1, TRACK_RATE)


class CallerError(Exception):
    """The call could not be placed: ``status`` is the HTTP status (0: the connection failed)."""

    def __init__(self, message: str, *, status: int = 0, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class SpeechTrack(MediaStreamTrack):
    """A microphone: queued PCM16 mono 48 kHz (:meth:`say`) paced at 20 ms per frame, silence otherwise."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._frames: deque[bytes] = deque()
        self._start: float | None = None
        self._index = 0
        self.sent_speech: list[float] = []
        """``time.monotonic()`` at which each queued (speech) frame left."""

    def say(self, pcm: bytes) -> float:
        """Queue ``pcm`` (mono 48 kHz); returns the estimated time its first frame leaves."""
        ahead = len(self._frames)
        for start in range(0, len(pcm), FRAME_BYTES):
            chunk = pcm[start : start + FRAME_BYTES]
            self._frames.append(chunk + bytes(FRAME_BYTES - len(chunk)))
        return time.monotonic() + ahead * FRAME_S

    @property
    def speaking(self) -> bool:
        """Queued speech is still being sent."""
        return bool(self._frames)

    async def recv(self) -> AudioFrame:
        """The next 20 ms microphone frame, on absolute deadlines."""
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            wait = self._start + self._index * FRAME_S - now
            if wait > 0:
                await asyncio.sleep(wait)
        pcm = bytes(FRAME_BYTES)
        if self._frames:
            pcm = self._frames.popleft()
            self.sent_speech.append(time.monotonic())
        frame = AudioFrame.from_ndarray(
            np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = TRACK_RATE
        frame.pts = self._index * FRAME_SAMPLES
        frame.time_base = _TIME_BASE
        self._index += 1
        return frame


@dataclass
class ReceivedAudio:
    """The agent's audio as the caller received it: per-frame RMS (0..1) with arrival times."""

    keep_pcm: bool = True
    times: list[float] = field(default_factory=list)
    rms: list[float] = field(default_factory=list)
    pcm: bytearray = field(default_factory=bytearray)

    def add(self, t: float, pcm: bytes) -> None:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
        self.times.append(t)
        self.rms.append(float(np.sqrt(np.mean(samples * samples))) if len(samples) else 0.0)
        if self.keep_pcm:
            self.pcm += pcm

    def loud_since(self, t: float, threshold: float = 0.01) -> int:
        """Frames louder than ``threshold`` received after time ``t``."""
        return sum(1 for ti, r in zip(self.times, self.rms, strict=True) if ti >= t and r > threshold)

    def last_loud(self, threshold: float = 0.01) -> float | None:
        """Arrival time of the last frame louder than ``threshold``."""
        for ti, r in zip(reversed(self.times), reversed(self.rms), strict=True):
            if r > threshold:
                return ti
        return None


class WebRTCCaller:
    """One WebRTC caller (see the module docstring): :meth:`call`, then :meth:`hangup` or :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        *,
        agent: str | None = None,
        token: str | None = None,
        origin: str | None = None,
        host_addresses: Sequence[str] | None = ("127.0.0.1",),
        ice_servers: Sequence[RTCIceServer] = (),
        data_channel: bool = True,
        keep_pcm: bool = True,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.agent = agent
        self.token = token
        self.origin = origin
        self.host_addresses = list(host_addresses) if host_addresses else None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers)))
        self.mic = SpeechTrack()
        self.pc.addTrack(self.mic)
        self.channel: RTCDataChannel | None = None
        if data_channel:
            self.channel = self.pc.createDataChannel(CONTROL_LABEL)
            self.channel.on("message", self._on_message)
        self.audio = ReceivedAudio(keep_pcm=keep_pcm)
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.call_id: str | None = None
        self.answer_sdp: str | None = None
        self.changed = asyncio.Event()
        self._http = http
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    # -- placing the call -----------------------------------------------------------------------------

    def _params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.agent:
            params["agent"] = self.agent
        if self.token:
            params["token"] = self.token
        return params

    async def offer_sdp(self) -> str:
        """Create the offer and gather candidates (on the pinned addresses): the complete offer SDP."""
        with pinned_host_addresses(self.host_addresses):
            await self.pc.setLocalDescription(await self.pc.createOffer())
        local = self.pc.localDescription
        assert local is not None
        return local.sdp

    async def post_offer(self, sdp: str, *, kind: str = "offer") -> httpx.Response:
        """POST an offer body as a page would (raw: for tests of refusals)."""
        headers = {"Origin": self.origin} if self.origin else {}
        body = json.dumps({"sdp": sdp, "type": kind})
        client = self._http or httpx.AsyncClient(trust_env=False, timeout=30)
        try:
            return await client.post(
                f"{self.base_url}/webrtc/offer",
                params=self._params(),
                content=body,
                headers={**headers, "Content-Type": "application/json"},
            )
        finally:
            if self._http is None:
                await client.aclose()

    async def call(self, *, connect_timeout_s: float = 15.0) -> str:
        """Place the call and wait until the peer connection is connected; returns the call id."""
        sdp = await self.offer_sdp()
        try:
            response = await self.post_offer(sdp)
        except httpx.HTTPError as exc:
            raise CallerError(f"the offer could not be posted: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code != 200:
            raise CallerError(
                f"the offer was refused: {response.status_code} {body}",
                status=response.status_code,
                body=body,
            )
        self.call_id = str(body["call_id"])
        await self.accept_answer(str(body["sdp"]))
        await self.wait_connected(connect_timeout_s)
        return self.call_id

    async def accept_answer(self, sdp: str) -> None:
        """Apply the service's answer."""
        self.answer_sdp = sdp
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def wait_connected(self, timeout_s: float = 15.0) -> None:
        """Wait until ICE and DTLS are up (:class:`CallerError` after ``timeout_s``)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            raise CallerError(f"not connected after {timeout_s} s ({self.pc.connectionState})") from None

    # -- events ---------------------------------------------------------------------------------------

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self._connected.set()
        self.changed.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._tasks.append(asyncio.ensure_future(self._receive(track)))

    async def _receive(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if isinstance(frame, AudioFrame):
                    self.audio.add(time.monotonic(), mono_pcm16_48k(frame))

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            return
        try:
            msg = json.loads(message)
        except ValueError:
            return
        if isinstance(msg, dict):
            self.messages.append((time.monotonic(), msg))
            self.changed.set()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """The messages of one ``type`` received so far."""
        return [m for _, m in self.messages if m.get("type") == kind]

    async def wait_for(self, predicate: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        """Wait until ``predicate()`` is truthy; returns its value (TimeoutError after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            while True:
                value = predicate()
                if value:
                    return value
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self.changed.wait()

    # -- acting ---------------------------------------------------------------------------------------

    def send(self, message: dict[str, Any] | str) -> None:
        """Send a control message (a dict as JSON, a string as is)."""
        if self.channel is None or self.channel.readyState != "open":
            raise CallerError("the control channel is not open")
        self.channel.send(message if isinstance(message, str) else json.dumps(message))

    def press(self, digit: str) -> None:
        """A keypad key over the data channel."""
        self.send({"type": "dtmf", "digit": digit})

    async def hangup(self, linger_s: float = 2.0) -> None:
        """Hang up politely (``hangup`` message), wait for ``call.ended`` a little, then close."""
        if self.channel is not None and self.channel.readyState == "open":
            self.send({"type": "hangup"})
            with contextlib.suppress(TimeoutError):
                await self.wait_for(lambda: self.of_type("call.ended"), linger_s)
        await self.close()

    async def close(self) -> None:
        """Go away: close the peer connection at once (closing the tab does the same)."""
        self.mic.stop()
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
