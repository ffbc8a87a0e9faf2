"""``voice bench webrtc``: how many concurrent WebRTC calls this machine holds, and what each costs.

The service runs in this process exactly as ``voice serve`` builds it (:func:`voice.server.create_app`: the
local engine embedded, speech recognition off, WebRTC pinned to 127.0.0.1) under uvicorn in this event loop.
The callers run in a second process (``python -m voice.bench.webrtc --callers N ...``) so that their work
does not land on the service's event loop: N in-process aiortc callers
(:class:`bridges.webrtc.caller.WebRTCCaller`) place their calls over HTTP + ICE/DTLS/SRTP on loopback, and
every caller says a short question every few seconds, so agents answer (local speech synthesis) while the
callers talk: audio flows both ways all the time.

Steps of N = 5, 10, 20, 40, ... concurrent calls. For each, once all N calls are live and a settling pause
has passed, a window of ``WINDOW_S`` measures in the service process: CPU (user + system, all threads: Opus
decoding and encoding, SRTP, the runners, the engine) and the resident memory above the idle service, the
p99 lateness of the shared 20 ms frame pacer (:class:`voice.call.pacer.FramePacer`) and the p99 lateness of
the outbound WebRTC tracks (frames leaving :class:`bridges.webrtc.leg.AgentAudioTrack` after their 20 ms
deadline). It stops at the first step whose pacer p99 reaches ``LATE_LIMIT_MS``, whose calls did not all
connect, or when the time budget (under two minutes) would be exceeded. The callers' own CPU is on the same
two cores and is printed beside (it competes with the service, as real load would not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import uvicorn

from voice.bench.common import free_port, percentile

__all__ = ["run"]

STEPS: Final = (5, 10, 20, 40, 80, 160)
WINDOW_S: Final = 6.0
SETTLE_S: Final = 2.0
LATE_LIMIT_MS: Final = 20.0
BUDGET_S: Final = 110.0
QUESTION: Final = "What are your opening hours?"
SAY_EVERY_S: Final = 6.0


def _rss_mb() -> float:
    """Resident memory of this process in MiB (Linux ``/proc``)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _child_cpu_s() -> float:
    times = os.times()
    return times.children_user + times.children_system


# -- the callers' process ----------------------------------------------------------------------------------


async def _callers(base: str, count: int, hold_s: float) -> None:
    """Place ``count`` calls, keep them talking for ``hold_s`` seconds, hang up; progress as JSON lines."""
    import httpx

    from bridges.webrtc.caller import CallerError, WebRTCCaller
    from voice.engine.tts import Synthesizer

    question = Synthesizer().synthesize(QUESTION, 48000)
    callers: list[WebRTCCaller] = []
    failed = 0
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:

        async def place(index: int) -> None:
            nonlocal failed
            await asyncio.sleep(index * 0.04)  # a ramp, not a thundering herd
            caller = WebRTCCaller(base, agent="restaurant", keep_pcm=False, http=http)
            try:
                await caller.call(connect_timeout_s=20)
                callers.append(caller)
            except (CallerError, OSError, TimeoutError) as exc:
                failed += 1
                print(json.dumps({"error": str(exc)[:200]}), flush=True)
                await caller.close()

        await asyncio.gather(*(place(i) for i in range(count)))
        print(json.dumps({"connected": len(callers), "failed": failed}), flush=True)

        async def talk(caller: WebRTCCaller) -> None:
            await asyncio.sleep(random.uniform(0, SAY_EVERY_S))
            while True:
                caller.mic.say(question)
                await asyncio.sleep(SAY_EVERY_S)

        talkers = [asyncio.create_task(talk(c)) for c in callers]
        await asyncio.sleep(hold_s)
        for task in talkers:
            task.cancel()
        await asyncio.gather(*(c.hangup(linger_s=1.0) for c in callers), return_exceptions=True)
    print(json.dumps({"done": True}), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the callers' process."""
    parser = argparse.ArgumentParser(description="WebRTC benchmark callers")
    parser.add_argument("--base", required=True)
    parser.add_argument("--callers", type=int, required=True)
    parser.add_argument("--hold", type=float, required=True)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    from voice.logs import configure_logging

    configure_logging("error")
    asyncio.run(_callers(args.base, args.callers, args.hold))


# -- the service's process ---------------------------------------------------------------------------------


class _Step:
    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.connected = 0
        self.failed = 0
        self.cpu_pct = 0.0
        self.caller_cpu_pct = 0.0
        self.mem_mb = 0.0
        self.pacer_p99 = 0.0
        self.pacer_max = 0.0
        self.track_p99 = 0.0
        self.seconds = 0.0


async def _read_progress(proc: asyncio.subprocess.Process, step: _Step) -> None:
    assert proc.stdout is not None
    async for raw in proc.stdout:
        with contextlib.suppress(ValueError):
            message = json.loads(raw)
            if "connected" in message:
                step.connected = int(message["connected"])
                step.failed = int(message["failed"])


async def _step(app: Any, base: str, calls: int, rss_idle: float) -> _Step:
    from bridges.webrtc.signaling import WebRTCGateway

    service = app.state.service
    step = _Step(calls)
    started = time.monotonic()
    hold = SETTLE_S + WINDOW_S + 2.0  # after the last call connected
    args = ["-m", "voice.bench.webrtc", "--base", base, "--callers", str(calls), "--hold", str(hold)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    reader = asyncio.create_task(_read_progress(proc, step))
    try:
        deadline = time.monotonic() + 8.0 + calls * 0.04 + 20
        while len(service.manager.live()) < calls and time.monotonic() < deadline:
            if step.connected + step.failed >= calls and step.failed:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(SETTLE_S)
        gateway = getattr(app.state, "webrtc_gateway", None)
        legs = list(gateway.sessions.values()) if isinstance(gateway, WebRTCGateway) else []
        for leg in legs:
            leg.output_track.lateness_ms.clear()
        ticks0 = service.pacer.ticks
        cpu0, child0, t0 = _cpu_s(), _child_cpu_s(), time.monotonic()
        await asyncio.sleep(WINDOW_S)
        cpu1, t1 = _cpu_s(), time.monotonic()
        ticks = service.pacer.ticks - ticks0
        recent = list(service.pacer.recent_lateness_ms)[-ticks:] if ticks > 0 else []
        step.connected = max(step.connected, len(service.manager.live()))
        step.cpu_pct = 100 * (cpu1 - cpu0) / (t1 - t0)
        step.mem_mb = _rss_mb() - rss_idle
        step.pacer_p99 = percentile(recent, 0.99)
        step.pacer_max = max(recent, default=0.0)
        track = [ms for leg in legs for ms in leg.output_track.lateness_ms]
        step.track_p99 = percentile(track, 0.99)
        await asyncio.wait_for(proc.wait(), hold + 60)
        step.caller_cpu_pct = 100 * (_child_cpu_s() - child0) / (time.monotonic() - t0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    for _ in range(150):  # the calls end (hang-ups, records saved) before the next step
        if not service.manager.live():
            break
        await asyncio.sleep(0.1)
    step.seconds = time.monotonic() - started
    return step


async def _bench() -> None:
    from voice.config import Settings
    from voice.logs import configure_logging
    from voice.server import create_app, uvicorn_config

    configure_logging("error")
    for name in ("uvicorn", "uvicorn.error", "aioice", "aiortc"):
        logging.getLogger(name).setLevel(logging.ERROR)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="voice-bench-webrtc-") as tmp:
        port = free_port()
        settings = Settings.model_validate(
            {
                "host": "127.0.0.1",
                "port": port,
                "db_path": Path(tmp) / "voice.db",
                "recordings_dir": Path(tmp) / "recordings",
                "max_calls": 1000,
                "engine": {"asr": False},
                "webrtc": {"host_addresses": ["127.0.0.1"], "connect_timeout_s": 30},
                "sip": {"enabled": False},
            }
        )
        app = create_app(settings)
        config = uvicorn_config(app, settings)
        config.log_level = "error"
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        try:
            while not (server.started and app.state.service.upstream_ready):
                if serving.done():
                    await serving
                await asyncio.sleep(0.05)
            base = f"http://127.0.0.1:{port}"
            print(
                f"service in this process (local engine, recognition off); callers in a second process; "
                f"{os.cpu_count()} CPUs; window {WINDOW_S:g} s per step; "
                f"limit: pacer p99 < {LATE_LIMIT_MS:g} ms"
            )
            print(
                f"{'calls':>6}{'live':>6}{'cpu %':>8}{'cpu/call':>10}{'mem MiB':>9}{'mem/call':>10}"
                f"{'pacer p99':>11}{'pacer max':>11}{'track p99':>11}{'callers cpu %':>15}"
            )
            held = 0
            last: _Step | None = None
            rss_idle = _rss_mb()
            for calls in STEPS:
                estimate = 8 + calls * 0.1 + SETTLE_S + WINDOW_S + 6
                if time.monotonic() - began + estimate > BUDGET_S:
                    print(f"(stopping before {calls} calls: the time budget of {BUDGET_S:g} s)")
                    break
                step = await _step(app, base, calls, rss_idle)
                last = step
                live = step.connected
                print(
                    f"{calls:>6}{live:>6}{step.cpu_pct:>8.0f}{step.cpu_pct / max(1, live):>9.1f}%"
                    f"{step.mem_mb:>9.1f}{step.mem_mb / max(1, live):>10.2f}"
                    f"{step.pacer_p99:>9.1f}ms{step.pacer_max:>9.1f}ms{step.track_p99:>9.1f}ms"
                    f"{step.caller_cpu_pct:>14.0f}%"
                )
                if live < calls:
                    print(f"({calls - live} of {calls} calls did not connect: stopping)")
                    break
                if step.pacer_p99 >= LATE_LIMIT_MS:
                    break
                held = calls
            print(f"largest step held with pacer p99 < {LATE_LIMIT_MS:g} ms: {held} concurrent WebRTC calls")
            if last is not None and held == last.calls and last.calls == STEPS[-1]:
                print("(the largest step tried; the machine may hold more)")
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, 30)
    print(f"(benchmark: {time.monotonic() - began:.0f} s)")


def run() -> None:
    """Print the WebRTC capacity table (see the module docstring)."""
    asyncio.run(_bench())


if __name__ == "__main__":
    main()
