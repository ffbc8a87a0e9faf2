"""TwilioLeg against a real WebSocket on loopback (bridges/twilio/leg.py; protocols.md §E, §C.2).

The far end is :class:`tests.bridges.twilio.simulator.SimulatedTwilioCall`: it signs the upgrade, paces caller
media, plays our audio at real-time speed, echoes each mark only after the audio before it has played and
answers ``clear`` like Twilio. The service side is a Starlette route served by uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from structlog.testing import capture_logs
from websockets.exceptions import InvalidStatus

from bridges.base import CallerAudio, CallerDtmf, Leg, LegEvent, LegHangup, PlaybackReport
from bridges.twilio.errors import InvalidTransferTarget, StreamStartError
from bridges.twilio.leg import MARK_EVERY_FRAMES, TwilioLeg
from bridges.twilio.protocol import Connected, encode_message
from bridges.twilio.rest import TwilioRest
from bridges.twilio.settings import STREAM_PATH, TwilioSettings
from bridges.twilio.web import verify_websocket
from tests.bridges.twilio.fake_api import fake_twilio_api
from tests.bridges.twilio.simulator import SimulatedTwilioCall
from voice.audio.dtmf import DtmfDetector
from voice.audio.g711 import ulaw_decode, ulaw_encode
from voice.errors import LocalProtocolError
from voice.wsprotocol import StreamingWSProtocol

TOKEN = "leg-test-auth-token"
PUBLIC = "https://voice.example.com"
SIGNED_WSS = "wss://voice.example.com/twilio/stream"
ACCOUNT = "AC" + "ab" * 16

E = TypeVar("E", bound=LegEvent)


@dataclass
class Harness:
    """The service side: one route that validates the upgrade and opens a TwilioLeg per stream."""

    url: str
    settings: TwilioSettings
    options: dict[str, Any] = field(default_factory=dict)
    legs: asyncio.Queue[TwilioLeg] = field(default_factory=asyncio.Queue)
    start_errors: list[StreamStartError] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    collectors: list[Collector] = field(default_factory=list)

    def collect(self, leg: TwilioLeg) -> Collector:
        """Start reading the leg's events (kept until the end of the test)."""
        collector = Collector(leg)
        self.collectors.append(collector)
        return collector

    async def endpoint(self, websocket: WebSocket) -> None:
        if not verify_websocket(websocket, self.settings).ok:
            await websocket.close(code=1008)
            return
        options = dict(self.options)
        timeout = options.pop("start_timeout_s", 5.0)
        try:
            leg = await TwilioLeg.open(websocket, start_timeout_s=timeout, **options)
        except StreamStartError as exc:
            self.start_errors.append(exc)
            return
        await self.legs.put(leg)
        await self.release.wait()

    def caller(self, **kwargs: Any) -> SimulatedTwilioCall:
        kwargs.setdefault("auth_token", TOKEN)
        kwargs.setdefault("signed_url", SIGNED_WSS)
        kwargs.setdefault("account_sid", ACCOUNT)
        return SimulatedTwilioCall(self.url, **kwargs)

    async def call(self, **kwargs: Any) -> tuple[SimulatedTwilioCall, TwilioLeg]:
        sim = self.caller(**kwargs)
        await sim.connect()
        await sim.start()
        leg = await asyncio.wait_for(self.legs.get(), 5)
        return sim, leg


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """The service side on uvicorn's default WebSocket protocol (no direct channel: the ASGI path)."""
    async with _serve("auto") as h:
        yield h


@pytest.fixture
async def direct_harness() -> AsyncIterator[Harness]:
    """The service side on the service's own protocol, which offers the direct channel."""
    async with _serve(StreamingWSProtocol) as h:
        yield h


@contextlib.asynccontextmanager
async def _serve(ws: Any) -> AsyncIterator[Harness]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = TwilioSettings(account_sid=ACCOUNT, auth_token=TOKEN, public_url=PUBLIC)
    h = Harness(url=f"ws://127.0.0.1:{port}{STREAM_PATH}", settings=settings)
    app = Starlette(routes=[WebSocketRoute(STREAM_PATH, h.endpoint)])
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=2, ws=ws,
        ws_per_message_deflate=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event
            await asyncio.sleep(0.01)
    try:
        yield h
    finally:
        h.release.set()
        for collector in h.collectors:
            collector.task.cancel()
        server.should_exit = True
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        sock.close()


class Collector:
    """Runs ``leg.events()`` and keeps every event with the loop time it arrived."""

    def __init__(self, leg: TwilioLeg) -> None:
        self.leg = leg
        self.events: list[tuple[float, LegEvent]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        async for event in self.leg.events():
            self.events.append((loop.time(), event))

    def of(self, kind: type[E]) -> list[E]:
        return [event for _, event in self.events if isinstance(event, kind)]

    def timed(self, kind: type[E]) -> list[tuple[float, E]]:
        return [(t, event) for t, event in self.events if isinstance(event, kind)]

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 5.0) -> None:
        async with asyncio.timeout(within_s):
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.005)

    async def finished(self, within_s: float = 5.0) -> None:
        await asyncio.wait_for(self.task, within_s)


async def pace(leg: TwilioLeg, frames: list[bytes], item_id: str, *, start_ms: int = 0) -> float:
    """Play ``frames`` one per 20 ms (the call's pacer); returns the loop time of the first."""
    loop = asyncio.get_running_loop()
    first = deadline = loop.time()
    for k, frame in enumerate(frames):
        await leg.play(frame, item_id, start_ms + 20 * (k + 1))
        deadline += 0.020
        await asyncio.sleep(max(0.0, deadline - loop.time()))
    return first


def distinct_frames(count: int, seed: int = 0) -> list[bytes]:
    return [bytes((seed + k * 7 + i) % 256 for i in range(160)) for k in range(count)]


# Setup ---------------------------------------------------------------------------------------------------


async def test_open_reads_start_and_exposes_metadata(harness: Harness) -> None:
    params = {"agent": "restaurant", "direction": "outbound", "from": "+15559870000", "to": "+15551230000",
              "call_id": "call_Abc123"}  # fmt: skip
    sim, leg = await harness.call(custom_parameters=params, continuous_media=False)
    try:
        assert isinstance(leg, Leg)
        assert leg.call_id == "call_Abc123"  # pre-assigned by our own TwiML
        assert leg.kind == "twilio" and leg.codec == "pcmu"
        assert leg.capabilities.codecs == ("pcmu",)
        assert leg.capabilities.reports_playback and not leg.capabilities.can_transfer
        assert leg.call_sid == sim.call_sid and leg.stream_sid == sim.stream_sid
        assert leg.custom_parameters == params
        assert leg.metadata["caller"] == "+15559870000" and leg.metadata["callee"] == "+15551230000"
        assert leg.metadata["agent"] == "restaurant" and leg.metadata["account_sid"] == ACCOUNT
    finally:
        await sim.close()


async def test_call_id_parameter_must_look_like_ours(harness: Harness) -> None:
    sim, leg = await harness.call(custom_parameters={"call_id": "../../etc"}, continuous_media=False)
    try:
        assert leg.call_id.startswith("call_") and leg.call_id != "../../etc"
    finally:
        await sim.close()


async def test_unsigned_or_badly_signed_upgrade_is_refused_with_403(harness: Harness) -> None:
    for sim in (
        harness.caller(auth_token=None),
        harness.caller(auth_token="not-the-token"),
        harness.caller(signed_url="wss://voice.example.com/elsewhere"),
    ):
        with pytest.raises(InvalidStatus) as info:
            await sim.connect()
        assert info.value.response.status_code == 403
    assert harness.legs.empty()


async def test_start_that_never_comes_closes_the_socket(harness: Harness) -> None:
    harness.options["start_timeout_s"] = 0.3
    sim = harness.caller()
    await sim.connect()
    await sim.send_raw(encode_message(Connected()))
    await asyncio.wait_for(sim.closed.wait(), 3)
    assert sim.close_code == 1008
    assert len(harness.start_errors) == 1 and "no start" in str(harness.start_errors[0])
    await sim.close()


async def test_stop_before_start(harness: Harness) -> None:
    sim = harness.caller()
    await sim.connect()
    await sim.stop()
    await asyncio.sleep(0.2)
    assert len(harness.start_errors) == 1
    assert harness.legs.empty()


async def test_media_before_start_is_logged_and_dropped(harness: Harness) -> None:
    sim = harness.caller(continuous_media=False)
    with capture_logs() as logs:
        await sim.connect()
        await sim.send_media(b"\xff" * 160)
        await sim.press("1")
        await sim.send_raw("{broken")
        await sim.start()
        leg = await asyncio.wait_for(harness.legs.get(), 5)
    try:
        assert leg.problems.by_reason == {"before_start": 2, "malformed_json": 1}
        bad = [entry for entry in logs if entry["event"] == "twilio.bad_message"]
        assert len(bad) == 3 and all(entry["call_id"].startswith("call_") for entry in bad)
        collector = harness.collect(leg)
        await sim.send_media(b"\x01" * 160)
        await collector.wait_for(lambda: len(collector.of(CallerAudio)) == 1)
    finally:
        await sim.close()


# Inbound -------------------------------------------------------------------------------------------------


async def test_caller_audio_and_dtmf_pass_through(harness: Harness) -> None:
    sim, leg = await harness.call(continuous_media=False)
    collector = harness.collect(leg)
    frames = distinct_frames(5, seed=3)
    for k, frame in enumerate(frames):
        await sim.send_media(frame, timestamp_ms=20 * k)
    await sim.press("5")
    await sim.press("#")
    await collector.wait_for(lambda: len(collector.of(CallerDtmf)) == 2)
    audio = collector.of(CallerAudio)
    assert [a.audio for a in audio] == frames  # µ-law byte for byte, no transcoding
    assert [a.media_ms for a in audio] == [0, 20, 40, 60, 80]
    assert collector.of(CallerDtmf) == [CallerDtmf("5", 80), CallerDtmf("#", 80)]
    assert leg.frames_in == 5 and leg.media_ms == 80
    await sim.close()


async def test_continuous_caller_media_arrives_in_real_time(harness: Harness) -> None:
    sim, leg = await harness.call()
    collector = harness.collect(leg)
    speech = ulaw_encode(b"\x00\x10" * 2400)  # 300 ms
    sim.say(speech)
    await collector.wait_for(lambda: len(collector.of(CallerAudio)) >= 40)
    timed = collector.timed(CallerAudio)[:40]
    assert all(len(event.audio) == 160 for _, event in timed)
    span = timed[-1][0] - timed[0][0]
    assert 0.6 < span < 1.2  # 39 frame periods of 20 ms
    stamps = [event.media_ms for _, event in timed]
    assert stamps == sorted(stamps)
    assert speech in b"".join(event.audio for _, event in timed)
    await sim.close()


async def test_stop_ends_the_events_with_caller_hangup(harness: Harness) -> None:
    sim, leg = await harness.call()
    collector = harness.collect(leg)
    await asyncio.sleep(0.1)
    await sim.stop()
    await collector.finished()
    assert collector.events[-1][1] == LegHangup("caller_hangup")
    assert leg.closed
    await leg.hangup("after stop")  # idempotent, no error


async def test_closed_socket_ends_the_events_with_disconnected(harness: Harness) -> None:
    sim, leg = await harness.call()
    collector = harness.collect(leg)
    await asyncio.sleep(0.1)
    await sim.close()
    await collector.finished()
    assert collector.events[-1][1] == LegHangup("disconnected")


async def test_bad_messages_are_logged_with_the_call_id_and_the_call_goes_on(harness: Harness) -> None:
    sim, leg = await harness.call(continuous_media=False)
    collector = harness.collect(leg)
    sid = sim.stream_sid
    with capture_logs() as logs:
        await sim.send_raw("{not json")
        await sim.send_raw(b"\x00\x01\x02")
        await sim.send_raw(json.dumps({"event": "transcription", "streamSid": sid, "text": "hello"}))
        media = {
            "event": "media",
            "streamSid": sid,
            "media": {"chunk": "1", "timestamp": "0", "payload": "!!"},
        }
        await sim.send_raw(json.dumps(media))
        media_other = {"event": "media", "streamSid": "MZother",
                       "media": {"chunk": "2", "timestamp": "20", "payload": "/w=="}}  # fmt: skip
        await sim.send_raw(json.dumps(media_other))
        await sim.send_raw(json.dumps({"event": "dtmf", "streamSid": sid, "dtmf": {"digit": "55"}}))
        await sim.send_raw(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "not-ours"}}))
        await sim.send_raw(json.dumps({"event": "media", "streamSid": sid}))
        await sim.send_raw(encode_message(Connected()))
        await sim.send_media(b"\x7f" * 160, timestamp_ms=40)
        await collector.wait_for(lambda: len(collector.of(CallerAudio)) == 1)
    assert collector.of(CallerAudio) == [CallerAudio(b"\x7f" * 160, 40)]
    assert [type(event) for _, event in collector.events] == [CallerAudio]
    assert leg.problems.by_reason == {
        "malformed_json": 1,
        "binary_frame": 1,
        "bad_base64": 1,
        "wrong_stream": 1,
        "bad_digit": 1,
        "missing_field": 1,
    }
    bad = [entry for entry in logs if entry["event"] == "twilio.bad_message"]
    assert len(bad) == 6 and {entry["call_id"] for entry in bad} == {leg.call_id}
    unknown = [entry for entry in logs if entry["event"] == "twilio.unknown_event"]
    assert unknown and unknown[0]["twilio_event"] == "transcription" and unknown[0]["call_id"] == leg.call_id
    await sim.close()


# Outbound: play, marks, clear ----------------------------------------------------------------------------


async def test_play_sends_media_with_a_mark_every_few_frames_and_reports_playback_in_real_time(
    harness: Harness,
) -> None:
    assert MARK_EVERY_FRAMES == 5
    sim, leg = await harness.call(continuous_media=False)
    collector = harness.collect(leg)
    frames = distinct_frames(23)
    first = await pace(leg, frames, "item_a")
    leg.audio_stopped()  # the call's pacer tick says so when it has no frame
    # Marks after frames 5, 10, 15, 20 and, once the audio has stopped, after the last one (23).
    await collector.wait_for(lambda: len(collector.of(PlaybackReport)) == 5)
    assert sim.heard_audio() == b"".join(frames)
    assert sim.protocol_errors == []
    assert len(sim.marks_received) == 5 and len(sim.media_received) == 23
    reports = collector.timed(PlaybackReport)
    assert [r.played_ms for _, r in reports] == [100, 200, 300, 400, 460]
    assert {r.item_id for _, r in reports} == {"item_a"}
    for t, report in reports:  # nothing is reported before it can have been heard
        assert t >= first + report.played_ms / 1000 - 0.005
    assert reports[-1][0] - first < 0.46 + 0.25
    assert leg.marks.outstanding == 0 and leg.marks.sent_ms == 460
    assert leg.heard_now() == ("item_a", 460)


async def test_heard_now_interpolates_between_marks_and_never_runs_ahead(harness: Harness) -> None:
    sim, leg = await harness.call(continuous_media=False)
    harness.collect(leg)
    loop = asyncio.get_running_loop()
    deadline = loop.time()
    samples: list[tuple[int, int]] = []
    for k, frame in enumerate(distinct_frames(40)):
        await leg.play(frame, "item_a", 20 * (k + 1))
        heard = leg.heard_now()
        if heard is not None and k > 10:
            samples.append((heard[1], sim.heard_ms()))
        deadline += 0.020
        await asyncio.sleep(max(0.0, deadline - loop.time()))
    assert len(samples) >= 25
    for ours, played in samples:
        # Never more than the caller can have heard (the simulator counts a frame once it has played it
        # through, so it is up to a frame behind, plus its own timer's lateness), nor far behind it.
        assert ours <= played + 30
        assert ours >= played - 60
    await sim.close()


async def test_audio_of_another_item_first_marks_the_end_of_the_previous_one(harness: Harness) -> None:
    sim, leg = await harness.call(continuous_media=False)
    collector = harness.collect(leg)
    await pace(leg, distinct_frames(3), "item_a")
    await pace(leg, distinct_frames(2, seed=3), "item_b")
    leg.audio_stopped()
    await collector.wait_for(lambda: len(collector.of(PlaybackReport)) == 2)
    reports = collector.of(PlaybackReport)
    assert [(r.item_id, r.played_ms) for r in reports] == [("item_a", 60), ("item_b", 40)]
    assert sim.protocol_errors == []
    await sim.close()


async def test_burst_of_audio_plays_at_real_time_speed(harness: Harness) -> None:
    sim, leg = await harness.call(continuous_media=False)
    collector = harness.collect(leg)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for k, frame in enumerate(distinct_frames(20)):
        await leg.play(frame, "item_a", 20 * (k + 1))  # all at once: Twilio queues it
    assert leg.marks.remaining_ms(int(loop.time() * 1000)) > 300
    await collector.wait_for(lambda: len(collector.of(PlaybackReport)) == 20 // MARK_EVERY_FRAMES)
    assert loop.time() - start >= 0.39
    await sim.close()


async def test_clear_drops_queued_audio_and_flushed_marks_report_nothing(harness: Harness) -> None:
    sim, leg = await harness.call(continuous_media=False)
    collector = harness.collect(leg)
    frames = distinct_frames(50)
    for k, frame in enumerate(frames):
        await leg.play(frame, "item_a", 20 * (k + 1))  # 1 s queued at Twilio
    await asyncio.sleep(0.3)
    await leg.clear()
    await sim.wait_for(lambda: len(sim.clears) == 1)
    await sim.wait_for(lambda: len(sim.marks_echoed) == 50 // MARK_EVERY_FRAMES)
    await asyncio.sleep(0.1)
    heard_ms = sim.heard_ms()
    assert 200 <= heard_ms <= 400
    assert sim.heard_audio() == b"".join(frames)[: heard_ms * 8]
    cleared = [m for m in sim.marks_echoed if m.cleared]
    assert len(cleared) == 10 - heard_ms // 100
    assert leg.marks.awaiting_clear_echoes == 0  # unmarked frames were not waited for
    reports = collector.of(PlaybackReport)
    assert reports and max(r.played_ms for r in reports) <= heard_ms
    assert abs(leg.marks.sent_ms - heard_ms) <= 60  # the clock froze where the caller stopped hearing
    # The stream goes on: a new item plays and reports from its start.
    await pace(leg, distinct_frames(7, seed=9), "item_b")
    leg.audio_stopped()
    await collector.wait_for(
        lambda: any(r.item_id == "item_b" and r.played_ms == 140 for r in collector.of(PlaybackReport))
    )
    assert [r.played_ms for r in collector.of(PlaybackReport) if r.item_id == "item_b"] == [100, 140]
    assert sim.protocol_errors == []
    await sim.close()


# Outbound: DTMF ------------------------------------------------------------------------------------------


def detect(ulaw: bytes) -> str:
    detector = DtmfDetector(8000)
    found = detector.push(ulaw_decode(ulaw) + b"\x00\x00" * 1600)
    return "".join(d.digit for d in found)


async def test_send_dtmf_plays_exact_tone_pairs_paced_with_agent_frames(harness: Harness) -> None:
    sim, leg = await harness.call(continuous_media=False)
    collector = harness.collect(leg)
    await leg.send_dtmf("159#")
    agent = distinct_frames(10, seed=5)
    await pace(leg, agent, "item_a")  # the agent keeps talking meanwhile: its frames queue behind the tones
    await leg.wait_dtmf_sent()
    await sim.wait_idle()
    tone_frames = 4 * (100 + 60) // 20
    assert len(sim.media_received) == tone_frames + 10
    arrival = [t for t, _ in sim.media_received]
    gaps = [b - a for a, b in itertools.pairwise(arrival)]
    assert arrival[-1] - arrival[0] >= 0.020 * (len(arrival) - 1) - 0.05  # real time, not a burst
    assert max(gaps) < 0.1
    heard = sim.heard_audio()
    assert detect(heard[: tone_frames * 160]) == "159#"
    assert heard[tone_frames * 160 :] == b"".join(agent)
    await collector.wait_for(lambda: len(collector.of(PlaybackReport)) == 2)
    assert [r.played_ms for r in collector.of(PlaybackReport)] == [100, 200]
    assert len(sim.marks_received) == tone_frames + 2  # each tone frame is marked
    assert sim.protocol_errors == []
    await sim.close()


async def test_send_dtmf_every_key_and_refusals(harness: Harness) -> None:
    sim, leg = await harness.call(continuous_media=False)
    harness.collect(leg)  # keep reading: the close handshake needs a reader
    leg.dtmf_on_ms, leg.dtmf_off_ms = 60, 40
    await leg.send_dtmf("0123456789*#ABCD")
    await leg.wait_dtmf_sent()
    await sim.wait_idle()
    assert detect(sim.heard_audio()) == "0123456789*#ABCD"
    with pytest.raises(LocalProtocolError):
        await leg.send_dtmf("12x")
    await leg.send_dtmf("")  # nothing to do
    await sim.close()


# Transfer and hang-up ------------------------------------------------------------------------------------


async def test_transfer_updates_the_call_with_dial_twiml(harness: Harness) -> None:
    with fake_twilio_api() as api:
        harness.options["rest"] = TwilioRest(ACCOUNT, TOKEN, api_base=api.base_url)
        harness.options["transfer_caller_id"] = "+15559870000"
        sim, leg = await harness.call()
        collector = harness.collect(leg)
        assert leg.capabilities.can_transfer
        await leg.transfer("+1 555 000 1111")
        (request,) = api.requests
        assert request.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{sim.call_sid}.json"
        twiml = request.field("Twiml") or ""
        assert (
            '<Dial answerOnBridge="true" callerId="+15559870000"><Number>+15550001111</Number></Dial>'
            in twiml
        )
        with pytest.raises(InvalidTransferTarget):
            await leg.transfer("somewhere")
        await sim.stop()  # Twilio ends the stream when the call's TwiML changes
        await collector.finished()
        assert collector.events[-1][1] == LegHangup("transferred")


async def test_transfer_refused_by_twilio_is_not_marked_transferred(harness: Harness) -> None:
    with fake_twilio_api() as api:
        harness.options["rest"] = TwilioRest(ACCOUNT, TOKEN, api_base=api.base_url)
        sim, leg = await harness.call()
        collector = harness.collect(leg)
        api.respond(
            400, {"code": 21220, "message": "Call is not in-progress. Cannot redirect.", "status": 400}
        )
        with pytest.raises(Exception, match="21220"):
            await leg.transfer("+15550001111")
        await sim.stop()
        await collector.finished()
        assert collector.events[-1][1] == LegHangup("caller_hangup")


async def test_transfer_without_rest_client(harness: Harness) -> None:
    sim, leg = await harness.call()
    harness.collect(leg)  # keep reading: the close handshake needs a reader
    with pytest.raises(LocalProtocolError):
        await leg.transfer("+15550001111")
    await sim.close()


async def test_hangup_lets_sent_audio_play_then_closes(harness: Harness) -> None:
    sim, leg = await harness.call(continuous_media=False)
    collector = harness.collect(leg)
    for k, frame in enumerate(distinct_frames(10)):
        await leg.play(frame, "item_a", 20 * (k + 1))  # 200 ms queued
    loop = asyncio.get_running_loop()
    start = loop.time()
    await leg.hangup("agent_hangup")
    assert 0.15 <= loop.time() - start <= 0.6
    await asyncio.wait_for(sim.closed.wait(), 3)
    assert sim.close_code == 1000
    await collector.finished()
    assert collector.events[-1][1] == LegHangup("agent_hangup")
    await leg.play(b"\xff" * 160, "item_b", 20)  # after the end: dropped quietly
    await leg.clear()
    await sim.close()


async def test_send_control_is_a_no_op(harness: Harness) -> None:
    sim, leg = await harness.call(continuous_media=False)
    await leg.send_control({"type": "transcript", "delta": "hi"})
    await asyncio.sleep(0.05)
    assert sim.media_received == [] and sim.protocol_errors == []
    await sim.close()


# The direct path (the service's own WebSocket protocol) -----------------------------------------------------


async def test_direct_path_hands_events_over_as_they_arrive_and_hangup_still_comes_through_events(
    direct_harness: Harness,
) -> None:
    sim, leg = await direct_harness.call(continuous_media=False)
    collector = direct_harness.collect(leg)
    direct: list[tuple[float, LegEvent]] = []
    loop = asyncio.get_running_loop()
    leg.listen(lambda event: direct.append((loop.time(), event)))
    for k in range(5):
        await sim.send_media(bytes([k]) * 160)
    await sim.press("7")
    await sim.send_raw("{not json")  # dropped and counted, from the direct path too
    for k, frame in enumerate(distinct_frames(MARK_EVERY_FRAMES)):
        assert leg.play_now(frame, "item_a", 20 * (k + 1))
    await sim.wait_for(lambda: len(sim.marks_echoed) == 1)
    await asyncio.sleep(0.05)
    kinds = [type(event) for _, event in direct]
    assert kinds.count(CallerAudio) == 5 and kinds.count(CallerDtmf) == 1
    audio = [event.audio for _, event in direct if isinstance(event, CallerAudio)]
    assert audio == [bytes([k]) * 160 for k in range(5)]
    assert [e for _, e in direct if isinstance(e, PlaybackReport)] == [PlaybackReport("item_a", 100)]
    assert len(sim.media_received) == MARK_EVERY_FRAMES and len(sim.marks_received) == 1
    assert sim.heard_audio() == b"".join(distinct_frames(MARK_EVERY_FRAMES))
    assert leg.problems.by_reason.get("malformed_json") == 1
    assert collector.events == []  # nothing went the slow way
    await sim.stop()
    await collector.wait_for(lambda: bool(collector.of(LegHangup)))
    assert collector.of(LegHangup) == [LegHangup("caller_hangup")]
    assert not leg.play_now(distinct_frames(1)[0], "item_a", 120)  # closed: the caller must use play()


async def test_play_now_declines_while_tones_are_queued_and_order_is_kept(direct_harness: Harness) -> None:
    sim, leg = await direct_harness.call(continuous_media=False)
    direct_harness.collect(leg)
    await leg.send_dtmf("5")
    frames = distinct_frames(3, seed=4)
    for k, frame in enumerate(frames):
        if not leg.play_now(frame, "item_a", 20 * (k + 1)):
            await leg.play(frame, "item_a", 20 * (k + 1))  # the call's fallback
    await leg.wait_dtmf_sent()
    tone_frames = (100 + 60) // 20
    await sim.wait_for(lambda: len(sim.heard_audio()) >= (tone_frames + len(frames)) * 160)
    heard = sim.heard_audio()
    assert detect(heard[: tone_frames * 160]) == "5"
    assert heard[tone_frames * 160 :] == b"".join(frames)  # the agent's frames after the tones, in order
    assert sim.protocol_errors == []
    await sim.close()


async def test_without_audio_stopped_the_last_frames_stay_unmarked_and_a_second_call_sends_nothing(
    harness: Harness,
) -> None:
    sim, leg = await harness.call(continuous_media=False)
    harness.collect(leg)
    await pace(leg, distinct_frames(7), "item_a")
    await asyncio.sleep(0.25)
    assert len(sim.marks_received) == 1  # after frame 5 only
    leg.audio_stopped()
    await sim.wait_for(lambda: len(sim.marks_received) == 2)
    leg.audio_stopped()  # nothing pending now
    await asyncio.sleep(0.1)
    assert len(sim.marks_received) == 2
    await sim.close()
