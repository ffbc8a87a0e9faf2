"""The engine's Starlette app in process (recognition off): routes, errors on the wire, disconnects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.engine.helpers import validate_server_event
from voice.config import Settings
from voice.engine.server import create_app, ws_max_size


@pytest.fixture
def settings() -> Settings:
    s = Settings()
    s.engine.asr = False
    s.engine.max_message_bytes = 4096
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, warm_up=False)) as test_client:
        yield test_client


def receive(ws: Any) -> dict[str, Any]:
    event: dict[str, Any] = ws.receive_json()
    validate_server_event(event)
    return event


def receive_until(ws: Any, kind: str, limit: int = 500) -> list[dict[str, Any]]:
    events = []
    for _ in range(limit):
        events.append(receive(ws))
        if events[-1]["type"] == kind:
            return events
    raise AssertionError(f"no {kind} in {[e['type'] for e in events]}")


def test_healthz_and_status_page(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["sessions"] == 0 and health["recognition"] is False
    page = client.get("/").text
    assert "Local Realtime engine" in page
    assert 'base_url="http://testserver/v1"' in page
    assert "restaurant" in page


def test_session_created_then_errors_keep_the_session_open(client: TestClient) -> None:
    with client.websocket_connect(
        "/v1/realtime?model=gpt-realtime", headers={"Authorization": "Bearer anything"}
    ) as ws:
        created = receive(ws)
        assert created["type"] == "session.created"
        assert created["session"]["model"] == "gpt-realtime"
        assert client.get("/healthz").json()["sessions"] == 1

        ws.send_text("{not json")
        error = receive(ws)["error"]
        assert error["code"] == "invalid_json" and error["type"] == "invalid_request_error"

        ws.send_text(json.dumps({"type": "no.such.event", "event_id": "e1"}))
        error = receive(ws)["error"]
        assert error["code"] == "invalid_value" and error["param"] == "type" and error["event_id"] == "e1"

        ws.send_text(json.dumps({"type": "conversation.item.delete"}))
        assert receive(ws)["error"]["code"] == "missing_required_parameter"

        ws.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 8000}))
        assert receive(ws)["error"]["code"] == "message_too_large"

        ws.send_bytes(b"[1, 2]")
        assert receive(ws)["type"] == "error"

        ws.send_text(json.dumps({"type": "input_audio_buffer.clear"}))
        assert receive(ws)["type"] == "input_audio_buffer.cleared"


def test_a_text_conversation_over_the_wire(client: TestClient) -> None:
    with client.websocket_connect("/v1/realtime?model=gpt-realtime-mini&agent=restaurant") as ws:
        receive(ws)
        ws.send_text(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "output_modalities": ["text"],
                        "audio": {"input": {"turn_detection": None}},
                    },
                }
            )
        )
        assert receive(ws)["type"] == "session.updated"
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "When are you open?"}],
        }
        ws.send_text(json.dumps({"type": "conversation.item.create", "item": item}))
        ws.send_text(json.dumps({"type": "response.create"}))
        events = receive_until(ws, "response.done")
        text = next(e for e in events if e["type"] == "response.output_text.done")["text"]
        assert "Tuesday to Sunday" in text
        assert events[-1]["response"]["status"] == "completed"


def test_audio_response_is_streamed(client: TestClient) -> None:
    with client.websocket_connect("/v1/realtime?model=gpt-realtime") as ws:
        receive(ws)
        ws.send_text(json.dumps({"type": "response.create"}))
        events = receive_until(ws, "response.done")
        deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
        assert len(deltas) > 10
        transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")[
            "transcript"
        ]
        assert "Luigi" in transcript


def test_unknown_agent_is_refused_with_an_error_event(client: TestClient) -> None:
    with client.websocket_connect("/v1/realtime?model=gpt-realtime&agent=nobody") as ws:
        error = receive(ws)["error"]
        assert error["param"] == "agent" and "nobody" in error["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008


def test_realtime_subprotocol_is_accepted(client: TestClient) -> None:
    with client.websocket_connect(
        "/v1/realtime?model=gpt-realtime", subprotocols=["realtime", "openai-insecure-api-key.x"]
    ) as ws:
        assert ws.accepted_subprotocol == "realtime"
        assert receive(ws)["type"] == "session.created"


def test_ws_max_size_lets_oversized_messages_reach_the_session(settings: Settings) -> None:
    assert ws_max_size(settings) > settings.engine.max_message_bytes
