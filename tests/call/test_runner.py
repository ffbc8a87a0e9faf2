"""CallRunner against a scripted upstream (tests/call/fakes.py): pumping, records, cost, budget, upstream
resilience, end reasons and isolation between calls. The end-to-end tests with the local engine and a
WebSocket caller are in tests/e2e/."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import wave
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection

from bridges.base import AudioCodec, CallerAudio, CallerDtmf, LegHangup
from tests.call.fakes import USAGE, FakeLeg, FakeUpstream, tone
from voice import metrics
from voice.call.agent_tools import restaurant_registry
from voice.call.cost import BUDGET_WARNING_INSTRUCTIONS
from voice.call.pacer import FramePacer
from voice.call.runner import CallRunner
from voice.call.upstream import Backoff, UpstreamOpener
from voice.config import Settings
from voice.profiles import AgentProfile, load_profile
from voice.realtime.pricing import default_price_table, price_usage
from voice.store import CallStore

REPO = Path(__file__).resolve().parents[2]
FAST_BACKOFF = Backoff(attempts=3, base_s=0.02, max_s=0.05)


@pytest.fixture
def profile() -> AgentProfile:
    return load_profile("restaurant", REPO / "prompts")


@pytest.fixture
def store(tmp_path: Path) -> AsyncIterator[CallStore]:
    s = CallStore(tmp_path / "voice.db")
    yield s
    s.close()


@pytest.fixture
async def pacer() -> AsyncIterator[FramePacer]:
    p = FramePacer()
    p.start()
    yield p
    await p.stop()


def settings_for(tmp_path: Path, url: str, **extra: Any) -> Settings:
    return Settings(upstream_url=url, recordings_dir=tmp_path / "rec", db_path=tmp_path / "voice.db", **extra)


def make_runner(
    leg: FakeLeg,
    profile: AgentProfile,
    settings: Settings,
    store: CallStore,
    pacer: FramePacer,
    **options: Any,
) -> CallRunner:
    options.setdefault("backoff", FAST_BACKOFF)
    return CallRunner(
        leg=leg,
        profile=profile,
        settings=settings,
        store=store,
        pacer=pacer,
        open_upstream=UpstreamOpener(settings),
        tools=restaurant_registry(),
        price_table=default_price_table(),
        **options,
    )


async def until(cond: Callable[[], Any], limit_s: float = 5.0) -> None:
    """Poll ``cond`` until it holds (the runner's effects have no events to wait on)."""
    async with asyncio.timeout(limit_s):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def start_live(
    leg: FakeLeg, settings: Settings, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> tuple[CallRunner, asyncio.Task[None]]:
    """A runner for ``leg`` running in a task, once its call is live."""
    runner = make_runner(leg, profile, settings, store, pacer)
    task = asyncio.create_task(runner.run())
    await until(lambda: runner.state == "live")
    return runner, task


async def pace_caller(leg: FakeLeg, audio: bytes, media_ms: Callable[[int], int] = lambda k: 20 * k) -> None:
    """Hand ``audio`` (G.711) to the call as a caller would: a 20 ms frame every 20 ms, frame ``k``
    stamped ``media_ms(k)``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for k in range(len(audio) // 160):
        leg.inbox.put_nowait(CallerAudio(audio[k * 160 : (k + 1) * 160], media_ms(k)))
        await asyncio.sleep(max(0.0, start + 0.02 * (k + 1) - loop.time()))


def read_stereo(path: Path) -> tuple[np.ndarray[Any, Any], int]:
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 2 and w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
        return data, w.getframerate()


def segments(
    channel: np.ndarray[Any, Any], rate: int, threshold: int = 500, gap_ms: int = 40
) -> list[tuple[int, int]]:
    """Runs of sound as (start_ms, end_ms), joining gaps shorter than ``gap_ms``."""
    idx = np.nonzero(np.abs(channel.astype(np.int32)) > threshold)[0]
    out: list[tuple[int, int]] = []
    for i in idx * 1000 // rate:
        if out and i - out[-1][1] <= gap_ms:
            out[-1] = (out[-1][0], int(i))
        else:
            out.append((int(i), int(i)))
    return out


def active_ms(channel: np.ndarray[Any, Any], rate: int, threshold: int = 500) -> tuple[int, int]:
    idx = np.nonzero(np.abs(channel.astype(np.int32)) > threshold)[0]
    assert len(idx), "channel is silent"
    return int(idx[0] * 1000 // rate), int(idx[-1] * 1000 // rate)


# ------------------------------------------------------------------------------------------------------------


async def test_greeting_is_played_recorded_priced_and_saved(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    async with FakeUpstream(reply_ms=400) as up:
        settings = settings_for(tmp_path, up.url)
        leg = FakeLeg("call_greet")
        runner = make_runner(leg, profile, settings, store, pacer)
        task = asyncio.create_task(runner.run())
        await until(lambda: len(leg.frames()) >= 20 and runner.core.playout.drained)
        await asyncio.sleep(0.1)
        # Caller audio arrives paced on the caller's media clock.
        speech = tone(300, freq=300.0)
        caller_t0 = asyncio.get_running_loop().time()
        for i in range(0, len(speech), 960):
            leg.inbox.put_nowait(CallerAudio(speech[i : i + 960], i // 48))
            await asyncio.sleep(0.02)
        snap = runner.snapshot()
        leg.inbox.put_nowait(LegHangup("caller_hangup"))
        reason = await asyncio.wait_for(task, 5)

    assert reason == "caller_hangup"
    assert snap["call_id"] == "call_greet" and snap["state"] == "live" and snap["agent"] == "restaurant"
    # The session follows the profile with the leg's codec as the audio format, then the greeting.
    first, second = up.received[0][1], up.received[1][1]
    assert first["type"] == "session.update"
    audio = first["session"]["audio"]
    assert audio["input"]["format"] == audio["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert {"book_table", "end_call", "transfer_call"} <= {t["name"] for t in first["session"]["tools"]}
    assert second["type"] == "response.create"
    assert up.events("input_audio_buffer.append")  # caller audio went up unchanged
    # The leg got call_start first, 20 paced frames of one item, a transcript and a cost message.
    assert leg.controls[0] == {"type": "call_start", "agent": "restaurant"}
    frames = leg.frames("item_agent_1")
    assert len(frames) == 20 and all(len(f.frame) == 960 for f in frames)
    assert [f.item_ms for f in frames] == list(range(20, 420, 20))
    span = frames[-1].t - frames[0].t
    assert 0.33 < span < 0.45  # paced in real time (19 intervals of 20 ms)
    assert {"transcript", "cost", "call_end"} <= set(leg.control_types())
    assert leg.hung_up == "caller_hangup"
    # Records: row, transcript, usage priced by the table, recording.
    call = store.get_call("call_greet")
    assert call is not None
    assert call["status"] == "ended" and call["end_reason"] == "caller_hangup"
    assert call["leg"] == "browser" and call["agent"] == "restaurant" and call["caller"] == "test:call_greet"
    kinds = [e["kind"] for e in store.transcript("call_greet")]
    assert kinds[0] == "system" and "agent" in kinds and kinds[-1] == "system"
    agent = next(e for e in store.transcript("call_greet") if e["kind"] == "agent")
    assert agent["text"] == "Answer number 1." and agent["data"]["interrupted"] is False
    (usage,) = store.usage("call_greet")
    expected = price_usage("gpt-realtime", USAGE, default_price_table()).total
    assert Decimal(usage["cost_usd"]) == expected == Decimal("0.00192")
    assert Decimal(call["cost_usd"]) == expected
    data, rate = read_stereo(Path(call["recording_path"]))
    assert rate == 24000
    a_start, a_end = active_ms(data[:, 1], rate)
    c_start, _ = active_ms(data[:, 0], rate)
    assert a_end - a_start == pytest.approx(400, abs=30)
    assert c_start > a_end  # the caller spoke after the greeting, on the same timeline
    assert c_start - a_end == pytest.approx(round((caller_t0 - frames[-1].t) * 1000) - 20, abs=30)


def _tracked_below(root: object, depth: int) -> int:
    """How many objects tracked by the garbage collector ``root`` reaches in ``depth`` steps (not itself,
    not classes)."""
    seen: set[int] = set()
    tracked = 0
    level = [root]
    for _ in range(depth):
        level = [
            r
            for obj in level
            for r in gc.get_referents(obj)
            if id(r) not in seen and gc.is_tracked(r) and not isinstance(r, type)
        ]
        seen.update(id(r) for r in level)
        tracked += len(level)
    return tracked


async def test_played_frames_are_remembered_without_an_object_per_frame_for_the_collector(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    # The runner keeps each played frame's timing for truncation and the recording. Kept as a container per
    # frame, at 200 calls that was thousands of objects a second for every young collection to walk.
    gc.disable()  # a collection would untrack tuples of ints and hide them
    try:
        async with FakeUpstream(reply_ms=1000) as up:
            leg = FakeLeg("call_gcfree")
            runner = make_runner(leg, profile, settings_for(tmp_path, up.url), store, pacer)
            task = asyncio.create_task(runner.run())
            await until(lambda: len(leg.frames("item_agent_1")) >= 40)
            kept = runner._item_frames["item_agent_1"]
            tracked = _tracked_below(kept, 3)
            leg.inbox.put_nowait(LegHangup("caller_hangup"))
            await asyncio.wait_for(task, 5)
    finally:
        gc.enable()
    assert len(kept.item_ms) >= 40
    assert tracked <= 3  # the lists themselves, none per frame


async def test_g711_leg_passes_through_without_transcoding(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    codec: AudioCodec = "pcmu"
    async with FakeUpstream(reply_ms=200, codec=codec) as up:
        settings = settings_for(tmp_path, up.url)
        leg = FakeLeg("call_ulaw", codec)
        runner = make_runner(leg, profile, settings, store, pacer)
        task = asyncio.create_task(runner.run())
        await until(lambda: len(leg.frames()) >= 10)
        caller = tone(40, codec)
        leg.inbox.put_nowait(CallerAudio(caller[:160], 0))
        leg.inbox.put_nowait(CallerAudio(caller[160:], 20))
        await until(lambda: up.events("input_audio_buffer.append"))
        leg.inbox.put_nowait(LegHangup("bye"))
        assert await asyncio.wait_for(task, 5) == "caller_hangup"
    session = up.events("session.update")[0]["session"]
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    # The leg's caller id reaches the agent, after the profile's stable instructions.
    assert session["instructions"].startswith(profile.instructions)
    assert session["instructions"].endswith("- caller: test:call_ulaw")
    assert all(len(f.frame) == 160 for f in leg.frames())
    assert b"".join(f.frame for f in leg.frames()) == tone(200, codec)  # byte for byte
    import base64

    # Two frames in one append (settings.upstream_append_ms, 40 by default), byte for byte.
    assert settings.upstream_append_ms == 40
    assert base64.b64decode(up.events("input_audio_buffer.append")[0]["audio"]) == caller
    call = store.get_call("call_ulaw")
    assert call is not None
    _, rate = read_stereo(Path(call["recording_path"]))
    assert rate == 8000


async def test_tool_call_round_trip(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    async def on_event(up: FakeUpstream, ws: ServerConnection, event: dict[str, Any]) -> None:
        if event["type"] == "conversation.item.create" and event["item"].get("type") == "message":
            await up.send(
                ws,
                "response.function_call_arguments.done",
                response_id="resp_tool",
                item_id="item_fc",
                output_index=0,
                call_id="call_tool_1",
                name="book_table",
                arguments=json.dumps({"party_size": 4, "time": "20:00", "name": "Ada"}),
            )

    async with FakeUpstream(reply_ms=0, on_event=on_event) as up:
        settings = settings_for(tmp_path, up.url)
        leg = FakeLeg("call_tool")
        runner = make_runner(leg, profile, settings, store, pacer, greeting=False)
        task = asyncio.create_task(runner.run())
        await until(lambda: up.events("session.update"))
        leg.inbox.put_nowait(CallerDtmf("1", 0))
        await until(
            lambda: any(
                e["item"].get("type") == "function_call_output" for e in up.events("conversation.item.create")
            )
        )
        await until(lambda: up.events("response.create"))
        leg.inbox.put_nowait(LegHangup("bye"))
        await asyncio.wait_for(task, 5)
    output = next(
        e["item"]
        for e in up.events("conversation.item.create")
        if e["item"]["type"] == "function_call_output"
    )
    assert output["call_id"] == "call_tool_1"
    result = json.loads(output["output"])
    assert result["name"] == "Ada" and len(result["confirmation"]) == 6
    assert {"type": "tool", "name": "book_table", "status": "running"} in leg.controls
    assert {"type": "tool", "name": "book_table", "status": "done"} in leg.controls
    kinds = [e["kind"] for e in store.transcript("call_tool")]
    assert "tool_call" in kinds and "tool_result" in kinds and "dtmf" in kinds


async def test_upstream_drop_reconnects_and_restores_the_conversation(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    before = metrics.UPSTREAM_RECONNECTS._value.get()  # type: ignore[attr-defined]
    async with FakeUpstream(reply_ms=200) as up:
        settings = settings_for(tmp_path, up.url)
        leg = FakeLeg("call_drop")
        runner = make_runner(leg, profile, settings, store, pacer)
        task = asyncio.create_task(runner.run())
        await until(lambda: any(e.kind == "agent" for e in runner.transcript.events))
        await up.drop()
        await until(lambda: len(up.connections) == 2 and len(up.types(conn=1)) >= 2)
        await until(lambda: runner.state == "live")
        # The call goes on over the new session: a key press gets a new spoken answer.
        leg.inbox.put_nowait(CallerDtmf("2", 0))
        await until(lambda: leg.frames("item_agent_2"))
        leg.inbox.put_nowait(LegHangup("bye"))
        assert await asyncio.wait_for(task, 5) == "caller_hangup"
    restored = up.types(conn=1)
    assert restored[0] == "session.update"
    creates = up.events("conversation.item.create", conn=1)
    assistant = [c["item"] for c in creates if c["item"].get("role") == "assistant"]
    assert assistant and assistant[0]["content"] == [{"type": "output_text", "text": "Answer number 1."}]
    assert runner.reconnects == 1
    assert metrics.UPSTREAM_RECONNECTS._value.get() == before + 1  # type: ignore[attr-defined]
    assert {
        "type": "error",
        "code": "upstream",
        "message": "connection to the agent lost; reconnecting",
    } in leg.controls
    texts = [e["text"] for e in store.transcript("call_drop")]
    assert any("connection lost" in t for t in texts) and any("reconnected" in t for t in texts)


async def test_unreachable_upstream_apologizes_and_ends_with_the_record_saved(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    up = FakeUpstream()
    await up.__aenter__()
    url = up.url
    await up.stop()  # nothing listens on that port any more
    settings = settings_for(tmp_path, url)
    leg = FakeLeg("call_down")
    runner = make_runner(leg, profile, settings, store, pacer)
    reason = await asyncio.wait_for(runner.run(), 15)
    assert reason == "upstream_failed"
    apology = leg.frames("apology")
    assert len(apology) > 50  # a few seconds of synthesized speech, paced
    assert leg.hung_up == "upstream_failed"
    call = store.get_call("call_down")
    assert call is not None and call["end_reason"] == "upstream_failed" and call["status"] == "ended"
    assert any(e["kind"] == "error" for e in store.transcript("call_down"))
    assert Path(call["recording_path"]).is_file()  # noqa: ASYNC240


async def test_upstream_lost_for_good_mid_call(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    async with FakeUpstream(reply_ms=100) as up:
        settings = settings_for(tmp_path, up.url)
        leg = FakeLeg("call_gone")
        runner = make_runner(leg, profile, settings, store, pacer, apology=None)
        task = asyncio.create_task(runner.run())
        await until(lambda: len(leg.frames()) >= 5)
        await up.stop()
        await up.drop()
        assert await asyncio.wait_for(task, 10) == "upstream_failed"
    call = store.get_call("call_gone")
    assert call is not None and call["end_reason"] == "upstream_failed"


async def test_budget_warns_at_80_percent_and_ends_at_100(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    async with FakeUpstream(reply_ms=100) as up:
        settings = settings_for(tmp_path, up.url, budget_usd=Decimal("0.0022"))
        leg = FakeLeg("call_budget")
        runner = make_runner(leg, profile, settings, store, pacer)
        task = asyncio.create_task(runner.run())
        await until(
            lambda: any(e["item"].get("role") == "system" for e in up.events("conversation.item.create"))
        )
        leg.inbox.put_nowait(CallerDtmf("2", 0))  # a second response crosses the budget
        assert await asyncio.wait_for(task, 5) == "budget"
    warning = next(
        e["item"] for e in up.events("conversation.item.create") if e["item"].get("role") == "system"
    )
    assert warning["content"][0]["text"] == BUDGET_WARNING_INSTRUCTIONS
    call = store.get_call("call_budget")
    assert call is not None and call["end_reason"] == "budget"
    assert Decimal(call["cost_usd"]) == Decimal("0.00384")
    cost = [c for c in leg.controls if c["type"] == "cost"]
    assert cost and cost[-1]["breakdown"]["budget_usd"] == "0.0022"


async def test_operator_hangup(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    async with FakeUpstream(reply_ms=0) as up:
        settings = settings_for(tmp_path, up.url)
        leg = FakeLeg("call_op")
        runner = make_runner(leg, profile, settings, store, pacer)
        task = asyncio.create_task(runner.run())
        await until(lambda: runner.state == "live")
        await runner.hangup()
        assert await asyncio.wait_for(task, 5) == "operator"
    assert leg.hung_up == "operator"
    assert {"type": "call_end", "reason": "operator"} in leg.controls
    assert runner.snapshot()["state"] == "ended"


async def test_barge_in_clears_truncates_at_the_reported_position_and_cuts_the_recording(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    async def on_event(up: FakeUpstream, ws: ServerConnection, event: dict[str, Any]) -> None:
        if event["type"] == "conversation.item.create":  # the caller's key: the caller starts to talk
            await up.send(ws, "input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_user")

    before = metrics.BARGE_INS._value.get()  # type: ignore[attr-defined]
    async with FakeUpstream(reply_ms=3000, on_event=on_event) as up:
        settings = settings_for(tmp_path, up.url)
        leg = FakeLeg("call_barge", reports_playback=True, echo_playback=True, report_lag_ms=60)
        profile = profile.model_copy(update={"dtmf": profile.dtmf.model_copy(update={"barge_in": False})})
        runner = make_runner(leg, profile, settings, store, pacer)
        task = asyncio.create_task(runner.run())
        await until(lambda: len(leg.frames()) >= 40)  # 800 ms into the greeting
        leg.inbox.put_nowait(CallerDtmf("5", 0))
        await until(lambda: up.events("conversation.item.truncate"))
        await asyncio.sleep(0.2)
        leg.inbox.put_nowait(LegHangup("bye"))
        await asyncio.wait_for(task, 5)
    (truncate,) = up.events("conversation.item.truncate")
    heard = leg.frames("item_agent_1")[-1].item_ms - 60  # what the page reported last
    assert truncate["item_id"] == "item_agent_1"
    # The page's report of the frame played in the same loop pass as speech_started may still be queued
    # behind it: the truncation is then at the report before (one frame earlier), never a guess.
    assert truncate["audio_end_ms"] in (heard, heard - 20)
    assert leg.clears == 1
    assert metrics.BARGE_INS._value.get() == before + 1  # type: ignore[attr-defined]
    agent = next(e for e in store.transcript("call_barge") if e["kind"] == "agent")
    assert agent["data"]["interrupted"] is True
    assert abs(agent["data"]["heard_ms"] - heard) <= 20
    call = store.get_call("call_barge")
    assert call is not None
    data, rate = read_stereo(Path(call["recording_path"]))
    (start, end), *_later = segments(data[:, 1], rate)  # the greeting, then the answer to the key
    assert end - start == pytest.approx(truncate["audio_end_ms"], abs=30)


async def test_agent_audio_is_recorded_where_the_leg_reports_it_was_heard(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    """A page that starts playing each frame 40 ms after it arrives (it reports the frame sent 60 ms ago
    as played): the greeting, recorded before any report, sits at its send time; later answers, each a new
    run of frames, about 40 ms after their send time, where the caller heard them. (The greeting's first
    frames go out in a burst, which this page plays at once, so the delay is learnt for good on the
    steady second answer and checked on the third.)"""
    async with FakeUpstream(reply_ms=400) as up:
        settings = settings_for(tmp_path, up.url)
        leg = FakeLeg("call_heard", reports_playback=True, echo_playback=True, report_lag_ms=60)
        profile = profile.model_copy(update={"dtmf": profile.dtmf.model_copy(update={"barge_in": False})})
        runner = make_runner(leg, profile, settings, store, pacer)
        task = asyncio.create_task(runner.run())
        for answers in (1, 2, 3):
            await until(
                lambda n=answers: len({p.item_id for p in leg.played}) >= n and runner.core.playout.drained
            )
            await asyncio.sleep(0.2)
            if answers < 3:
                leg.inbox.put_nowait(CallerDtmf("5", 0))
        leg.inbox.put_nowait(LegHangup("bye"))
        await asyncio.wait_for(task, 5)
    items = list(dict.fromkeys(p.item_id for p in leg.played))
    first, _second, third = (next(p for p in leg.played if p.item_id == item) for item in items[:3])
    call = store.get_call("call_heard")
    assert call is not None
    data, rate = read_stereo(Path(call["recording_path"]))
    greeting, _answer, last, *_ = segments(data[:, 1], rate)
    assert last[0] - greeting[0] == pytest.approx((third.t - first.t) * 1000 + 40, abs=6)


async def test_session_limit_hands_over_to_a_fresh_session(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    async with FakeUpstream(reply_ms=100) as up:
        settings = settings_for(tmp_path, up.url)
        leg = FakeLeg("call_long")
        runner = make_runner(leg, profile, settings, store, pacer, session_limit_s=0.5)
        task = asyncio.create_task(runner.run())
        await until(lambda: len(up.connections) >= 2 and len(up.types(conn=1)) >= 2, limit_s=5)
        leg.inbox.put_nowait(LegHangup("bye"))
        assert await asyncio.wait_for(task, 5) == "caller_hangup"
    assert up.types(conn=1)[0] == "session.update"
    assert any(e["item"].get("role") == "assistant" for e in up.events("conversation.item.create", conn=1))
    assert runner.reconnects >= 1


async def test_one_calls_failure_does_not_touch_another(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    async with FakeUpstream(reply_ms=600) as up:
        settings = settings_for(tmp_path, up.url)
        good_leg = FakeLeg("call_good")
        bad_leg = FakeLeg("call_bad", fail_events=RuntimeError("transport exploded"))
        good = make_runner(good_leg, profile, settings, store, pacer)
        bad = make_runner(bad_leg, profile, settings, store, pacer)
        good_task = asyncio.create_task(good.run())
        bad_reason = await asyncio.wait_for(bad.run(), 5)
        assert bad_reason == "error"
        await until(lambda: len(good_leg.frames()) >= 30)
        assert good.state == "live"
        good_leg.inbox.put_nowait(LegHangup("bye"))
        assert await asyncio.wait_for(good_task, 5) == "caller_hangup"
    frames = good_leg.frames("item_agent_1") + good_leg.frames("item_agent_2")
    assert len(good_leg.frames()) >= 30 and frames
    bad_call = store.get_call("call_bad")
    assert bad_call is not None and bad_call["end_reason"] == "error" and bad_call["status"] == "ended"


async def test_cancelled_runner_still_saves_the_record(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    async with FakeUpstream(reply_ms=0) as up:
        settings = settings_for(tmp_path, up.url)
        leg = FakeLeg("call_cancel")
        runner = make_runner(leg, profile, settings, store, pacer)
        task = asyncio.create_task(runner.run())
        await until(lambda: runner.state == "live")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    call = store.get_call("call_cancel")
    assert call is not None and call["end_reason"] == "shutdown" and call["status"] == "ended"
    assert "call_cancel" not in pacer.calls


async def test_caller_audio_with_a_jittery_media_clock_is_recorded_without_gaps(
    tmp_path: Path, profile: AgentProfile, store: CallStore, pacer: FramePacer
) -> None:
    """Media timestamps that wander by a few ms (Twilio's do) still give one unbroken caller channel."""
    codec: AudioCodec = "pcmu"
    async with FakeUpstream(reply_ms=100, codec=codec) as up:
        leg = FakeLeg("call_jitter", codec)
        _runner, task = await start_live(leg, settings_for(tmp_path, up.url), profile, store, pacer)
        jitter = [0, 3, -2, 4, -4, 1, 0, -3, 2, 5]
        await pace_caller(leg, tone(1000, codec), lambda k: 20 * k + jitter[k % 10])
        await asyncio.sleep(0.1)
        leg.inbox.put_nowait(LegHangup("bye"))
        await asyncio.wait_for(task, 5)
    call = store.get_call("call_jitter")
    assert call is not None
    data, rate = read_stereo(Path(call["recording_path"]))
    voiced = np.flatnonzero(np.abs(data[:, 0].astype(np.int32)) > 0)
    first, last = voiced[0], voiced[-1]
    assert (last - first + 1) / rate == pytest.approx(1.0, abs=0.003)  # one second, no gap, no overlap
    silent_runs = np.diff(voiced)
    assert silent_runs.max() <= 3  # only the sine's own zero crossings


async def test_the_recording_file_is_brought_up_to_date_about_once_a_second(
    tmp_path: Path,
    profile: AgentProfile,
    store: CallStore,
    pacer: FramePacer,
) -> None:
    """Each update of the file is a write and a header rewrite: while the caller's audio keeps the file up
    to date, the housekeeping timer adds none, and the file never falls more than hold + 1 s behind."""
    commits: list[tuple[int, int]] = []  # (call clock, committed ms) after each update

    async def watch(runner: CallRunner) -> None:
        """Each update moves ``committed_ms``; updates are about a second apart, samples 5 ms."""
        last = 0
        while True:
            recorder = runner.recorder
            if recorder is not None and recorder.committed_ms != last:
                last = recorder.committed_ms
                commits.append((runner.now_ms(), last))
            await asyncio.sleep(0.005)

    codec: AudioCodec = "pcmu"
    async with FakeUpstream(reply_ms=100, codec=codec) as up:
        leg = FakeLeg("call_commits", codec)
        runner, task = await start_live(leg, settings_for(tmp_path, up.url), profile, store, pacer)
        watcher = asyncio.create_task(watch(runner))
        await pace_caller(leg, tone(3500, codec))
        watcher.cancel()
        live = list(commits)
        leg.inbox.put_nowait(LegHangup("bye"))
        await asyncio.wait_for(task, 5)
    assert 2 <= len(live) <= 4, live  # about one a second, not one per caller commit plus one per timer
    for (_, first), (_, second) in itertools.pairwise(live):
        assert second - first >= 900  # each update moves the file by about a second
    at, committed = live[-1]
    assert at - committed <= 500 + 1000 + 100
