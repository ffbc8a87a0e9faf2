"""End to end over Twilio: a simulated Twilio caller talks to the agent through the real ``voice serve``.

The service runs as its own process (:func:`tests.servicehelp.start_service`) with the embedded local engine
(offline recognition on), Twilio credentials, ``VOICE_PUBLIC_URL=https://voice.example.com`` (what Twilio
would call and sign) and ``VOICE_TWILIO_API_BASE`` pointing the ``twilio`` client at
:class:`~tests.bridges.twilio.fake_api.FakeTwilioApi` on loopback.

Each call starts the way Twilio starts it: the signed incoming-call webhook (``POST /twilio/voice``) answers
TwiML, and :class:`~tests.bridges.twilio.simulator.SimulatedTwilioCall` connects to the ``<Stream>`` URL that
TwiML names (signed like Twilio signs it, sent to the loopback port) with the ``<Parameter>``s as
``customParameters``. The simulator paces 20 ms µ-law frames of real speech (16 kHz synthesized speech
resampled to 8 kHz, test-peers.md), plays the agent's audio at real-time speed, echoes each mark only after
the audio before it played, answers ``clear`` like Twilio, sends DTMF and ``stop``.

Checked: agent audio comes back; a barge-in clears Twilio's queue and truncates within 40 ms of what the
caller really played; a key reaches the model (2: the opening hours); a transfer replaces the call's TwiML
with ``<Dial>`` through the REST API and the record says so; the agent's DTMF reaches the line as tones;
``stop`` saves the record; malformed frames mid-call are logged with the call id and the call goes on;
signatures on the webhook and the WebSocket upgrade; outbound calls from ``voice call`` (and Twilio's
refusal printed clearly).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus

from bridges.twilio.signature import SIGNATURE_HEADER, compute_signature
from tests.bridges.twilio.fake_api import ApiRequest, FakeTwilioApi
from tests.bridges.twilio.simulator import SimulatedTwilioCall, new_sid
from tests.conftest import REPO
from tests.servicehelp import ServiceProcess, service_env, start_service, wait_until
from voice.audio.dtmf import DtmfDetector
from voice.audio.g711 import ulaw_decode, ulaw_encode
from voice.audio.resample import resample_pcm16

pytestmark = pytest.mark.slow

Speech = Callable[[str, int], bytes]
TOKEN = "e2e-twilio-auth-token"
ACCOUNT = "AC" + "12" * 16
PUBLIC = "https://voice.example.com"
OUR_NUMBER = "+15550001111"
CALLER = "+15557778888"
STAFF = "+15557654321"
DESK = "+15550003333"
HOURS = "Tuesday to Sunday"

PHONE_AGENT = f"""description = "Test line: opening hours, transfer, keys out"
model = "gpt-realtime"
output_modalities = ["audio"]

[turn_detection]
type = "server_vad"
silence_duration_ms = 500
create_response = true
interrupt_response = true

[dtmf]
mode = "each"

[engine]
greeting = "Hello, this is the test line."
fallback = "Sorry, I did not catch that."
after_tool = "Done."

[[engine.rules]]
dtmf = "2"
say = "We are open {HOURS}, from noon to ten in the evening."

[[engine.rules]]
dtmf = "0"
call = "transfer_call"
arguments = {{ target = "{STAFF}", reason = "caller pressed 0" }}
say_after = "Connecting you now."

[[engine.rules]]
dtmf = "9"
call = "send_dtmf"
arguments = {{ digits = "147#" }}
say_after = "OK."
"""


def ulaw_speech(speech: Speech, text: str) -> bytes:
    """``text`` as the phone line carries it: 16 kHz speech resampled to 8 kHz, µ-law."""
    return ulaw_encode(resample_pcm16(speech(text, 16000), 16000, 8000))


def level(ulaw: bytes) -> float:
    """RMS of µ-law audio (PCM16 units)."""
    pcm = np.frombuffer(ulaw_decode(ulaw), dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(pcm * pcm))) if len(pcm) else 0.0


@dataclass
class TwilioService:
    """The running service, the fake REST API and the Twilio-side helpers."""

    proc: ServiceProcess
    api: FakeTwilioApi

    @property
    def http(self) -> str:
        return self.proc.base

    def webhook(self, path: str, form: dict[str, str], *, signature: str | None = "valid") -> httpx.Response:
        """POST a Twilio webhook signed over the public URL (``signature``: "valid", None or a literal)."""
        headers = {}
        if signature == "valid":
            headers[SIGNATURE_HEADER] = compute_signature(PUBLIC + path, form, TOKEN)
        elif signature is not None:
            headers[SIGNATURE_HEADER] = signature
        return httpx.post(self.http + path, data=form, headers=headers, timeout=10.0, trust_env=False)

    def incoming(self, *, to: str = OUR_NUMBER, agent: str | None = None) -> SimulatedTwilioCall:
        """An incoming call: the webhook's TwiML, then a simulator for the ``<Stream>`` it names."""
        call_sid = new_sid("CA")
        form = {
            "CallSid": call_sid,
            "AccountSid": ACCOUNT,
            "From": CALLER,
            "To": to,
            "Direction": "inbound",
            "CallStatus": "ringing",
        }
        path = "/twilio/voice" + (f"?agent={agent}" if agent else "")
        answer = self.webhook(path, form)
        assert answer.status_code == 200, answer.text
        url, params = stream_of(answer.text)
        return self.simulator(url, params, call_sid=call_sid)

    def simulator(self, url: str, params: dict[str, str], *, call_sid: str, **kw: Any) -> SimulatedTwilioCall:
        assert url == "wss://voice.example.com/twilio/stream"
        options: dict[str, Any] = {"auth_token": TOKEN, "account_sid": ACCOUNT, **kw}
        return SimulatedTwilioCall(
            f"ws://127.0.0.1:{self.proc.port}/twilio/stream",
            signed_url=url,
            call_sid=call_sid,
            custom_parameters=params,
            **options,
        )

    def call(self, call_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.http}/api/calls/{call_id}", timeout=10.0, trust_env=False)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def ended(self, call_id: str, within_s: float = 20.0) -> dict[str, Any]:
        async with asyncio.timeout(within_s):
            while True:
                call = await asyncio.to_thread(self.call, call_id)
                if call["status"] == "ended":
                    return call
                await asyncio.sleep(0.1)

    async def agent_said(self, call_id: str, text: str, within_s: float = 30.0) -> dict[str, Any]:
        """The agent transcript event containing ``text`` (stored once the turn has played out)."""
        async with asyncio.timeout(within_s):
            while True:
                call = await asyncio.to_thread(self.call, call_id)
                for event in call["transcript"]:
                    if event["kind"] == "agent" and text in event["text"]:
                        return dict(event)
                await asyncio.sleep(0.1)

    def log_events(self, call_id: str, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.proc.log_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("call_id") == call_id and entry.get("event") == event:
                out.append(entry)
        return out

    def updates(self, call_sid: str) -> list[ApiRequest]:
        return [r for r in self.api.requests if r.path.endswith(f"/Calls/{call_sid}.json")]


def file_size(path: str) -> int:
    return Path(path).stat().st_size


def stream_of(twiml: str) -> tuple[str, dict[str, str]]:
    """The ``<Stream url>`` and ``<Parameter>``s of a ``<Connect><Stream>`` document."""
    root = ET.fromstring(twiml)
    stream = root.find("./Connect/Stream")
    assert stream is not None, twiml
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    return stream.attrib["url"], params


@pytest.fixture(scope="module")
def twilio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwilioService]:
    home = tmp_path_factory.mktemp("twilio-e2e")
    prompts = home / "prompts"
    prompts.mkdir()
    for name in ("restaurant.toml", "restaurant.md"):
        shutil.copy(REPO / "prompts" / name, prompts / name)
    (prompts / "phone.toml").write_text(PHONE_AGENT, encoding="utf-8")
    (prompts / "phone.md").write_text("You answer the test line. Be brief.\n", encoding="utf-8")
    api = FakeTwilioApi()
    api.start()
    env = service_env(
        home,
        TWILIO_ACCOUNT_SID=ACCOUNT,
        TWILIO_AUTH_TOKEN=TOKEN,
        VOICE_PUBLIC_URL=PUBLIC,
        VOICE_TWILIO_API_BASE=api.base_url,
        VOICE_TWILIO_FROM_NUMBER=OUR_NUMBER,
        VOICE_PROMPTS_DIR=str(prompts),
        VOICE_TWILIO_TRANSFER_TO=DESK,
    )
    proc = start_service(home, env=env)
    try:
        yield TwilioService(proc, api)
    finally:
        proc.stop()
        api.stop()


async def greeting_heard(sim: SimulatedTwilioCall, ms: int) -> None:
    """Until the caller has heard ``ms`` of non-silent agent audio."""
    await sim.wait_for(lambda: sim.heard_ms() >= ms and level(sim.heard_audio()) > 100, within_s=30)


async def greeting_done(sim: SimulatedTwilioCall) -> None:
    """Until the greeting has played out (nothing queued, no new audio for 600 ms)."""
    await greeting_heard(sim, 500)
    async with asyncio.timeout(30):
        while True:
            last = sim.media_received[-1][0] if sim.media_received else 0.0
            if sim.idle.is_set() and asyncio.get_running_loop().time() - last > 0.6:
                return
            await asyncio.sleep(0.05)


# Calls ----------------------------------------------------------------------------------------------------


async def test_agent_answers_a_key_and_stop_saves_the_record(twilio: TwilioService) -> None:
    sim = twilio.incoming()
    call_id = sim.custom_parameters["call_id"]
    assert sim.custom_parameters == {
        "agent": "restaurant",
        "direction": "inbound",
        "from": CALLER,
        "to": OUR_NUMBER,
        "call_id": call_id,
    }
    async with sim:
        await greeting_done(sim)
        greeting = sim.heard_audio()
        assert level(greeting) > 500, "the greeting is speech, not silence"
        await sim.press("2")
        answer = await twilio.agent_said(call_id, HOURS)
        live = await asyncio.to_thread(twilio.call, call_id)
        await sim.wait_idle(within_s=10)
        await sim.stop()
    # The answer was played to the caller: about 4 s of speech after the greeting.
    assert level(sim.heard_audio()[len(greeting) :]) > 500
    assert sim.heard_ms() - len(greeting) // 8 > 2500
    assert not sim.protocol_errors, sim.protocol_errors
    # Every mark we were sent came back, each only after the audio before it had played.
    assert sim.marks_received and len(sim.marks_echoed) >= len(sim.marks_received) - 2
    call = await twilio.ended(call_id)
    assert live["status"] == "live" and live["live"]["leg"] == "twilio"
    assert call["end_reason"] == "caller_hangup" and call["leg"] == "twilio"
    assert call["caller"] == CALLER and call["callee"] == OUR_NUMBER and call["agent"] == "restaurant"
    assert call["metadata"]["call_sid"] == sim.call_sid
    assert call["metadata"]["stream_sid"] == sim.stream_sid
    transcript = call["transcript"]
    dtmf = [e for e in transcript if e["kind"] == "dtmf"]
    assert [e["data"]["digits"] for e in dtmf] == ["2"]
    assert answer["data"]["item_id"]
    assert any(e["kind"] == "system" and "call ended" in e["text"] for e in transcript)
    assert file_size(call["recording_path"]) > 16_000


async def test_barge_in_clears_and_truncates_at_what_the_caller_played(
    twilio: TwilioService, speech: Speech
) -> None:
    sim = twilio.incoming()
    call_id = sim.custom_parameters["call_id"]
    async with sim:
        await greeting_heard(sim, 1500)
        sim.say(ulaw_speech(speech, "What are your opening hours?"))
        await sim.wait_for(lambda: bool(sim.clears), within_s=10)
        played_at_clear = sum(len(c.audio) for c in sim.heard if c.t <= sim.clears[0]) // 8
        frames_at_clear = len(sim.media_received)
        answer = await twilio.agent_said(call_id, HOURS, within_s=40)
        await sim.stop()
    call = await twilio.ended(call_id)
    transcript = call["transcript"]
    barge = next(e for e in transcript if e["kind"] == "barge_in")
    greeting = next(e for e in transcript if e["kind"] == "agent")
    truncates = twilio.log_events(call_id, "upstream.truncate")
    assert len(truncates) == 1, truncates
    audio_end_ms = truncates[0]["audio_end_ms"]
    # The truncate carried what the caller really played, within 40 ms.
    assert abs(audio_end_ms - played_at_clear) <= 40, (audio_end_ms, played_at_clear)
    assert barge["data"]["heard_ms"] == audio_end_ms
    assert greeting["data"]["interrupted"] is True and greeting["data"]["heard_ms"] == audio_end_ms
    assert truncates[0]["item_id"] == greeting["data"]["item_id"] == barge["data"]["item_id"]
    # Twilio's queue was cleared and the agent stopped; the outstanding marks came back as cleared.
    assert len(sim.clears) >= 1 and frames_at_clear < len(sim.media_received)
    assert answer["data"]["item_id"] != greeting["data"]["item_id"]
    # Recognition heard the question over the 8 kHz line (Whisper tiny.en may miss a word, not the gist).
    caller = [e["text"].lower() for e in transcript if e["kind"] == "caller"]
    assert any("hours" in text or "open" in text for text in caller), caller


async def test_transfer_replaces_the_twiml_with_dial_and_the_record_says_so(twilio: TwilioService) -> None:
    sim = twilio.incoming(agent="phone")
    call_id = sim.custom_parameters["call_id"]
    assert sim.custom_parameters["agent"] == "phone"
    async with sim:
        await greeting_done(sim)
        await sim.press("0")
        await twilio.agent_said(call_id, "Connecting you now")
        await wait_until(lambda: bool(twilio.updates(sim.call_sid)), timeout_s=30)
        await sim.stop()  # Twilio ends the stream once the call's TwiML is replaced
    (update,) = twilio.updates(sim.call_sid)
    assert update.method == "POST"
    assert update.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{sim.call_sid}.json"
    assert update.basic_auth == (ACCOUNT, TOKEN)
    dial = ET.fromstring(update.field("Twiml") or "").find("./Dial")
    assert dial is not None and dial.findtext("Number") == STAFF
    call = await twilio.ended(call_id)
    assert call["end_reason"] == "transferred"
    texts = [e["text"] for e in call["transcript"]]
    assert f"transferred to {STAFF}" in texts
    # The agent's "Connecting you now" was heard before the transfer.
    tool = next(e for e in call["transcript"] if e["kind"] == "tool_call")
    assert tool["data"]["name"] == "transfer_call"


async def test_the_agents_keys_reach_the_line_as_tones(twilio: TwilioService) -> None:
    sim = twilio.incoming(agent="phone")
    call_id = sim.custom_parameters["call_id"]
    async with sim:
        await greeting_done(sim)
        before = len(sim.heard_audio())
        await sim.press("9")
        await twilio.agent_said(call_id, "OK.")
        await sim.wait_idle(within_s=20)
        await asyncio.sleep(0.3)
        await sim.stop()
    detector = DtmfDetector(8000)
    keys = "".join(d.digit for d in detector.push(ulaw_decode(sim.heard_audio()[before:])))
    assert keys == "147#", keys
    call = await twilio.ended(call_id)
    out = [e for e in call["transcript"] if e["kind"] == "dtmf" and e["data"].get("direction") == "out"]
    assert [e["data"]["digits"] for e in out] == ["147#"]


async def test_malformed_frames_mid_call_are_logged_and_the_call_goes_on(twilio: TwilioService) -> None:
    sim = twilio.incoming()
    call_id = sim.custom_parameters["call_id"]
    async with sim:
        await greeting_done(sim)
        await sim.send_raw("{not json")
        await sim.send_raw(json.dumps(["an", "array"]))
        await sim.send_raw(
            json.dumps(
                {
                    "event": "media",
                    "streamSid": sim.stream_sid,
                    "media": {"track": "inbound", "chunk": "9999", "timestamp": "1", "payload": "%%"},
                }
            )
        )
        await sim.send_raw(
            json.dumps({"event": "dtmf", "streamSid": sim.stream_sid, "dtmf": {"digit": "22"}})
        )
        await sim.send_raw(json.dumps({"event": "brand-new-event", "streamSid": sim.stream_sid}))
        await sim.send_raw(
            json.dumps({"event": "dtmf", "streamSid": new_sid("MZ"), "dtmf": {"digit": "1", "track": "x"}})
        )
        await sim.send_raw(b"\x00\x01binary")
        await sim.press("2")
        await twilio.agent_said(call_id, HOURS)
        await sim.stop()
    call = await twilio.ended(call_id)
    assert call["end_reason"] == "caller_hangup"
    assert [e["data"]["digits"] for e in call["transcript"] if e["kind"] == "dtmf"] == ["2"]
    reasons = {e["reason"] for e in twilio.log_events(call_id, "twilio.bad_message")}
    assert {
        "malformed_json",
        "not_an_object",
        "bad_base64",
        "bad_digit",
        "wrong_stream",
        "binary_frame",
    } <= reasons
    assert twilio.log_events(call_id, "twilio.unknown_event")


# Signatures -----------------------------------------------------------------------------------------------


def test_webhook_signatures_valid_invalid_missing(twilio: TwilioService) -> None:
    form = {"CallSid": new_sid("CA"), "AccountSid": ACCOUNT, "From": CALLER, "To": OUR_NUMBER}
    assert twilio.webhook("/twilio/voice", form).status_code == 200
    wrong = twilio.webhook("/twilio/voice", form, signature=compute_signature(PUBLIC + "/x", form, TOKEN))
    assert wrong.status_code == 403 and "bad_signature" in wrong.text
    missing = twilio.webhook("/twilio/voice", form, signature=None)
    assert missing.status_code == 403 and "missing_signature" in missing.text
    other_secret = compute_signature(PUBLIC + "/twilio/voice", form, "not-the-token")
    assert twilio.webhook("/twilio/voice", form, signature=other_secret).status_code == 403
    tampered = dict(form, To="+15550009999")
    headers = {SIGNATURE_HEADER: compute_signature(PUBLIC + "/twilio/voice", form, TOKEN)}
    answer = httpx.post(twilio.http + "/twilio/voice", data=tampered, headers=headers, trust_env=False)
    assert answer.status_code == 403
    assert (
        twilio.webhook("/twilio/status", {**form, "CallStatus": "ringing"}, signature=None).status_code == 403
    )
    log = twilio.proc.log_text()
    assert "twilio.webhook_refused" in log


async def test_stream_upgrade_signatures_valid_invalid_missing(twilio: TwilioService) -> None:
    url = "wss://voice.example.com/twilio/stream"
    for signature in (compute_signature(url, {}, "not-the-token"), compute_signature(url + "x", {}, TOKEN)):
        sim = twilio.simulator(url, {}, call_sid=new_sid("CA"), signature=signature)
        with pytest.raises(InvalidStatus) as refused:
            await sim.connect()
        assert refused.value.response.status_code == 403
    missing = twilio.simulator(url, {}, call_sid=new_sid("CA"), auth_token=None)
    with pytest.raises(InvalidStatus) as refused:
        await missing.connect()
    assert refused.value.response.status_code == 403
    valid = twilio.simulator(url, {"agent": "restaurant"}, call_sid=new_sid("CA"))
    async with valid:
        await greeting_heard(valid, 200)
        await valid.stop()
    assert "twilio.stream_refused" in twilio.proc.log_text()


# Outbound -------------------------------------------------------------------------------------------------


def voice_cli(twilio: TwilioService, *args: str) -> subprocess.CompletedProcess[str]:
    env = service_env(twilio.proc.home)
    return subprocess.run(
        [sys.executable, "-m", "voice", *args, "--url", twilio.http],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_outbound_call_from_the_cli_connects_to_the_agent(twilio: TwilioService) -> None:
    done = await asyncio.to_thread(voice_cli, twilio, "call", "+1 (555) 123-0000", "--agent", "phone")
    assert done.returncode == 0, done.stderr
    create = next(r for r in reversed(twilio.api.requests) if r.path.endswith("/Calls.json"))
    assert create.field("To") == "+15551230000" and create.field("From") == OUR_NUMBER
    assert create.field("StatusCallback") == PUBLIC + "/twilio/status"
    assert set(create.fields("StatusCallbackEvent")) == {"initiated", "ringing", "answered", "completed"}
    url, params = stream_of(create.field("Twiml") or "")
    call_id = params["call_id"]
    assert call_id in done.stdout
    assert params["agent"] == "phone" and params["direction"] == "outbound"
    ringing = await asyncio.to_thread(twilio.call, call_id)
    assert ringing["status"] == "ringing" and ringing["callee"] == "+15551230000"
    call_sid = ringing["metadata"]["call_sid"]
    for status in ("initiated", "ringing", "in-progress"):
        form = {"CallSid": call_sid, "AccountSid": ACCOUNT, "CallStatus": status, "Direction": "outbound-api"}
        assert twilio.webhook("/twilio/status", form).status_code == 200
    sim = twilio.simulator(url, params, call_sid=call_sid)
    async with sim:
        await greeting_heard(sim, 300)
        await sim.stop()
    form = {"CallSid": call_sid, "AccountSid": ACCOUNT, "CallStatus": "completed", "CallDuration": "3"}
    assert twilio.webhook("/twilio/status", form).status_code == 200
    call = await twilio.ended(call_id)
    assert call["leg"] == "twilio" and call["agent"] == "phone" and call["end_reason"] == "caller_hangup"
    twilio_meta = call["metadata"]["twilio"]
    assert [s["status"] for s in twilio_meta["statuses"]] == [
        "initiated",
        "ringing",
        "in-progress",
        "completed",
    ]
    assert twilio_meta["outcome"] == "completed" and twilio_meta["duration_s"] == 3
    assert call["metadata"]["direction"] == "outbound"


async def test_outbound_call_twilio_refuses_is_reported_clearly(twilio: TwilioService) -> None:
    twilio.api.respond(
        400,
        {
            "code": 21211,
            "message": "The 'To' number +15550000000 is not a valid phone number.",
            "more_info": "https://www.twilio.com/docs/errors/21211",
            "status": 400,
        },
    )
    done = await asyncio.to_thread(voice_cli, twilio, "call", "+15550000000")
    assert done.returncode == 1
    assert "21211" in done.stderr and "is not a valid phone number" in done.stderr, done.stderr
    listed = await asyncio.to_thread(
        httpx.get, twilio.http + "/api/calls?status=ended&leg=twilio", trust_env=False
    )
    calls = listed.json()["calls"]
    failed = next(c for c in calls if c["callee"] == "+15550000000")
    assert failed["end_reason"] == "failed"
    assert failed["metadata"]["twilio"]["error"]["twilio_code"] == 21211


async def test_outbound_call_that_is_not_answered_records_the_outcome(twilio: TwilioService) -> None:
    response = await asyncio.to_thread(
        httpx.post, twilio.http + "/api/calls", json={"to": "+15551112222"}, trust_env=False
    )
    assert response.status_code == 201, response.text
    placed = response.json()
    form = {"CallSid": placed["call_sid"], "AccountSid": ACCOUNT, "CallStatus": "no-answer"}
    assert twilio.webhook("/twilio/status", form).status_code == 200
    call = await twilio.ended(placed["call_id"], within_s=5)
    assert call["end_reason"] == "no_answer" and call["metadata"]["twilio"]["outcome"] == "no_answer"


async def test_transfer_to_the_default_line_when_the_model_names_none(twilio: TwilioService) -> None:
    sim = twilio.incoming()  # the restaurant agent: transfer_call has no target argument
    call_id = sim.custom_parameters["call_id"]
    async with sim:
        await greeting_done(sim)
        await sim.press("0")
        await wait_until(lambda: bool(twilio.updates(sim.call_sid)), timeout_s=30)
        await sim.stop()
    (update,) = twilio.updates(sim.call_sid)
    dial = ET.fromstring(update.field("Twiml") or "").find("./Dial")
    assert dial is not None and dial.findtext("Number") == DESK
    call = await twilio.ended(call_id)
    assert call["end_reason"] == "transferred"


async def test_a_refused_transfer_goes_back_to_the_model_and_the_call_goes_on(twilio: TwilioService) -> None:
    sim = twilio.incoming(agent="phone")
    call_id = sim.custom_parameters["call_id"]
    async with sim:
        await greeting_done(sim)
        twilio.api.respond(400, {"code": 13214, "message": "Dial: Invalid callerId value", "status": 400})
        await sim.press("0")
        await wait_until(lambda: bool(twilio.updates(sim.call_sid)), timeout_s=30)
        heard = sim.heard_ms()
        # The agent speaks again (its answer to the failure note), and the call is still live.
        await sim.wait_for(lambda: sim.heard_ms() > heard + 500, within_s=20)
        live = await asyncio.to_thread(twilio.call, call_id)
        assert live["status"] == "live"
        await sim.press("2")
        await twilio.agent_said(call_id, HOURS)
        await sim.stop()
    call = await twilio.ended(call_id)
    assert call["end_reason"] == "caller_hangup"
    errors = [e for e in call["transcript"] if e["kind"] == "error"]
    assert any("13214" in e["text"] and STAFF in e["text"] for e in errors), errors
    assert twilio.log_events(call_id, "call.transfer_failed")
