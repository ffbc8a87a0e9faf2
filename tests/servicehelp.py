"""Run ``voice serve`` in its own process on loopback for end-to-end tests, and talk to it like a browser.

:func:`start_service` starts the real command (local engine in the same process, records in a temporary
directory) and waits for ``/readyz``; :func:`browser_call` is a scripted browser caller over ``/ws/browser``
that streams PCM16 24 kHz at real-time pace, answers the page protocol (playback reports) and collects what
the service sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from tests.conftest import REPO, free_port

FRAME_BYTES = 960  # 20 ms of PCM16 at 24 kHz


@dataclass
class ServiceProcess:
    """A running ``voice serve``."""

    proc: subprocess.Popen[bytes]
    port: int
    home: Path
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.home / "voice.db"

    @property
    def recordings(self) -> Path:
        return self.home / "recordings"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process and wait for it; returns the exit code (kills it after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def service_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_")}
    env.pop("OPENAI_API_KEY", None)
    env.pop("AZURE_OPENAI_API_KEY", None)
    env["VOICE_DB_PATH"] = str(home / "voice.db")
    env["VOICE_RECORDINGS_DIR"] = str(home / "recordings")
    env["VOICE_LOG_FORMAT"] = "json"
    env["VOICE_WEBRTC__HOST_ADDRESSES"] = '["127.0.0.1"]'  # WebRTC media stays on loopback (test-peers.md)
    env.update(extra)
    return env


def start_service(
    home: Path, *args: str, port: int | None = None, env: dict[str, str] | None = None, ready_s: float = 90.0
) -> ServiceProcess:
    """Start ``voice serve`` with its records under ``home`` and wait until ``/readyz`` answers 200."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = home / f"serve-{port}-{int(time.time() * 1000)}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voice", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=REPO, env=env or service_env(home), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    service = ServiceProcess(proc, port, home, log_path)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voice serve exited with {proc.returncode}:\n{service.log_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{service.base}/readyz", timeout=1.0, trust_env=False).status_code == 200:
                return service
        time.sleep(0.2)
    service.stop(signal.SIGKILL)
    raise TimeoutError(f"voice serve not ready after {ready_s} s:\n{service.log_text()[-3000:]}")


@dataclass
class CallResult:
    """What a scripted browser caller saw."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    audio_bytes: int = 0
    close_code: int | None = None
    close_reason: str = ""

    @property
    def call_id(self) -> str | None:
        for msg in self.messages:
            if msg.get("type") == "call.started":
                return str(msg["call_id"])
        return None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    def transcript(self, role: str) -> list[str]:
        return [str(m.get("text", "")) for m in self.of_type("transcript.done") if m.get("role") == role]


async def browser_call(
    url: str,
    audio: bytes,
    *,
    result: CallResult | None = None,
    hangup: bool = True,
    linger_s: float = 1.0,
    stop_when: Callable[[CallResult], bool] | None = None,
    origin: str | None = None,
) -> CallResult:
    """Stream ``audio`` (PCM16 24 kHz) to ``/ws/browser`` at real-time pace like the page does, reporting
    playback of the agent's audio as if played at once; then hang up (or not) and collect everything."""
    out = result if result is not None else CallResult()
    headers = {"Origin": origin} if origin else None
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        played: dict[str, int] = {}
        current: list[str] = []

        async def reader() -> None:
            try:
                async for message in ws:
                    if isinstance(message, bytes):
                        out.audio_bytes += len(message)
                        if current:
                            item = current[0]
                            played[item] = played.get(item, 0) + len(message) // 48
                            report = {"type": "playback", "item_id": item, "played_ms": played[item]}
                            # Once the server has closed, a report cannot go out; what it sent before the
                            # close (call.ended) is still to be read.
                            with contextlib.suppress(websockets.ConnectionClosed):
                                await ws.send(json.dumps(report))
                        continue
                    msg = json.loads(message)
                    out.messages.append(msg)
                    if msg.get("type") == "agent.item":
                        current[:] = [msg["item_id"]]
            except websockets.ConnectionClosed:
                pass

        task = asyncio.create_task(reader())
        try:
            start = time.monotonic()
            for n, offset in enumerate(range(0, len(audio), FRAME_BYTES)):
                if stop_when is not None and stop_when(out):
                    break
                if task.done():
                    break
                try:
                    await ws.send(audio[offset : offset + FRAME_BYTES])
                except websockets.ConnectionClosed:
                    break
                delay = start + (n + 1) * 0.02 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if hangup and not task.done():
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.send(json.dumps({"type": "hangup"}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout=linger_s)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        out.close_code = ws.close_code
        out.close_reason = ws.close_reason or ""
    return out


async def refused(url: str, *, origin: str | None = None) -> tuple[dict[str, Any] | None, int | None]:
    """Connect and read until the server closes: the ``error`` message (if any) and the close code."""
    headers = {"Origin": origin} if origin else None
    error: dict[str, Any] | None = None
    async with websockets.connect(url, additional_headers=headers) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(10):
                async for message in ws:
                    if isinstance(message, str):
                        msg = json.loads(message)
                        if msg.get("type") == "error":
                            error = msg
        return error, ws.close_code


async def wait_until(
    predicate: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.02
) -> None:
    """Poll ``predicate`` until it is true; TimeoutError after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(interval_s)
