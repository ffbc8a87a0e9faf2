"""The service's Twilio routes in process (bridges/twilio/routes.py; protocols.md §E.1, §E.4, §E.5).

The routes run on a Starlette app with a real :class:`~voice.store.CallStore` and
:class:`~voice.manager.SessionManager`; the call runner is a stand-in that reads the leg's events (the real
runner is exercised end to end in ``tests/e2e/test_twilio.py``). Signatures are computed with the real
``RequestValidator``; REST requests go to :class:`~tests.bridges.twilio.fake_api.FakeTwilioApi`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from bridges.base import CallerAudio, CallerDtmf, Leg, LegEvent, LegHangup
from bridges.twilio.busy import busy_prompt
from bridges.twilio.protocol import Connected, Dtmf, Media, Start, Stop, encode_message
from bridges.twilio.rest import TwilioRest
from bridges.twilio.routes import twilio_routes
from bridges.twilio.settings import TwilioSettings
from bridges.twilio.signature import (
    HMAC_SHA256,
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    compute_signature,
)
from tests.bridges.twilio.fake_api import FakeTwilioApi, fake_twilio_api
from tests.bridges.twilio.simulator import SimulatedTwilioCall, new_sid
from tests.conftest import REPO, free_port, wait_for_port
from voice.call.pacer import FramePacer
from voice.call.tools import ToolRegistry
from voice.config import Settings
from voice.manager import SessionManager
from voice.profiles import AgentProfile, load_profile
from voice.realtime.client import RealtimeConnection
from voice.realtime.pricing import default_price_table
from voice.store import CallStore

TOKEN = "routes-test-auth-token"
SHARED_KEY = "routes-test-shared-key"
ACCOUNT = "AC" + "cd" * 16
PUBLIC = "https://voice.example.com"
STREAM = "wss://voice.example.com/twilio/stream"
OUR_NUMBER = "+15550001111"
SALES_NUMBER = "+15550002222"
CALLER = "+15557778888"
API_TOKEN = "operator-token"


class StubRunner:
    """Stands in for the call runner: reads the leg's events until it hangs up.

    With a ``store`` it creates the call's record from the leg's metadata when it starts, as the real runner
    does, once ``gate`` (if any) is set: the window in which the placed call's record has been handed over
    and the runner's own does not exist yet. ``instruct`` keeps the system notes it is given.
    """

    def __init__(
        self,
        leg: Leg,
        profile: AgentProfile,
        seen: dict[str, StubRunner],
        store: CallStore | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.leg = leg
        self.profile = profile
        self.events: list[LegEvent] = []
        self.hangups: list[str] = []
        self.notes: list[tuple[str, bool]] = []
        self.metadata = dict(leg.metadata)
        self.store = store
        self.gate = gate
        seen[leg.call_id] = self

    @property
    def call_id(self) -> str:
        return self.leg.call_id

    def instruct(self, text: str, *, respond: bool) -> None:
        self.notes.append((text, respond))

    async def run(self) -> str:
        if self.store is not None:
            if self.gate is not None:
                await asyncio.to_thread(self.gate.wait, 10.0)
            self.store.create_call(
                self.call_id, leg=self.leg.kind, agent=self.profile.name, metadata=self.leg.metadata
            )
        async for event in self.leg.events():
            self.events.append(event)
            if isinstance(event, LegHangup):
                return "caller_hangup"
        return "caller_hangup"

    async def hangup(self, reason: str = "operator") -> None:
        self.hangups.append(reason)
        await self.leg.hangup(reason)

    def snapshot(self) -> dict[str, Any]:
        return {"call_id": self.call_id}


@dataclass
class Host:
    """The service as the routes see it (``voice.server.Service`` in production)."""

    settings: Settings
    store: CallStore
    manager: SessionManager
    runners: dict[str, StubRunner] = field(default_factory=dict)
    record_calls: bool = False
    """Runners create their record like the real one (see :class:`StubRunner`)."""
    gate: threading.Event | None = None

    def profile(self, name: str) -> AgentProfile:
        return load_profile(name, self.settings.prompts_dir)


async def _no_upstream(model: str) -> RealtimeConnection:
    raise AssertionError("the stub runner opens no upstream")


def make_host(tmp: Path, **twilio: Any) -> Host:
    prompts = tmp / "prompts"
    if not prompts.exists():
        prompts.mkdir()
        for name in ("restaurant.toml", "restaurant.md"):
            shutil.copy(REPO / "prompts" / name, prompts / name)
            shutil.copy(REPO / "prompts" / name, prompts / name.replace("restaurant", "sales"))
        (prompts / "plain.toml").write_text('description = "No answering-machine policy"\n', encoding="utf-8")
        (prompts / "robocall.toml").write_text(
            '[answering_machine]\npolicy = "hangup"\n\n[[tools]]\nname = "end_call"\n', encoding="utf-8"
        )
    api_token = twilio.pop("api_token", None)
    options: dict[str, Any] = {
        "account_sid": ACCOUNT,
        "auth_token": TOKEN,
        "public_url": PUBLIC,
        "from_number": OUR_NUMBER,
        "numbers": {SALES_NUMBER: "sales"},
        **twilio,
    }
    settings = Settings(
        prompts_dir=prompts,
        db_path=tmp / "voice.db",
        recordings_dir=tmp / "recordings",
        max_calls=2,
        api_token=api_token,
        twilio=TwilioSettings(**options),
    )
    store = CallStore(settings.db_path)
    runners: dict[str, StubRunner] = {}
    host: Host | None = None

    def factory(*, leg: Leg, profile: AgentProfile, **_: Any) -> StubRunner:
        assert host is not None
        recording = host.store if host.record_calls else None
        return StubRunner(leg, profile, runners, recording, host.gate)

    manager = SessionManager(
        settings,
        store,
        FramePacer(),
        _no_upstream,
        default_price_table(),
        lambda profile: ToolRegistry(),
        runner_factory=factory,
    )
    host = Host(settings, store, manager, runners)
    return host


def make_app(host: Host, api: FakeTwilioApi | None) -> Starlette:
    rest = TwilioRest(ACCOUNT, TOKEN, api_base=api.base_url, timeout_s=5) if api is not None else None
    return Starlette(routes=list(twilio_routes(host, rest=rest)))


@pytest.fixture
def api() -> Iterator[FakeTwilioApi]:
    with fake_twilio_api() as fake:
        yield fake


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    made = make_host(tmp_path)
    yield made
    made.store.close()


@pytest.fixture
async def http(host: Host, api: FakeTwilioApi) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(host, api), client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
        yield client


def signed(path: str, form: dict[str, str], *, secret: str = TOKEN, base: str = PUBLIC) -> dict[str, str]:
    return {SIGNATURE_HEADER: compute_signature(base + path, form, secret)}


def incoming_form(to: str = OUR_NUMBER, **extra: str) -> dict[str, str]:
    return {
        "CallSid": new_sid("CA"),
        "AccountSid": ACCOUNT,
        "From": CALLER,
        "To": to,
        "Direction": "inbound",
        "CallStatus": "ringing",
        **extra,
    }


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    stream = ET.fromstring(twiml).find("./Connect/Stream")
    assert stream is not None, twiml
    return stream.attrib["url"], {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}


# POST /twilio/voice -----------------------------------------------------------------------------------------


async def test_incoming_call_answers_connect_stream_with_parameters(http: httpx.AsyncClient) -> None:
    form = incoming_form()
    answer = await http.post("/twilio/voice", data=form, headers=signed("/twilio/voice", form))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/xml")
    url, params = stream_of(answer.text)
    assert url == STREAM
    assert params["call_id"].startswith("call_")
    assert params == {
        "agent": "restaurant",
        "direction": "inbound",
        "from": CALLER,
        "to": OUR_NUMBER,
        "call_id": params["call_id"],
    }


async def test_agent_from_the_called_number_or_the_webhook_url(http: httpx.AsyncClient) -> None:
    form = incoming_form(to=SALES_NUMBER)
    answer = await http.post("/twilio/voice", data=form, headers=signed("/twilio/voice", form))
    assert stream_of(answer.text)[1]["agent"] == "sales"
    form = incoming_form()
    path = "/twilio/voice?agent=sales"
    answer = await http.post(path, data=form, headers=signed(path, form))
    assert stream_of(answer.text)[1]["agent"] == "sales"
    # The query string is part of what Twilio signs: the same signature without it is refused.
    refused = await http.post(path, data=form, headers=signed("/twilio/voice", form))
    assert refused.status_code == 403


async def test_unknown_agent_says_so_and_hangs_up(http: httpx.AsyncClient) -> None:
    form = incoming_form()
    path = "/twilio/voice?agent=nobody"
    answer = await http.post(path, data=form, headers=signed(path, form))
    root = ET.fromstring(answer.text)
    assert answer.status_code == 200 and root.find("Say") is not None and root.find("Hangup") is not None
    assert root.find("Connect") is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {SIGNATURE_HEADER: "bm90IGEgc2lnbmF0dXJl"},
        {SIGNATURE_HEADER: compute_signature(PUBLIC + "/twilio/voice", {"CallSid": "CAx"}, "wrong-token")},
    ],
    ids=["missing", "garbage", "wrong-secret"],
)
async def test_webhook_without_a_valid_signature_is_403(
    http: httpx.AsyncClient, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    form = {"CallSid": "CAx"}
    answer = await http.post("/twilio/voice", data=form, headers=headers)
    assert answer.status_code == 403 and "forbidden" in answer.text
    status = await http.post("/twilio/status", data=form, headers=headers)
    assert status.status_code == 403


async def test_webhook_signed_with_a_shared_key_hmac_sha256(tmp_path: Path, api: FakeTwilioApi) -> None:
    host = make_host(tmp_path, webhook_key=SHARED_KEY)
    transport = httpx.ASGITransport(app=make_app(host, api))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as http:
        form = incoming_form()
        headers = {
            SIGNATURE_HEADER: compute_signature(PUBLIC + "/twilio/voice", form, SHARED_KEY, HMAC_SHA256),
            SIGNATURE_SETTINGS_HEADER: "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
        }
        assert (await http.post("/twilio/voice", data=form, headers=headers)).status_code == 200
        headers[SIGNATURE_HEADER] = compute_signature(PUBLIC + "/twilio/voice", form, TOKEN, HMAC_SHA256)
        assert (await http.post("/twilio/voice", data=form, headers=headers)).status_code == 403
    host.store.close()


async def test_without_public_url_the_request_url_is_signed(tmp_path: Path, api: FakeTwilioApi) -> None:
    host = make_host(tmp_path, public_url=None)
    transport = httpx.ASGITransport(app=make_app(host, api))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as http:
        form = incoming_form()
        headers = signed("/twilio/voice", form, base="http://127.0.0.1:8080")
        answer = await http.post("/twilio/voice", data=form, headers=headers)
        assert answer.status_code == 200
        assert stream_of(answer.text)[0] == "ws://127.0.0.1:8080/twilio/stream"
    host.store.close()


async def test_busy_or_draining_says_so_hangs_up_and_records_the_refusal(
    host: Host, http: httpx.AsyncClient
) -> None:
    held = [host.manager.admit() for _ in range(host.settings.max_calls)]
    form = incoming_form()
    answer = await http.post("/twilio/voice", data=form, headers=signed("/twilio/voice", form))
    root = ET.fromstring(answer.text)
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == host.settings.twilio.busy_message
    (refused,) = host.store.list_calls(leg="twilio")
    assert refused["status"] == "ended" and refused["end_reason"] == "refused"
    assert refused["caller"] == CALLER and refused["callee"] == OUR_NUMBER
    assert refused["metadata"]["refused"] == "busy" and refused["metadata"]["refused_at"] == "webhook"
    assert refused["metadata"]["call_sid"] == form["CallSid"]
    # Twilio's later status callback for the refused call lands on that record.
    done = {"CallSid": form["CallSid"], "CallStatus": "completed", "CallDuration": "4"}
    assert (
        await http.post("/twilio/status", data=done, headers=signed("/twilio/status", done))
    ).status_code == 200
    row = host.store.get_call(refused["id"])
    assert row is not None and row["metadata"]["twilio"]["outcome"] == "completed"
    for admission in held:
        admission.release()
    host.manager.begin_drain()
    form = incoming_form()
    answer = await http.post("/twilio/voice", data=form, headers=signed("/twilio/voice", form))
    assert ET.fromstring(answer.text).find("Say") is not None
    draining = [
        c for c in host.store.list_calls(leg="twilio") if c["metadata"]["call_sid"] == form["CallSid"]
    ]
    assert [c["metadata"]["refused"] for c in draining] == ["draining"]


async def test_voice_webhook_without_call_sid_is_400(http: httpx.AsyncClient) -> None:
    form = {"From": CALLER}
    answer = await http.post("/twilio/voice", data=form, headers=signed("/twilio/voice", form))
    assert answer.status_code == 400


# POST /twilio/status ----------------------------------------------------------------------------------------


def ringing_call(host: Host, call_sid: str, agent: str | None = None) -> str:
    call_id = host.store.create_call(
        leg="twilio", callee="+15551230000", agent=agent, status="ringing", metadata={"call_sid": call_sid}
    )
    return call_id


async def test_status_callbacks_are_recorded_and_a_final_one_ends_a_ringing_call(
    host: Host, http: httpx.AsyncClient
) -> None:
    call_sid = new_sid("CA")
    call_id = ringing_call(host, call_sid)
    for status in ("initiated", "ringing", "busy"):
        form = {"CallSid": call_sid, "AccountSid": ACCOUNT, "CallStatus": status, "SipResponseCode": "486"}
        answer = await http.post("/twilio/status", data=form, headers=signed("/twilio/status", form))
        assert answer.status_code == 200
    call = host.store.get_call(call_id)
    assert call is not None and call["status"] == "ended" and call["end_reason"] == "busy"
    twilio = call["metadata"]["twilio"]
    assert [s["status"] for s in twilio["statuses"]] == ["initiated", "ringing", "busy"]
    assert twilio["outcome"] == "busy" and twilio["statuses"][-1]["sip_response_code"] == 486


async def test_status_for_an_unknown_call_is_accepted_and_one_without_call_sid_is_400(
    http: httpx.AsyncClient,
) -> None:
    form = {"CallSid": new_sid("CA"), "CallStatus": "completed"}
    assert (
        await http.post("/twilio/status", data=form, headers=signed("/twilio/status", form))
    ).status_code == 200
    form = {"CallStatus": "completed"}
    assert (
        await http.post("/twilio/status", data=form, headers=signed("/twilio/status", form))
    ).status_code == 400


async def test_answering_machine_under_hangup_policy_hangs_up_through_rest(
    tmp_path: Path, api: FakeTwilioApi
) -> None:
    host = make_host(tmp_path, machine_policy="hangup")
    transport = httpx.ASGITransport(app=make_app(host, api))
    call_sid = new_sid("CA")
    call_id = ringing_call(host, call_sid, agent="plain")  # no policy of its own: the service's applies
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as http:
        form = {"CallSid": call_sid, "CallStatus": "in-progress", "AnsweredBy": "human"}
        assert (
            await http.post("/twilio/status", data=form, headers=signed("/twilio/status", form))
        ).status_code == 200
        assert api.requests == []
        form = {"CallSid": call_sid, "CallStatus": "in-progress", "AnsweredBy": "machine_end_beep"}
        assert (
            await http.post("/twilio/status", data=form, headers=signed("/twilio/status", form))
        ).status_code == 200
    (hangup,) = api.requests
    assert hangup.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{call_sid}.json"
    assert hangup.field("Status") == "completed"
    call = host.store.get_call(call_id)
    assert call is not None and call["metadata"]["twilio"]["answered_by"] == "machine_end_beep"
    host.store.close()


# POST /api/calls --------------------------------------------------------------------------------------------


async def test_place_call_sends_the_right_rest_request(
    host: Host, http: httpx.AsyncClient, api: FakeTwilioApi
) -> None:
    body = {
        "to": "+1 (555) 123-0000",
        "agent": "sales",
        "machine_detection": "DetectMessageEnd",
        "ring_timeout_s": 20,
    }
    answer = await http.post("/api/calls", json=body)
    assert answer.status_code == 201, answer.text
    placed = answer.json()
    (create,) = api.requests
    assert create.method == "POST" and create.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
    assert create.basic_auth == (ACCOUNT, TOKEN)
    assert create.field("To") == "+15551230000" and create.field("From") == OUR_NUMBER
    assert create.field("StatusCallback") == PUBLIC + "/twilio/status"
    assert create.field("MachineDetection") == "DetectMessageEnd" and create.field("AsyncAmd") == "true"
    assert create.field("Timeout") == "20"
    url, params = stream_of(create.field("Twiml") or "")
    assert url == STREAM
    assert params == {
        "agent": "sales",
        "direction": "outbound",
        "to": "+15551230000",
        "from": OUR_NUMBER,
        "call_id": placed["call_id"],
    }
    assert placed["call_sid"].startswith("CA") and placed["status"] == "queued"
    call = host.store.get_call(placed["call_id"])
    assert call is not None and call["status"] == "ringing" and call["leg"] == "twilio"
    assert call["metadata"]["call_sid"] == placed["call_sid"] and call["agent"] == "sales"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "invalid_request"),
        ({"to": 5551230000}, 400, "invalid_request"),
        ({"to": "555-CALL-NOW"}, 400, "invalid_request"),
        ({"to": "+15551230000", "machine_detection": "yes"}, 400, "invalid_request"),
        ({"to": "+15551230000", "ring_timeout_s": 1}, 400, "invalid_request"),
        ({"to": "+15551230000", "agent": "nobody"}, 404, "unknown_agent"),
    ],
)
async def test_place_call_refuses_bad_requests(
    http: httpx.AsyncClient, api: FakeTwilioApi, body: dict[str, Any], status: int, code: str
) -> None:
    answer = await http.post("/api/calls", json=body)
    assert answer.status_code == status and answer.json()["error"]["code"] == code
    assert api.requests == []


@pytest.mark.parametrize(
    ("twilio_status", "expected"),
    [(400, 400), (404, 404), (401, 502), (500, 502)],
)
async def test_place_call_passes_twilios_refusal_on(
    host: Host, http: httpx.AsyncClient, api: FakeTwilioApi, twilio_status: int, expected: int
) -> None:
    api.respond(
        twilio_status,
        {
            "code": 21211,
            "message": "The 'To' number +15550000000 is not a valid phone number.",
            "status": twilio_status,
        },
    )
    answer = await http.post("/api/calls", json={"to": "+15550000000"})
    assert answer.status_code == expected
    error = answer.json()["error"]
    assert error["code"] == "twilio_error" and error["twilio_status"] == twilio_status
    assert error["twilio_code"] == 21211 and "not a valid phone number" in error["message"]
    assert error["more_info"] == "https://www.twilio.com/docs/errors/21211"
    call = host.store.get_call(error["call_id"])
    assert call is not None and call["status"] == "ended" and call["end_reason"] == "failed"


async def test_place_call_when_twilio_cannot_be_reached_is_502(host: Host) -> None:
    rest = TwilioRest(ACCOUNT, TOKEN, api_base="http://127.0.0.1:9", timeout_s=2)
    transport = httpx.ASGITransport(app=Starlette(routes=list(twilio_routes(host, rest=rest))))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as http:
        answer = await http.post("/api/calls", json={"to": "+15551230000"})
    assert answer.status_code == 502 and answer.json()["error"]["twilio_status"] is None


@pytest.mark.parametrize("missing", ["credentials", "public_url", "from_number"])
async def test_place_call_without_configuration(tmp_path: Path, missing: str) -> None:
    change: dict[str, Any] = {
        "credentials": {"account_sid": None, "auth_token": None},
        "public_url": {"public_url": None},
        "from_number": {"from_number": None},
    }[missing]
    host = make_host(tmp_path, **change)
    transport = httpx.ASGITransport(app=make_app(host, None), client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as http:
        answer = await http.post("/api/calls", json={"to": "+15551230000"})
    assert answer.status_code == (400 if missing == "from_number" else 503), answer.text
    host.store.close()


async def test_place_call_needs_the_operator(tmp_path: Path, api: FakeTwilioApi) -> None:
    host = make_host(tmp_path, api_token=API_TOKEN)
    transport = httpx.ASGITransport(app=make_app(host, api), client=("203.0.113.9", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://voice.example.com") as http:
        assert (await http.post("/api/calls", json={"to": "+15551230000"})).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await http.post("/api/calls", json={"to": "+15551230000"}, headers=wrong)).status_code == 401
        right = {"Authorization": f"Bearer {API_TOKEN}"}
        assert (await http.post("/api/calls", json={"to": "+15551230000"}, headers=right)).status_code == 201
    host.store.close()


# WS /twilio/stream ------------------------------------------------------------------------------------------


def start_message(stream_sid: str, call_sid: str, params: dict[str, str]) -> str:
    return encode_message(
        Start(stream_sid=stream_sid, call_sid=call_sid, account_sid=ACCOUNT, custom_parameters=params)
    )


def run_stream(
    client: TestClient, params: dict[str, str], *, headers: dict[str, str] | None = None
) -> tuple[str, str]:
    """Connect, start, send a frame and a key, stop; returns (stream_sid, call_sid)."""
    stream_sid, call_sid = new_sid("MZ"), new_sid("CA")
    sig = headers if headers is not None else {SIGNATURE_HEADER: compute_signature(STREAM, {}, TOKEN)}
    with client.websocket_connect("/twilio/stream", headers=sig) as ws:
        ws.send_text(encode_message(Connected()))
        ws.send_text(start_message(stream_sid, call_sid, params))
        ws.send_text(encode_message(Media(stream_sid, 1, 0, b"\xff" * 160)))
        ws.send_text("{not json")
        ws.send_text(encode_message(Dtmf(stream_sid, "5")))
        ws.send_text(encode_message(Stop(stream_sid, ACCOUNT, call_sid)))
        with pytest.raises(WebSocketDisconnect):
            while True:
                ws.receive_text()
    return stream_sid, call_sid


def test_stream_with_a_valid_signature_runs_the_call(host: Host, api: FakeTwilioApi) -> None:
    with TestClient(make_app(host, api)) as client:
        params = {"agent": "sales", "from": CALLER, "to": SALES_NUMBER, "call_id": "call_fromtwiml1"}
        _stream_sid, call_sid = run_stream(client, params)
    runner = host.runners["call_fromtwiml1"]
    assert runner.profile.name == "sales"
    kinds = [type(e) for e in runner.events]
    assert kinds == [CallerAudio, CallerDtmf, LegHangup]
    assert runner.metadata["call_sid"] == call_sid and runner.metadata["caller"] == CALLER
    assert runner.leg.capabilities.can_transfer is True


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {SIGNATURE_HEADER: compute_signature(STREAM, {}, "wrong-token")},
        {SIGNATURE_HEADER: compute_signature("wss://evil.example.com/twilio/stream", {}, TOKEN)},
    ],
    ids=["missing", "wrong-secret", "wrong-url"],
)
def test_stream_upgrade_without_a_valid_signature_is_refused(
    host: Host, api: FakeTwilioApi, headers: dict[str, str]
) -> None:
    with TestClient(make_app(host, api)) as client:
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            client.websocket_connect("/twilio/stream", headers=headers),
        ):
            pass
        assert refused.value.code == 1008
    assert host.runners == {}


def test_stream_when_busy_without_start_is_closed_after_the_timeout(
    tmp_path: Path, api: FakeTwilioApi
) -> None:
    host = make_host(tmp_path, start_timeout_s=0.3)
    held = [host.manager.admit() for _ in range(host.settings.max_calls)]
    with TestClient(make_app(host, api)) as client:
        sig = {SIGNATURE_HEADER: compute_signature(STREAM, {}, TOKEN)}
        with client.websocket_connect("/twilio/stream", headers=sig) as ws:
            ws.send_text(encode_message(Connected()))
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == 1008
    assert host.runners == {} and host.store.list_calls() == []  # nothing known of the call to record
    for admission in held:
        admission.release()
    host.store.close()


def test_stream_without_start_is_closed_after_the_timeout(tmp_path: Path, api: FakeTwilioApi) -> None:
    host = make_host(tmp_path, start_timeout_s=0.3)
    with TestClient(make_app(host, api)) as client:
        sig = {SIGNATURE_HEADER: compute_signature(STREAM, {}, TOKEN)}
        with client.websocket_connect("/twilio/stream", headers=sig) as ws:
            ws.send_text(encode_message(Connected()))
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
            assert closed.value.code == 1008
    assert host.runners == {} and host.manager.occupancy() == 0
    host.store.close()


def test_stream_of_a_placed_call_adopts_its_record(host: Host, api: FakeTwilioApi) -> None:
    call_sid = new_sid("CA")
    call_id = "call_placed00001"
    host.store.create_call(
        call_id,
        leg="twilio",
        callee="+15551230000",
        status="ringing",
        metadata={"call_sid": call_sid, "direction": "outbound", "twilio": {"status": "ringing"}},
    )
    with TestClient(make_app(host, api)) as client:
        run_stream(client, {"agent": "restaurant", "direction": "outbound", "call_id": call_id})
    runner = host.runners[call_id]
    assert runner.metadata["twilio"] == {"status": "ringing"} and runner.metadata["placed_at"]
    assert runner.metadata["direction"] == "outbound"
    assert host.store.get_call(call_id) is None  # the runner creates the call's record (the stub does not)


def test_stream_claiming_another_calls_id_is_refused(host: Host, api: FakeTwilioApi) -> None:
    taken = host.store.create_call("call_taken000001", leg="twilio")
    with TestClient(make_app(host, api)) as client:
        run_stream(client, {"agent": "restaurant", "call_id": taken})
    assert host.runners == {}


def test_stream_with_unknown_agent_falls_back_to_the_default(host: Host, api: FakeTwilioApi) -> None:
    with TestClient(make_app(host, api)) as client:
        run_stream(client, {"agent": "nobody", "call_id": "call_fallback0001"})
    assert host.runners["call_fallback0001"].profile.name == "restaurant"


def test_twilio_settings_nest_in_the_service_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", ACCOUNT)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("VOICE_PUBLIC_URL", PUBLIC + "/")
    monkeypatch.setenv("VOICE_TWILIO_NUMBERS", json.dumps({OUR_NUMBER: "sales"}))
    assert Settings().twilio.require_credentials() == (ACCOUNT, TOKEN)
    assert Settings().twilio.stream_url == STREAM
    toml = tmp_path / "voice.toml"
    toml.write_text(
        '[twilio]\nfrom_number = "+15550009999"\nauth_token = "from-the-file"\n', encoding="utf-8"
    )
    monkeypatch.setenv("VOICE_CONFIG", str(toml))
    settings = Settings()
    assert settings.twilio.from_number == "+15550009999"  # the file fills what the environment leaves out
    assert settings.twilio.require_credentials() == (ACCOUNT, TOKEN)  # and the environment wins over it
    assert settings.twilio.agent_for_number(OUR_NUMBER) == "sales"


def test_stream_legs_carry_the_default_transfer_target(tmp_path: Path, api: FakeTwilioApi) -> None:
    host = make_host(tmp_path, transfer_to="+15550003333")
    with TestClient(make_app(host, api)) as client:
        run_stream(client, {"agent": "restaurant", "call_id": "call_desk00000001"})
    runner = host.runners["call_desk00000001"]
    assert runner.metadata["transfer_target"] == "+15550003333"
    assert runner.metadata["signature"] == "HMAC_SHA1"
    host.store.close()


# Answering machines and the hand-over of a placed call's record ---------------------------------------------


def placed_call(host: Host, agent: str = "restaurant") -> tuple[str, str]:
    """A call placed by ``POST /api/calls`` that rings: its ``ringing`` record (call id, CallSid)."""
    call_sid = new_sid("CA")
    call_id = host.store.create_call(
        leg="twilio",
        callee="+15551230000",
        agent=agent,
        status="ringing",
        metadata={
            "call_sid": call_sid,
            "direction": "outbound",
            "twilio": {"status": "queued", "statuses": []},
        },
    )
    return call_id, call_sid


def post_status(client: TestClient, call_sid: str, status: str, **extra: str) -> None:
    form = {"CallSid": call_sid, "AccountSid": ACCOUNT, "CallStatus": status, **extra}
    answer = client.post("/twilio/status", data=form, headers=signed("/twilio/status", form))
    assert answer.status_code == 200, answer.text


def until(predicate: Any, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def open_stream(ws: Any, call_sid: str, params: dict[str, str]) -> str:
    stream_sid = new_sid("MZ")
    ws.send_text(encode_message(Connected()))
    ws.send_text(start_message(stream_sid, call_sid, params))
    return stream_sid


def end_stream(ws: Any, stream_sid: str, call_sid: str) -> None:
    ws.send_text(encode_message(Stop(stream_sid, ACCOUNT, call_sid)))
    with pytest.raises(WebSocketDisconnect):
        while True:
            ws.receive_text()


def statuses(row: dict[str, Any] | None) -> list[str | None]:
    assert row is not None
    return [entry.get("status") for entry in row["metadata"]["twilio"]["statuses"]]


@pytest.mark.parametrize("answered_by", ["machine_end_beep", "machine_start"])
def test_statuses_and_amd_during_the_hand_over_are_kept_and_applied(
    host: Host, api: FakeTwilioApi, answered_by: str
) -> None:
    """A callback that arrives after the placed record was handed to the stream and before the runner has
    created the call's own record goes into that record, and the machine result reaches the live call."""
    host.record_calls, host.gate = True, threading.Event()
    call_id, call_sid = placed_call(host)
    with TestClient(make_app(host, api)) as client:
        post_status(client, call_sid, "ringing")
        with client.websocket_connect("/twilio/stream", headers=signed_stream()) as ws:
            stream_sid = open_stream(ws, call_sid, {"agent": "restaurant", "call_id": call_id})
            until(lambda: call_id in host.runners)
            assert host.store.get_call(call_id) is None  # handed over; the runner's record is not there yet
            post_status(client, call_sid, "in-progress")
            post_status(client, call_sid, "in-progress", AnsweredBy=answered_by)
            runner = host.runners[call_id]
            assert runner.notes == []  # the live call hears of it once its record exists
            host.gate.set()
            until(lambda: bool(runner.notes))
            post_status(client, call_sid, "in-progress", SequenceNumber="9")  # after: straight to the record
            end_stream(ws, stream_sid, call_sid)
    row = host.store.get_call(call_id)
    assert statuses(row) == ["ringing", "in-progress", "in-progress", "in-progress"]
    assert row is not None and row["metadata"]["twilio"]["answered_by"] == answered_by
    assert row["metadata"]["twilio"]["machine_action"] == "leave_message"
    ((note, respond),) = runner.notes
    assert "voicemail" in note and "end_call" in note and "Luigi's Trattoria" in note
    assert respond is (answered_by == "machine_end_beep")  # during the greeting the agent waits for it to end
    assert api.requests == []


def test_amd_while_the_call_still_rings_reaches_the_call_once_it_streams(
    host: Host, api: FakeTwilioApi
) -> None:
    host.record_calls = True
    call_id, call_sid = placed_call(host)
    with TestClient(make_app(host, api)) as client:
        post_status(client, call_sid, "in-progress", AnsweredBy="machine_end_silence")
        with client.websocket_connect("/twilio/stream", headers=signed_stream()) as ws:
            stream_sid = open_stream(ws, call_sid, {"agent": "restaurant", "call_id": call_id})
            until(lambda: call_id in host.runners and bool(host.runners[call_id].notes))
            end_stream(ws, stream_sid, call_sid)
    assert host.runners[call_id].notes[0][1] is True
    row = host.store.get_call(call_id)
    assert row is not None and row["metadata"]["twilio"]["answered_by"] == "machine_end_silence"


def test_agent_hangup_policy_hangs_up_through_rest_and_ends_the_live_call(
    host: Host, api: FakeTwilioApi
) -> None:
    host.record_calls = True
    call_id, call_sid = placed_call(host, agent="robocall")
    with (
        TestClient(make_app(host, api)) as client,
        client.websocket_connect("/twilio/stream", headers=signed_stream()) as ws,
    ):
        open_stream(ws, call_sid, {"agent": "robocall", "call_id": call_id})
        until(lambda: host.store.get_call(call_id) is not None)
        post_status(client, call_sid, "in-progress", AnsweredBy="machine_start")
        until(lambda: host.runners[call_id].hangups == ["answering_machine"])
        with pytest.raises(WebSocketDisconnect):
            while True:
                ws.receive_text()
    (hangup,) = api.requests
    assert hangup.path.endswith(f"/Calls/{call_sid}.json") and hangup.field("Status") == "completed"
    assert host.runners[call_id].notes == []


def test_talk_policy_does_nothing_special(tmp_path: Path, api: FakeTwilioApi) -> None:
    host = make_host(tmp_path)  # the service's policy: talk
    host.record_calls = True
    call_id, call_sid = placed_call(host, agent="plain")
    with (
        TestClient(make_app(host, api)) as client,
        client.websocket_connect("/twilio/stream", headers=signed_stream()) as ws,
    ):
        stream_sid = open_stream(ws, call_sid, {"agent": "plain", "call_id": call_id})
        until(lambda: host.store.get_call(call_id) is not None)
        post_status(client, call_sid, "in-progress", AnsweredBy="machine_end_beep")
        end_stream(ws, stream_sid, call_sid)
    runner = host.runners[call_id]
    assert runner.notes == [] and runner.hangups == [] and api.requests == []
    row = host.store.get_call(call_id)
    assert row is not None and row["metadata"]["twilio"]["machine_action"] == "talk"
    host.store.close()


def test_status_of_an_incoming_call_before_its_stream_is_recorded(host: Host, api: FakeTwilioApi) -> None:
    host.record_calls = True
    with TestClient(make_app(host, api)) as client:
        form = incoming_form()
        answer = client.post("/twilio/voice", data=form, headers=signed("/twilio/voice", form))
        params = stream_of(answer.text)[1]
        post_status(client, form["CallSid"], "in-progress")  # neither record nor stream yet
        with client.websocket_connect("/twilio/stream", headers=signed_stream()) as ws:
            stream_sid = open_stream(ws, form["CallSid"], params)
            until(lambda: host.store.get_call(params["call_id"]) is not None)
            end_stream(ws, stream_sid, form["CallSid"])
    assert statuses(host.store.get_call(params["call_id"])) == ["in-progress"]


def signed_stream() -> dict[str, str]:
    return {SIGNATURE_HEADER: compute_signature(STREAM, {}, TOKEN)}


async def test_stream_refused_at_the_socket_plays_the_busy_prompt_and_records_the_refusal(
    tmp_path: Path, api: FakeTwilioApi
) -> None:
    """The race: the webhook saw a free line, the stream finds none. Over a real socket, the simulated Twilio
    caller hears the whole busy prompt (marks echoed as played), then the stream is closed normally."""
    host = make_host(tmp_path)
    held = [host.manager.admit() for _ in range(host.settings.max_calls)]
    port = free_port()
    config = uvicorn.Config(
        make_app(host, api),
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        log_config=None,
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        await asyncio.to_thread(wait_for_port, port)
        params = {"agent": "restaurant", "call_id": "call_raced0000001", "from": CALLER, "to": OUR_NUMBER}
        sim = SimulatedTwilioCall(
            f"ws://127.0.0.1:{port}/twilio/stream",
            auth_token=TOKEN,
            signed_url=STREAM,
            account_sid=ACCOUNT,
            custom_parameters=params,
        )
        async with sim:
            await asyncio.wait_for(sim.closed.wait(), 20)
    finally:
        server.should_exit = True
        await serving
    prompt = busy_prompt(host.settings.twilio.busy_message)
    assert sim.heard_audio() == prompt  # every frame of it played before the close
    assert sim.close_code == 1000 and sim.protocol_errors == []
    assert host.runners == {}
    row = host.store.get_call("call_raced0000001")
    assert row is not None and row["status"] == "ended" and row["end_reason"] == "refused"
    assert row["caller"] == CALLER and row["metadata"]["call_sid"] == sim.call_sid
    assert row["metadata"]["refused"] == "busy" and row["metadata"]["refused_at"] == "stream"
    for admission in held:
        admission.release()
    host.store.close()
