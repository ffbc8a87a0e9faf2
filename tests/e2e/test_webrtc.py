"""End to end over WebRTC, every packet on 127.0.0.1: ``voice serve`` (local engine with offline recognition;
``webrtc.host_addresses = ["127.0.0.1"]``, set for every test service by ``tests/servicehelp.py``) called by

- headless Chromium (Debian ``chromium`` driven by Playwright, ``--allow-loopback-in-peer-connection`` and the
  other flags of test-peers.md) whose fake microphone plays real synthesized speech: the page's default
  transport is WebRTC; the speech reaches the engine and is transcribed, the agent's voice reaches the page
  (measured with a WebAudio ``AnalyserNode`` on the remote track), transcripts arrive over the data channel,
  a barge-in stops the agent and truncates its turn where the track stopped, closing the page ends the call;
- in-process aiortc callers (:class:`bridges.webrtc.caller.WebRTCCaller`) for the rest: keypad DTMF over the
  data channel and in-band tones in the audio, refused offers (400 with a reason, 403, 404), CORS, an abrupt
  close (record saved, call ended), a peer that never connects (closed, record saved).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridges.webrtc.caller import CallerError, WebRTCCaller
from tests.bridges.webrtc.helpers import StallingMic
from tests.servicehelp import ServiceProcess, service_env, start_service
from tests.speech import silence, write_wav
from tests.web.test_chromium import CHROMIUM, chromium_flags
from voice.audio.dtmf import dtmf_tones

pytestmark = pytest.mark.slow

Speech = Callable[[str, int], bytes]
QUESTION = "What are your opening hours?"
GREETING = "Thank you for calling Luigi's Trattoria. Would you like to book a table?"
RMS_FLOOR = 0.01
DONE = "voicePage.state.transcripts.filter(t => t.type === 'transcript.done')"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """``voice serve`` with WebRTC pinned to loopback, short connect and media timeouts."""
    home = tmp_path_factory.mktemp("serve-webrtc")
    env = service_env(
        home,
        VOICE_WEBRTC__CONNECT_TIMEOUT_S="3",
        VOICE_WEBRTC__MEDIA_TIMEOUT_S="4",
        VOICE_ALLOWED_ORIGINS='["http://localhost:8123"]',
        VOICE_SIP__ENABLED="false",  # not needed here
    )
    running = start_service(home, env=env)
    yield running
    running.stop()


def call_row(
    service: ServiceProcess, call_id: str, *, ended: bool = True, timeout_s: float = 15.0
) -> dict[str, Any]:
    """The call's record from the operator API (waiting until it is ended)."""
    deadline = time.monotonic() + timeout_s
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = httpx.get(f"{service.base}/api/calls/{call_id}", trust_env=False)
        if response.status_code == 200:
            row = response.json()
            if not ended or row["status"] == "ended":
                return row
        time.sleep(0.1)
    raise AssertionError(f"call {call_id} not ended after {timeout_s} s: {row}")


def log_events(service: ServiceProcess, call_id: str, event: str) -> list[dict[str, Any]]:
    out = []
    for line in service.log_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("call_id") == call_id and entry.get("event") == event:
            out.append(entry)
    return out


# -- Chromium ----------------------------------------------------------------------------------------------

playwright_sync = pytest.importorskip("playwright.sync_api")
chromium_only = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian chromium is not installed")


@pytest.fixture
def browser_with_mic(tmp_path: Path, speech: Speech) -> Iterator[Callable[[int], Any]]:
    """``launch(lead_ms)``: headless Chromium whose microphone says QUESTION after ``lead_ms`` of quiet."""
    with playwright_sync.sync_playwright() as pw:
        browsers: list[Any] = []

        def launch(lead_ms: int) -> Any:
            wav = tmp_path / f"mic-{lead_ms}.wav"
            write_wav(wav, silence(lead_ms, 48000) + speech(QUESTION, 48000) + silence(10000, 48000), 48000)
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=chromium_flags(wav), headless=True)
            browsers.append(browser)
            return browser

        yield launch
        for browser in browsers:
            browser.close()


def open_page(browser: Any, service: ServiceProcess, query: str = "") -> Any:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(f"{service.base}/{query}")
    wait(page, "document.querySelectorAll('#agent option').length > 0")
    return page


def wait(page: Any, expression: str, timeout_s: float = 30.0) -> Any:
    """Poll a JavaScript expression until it is truthy; return its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = page.evaluate(expression)
        if value:
            return value
        time.sleep(0.1)
    state = page.evaluate("JSON.stringify(window.voicePage ? window.voicePage.state : null)")
    raise AssertionError(f"timed out waiting for {expression!r}; page state: {state}; errors: {page.errors}")


def done_texts(page: Any, role: str) -> list[str]:
    texts: list[str] = page.evaluate(f"{DONE}.filter(t => t.role === '{role}').map(t => t.text)")
    return texts


@chromium_only
def test_chromium_calls_over_webrtc_on_loopback(
    service: ServiceProcess, browser_with_mic: Callable[[int], Any]
) -> None:
    """Talk on the page (default transport): WebRTC connects on loopback, the greeting is heard in WebAudio,
    transcripts come over the data channel, the caller's speech is transcribed, the record is complete."""
    page = open_page(browser_with_mic(5000), service)
    assert page.locator("#transport").input_value() == "auto"
    page.click("#talk")
    call_id = wait(page, "voicePage.state.status === 'live' && voicePage.state.callId")
    assert page.evaluate("voicePage.state.transport") == "webrtc"
    assert page.evaluate("voicePage.client.ws === null && voicePage.client.dc.readyState === 'open'")
    wait(page, f"voicePage.state.maxOutputRms > {RMS_FLOOR}", 15)  # the agent's voice on the remote track
    wait(page, f"{DONE}.some(t => t.role === 'agent')", 20)
    assert GREETING in done_texts(page, "agent")
    wait(page, f"{DONE}.some(t => t.role === 'caller')", 40)
    assert "hours" in " ".join(done_texts(page, "caller")).lower()
    wait(
        page,
        "voicePage.state.transcripts.some(t => t.role === 'agent' && (t.text || '').includes('Tuesday'))",
    )
    assert page.locator("#cost-total").inner_text() != "$0.0000"
    page.click("#talk")  # hang up
    wait(page, "voicePage.state.status === 'ended'", 10)
    assert page.errors == []
    row = call_row(service, call_id)
    assert row["leg"] == "webrtc" and row["end_reason"] == "caller_hangup"
    kinds = [event["kind"] for event in row["transcript"]]
    assert kinds.count("agent") >= 2 and "caller" in kinds
    heard = " ".join(e["text"] for e in row["transcript"] if e["kind"] == "caller").lower()
    assert "hours" in heard  # the engine transcribed the caller's Opus audio
    assert row["metadata"]["transport"] == "webrtc"
    answered = log_events(service, call_id, "webrtc.answered")
    assert answered and all(c.startswith("127.0.0.1:") for c in answered[0]["candidates"])


@chromium_only
def test_chromium_barge_in_stops_the_agent(
    service: ServiceProcess, browser_with_mic: Callable[[int], Any]
) -> None:
    """The caller talks over the greeting: the service clears the track (the page's level falls to silence
    within a few hundred ms, the jitter buffer's worth), the greeting is recorded as interrupted with the part
    that left the track, and the engine's copy is truncated at the same ms."""
    page = open_page(browser_with_mic(1800), service)
    page.click("#talk")
    wait(page, "voicePage.client !== null")
    page.evaluate(
        """() => {
        const client = voicePage.client;
        window.clearProbe = {at: null, after: []};
        client.addEventListener('clear', () => {
          const started = performance.now();
          window.clearProbe.at = started;
          const timer = setInterval(() => {
            window.clearProbe.after.push([performance.now() - started, client.outputLevel()]);
            if (performance.now() - started > 600) clearInterval(timer);
          }, 10);
        });
      }"""
    )
    call_id = wait(page, "voicePage.state.callId")
    wait(page, "window.clearProbe.after.length > 0 && window.clearProbe.after.at(-1)[0] > 600", 30)
    probe = page.evaluate("window.clearProbe")
    late = [level for t, level in probe["after"] if t > 300]
    assert late and max(late) < RMS_FLOOR / 2, probe
    interrupted = wait(page, f"{DONE}.find(t => t.role === 'agent' && t.interrupted)")
    assert GREETING.startswith(interrupted["text"]) and len(interrupted["text"]) < len(GREETING)
    page.click("#talk")
    wait(page, "voicePage.state.status === 'ended'", 10)
    row = call_row(service, call_id)
    barge = next(e for e in row["transcript"] if e["kind"] == "barge_in")
    truncate = log_events(service, call_id, "upstream.truncate")
    cleared = log_events(service, call_id, "webrtc.cleared")
    assert truncate and cleared
    heard_item, heard_ms = cleared[0]["heard"]
    assert truncate[0]["item_id"] == heard_item == barge["data"]["item_id"]
    assert abs(truncate[0]["audio_end_ms"] - heard_ms) <= 20  # what really left the track
    assert barge["data"]["heard_ms"] == truncate[0]["audio_end_ms"]


@chromium_only
def test_closing_the_page_ends_the_call_at_once(
    service: ServiceProcess, browser_with_mic: Callable[[int], Any]
) -> None:
    browser = browser_with_mic(60000)
    page = open_page(browser, service)
    page.click("#talk")
    call_id = wait(page, "voicePage.state.status === 'live' && voicePage.state.callId")
    wait(page, f"voicePage.state.maxOutputRms > {RMS_FLOOR}", 15)
    closed = time.monotonic()
    page.close()
    row = call_row(service, call_id, timeout_s=15)
    assert row["end_reason"] == "caller_hangup"
    assert time.monotonic() - closed < 3  # the page hangs up on pagehide; no waiting for the media timeout
    notes = [e["text"] for e in row["transcript"] if e["kind"] == "system"]
    assert any("caller hung up" in note for note in notes), notes
    assert Path(row["recording_path"]).is_file()


# -- in-process aiortc callers -----------------------------------------------------------------------------


async def test_keypad_and_inband_dtmf_reach_the_call(service: ServiceProcess) -> None:
    caller = WebRTCCaller(service.base, agent="restaurant")
    try:
        call_id = await caller.call()
        await caller.wait_for(lambda: caller.of_type("call.started"), 10)
        caller.press("5")
        await caller.wait_for(lambda: caller.of_type("dtmf.ack"), 10)
        caller.mic.say(bytes(9600) + dtmf_tones("7", 48000) + bytes(9600))
        acks = await caller.wait_for(
            lambda: len(caller.of_type("dtmf.ack")) >= 2 and caller.of_type("dtmf.ack"), 10
        )
        assert [a["digit"] for a in acks] == ["5", "7"]
        await caller.hangup()
    finally:
        await caller.close()
    row = await asyncio.to_thread(call_row, service, call_id)
    assert [e["text"] for e in row["transcript"] if e["kind"] == "dtmf"] == ["5", "7"]
    assert row["end_reason"] == "caller_hangup"


async def test_bad_offers_are_refused_with_reasons(service: ServiceProcess) -> None:
    caller = WebRTCCaller(service.base, agent="restaurant")
    try:
        good = await caller.offer_sdp()
    finally:
        await caller.close()
    url = f"{service.base}/webrtc/offer"
    cases: list[tuple[dict[str, str], Any, int, str]] = [
        ({}, b"{not json", 400, "bad_json"),
        ({}, {"sdp": good, "type": "answer"}, 400, "bad_offer"),
        ({}, {"sdp": "v=0\r\n", "type": "offer"}, 400, "unsupported"),
        ({}, {"sdp": good.replace("a=sendrecv", "a=recvonly"), "type": "offer"}, 400, "unsupported"),
        ({}, {"sdp": good.replace("127.0.0.1", "192.0.2.2"), "type": "offer"}, 400, "unsupported"),
        (
            {},
            {
                "sdp": "".join(f"{x}\r\n" for x in good.splitlines() if "fingerprint" not in x),
                "type": "offer",
            },
            400,
            "bad_offer",
        ),
        ({}, {"sdp": "x" * 70000, "type": "offer"}, 400, "too_large"),
        ({"Origin": "http://evil.example"}, {"sdp": good, "type": "offer"}, 403, "origin_refused"),
        ({"X-Agent": "nobody"}, {"sdp": good, "type": "offer"}, 404, "unknown_agent"),
    ]
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        for headers, payload, status, code in cases:
            params = {"agent": "nobody"} if headers.pop("X-Agent", None) else {}
            content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            response = await http.post(url, content=content, headers=headers, params=params)
            body = response.json()
            assert (response.status_code, body["error"]["code"]) == (status, code), body
            assert body["error"]["message"]
        ready = (await http.get(f"{service.base}/readyz")).json()
    assert ready["live_calls"] == 0  # no slot was kept by a refused offer


async def test_cors_preflight_for_allowed_origins_only(service: ServiceProcess) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        allowed = await http.options(
            f"{service.base}/webrtc/offer",
            headers={"Origin": "http://localhost:8123", "Access-Control-Request-Method": "POST"},
        )
        refused = await http.options(
            f"{service.base}/webrtc/offer",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        config = await http.get(f"{service.base}/webrtc/config", headers={"Origin": "http://localhost:8123"})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:8123"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    assert config.status_code == 200 and config.json()["ice_servers"] == []
    assert config.headers["access-control-allow-origin"] == "http://localhost:8123"


async def test_abrupt_close_saves_the_record_and_ends_the_call(service: ServiceProcess) -> None:
    caller = WebRTCCaller(service.base, agent="restaurant")
    call_id = await caller.call()
    await caller.wait_for(lambda: caller.audio.loud_since(0, 0.02) > 25, 15)  # half a second of greeting
    await caller.close()  # no hangup message: the tab was killed
    row = await asyncio.to_thread(call_row, service, call_id)
    assert row["end_reason"] == "caller_hangup" and row["leg"] == "webrtc"
    assert row["duration_ms"] > 500
    notes = [e["text"] for e in row["transcript"] if e["kind"] == "system"]
    assert any("caller hung up" in note for note in notes), notes
    assert await asyncio.to_thread(lambda: Path(row["recording_path"]).stat().st_size) > 44


async def test_lost_network_ends_the_call(service: ServiceProcess) -> None:
    """The caller's packets stop (the network went away): the call ends after the media timeout (4 s here)
    with its record saved."""
    caller = WebRTCCaller(service.base, agent="restaurant")
    mic = StallingMic()
    caller.pc.getSenders()[0].replaceTrack(mic)
    caller.mic = mic
    try:
        call_id = await caller.call()
        await caller.wait_for(lambda: caller.of_type("call.started"), 10)
        mic.stall.set()
        stalled = time.monotonic()
        row = await asyncio.to_thread(call_row, service, call_id, timeout_s=15)
    finally:
        await caller.close()
    assert 3.5 < time.monotonic() - stalled < 12
    assert row["end_reason"] == "caller_hangup"
    notes = [e["text"] for e in row["transcript"] if e["kind"] == "system"]
    assert "caller hung up (media_timeout)" in notes, notes


async def test_a_peer_that_never_connects_is_closed_and_recorded(service: ServiceProcess) -> None:
    caller = WebRTCCaller(service.base, agent="restaurant")
    try:
        response = await caller.post_offer(await caller.offer_sdp())
    finally:
        await caller.close()  # never applies the answer
    assert response.status_code == 200
    call_id = response.json()["call_id"]
    row = await asyncio.to_thread(call_row, service, call_id, timeout_s=10)
    assert row["end_reason"] == "connect_timeout" and row["leg"] == "webrtc"
    assert row["transcript"][0]["kind"] == "system" and "did not connect" in row["transcript"][0]["text"]
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        assert (await http.get(f"{service.base}/readyz")).json()["live_calls"] == 0


async def test_refused_caller_gets_an_error_not_a_hang(service: ServiceProcess) -> None:
    caller = WebRTCCaller(service.base, agent="nobody")
    try:
        with pytest.raises(CallerError) as caught:
            await caller.call()
    finally:
        await caller.close()
    assert caught.value.status == 404
