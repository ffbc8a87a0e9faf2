"""End to end: a page-like WebSocket caller (tests/e2e/page.py) talks to the agent through ``/ws/browser``,
the call runner and the local engine with offline speech recognition (tests/e2e/app.py).

The caller sends real synthesized speech paced in real time as 20 ms frames and plays the agent's audio at
real-time speed, reporting its playback position exactly. Checked: the agent answers speech; a barge-in
stops the agent and truncates the engine's copy of the agent's turn at what the caller had heard; DTMF
reaches the model; a tool call round trip; the stereo recording's alignment; the cost row against the
price table; and bad input (malformed and oversized messages, odd-sized audio, a caller who goes away
mid-turn, an upstream connection killed mid-call), each logged with the call id, answered where possible,
the record saved, and a second concurrent call unaffected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import wave
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from scipy.signal import correlate

from tests.conftest import free_port
from tests.e2e.app import ServiceThread, service_settings
from tests.e2e.page import Page
from voice.call.agent_tools import book_table
from voice.realtime.pricing import default_price_table, price_transcription, price_usage

pytestmark = pytest.mark.slow

Speech = Callable[[str, int], bytes]
HOURS = "Tuesday to Sunday"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    tmp = tmp_path_factory.mktemp("e2e")
    log_path = tmp / "service.log"
    old = structlog.get_config()
    log_file = log_path.open("a", encoding="utf-8")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=log_file),
        cache_logger_on_first_use=False,
    )
    port = free_port()
    svc = ServiceThread(service_settings(tmp, port), port)
    svc.log_path = log_path  # type: ignore[attr-defined]
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
        structlog.configure(**old)
        log_file.close()


def log_lines(service: ServiceThread, call_id: str) -> list[dict[str, Any]]:
    path: Path = service.log_path  # type: ignore[attr-defined]
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("call_id") == call_id:
            out.append(entry)
    return out


def logged(service: ServiceThread, call_id: str, event: str) -> list[dict[str, Any]]:
    return [e for e in log_lines(service, call_id) if e.get("event") == event]


async def ended(service: ServiceThread, call_id: str, limit_s: float = 15.0) -> dict[str, Any]:
    """The call's row once the runner has saved it as ended."""
    async with asyncio.timeout(limit_s):
        while True:
            call = service.store.get_call(call_id)
            if call is not None and call["status"] == "ended":
                return call
            await asyncio.sleep(0.05)


def read_stereo(path: str) -> tuple[np.ndarray[Any, Any], int]:
    with wave.open(path, "rb") as w:
        assert w.getnchannels() == 2 and w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
        return data, w.getframerate()


def locate_ms(channel: np.ndarray[Any, Any], needle: bytes, rate: int) -> tuple[int, float]:
    """Where ``needle`` (PCM16) best matches in ``channel``: (ms, normalised correlation)."""
    x = channel.astype(np.float64)
    y = np.frombuffer(needle, dtype="<i2").astype(np.float64)
    corr = correlate(x, y, mode="valid", method="fft")
    window = np.convolve(x * x, np.ones(len(y)), mode="valid")
    needle = float(np.dot(y, y))
    score = np.where(window > 0.01 * needle, corr / np.sqrt(np.maximum(window, 1.0) * needle), 0.0)
    best = int(np.argmax(score))
    return best * 1000 // rate, float(score[best])


def locate_near(channel: np.ndarray[Any, Any], needle: bytes, near_ms: float, rate: int) -> tuple[int, float]:
    """:func:`locate_ms` within 150 ms of ``near_ms``: (ms on the whole channel, correlation)."""
    lo = max(0, int((near_ms - 150) * rate / 1000))
    hi = min(len(channel), int((near_ms + 150) * rate / 1000) + len(needle) // 2)
    at_ms, score = locate_ms(channel[lo:hi], needle, rate)
    return at_ms + lo * 1000 // rate, score


def agent_item_of(page: Page, pred: Callable[[str], bool]) -> dict[str, Any] | None:
    for m in page.agent_done():
        if pred(m["text"]):
            return m
    return None


async def greeting_heard(page: Page, ms: int = 600) -> str:
    """Wait until the caller has heard ``ms`` of the greeting; return its item id."""
    await page.wait_for(lambda: len(page.played) >= ms // 20, limit_s=30)
    return page.played[0].item_id


# The agent answers speech; records, recording and cost -------------------------------------------------


async def test_agent_answers_speech_and_the_records_add_up(service: ServiceThread, speech: Speech) -> None:
    page = Page(service.url)
    started = await page.open()
    assert started["agent"] == "restaurant"
    assert started["audio"] == {"format": "pcm16", "rate": 24000, "channels": 1, "frame_ms": 20}
    greeting = await greeting_heard(page)
    await page.wait_for(lambda: page.agent_done(), limit_s=30)  # the whole greeting, then the caller talks
    await page.wait_for(lambda: page.frames_of(greeting) and not page._queue and page._waiting, limit_s=10)
    question = speech("What are your opening hours?", 24000)
    page.say(question)
    answer = await page.wait_for(lambda: agent_item_of(page, lambda t: HOURS in t), limit_s=40)
    caller = await page.wait_message(lambda m: m["type"] == "transcript.done" and m["role"] == "caller")
    assert "hours" in caller["text"].lower()
    await page.wait_for(lambda: len(page.frames_of(answer["item_id"])) >= 50)  # its audio is heard
    cost_messages = page.of_type("cost")
    await page.hangup()
    await page.wait_for(lambda: page.of_type("call.ended"))
    await page.wait_for(lambda: page.closed_code is not None, limit_s=5)
    await page.close()

    assert page.closed_code == 1000
    assert page.of_type("call.ended")[0] == {
        "type": "call.ended",
        "reason": "caller_hangup",
        "call_id": page.call_id,
    }
    assert cost_messages and Decimal(cost_messages[-1]["total_usd"]) > 0
    call = await ended(service, page.call_id)
    assert call["end_reason"] == "caller_hangup" and call["leg"] == "browser"

    # Transcript in order: greeting, the caller's question, the answer.
    transcript = service.store.transcript(page.call_id)
    kinds = [e["kind"] for e in transcript]
    assert kinds.index("caller") < max(i for i, k in enumerate(kinds) if k == "agent")
    assert any(e["kind"] == "agent" and HOURS in e["text"] for e in transcript)

    # Cost: the stored total is the usage priced by the table.
    table = default_price_table()
    usage = service.store.usage(page.call_id)
    assert {u["kind"] for u in usage} == {"response", "transcription"}
    total = Decimal(0)
    for row in usage:
        if row["kind"] == "response":
            priced = price_usage(row["model"], row["usage"], table)
        else:
            priced = price_transcription(row["model"], row["usage"], table)
        assert Decimal(row["cost_usd"]) == priced.total
        total += priced.total
    assert Decimal(call["cost_usd"]) == total > 0

    # Recording: caller left where it was sent, agent right where it was heard.
    data, rate = read_stereo(call["recording_path"])
    assert rate == 24000
    first_speech = page.speech_sent()[0]
    sent_ms = (first_speech.t - page.t0) * 1000
    at_ms, score = locate_ms(data[:, 0], question[:24000], rate)
    assert score > 0.99, score
    assert abs(at_ms - sent_ms) <= 40, (at_ms, sent_ms)
    for item in (greeting, answer["item_id"]):
        # Every frame the caller heard is in the agent channel, sample for sample, where it was heard. The
        # page plays a frame after its 40 ms jitter buffer (later still when this busy test process delays
        # it); underruns are gaps in both. The service learns that delay from the page's playback reports:
        # the greeting, recorded before any report, sits up to the buffer early; the answer, a later run of
        # frames, sits where it was heard (a little late at most: a report that reaches the service late
        # in this busy test process makes the delay look longer).
        audible = [f for f in page.frames_of(item) if np.abs(np.frombuffer(f.audio, "<i2")).max() > 500]
        assert len(audible) > 25
        low, high = (-100, 20) if item == greeting else (-30, 40)
        for f in audible[:100]:
            heard_ms = (f.t - page.t0) * 1000
            at_ms, score = locate_near(data[:, 1], f.audio, heard_ms, rate)
            assert score > 0.999, (item, f.item_ms, score)
            assert low <= at_ms - heard_ms <= high, (item, f.item_ms, at_ms, heard_ms)


# Barge-in ---------------------------------------------------------------------------------------------------


async def test_barge_in_stops_the_agent_and_truncates_at_what_was_heard(
    service: ServiceThread, speech: Speech
) -> None:
    page = Page(service.url)
    await page.open()
    greeting = await greeting_heard(page, 1500)
    page.say(speech("What are your opening hours?", 24000))
    await page.wait_message(lambda m: m["type"] == "clear", limit_s=10)
    clear_t, cleared_item, heard_ms = page.clears[0]
    assert cleared_item == greeting
    frames_at_clear = len(page.frames_of(greeting))
    interrupted = await page.wait_for(lambda: agent_item_of(page, lambda t: True), limit_s=10)
    await page.wait_for(lambda: agent_item_of(page, lambda t: HOURS in t), limit_s=40)
    await page.hangup()
    await page.close()
    call = await ended(service, page.call_id)

    # The agent's audio stopped: no frame of the greeting after the clear.
    assert len(page.frames_of(greeting)) == frames_at_clear
    assert all(f.t <= clear_t for f in page.frames_of(greeting))
    assert interrupted["item_id"] == greeting and interrupted["interrupted"] is True
    # The engine got a truncate within 40 ms of what the caller had played, and confirmed it.
    ((_, truncate),) = service.events(page.call_id, "sent", "conversation.item.truncate")
    assert truncate["item_id"] == greeting
    assert abs(truncate["audio_end_ms"] - heard_ms) <= 40, (truncate["audio_end_ms"], heard_ms)
    truncated = service.events(page.call_id, "recv", "conversation.item.truncated")
    assert truncated and truncated[0][1]["audio_end_ms"] == truncate["audio_end_ms"]
    assert logged(service, page.call_id, "upstream.truncate")
    # The transcript marks the interruption with what was heard.
    transcript = service.store.transcript(page.call_id)
    barge = next(e for e in transcript if e["kind"] == "barge_in")
    agent = next(e for e in transcript if e["kind"] == "agent" and e["data"]["item_id"] == greeting)
    assert barge["data"]["item_id"] == greeting and barge["data"]["heard_ms"] == truncate["audio_end_ms"]
    assert agent["data"]["interrupted"] is True and agent["data"]["heard_ms"] == truncate["audio_end_ms"]
    assert len(agent["text"]) < len(agent["data"]["generated_text"])
    assert call["end_reason"] == "caller_hangup"


# DTMF and a tool call ---------------------------------------------------------------------------------


async def test_dtmf_reaches_the_model_and_a_tool_call_round_trips(service: ServiceThread) -> None:
    page = Page(service.url)
    await page.open()
    await greeting_heard(page, 200)
    await page.send_json({"type": "dtmf", "digit": "2"})
    ack = await page.wait_message(lambda m: m["type"] == "dtmf.ack")
    assert ack == {"type": "dtmf.ack", "digit": "2"}
    hours = await page.wait_for(lambda: agent_item_of(page, lambda t: HOURS in t), limit_s=20)
    await page.wait_for(lambda: page.frames_of(hours["item_id"]))
    await page.send_json({"type": "dtmf", "digit": "1"})  # key 1: book a table (barges in on the hours)
    booked = await page.wait_for(lambda: agent_item_of(page, lambda t: "confirmation code" in t), limit_s=30)
    await page.wait_for(lambda: len(page.frames_of(booked["item_id"])) >= 25)
    await page.hangup()
    await page.close()
    call = await ended(service, page.call_id)

    tools = page.of_type("tool")
    assert {"type": "tool", "name": "book_table", "status": "running"} in tools
    assert {"type": "tool", "name": "book_table", "status": "done"} in tools
    code = book_table(party_size=2, time="19:00", name="guest")["confirmation"]
    assert code in booked["text"]
    transcript = service.store.transcript(page.call_id)
    dtmf = [e["data"]["digits"] for e in transcript if e["kind"] == "dtmf"]
    assert dtmf == ["2", "1"]
    result = next(e for e in transcript if e["kind"] == "tool_result")
    assert json.loads(result["data"]["output"])["confirmation"] == code
    notes = [
        e["item"]["content"][0]["text"]
        for _, e in service.events(page.call_id, "sent", "conversation.item.create")
        if e["item"].get("type") == "message"
    ]
    assert notes == ["Caller pressed 2", "Caller pressed 1"]
    assert call["end_reason"] == "caller_hangup"


async def test_a_key_pressed_before_the_greeting_starts_is_answered(service: ServiceThread) -> None:
    page = Page(service.url)
    await page.open()
    await page.send_json({"type": "dtmf", "digit": "2"})  # the upstream may not even be connected yet
    await page.wait_for(lambda: agent_item_of(page, lambda t: HOURS in t), limit_s=20)
    await page.hangup()
    await page.close()
    await ended(service, page.call_id)
    sent = [e for _, d, e in service.upstream_log(page.call_id) if d == "sent"]
    assert sent[0]["type"] == "session.update"
    errors = service.events(page.call_id, "recv", "error")
    assert not errors, errors  # no response.create was refused


# Bad input, with a second call running alongside -----------------------------------------------------


async def _second_call_keeps_working(service: ServiceThread, other: Page) -> None:
    """The bystander call: still live, still answered."""
    since = len(other.messages)
    await other.send_json({"type": "dtmf", "digit": "2"})
    await other.wait_message(lambda m: m["type"] == "dtmf.ack", since=since)
    answer = await other.wait_for(lambda: agent_item_of(other, lambda t: HOURS in t), limit_s=20)
    await other.wait_for(lambda: len(other.frames_of(answer["item_id"])) >= 10)
    assert not other.of_type("error") and not other.of_type("call.ended")
    await other.hangup()
    await other.close()
    call = await ended(service, other.call_id)
    assert call["end_reason"] == "caller_hangup"


async def test_malformed_and_oversized_messages_get_errors_and_the_call_goes_on(
    service: ServiceThread,
) -> None:
    other = Page(service.url)
    await other.open()
    page = Page(service.url)
    await page.open()
    await page.send_raw("{not json")
    await page.send_raw(json.dumps({"type": "teleport"}))
    await page.send_raw(json.dumps({"type": "dtmf", "digit": "Z"}))
    await page.send_raw(json.dumps({"type": "hangup", "padding": "x" * 8000}))
    await page.send_raw(bytes(961))  # audio with an odd byte count
    await page.send_raw(bytes(100_000))  # over a second of audio in one message
    errors = await page.wait_for(
        lambda: len(page.of_type("error")) >= 6 and page.of_type("error"), limit_s=10
    )
    assert [e["code"] for e in errors] == [
        "bad_json",
        "unknown_type",
        "bad_field",
        "too_large",
        "bad_audio",
        "too_large",
    ]
    assert all(e["message"] for e in errors)
    # The call goes on: the caller is still answered.
    await page.send_json({"type": "dtmf", "digit": "2"})
    await page.wait_for(lambda: agent_item_of(page, lambda t: HOURS in t), limit_s=20)
    await _second_call_keeps_working(service, other)
    await page.hangup()
    await page.close()
    call = await ended(service, page.call_id)
    assert call["end_reason"] == "caller_hangup"
    bad = logged(service, page.call_id, "browser.bad_message")
    assert len(bad) == 6 and all(e["call_id"] == page.call_id for e in bad)
    assert not logged(service, other.call_id, "browser.bad_message")


async def test_caller_who_disconnects_mid_turn(service: ServiceThread, speech: Speech) -> None:
    other = Page(service.url)
    await other.open()
    page = Page(service.url)
    await page.open()
    await greeting_heard(page, 400)
    page.say(speech("Could you tell me where", 24000))
    await page.wait_for(lambda: len(page.speech_sent()) >= 20)  # half way through the sentence
    await page.close()  # the socket just goes away, mid-turn and with the agent's audio queued
    call = await ended(service, page.call_id)
    assert call["end_reason"] == "caller_hangup"
    assert logged(service, page.call_id, "browser.disconnected")
    transcript = service.store.transcript(page.call_id)
    assert transcript[-1]["kind"] == "system" and "ended" in transcript[-1]["text"]
    assert any(e["kind"] == "agent" for e in transcript)  # the greeting, recorded as far as it was heard
    data, _ = read_stereo(call["recording_path"])
    assert np.abs(data[:, 0]).max() > 1000 and np.abs(data[:, 1]).max() > 1000
    await _second_call_keeps_working(service, other)


async def test_upstream_killed_mid_call_reconnects_and_restores(service: ServiceThread) -> None:
    other = Page(service.url)
    await other.open()
    page = Page(service.url)
    await page.open()
    await page.send_json({"type": "dtmf", "digit": "2"})
    first = await page.wait_for(lambda: agent_item_of(page, lambda t: HOURS in t), limit_s=20)
    await page.wait_for(lambda: page.frames_of(first["item_id"]))
    service.kill_upstream(page.call_id)
    error = await page.wait_message(lambda m: m["type"] == "error", limit_s=10)
    assert error["code"] == "upstream"
    await page.wait_for(lambda: len(service.connections(page.call_id)) == 2, limit_s=10)
    since = len(page.messages)
    await page.send_json({"type": "dtmf", "digit": "2"})  # the call goes on over the new session
    await page.wait_for(
        lambda: agent_item_of(page, lambda t: HOURS in t) and page.agent_done(since), limit_s=20
    )
    await _second_call_keeps_working(service, other)
    await page.hangup()
    await page.close()
    call = await ended(service, page.call_id)
    assert call["end_reason"] == "caller_hangup"
    assert logged(service, page.call_id, "upstream.lost")
    assert logged(service, page.call_id, "upstream.reconnected")
    # The new session got the conversation back: what the agent said is an assistant text item.
    restored = [
        e["item"]
        for t, e in service.events(page.call_id, "sent", "conversation.item.create")
        if e["item"].get("role") == "assistant"
    ]
    assert any(HOURS in c["content"][0]["text"] for c in restored)
    texts = [e["text"] for e in service.store.transcript(page.call_id)]
    assert any("connection lost" in t for t in texts) and any("reconnected" in t for t in texts)
    assert len(service.connections(other.call_id)) == 1  # the other call's session was untouched


# The smallest path: BrowserLeg + CallRunner without the service around them -------------------------------


async def test_minimal_app_runs_a_call_without_the_service(tmp_path: Path) -> None:
    port = free_port()
    minimal = ServiceThread(service_settings(tmp_path, port, engine={"asr": False}), port, minimal=True)
    await asyncio.to_thread(minimal.start)
    try:
        page = Page(minimal.url)
        await page.open()
        await page.send_json({"type": "dtmf", "digit": "2"})
        await page.wait_for(lambda: agent_item_of(page, lambda t: HOURS in t), limit_s=20)
        await page.hangup()
        await page.close()
        call = await ended(minimal, page.call_id)
        assert call["end_reason"] == "caller_hangup"
        assert minimal.observed.reasons.get(page.call_id) in (None, "caller_hangup")
    finally:
        await asyncio.to_thread(minimal.stop)
