"""``POST /webrtc/offer`` and ``GET /webrtc/config`` in the service app, driven in-process (httpx ASGI
transport, no lifespan: no upstream is ever opened because no peer connects): authentication like
``/ws/browser``, admission (503 busy with Retry-After), WebRTC switched off (404), and the record of a peer
that never connects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridges.webrtc.caller import WebRTCCaller
from voice.auth import mint
from voice.config import Settings
from voice.server import create_app


def make_app(tmp_path: Path, **webrtc: Any) -> Any:
    settings = Settings.model_validate(
        {
            "db_path": tmp_path / "voice.db",
            "recordings_dir": tmp_path / "recordings",
            "max_calls": 1,
            "webrtc": {"host_addresses": ["127.0.0.1"], "connect_timeout_s": 0.5, **webrtc},
            "sip": {"enabled": False},
        }
    )
    return create_app(settings, engine=False)


@pytest.fixture
async def offer_sdp() -> AsyncIterator[str]:
    caller = WebRTCCaller("http://127.0.0.1:9")
    try:
        yield await caller.offer_sdp()
    finally:
        await caller.close()


def client(app: Any, host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080")


async def test_second_caller_is_busy_and_a_peer_that_never_connects_is_recorded(
    tmp_path: Path, offer_sdp: str
) -> None:
    app = make_app(tmp_path)
    store = app.state.service.store
    async with client(app) as http:
        first = await http.post("/webrtc/offer", json={"sdp": offer_sdp, "type": "offer"})
        assert first.status_code == 200 and first.json()["type"] == "answer"
        busy = await http.post("/webrtc/offer", json={"sdp": offer_sdp, "type": "offer"})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy"
        assert busy.headers["retry-after"] == "5"
        call_id = first.json()["call_id"]
        deadline = time.monotonic() + 5
        while (row := store.get_call(call_id)) is None or row["status"] != "ended":
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.05)
        assert row["end_reason"] == "connect_timeout" and row["leg"] == "webrtc"
        assert row["metadata"]["auth"] == "open" and row["metadata"]["caller"] == "127.0.0.1:40000"
        again = await http.post("/webrtc/offer", json={"sdp": offer_sdp, "type": "offer"})
        assert again.status_code == 200  # the slot came back
    await app.state.webrtc_gateway.close()
    store.close()


async def test_callers_off_loopback_need_a_token(tmp_path: Path, offer_sdp: str) -> None:
    app = make_app(tmp_path)
    service = app.state.service
    async with client(app, host="203.0.113.7") as http:
        refused = await http.get("/webrtc/config")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        token = mint(service.token_secret, 60, agent="restaurant")
        config = await http.get("/webrtc/config", params={"token": token})
        assert config.status_code == 200
        assert config.json() == {"ice_servers": [], "ice_transport_policy": "all"}
        wrong_agent = await http.post(
            "/webrtc/offer",
            params={"token": token, "agent": "other"},
            json={"sdp": offer_sdp, "type": "offer"},
        )
        assert wrong_agent.status_code == 403 and wrong_agent.json()["error"]["code"] == "forbidden"
    service.store.close()


async def test_webrtc_can_be_switched_off(tmp_path: Path, offer_sdp: str) -> None:
    app = make_app(tmp_path, enabled=False)
    async with client(app) as http:
        offer = await http.post("/webrtc/offer", json={"sdp": offer_sdp, "type": "offer"})
        config = await http.get("/webrtc/config")
    assert offer.status_code == config.status_code == 404
    assert offer.json()["error"]["code"] == "webrtc_disabled"
    app.state.service.store.close()
