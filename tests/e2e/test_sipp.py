"""End to end over SIP: SIPp (a real SIP phone) calls the real ``voice serve`` (local engine, no speech
recognition) on loopback: it streams speech, sends RFC 4733 keys and hangs up. Checked from the service's
records: the call ran on the SIP leg with the caller id, the keys reached the model as DTMF transcript
entries, and the agent's audio (the recording's right channel: what was sent over RTP) is not silent.
Also: loss and reordering injected between the peers by a small UDP proxy (the call survives, SIP timers
retransmit), and a disallowed source network refused with 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.bridges.sip.sipp import free_even_port, free_udp_port, needs_sipp, run_sipp
from tests.conftest import REPO
from tests.servicehelp import ServiceProcess, service_env, start_service
from voice.audio.g711 import ulaw_encode
from voice.audio.resample import resample_pcm16

pytestmark = [pytest.mark.slow, needs_sipp]


@pytest.fixture
def speech_ulaw(tmp_path: Path, speech: Callable[[str, int], bytes]) -> Path:
    pcm16k = speech("Hello, I would like to book a table for two tonight.", 16000)
    path = tmp_path / "speech.ulaw"
    path.write_bytes(ulaw_encode(resample_pcm16(pcm16k, 16000, 8000)))
    return path


@contextlib.contextmanager
def sip_service(home: Path, **env: str) -> Iterator[tuple[ServiceProcess, int]]:
    sip_port = free_udp_port()
    rtp = free_even_port()
    extra = {"VOICE_SIP__RTP_PORT_MIN": str(rtp), "VOICE_SIP__RTP_PORT_MAX": str(rtp + 20), **env}
    service = start_service(home, "--no-asr", "--sip-port", str(sip_port), env=service_env(home, **extra))
    try:
        yield service, sip_port
    finally:
        service.stop()


async def sip_calls(service: ServiceProcess) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        response = await client.get(f"{service.base}/api/calls", params={"leg": "sip"})
    response.raise_for_status()
    data = response.json()
    calls: list[dict[str, Any]] = data["calls"] if isinstance(data, dict) else data
    return calls


async def ended_call(service: ServiceProcess, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        calls = [c for c in await sip_calls(service) if c.get("status") == "ended"]
        if calls:
            async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
                detail = await client.get(f"{service.base}/api/calls/{calls[0]['id']}")
            detail.raise_for_status()
            result: dict[str, Any] = detail.json()
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"no ended SIP call: {await sip_calls(service)}\n{service.log_text()[-3000:]}")


def voiced_ms(path: Path, channel: int, threshold: float = 300.0) -> int:
    """Milliseconds of 20 ms frames of one channel of a WAV whose RMS is above ``threshold``."""
    with wave.open(str(path), "rb") as wav:
        frames = wav.readframes(wav.getnframes())
        channels = wav.getnchannels()
        rate = wav.getframerate()
    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels)[:, channel].astype(np.float64)
    step = rate // 50
    blocks = samples[: len(samples) // step * step].reshape(-1, step)
    return int((np.sqrt((blocks**2).mean(axis=1)) > threshold).sum()) * 20


async def test_sipp_calls_the_service(tmp_path: Path, speech_ulaw: Path) -> None:
    with sip_service(tmp_path / "home") as (service, sip_port):
        result = await run_sipp("uac_speech_dtmf.xml", f"127.0.0.1:{sip_port}", tmp_path)
        assert result.ok, result.stderr + result.messages[-3000:] + service.log_text()[-3000:]
        call = await ended_call(service)
    assert call["leg"] == "sip"
    assert call["caller"] == "alice"
    assert call["end_reason"] == "caller_hangup"
    digits = "".join(e["text"] for e in call["transcript"] if e["kind"] == "dtmf")
    assert "1" in digits and "2" in digits, call["transcript"]
    recording = Path(call["recording_path"])
    assert voiced_ms(recording, 1) > 1000  # the agent's greeting went back over RTP
    assert voiced_ms(recording, 0) > 1000  # the caller's speech arrived


async def test_disallowed_network_is_refused(tmp_path: Path) -> None:
    with sip_service(tmp_path / "home", VOICE_SIP__ALLOWED_NETWORKS='["10.0.0.0/8"]') as (service, port):
        result = await run_sipp("uac_refused.xml", f"127.0.0.1:{port}", tmp_path)
        assert result.ok, result.stderr + result.messages[-3000:]
        assert await sip_calls(service) == []


class LossyProxy(asyncio.DatagramProtocol):
    """A UDP proxy between SIPp and the service that drops and reorders datagrams (SIP and nothing else)."""

    def __init__(self, target: tuple[str, int], *, drop: float, reorder: float, seed: int = 7) -> None:
        self.target = target
        self.drop = drop
        self.reorder = reorder
        self.random = random.Random(seed)
        self.transport: asyncio.DatagramTransport | None = None
        self.client: tuple[str, int] | None = None
        self.dropped = 0
        self.reordered = 0
        self.held: list[tuple[bytes, tuple[str, int]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.target:
            destination = self.client
        else:
            self.client = addr
            destination = self.target
        if destination is None:
            return
        roll = self.random.random()
        if roll < self.drop:
            self.dropped += 1
            return
        if roll < self.drop + self.reorder:
            self.reordered += 1
            self.held.append((data, destination))
            asyncio.get_running_loop().call_later(0.15, self._release)
            return
        self.transport.sendto(data, destination)

    def _release(self) -> None:
        if self.held and self.transport is not None:
            data, destination = self.held.pop(0)
            self.transport.sendto(data, destination)


@contextlib.asynccontextmanager
async def lossy_proxy(
    target_port: int, *, drop: float, reorder: float
) -> AsyncIterator[tuple[LossyProxy, int]]:
    loop = asyncio.get_running_loop()
    transport, proxy = await loop.create_datagram_endpoint(
        lambda: LossyProxy(("127.0.0.1", target_port), drop=drop, reorder=reorder),
        local_addr=("127.0.0.1", 0),
    )
    try:
        yield proxy, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def test_call_survives_sip_loss_and_reordering(tmp_path: Path, speech_ulaw: Path) -> None:
    """SIP through a proxy that drops 25 % and delays 15 % of datagrams: retransmissions (timers A/E on
    SIPp's side, the 2xx retransmission on ours) carry the call to its end."""
    with sip_service(tmp_path / "home") as (service, sip_port):
        async with lossy_proxy(sip_port, drop=0.25, reorder=0.15) as (proxy, proxy_port):
            result = await run_sipp("uac_speech_dtmf.xml", f"127.0.0.1:{proxy_port}", tmp_path)
            assert result.ok, result.stderr + result.messages[-3000:] + service.log_text()[-3000:]
        call = await ended_call(service)
    assert proxy.dropped + proxy.reordered > 0
    assert call["end_reason"] == "caller_hangup"


async def test_service_calls_out_to_sipp(tmp_path: Path, speech_ulaw: Path) -> None:
    """``voice call sip:...`` (``POST /api/sip/calls``): the service calls a SIPp UAS that answers, talks and
    hangs up."""
    from tests.bridges.sip.sipp import SCENARIOS, SIPP

    assert SIPP is not None
    uas_port = free_udp_port()
    with sip_service(tmp_path / "home") as (service, _sip_port):
        proc = await asyncio.create_subprocess_exec(
            SIPP, "-sf", str(SCENARIOS / "uas_answer_talk_bye.xml"), "-m", "1", "-nostdin",
            "-timeout", "40s", "-i", "127.0.0.1", "-p", str(uas_port), "-mi", "127.0.0.1",
            "-mp", str(free_even_port()), "-trace_err", cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(0.3)
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voice", "call", f"sip:callee@127.0.0.1:{uas_port}",
            "--url", service.base, cwd=REPO, env=service_env(tmp_path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        printed, cli_err = await asyncio.wait_for(cli.communicate(), 30)
        assert cli.returncode == 0, cli_err.decode(errors="replace")
        call_id = printed.decode().split(":", 1)[0]
        assert "dialing (SIP" in printed.decode()  # the CLI returns while the call rings
        _out, err = await asyncio.wait_for(proc.communicate(), 50)
        assert proc.returncode == 0, err.decode(errors="replace") + service.log_text()[-3000:]
        call = await ended_call(service)
    assert call["id"] == call_id
    assert call["end_reason"] == "caller_hangup"
    assert voiced_ms(Path(call["recording_path"]), 1) > 1000  # the agent spoke to the callee


async def test_operator_hangup_sends_bye(tmp_path: Path) -> None:
    """``POST /api/calls/{id}/hangup`` on a live SIP call: the runner ends it and the leg sends BYE."""
    with sip_service(tmp_path / "home") as (service, sip_port):
        sipp = asyncio.ensure_future(run_sipp("uac_wait_bye.xml", f"127.0.0.1:{sip_port}", tmp_path))
        call_id = None
        for _ in range(100):
            live = [c for c in await sip_calls(service) if c.get("status") == "live"]
            if live:
                call_id = live[0]["id"]
                break
            await asyncio.sleep(0.1)
        assert call_id is not None, service.log_text()[-3000:]
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            response = await client.post(f"{service.base}/api/calls/{call_id}/hangup")
        assert response.status_code == 202, response.text
        result = await sipp
        assert result.ok, result.stderr + result.messages[-3000:] + service.log_text()[-3000:]
        call = await ended_call(service)
    assert call["end_reason"] == "operator"
