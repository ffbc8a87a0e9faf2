"""``/ws/browser`` admission over real loopback WebSockets against ``voice serve`` (its own process, the
local engine): a single-use token replayed is refused, and a burst from one client address is rate limited
while other addresses and calls already running are not.

Client addresses other than loopback come from ``X-Forwarded-For``, which uvicorn takes as the client
address from a loopback peer (its default ``forwarded_allow_ips``), exactly as behind a reverse proxy on the
same host; every socket is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.servicehelp import ServiceProcess, service_env, start_service, wait_until

ADDRESS_A = "203.0.113.7"
ADDRESS_B = "198.51.100.9"
ADDRESS_C = "192.0.2.10"  # documentation addresses (RFC 5737), one set per test: the buckets persist
SILENCE = bytes(960)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    home = tmp_path_factory.mktemp("serve-auth")
    env = service_env(
        home,
        VOICE_ENGINE__ASR="false",
        VOICE_BROWSER_RATE_BURST="2",
        VOICE_BROWSER_RATE_PER_S="0.001",  # no refill within the test
    )
    running = start_service(home, env=env)
    yield running
    running.stop()


def _headers(address: str | None) -> dict[str, str] | None:
    return {"X-Forwarded-For": address} if address else None


async def _mint(service: ServiceProcess, count: int = 1) -> list[str]:
    """``count`` tokens minted at once through the operator API (loopback: no api_token needed)."""
    async with httpx.AsyncClient(base_url=service.base, trust_env=False) as http:
        answers = await asyncio.gather(*(http.post("/api/tokens", json={"ttl_s": 120}) for _ in range(count)))
    assert all(a.status_code == 201 for a in answers)
    return [str(a.json()["token"]) for a in answers]


def _url(service: ServiceProcess, token: str | None = None) -> str:
    return f"{service.ws_base}/ws/browser" + (f"?token={quote(token, safe='')}" if token else "")


async def _next_json(ws: ClientConnection) -> dict[str, Any]:
    """The next JSON message (agent audio frames in between are skipped)."""
    async with asyncio.timeout(10):
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                msg: dict[str, Any] = json.loads(message)
                return msg


@contextlib.asynccontextmanager
async def _live_call(url: str, address: str | None = None) -> AsyncIterator[tuple[ClientConnection, str]]:
    """A call that has started (``call.started`` received); yields the socket and the call id."""
    async with websockets.connect(url, additional_headers=_headers(address)) as ws:
        started = await _next_json(ws)
        assert started["type"] == "call.started", started
        yield ws, str(started["call_id"])


async def _hang_up(ws: ClientConnection) -> dict[str, Any]:
    """Hang up like the page does; returns ``call.ended`` once the server has closed normally."""
    await ws.send(json.dumps({"type": "hangup"}))
    while (msg := await _next_json(ws))["type"] != "call.ended":
        pass
    with contextlib.suppress(websockets.ConnectionClosed):
        async with asyncio.timeout(10):
            while True:
                await ws.recv()
    assert ws.close_code == 1000
    return msg


async def _attempt(url: str, address: str | None = None) -> tuple[str, int | None, str]:
    """One call attempt: ``("started", 1000, "")`` (then hung up), or the refusal's error code, close
    code and close reason."""
    async with websockets.connect(url, additional_headers=_headers(address)) as ws:
        first = await _next_json(ws)
        if first["type"] == "call.started":
            await _hang_up(ws)
            return "started", ws.close_code, ""
        assert first["type"] == "error", first
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(10):
                await ws.recv()
        return str(first["code"]), ws.close_code, ws.close_reason or ""


def _log_events(service: ServiceProcess, event: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for line in service.log_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == event:
                found.append(entry)
    return found


async def _refusals(service: ServiceProcess, reason: str) -> float:
    async with httpx.AsyncClient(base_url=service.base, trust_env=False) as http:
        text = (await http.get("/metrics")).text
    prefix = f'voice_calls_refused_total{{reason="{reason}"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


async def test_a_replayed_token_is_refused(service: ServiceProcess) -> None:
    """The token's first call is unaffected when its token is replayed mid-call, and after it."""
    (token,) = await _mint(service)
    url = _url(service, token)
    async with _live_call(url, ADDRESS_C) as (ws, call_id):
        assert await _attempt(url, ADDRESS_C) == (
            "token_used",
            1008,
            "this token has already been used to start a call; get a new one (POST /api/tokens)",
        )
        await ws.send(SILENCE)
        ended = await _hang_up(ws)
    assert ended == {"type": "call.ended", "reason": "caller_hangup", "call_id": call_id}
    code, close, _ = await _attempt(url)  # from loopback, after the call: still spent
    assert (code, close) == ("token_used", 1008)
    await wait_until(lambda: len(_log_events(service, "browser_token_replayed")) >= 2)
    replays = _log_events(service, "browser_token_replayed")
    assert {r["client"] for r in replays} >= {ADDRESS_C, "127.0.0.1"}
    assert all(token not in json.dumps(r) for r in replays)  # the token itself is never logged
    assert await _refusals(service, "token_used") >= 2


async def test_tokens_minted_at_once_each_start_one_call(service: ServiceProcess) -> None:
    """Four tokens minted together start four simultaneous calls; two more simultaneous uses of the first
    token are refused, whichever of its three uses the server saw first."""
    tokens = await _mint(service, 4)
    urls = [_url(service, t) for t in tokens] + [_url(service, tokens[0])] * 2
    results = await asyncio.gather(*(_attempt(u) for u in urls))
    assert sorted(code for code, _, _ in results) == ["started"] * 4 + ["token_used"] * 2
    first_token = [code for (code, _, _), u in zip(results, urls, strict=True) if u == urls[0]]
    assert sorted(first_token) == ["started", "token_used", "token_used"]


async def test_a_burst_from_one_address_is_rate_limited(service: ServiceProcess) -> None:
    """Burst 2 (no refill in the test): the third attempt from address A is refused with 1013 while A's
    first call goes on, address B and loopback development calls get in, and the refused token was not
    spent."""
    before = await _refusals(service, "rate_limited")
    tokens = await _mint(service, 3)
    async with _live_call(_url(service, tokens[0]), ADDRESS_A) as (first, first_id):
        assert (await _attempt(_url(service, tokens[1]), ADDRESS_A))[:2] == ("started", 1000)
        code, close, reason = await _attempt(_url(service, tokens[2]), ADDRESS_A)
        assert (code, close) == ("rate_limited", 1013)
        assert reason.startswith("rate limited: too many new calls from your address; try again in")
        bad = await _attempt(_url(service, "not-even-a-token"), ADDRESS_A)  # refused before the token check
        assert bad[:2] == ("rate_limited", 1013)

        async with httpx.AsyncClient(base_url=service.base, trust_env=False) as http:
            row = (await http.get(f"/api/calls/{first_id}")).json()
        assert row["status"] == "live" and row["live"] is not None  # A's first call is unaffected
        assert await _attempt(_url(service, tokens[2]), ADDRESS_B) == ("started", 1000, "")
        for _ in range(5):  # loopback (open mode, no token) is not limited by default
            assert (await _attempt(_url(service)))[:2] == ("started", 1000)
        await first.send(SILENCE)
        ended = await _hang_up(first)
    assert ended["reason"] == "caller_hangup"
    assert await _refusals(service, "rate_limited") == before + 2
    refused = [e for e in _log_events(service, "browser_call_refused") if e.get("code") == "rate_limited"]
    assert len(refused) == 2 and {e["client"] for e in refused} == {ADDRESS_A}
    assert all(e["close_code"] == 1013 for e in refused)
