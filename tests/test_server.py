"""voice.server: the operator API, auth, health, metrics, browser-call refusals (in process, through ASGI),
and the whole service end to end (``voice serve`` in its own process: real calls with real speech, operator
hang-up, busy answer, drain on SIGTERM, and recovery after ``kill -9``)."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
import wave
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.servicehelp import CallResult, ServiceProcess, browser_call, refused, start_service, wait_until
from tests.speech import silence
from tests.test_manager import Factory
from voice.auth import mint, verify
from voice.call.transcript import TranscriptEvent
from voice.config import Settings
from voice.manager import SessionManager
from voice.realtime.pricing import default_price_table, price_usage
from voice.server import Service, create_app, tools_for

LOOPBACK = ("127.0.0.1", 40000)
REMOTE = ("10.0.0.5", 40000)  # never contacted: only the ASGI scope's client address
API_TOKEN = "operator-token-for-tests"


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        db_path=tmp_path / "voice.db", recordings_dir=tmp_path / "recordings", **overrides
    )  # fmt: skip


def _app(tmp_path: Path, **overrides: Any) -> Starlette:
    return create_app(_settings(tmp_path, **overrides), engine=False)


def _service(app: Starlette) -> Service:
    service: Service = app.state.service
    return service


def _client(app: Starlette, client: tuple[str, int], host: str = "127.0.0.1:8080") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=client)
    return httpx.AsyncClient(transport=transport, base_url=f"http://{host}")


USAGE: dict[str, Any] = {
    "input_tokens": 1000,
    "output_tokens": 100,
    "input_token_details": {"text_tokens": 1000, "audio_tokens": 0, "cached_tokens": 0},
    "output_token_details": {"text_tokens": 20, "audio_tokens": 80},
}
SEEDED_COST = price_usage("gpt-realtime", USAGE, default_price_table()).total


def _seed(service: Service, call_id: str, *, agent: str = "restaurant", ended: bool = True) -> None:
    """A call record with a transcript, usage and a recording file, as a runner would leave it."""
    store = service.store
    recording = service.settings.recordings_dir / f"{call_id}.wav"
    recording.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(recording), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(24000)
        wav.writeframes(bytes(4 * 2400))
    store.create_call(call_id, leg="browser", agent=agent, model="gpt-realtime", recording_path=recording)
    store.add_transcript_event(TranscriptEvent(call_id, 0, 100, "agent", "Hello!", {"item_id": "item_1"}))
    store.add_transcript_event(TranscriptEvent(call_id, 1, 2000, "caller", "Opening hours?", {}))
    store.add_usage(
        call_id,
        t_ms=2100,
        kind="response",
        model="gpt-realtime",
        usage=USAGE,
        cost=price_usage("gpt-realtime", USAGE, default_price_table()),
    )
    if ended:
        store.end_call(call_id, "caller_hangup", duration_ms=3000)


# -- operator auth ---------------------------------------------------------------------------------------


async def test_api_without_token_answers_only_loopback(tmp_path: Path) -> None:
    app = _app(tmp_path)
    async with _client(app, REMOTE, host="voice.example") as remote:
        response = await remote.get("/api/calls")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
        assert (await remote.post("/api/tokens", json={})).status_code == 403
        assert (await remote.get("/metrics")).status_code == 403
        # Public routes stay public.
        assert (await remote.get("/healthz")).status_code == 200
        assert (await remote.get("/api/agents")).status_code == 200
        assert (await remote.get("/api/openapi.json")).status_code == 200
    async with _client(app, LOOPBACK) as local:
        assert (await local.get("/api/calls")).status_code == 200
    async with _client(app, LOOPBACK, host="evil.example:8080") as rebinding:
        assert (await rebinding.get("/api/calls")).status_code == 403


async def test_api_with_token(tmp_path: Path) -> None:
    app = _app(tmp_path, api_token=API_TOKEN)
    for client in (REMOTE, LOOPBACK):
        async with _client(app, client, host="voice.example") as http:
            missing = await http.get("/api/calls")
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = await http.get("/api/calls", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert wrong.json()["error"]["code"] == "unauthorized"
            right = await http.get("/api/calls", headers={"Authorization": f"Bearer {API_TOKEN}"})
            assert right.status_code == 200
            metrics = await http.get("/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"})
            assert metrics.status_code == 200


# -- records API -----------------------------------------------------------------------------------------


async def test_calls_list_and_detail(tmp_path: Path) -> None:
    app = _app(tmp_path)
    service = _service(app)
    _seed(service, "call_one")
    _seed(service, "call_two", agent="other")
    _seed(service, "call_live", ended=False)
    async with _client(app, LOOPBACK) as http:
        body = (await http.get("/api/calls")).json()
        assert body["total"] == 3
        assert {c["id"] for c in body["calls"]} == {"call_one", "call_two", "call_live"}
        one = next(c for c in body["calls"] if c["id"] == "call_one")
        assert one["recording_url"] == "/api/calls/call_one/recording"
        assert one["status"] == "ended" and one["end_reason"] == "caller_hangup"
        assert one["live"] is None

        ended = (await http.get("/api/calls", params={"status": "ended", "agent": "restaurant"})).json()
        assert [c["id"] for c in ended["calls"]] == ["call_one"]
        paged = (await http.get("/api/calls", params={"limit": 1, "offset": 1})).json()
        assert len(paged["calls"]) == 1 and paged["total"] == 3
        recent = (await http.get("/api/calls", params={"since": "1h"})).json()
        assert recent["total"] == 3
        future = (await http.get("/api/calls", params={"since": "2999-01-01"})).json()
        assert future["total"] == 0
        for bad in ({"status": "nope"}, {"since": "yesterday-ish"}, {"limit": "-1"}, {"limit": "x"}):
            response = await http.get("/api/calls", params=bad)
            assert response.status_code == 400, bad
            assert response.json()["error"]["code"] == "invalid_query"

        detail = (await http.get("/api/calls/call_one")).json()
        assert [e["kind"] for e in detail["transcript"]] == ["agent", "caller"]
        assert detail["transcript"][1]["text"] == "Opening hours?"
        assert SEEDED_COST > 0
        assert Decimal(detail["cost_usd"]) == SEEDED_COST
        assert len(detail["usage_events"]) == 1
        assert Decimal(detail["cost"]["total_usd"]) == SEEDED_COST
        assert (await http.get("/api/calls/call_nope")).status_code == 404

        wav = await http.get("/api/calls/call_one/recording")
        assert wav.status_code == 200
        assert wav.headers["content-type"] == "audio/wav"
        with wave.open(io.BytesIO(wav.content)) as parsed:
            assert parsed.getnchannels() == 2
        assert (await http.get("/api/calls/call_nope/recording")).status_code == 404


async def test_recording_outside_the_recordings_dir_is_not_served(tmp_path: Path) -> None:
    app = _app(tmp_path)
    service = _service(app)
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"RIFF")
    service.store.create_call("call_x", leg="browser", recording_path=secret)
    service.store.create_call("call_y", leg="browser", recording_path="../secret.wav")
    service.store.create_call("call_z", leg="browser")
    async with _client(app, LOOPBACK) as http:
        for call_id in ("call_x", "call_y", "call_z"):
            response = await http.get(f"/api/calls/{call_id}/recording")
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "no_recording"


async def test_hangup_endpoint(tmp_path: Path) -> None:
    from tests.test_manager import FakeLeg

    app = _app(tmp_path)
    service = _service(app)
    factory = Factory()
    service.manager = SessionManager(
        service.settings,
        service.store,
        service.pacer,
        _no_upstream,
        service.price_table,
        tools_for,
        runner_factory=factory,
    )
    _seed(service, "call_old")
    await service.manager.start(FakeLeg("call_live"), service.profile("restaurant"))
    async with _client(app, LOOPBACK) as http:
        listed = (await http.get("/api/calls")).json()
        assert listed["calls"][0]["id"] == "call_old"  # only stored calls are listed; call_live has no row
        detail_live = service.manager.snapshots()["call_live"]
        assert detail_live["state"] == "live"
        response = await http.post("/api/calls/call_live/hangup")
        assert response.status_code == 202
        assert response.json() == {"call_id": "call_live", "status": "ending"}
        assert await service.manager.wait("call_live") == "operator"
        assert factory.runners["call_live"].hangups == ["operator"]
        gone = await http.post("/api/calls/call_nope/hangup")
        assert gone.status_code == 404
        ended = await http.post("/api/calls/call_old/hangup")
        assert ended.status_code == 409
        assert ended.json()["error"]["code"] == "not_live"
        assert (await http.get("/api/calls/call_old/hangup")).status_code == 405


async def _no_upstream(model: str) -> Any:
    raise AssertionError("no upstream in this test")


# -- tokens ----------------------------------------------------------------------------------------------


async def test_mint_tokens(tmp_path: Path) -> None:
    app = _app(tmp_path, api_token=API_TOKEN, token_secret="browser-secret")
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    async with _client(app, REMOTE, host="voice.example") as http:
        assert (await http.post("/api/tokens", json={"agent": "restaurant"})).status_code == 401
        response = await http.post(
            "/api/tokens",
            json={"agent": "restaurant", "origin": "https://shop.example", "ttl_s": 120},
            headers=auth,
        )
        assert response.status_code == 201
        body = response.json()
        claims = verify("browser-secret", body["token"], time.time(), "https://shop.example")
        assert claims["agent"] == "restaurant"
        assert body["expires_at"] - time.time() == pytest.approx(120, abs=5)
        assert body["ws_path"].startswith("/ws/browser?token=")
        default = (await http.post("/api/tokens", headers=auth)).json()
        assert verify("browser-secret", default["token"], time.time())["exp"] - time.time() <= 300
        cases = [
            ({"agent": "nope"}, 404, "unknown_agent"),
            ({"ttl_s": 0}, 400, "invalid_request"),
            ({"ttl_s": 10**9}, 400, "invalid_request"),
            ({"ttl_s": "long"}, 400, "invalid_request"),
            ({"origin": "not an origin"}, 400, "invalid_request"),
            ({"agent": 5}, 400, "invalid_request"),
        ]
        for payload, status, code in cases:
            bad = await http.post("/api/tokens", json=payload, headers=auth)
            assert (bad.status_code, bad.json()["error"]["code"]) == (status, code), payload
        for raw in (b"[1]", b"{not json", b"x" * 20000):
            bad = await http.post("/api/tokens", content=raw, headers=auth)
            assert bad.status_code == 400


async def test_ephemeral_token_secret_when_none_is_configured(tmp_path: Path) -> None:
    app = _app(tmp_path)
    async with _client(app, LOOPBACK) as http:
        token = (await http.post("/api/tokens", json={})).json()["token"]
    verify(_service(app).token_secret, token, time.time())


# -- pages, health, docs ---------------------------------------------------------------------------------


async def test_pages_health_metrics_docs(tmp_path: Path) -> None:
    app = _app(tmp_path)
    service = _service(app)
    async with _client(app, LOOPBACK) as http:
        page = await http.get("/")
        assert page.status_code == 200 and 'id="talk"' in page.text
        for name in ("widget.js", "app.js", "worklet.js", "styles.css"):
            static = await http.get(f"/static/{name}")
            assert static.status_code == 200, name
            assert static.headers["access-control-allow-origin"] == "*"
        assert (await http.get("/static/../server.py")).status_code == 404
        agents = (await http.get("/api/agents")).json()
        assert agents["default"] == "restaurant"
        assert "restaurant" in [a["name"] for a in agents["agents"]]
        health = (await http.get("/healthz")).json()
        assert health["status"] == "ok"
        ready = await http.get("/readyz")
        assert ready.status_code == 200  # no engine in this process: nothing to wait for
        service.manager.begin_drain()
        draining = await http.get("/readyz")
        assert draining.status_code == 503 and draining.json()["draining"] is True
        metrics = await http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        for name in ("voice_calls_live", "voice_calls_refused_total", "voice_frame_lateness_seconds"):
            assert name in metrics.text
        docs = await http.get("/api/docs")
        assert docs.status_code == 200 and "/api/calls/{call_id}/hangup" in docs.text


def test_openapi_documents_every_http_route(tmp_path: Path) -> None:
    from starlette.routing import Route

    app = _app(tmp_path)
    spec = TestClient(app).get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    served = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path not in ("/",):
            for method in route.methods or ():
                if method != "HEAD":
                    served.add((route.path, method))
    assert served == documented
    refs = json.dumps(spec).count("#/components/schemas/")
    assert refs > 0
    for name in ("Call", "CallDetail", "Error", "TranscriptEvent"):
        assert name in spec["components"]["schemas"]


# -- browser call refusals (in process) ------------------------------------------------------------------


def _ws_refusal(
    client: TestClient, url: str, headers: dict[str, str] | None = None
) -> tuple[dict[str, Any], int]:
    base = str(client.base_url).replace("http://", "ws://").rstrip("/")
    with client.websocket_connect(base + url, headers=dict(headers or {})) as ws:
        message = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    return message, closed.value.code


def test_browser_refusals(tmp_path: Path) -> None:
    app = _app(tmp_path, token_secret="browser-secret", allowed_origins=["https://shop.example"])
    local = TestClient(app, base_url="http://127.0.0.1:8080", client=LOOPBACK)
    remote = TestClient(app, base_url="http://voice.example", client=REMOTE)

    msg, code = _ws_refusal(local, "/ws/browser?agent=nope")
    assert (msg["type"], msg["code"], code) == ("error", "unknown_agent", 1008)
    assert "restaurant" in msg["message"]  # says which agents exist

    msg, code = _ws_refusal(local, "/ws/browser", headers={"Origin": "https://evil.example"})
    assert (msg["code"], code) == ("origin_refused", 1008)

    msg, code = _ws_refusal(remote, "/ws/browser?agent=restaurant")
    assert (msg["code"], code) == ("unauthorized", 1008)

    expired = mint("browser-secret", 1, now=time.time() - 10)
    msg, code = _ws_refusal(remote, f"/ws/browser?token={expired}")
    assert (msg["code"], code) == ("token_expired", 1008)

    forged = mint("another-secret", 60)
    msg, code = _ws_refusal(remote, f"/ws/browser?token={forged}")
    assert (msg["code"], code) == ("token_invalid", 1008)

    other_agent = mint("browser-secret", 60, agent="someone-else")
    msg, code = _ws_refusal(remote, f"/ws/browser?agent=restaurant&token={other_agent}")
    assert (msg["code"], code) == ("forbidden", 1008)

    bound = mint("browser-secret", 60, origin="https://shop.example")
    msg, code = _ws_refusal(remote, f"/ws/browser?token={bound}", headers={"Origin": "https://voice.example"})
    assert (msg["code"], code) == ("origin_refused", 1008)


def test_browser_busy_and_draining(tmp_path: Path) -> None:
    app = _app(tmp_path, max_calls=1)
    service = _service(app)
    local = TestClient(app, base_url="http://127.0.0.1:8080", client=LOOPBACK)
    held = service.manager.admit()
    msg, code = _ws_refusal(local, "/ws/browser")
    assert (msg["code"], code) == ("busy", 1013)
    assert "try again" in msg["message"]
    held.release()
    service.manager.begin_drain()
    msg, code = _ws_refusal(local, "/ws/browser")
    assert (msg["code"], code) == ("draining", 1013)


def test_browser_token_lets_a_remote_caller_in(tmp_path: Path) -> None:
    """A valid token from a non-loopback client reaches the call (a scripted runner that ends at once)."""

    class QuickRunner:
        def __init__(self, **kwargs: Any) -> None:
            self.leg = kwargs["leg"]
            self.call_id = self.leg.call_id

        async def run(self) -> str:
            await self.leg.send_control({"type": "call_start", "agent": "restaurant"})
            await self.leg.hangup("agent_end_call")
            return "agent_end_call"

        async def hangup(self, reason: str = "operator") -> None: ...

        def snapshot(self) -> dict[str, Any]:
            return {}

    app = _app(tmp_path, token_secret="browser-secret", allowed_origins=["https://shop.example"])
    service = _service(app)
    service.manager = SessionManager(
        service.settings, service.store, service.pacer, _no_upstream, service.price_table, tools_for,
        runner_factory=QuickRunner,
    )  # fmt: skip
    remote = TestClient(app, base_url="http://voice.example", client=REMOTE)
    token = mint("browser-secret", 60, agent="restaurant", origin="https://shop.example")
    with remote.websocket_connect(
        f"ws://voice.example/ws/browser?agent=restaurant&token={token}",
        headers={"Origin": "https://shop.example"},
    ) as ws:
        started = ws.receive_json()
        ended = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert started["type"] == "call.started" and started["agent"] == "restaurant"
    assert ended == {"type": "call.ended", "reason": "agent_end_call", "call_id": started["call_id"]}
    assert closed.value.code == 1000
    assert service.manager.ended == {"agent_end_call": 1}


# -- the service end to end (its own process, local engine, real speech) ---------------------------------

QUESTION = "What are your opening hours?"


def _question_audio(speech: Callable[[str, int], bytes], lead_ms: int = 5000, tail_ms: int = 9000) -> bytes:
    return silence(lead_ms, 24000) + speech(QUESTION, 24000) + silence(tail_ms, 24000)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = start_service(tmp_path_factory.mktemp("serve"))
    yield running
    running.stop()


async def _ended_row(http: httpx.AsyncClient, call_id: str) -> dict[str, Any]:
    """The call's record once the runner has closed it (it does so right after the caller's socket)."""
    for _ in range(100):
        row: dict[str, Any] = (await http.get(f"/api/calls/{call_id}")).json()
        if row["status"] == "ended":
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_id} was not closed: {row}")


def _answered(result: CallResult) -> bool:
    return any("Tuesday" in text for text in result.transcript("agent"))


@pytest.mark.slow
async def test_call_end_to_end(service: ServiceProcess, speech: Callable[[str, int], bytes]) -> None:
    """A browser caller hears the greeting, asks a question, hears the answer; the record is complete."""
    result = await browser_call(
        f"{service.ws_base}/ws/browser?agent=restaurant", _question_audio(speech), stop_when=_answered
    )
    assert result.call_id is not None
    started = result.of_type("call.started")[0]
    assert started["audio"] == {"format": "pcm16", "rate": 24000, "channels": 1, "frame_ms": 20}
    assert result.audio_bytes > 48 * 3000  # more than 3 s of agent speech reached the caller
    caller = " ".join(result.transcript("caller")).lower()
    assert "hours" in caller, result.messages
    assert _answered(result), result.transcript("agent")
    assert "Trattoria" in result.transcript("agent")[0]  # the greeting, heard in full
    assert result.of_type("cost") and Decimal(result.of_type("cost")[-1]["total_usd"]) > 0
    assert result.of_type("call.ended")[-1]["reason"] == "caller_hangup"
    assert result.close_code == 1000

    async with httpx.AsyncClient(base_url=service.base, trust_env=False) as http:
        detail = await _ended_row(http, result.call_id)
        assert detail["end_reason"] == "caller_hangup"
        assert detail["leg"] == "browser" and detail["agent"] == "restaurant"
        kinds = [e["kind"] for e in detail["transcript"]]
        assert "caller" in kinds and "agent" in kinds
        assert Decimal(detail["cost_usd"]) > 0
        wav = await http.get(detail["recording_url"])
        assert wav.status_code == 200
        with wave.open(io.BytesIO(wav.content)) as rec:
            assert rec.getnchannels() == 2
            assert rec.getnframes() / rec.getframerate() > 5
        listed = (await http.get("/api/calls", params={"status": "ended"})).json()
        assert result.call_id in [c["id"] for c in listed["calls"]]
    assert f'"call_id": "{result.call_id}"' in service.log_text()


@pytest.mark.slow
async def test_bad_input_on_one_call_does_not_affect_another(
    service: ServiceProcess, speech: Callable[[str, int], bytes]
) -> None:
    """Malformed and oversized messages get an error and the call goes on; a second call is untouched."""
    import websockets

    url = f"{service.ws_base}/ws/browser"
    good = asyncio.create_task(
        browser_call(
            url, silence(3000, 24000) + speech(QUESTION, 24000) + silence(9000, 24000), stop_when=_answered
        )
    )
    async with websockets.connect(url, max_size=None) as bad:
        first = json.loads(await bad.recv())
        assert first["type"] == "call.started"
        for message in (
            "{not json",
            json.dumps({"type": "launch"}),
            json.dumps({"type": "dtmf", "digit": "x"}),
        ):
            await bad.send(message)
        await bad.send(b"\x00" * (48 * 1000 * 2))  # two seconds in one message: over the limit
        await bad.send(b"\x00" * 961)  # not whole samples
        errors: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while len(errors) < 5:
                message = await bad.recv()
                if isinstance(message, str) and json.loads(message)["type"] == "error":
                    errors.append(json.loads(message))
        assert [e["code"] for e in errors] == [
            "bad_json",
            "unknown_type",
            "bad_field",
            "too_large",
            "bad_audio",
        ]
        await bad.send(json.dumps({"type": "dtmf", "digit": "2"}))  # the call still works
        async with asyncio.timeout(10):
            while True:
                message = await bad.recv()
                if isinstance(message, str) and json.loads(message)["type"] == "dtmf.ack":
                    break
        await bad.send(json.dumps({"type": "hangup"}))
    result = await good
    assert _answered(result)
    assert result.of_type("error") == []


@pytest.mark.slow
async def test_operator_lists_and_hangs_up_a_live_call(service: ServiceProcess) -> None:
    url = f"{service.ws_base}/ws/browser?agent=restaurant"
    result = CallResult()
    call = asyncio.create_task(browser_call(url, silence(30000, 24000), result=result, hangup=False))
    async with httpx.AsyncClient(base_url=service.base, trust_env=False) as http:
        await wait_until(lambda: result.call_id is not None, 10)
        live = (await http.get("/api/calls", params={"status": "live"})).json()
        entry = next(c for c in live["calls"] if c["id"] == result.call_id)
        assert entry["live"]["state"] in ("starting", "live")
        assert entry["live"]["agent"] == "restaurant"
        response = await http.post(f"/api/calls/{result.call_id}/hangup")
        assert response.status_code == 202
        async with asyncio.timeout(15):
            await call
        assert result.of_type("call.ended")[-1]["reason"] == "operator"
        assert result.close_code == 1000
        row = await _ended_row(http, result.call_id or "")
        assert row["end_reason"] == "operator"


@pytest.mark.slow
async def test_busy_and_drain_on_sigterm(tmp_path: Path) -> None:
    """max_calls=1: the second caller gets a busy answer at once; SIGTERM refuses new callers, then ends the
    live call politely after the drain deadline with its record saved, and the process exits cleanly."""
    from tests.servicehelp import service_env

    home = tmp_path / "drain"
    env = service_env(home, VOICE_DRAIN_TIMEOUT_S="2", VOICE_MAX_CALLS="1")
    running = start_service(home, "--no-asr", env=env)
    try:
        url = f"{running.ws_base}/ws/browser"
        result = CallResult()
        call = asyncio.create_task(browser_call(url, silence(60000, 24000), result=result, hangup=False))
        await wait_until(lambda: result.call_id is not None, 10)
        started = time.monotonic()
        error, code = await refused(url)
        assert time.monotonic() - started < 2
        assert (error or {}).get("code") == "busy" and code == 1013

        running.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=running.base, trust_env=False) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["draining"] is True
        error, code = await refused(url)
        assert (error or {}).get("code") == "draining" and code == 1013
        async with asyncio.timeout(20):
            await call
        assert result.of_type("call.ended")[-1]["reason"] == "shutdown"
        assert result.close_code == 1000
        assert running.proc.wait(timeout=20) == 0
    finally:
        running.stop(signal.SIGKILL)
    from voice.store import CallStore

    with CallStore(running.db_path) as store:
        row = store.get_call(result.call_id or "")
    assert row is not None and row["status"] == "ended" and row["end_reason"] == "shutdown"


@pytest.mark.slow
async def test_kill_9_mid_call_then_restart(tmp_path: Path, speech: Callable[[str, int], bytes]) -> None:
    """After kill -9 the database and the recording hold the call up to about a second before; on restart
    the call is closed as crashed with its transcript events and a valid WAV."""
    home = tmp_path / "crash"
    running = start_service(home)
    url = f"{running.ws_base}/ws/browser?agent=restaurant"
    result = CallResult()

    def heard_caller(r: CallResult) -> bool:
        return bool(r.transcript("caller"))

    audio = silence(1000, 24000) + speech(QUESTION, 24000) + silence(30000, 24000)
    call = asyncio.create_task(browser_call(url, audio, result=result, hangup=False))
    try:
        await wait_until(lambda: result.call_id is not None, 10)
        call_started = time.monotonic()
        await wait_until(lambda: heard_caller(result), 30)
        await asyncio.sleep(2.5)  # the agent is answering; records and recording flush at least every second
        killed_after_ms = (time.monotonic() - call_started) * 1000
        running.proc.kill()
        running.proc.wait(timeout=10)
        async with asyncio.timeout(10):
            await call
    finally:
        running.stop(signal.SIGKILL)
    call_id = result.call_id
    assert call_id is not None
    assert result.of_type("call.ended") == []  # nobody said goodbye: the process died

    restarted = start_service(home)
    try:
        async with httpx.AsyncClient(base_url=restarted.base, trust_env=False) as http:
            detail = (await http.get(f"/api/calls/{call_id}")).json()
            assert detail["status"] == "ended"
            assert detail["end_reason"] == "crashed"
            kinds = [e["kind"] for e in detail["transcript"]]
            assert "caller" in kinds and "system" in kinds, kinds
            caller_text = " ".join(e["text"] for e in detail["transcript"] if e["kind"] == "caller").lower()
            assert "hours" in caller_text
            assert detail["duration_ms"] >= 1000
            assert Decimal(detail["cost_usd"]) > 0  # usage stored before the crash is kept
            wav = await http.get(f"/api/calls/{call_id}/recording")
            assert wav.status_code == 200
            with wave.open(io.BytesIO(wav.content)) as rec:
                frames = rec.getnframes()
                seconds = frames / rec.getframerate()
                assert rec.getnchannels() == 2
                data = rec.readframes(frames)
            assert len(data) == frames * 4  # the header matches the data: a valid file
            # The recording holds the call up to about a second before the kill (plus scheduling slack).
            assert seconds * 1000 >= killed_after_ms - 2000, (seconds, killed_after_ms)
            assert seconds * 1000 <= killed_after_ms + 500
        assert "interrupted_calls_closed" in restarted.log_text()
    finally:
        restarted.stop()


def test_tools_for_known_and_unknown_agents() -> None:
    from voice.profiles import AgentProfile

    assert "book_table" in tools_for(AgentProfile(name="restaurant")).names
    assert tools_for(AgentProfile(name="other")).names == ["end_call", "transfer_call", "send_dtmf"]


# -- upstream modes --------------------------------------------------------------------------------------


def test_upstream_modes_and_page_url(tmp_path: Path) -> None:
    from starlette.routing import WebSocketRoute

    from voice.server import page_url, upstream_mode

    assert upstream_mode(_settings(tmp_path)) == "local"
    assert upstream_mode(_settings(tmp_path, upstream_url="ws://127.0.0.1:1/v1/realtime")) == "url"
    assert upstream_mode(_settings(tmp_path, openai_api_key="sk-test")) == "openai"
    assert page_url("0.0.0.0", 8080) == "http://127.0.0.1:8080/"
    assert page_url("::", 8080) == "http://[::1]:8080/"
    assert page_url("127.0.0.1", 9) == "http://127.0.0.1:9/"

    def realtime_routes(app: Starlette) -> list[str]:
        return [r.path for r in app.routes if isinstance(r, WebSocketRoute) and r.path == "/v1/realtime"]

    local = create_app(_settings(tmp_path))  # no key, no URL: the local engine is served here
    assert realtime_routes(local) == ["/v1/realtime"]
    assert _service(local).engine is not None
    remote = create_app(_settings(tmp_path, openai_api_key="sk-test"))
    assert realtime_routes(remote) == []
    assert _service(remote).engine is None


async def test_readiness_follows_a_remote_upstream(tmp_path: Path) -> None:
    """With ``--upstream URL`` the service is ready once the upstream's host accepts connections."""
    from tests.conftest import free_port

    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    up = create_app(_settings(tmp_path, upstream_url=f"ws://127.0.0.1:{port}/v1/realtime"))
    down = create_app(_settings(tmp_path / "down", upstream_url=f"ws://127.0.0.1:{free_port()}/v1/realtime"))
    for app in (up, down):
        await _service(app).start()
    try:
        await wait_until(lambda: _service(up).upstream_ready, 5)
        async with _client(up, LOOPBACK) as http:
            assert (await http.get("/readyz")).status_code == 200
        await asyncio.sleep(0.2)
        assert not _service(down).upstream_ready
        async with _client(down, LOOPBACK) as http:
            response = await http.get("/readyz")
            assert response.status_code == 503 and "unreachable" in response.json()["detail"]
    finally:
        for app in (up, down):
            await _service(app).stop()
        listener.close()
        await listener.wait_closed()


def test_one_service_per_database(tmp_path: Path) -> None:
    from voice.errors import ConfigError
    from voice.server import database_lock

    db = tmp_path / "voice.db"
    with database_lock(db), pytest.raises(ConfigError, match="another voice service"), database_lock(db):
        pass
    with database_lock(db):  # released with its holder
        pass
