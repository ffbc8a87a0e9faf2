"""Twilio calls through the real call runner and the local engine (bridges/twilio/leg.py, routes.py).

The real service app (:class:`tests.e2e.app.ServiceThread`: :func:`voice.server.create_app` with the embedded
local engine, recognition off, and an upstream opener that keeps each call's upstream traffic) serves on
loopback; :class:`~tests.bridges.twilio.fake_api.FakeTwilioApi` stands in for Twilio's REST API and
:class:`~tests.bridges.twilio.simulator.SimulatedTwilioCall` plays Twilio's side of each Media Stream (real
time, marks echoed once played). Webhooks and status callbacks are signed with the real
``RequestValidator`` over the public URL.

Checked:

- the agent's keys (``send_dtmf``) pressed while it is still speaking reach the caller as clean tone pairs:
  the exact µ-law of the Q.23 pairs is in what the caller heard, byte for byte (nothing mixed in), the
  :class:`~voice.audio.dtmf.DtmfDetector` reads exactly the keys, and the agent's speech is heard right
  before and right after them (its speech paused for the keys);
- an outbound call answered by a machine under the agent's ``leave_message`` policy: the system note reaches
  the local engine (sent, and echoed back as a conversation item), a response follows, and the call ends
  once the message time is up (the scripted engine does not call ``end_call`` by itself).
"""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest

from bridges.twilio.settings import TwilioSettings
from bridges.twilio.signature import SIGNATURE_HEADER, compute_signature
from tests.bridges.twilio.fake_api import FakeTwilioApi
from tests.bridges.twilio.simulator import SimulatedTwilioCall, new_sid
from tests.conftest import free_port
from tests.e2e.app import ServiceThread, service_settings
from voice.audio.dtmf import DtmfDetector, dtmf_tones
from voice.audio.g711 import ulaw_decode, ulaw_encode

TOKEN = "calls-test-auth-token"
ACCOUNT = "AC" + "34" * 16
PUBLIC = "https://voice.example.com"
OUR_NUMBER = "+15550001111"
CALLER = "+15557778888"
KEYS = "147#"
GREETING = "Hello, this is the test line. I will press some keys for you while I keep on talking."

KEYS_AGENT = f"""description = "Test line: presses keys on the line while it talks"

[turn_detection]
type = "server_vad"
silence_duration_ms = 500

[dtmf]
mode = "each"
barge_in = false

[engine]
greeting = "{GREETING}"
fallback = "Sorry, I did not catch that."
after_tool = "Done."

[[engine.rules]]
dtmf = "9"
call = "send_dtmf"
arguments = {{ digits = "{KEYS}" }}
say_after = "OK."
"""

OUTBOUND_AGENT = """description = "Outbound test line: leaves a message on voicemail"

[answering_machine]
policy = "leave_message"
message = "Please call the test line back."
max_message_s = 2

[engine]
greeting = "Hello, this is the test line calling you about your order."
"""


def level(ulaw: bytes) -> float:
    """RMS of µ-law audio (PCM16 units)."""
    pcm = np.frombuffer(ulaw_decode(ulaw), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(pcm * pcm))) if len(pcm) else 0.0


@dataclass
class Service:
    svc: ServiceThread
    api: FakeTwilioApi

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.svc.port}"

    def webhook(self, path: str, form: dict[str, str]) -> httpx.Response:
        headers = {SIGNATURE_HEADER: compute_signature(PUBLIC + path, form, TOKEN)}
        return httpx.post(self.http + path, data=form, headers=headers, timeout=10.0, trust_env=False)

    def simulator(self, twiml: str, call_sid: str) -> SimulatedTwilioCall:
        """The Twilio side of the ``<Stream>`` that ``twiml`` names (signed like Twilio, sent to loopback)."""
        stream = ET.fromstring(twiml).find("./Connect/Stream")
        assert stream is not None, twiml
        params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        return SimulatedTwilioCall(
            f"ws://127.0.0.1:{self.svc.port}/twilio/stream",
            auth_token=TOKEN,
            signed_url=stream.attrib["url"],
            account_sid=ACCOUNT,
            call_sid=call_sid,
            custom_parameters=params,
        )

    def incoming(self, agent: str) -> SimulatedTwilioCall:
        call_sid = new_sid("CA")
        form = {"CallSid": call_sid, "AccountSid": ACCOUNT, "From": CALLER, "To": OUR_NUMBER}
        answer = self.webhook(f"/twilio/voice?agent={agent}", form)
        assert answer.status_code == 200, answer.text
        return self.simulator(answer.text, call_sid)

    async def call(self, call_id: str) -> dict[str, Any]:
        async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
            response = await client.get(f"{self.http}/api/calls/{call_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def transcript_has(self, call_id: str, kind: str, text: str, within_s: float = 30.0) -> None:
        async with asyncio.timeout(within_s):
            while True:
                call = await self.call(call_id)
                if any(e["kind"] == kind and text in e["text"] for e in call["transcript"]):
                    return
                await asyncio.sleep(0.1)

    async def ended(self, call_id: str, within_s: float = 20.0) -> dict[str, Any]:
        async with asyncio.timeout(within_s):
            while True:
                call = await self.call(call_id)
                if call["status"] == "ended":
                    return call
                await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("twilio-calls")
    prompts = home / "prompts"
    prompts.mkdir()
    for name, text in (("keys", KEYS_AGENT), ("outbound", OUTBOUND_AGENT)):
        (prompts / f"{name}.toml").write_text(text, encoding="utf-8")
        (prompts / f"{name}.md").write_text("You answer the test line. Be brief.\n", encoding="utf-8")
    api = FakeTwilioApi()
    api.start()
    port = free_port()
    twilio = TwilioSettings(
        account_sid=ACCOUNT,
        auth_token=TOKEN,
        public_url=PUBLIC,
        api_base=api.base_url,
        from_number=OUR_NUMBER,
    )
    settings = service_settings(
        home, port, engine={"asr": False}, prompts_dir=prompts, agent="keys", twilio=twilio
    )
    svc = ServiceThread(settings, port)
    svc.start()
    try:
        yield Service(svc, api)
    finally:
        svc.stop()
        api.stop()


def tone_pairs(keys: str) -> bytes:
    """What the Twilio leg sends for ``keys``: Q.23 pairs, 100 ms on, 60 ms off, -10 dBFS, µ-law, padded
    to whole 20 ms frames (``TwilioLeg``'s defaults)."""
    codes = ulaw_encode(dtmf_tones(keys, 8000, on_ms=100, off_ms=60, level_dbfs=-10.0))
    return codes + b"\xff" * (-len(codes) % 160)


async def test_the_agents_keys_are_clean_tone_pairs_between_its_words(service: Service) -> None:
    sim = service.incoming("keys")
    call_id = sim.custom_parameters["call_id"]
    async with sim:
        await sim.wait_for(lambda: sim.heard_ms() >= 800 and level(sim.heard_audio()) > 100, within_s=30)
        await sim.press("9")  # the agent is still greeting: it presses the keys while it talks
        await service.transcript_has(call_id, "agent", "OK.")
        await sim.wait_idle(within_s=20)
        await sim.stop()
    heard = sim.heard_audio()
    tones = tone_pairs(KEYS)
    at = heard.find(tones)
    assert at >= 0, "the tone pairs were not heard as sent: mixed with speech or cut"
    keys = "".join(d.digit for d in DtmfDetector(8000).push(ulaw_decode(heard)))
    assert keys == KEYS
    window = 1600  # 200 ms
    assert level(heard[at - window : at]) > 200  # the greeting played right up to the keys ...
    assert level(heard[at + len(tones) : at + len(tones) + window]) > 200  # ... and went on after them
    call = await service.ended(call_id)
    out = [e for e in call["transcript"] if e["kind"] == "dtmf" and e["data"].get("direction") == "out"]
    assert [e["data"]["digits"] for e in out] == [KEYS]
    assert not any(e["kind"] == "barge_in" for e in call["transcript"])


async def test_voicemail_the_model_is_told_to_leave_a_message_then_the_call_ends(service: Service) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
        placed = await client.post(
            f"{service.http}/api/calls",
            json={"to": "+15551230000", "agent": "outbound", "machine_detection": "DetectMessageEnd"},
        )
    assert placed.status_code == 201, placed.text
    call_id, call_sid = placed.json()["call_id"], placed.json()["call_sid"]
    create = next(r for r in service.api.requests if r.path.endswith("/Calls.json") and r.field("To"))
    assert create.field("MachineDetection") == "DetectMessageEnd"
    sim = service.simulator(create.field("Twiml") or "", call_sid)
    async with sim:
        await sim.wait_for(lambda: sim.heard_ms() >= 300, within_s=30)
        form = {
            "CallSid": call_sid,
            "AccountSid": ACCOUNT,
            "CallStatus": "in-progress",
            "AnsweredBy": "machine_end_beep",
            "MachineDetectionDuration": "4200",
        }
        answer = await asyncio.to_thread(service.webhook, "/twilio/status", form)
        assert answer.status_code == 200
        call = await service.ended(call_id, within_s=20)
    assert call["end_reason"] == "answering_machine"  # the message time (2 s) ran out
    twilio = call["metadata"]["twilio"]
    assert twilio["answered_by"] == "machine_end_beep" and twilio["machine_action"] == "leave_message"
    assert any("leaves a message" in e["text"] for e in call["transcript"] if e["kind"] == "system")
    log = service.svc.upstream_log(call_id)
    sent = [i for i, (_, way, e) in enumerate(log) if way == "sent" and _is_voicemail_note(e)]
    assert len(sent) == 1, "the note was not sent to the engine"
    echoed = [e for _, way, e in log if way == "recv" and e.get("type") == "conversation.item.added"]
    assert any(_is_voicemail_note(e) for e in echoed), "the engine did not add the note to the conversation"
    after = [e for _, way, e in log[sent[0] :] if way == "sent" and e.get("type") == "response.create"]
    assert after, "no response was asked for after the note"


def _is_voicemail_note(event: dict[str, Any]) -> bool:
    item = event.get("item") or {}
    text = json.dumps(item.get("content") or [])
    return item.get("role") == "system" and "voicemail" in text and "call the test line back" in text
