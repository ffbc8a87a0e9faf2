"""What the benchmark parts share: ports, percentiles, ``/proc`` readings, the engine process, and the
hand-made WebSocket framing of the lean simulated callers.

Lean callers write RFC 6455 frames straight on a TCP transport (§5.2): client frames are masked with an
all-zero key, which leaves the payload unchanged, so a caller costs its process little CPU. The callers
stand for browsers and Twilio on other machines; on the benchmark's two cores they must not take the CPU
from the service they measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from voice import native
from voice.realtime.client import masked_frame

_ZERO_MASK: Final = bytes(4)

__all__ = [
    "LeanWebSocket",
    "PacerStats",
    "Service",
    "clean_env",
    "client_frame",
    "cpu_s",
    "cpu_split",
    "free_port",
    "isolate",
    "loadavg",
    "parse_frame",
    "peer_cpus",
    "percentile",
    "pin",
    "preempted",
    "rss_mb",
    "start_engine",
]


@functools.cache
def cpu_split() -> tuple[frozenset[int], frozenset[int]] | None:
    """``(the service's CPUs, the simulated peers' CPUs)``: the first CPU this process may use for the
    service, the others for the processes that stand for the Realtime API, Twilio and the callers, which in
    production run on other machines. ``None`` on a machine with one CPU (everything shares it). Worked out
    once, before :func:`isolate` moves this process onto the peers' CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return frozenset(cpus[:1]), frozenset(cpus[1:])


def pin(pid: int, cpus: frozenset[int]) -> None:
    """Move every thread of process ``pid`` onto ``cpus`` (threads it starts later inherit it)."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):  # a thread that has just ended
                os.sched_setaffinity(int(tid), cpus)


def peer_cpus() -> frozenset[int] | None:
    """The CPUs of the processes that stand for the service's peers (:func:`cpu_split`), if split."""
    split = cpu_split()
    return split[1] if split is not None else None


def isolate(service_pid: int, peer_pids: list[int], peers: str) -> str:
    """Pin the service to its CPU and ``peer_pids`` and this process (``peers``, for the message) to the
    others (:func:`cpu_split`); returns where each runs, and whether the service (started from this tree
    and interpreter) runs the compiled per-frame modules, for the benchmark's heading."""
    modules = f"per-frame modules {native.state()}"
    split = cpu_split()
    if split is None:
        return f"one CPU: the service and {peers} share it; {modules}"
    pin(service_pid, split[0])
    for pid in [*peer_pids, os.getpid()]:
        pin(pid, split[1])
    return f"service on CPUs {sorted(split[0])}, {peers} on {sorted(split[1])}; {modules}"


def clean_env() -> dict[str, str]:
    """This process's environment for a service the benchmark starts: no service settings or keys from
    the caller's shell, which would change what is measured, but ``VOICE_NATIVE``, so that
    ``VOICE_NATIVE=0 voice bench ...`` measures the interpreted per-frame modules against the compiled."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOICE_", "TWILIO_"))}
    for key in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY"):
        env.pop(key, None)
    if "VOICE_NATIVE" in os.environ:
        env["VOICE_NATIVE"] = os.environ["VOICE_NATIVE"]
    return env


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _status_field(pid: int | str, name: str) -> int | None:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(name):
                return int(line.split()[1])
    return None


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of process ``pid`` in MiB."""
    kb = _status_field(pid, "VmRSS:")
    return kb / 1024 if kb is not None else float("nan")


def preempted(pid: int | str = "self") -> int:
    """Involuntary context switches of a process so far (the scheduler took the CPU away from it)."""
    return _status_field(pid, "nonvoluntary_ctxt_switches:") or 0


def loadavg() -> str:
    """The machine's 1, 5 and 15 minute load averages."""
    with open("/proc/loadavg", encoding="ascii") as fh:
        return " ".join(fh.read().split()[:3])


def cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def start_engine(port: int, log_path: Path, *, nice: int = 0) -> subprocess.Popen[bytes]:
    """``voice engine --no-asr`` (recognition off) on 127.0.0.1:``port``, once it accepts connections."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    command = [sys.executable, "-m", "voice", "engine", "--host", "127.0.0.1", "--port", str(port),
               "--no-asr", "--log-level", "warning"]  # fmt: skip
    if nice:
        command = ["nice", "-n", str(nice), *command]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the engine exited early; see {log_path}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the engine did not start")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame masked with the all-zero key (RFC 6455 §5.3), which leaves the payload as is."""
    return masked_frame(opcode, payload, _ZERO_MASK)


def parse_frame(buf: bytearray) -> tuple[int, bytes] | None:
    """Take one unmasked server frame off ``buf``: (opcode, payload), or None if incomplete."""
    if len(buf) < 2:
        return None
    opcode = buf[0] & 0x0F
    n = buf[1] & 0x7F
    offset = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = int.from_bytes(buf[2:4], "big")
        offset = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = int.from_bytes(buf[2:10], "big")
        offset = 10
    if len(buf) < offset + n:
        return None
    payload = bytes(buf[offset : offset + n])
    del buf[: offset + n]
    return opcode, payload


class LeanWebSocket(asyncio.Protocol):
    """A WebSocket client written straight on a TCP transport (see the module docstring): it sends the
    upgrade request, checks the ``101``, answers pings, and hands every text or binary message to
    :meth:`on_message`. :attr:`ready` completes when a subclass says the peer is ready (:meth:`set_ready`),
    or fails when the upgrade is refused or the connection drops first."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode("ascii")
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.closed = False
        self.errors: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.errors.append(bytes(self.buf[:40]).decode("latin-1"))
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError("upgrade refused"))
                return
            del self.buf[: end + 4]
            self.upgraded = True
            self.on_open()
        while (frame := parse_frame(self.buf)) is not None:
            opcode, payload = frame
            if opcode in (1, 2):
                self.on_message(opcode, payload)
            elif opcode == 9:
                self.send(10, payload)
            elif opcode == 8:
                self.closed = True

    def set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    @property
    def writable(self) -> bool:
        return (
            self.upgraded
            and self.transport is not None
            and not self.closed
            and not self.transport.is_closing()
        )

    def send(self, opcode: int, payload: bytes) -> None:
        """One frame (``1`` text, ``2`` binary, ``10`` pong), unless the connection is gone."""
        if self.transport is not None and not self.closed and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def close_later(self, delay_s: float = 0.5) -> None:
        if self.transport is not None:
            self.loop.call_later(delay_s, self.transport.close)

    def on_open(self) -> None:
        """The upgrade succeeded (send the first messages here)."""

    def on_message(self, opcode: int, payload: bytes) -> None:
        """A text (``1``) or binary (``2``) message from the server."""


@dataclass
class Service:
    """``voice serve`` in a child process."""

    proc: subprocess.Popen[bytes]
    port: int
    home: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stream(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio/stream"

    def get(self, path: str, timeout_s: float = 10.0) -> httpx.Response:
        return httpx.get(self.base + path, timeout=timeout_s, trust_env=False)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the service process so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


_BUCKET = re.compile(r'^voice_frame_lateness_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)$')
_LATE = re.compile(r"^voice_frames_late_total ([0-9.e+]+)$")


@dataclass(frozen=True)
class PacerStats:
    buckets: tuple[tuple[float, float], ...]
    late: float

    @classmethod
    def read(cls, service: Service) -> PacerStats | None:
        """The pacer's counters from ``/metrics``; ``None`` when a saturated service does not answer."""
        buckets: list[tuple[float, float]] = []
        late = 0.0
        try:
            text = service.get("/metrics", timeout_s=20.0).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if m := _BUCKET.match(line):
                buckets.append((float(m.group(1)), float(m.group(2))))
            elif m := _LATE.match(line):
                late = float(m.group(1))
        return cls(tuple(buckets), late)

    def since(self, before: PacerStats) -> tuple[float, float, int]:
        """(p99 lateness in ms interpolated in its bucket, share of ticks > 10 ms late, ticks)."""
        counts = [(le, n - b) for (le, n), (_, b) in zip(self.buckets, before.buckets, strict=True)]
        total = counts[-1][1] if counts else 0.0
        if total <= 0:
            return float("nan"), float("nan"), 0
        target = 0.99 * total
        lower_le, lower_n = 0.0, 0.0
        p99 = float("inf")
        for le, n in counts:
            if n >= target:
                if le == float("inf"):
                    p99 = lower_le * 1000
                else:
                    share = (target - lower_n) / max(n - lower_n, 1e-9)
                    p99 = (lower_le + share * (le - lower_le)) * 1000
                break
            lower_le, lower_n = le, n
        return p99, (self.late - before.late) / total, int(total)
