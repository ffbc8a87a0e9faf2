"""The ``voice`` CLI: ``serve`` options, and the operator's record commands (``calls``, ``call-show`` and
``cost`` read the SQLite store directly; ``hangup`` and ``token`` go through the running service's API)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from voice.call.transcript import TranscriptEvent
from voice.cli import _settings, build_parser, main
from voice.realtime.pricing import default_price_table, price_usage
from voice.records_cli import format_duration, format_usd
from voice.store import CallStore

USAGE: dict[str, Any] = {
    "input_tokens": 2000,
    "output_tokens": 300,
    "input_token_details": {
        "text_tokens": 1500,
        "audio_tokens": 500,
        "cached_tokens": 1024,
        "cached_tokens_details": {"text_tokens": 1024, "audio_tokens": 0},
    },
    "output_token_details": {"text_tokens": 60, "audio_tokens": 240},
}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main`` configures logging on the captured stderr; put the previous configuration back after."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "voice.db"
    now = datetime.now(UTC)
    with CallStore(path) as store:
        for n, (agent, leg, age_h) in enumerate([("restaurant", "browser", 0), ("dentist", "sip", 30)]):
            call_id = f"call_{n}"
            store.create_call(
                call_id,
                leg=leg,
                agent=agent,
                caller=f"+1555000{n}",
                model="gpt-realtime",
                started_at=now - timedelta(hours=age_h),
                recording_path=f"/rec/{call_id}.wav",
            )
            store.add_transcript_event(
                TranscriptEvent(call_id, 0, 200, "agent", "Welcome!", {"item_id": "item_a"})
            )
            store.add_transcript_event(TranscriptEvent(call_id, 1, 2500, "caller", "Book a table", {}))
            store.add_transcript_event(
                TranscriptEvent(
                    call_id,
                    2,
                    4000,
                    "agent",
                    "Sure, for how",
                    {"item_id": "item_b", "interrupted": True, "heard_ms": 1200},
                )
            )
            store.add_transcript_event(TranscriptEvent(call_id, 3, 5000, "dtmf", "", {"digits": "1"}))
            store.add_transcript_event(
                TranscriptEvent(call_id, 4, 5100, "tool_call", "", {"name": "book_table", "arguments": "{}"})
            )
            store.add_usage(
                call_id,
                t_ms=4100,
                kind="response",
                model="gpt-realtime",
                usage=USAGE,
                cost=price_usage("gpt-realtime", USAGE, default_price_table()),
            )
            store.end_call(call_id, "caller_hangup", duration_ms=90_000)
        store.create_call("call_live", leg="browser", agent="restaurant", started_at=now)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_calls_table_and_filters(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "calls", "--db", str(db))
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["ID", "STARTED", "STATUS", "LEG"]
    assert len(lines) == 4
    assert "call_0" in out and "1:30" in out and "caller_hangup" in out

    code, out, _ = run(capsys, "calls", "--db", str(db), "--status", "ended", "--agent", "dentist", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["id"] for r in rows] == ["call_1"]
    assert rows[0]["leg"] == "sip"

    code, out, _ = run(capsys, "calls", "--db", str(db), "--since", "2h", "--json")
    assert sorted(r["id"] for r in json.loads(out)) == ["call_0", "call_live"]
    code, out, _ = run(capsys, "calls", "--db", str(db), "--leg", "sip", "--limit", "5", "--json")
    assert [r["id"] for r in json.loads(out)] == ["call_1"]


def test_calls_bad_input(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "calls", "--db", str(db), "--since", "last tuesday")
    assert code == 2 and "not a time" in err
    code, out, _ = run(capsys, "calls", "--db", str(tmp_path / "missing.db"))
    assert code == 0 and "no calls" in out
    assert not (tmp_path / "missing.db").exists()  # reading never creates a database
    with pytest.raises(SystemExit):
        main(["calls", "--status", "weird"])


def test_call_show(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "call-show", "call_0", "--db", str(db))
    assert code == 0
    assert "ended (caller_hangup)" in out
    assert "/rec/call_0.wav" in out
    assert "[00:00.2] agent:  Welcome!" in out
    assert "[00:02.5] caller: Book a table" in out
    assert "(interrupted, heard 1.2 s)" in out
    assert "keypad: 1" in out
    assert "tool:   book_table({})" in out
    assert "cache hit 51.2%" in out  # 1024 of 2000 input tokens
    code, out, _ = run(capsys, "call-show", "call_0", "--db", str(db), "--json")
    detail = json.loads(out)
    assert len(detail["transcript"]) == 5 and len(detail["usage_events"]) == 1
    code, _, err = run(capsys, "call-show", "call_nope", "--db", str(db))
    assert code == 1 and "no call" in err


def test_cost(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = price_usage("gpt-realtime", USAGE, default_price_table()).total
    code, out, _ = run(capsys, "cost", "--db", str(db), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["calls"] == 3
    assert Decimal(summary["total_usd"]) == 2 * one
    assert summary["cache_hit_rate"] == "0.512000"
    assert float(summary["per_minute_usd"]) == pytest.approx(float(2 * one) / 3, rel=1e-5)

    code, out, _ = run(capsys, "cost", "--db", str(db), "--since", "2h", "--by-call")
    assert code == 0
    assert "calls            2" in out
    assert "cache hit rate   51.2%  (1024 of 2000 input tokens)" in out
    assert "savings" in out and "per minute" in out
    assert "call_0" in out and "call_1" not in out

    code, out, _ = run(capsys, "cost", "--db", str(db), "--agent", "dentist", "--json")
    assert json.loads(out)["calls"] == 1


def test_formatting() -> None:
    assert format_usd("0.018535") == "$0.0185"
    assert format_usd(None) == "-"
    assert format_usd("0.1", 6) == "$0.100000"
    assert format_duration(None) == "-"
    assert format_duration(65_000) == "1:05"
    assert format_duration(3_723_000) == "1:02:03"


def test_serve_options() -> None:
    upstream = "ws://127.0.0.1:1/v1/realtime"
    args = build_parser().parse_args(
        ["serve", "--host", "0.0.0.0", "--port", "9000", "--agent", "restaurant", "--upstream", upstream,
         "--max-calls", "3", "--db", "/tmp/x.db"]
    )  # fmt: skip
    settings = _settings(args)
    assert (settings.host, settings.port, settings.agent) == ("0.0.0.0", 9000, "restaurant")
    assert settings.upstream_url == "ws://127.0.0.1:1/v1/realtime"
    assert settings.max_calls == 3
    assert settings.db_path == Path("/tmp/x.db")
    assert settings.engine.agent == "restaurant"


def test_serve_with_an_unknown_agent_fails_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "serve", "--agent", "nobody", "--port", "0")
    assert code == 1
    assert "unknown agent 'nobody'" in err and "restaurant" in err


def test_engine_and_bench_are_still_there() -> None:
    parser = build_parser()
    assert parser.parse_args(["engine", "--no-asr"]).command == "engine"
    assert parser.parse_args(["bench", "audio"]).parts == ["audio"]


class _FakePost:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.calls: list[tuple[str, dict[str, Any], dict[str, str]]] = []

    def __call__(
        self, url: str, *, json: dict[str, Any], headers: dict[str, str], **_: Any
    ) -> httpx.Response:
        self.calls.append((url, json, headers))
        return httpx.Response(self.status, json=self.body, request=httpx.Request("POST", url))


def test_hangup_and_token_use_the_operator_api(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOICE_API_TOKEN", "tok")
    post = _FakePost(202, {"call_id": "call_1", "status": "ending"})
    monkeypatch.setattr(httpx, "post", post)
    code, out, _ = run(capsys, "hangup", "call_1", "--url", "http://127.0.0.1:9999/")
    assert code == 0 and out.strip() == "call_1: ending"
    url, body, headers = post.calls[0]
    assert url == "http://127.0.0.1:9999/api/calls/call_1/hangup"
    assert headers["Authorization"] == "Bearer tok"

    post = _FakePost(201, {"token": "abc.def", "expires_at": 1})
    monkeypatch.setattr(httpx, "post", post)
    code, out, _ = run(
        capsys, "token", "--agent", "restaurant", "--origin", "https://shop.example", "--ttl", "60"
    )
    assert code == 0 and json.loads(out)["token"] == "abc.def"
    url, body, _ = post.calls[0]
    assert url == "http://127.0.0.1:8080/api/tokens"
    assert body == {"ttl_s": 60, "agent": "restaurant", "origin": "https://shop.example"}

    monkeypatch.setattr(httpx, "post", _FakePost(404, {"error": {"code": "not_found", "message": "no call"}}))
    code, _, err = run(capsys, "hangup", "call_nope")
    assert code == 1 and "HTTP 404: no call" in err
