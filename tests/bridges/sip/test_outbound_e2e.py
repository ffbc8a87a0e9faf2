"""An outbound SIP call end to end: ``voice serve`` (its own process, local engine without recognition)
places a call with ``POST /api/calls`` to a SIPp callee that plays an IVR prompt as early media (183 with
SDP) before it answers, talks, then hangs up. The API answers at once with ``dialing``; the record shows
the early media while the call rings, then the call runs under the same id and its record ends with the
early media that reached the agent. Then ``voice call --wait`` on a busy callee, and ``--via twilio``."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bridges.sip.sipp import free_even_port, free_udp_port, needs_sipp, sipp_uas
from tests.bridges.sip.test_outbound import IVR_PROMPT, tone_pcm
from tests.conftest import REPO
from tests.servicehelp import ServiceProcess, service_env, start_service
from voice.audio.g711 import ulaw_encode
from voice.audio.resample import resample_pcm16

pytestmark = [pytest.mark.slow, needs_sipp]


@contextlib.contextmanager
def sip_service(home: Path) -> Iterator[ServiceProcess]:
    rtp = free_even_port()
    env = service_env(home, VOICE_SIP__RTP_PORT_MIN=str(rtp), VOICE_SIP__RTP_PORT_MAX=str(rtp + 20))
    service = start_service(home, "--no-asr", "--sip-port", str(free_udp_port()), env=env)
    try:
        yield service
    finally:
        service.stop()


async def voice_call(service: ServiceProcess, *args: str) -> tuple[int, str, str]:
    """``voice call ARGS --url ...`` in its own process: exit code, stdout, stderr."""
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voice", "call", *args, "--url", service.base, cwd=REPO,
        env=service_env(service.home), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(cli.communicate(), 60)
    return cli.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def test_outbound_call_with_early_media(tmp_path: Path, speech: Callable[[str, int], bytes]) -> None:
    prompt = resample_pcm16(speech(IVR_PROMPT, 16000), 16000, 8000)
    early = (tone_pcm(600, (440.0, 480.0)) + prompt)[: 2 * 8 * 2400]  # ringback, then the prompt
    (tmp_path / "early.ulaw").write_bytes(ulaw_encode(early))
    (tmp_path / "live.ulaw").write_bytes(ulaw_encode(prompt))
    with sip_service(tmp_path / "home") as service:
        async with (
            sipp_uas("uas_early_media_answer.xml", tmp_path) as uas,
            httpx.AsyncClient(base_url=service.base, trust_env=False, timeout=5) as api,
        ):
            response = await api.post("/api/calls", json={"to": uas.uri("ivr")})
            assert response.status_code == 201, response.text
            placed = response.json()
            assert placed["status"] == "dialing" and placed["via"] == "sip"
            call_id = placed["call_id"]
            seen: list[tuple[str, str | None]] = []
            row: dict[str, Any] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got = await api.get(f"/api/calls/{call_id}")
                if got.status_code == 200:  # (404 for a moment while the runner takes the record over)
                    row = got.json()
                    seen.append((row["status"], (row["metadata"].get("sip") or {}).get("state")))
                    if row["status"] == "ended":
                        break
                await asyncio.sleep(0.1)
            code, err = await uas.finish()
            assert code == 0, err + service.log_text()[-3000:]
        # the CLI: --wait reports the failure with its outcome; --via twilio keeps a sip: URI on Twilio
        async with sipp_uas("uas_final_response.xml", tmp_path) as busy:
            waited = await voice_call(service, busy.uri(), "--wait")
            code, err = await busy.finish()
            assert code == 0, err
        assert waited[0] == 1 and "HTTP 502: busy (486 Busy Here)" in waited[2], waited
        twilio = await voice_call(service, "sip:a@127.0.0.1:5999", "--via", "twilio", "--from", "+15550001")
        assert twilio[0] == 1 and "HTTP 503" in twilio[2], twilio
    assert ("ringing", "early_media") in seen  # while the IVR spoke before answering
    assert ("live", "answered") in seen
    assert row["status"] == "ended" and row["id"] == call_id and row["leg"] == "sip"
    assert row["end_reason"] == "caller_hangup", service.log_text()[-3000:]
    meta = row["metadata"]
    assert meta["direction"] == "outbound" and meta["placed_at"]
    sip = meta["sip"]
    assert sip["status_code"] == 200 and 2000 <= sip["early_media_ms"] <= 3000
    assert 1000 <= sip["early_media_delivered_ms"] < sip["early_media_ms"]  # the prompt, not the ringback
