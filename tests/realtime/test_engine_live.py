"""Our client against the real local engine (``voice engine --no-asr`` in its own process).

Every event the engine sends must parse into the SDK's GA models: no Unknown or Malformed events.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util

import pytest
from openai.types.realtime import (
    RealtimeErrorEvent,
    ResponseDoneEvent,
    SessionUpdatedEvent,
)

from tests.conftest import EngineProcess
from voice.realtime.builders import item_create, message_item, response_create, session_update
from voice.realtime.client import RealtimeConnection
from voice.realtime.events import MalformedServerEvent, ServerEvent, UnknownServerEvent
from voice.realtime.pricing import default_price_table, price_usage


def _engine_missing() -> str | None:
    """Why the engine cannot run yet (it is written in parallel), or None when it can be imported."""
    if importlib.util.find_spec("voice.engine.server") is None:
        return "voice/engine/server.py is not written yet"
    try:
        importlib.import_module("voice.engine.server")
    except ImportError as exc:
        return f"the engine cannot be imported yet: {exc}"
    return None


_MISSING = _engine_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

MODEL = "gpt-realtime"


async def _until(conn: RealtimeConnection, kind: type, seen: list[ServerEvent]) -> ServerEvent:
    async with asyncio.timeout(60):
        async for event in conn:
            seen.append(event)
            if isinstance(event, kind):
                return event
    raise AssertionError(f"connection closed before {kind.__name__}; saw {[type(e).__name__ for e in seen]}")


async def test_text_turn_against_the_engine(engine_no_asr: EngineProcess) -> None:
    seen: list[ServerEvent] = []
    url = f"{engine_no_asr.ws_url}?model={MODEL}"
    async with await RealtimeConnection.open(url, test="engine_live") as conn:
        created = await conn.wait_for_session(limit_s=30)
        assert created.session.type == "realtime"

        update = session_update({"instructions": "You are a test agent.", "output_modalities": ["text"]})
        await conn.send(update)
        updated = await _until(conn, SessionUpdatedEvent, seen)
        assert isinstance(updated, SessionUpdatedEvent)
        assert updated.session.instructions == "You are a test agent."  # type: ignore[union-attr]

        await conn.send(item_create(message_item("user", "Hello, I would like to book a table.")))
        await conn.send(response_create())
        done = await _until(conn, ResponseDoneEvent, seen)
        assert isinstance(done, ResponseDoneEvent)
        assert done.response.status == "completed"
        usage = done.response.usage
        assert usage is not None
        assert (usage.input_tokens or 0) > 0 and (usage.output_tokens or 0) > 0
        cost = price_usage(MODEL, usage, default_price_table())
        assert cost.total > 0
        assert cost.input_tokens == usage.input_tokens and cost.output_tokens == usage.output_tokens

        # OpenAI answers an unknown client event with a recoverable error naming the param (live capture).
        await conn.send({"type": "nope", "event_id": "event_bad"})
        error = await _until(conn, RealtimeErrorEvent, seen)
        assert isinstance(error, RealtimeErrorEvent)
        assert (error.error.type, error.error.code, error.error.param) == (
            "invalid_request_error",
            "invalid_value",
            "type",
        )
        assert error.error.event_id == "event_bad"

    bad = [e for e in seen if isinstance(e, UnknownServerEvent | MalformedServerEvent)]
    assert bad == [], bad
