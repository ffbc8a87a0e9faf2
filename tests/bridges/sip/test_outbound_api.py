"""Outbound SIP calls through the operator API of the real service app (in process, with its SIP user agent
on loopback and its records in a temporary database) against SIPp callees that do not answer: ``POST
/api/calls`` with a ``sip:`` URI dials through our own user agent and answers at once with ``dialing``; the
outcome (busy, rejected, no answer) lands on the record that ``GET /api/calls/{id}`` shows."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from tests.bridges.sip.sipp import free_even_port, free_udp_port, needs_sipp, sipp_uas
from tests.bridges.sip.test_outbound import final_response_scenario
from voice.config import Settings
from voice.server import create_app
from voice.store import CallStore

pytestmark = needs_sipp

SIP_CALLS = "/api/sip/calls"


@contextlib.asynccontextmanager
async def operator_api(tmp_path: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The service app with SIP on, through its lifespan; a loopback operator client."""
    rtp = free_even_port()
    config = Settings(
        host="127.0.0.1",
        db_path=tmp_path / "voice.db",
        recordings_dir=tmp_path / "recordings",
        sip={"port": free_udp_port(), "rtp_port_min": rtp, "rtp_port_max": rtp + 20},
        **settings,
    )
    app = create_app(config, engine=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080") as client:
            yield client


async def record(client: httpx.AsyncClient, call_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/calls/{call_id}")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def ended(client: httpx.AsyncClient, call_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = await record(client, call_id)
        if row["status"] == "ended":
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_id} did not end: {await record(client, call_id)}")


async def test_busy_callee_leaves_a_busy_record(tmp_path: Path) -> None:
    async with operator_api(tmp_path) as api, sipp_uas("uas_final_response.xml", tmp_path) as uas:
        started = time.monotonic()
        response = await api.post("/api/calls", json={"to": uas.uri(), "agent": "restaurant"})
        assert time.monotonic() - started < 0.3  # not held until the callee answers
        assert response.status_code == 201, response.text
        placed = response.json()
        assert placed["status"] == "dialing" and placed["via"] == "sip" and placed["to"] == uas.uri()
        dialing = await record(api, placed["call_id"])
        assert dialing["status"] == "ringing" and dialing["leg"] == "sip"
        row = await ended(api, placed["call_id"])
        code, err = await uas.finish()
        assert code == 0, err
    assert row["end_reason"] == "busy" and row["duration_ms"] == 0
    sip = row["metadata"]["sip"]
    assert (sip["status_code"], sip["reason"], sip["outcome"]) == (486, "Busy Here", "busy")
    assert [p["status_code"] for p in sip["provisional"]] == [180]
    assert row["callee"] == uas.uri() and row["metadata"]["direction"] == "outbound"


async def test_ring_timeout_with_early_media_is_no_answer(tmp_path: Path) -> None:
    """The callee sends 183 with SDP and never answers: the record shows early_media while it rings, then
    the ring timeout CANCELs it (487) and the record ends as no_answer."""
    async with operator_api(tmp_path) as api, sipp_uas("uas_ring_cancel.xml", tmp_path) as uas:
        response = await api.post(SIP_CALLS, json={"to": uas.uri(), "ring_timeout_s": 1.5})
        assert response.status_code == 201, response.text
        call_id = response.json()["call_id"]
        states = set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            row = await record(api, call_id)
            states.add(row["metadata"]["sip"]["state"])
            if row["status"] == "ended":
                break
            await asyncio.sleep(0.05)
        code, err = await uas.finish()
        assert code == 0, err
    assert "early_media" in states
    assert row["end_reason"] == "no_answer"
    assert row["metadata"]["sip"]["status_code"] == 487


async def test_wait_answers_with_the_failure(tmp_path: Path) -> None:
    scenario = final_response_scenario(tmp_path, 603, "Decline")
    async with operator_api(tmp_path) as api, sipp_uas(scenario, tmp_path) as uas:
        response = await api.post(SIP_CALLS, json={"to": uas.uri(), "wait": True})
        code, err = await uas.finish()
        assert code == 0, err
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert (error["code"], error["outcome"], error["sip_status"]) == ("call_failed", "rejected", 603)
        row = await record(api, error["call_id"])
    assert row["status"] == "ended" and row["end_reason"] == "rejected"


async def test_where_post_api_calls_goes(tmp_path: Path) -> None:
    """sip: goes to our user agent; "via": "twilio" keeps it on Twilio (not configured here: 503 from the
    Twilio path); sips: needs TLS (400); "via": "sip" needs a sip: URI; bad options are refused."""
    async with operator_api(tmp_path) as api:
        to_twilio = {"to": "sip:alice@127.0.0.1:5999", "via": "twilio", "from": "+15550001111"}
        twilio = await api.post("/api/calls", json=to_twilio)
        assert twilio.status_code == 503 and twilio.json()["error"]["code"] == "twilio_not_configured"
        sips = await api.post("/api/calls", json={"to": "sips:alice@127.0.0.1:5999"})
        assert sips.status_code == 400 and "TLS" in sips.json()["error"]["message"]
        number = await api.post("/api/calls", json={"to": "+15551230000", "via": "sip"})
        assert number.status_code == 400
        for body in (
            {"to": "sip:alice@127.0.0.1:5999", "via": "carrier-pigeon"},
            {"to": "sip:alice@127.0.0.1:5999", "ring_timeout_s": 0},
            {"to": "sip:alice@127.0.0.1:5999", "wait": "yes"},
            {"to": "sip:alice@127.0.0.1:5999", "machine_detection": "Enable"},
        ):
            refused = await api.post("/api/calls", json=body)
            assert refused.status_code == 400, body
        unknown = await api.post(SIP_CALLS, json={"to": "sip:alice@127.0.0.1:5999", "agent": "nobody"})
        assert unknown.status_code == 404
        listed = await api.get("/api/calls")
        assert listed.json()["total"] == 0  # nothing refused left a record


async def test_dialing_calls_hold_a_slot_and_end_at_shutdown(tmp_path: Path) -> None:
    """A dialing call takes a call slot (its RTP port and the call it becomes): with one slot, a second
    call is refused with 503 busy until the first has ended. A call still dialing when the service stops
    ends as canceled."""
    async with (
        operator_api(tmp_path, max_calls=1) as api,
        sipp_uas("uas_final_response.xml", tmp_path) as uas,
    ):
        first = await api.post(SIP_CALLS, json={"to": uas.uri()})
        assert first.status_code == 201
        second = await api.post(SIP_CALLS, json={"to": uas.uri("other")})
        assert second.status_code == 503 and second.json()["error"]["code"] == "busy"
        await ended(api, first.json()["call_id"])
        code, err = await uas.finish()
        assert code == 0, err
        await asyncio.sleep(0)  # the slot is released as the dialing task ends
        third = await api.post(SIP_CALLS, json={"to": f"sip:nobody@127.0.0.1:{free_udp_port()}"})
        assert third.status_code == 201
        assert (await record(api, third.json()["call_id"]))["status"] == "ringing"
    with CallStore(tmp_path / "voice.db") as store:
        row = store.get_call(third.json()["call_id"])
    assert row is not None and row["status"] == "ended" and row["end_reason"] == "canceled"


async def test_operator_hangup_while_ringing_cancels_the_call(tmp_path: Path) -> None:
    """``POST /api/calls/{id}/hangup`` before the answer: CANCEL (SIPp answers 487), the record ends as
    canceled with the operator as the reason, and a second hang-up finds nothing live."""
    async with operator_api(tmp_path) as api, sipp_uas("uas_ring_cancel.xml", tmp_path) as uas:
        response = await api.post(SIP_CALLS, json={"to": uas.uri(), "ring_timeout_s": 30})
        assert response.status_code == 201, response.text
        call_id = response.json()["call_id"]
        deadline = time.monotonic() + 10
        while (await record(api, call_id))["metadata"]["sip"]["state"] == "dialing":
            assert time.monotonic() < deadline, "the callee never rang"
            await asyncio.sleep(0.05)
        hangup = await api.post(f"/api/calls/{call_id}/hangup")
        assert hangup.status_code == 202, hangup.text
        assert hangup.json() == {"call_id": call_id, "status": "canceled"}
        row = await ended(api, call_id)
        code, err = await uas.finish()
        assert code == 0, err  # SIPp saw the CANCEL and answered it
        again = await api.post(f"/api/calls/{call_id}/hangup")
        assert again.status_code == 409
    assert row["end_reason"] == "canceled"
    assert row["metadata"]["sip"]["reason"] == "canceled by the operator"
