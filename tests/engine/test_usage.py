"""Usage arithmetic of the local engine (voice.engine.usage; protocols.md §B.1, §B.2)."""

from __future__ import annotations

import pytest
from openai.types.realtime.conversation_item_input_audio_transcription_completed_event import (
    UsageTranscriptTextUsageTokens,
)
from openai.types.realtime.realtime_response_usage import RealtimeResponseUsage

from voice.engine.usage import (
    ITEM_OVERHEAD_TOKENS,
    Block,
    InputUsage,
    assistant_audio_tokens,
    cached_tokens,
    input_usage,
    instructions_block,
    item_block,
    response_usage,
    shared_prefix_tokens,
    text_tokens,
    tools_block,
    transcription_usage,
    user_audio_tokens,
)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("é", 1), ("éé", 1), ("ééé", 2), ("x" * 400, 100)],
)
def test_text_tokens_are_utf8_bytes_over_four_rounded_up(text: str, tokens: int) -> None:
    assert text_tokens(text) == tokens


@pytest.mark.parametrize(("ms", "tokens"), [(0, 0), (1, 1), (100, 1), (101, 2), (1000, 10), (3050, 31)])
def test_user_audio_is_one_token_per_100_ms(ms: float, tokens: int) -> None:
    assert user_audio_tokens(ms) == tokens


@pytest.mark.parametrize(("ms", "tokens"), [(0, 0), (1, 1), (50, 1), (51, 2), (1000, 20), (3010, 61)])
def test_assistant_audio_is_one_token_per_50_ms(ms: float, tokens: int) -> None:
    assert assistant_audio_tokens(ms) == tokens


@pytest.mark.parametrize(
    ("shared", "cached"),
    [(0, 0), (500, 0), (1023, 0), (1024, 1024), (1100, 1024), (1151, 1024), (1152, 1152), (5000, 4992)],
)
def test_cache_needs_1024_tokens_then_grows_in_128_token_steps(shared: int, cached: int) -> None:
    assert cached_tokens(shared) == cached


def test_blocks_add_overhead_per_item() -> None:
    assert instructions_block("abcd") == Block("instructions:abcd", ITEM_OVERHEAD_TOKENS + 1, 0)
    assert item_block("k", text="abcdefgh") == Block("k", ITEM_OVERHEAD_TOKENS + 2, 0)
    assert item_block("u", user_audio_ms=2000) == Block("u", ITEM_OVERHEAD_TOKENS, 20)
    assert item_block("a", assistant_audio_ms=2000) == Block("a", ITEM_OVERHEAD_TOKENS, 40)
    assert tools_block([]) is None
    tools = tools_block([{"type": "function", "name": "f"}])
    assert tools is not None
    assert tools.text_tokens == ITEM_OVERHEAD_TOKENS + text_tokens('[{"name":"f","type":"function"}]')


def test_shared_prefix_stops_at_the_first_different_block() -> None:
    a, b, c = Block("a", 10, 0), Block("b", 5, 20), Block("c", 7, 0)
    assert shared_prefix_tokens([a, b, c], [a, b, c]) == 42
    assert shared_prefix_tokens([a, b], [a, b, c]) == 35
    assert shared_prefix_tokens([a, Block("b", 5, 19), c], [a, b, c]) == 10  # the item changed (truncated)
    assert shared_prefix_tokens([b, a], [a, b]) == 0


def test_no_previous_response_means_nothing_cached() -> None:
    blocks = [Block("i", 2000, 0)]
    assert input_usage(blocks, None) == InputUsage(2000, 0, 0, 0)


def test_cached_tokens_are_split_by_what_the_cached_prefix_holds() -> None:
    instructions = Block("i", 900, 0)
    caller = Block("u1", 4, 300)  # overhead text first, then audio
    agent = Block("a1", 4, 600)
    previous = [instructions, caller]
    current = [instructions, caller, agent]
    usage = input_usage(current, previous)
    # shared = 900 + 304 = 1204 -> cached 1152 = 900 text + 4 text + 248 audio
    assert usage == InputUsage(
        text_tokens=908, audio_tokens=900, cached_text_tokens=904, cached_audio_tokens=248
    )
    assert usage.tokens == 1808
    assert usage.cached_tokens == 1152


def test_below_the_minimum_nothing_is_cached() -> None:
    blocks = [Block("i", 1000, 0), Block("u", 4, 10)]
    assert input_usage(blocks, blocks).cached_tokens == 0


def test_response_usage_shape_validates_against_the_sdk() -> None:
    usage = response_usage(InputUsage(313, 476, 256, 384), 9, 23)
    assert usage == {
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
    RealtimeResponseUsage.model_validate(usage)


def test_transcription_usage() -> None:
    usage = transcription_usage(3000, "I would like a table", prompt="")
    assert usage == {
        "type": "tokens",
        "input_tokens": 30,
        "output_tokens": 5,
        "total_tokens": 35,
        "input_token_details": {"text_tokens": 0, "audio_tokens": 30},
    }
    UsageTranscriptTextUsageTokens.model_validate(usage)
