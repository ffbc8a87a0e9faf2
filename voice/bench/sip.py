"""``voice bench sip``: the SIP/RTP path's cost per message and per packet, and call capacity.

- µs per SIP message (parse an INVITE, build the SDP answer, serialize the 200) and per RTP packet on the
  receive path (parse + jitter buffer push/pop + RFC 4733 check) and the send path (number + serialize).
- Media only: N calls' :class:`~bridges.sip.rtp_session.RtpSession` endpoints on loopback in this process,
  each sending one 20 ms µ-law frame per tick of one shared pacer (as the service does) to a peer socket
  that echoes it back (telephone-event negotiated, so no in-band DTMF detection:
  ``SipSettings.inband_dtmf``). Printed: p50/p99 RTP send jitter (lateness of each frame against its
  absolute 20 ms deadline), CPU per call (process time / wall time / N) and memory per call (RSS growth / N).
- SIP UA + RTP + SIP leg in this process, SIPp placing 200 calls; no call runner, no upstream.
- End to end (:func:`run_e2e`), the issue's capacity figure: SIPp (at nice 10: it stands for phones on
  other machines) places N = 50, 100, 200 calls at :data:`E2E_RATE` calls/s into ``voice serve`` (its own
  process: SIP UA, RTP, the call runners, the shared pacer, records and recordings in a temporary
  directory), whose upstream is the local engine with recognition off (its own process too: it stands for
  the Realtime API, which runs elsewhere). Each caller streams 20 ms PCMU line silence and presses 2
  (RFC 4733) as each agent turn ends, so the agent talks nearly all the time. Once the calls are up, over
  an :data:`E2E_WINDOW_S` window: the pacer's tick lateness p50/p99 (the service's ``/metrics`` histogram;
  the SIP leg sends each RTP packet on the tick), the delay variation of the service's RTP packets on the
  wire (:mod:`voice.bench.rtpwire`, one call in 4), the fewest live calls (``/healthz``), the service's and
  the engine's CPU per call and SIPp's CPU (``/proc``), the service's RSS growth per call, the load average.
  The verdict is against the target: >= 200 calls with p99 pacer lateness < 5 ms.

In the end-to-end part the service has the machine's first core to itself; SIPp and the engine, which stand
for phones and the Realtime API on other machines, share the other core (:func:`voice.bench.common.
cpu_split`); their CPU is printed with each row, with the load average. The other parts share the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import numpy as np

from bridges.sip.jitter import JitterBuffer
from bridges.sip.message import SipRequest, parse_message
from bridges.sip.rtp import RtpPacket, RtpSender
from bridges.sip.rtp_session import RtpPortPool, RtpSession
from bridges.sip.sdp import Codec, MediaConfig, NegotiatedMedia, build_answer, parse_sdp
from voice.bench.audio import _frames
from voice.bench.common import (
    PacerStats,
    Service,
    clean_env,
    cpu_s,
    free_port,
    isolate,
    loadavg,
    peer_cpus,
    percentile,
    pin,
    preempted,
    start_engine,
)
from voice.bench.rtpwire import RtpWireCapture, histogram_quantile, ipdv_ms

_SDP = (
    b"v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
)
_INVITE = (
    b"INVITE sip:agent@127.0.0.1:5060 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1-1-0;rport\r\n"
    b'From: "Alice" <sip:alice@127.0.0.1:5061>;tag=1SIPpTag001\r\n'
    b"To: <sip:agent@127.0.0.1:5060>\r\nCall-ID: 1-1@127.0.0.1\r\nCSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@127.0.0.1:5061>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\n"
    + f"Content-Length: {len(_SDP)}\r\n\r\n".encode()
    + _SDP
)


def _per_call_us(fn: Callable[[], None], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def _message_figures() -> None:
    def sip() -> None:
        from bridges.sip.message import make_response

        request = parse_message(_INVITE)
        assert isinstance(request, SipRequest)
        answer = build_answer(parse_sdp(request.body), MediaConfig("127.0.0.1", 20000))
        make_response(request, 200, body=answer.session.to_bytes(), content_type="application/sdp").to_bytes()

    sender = RtpSender(1234, 0)
    payloads = [f[:160] for f in _frames(8000)]
    wires = [sender.send(p).serialize() for p in payloads]
    jitter = JitterBuffer(target_ms=0)
    clock = [0.0]
    index = [0]

    def receive() -> None:
        i = index[0] % len(wires)
        index[0] += 1
        packet = RtpPacket.parse(wires[i])
        if packet.payload_type != 101:
            jitter.push(packet, clock[0])
        jitter.pop(clock[0])
        clock[0] += 20.0

    out = RtpSender(99, 0)

    def send() -> None:
        out.send(payloads[index[0] % len(payloads)]).serialize()
        index[0] += 1

    print(f"SIP INVITE -> 200 with SDP answer  {_per_call_us(sip, 200):8.1f} µs")
    print(f"RTP receive (parse+jitter)         {_per_call_us(receive, 2000):8.2f} µs/packet")
    print(f"RTP send (number+serialize)        {_per_call_us(send, 2000):8.2f} µs/packet")


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.transport.sendto(data, addr)


def _rss_kb() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


async def _capacity(calls: int, seconds: float) -> tuple[float, float, float, float, int]:
    gc.collect()
    rss0 = _rss_kb()
    loop = asyncio.get_running_loop()
    pool = RtpPortPool("127.0.0.1", 30000, 30000 + 4 * calls + 100)
    sessions: list[RtpSession] = []
    echoes: list[asyncio.DatagramTransport] = []
    for i in range(calls):
        session = await pool.open(f"bench{i}")
        transport, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
        echoes.append(transport)
        port = transport.get_extra_info("sockname")[1]
        session.configure(
            NegotiatedMedia(
                codec=Codec(0, "PCMU", 8000),
                telephone_event=Codec(101, "telephone-event", 8000),
                remote_address="127.0.0.1",
                remote_port=port,
                remote_rtcp_port=port + 1,
                ptime=20,
                direction="sendrecv",
                media_index=0,
            )
        )
        session.start(lambda event: None)
        sessions.append(session)
    frame = bytes(range(160))
    lateness: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    start = loop.time() + 0.02
    ticks = int(seconds * 50)
    for n in range(ticks):
        deadline = start + n * 0.02
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        now = loop.time()
        for session in sessions:
            session.send_audio(frame)
            lateness.append((loop.time() - deadline) * 1000)
        del now
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    rss1 = _rss_kb()
    received = sum(s.packets_received for s in sessions)
    for session in sessions:
        session.close()
    for transport in echoes:
        transport.close()
    arr = np.array(lateness)
    return (
        float(np.percentile(arr, 50)),
        float(np.percentile(arr, 99)),
        100 * cpu / wall / calls,
        (rss1 - rss0) / calls,
        received,
    )


_UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench uac">
  <send retrans="500"><![CDATA[

      INVITE sip:agent@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:bench@[local_ip]:[local_port]>;tag=[pid]B[call_number]
      To: <sip:agent@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:bench@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=b 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:bench@[local_ip]:[local_port]>;tag=[pid]B[call_number]
      To: <sip:agent@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <nop><action><exec rtp_stream="tone.ulaw,-1,0"/></action></nop>
  <pause milliseconds="HOLD_MS"/>
  <send retrans="500"><![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:bench@[local_ip]:[local_port]>;tag=[pid]B[call_number]
      To: <sip:agent@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <recv response="200"/>
</scenario>
"""


class _BenchApp:
    """Answers every call; one shared 20 ms pacer plays a tone to every live leg (as the service's pacer)."""

    def __init__(self) -> None:
        self.legs: dict[str, object] = {}
        self.lateness: list[float] = []
        self.peak = 0
        self.frames_in = 0
        self.target = 0
        self.full = asyncio.Event()

    def admit(self, call: object) -> None:
        return None

    async def answered(self, call: object) -> None:
        from bridges.sip.leg import SipLeg
        from bridges.sip.ua import SipCall

        assert isinstance(call, SipCall)
        leg = SipLeg(call)
        leg.start()
        self.legs[call.call_id] = leg
        self.peak = max(self.peak, len(self.legs))
        if self.target and self.peak >= self.target:
            self.full.set()

        async def drain() -> None:
            async for event in leg.events():
                self.frames_in += 1
                del event
            self.legs.pop(call.call_id, None)

        task = asyncio.get_running_loop().create_task(drain())
        _BENCH_TASKS.add(task)
        task.add_done_callback(_BENCH_TASKS.discard)

    def abandoned(self, call: object) -> None:
        return None

    async def pace(self, stop: asyncio.Event) -> None:
        from bridges.sip.leg import SipLeg

        loop = asyncio.get_running_loop()
        frame = bytes(range(160))
        start = loop.time()
        n = 0
        while not stop.is_set():
            n += 1
            deadline = start + n * 0.02
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            for leg in list(self.legs.values()):
                assert isinstance(leg, SipLeg)
                await leg.play(frame, "bench", n * 20)
                self.lateness.append((loop.time() - deadline) * 1000)


_BENCH_TASKS: set[asyncio.Task[None]] = set()


async def _sipp_capacity(calls: int, hold_s: float) -> str:
    import shutil
    import tempfile
    from pathlib import Path

    from bridges.sip.settings import SipSettings
    from bridges.sip.ua import UserAgent
    from voice.audio.g711 import ulaw_encode

    sipp = shutil.which("sipp")
    if sipp is None:
        return "skipped: SIPp (sip-tester) is not installed"
    app = _BenchApp()
    settings = SipSettings(port=0, rtp_port_min=34000, rtp_port_max=34000 + 4 * calls + 40)
    ua = UserAgent(settings, app, host="127.0.0.1")
    await ua.start()
    stop = asyncio.Event()
    pacer = asyncio.get_running_loop().create_task(app.pace(stop))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = np.arange(8000) / 8000
        tone = (3000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
        (work / "tone.ulaw").write_bytes(ulaw_encode(tone))
        (work / "uac.xml").write_text(_UAC.replace("HOLD_MS", str(int(hold_s * 1000))))
        gc.collect()
        rss0 = _rss_kb()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sipp, f"127.0.0.1:{ua.port}", "-sf", "uac.xml", "-m", str(calls), "-l", str(calls),
            "-r", "50", "-nostdin", "-timeout", f"{int(hold_s + 40)}s", "-i", "127.0.0.1",
            "-mi", "127.0.0.1", "-mp", "36000", cwd=work,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        app.target = calls
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(app.full.wait(), hold_s)
        app.lateness.clear()
        full_cpu0, full_wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(max(0.0, hold_s - (time.perf_counter() - wall0) - 1.0))
        full_cpu = time.process_time() - full_cpu0
        full_wall = time.perf_counter() - full_wall0
        rss1 = _rss_kb()
        lateness = np.array(app.lateness) if app.lateness else np.zeros(1)
        code = await proc.wait()
        del cpu0
        stop.set()
        await pacer
        await ua.close()
    return (
        f"{calls:5d}  peak {app.peak:4d} live  p99 send jitter {np.percentile(lateness, 99):6.2f} ms  "
        f"CPU/call {100 * full_cpu / max(full_wall, 1e-9) / max(app.peak, 1):5.2f} %  "
        f"RSS/call {(rss1 - rss0) / max(app.peak, 1):6.0f} kB  sipp exit {code}"
    )


# -- end to end: SIPp places the calls, ``voice serve`` runs them against the local engine ------------------

E2E_SIZES: Final = (50, 100, 200, 260)
"""Calls per run: the target's 200, then 260 to show the headroom (what 200 cost on a 30 % slower machine)."""
E2E_RATE: Final = 50
"""New calls per second (SIPp ``-r``): 200 calls ramp up in 4 s."""
E2E_SETTLE_S: Final = 2.0
E2E_WINDOW_S: Final = 8.0
E2E_RAMP_SLACK_S: Final = 6.0
"""How much longer than ``calls / E2E_RATE`` the ramp may take before the window starts anyway."""
WIRE_EVERY: Final = 8
"""Capture the RTP of service ports that are multiples of this (RTP ports are even): one call in 4."""
TARGET_CALLS: Final = 200
TARGET_P99_MS: Final = 5.0

_E2E_UAC: Final = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!-- voice bench sip: one of many callers. INVITE offering PCMU and telephone-event 96 (the payload type of
     SIPp 3.6.1's play_dtmf); from the answer to the BYE a looping stream of line silence (silence.ulaw,
     20 ms PCMU packets); the key 2 as each agent turn ends (KEYS: the greeting, then the opening hours
     again and again), so the agent talks all the time; BYE at the end. -->
<scenario name="voice bench sip caller">
  <send retrans="500"><![CDATA[

      INVITE sip:agent@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "Bench [call_number]" <sip:bench[call_number]@[local_ip]:[local_port]>;tag=[pid]B[call_number]
      To: <sip:agent@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:bench[call_number]@[local_ip]:[local_port]>
      Max-Forwards: 70
      User-Agent: SIPp bench
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=bench 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 96
      a=rtpmap:0 PCMU/8000
      a=rtpmap:96 telephone-event/8000
      a=fmtp:96 0-16
      a=ptime:20
      a=sendrecv

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "Bench [call_number]" <sip:bench[call_number]@[local_ip]:[local_port]>;tag=[pid]B[call_number]
      To: <sip:agent@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:bench[call_number]@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <nop><action><exec rtp_stream="silence.ulaw,-1,0"/></action></nop>
KEYS
  <send retrans="500"><![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: "Bench [call_number]" <sip:bench[call_number]@[local_ip]:[local_port]>;tag=[pid]B[call_number]
      To: <sip:agent@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:bench[call_number]@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0

  ]]></send>
  <recv response="200" crlf="true"/>
</scenario>
"""
KEY_FIRST_MS: Final = 3700
"""The first key, as the greeting ends (3.5 s of audio)."""
KEY_EVERY_MS: Final = 4800
"""Then a key as each answer ends (the opening hours: 4.6 s of audio)."""


def e2e_scenario(hold_ms: int) -> str:
    """The SIPp caller scenario for calls that last at least ``hold_ms`` after the ACK (see the scenario's
    comment): a key at :data:`KEY_FIRST_MS`, then every :data:`KEY_EVERY_MS` (± 200 ms each) while the call
    lasts."""
    steps: list[str] = []
    at = 0  # the earliest the next pause can start
    pause = KEY_FIRST_MS
    while at + pause + 200 < hold_ms:
        steps.append(f'  <pause distribution="uniform" min="{pause - 200}" max="{pause + 200}"/>')
        steps.append('  <nop><action><exec play_dtmf="2"/></action></nop>')
        at += pause - 200
        pause = KEY_EVERY_MS
    steps.append(f'  <pause milliseconds="{max(0, hold_ms - at)}"/>')
    return _E2E_UAC.replace("KEYS", "\n".join(steps))


@dataclass
class E2eRow:
    """One size of the end-to-end capacity run (see :func:`_e2e_size`)."""

    calls: int
    live_min: int
    """Fewest live calls (``/healthz``) seen during the window."""
    ramp_s: float
    ticks: int
    pacer_p50_ms: float
    pacer_p99_ms: float
    late_share: float
    wire_p50_ms: float
    wire_p99_ms: float
    wire_streams: int
    wire_fps: float
    """RTP packets per sampled call per second of the window (50 = the agent talked all the time)."""
    wire_dropped: int
    """Packets the capture socket lost (its buffer was full): pairs around them are left out."""
    service_cpu_pct: float
    engine_cpu_pct: float
    sipp_cpu_pct: float
    service_rss_mb: float
    rss_growth_mb: float
    preempted_per_s: float
    load: str
    succeeded: int = -1
    failed: int = -1


def _free_sip_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (the service listens on both)."""
    for _ in range(50):
        port = free_port()
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", port))
            return port
    raise RuntimeError("no port free for both UDP and TCP")


def _free_even_base(count: int, start: int) -> int:
    """An even port at or above ``start`` with the next ``count`` UDP ports bindable now."""
    for base in range(start, 61000 - count, 2 * count):
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {count} free UDP ports from {start}")


def _start_sip_service(home: Path, upstream: str, sip_port: int, rtp_min: int, rtp_max: int) -> Service:
    port = free_port()
    env = clean_env()
    env.update(
        {
            "VOICE_DB_PATH": str(home / "voice.db"),
            "VOICE_RECORDINGS_DIR": str(home / "recordings"),
            "VOICE_MAX_CALLS": str(max(E2E_SIZES) + 50),
            "VOICE_LOG_FORMAT": "json",
            "VOICE_SIP__RTP_PORT_MIN": str(rtp_min),
            "VOICE_SIP__RTP_PORT_MAX": str(rtp_max),
        }
    )
    with (home / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voice", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--upstream", upstream, "--sip-port", str(sip_port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    service = Service(proc, port, home)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voice serve exited with {proc.returncode}; see {home / 'serve.log'}")
        with contextlib.suppress(httpx.HTTPError):
            if service.get("/readyz", timeout_s=2).status_code == 200:
                return service
        time.sleep(0.2)
    raise RuntimeError("voice serve was not ready within 60 s")


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """Terminate ``proc`` (kill it after ``grace_s``) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` so far; NaN once it has exited."""
    try:
        return cpu_s(pid)
    except OSError:
        return float("nan")


def _alive(service: Service) -> None:
    """Raise when ``voice serve`` has exited (the run stops there instead of calling into nothing)."""
    if service.proc.poll() is not None:
        raise RuntimeError(f"voice serve exited with {service.proc.returncode}")


def _live_calls(service: Service) -> int | None:
    try:
        value = service.get("/healthz", timeout_s=5).json().get("live_calls")
    except (httpx.HTTPError, ValueError):
        return None
    return value if isinstance(value, int) else None


def _sipp_counts(stat_file: Path) -> tuple[int, int]:
    """Successful and failed calls from the last line of SIPp's ``-trace_stat`` file (-1 when unknown)."""
    try:
        lines = [line for line in stat_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return -1, -1
    if len(lines) < 2:
        return -1, -1
    header, last = lines[0].split(";"), lines[-1].split(";")
    values = dict(zip(header, last, strict=False))
    try:
        return int(values["SuccessfulCall(C)"]), int(values["FailedCall(C)"])
    except (KeyError, ValueError):
        return -1, -1


def _e2e_size(
    service: Service, engine_pid: int, sip_port: int, rtp: tuple[int, int], work: Path, calls: int
) -> E2eRow:
    """SIPp places ``calls`` calls; over a window once they are all up, the figures of :class:`E2eRow`."""
    sipp = shutil.which("sipp")
    assert sipp is not None
    _alive(service)
    ramp_budget = calls / E2E_RATE + E2E_RAMP_SLACK_S
    hold_ms = int((ramp_budget + E2E_SETTLE_S + E2E_WINDOW_S + 1.0) * 1000)  # up past the window's end
    scenario = work / f"uac{calls}.xml"
    scenario.write_text(e2e_scenario(hold_ms))
    stat_file = work / f"stat{calls}.csv"
    timeout_s = int(ramp_budget + hold_ms / 1000 + 40)
    rss0 = service.rss_mb()
    with contextlib.ExitStack() as stack:
        capture: RtpWireCapture | None = None
        with contextlib.suppress(OSError):  # no packet sockets here (not root, not Linux): pacer figures only
            wire = RtpWireCapture(rtp[0], rtp[1], every=WIRE_EVERY)
            wire.start()
            capture = wire
            stack.callback(wire.stop)
        log = stack.enter_context((work / f"sipp{calls}.log").open("wb"))
        proc = subprocess.Popen(
            ["nice", "-n", "10", sipp, f"127.0.0.1:{sip_port}", "-sf", scenario.name, "-m", str(calls),
             "-l", str(calls), "-r", str(E2E_RATE), "-rp", "1000", "-nostdin", "-timeout", f"{timeout_s}s",
             "-i", "127.0.0.1", "-p", str(_free_sip_port()), "-mi", "127.0.0.1",
             "-mp", str(_free_even_base(2, 50000)), "-trace_stat", "-stf", stat_file.name, "-fd", "1",
             "-trace_err", "-error_file", f"sipp{calls}.err"],
            cwd=work, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
        if (cpus := peer_cpus()) is not None:
            pin(proc.pid, cpus)
        stack.callback(_stop, proc, 0.0)  # SIPp is done by then; kill it if not (an error on the way)
        started = time.monotonic()
        live = 0
        while time.monotonic() - started < ramp_budget and proc.poll() is None:
            _alive(service)
            live = _live_calls(service) or live
            if live >= calls:
                break
            time.sleep(0.2)
        ramp_s = time.monotonic() - started
        time.sleep(E2E_SETTLE_S)
        before = PacerStats.read(service)
        cpu0, engine0, sipp0 = service.cpu_s(), _cpu_s(engine_pid), _cpu_s(proc.pid)
        switches0 = preempted(service.proc.pid)
        wall0, t0 = time.time(), time.monotonic()
        live_min = calls
        while (left := E2E_WINDOW_S - (time.monotonic() - t0)) > 0:
            time.sleep(min(1.0, left))
            _alive(service)
            seen = _live_calls(service)
            live_min = min(live_min, seen if seen is not None else 0)
        elapsed = time.monotonic() - t0
        cpu = service.cpu_s() - cpu0
        engine_cpu = _cpu_s(engine_pid) - engine0
        sipp_cpu = _cpu_s(proc.pid) - sipp0
        switches = preempted(service.proc.pid) - switches0
        rss1 = service.rss_mb()
        wall1 = time.time()
        load = loadavg()
        after = PacerStats.read(service)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:  # the calls hang up (BYE)
            _alive(service)
            time.sleep(0.2)
        packets = capture.take(wall0, wall1) if capture is not None else []
    wire_dropped = capture.dropped if capture is not None else 0
    succeeded, failed = _sipp_counts(stat_file)
    p50 = p99 = late = float("nan")
    ticks = 0
    if before is not None and after is not None:
        delta = [(le, n - b) for (le, n), (_, b) in zip(after.buckets, before.buckets, strict=True)]
        ticks = int(delta[-1][1]) if delta else 0
        p50 = histogram_quantile(delta, 0.50) * 1000
        p99 = histogram_quantile(delta, 0.99) * 1000
        late = (after.late - before.late) / ticks if ticks else float("nan")
    ipdv = [abs(d) for d in ipdv_ms(packets)]
    streams = len({p.port for p in packets})
    per_call = max(1, live_min)
    return E2eRow(
        calls=calls,
        live_min=live_min,
        ramp_s=ramp_s,
        ticks=ticks,
        pacer_p50_ms=p50,
        pacer_p99_ms=p99,
        late_share=late,
        wire_p50_ms=percentile(ipdv, 0.50),
        wire_p99_ms=percentile(ipdv, 0.99),
        wire_streams=streams,
        wire_fps=len(packets) / max(1, streams) / elapsed,
        wire_dropped=wire_dropped,
        service_cpu_pct=100 * cpu / elapsed,
        engine_cpu_pct=100 * engine_cpu / elapsed,
        sipp_cpu_pct=100 * sipp_cpu / elapsed,
        service_rss_mb=rss1,
        rss_growth_mb=(rss1 - rss0) / per_call,
        preempted_per_s=switches / elapsed,
        load=load,
        succeeded=succeeded,
        failed=failed,
    )


def _wait_idle(service: Service, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if _live_calls(service) == 0:
            return
        time.sleep(0.2)


def run_e2e() -> None:
    """SIPp -> ``voice serve`` (SIP UA, RTP, call runners, shared pacer) -> the local engine, each in its own
    process; the capacity table and the verdict against the issue's target."""
    if shutil.which("sipp") is None:
        print("skipped: SIPp (sip-tester) is not installed")
        return
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per /healthz poll
    with contextlib.ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="voice-bench-sip-")))
        work = home / "sipp"
        work.mkdir()
        (work / "silence.ulaw").write_bytes(b"\xff" * 8000)
        engine_port = free_port()
        engine = start_engine(engine_port, home / "engine.log")
        stack.callback(_stop, engine)
        rtp_min = _free_even_base(2, 40000)
        rtp_max = rtp_min + 4 * (max(E2E_SIZES) + 50)
        sip_port = _free_sip_port()
        upstream = f"ws://127.0.0.1:{engine_port}/v1/realtime"
        service = _start_sip_service(home, upstream, sip_port, rtp_min, rtp_max)
        stack.callback(_stop, service.proc, 30.0)
        where = isolate(service.proc.pid, [engine.pid], "engine and SIPp")
        print(
            f"voice serve --upstream --sip-port {sip_port} (pid {service.proc.pid}, RTP ports "
            f"{rtp_min}-{rtp_max}); local engine, recognition off (pid {engine.pid}), standing for the "
            f"Realtime API; SIPp at nice 10 placing {E2E_RATE} calls/s, each streaming 20 ms PCMU silence "
            f"and pressing 2 as each agent turn ends (the agent talks nearly all the time); {where}"
        )
        print(
            f"{'':>26}{'pacer lateness':^25}{'RTP |IPDV|':^16}\n"
            f"{'calls':>6}{'live':>6}{'ramp':>7}{'ticks':>7}{'p50':>9}{'p99':>9}{'>10ms':>7}{'p50':>8}{'p99':>8}"
            f"{'pkt/s':>7}{'svc CPU/call':>14}{'eng CPU/call':>14}{'RSS/call':>10}{'calls ok/failed':>17}"
        )
        rows: list[E2eRow] = []
        for calls in E2E_SIZES:
            try:
                row = _e2e_size(service, engine.pid, sip_port, (rtp_min, rtp_max), work, calls)
            except (OSError, RuntimeError, httpx.HTTPError) as exc:  # e.g. the service died: say so, clean up
                print(f"{calls:>6}  failed: {type(exc).__name__}: {exc}; the end of its log:")
                log = (home / "serve.log").read_text(errors="replace").splitlines()
                print("\n".join(f"        {line[:200]}" for line in log[-8:]))
                break
            rows.append(row)
            live = max(1, row.live_min)
            print(
                f"{row.calls:>6}{row.live_min:>6}{row.ramp_s:>6.1f}s{row.ticks:>7}{row.pacer_p50_ms:>7.2f}ms"
                f"{row.pacer_p99_ms:>7.2f}ms{100 * row.late_share:>6.1f}%{row.wire_p50_ms:>6.1f}ms"
                f"{row.wire_p99_ms:>6.0f}ms{row.wire_fps:>7.1f}{row.service_cpu_pct / live:>13.2f}%"
                f"{row.engine_cpu_pct / live:>13.2f}%{1024 * row.rss_growth_mb:>8.0f}kB"
                f"{row.succeeded:>11}/{row.failed}"
            )
            print(
                f"      CPU (100% = one core): service {row.service_cpu_pct:.0f}%, engine "
                f"{row.engine_cpu_pct:.0f}%, SIPp {row.sipp_cpu_pct:.0f}%; service RSS "
                f"{row.service_rss_mb:.0f} MB, preempted {row.preempted_per_s:.0f}/s; RTP captured from "
                f"{row.wire_streams} calls ({row.wire_dropped} lost); load average {row.load}"
            )
            _wait_idle(service)
        print(
            f"live: fewest live calls in the {E2E_WINDOW_S:g} s window (/healthz); ticks: pacer ticks in the "
            f"window ({round(E2E_WINDOW_S * 50)} expected, fewer = ticks dropped); pacer lateness: how late "
            "each 20 ms tick ran (the service's /metrics histogram, interpolated in its bucket; a SIP leg "
            "sends its RTP packet on the tick); RTP |IPDV|: packet delay variation of the service's RTP "
            "packets (send-time spacing minus RTP-timestamp spacing, RFC 5481; kernel timestamps on lo, one "
            "call in 4), which adds gaps in the agent's audio to the pacer's lateness; "
            "pkt/s: RTP packets per captured call per second (50 = the agent talked all the window); CPU: % "
            "of one core; RSS: service memory growth per call; calls: SIPp's count of finished calls"
        )
        best = next((r for r in rows if r.calls == TARGET_CALLS), None)
        captured = best is not None and best.wire_streams > 0
        ok = (
            best is not None
            and best.live_min >= TARGET_CALLS
            and best.pacer_p99_ms < TARGET_P99_MS
            and (not captured or best.wire_p99_ms < TARGET_P99_MS)
        )
        detail = "not measured"
        if best is not None:
            wire = f"RTP |IPDV| p99 {best.wire_p99_ms:.1f} ms" if captured else "RTP not captured"
            detail = f"{best.live_min} live, pacer p99 {best.pacer_p99_ms:.2f} ms, {wire}"
        print(
            f"target: >= {TARGET_CALLS} concurrent SIP calls with p99 RTP send jitter (pacer lateness and "
            f"the packets' |IPDV|) < {TARGET_P99_MS:g} ms: {'meets' if ok else 'MISSES'} ({detail})"
        )
        for extra in (r for r in rows if r.calls > TARGET_CALLS):
            print(
                f"headroom: {extra.live_min} calls, pacer p99 {extra.pacer_p99_ms:.2f} ms, RTP |IPDV| p99 "
                f"{extra.wire_p99_ms:.1f} ms at {extra.service_cpu_pct:.0f} % of a core"
            )


def run() -> None:
    """Print the SIP/RTP figures (see the module docstring)."""
    _message_figures()
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print("\nmedia only (RtpSession endpoints + one shared pacer in this process; no SIP, no call runner, no")
    print("upstream):")
    print("calls  p50 send jitter  p99 send jitter  CPU/call  RSS/call  echoed packets")
    for calls in (50, 200):
        if 4 * calls + 50 > soft:
            print(f"{calls:5d}  skipped: open-file limit {soft}")
            continue
        p50, p99, cpu, rss, received = asyncio.run(_capacity(calls, 5.0))
        print(f"{calls:5d}  {p50:12.2f} ms  {p99:12.2f} ms  {cpu:7.2f} %  {rss:6.0f} kB  {received}")
    print("\nSIP UA + RTP + SIP leg in this process, SIPp placing the calls (no call runner, no upstream):")
    print(asyncio.run(_sipp_capacity(200, 12.0)))
    print("\nend to end: SIPp -> voice serve (SIP, RTP, call runners) -> local engine, separate processes:")
    run_e2e()
