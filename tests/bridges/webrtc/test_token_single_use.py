"""A browser caller token starts one WebRTC call too: ``GET /webrtc/config`` and a busy answer leave it
usable, the offer that is admitted spends it, a second offer with it is refused (``token_used``)."""

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

REMOTE = "203.0.113.7"  # only the ASGI scope's client address: never contacted


@pytest.fixture
async def offer_sdp() -> AsyncIterator[str]:
    caller = WebRTCCaller("http://127.0.0.1:9")
    try:
        yield await caller.offer_sdp()
    finally:
        await caller.close()


async def test_an_offer_spends_the_token_once(tmp_path: Path, offer_sdp: str) -> None:
    settings = Settings.model_validate(
        {
            "db_path": tmp_path / "voice.db",
            "recordings_dir": tmp_path / "recordings",
            "max_calls": 2,
            "webrtc": {"host_addresses": ["127.0.0.1"], "connect_timeout_s": 0.5},
            "sip": {"enabled": False},
        }
    )
    app = create_app(settings, engine=False)
    service: Any = app.state.service
    transport = httpx.ASGITransport(app=app, client=(REMOTE, 40000))
    token = mint(service.token_secret, 60, agent="restaurant")
    params = {"token": token, "agent": "restaurant"}
    offer = {"sdp": offer_sdp, "type": "offer"}
    async with httpx.AsyncClient(transport=transport, base_url="http://voice.example") as http:
        for _ in range(2):
            assert (await http.get("/webrtc/config", params=params)).status_code == 200
        held = [service.manager.admit(), service.manager.admit()]
        busy = await http.post("/webrtc/offer", params=params, json=offer)
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy"
        for slot in held:
            slot.release()
        first = await http.post("/webrtc/offer", params=params, json=offer)
        assert first.status_code == 200 and first.json()["type"] == "answer"
        replay = await http.post("/webrtc/offer", params=params, json=offer)
        assert replay.status_code == 401
        assert replay.json()["error"]["code"] == "token_used"
        call_id = first.json()["call_id"]
        deadline = time.monotonic() + 5
        while (row := service.store.get_call(call_id)) is None or row["status"] != "ended":
            assert time.monotonic() < deadline, row
            await asyncio.sleep(0.05)
        slots = [service.manager.admit(), service.manager.admit()]  # busy if the replay had kept one
        for slot in slots:
            slot.release()
    assert service.store.spent_token_count() == 1
    await app.state.webrtc_gateway.close()
    service.store.close()
