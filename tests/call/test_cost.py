"""The cost meter: exact running totals, the per-call breakdown and the budget states."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from voice.call.cost import CostMeter, CostTotals, breakdown_from_dict, per_minute, ratio
from voice.errors import ConfigError
from voice.realtime.pricing import default_price_table, price_usage

# The real usage block of protocols.md §B.1.
USAGE: dict[str, Any] = {
    "total_tokens": 821,
    "input_tokens": 789,
    "output_tokens": 32,
    "input_token_details": {
        "text_tokens": 313,
        "audio_tokens": 476,
        "image_tokens": 0,
        "cached_tokens": 640,
        "cached_tokens_details": {"text_tokens": 256, "audio_tokens": 384, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 9, "audio_tokens": 23},
}
# gpt-realtime, USD per 1M: text 4.00 / 0.40 / 16.00, audio 32.00 / 0.40 / 64.00.
# 57*4 + 256*0.4 + 92*32 + 384*0.4 + 9*16 + 23*64 = 5044 micro-USD
ONE = Decimal("0.005044")
# cached tokens at the fresh price minus their cached price: 256*3.6 + 384*31.6 = 13056 micro-USD
ONE_SAVED = Decimal("0.013056")


def meter(budget: Decimal | None = None) -> CostMeter:
    return CostMeter("gpt-realtime", default_price_table(), budget, transcription_model="gpt-4o-transcribe")


def test_response_usage_running_total_is_exact() -> None:
    m = meter()
    first = m.add_response_usage(USAGE)
    assert first.total == ONE
    assert m.last is not None and m.last.total == ONE
    second = m.add_response_usage(USAGE)
    assert second.total == m.total == 2 * ONE
    for _ in range(998):
        m.add_response_usage(USAGE)
    assert m.total == Decimal("5.044")  # no float drift after 1000 additions
    assert m.totals.responses == 1000


def test_breakdown_fresh_cached_audio_text_share_savings_per_minute() -> None:
    m = meter()
    m.add_response_usage(USAGE)
    details = {"text_tokens": 0, "audio_tokens": 50}
    m.add_transcription_usage(
        None, {"type": "tokens", "input_tokens": 50, "output_tokens": 10, "input_token_details": details}
    )
    # transcription: 50 audio * 6.00 + 10 text out * 10.00 = 400 micro-USD
    b = m.breakdown(duration_ms=90_000)
    json.dumps(b)  # JSON-ready
    assert b["model"] == "gpt-realtime"
    assert Decimal(b["total_usd"]) == ONE + Decimal("0.0004")
    assert Decimal(b["response_usd"]) == ONE
    assert Decimal(b["transcription_usd"]) == Decimal("0.0004")
    assert Decimal(b["fresh_input_usd"]) == Decimal("0.000228") + Decimal("0.002944") + Decimal("0.0003")
    assert Decimal(b["cached_input_usd"]) == Decimal("0.0001024") + Decimal("0.0001536")
    assert Decimal(b["output_usd"]) == Decimal("0.000144") + Decimal("0.001472") + Decimal("0.0001")
    assert Decimal(b["audio_usd"]) == Decimal("0.002944") + Decimal("0.0001536") + Decimal(
        "0.001472"
    ) + Decimal("0.0003")
    assert Decimal(b["text_usd"]) == Decimal("0.000228") + Decimal("0.0001024") + Decimal(
        "0.000144"
    ) + Decimal("0.0001")
    assert b["input_tokens"] == 789 and b["cached_input_tokens"] == 640 and b["output_tokens"] == 32
    assert b["cached_share"] == "0.811153"  # 640 / 789, responses only (transcription is never cached)
    assert Decimal(b["savings_usd"]) == ONE_SAVED
    # 0.005444 USD over 1.5 minutes
    assert b["per_minute_usd"] == "0.003629"
    assert b["responses"] == 1 and b["transcriptions"] == 1
    assert b["response"]["audio_input_cached_tokens"] == 384
    assert b["budget_usd"] is None and b["near_budget"] is False and b["over_budget"] is False
    assert m.breakdown()["per_minute_usd"] is None
    assert m.usage()["cached_input_tokens"] == 640
    assert m.usage()["transcription_input_tokens"] == 50


def test_savings_equal_what_the_cached_tokens_would_have_cost_fresh() -> None:
    uncached = json.loads(json.dumps(USAGE))
    uncached["input_token_details"]["cached_tokens"] = 0
    uncached["input_token_details"]["cached_tokens_details"] = {"text_tokens": 0, "audio_tokens": 0}
    fresh = price_usage("gpt-realtime", uncached, default_price_table()).total
    m = meter()
    m.add_response_usage(USAGE)
    assert fresh - m.total == Decimal(m.breakdown()["savings_usd"])


def test_duration_transcription_priced_per_minute() -> None:
    m = meter()
    m.add_transcription_usage("whisper-1", {"type": "duration", "seconds": 30})
    assert m.total == Decimal("0.003")
    assert m.breakdown()["duration_usd"] == "0.003000000000"


def test_budget_warns_at_80_percent_then_ends_once_each() -> None:
    m = meter(Decimal("0.012"))  # warn at 0.0096
    m.add_response_usage(USAGE)  # 0.005044
    assert (m.near_budget, m.over_budget, m.budget_action()) == (False, False, None)
    m.add_response_usage(USAGE)  # 0.010088
    assert (m.near_budget, m.over_budget) == (True, False)
    assert m.budget_action() == "warn"
    assert m.budget_action() is None  # only once
    m.add_response_usage(USAGE)  # 0.015132
    assert m.over_budget
    assert m.budget_action() == "end"
    assert m.budget_action() is None
    b = m.breakdown()
    assert b["budget_usd"] == "0.012" and b["over_budget"] is True and b["budget_used"] == "1.261000"


def test_budget_jump_past_the_limit_ends_without_warning() -> None:
    m = meter(Decimal("0.005"))
    m.add_response_usage(USAGE)
    assert m.budget_action() == "end"
    assert m.budget_action() is None


def test_budget_reached_exactly_is_over() -> None:
    m = meter(ONE)
    m.add_response_usage(USAGE)
    assert m.over_budget


def test_no_budget_never_acts() -> None:
    m = meter()
    for _ in range(10):
        m.add_response_usage(USAGE)
    assert not m.near_budget and not m.over_budget and m.budget_action() is None


@pytest.mark.parametrize("budget", [Decimal(0), Decimal("-1"), Decimal("NaN"), 0.5])
def test_bad_budget_is_a_config_error(budget: Any) -> None:
    with pytest.raises(ConfigError, match="budget"):
        meter(budget)


def test_unknown_model_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="no price for model 'my-azure-deployment'"):
        CostMeter("my-azure-deployment", default_price_table())


def test_transcription_without_a_model_name_is_a_config_error() -> None:
    m = CostMeter("gpt-realtime", default_price_table())
    with pytest.raises(ConfigError, match="transcription model"):
        m.add_transcription_usage(None, {"type": "duration", "seconds": 1})


def test_breakdown_round_trips_through_its_dict() -> None:
    cost = price_usage("gpt-realtime", USAGE, default_price_table())
    assert breakdown_from_dict(json.loads(json.dumps(cost.to_dict()))) == cost


def test_totals_merge_and_cache_hit_rate() -> None:
    a, b = CostTotals(), CostTotals()
    cost = price_usage("gpt-realtime", USAGE, default_price_table())
    a.add("response", cost)
    b.add("response", cost)
    a.merge(b)
    assert a.total == 2 * ONE and a.responses == 2
    assert a.cache_hit_rate == Decimal("0.811153")
    assert CostTotals().cache_hit_rate is None


def test_ratio_and_per_minute() -> None:
    assert ratio(Decimal(1), Decimal(3)) == Decimal("0.333333")
    assert ratio(Decimal(1), Decimal(0)) is None
    assert per_minute(Decimal("0.5"), 30_000) == Decimal("1.000000")
    assert per_minute(Decimal("0.5"), 0) is None
    assert per_minute(Decimal("0.5"), None) is None
