"""Shared fixtures: free loopback ports, a running ``voice engine`` process, real speech audio."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


@dataclass(frozen=True)
class EngineProcess:
    """A ``voice engine`` running in its own process on loopback."""

    port: int
    log_path: Path

    @property
    def http_base(self) -> str:
        """``base_url`` for ``AsyncOpenAI``: the SDK appends ``/realtime`` and swaps the scheme to ws."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"


def start_engine(tmp: Path, *extra: str) -> tuple[subprocess.Popen[bytes], EngineProcess]:
    port = free_port()
    log_path = tmp / f"engine-{port}.log"
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voice", "engine", "--host", "127.0.0.1", "--port", str(port),
             "--log-format", "json", *extra],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_for_port(port, proc)
    return proc, EngineProcess(port=port, log_path=log_path)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """The local engine with offline recognition on (the speech model loads once per test session)."""
    proc, info = start_engine(tmp_path_factory.mktemp("engine"))
    yield info
    _stop(proc)


@pytest.fixture(scope="session")
def engine_no_asr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """The local engine with recognition off: fast, for protocol tests that need no transcript."""
    proc, info = start_engine(tmp_path_factory.mktemp("engine-noasr"), "--no-asr")
    yield info
    _stop(proc)


@pytest.fixture(scope="session")
def speech() -> Callable[[str, int], bytes]:
    """``speech(text, rate)``: real synthesized speech as 16-bit mono PCM at ``rate`` Hz (cached on disk)."""
    from tests.speech import speech_pcm16

    return speech_pcm16
