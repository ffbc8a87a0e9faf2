"""In-process WebRTC pairs on loopback: a :class:`WebRTCLeg` on one aiortc peer connection and a
:class:`WebRTCCaller` (microphone track + ``control`` data channel) on another, both pinned to 127.0.0.1, with
the leg's events collected as they come. No HTTP: the offer and answer are exchanged directly."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection
from av import AudioFrame

from bridges.base import CallerAudio, LegEvent
from bridges.webrtc.caller import SpeechTrack, WebRTCCaller
from bridges.webrtc.leg import WebRTCLeg
from bridges.webrtc.settings import WebRTCSettings
from bridges.webrtc.signaling import answer_offer, rtc_configuration

LOOPBACK = WebRTCSettings(host_addresses=["127.0.0.1"])


class StallingMic(SpeechTrack):
    """A microphone whose packets stop (the network went away) once ``stall`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.stall = asyncio.Event()

    async def recv(self) -> AudioFrame:
        if self.stall.is_set():
            await asyncio.Event().wait()
        return await super().recv()


@dataclass
class Pair:
    """A connected leg and caller; ``events`` fills with the leg's events (and their arrival times)."""

    leg: WebRTCLeg
    caller: WebRTCCaller
    events: list[LegEvent] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def caller_audio(self) -> bytes:
        return b"".join(e.audio for e in self.of(CallerAudio))

    async def until(self, predicate: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        async with asyncio.timeout(timeout_s):
            while True:
                value = predicate()
                if value:
                    return value
                await asyncio.sleep(0.02)


async def _collect(pair: Pair) -> None:
    async for event in pair.leg.events():
        pair.events.append(event)
        pair.times.append(time.monotonic())


@contextlib.asynccontextmanager
async def connected_pair(
    *, caller: WebRTCCaller | None = None, settings: WebRTCSettings = LOOPBACK, **leg_options: Any
) -> AsyncIterator[Pair]:
    """Answer a caller's offer with a fresh leg and wait until both sides are connected."""
    pc = RTCPeerConnection(rtc_configuration(settings))
    leg = WebRTCLeg(pc, agent="restaurant", **leg_options)
    peer = caller or WebRTCCaller("http://127.0.0.1:9")
    pair = Pair(leg, peer)
    try:
        offer = peer.pc.localDescription
        if offer is None:
            await peer.offer_sdp()
            offer = peer.pc.localDescription
        assert offer is not None
        answer = await answer_offer(pc, offer, leg, settings)
        await peer.accept_answer(answer.sdp)
        assert await leg.wait_connected(10) is None
        await peer.wait_connected(10)
        pair.reader = asyncio.create_task(_collect(pair))
        yield pair
    finally:
        await peer.close()
        await leg.close()
        if pair.reader is not None:
            pair.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pair.reader
