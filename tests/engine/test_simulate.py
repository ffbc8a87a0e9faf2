"""Offline cost simulation of a scripted call (voice.engine.simulate)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from voice.config import Settings
from voice.engine.simulate import format_report, main, simulate


async def test_a_scripted_call_is_priced() -> None:
    sim = await simulate(
        ["What are your opening hours?", "I would like to book a table for 4 people"],
        settings=Settings(),
        agent="restaurant",
        tool_outputs={"book_table": json.dumps({"confirmation": "LT-9"})},
    )
    said = [r.said for r in sim.responses]
    assert said[0].startswith("Thank you for calling Luigi's Trattoria")
    assert "Tuesday to Sunday" in said[1]
    assert sim.responses[2].calls and sim.responses[2].calls[0].startswith("book_table(")
    assert "LT-9" in said[3]
    assert all(r.status == "completed" for r in sim.responses)
    # Each response's input is the whole conversation so far: it only grows.
    inputs = [r.usage["input_tokens"] for r in sim.responses]
    assert inputs == sorted(inputs)
    assert sim.responses[1].usage["input_token_details"]["audio_tokens"] > 0  # spoken caller turn + greeting
    assert all(r.cost.total > Decimal(0) for r in sim.responses)
    assert len(sim.transcriptions) == 2 and sim.transcription_cost.total > 0
    report = format_report(sim)
    assert "total:" in report and "USD" in report


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--text", "--no-greeting", "where are you located"]) == 0
    out = capsys.readouterr().out
    assert "Harbour Street" in out and "total:" in out
