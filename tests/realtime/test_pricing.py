"""Pricing with exact decimals (protocols.md §B), priced by hand."""

from __future__ import annotations

from decimal import Decimal

import pytest
from openai.types.realtime import RealtimeResponseUsage
from openai.types.realtime.conversation_item_input_audio_transcription_completed_event import (
    UsageTranscriptTextUsageDuration,
    UsageTranscriptTextUsageTokens,
)

from tests.realtime.samples import USAGE_B1
from voice.config import ModelPriceOverride
from voice.errors import ConfigError, RemoteProtocolError
from voice.realtime.pricing import (
    CostBreakdown,
    ModelPrice,
    decimal_str,
    default_price_table,
    model_family,
    price_transcription,
    price_usage,
    sum_costs,
    with_overrides,
)

D = Decimal
TABLE = default_price_table()


def test_b1_sample_on_gpt_realtime_by_hand() -> None:
    # §B.1: text 313 in (256 cached), audio 476 in (384 cached), out text 9, audio 23. §B.3 gpt-realtime:
    #   fresh text   57 × 4.00  =  228.0      cached text  256 × 0.40 = 102.4
    #   fresh audio  92 × 32.00 = 2944.0      cached audio 384 × 0.40 = 153.6
    #   out text      9 × 16.00 =  144.0      out audio     23 × 64.00 = 1472.0
    #   total 5044.0 per 1M tokens = $0.005044
    #   savings: 256 × (4.00 − 0.40) + 384 × (32.00 − 0.40) = 921.6 + 12134.4 = 13056 -> $0.013056
    cost = price_usage("gpt-realtime", USAGE_B1, TABLE)
    assert (cost.text_input_fresh_tokens, cost.text_input_cached_tokens) == (57, 256)
    assert (cost.audio_input_fresh_tokens, cost.audio_input_cached_tokens) == (92, 384)
    assert (cost.text_output_tokens, cost.audio_output_tokens) == (9, 23)
    assert cost.text_input_fresh_cost == D("0.000228")
    assert cost.text_input_cached_cost == D("0.0001024")
    assert cost.audio_input_fresh_cost == D("0.002944")
    assert cost.audio_input_cached_cost == D("0.0001536")
    assert cost.text_output_cost == D("0.000144")
    assert cost.audio_output_cost == D("0.001472")
    assert cost.image_cost == 0
    assert cost.total == D("0.005044")
    assert cost.cache_savings == D("0.013056")
    assert cost.input_tokens == 789 and cost.output_tokens == 32 and cost.cached_input_tokens == 640
    assert cost.input_cost == D("0.0034280")
    assert cost.output_cost == D("0.001616")
    assert cost.text_cost == D("0.0004744") and cost.audio_cost == D("0.0045696")
    assert cost.cached_share == D(640) / D(789)


def test_b1_sample_as_sdk_model_and_on_mini() -> None:
    usage = RealtimeResponseUsage.model_validate(USAGE_B1)
    assert price_usage("gpt-realtime", usage, TABLE) == price_usage("gpt-realtime", USAGE_B1, TABLE)
    # gpt-realtime-mini: 57×0.60 + 256×0.06 + 92×10 + 384×0.30 + 9×2.40 + 23×20
    #   = 34.2 + 15.36 + 920 + 115.2 + 21.6 + 460 = 1566.36 -> $0.00156636
    mini = price_usage("gpt-realtime-mini", usage, TABLE)
    assert mini.total == D("0.00156636")
    # gpt-realtime-2: text out 24.00 instead of 16.00 -> + 9 × 8 = 72 -> 5116 -> $0.005116
    assert price_usage("gpt-realtime-2", usage, TABLE).total == D("0.005116")


def test_image_tokens() -> None:
    usage = {
        "input_token_details": {
            "text_tokens": 0,
            "image_tokens": 1000,
            "cached_tokens_details": {"image_tokens": 400},
        }
    }
    cost = price_usage("gpt-realtime", usage, TABLE)
    # 600 × 5.00 + 400 × 0.50 = 3000 + 200 = 3200 -> $0.0032; savings 400 × 4.50 = 1800 -> $0.0018
    assert cost.image_input_fresh_cost == D("0.003") and cost.image_input_cached_cost == D("0.0002")
    assert cost.total == D("0.0032") and cost.cache_savings == D("0.0018")


def test_missing_fields_are_zero() -> None:
    assert price_usage("gpt-realtime", {}, TABLE) == CostBreakdown()
    assert price_usage("gpt-realtime", {"input_token_details": None}, TABLE).total == 0
    out_only = price_usage("gpt-realtime", {"output_token_details": {"audio_tokens": 1000}}, TABLE)
    assert out_only.total == D("0.064")
    assert price_usage("gpt-realtime", RealtimeResponseUsage(), TABLE).total == 0


def test_bare_cached_tokens_go_to_text_then_audio() -> None:
    usage = {"input_token_details": {"text_tokens": 100, "audio_tokens": 100, "cached_tokens": 150}}
    cost = price_usage("gpt-realtime", usage, TABLE)
    assert (cost.text_input_cached_tokens, cost.audio_input_cached_tokens) == (100, 50)


def test_cached_counts_are_clamped_and_negative_counts_are_zero() -> None:
    usage = {
        "input_token_details": {"text_tokens": 10, "cached_tokens_details": {"text_tokens": 50}},
        "output_token_details": {"audio_tokens": -5},
    }
    cost = price_usage("gpt-realtime", usage, TABLE)
    assert (cost.text_input_fresh_tokens, cost.text_input_cached_tokens, cost.audio_output_tokens) == (
        0,
        10,
        0,
    )


@pytest.mark.parametrize(
    "usage",
    [
        {"input_token_details": {"text_tokens": "10"}},
        {"input_token_details": {"text_tokens": 1.5}},
        {"input_token_details": {"text_tokens": True}},
        {"input_token_details": 5},
        {"output_token_details": ["audio_tokens"]},
    ],
)
def test_bad_usage_from_the_peer(usage: dict[str, object]) -> None:
    with pytest.raises(RemoteProtocolError):
        price_usage("gpt-realtime", usage, TABLE)


def test_dated_ids_resolve_to_their_family() -> None:
    assert model_family("gpt-realtime-2025-08-28") == "gpt-realtime"
    assert model_family("gpt-realtime-mini-2025-12-15") == "gpt-realtime-mini"
    assert model_family("gpt-4o-mini-transcribe-2025-12-15") == "gpt-4o-mini-transcribe"
    assert model_family("gpt-realtime-2.1") == "gpt-realtime-2.1"
    assert TABLE.price("gpt-realtime-2025-08-28") == TABLE.price("gpt-realtime")
    assert TABLE.price("gpt-realtime-mini-2025-10-06") == TABLE.price("gpt-realtime-mini")
    assert "gpt-realtime-2025-08-28" in TABLE and "gpt-5" not in TABLE


def test_default_table_rows() -> None:
    for model in ("gpt-realtime", "gpt-realtime-1.5", "gpt-realtime-2", "gpt-realtime-2.1"):
        p = TABLE.price(model)
        assert (p.text_input, p.text_cached_input, p.audio_input, p.audio_cached_input, p.audio_output) == (
            D("4.00"), D("0.40"), D("32.00"), D("0.40"), D("64.00"),
        )  # fmt: skip
        assert (p.image_input, p.image_cached_input) == (D("5.00"), D("0.50"))
    assert TABLE.price("gpt-realtime").text_output == D("16.00")
    assert TABLE.price("gpt-realtime-1.5").text_output == D("16.00")
    assert TABLE.price("gpt-realtime-2").text_output == D("24.00")
    assert TABLE.price("gpt-realtime-2.1").text_output == D("24.00")
    for model in ("gpt-realtime-mini", "gpt-realtime-2.1-mini"):
        p = TABLE.price(model)
        assert (p.text_input, p.text_cached_input, p.text_output) == (D("0.60"), D("0.06"), D("2.40"))
        assert (p.audio_input, p.audio_cached_input, p.audio_output) == (D("10.00"), D("0.30"), D("20.00"))
        assert (p.image_input, p.image_cached_input) == (D("0.80"), D("0.08"))


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"no price for model 'my-azure-deployment'.*Known models: gpt-4o"):
        price_usage("my-azure-deployment", USAGE_B1, TABLE)
    with pytest.raises(ConfigError):
        price_transcription("whisper-2", {"type": "duration", "seconds": 1}, TABLE)


def test_overrides() -> None:
    table = with_overrides(
        TABLE,
        {
            "gpt-realtime": ModelPriceOverride(audio_output=D("50.00")),
            "gpt-realtime-2025-08-28": {"text_input": "3.00"},
            "my-deployment": {"text_input": "1", "text_output": "2"},
        },
    )
    assert table.price("gpt-realtime").audio_output == D("50.00")
    assert table.price("gpt-realtime").audio_input == D("32.00")  # unchanged field kept
    dated = table.price("gpt-realtime-2025-08-28")
    assert dated.text_input == D("3.00") and dated.audio_output == D("50.00")  # inherits the family
    assert table.price("my-deployment") == ModelPrice(text_input=D(1), text_output=D(2))
    assert TABLE.price("gpt-realtime").audio_output == D("64.00")  # the default table is untouched
    # settings.prices then profile.prices: the later one wins.
    profile = with_overrides(table, {"gpt-realtime": {"audio_output": "40"}})
    assert profile.price("gpt-realtime").audio_output == D("40")
    with pytest.raises(ConfigError, match="negative"):
        with_overrides(TABLE, {"gpt-realtime": {"text_input": "-1"}})


def test_transcription_tokens() -> None:
    # gpt-4o-transcribe: 16 audio in × 6.00 + 8 text out × 10.00 = 96 + 80 = 176 -> $0.000176
    usage = {
        "type": "tokens",
        "total_tokens": 24,
        "input_tokens": 16,
        "input_token_details": {"text_tokens": 0, "audio_tokens": 16},
        "output_tokens": 8,
    }
    cost = price_transcription("gpt-4o-transcribe", usage, TABLE)
    assert cost.total == D("0.000176")
    sdk = UsageTranscriptTextUsageTokens.model_validate(usage)
    assert price_transcription("gpt-4o-transcribe", sdk, TABLE) == cost
    # gpt-4o-mini-transcribe with a text prompt: 10 text × 1.25 + 16 audio × 3.00 + 8 × 5.00 = 12.5 + 48 + 40
    prompt = dict(usage, input_tokens=26, input_token_details={"text_tokens": 10, "audio_tokens": 16})
    assert price_transcription("gpt-4o-mini-transcribe", prompt, TABLE).total == D("0.0001005")
    # No details: input tokens count as audio.
    bare = {"type": "tokens", "input_tokens": 16, "output_tokens": 8, "total_tokens": 24}
    assert price_transcription("gpt-4o-transcribe", bare, TABLE).audio_input_fresh_tokens == 16


def test_transcription_duration() -> None:
    # whisper-1: $0.006 per minute; 90 s -> $0.009; 7.5 s -> $0.00075
    cost = price_transcription("whisper-1", {"type": "duration", "seconds": 90}, TABLE)
    assert cost.duration_cost == D("0.009") and cost.total == D("0.009")
    assert cost.duration_seconds == D(90)
    sdk = UsageTranscriptTextUsageDuration(type="duration", seconds=7.5)
    assert price_transcription("whisper-1", sdk, TABLE).total == D("0.00075")
    # 1 s -> 0.0001 exactly; 0.1 s keeps its decimal value (no binary float artefacts).
    assert price_transcription("whisper-1", {"type": "duration", "seconds": 1}, TABLE).total == D("0.0001")
    assert price_transcription("whisper-1", {"type": "duration", "seconds": 0.1}, TABLE).total == D("0.00001")


@pytest.mark.parametrize(
    "usage",
    [
        {"type": "duration", "seconds": "10"},
        {"type": "duration", "seconds": float("nan")},
        {"type": "duration"},
        {"type": "minutes", "value": 1},
    ],
)
def test_bad_transcription_usage(usage: dict[str, object]) -> None:
    with pytest.raises(RemoteProtocolError):
        price_transcription("whisper-1", usage, TABLE)


def test_breakdown_addition_and_dict() -> None:
    a = price_usage("gpt-realtime", USAGE_B1, TABLE)
    b = price_transcription("whisper-1", {"type": "duration", "seconds": 60}, TABLE)
    total = a + b
    assert total.total == D("0.005044") + D("0.006")
    assert total.duration_seconds == 60 and total.input_tokens == 789
    assert sum([a, a, b]) == a + a + b == sum_costs([a, a, b])
    assert (a + a).total == D("0.010088") and (a + a).cache_savings == D("0.026112")
    d = total.to_dict()
    assert d["total"] == "0.011044"
    assert d["audio_output_cost"] == "0.001472"
    assert d["input_tokens"] == 789 and d["text_input_fresh_tokens"] == 57
    assert d["cache_savings"] == "0.013056"
    assert all(isinstance(v, int | str) for v in d.values())
    assert CostBreakdown().to_dict()["cached_share"] == "0"
    # One cached mini text token costs $0.00000006: plain notation, never "6E-8".
    tiny = price_usage(
        "gpt-realtime-mini", {"input_token_details": {"text_tokens": 1, "cached_tokens": 1}}, TABLE
    )
    assert tiny.to_dict()["text_input_cached_cost"] == "0.00000006"
    assert decimal_str(D("100")) == "100"
