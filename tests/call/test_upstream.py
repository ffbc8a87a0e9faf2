"""voice/call/upstream.py: the opener's target, backoff and retries, and the conversation restore."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import SecretStr

from voice.call.transcript import Transcript
from voice.call.upstream import (
    Backoff,
    UpstreamOpener,
    is_retriable,
    open_with_retry,
    restore_events,
    restore_items,
)
from voice.config import Settings
from voice.errors import ConfigError, UpstreamAuthError, UpstreamClosedError, UpstreamConnectError
from voice.realtime.client import RealtimeConnection


def test_opener_names_the_agent_to_a_local_engine_only() -> None:
    local = UpstreamOpener(Settings(host="127.0.0.1", port=9000, openai_api_key=None)).for_agent("restaurant")
    url, headers = local.target("gpt-realtime")
    assert url == "ws://127.0.0.1:9000/v1/realtime?model=gpt-realtime&agent=restaurant"
    assert headers == {}
    assert local.is_local_engine
    custom = UpstreamOpener(Settings(upstream_url="ws://localhost:7000/v1/realtime", openai_api_key=None))
    assert custom.for_agent("x").target("m")[0] == "ws://localhost:7000/v1/realtime?model=m&agent=x"
    openai = UpstreamOpener(Settings(openai_api_key=SecretStr("sk-test"))).for_agent("restaurant")
    url, headers = openai.target("gpt-realtime")
    assert url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"  # no agent parameter for OpenAI
    assert headers == {"Authorization": "Bearer sk-test"}
    assert not openai.is_local_engine


def test_backoff_delays_grow_to_the_cap_with_jitter() -> None:
    delays = list(Backoff(attempts=6, base_s=0.25, factor=2, max_s=1.0, jitter=0.0).delays())
    assert delays == [0.0, 0.25, 0.5, 1.0, 1.0, 1.0]
    jittered = list(Backoff(attempts=4, base_s=1.0, jitter=0.2).delays(random.Random(1)))
    assert jittered[0] == 0.0 and all(
        0.8 <= d / b <= 1.2 for d, b in zip(jittered[1:], [1, 2, 4], strict=True)
    )


def test_what_is_retried() -> None:
    assert is_retriable(UpstreamConnectError("refused"))
    assert is_retriable(UpstreamClosedError("closed", code=1006))
    assert not is_retriable(UpstreamAuthError("bad key"))
    assert not is_retriable(ConfigError("bad url"))


async def test_open_with_retry_retries_then_succeeds() -> None:
    calls: list[str] = []
    failures: list[BaseException] = []
    sentinel: Any = object()

    async def opener(model: str) -> RealtimeConnection:
        calls.append(model)
        if len(calls) < 3:
            raise UpstreamConnectError("refused")
        return sentinel  # type: ignore[no-any-return]

    conn = await open_with_retry(
        opener, "m", backoff=Backoff(attempts=5, base_s=0.001), on_failure=failures.append
    )
    assert conn is sentinel and calls == ["m", "m", "m"] and len(failures) == 2


async def test_open_with_retry_gives_up_and_never_retries_auth() -> None:
    attempts = 0

    async def refused(model: str) -> RealtimeConnection:
        nonlocal attempts
        attempts += 1
        raise UpstreamConnectError("refused")

    with pytest.raises(UpstreamConnectError):
        await open_with_retry(refused, "m", backoff=Backoff(attempts=3, base_s=0.001))
    assert attempts == 3

    attempts = 0

    async def bad_key(model: str) -> RealtimeConnection:
        nonlocal attempts
        attempts += 1
        raise UpstreamAuthError("invalid_api_key")

    with pytest.raises(UpstreamAuthError):
        await open_with_retry(bad_key, "m", backoff=Backoff(attempts=3, base_s=0.001))
    assert attempts == 1


def test_restore_items_rebuild_the_conversation_as_heard() -> None:
    t = Transcript("call_1")
    t.system(0, "call started")
    t.agent(
        100,
        "Thank you for calling Luigi's. Would you like to book?",
        item_id="a1",
        heard_ms=900,
        audio_ms=3000,
        interrupted=True,
    )
    t.barge_in(1000, item_id="a1", heard_ms=900)
    t.caller(2000, "What are your hours?", item_id="u1")
    t.agent(2500, "We are open from noon.", item_id="a2")
    t.dtmf(4000, "1", direction="in")
    t.dtmf(4100, "2", direction="out")  # the agent pressed a key: not caller input
    t.tool_call(4200, "book_table", "call_9", {"party_size": 2})
    t.tool_result(4300, "call_9", output='{"confirmation": "ABC"}')
    t.caller(5000, "", item_id="u2")  # an empty turn is left out
    t.error(5100, "upstream connection lost")
    items = restore_items(t.events)
    assert items == [
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Thank you for"}],
        },
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "What are your hours?"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "We are open from noon."}],
        },
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Caller pressed 1"}]},
        {
            "type": "function_call",
            "call_id": "call_9",
            "name": "book_table",
            "arguments": '{"party_size": 2}',
        },
        {"type": "function_call_output", "call_id": "call_9", "output": '{"confirmation": "ABC"}'},
    ]
    events = restore_events(t.events)
    assert [e["type"] for e in events] == ["conversation.item.create"] * len(items)
    assert all(e["event_id"].startswith("event_") for e in events)


def test_restore_keeps_the_latest_items_without_an_orphan_tool_output() -> None:
    t = Transcript("call_2")
    t.tool_call(0, "book_table", "c1", "{}")
    t.tool_result(1, "c1", output="{}")
    for i in range(5):
        t.caller(10 + i, f"turn {i}")
    items = restore_items(t.events, max_items=6)  # the function_call falls off, so its output goes too
    assert [i["type"] for i in items] == ["message"] * 5
    assert restore_items(t.events, max_items=0) == []
