"""The call store: SQLite in WAL mode, every write committed at once, queries for the API and the CLI.

The crash test is real: a child process writes a call in a loop and is killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from voice.call.cost import CostMeter
from voice.call.transcript import Transcript, TranscriptEvent
from voice.errors import RecordError, UnknownCallError, VoiceError
from voice.realtime.pricing import default_price_table, price_transcription, price_usage
from voice.store import CallStore

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)

USAGE: dict[str, Any] = {
    "total_tokens": 821,
    "input_tokens": 789,
    "output_tokens": 32,
    "input_token_details": {
        "text_tokens": 313,
        "audio_tokens": 476,
        "cached_tokens": 640,
        "cached_tokens_details": {"text_tokens": 256, "audio_tokens": 384},
    },
    "output_token_details": {"text_tokens": 9, "audio_tokens": 23},
}
ONE = Decimal("0.005044")  # USAGE at gpt-realtime prices (see tests/call/test_cost.py)
ONE_SAVED = Decimal("0.013056")
COST = price_usage("gpt-realtime", USAGE, default_price_table())
TRANSCRIPTION = {"type": "duration", "seconds": 30}
TRANSCRIPTION_COST = price_transcription("whisper-1", TRANSCRIPTION, default_price_table())  # 0.003


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Any:
    s = CallStore(tmp_path / "db" / "calls.sqlite3", clock=clock)
    yield s
    s.close()


def test_opens_in_wal_mode_with_the_contract_schema(store: CallStore) -> None:
    with sqlite3.connect(store.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = {
            table: [row[1] for row in other.execute(f"PRAGMA table_info({table})")]
            for table in ("calls", "transcript_events", "usage_events")
        }
    assert cols["calls"] == [
        "id", "leg", "caller", "callee", "agent", "model", "started_at", "answered_at", "ended_at",
        "end_reason", "status", "duration_ms", "cost_usd", "usage_json", "cost_json", "recording_path",
        "metadata_json",
    ]  # fmt: skip
    assert cols["transcript_events"] == ["call_id", "seq", "t_ms", "kind", "text", "data_json"]
    assert cols["usage_events"][:7] == ["call_id", "seq", "t_ms", "kind", "model", "usage_json", "cost_usd"]


def test_call_lifecycle_with_transcript_and_usage(store: CallStore, clock: Clock) -> None:
    call_id = store.create_call(
        "call_1",
        leg="twilio",
        caller="+15550001",
        callee="+15550002",
        agent="restaurant",
        model="gpt-realtime",
        recording_path=Path("/rec/call_1.wav"),
        metadata={"stream_sid": "MZ1"},
    )
    assert call_id == "call_1"
    tr = Transcript(call_id, sink=store.add_transcript_event)
    tr.caller(1200, "a table for two", item_id="item_u1")
    tr.agent(2500, "Sure, what time?", item_id="item_a1", heard_ms=400, audio_ms=1600, interrupted=True)
    tr.tool_call(3000, "book", "fc_1", {"people": 2})
    seq0 = store.add_usage(call_id, t_ms=2600, kind="response", model="gpt-realtime", usage=USAGE, cost=COST)
    seq1 = store.add_usage(
        call_id,
        t_ms=2700,
        kind="transcription",
        model="whisper-1",
        usage=TRANSCRIPTION,
        cost=TRANSCRIPTION_COST,
    )
    assert (seq0, seq1) == (0, 1)

    live = store.get_call(call_id)
    assert live is not None
    assert live["status"] == "live" and Decimal(live["cost_usd"]) == ONE + Decimal("0.003")
    assert live["started_at"] == "2025-03-01T12:00:00.000+00:00"
    assert live["metadata"] == {"stream_sid": "MZ1"} and live["recording_path"] == "/rec/call_1.wav"

    events = store.transcript(call_id)
    assert [e["kind"] for e in events] == ["caller", "agent", "tool_call"]
    assert [TranscriptEvent.from_dict(e) for e in events] == tr.events
    assert events[1]["data"]["generated_text"] == "Sure, what time?"

    usage = store.usage(call_id)
    assert [u["kind"] for u in usage] == ["response", "transcription"]
    assert usage[0]["usage"] == USAGE and Decimal(usage[0]["cost_usd"]) == ONE
    assert Decimal(usage[0]["cost"]["cache_savings"]) == ONE_SAVED

    clock.now = T0 + timedelta(seconds=90)
    ended = store.end_call(call_id, "hangup")
    assert ended["status"] == "ended" and ended["end_reason"] == "hangup"
    assert ended["duration_ms"] == 90_000 and ended["ended_at"] == "2025-03-01T12:01:30.000+00:00"
    assert Decimal(ended["cost_usd"]) == ONE + Decimal("0.003")
    assert ended["usage"]["input_tokens"] == 789 and ended["usage"]["transcriptions"] == 1
    assert Decimal(ended["cost"]["savings_usd"]) == ONE_SAVED
    assert ended["cost"]["per_minute_usd"] == "0.005363"  # 0.008044 / 1.5 = 0.0053627

    again = store.end_call(call_id, "error")  # the first end wins
    assert again["end_reason"] == "hangup"

    detail = store.call_detail(call_id)
    assert len(detail["transcript"]) == 3 and len(detail["usage_events"]) == 2


def test_end_call_takes_the_meter_figures(store: CallStore) -> None:
    store.create_call("c", leg="sip", model="gpt-realtime")
    meter = CostMeter("gpt-realtime", default_price_table(), Decimal("1"))
    meter.add_response_usage(USAGE)
    assert meter.last is not None
    store.add_usage("c", t_ms=100, kind="response", model="gpt-realtime", usage=USAGE, cost=meter.last)
    row = store.end_call(
        "c",
        "agent_end_call",
        duration_ms=12_345,
        cost_usd=meter.total,
        usage=meter.usage(),
        cost=meter.breakdown(12_345),
    )
    assert row["duration_ms"] == 12_345
    assert row["cost"]["budget_usd"] == "1" and row["cost"]["model"] == "gpt-realtime"
    assert Decimal(row["cost_usd"]) == ONE


def test_update_call_fields(store: CallStore) -> None:
    store.create_call("c", leg="twilio", status="ringing")
    assert store.get_call("c")["answered_at"] is None  # type: ignore[index]
    store.update_call("c", status="live", answered_at=T0 + timedelta(seconds=3), metadata={"k": 1}, model="m")
    row = store.get_call("c")
    assert row is not None
    assert row["status"] == "live" and row["answered_at"] == "2025-03-01T12:00:03.000+00:00"
    assert row["metadata"] == {"k": 1} and row["model"] == "m"
    with pytest.raises(RecordError, match="unknown call field"):
        store.update_call("c", colour="red")
    with pytest.raises(RecordError, match="status must be one of"):
        store.update_call("c", status="dancing")
    with pytest.raises(RecordError, match="not a float"):
        store.update_call("c", cost_usd=0.1)
    with pytest.raises(RecordError, match="cannot be set to None"):
        store.update_call("c", leg=None)


def test_unknown_call_id_is_a_clear_error(store: CallStore) -> None:
    assert store.get_call("nope") is None
    attempts: list[Callable[[], object]] = [
        lambda: store.add_transcript_event(TranscriptEvent("nope", 0, 0, "caller", "hi")),
        lambda: store.add_usage("nope", t_ms=0, kind="response", model="gpt-realtime", usage={}, cost=COST),
        lambda: store.update_call("nope", agent="x"),
        lambda: store.end_call("nope", "hangup"),
        lambda: store.transcript("nope"),
        lambda: store.usage("nope"),
        lambda: store.call_detail("nope"),
        lambda: store.delete_call("nope"),
    ]
    for attempt in attempts:
        with pytest.raises(UnknownCallError, match="unknown call id: 'nope'") as info:
            attempt()
        assert isinstance(info.value, VoiceError) and info.value.call_id == "nope"


def test_bad_writes_are_rejected(store: CallStore) -> None:
    store.create_call("c", leg="twilio")
    with pytest.raises(RecordError, match="already exists"):
        store.create_call("c", leg="twilio")
    store.add_transcript_event(TranscriptEvent("c", 0, 0, "caller", "hi"))
    with pytest.raises(RecordError, match="already has a transcript event with seq 0"):
        store.add_transcript_event(TranscriptEvent("c", 0, 5, "caller", "again"))
    with pytest.raises(RecordError, match="usage kind"):
        store.add_usage("c", t_ms=0, kind="bogus", model="m", usage={}, cost=COST)  # type: ignore[arg-type]
    with pytest.raises(RecordError, match="CostBreakdown"):
        store.add_usage("c", t_ms=0, kind="response", model="m", usage={}, cost=Decimal(1))  # type: ignore[arg-type]
    with pytest.raises(RecordError, match="t_ms"):
        store.add_usage("c", t_ms=-5, kind="response", model="m", usage={}, cost=COST)
    with pytest.raises(RecordError, match="JSON"):
        store.add_transcript_event(TranscriptEvent("c", 1, 0, "system", "x", {"obj": object()}))
    with pytest.raises(RecordError, match="leg"):
        store.create_call("d", leg="")
    assert len(store.transcript("c")) == 1  # a failed write leaves nothing behind
    assert store.usage("c") == []


def test_sdk_usage_models_are_accepted(store: CallStore) -> None:
    from openai.types.realtime.realtime_response_usage import RealtimeResponseUsage

    store.create_call("c", leg="browser")
    usage = RealtimeResponseUsage.model_validate(USAGE)
    store.add_usage("c", t_ms=1, kind="response", model="gpt-realtime", usage=usage, cost=COST)
    assert store.usage("c")[0]["usage"]["input_token_details"]["cached_tokens"] == 640


def _seed(store: CallStore, clock: Clock) -> None:
    specs = [
        ("a", "twilio", "restaurant", 0, 60_000, 2),
        ("b", "sip", "restaurant", 10, 120_000, 1),
        ("c", "twilio", "dentist", 20, 30_000, 0),
        ("d", "browser", "restaurant", 30, None, 1),  # still live
    ]
    for call_id, leg, agent, minute, duration, responses in specs:
        clock.now = T0 + timedelta(minutes=minute)
        store.create_call(call_id, leg=leg, agent=agent, model="gpt-realtime", caller=f"+1{call_id}")
        for i in range(responses):
            store.add_usage(
                call_id, t_ms=1000 * i, kind="response", model="gpt-realtime", usage=USAGE, cost=COST
            )
        if duration is not None:
            store.end_call(call_id, "hangup", duration_ms=duration)


def test_list_calls_filters_and_pages(store: CallStore, clock: Clock) -> None:
    _seed(store, clock)
    assert [c["id"] for c in store.list_calls()] == ["d", "c", "b", "a"]
    assert [c["id"] for c in store.list_calls(status="live")] == ["d"]
    assert [c["id"] for c in store.list_calls(leg="twilio")] == ["c", "a"]
    assert [c["id"] for c in store.list_calls(agent="restaurant", status="ended")] == ["b", "a"]
    assert [c["id"] for c in store.list_calls(since=T0 + timedelta(minutes=10))] == ["d", "c", "b"]
    assert [c["id"] for c in store.list_calls(until="2025-03-01T12:20:00+00:00")] == ["b", "a"]
    assert [
        c["id"] for c in store.list_calls(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=25))
    ] == [
        "c",
        "b",
    ]
    assert [c["id"] for c in store.list_calls(caller="+1b")] == ["b"]
    assert [c["id"] for c in store.list_calls(limit=2, offset=1)] == ["c", "b"]
    assert store.count_calls(leg="twilio") == 2
    with pytest.raises(RecordError, match="status"):
        store.list_calls(status="nope")
    with pytest.raises(RecordError, match="ISO 8601"):
        store.list_calls(since="yesterday")
    with pytest.raises(RecordError, match="limit"):
        store.list_calls(limit=-1)


def test_cost_summary(store: CallStore, clock: Clock) -> None:
    _seed(store, clock)
    s = store.cost_summary()
    json.dumps(s)
    assert s["calls"] == 4
    assert Decimal(s["total_usd"]) == 4 * ONE
    assert s["duration_ms"] == 210_000 and s["minutes"] == "3.500000"
    assert s["per_call_usd"] == "0.005044"
    # the calls with a duration (a, b, c) cost 3 * ONE over 3.5 minutes
    assert s["per_minute_usd"] == str(Decimal("0.004323"))
    assert s["input_tokens"] == 4 * 789 and s["cached_input_tokens"] == 4 * 640
    assert s["cache_hit_rate"] == "0.811153"
    assert Decimal(s["savings_usd"]) == 4 * ONE_SAVED
    by_id = {c["id"]: c for c in s["by_call"]}
    assert [c["id"] for c in s["by_call"]] == ["d", "c", "b", "a"]
    assert Decimal(by_id["a"]["total_usd"]) == 2 * ONE
    assert by_id["a"]["per_minute_usd"] == "0.010088"
    assert by_id["c"]["total_usd"] == "0" and by_id["c"]["cache_hit_rate"] is None
    assert by_id["d"]["per_minute_usd"] is None

    only = store.cost_summary(agent="dentist")
    assert only["calls"] == 1 and only["cache_hit_rate"] is None and only["total_usd"] == "0"
    twilio = store.cost_summary(since=T0, until=T0 + timedelta(minutes=15), leg="twilio")
    assert twilio["calls"] == 1 and Decimal(twilio["total_usd"]) == 2 * ONE
    empty = store.cost_summary(agent="nobody")
    assert empty["calls"] == 0 and empty["per_call_usd"] is None and empty["per_minute_usd"] is None


def test_mark_interrupted_calls_closes_live_calls(store: CallStore, clock: Clock) -> None:
    store.create_call("live1", leg="twilio", model="gpt-realtime")
    store.add_transcript_event(TranscriptEvent("live1", 0, 4200, "caller", "hello"))
    store.add_usage("live1", t_ms=5100, kind="response", model="gpt-realtime", usage=USAGE, cost=COST)
    store.create_call("ring", leg="sip", status="ringing")
    store.create_call("done", leg="sip")
    store.end_call("done", "hangup", duration_ms=1000)
    assert sorted(store.mark_interrupted_calls()) == ["live1", "ring"]
    row = store.get_call("live1")
    assert row is not None
    assert row["status"] == "ended" and row["end_reason"] == "crashed"
    assert row["duration_ms"] == 5100 and row["ended_at"] == "2025-03-01T12:00:05.100+00:00"
    assert Decimal(row["cost_usd"]) == ONE and row["usage"]["responses"] == 1
    assert Decimal(row["cost"]["savings_usd"]) == ONE_SAVED
    ring = store.get_call("ring")
    assert ring is not None and ring["duration_ms"] == 0 and ring["end_reason"] == "crashed"
    assert store.get_call("done")["end_reason"] == "hangup"  # type: ignore[index]
    assert store.mark_interrupted_calls() == []


def test_reopen_keeps_everything_and_schema_version_guard(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite3"
    with CallStore(path) as s:
        s.create_call("c", leg="twilio")
        s.add_transcript_event(TranscriptEvent("c", 0, 10, "dtmf", "5", {"digits": "5"}))
    with CallStore(path) as s:
        assert s.transcript("c")[0]["data"] == {"digits": "5"}
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version=99")
    with pytest.raises(RecordError, match="schema version 99"):
        CallStore(path)
    (tmp_path / "junk.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(RecordError, match="not a usable call database"):
        CallStore(tmp_path / "junk.sqlite3")
    with pytest.raises(RecordError, match="closed"):
        s.get_call("c")


def test_writes_from_many_threads(store: CallStore) -> None:
    store.create_call("c", leg="twilio")
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(50):
                store.add_usage("c", t_ms=i, kind="response", model="gpt-realtime", usage=USAGE, cost=COST)
                store.add_transcript_event(TranscriptEvent("c", k * 1000 + i, i, "system", f"{k}/{i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.usage("c")) == 200 and len(store.transcript("c")) == 200
    assert [u["seq"] for u in store.usage("c")] == list(range(200))
    assert Decimal(store.get_call("c")["cost_usd"]) == 200 * ONE  # type: ignore[index]


# -- kill -9 ---------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from voice.call.transcript import Transcript
    from voice.realtime.pricing import default_price_table, price_usage
    from voice.store import CallStore

    usage = {"input_tokens": 100, "input_token_details": {"text_tokens": 100}, "output_token_details": {}}
    cost = price_usage("gpt-realtime", usage, default_price_table())
    store = CallStore(Path(sys.argv[1]))
    call_id = store.create_call("crash_call", leg="twilio", agent="restaurant", model="gpt-realtime")
    transcript = Transcript(call_id, sink=store.add_transcript_event)
    i = 0
    while True:
        transcript.caller(i * 20, f"utterance {i}")
        if i % 5 == 0:
            store.add_usage(call_id, t_ms=i * 20, kind="response", model="gpt-realtime",
                            usage=usage, cost=cost)
        print(f"ack {i}", flush=True)
        i += 1
        time.sleep(0.002)
    """
)


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "calls.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    last_ack = -1
    deadline = time.monotonic() + 60
    try:
        while last_ack < 150 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"child died: {proc.stderr.read().decode() if proc.stderr else ''}")
            last_ack = int(line.split()[1])
        proc.send_signal(signal.SIGKILL)
        # lines printed before the kill landed: they were acknowledged before it too
        rest, _ = proc.communicate(timeout=10)
        for text in rest.decode().splitlines():
            last_ack = int(text.split()[1])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert last_ack >= 150
    assert (tmp_path / "calls.sqlite3-wal").exists()  # the data is (at least partly) in the WAL

    with CallStore(db) as store:
        call = store.get_call("crash_call")
        assert call is not None and call["status"] == "live"
        events = store.transcript("crash_call")
        texts = [e["text"] for e in events]
        # every acknowledged event is there, in order (one more may have been committed before its ack)
        assert texts[: last_ack + 1] == [f"utterance {i}" for i in range(last_ack + 1)]
        assert len(events) <= last_ack + 2
        usage_count = len(store.usage("crash_call"))
        assert usage_count >= last_ack // 5 + 1
        assert store.mark_interrupted_calls() == ["crash_call"]
        closed = store.get_call("crash_call")
        assert closed is not None
        assert closed["status"] == "ended" and closed["end_reason"] == "crashed"
        last_t = events[-1]["t_ms"]
        assert closed["duration_ms"] == last_t >= last_ack * 20
        assert closed["usage"]["responses"] == usage_count
        assert Decimal(closed["cost_usd"]) == usage_count * Decimal("0.0004")
