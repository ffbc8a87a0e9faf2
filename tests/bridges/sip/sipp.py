"""Run SIPp (Debian ``sip-tester``) as a real SIP peer on loopback, without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridges.sip.message import generate_tag

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SIPP = shutil.which("sipp")

needs_sipp = pytest.mark.skipif(SIPP is None, reason="SIPp (sip-tester) is not installed")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_even_port() -> int:
    """An even UDP port whose odd neighbour is free too (RTP + RTCP)."""
    for _ in range(50):
        port = free_udp_port() & ~1
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
            ):
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
                return port
        except OSError:
            continue
    raise RuntimeError("no free even port")


@dataclass
class SippResult:
    returncode: int
    stdout: str
    stderr: str
    messages: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


async def run_sipp(
    scenario: str | Path,
    target: str,
    workdir: Path,
    *,
    extra: list[str] | None = None,
    timeout_s: float = 40.0,
    transport: str = "u1",
) -> SippResult:
    """Run one SIPp call (``-m 1 -nostdin -timeout``) from ``workdir``; returns its exit code and logs."""
    assert SIPP is not None
    path = scenario if isinstance(scenario, Path) else SCENARIOS / scenario
    local_port = free_udp_port()
    media_port = free_even_port()
    name = f"sipp-{generate_tag()}"
    args = [
        SIPP, target, "-sf", str(path), "-m", "1", "-nostdin", "-timeout", f"{int(timeout_s)}s",
        "-i", "127.0.0.1", "-p", str(local_port), "-mi", "127.0.0.1", "-mp", str(media_port),
        "-t", transport, "-trace_msg", "-message_file", f"{name}.msg", "-trace_err",
        "-error_file", f"{name}.err", *(extra or []),
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s + 15)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
    msg_file = workdir / f"{name}.msg"
    err_file = workdir / f"{name}.err"
    messages = msg_file.read_text(errors="replace") if msg_file.exists() else ""
    if err_file.exists():
        messages += "\n--- errors ---\n" + err_file.read_text(errors="replace")
    return SippResult(
        proc.returncode if proc.returncode is not None else -1,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        messages,
    )


@dataclass
class Uas:
    """A SIPp UAS (one call) listening on ``port``: the callee of an outbound call."""

    proc: asyncio.subprocess.Process
    port: int

    def uri(self, user: str = "callee") -> str:
        return f"sip:{user}@127.0.0.1:{self.port}"

    async def finish(self, timeout_s: float = 30.0) -> tuple[int, str]:
        """Wait for the scenario's end: its exit code (0: passed) and its standard error."""
        _out, err = await asyncio.wait_for(self.proc.communicate(), timeout_s)
        code = self.proc.returncode if self.proc.returncode is not None else -1
        return code, err.decode(errors="replace")


@contextlib.asynccontextmanager
async def sipp_uas(
    scenario: str | Path, workdir: Path, *, extra: list[str] | None = None, timeout_s: float = 30.0
) -> AsyncIterator[Uas]:
    """Start SIPp as a UAS with ``scenario`` (a path, or a name in ``scenarios/``) on a free loopback port,
    run from ``workdir`` (where its audio files are); killed on exit if still running."""
    assert SIPP is not None
    port = free_udp_port()
    path = scenario if isinstance(scenario, Path) else SCENARIOS / scenario
    proc = await asyncio.create_subprocess_exec(
        SIPP, "-sf", str(path), "-m", "1", "-nostdin", "-timeout", f"{int(timeout_s)}s",
        "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1", "-mp", str(free_even_port()),
        "-trace_err", *(extra or []), cwd=workdir,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(0.3)  # SIPp binds its port
    try:
        yield Uas(proc, port)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
