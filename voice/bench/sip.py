"""``voice bench sip``: the SIP/RTP path's cost per message and per packet, and media capacity.

- µs per SIP message (parse an INVITE, build the SDP answer, serialize the 200) and per RTP packet on the
  receive path (parse + jitter buffer push/pop + RFC 4733 check) and the send path (number + serialize).
- Capacity: N calls' :class:`~bridges.sip.rtp_session.RtpSession` endpoints on loopback, each sending one
  20 ms µ-law frame per tick of one shared pacer (as the service does) to a peer socket that echoes it
  back (telephone-event negotiated, so no in-band DTMF detection: ``SipSettings.inband_dtmf``). Printed:
  p50/p99 RTP send jitter (lateness of each frame against its absolute 20 ms deadline), CPU per call
  (process time / wall time / N) and memory per call (RSS growth / N). The model upstream is not part of
  this figure (see ``voice bench engine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import time
from collections.abc import Callable

import numpy as np

from bridges.sip.jitter import JitterBuffer
from bridges.sip.message import SipRequest, parse_message
from bridges.sip.rtp import RtpPacket, RtpSender
from bridges.sip.rtp_session import RtpPortPool, RtpSession
from bridges.sip.sdp import Codec, MediaConfig, NegotiatedMedia, build_answer, parse_sdp
from voice.bench.audio import _frames

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


def run() -> None:
    _message_figures()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print("\ncalls  p50 send jitter  p99 send jitter  CPU/call  RSS/call  echoed packets")
    for calls in (50, 200):
        if 4 * calls + 50 > soft:
            print(f"{calls:5d}  skipped: open-file limit {soft}")
            continue
        p50, p99, cpu, rss, received = asyncio.run(_capacity(calls, 5.0))
        print(f"{calls:5d}  {p50:12.2f} ms  {p99:12.2f} ms  {cpu:7.2f} %  {rss:6.0f} kB  {received}")
    del hard
    run_sipp_capacity()


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


def run_sipp_capacity() -> None:
    print("\nSIPp placing calls (UA + RTP + SIP leg in-process, no upstream):")
    for calls in (50, 200):
        print(asyncio.run(_sipp_capacity(calls, 12.0)))
