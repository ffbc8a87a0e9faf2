"""``voice bench twilio``: the Twilio path under simulated Twilio callers (protocols.md §E, §C.2).

A real ``voice serve`` runs as its own process on loopback (the embedded local engine, recognition off) with
``TWILIO_AUTH_TOKEN`` and ``VOICE_PUBLIC_URL`` set, so every stream upgrade is signed and checked as in
production. The callers are :class:`BenchCaller`: a lean Twilio Media Streams peer built for many
concurrent calls. It speaks the protocol like Twilio (``connected``, ``start`` with ``customParameters``,
one 20 ms µ-law ``media`` frame every 20 ms from ONE sender task for all callers, ``dtmf``, ``stop``) and
plays the agent's audio at real-time speed on a model of Twilio's playback queue: each ``mark`` is echoed
when the audio queued before it has played, ``clear`` drops the queue and echoes the outstanding marks at
once. From that model it knows exactly how much agent audio it has played.

Three measurements:

- **Truncation error**: callers barge in with real speech (synthesized, 16 kHz resampled to 8 kHz µ-law)
  at a random point of the greeting; the error is the ``audio_end_ms`` the service sent upstream (the
  ``heard_ms`` of the call's ``barge_in`` transcript event) minus what the caller had really played when the
  ``clear`` arrived. Target: at most 40 ms at p95.
- **Barge-in latency**: from the first voiced frame the caller sent to (a) the last agent frame that
  arrived before the ``clear`` (the local VAD paused playout) and (b) the ``clear`` (the upstream confirmed).
- **Capacity**: N = 50, 100, 200 concurrent callers (each hears the greeting, then presses 2 for a spoken
  answer); over a fixed window the service's pacer lateness (its ``/metrics`` histogram; p99 interpolated
  inside the bucket), the share of ticks more than 10 ms late, the agent frames' arrival lateness at the
  callers, and the service process's CPU and resident memory per call (``/proc``). Target: 200 calls with
  p99 pacer lateness under 10 ms.

The service has the machine's first core to itself; the engine, the callers and this process, which stand
for the Realtime API and Twilio's media servers (other machines in production), share the other core
(:func:`voice.bench.common.cpu_split`). Their CPU is printed beside the service's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bridges.twilio.errors import TwilioProtocolError
from bridges.twilio.marks import mark_item
from bridges.twilio.protocol import (
    Clear,
    Connected,
    Dtmf,
    Mark,
    Media,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    encode_message,
    parse_outbound,
)
from bridges.twilio.signature import SIGNATURE_HEADER, compute_signature
from voice.bench.common import (
    LeanWebSocket,
    PacerStats,
    Service,
    clean_env,
    cpu_s,
    free_port,
    isolate,
    loadavg,
    peer_cpus,
    percentile,
    preempted,
    start_engine,
)

__all__ = ["BenchCaller", "run"]

TOKEN: Final = "bench-auth-token"
PUBLIC: Final = "https://voice.example.com"
SIGNED_STREAM: Final = "wss://voice.example.com/twilio/stream"
FRAME_BYTES: Final = 160
FRAME_S: Final = 0.020
SILENCE: Final = b"\xff" * FRAME_BYTES
BARGE_INS: Final = 16
BARGE_IN_BATCH: Final = 4
CAPACITY_SIZES: Final = (50, 100, 200, 260)
"""Calls per capacity run: the target's 200, then 260 to show the headroom (what 200 cost on a machine
that is 30 % slower)."""
TARGET_CALLS: Final = 200
WINDOW_S: Final = 8.0
SETTLE_S: Final = 3.0
RAMP_BATCH: Final = 25
QUESTION: Final = "What are your opening hours?"
START_TIMEOUT_S: Final = 60.0


def _start_message(stream_sid: str, call_sid: str, call_id: str, sequence_number: int) -> str:
    """Twilio's ``start`` for a bench stream: the restaurant agent, our call id as a custom parameter."""
    start = Start(
        stream_sid=stream_sid,
        call_sid=call_sid,
        account_sid="AC" + "00" * 16,
        custom_parameters={"agent": "restaurant", "call_id": call_id, "direction": "inbound"},
        sequence_number=sequence_number,
    )
    return encode_message(start)


def _sid(prefix: str) -> str:
    return prefix + os.urandom(16).hex()


@dataclass
class BenchCaller:
    """Twilio's side of one Media Stream, lean enough for hundreds at once (see the module docstring)."""

    url: str
    call_id: str
    stream_sid: str = field(default_factory=lambda: _sid("MZ"))
    call_sid: str = field(default_factory=lambda: _sid("CA"))
    ws: ClientConnection | None = None
    closed: bool = False
    speech: bytearray = field(default_factory=bytearray)
    speech_onset: float | None = None
    """Loop time the first voiced frame of the queued speech was sent."""
    voiced_from: int = 0
    """Frames of :attr:`speech` before its first voiced frame (set with :meth:`say`)."""
    queued_until: float = 0.0
    """Loop time when everything received so far has played (Twilio's playback queue)."""
    received_ms: float = 0.0
    """Agent audio received and not dropped by a ``clear`` (ms): played + still queued."""
    arrivals: list[float] = field(default_factory=list)
    clears: list[tuple[float, float, float]] = field(default_factory=list)
    """``(loop time, played ms at the clear, time of the last agent frame before it)``."""
    errors: list[str] = field(default_factory=list)
    cleared: asyncio.Event = field(default_factory=asyncio.Event)
    _pending: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    _seq: int = 0
    _chunk: int = 0
    _t0: float = 0.0
    _reader: asyncio.Task[None] | None = None
    _frames_sent: int = 0
    _speech_frames_sent: int = 0

    async def open(self) -> None:
        """Signed upgrade, ``connected``, ``start`` (the call id as a custom parameter), then the reader."""
        headers = {SIGNATURE_HEADER: compute_signature(SIGNED_STREAM, {}, TOKEN)}
        self.ws = await connect(
            self.url,
            additional_headers=headers,
            proxy=None,
            compression=None,
            open_timeout=30,
            max_queue=None,
        )
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self.queued_until = self._t0
        await self.ws.send(encode_message(Connected()))
        await self.ws.send(_start_message(self.stream_sid, self.call_sid, self.call_id, self._next_seq()))
        self._reader = asyncio.create_task(self._read(), name=f"bench-caller-{self.call_id}")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def say(self, ulaw: bytes, voiced_from: int) -> None:
        self.speech = bytearray(ulaw)
        self.voiced_from = voiced_from
        self._speech_frames_sent = 0
        self.speech_onset = None

    def next_frame(self, now: float) -> str:
        """The next 20 ms ``media`` message (speech when some is queued, else line silence)."""
        if self.speech:
            frame = bytes(self.speech[:FRAME_BYTES]).ljust(FRAME_BYTES, b"\xff")
            del self.speech[:FRAME_BYTES]
            if self._speech_frames_sent == self.voiced_from and self.speech_onset is None:
                self.speech_onset = now
            self._speech_frames_sent += 1
        else:
            frame = SILENCE
        self._chunk += 1
        stamp = round((now - self._t0) * 1000)
        return encode_message(Media(self.stream_sid, self._chunk, stamp, frame, "inbound", self._next_seq()))

    async def send(self, text: str) -> None:
        if self.closed or self.ws is None:
            return
        try:
            await self.ws.send(text)
        except (ConnectionClosed, RuntimeError):
            self.closed = True

    async def press(self, digit: str) -> None:
        await self.send(encode_message(Dtmf(self.stream_sid, digit, "inbound_track", self._next_seq())))

    def played_ms(self, now: float) -> float:
        return self.received_ms - max(0.0, self.queued_until - now) * 1000

    async def _read(self) -> None:
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        try:
            async for raw in self.ws:
                now = loop.time()
                if isinstance(raw, bytes):
                    self.errors.append("binary frame")
                    continue
                try:
                    message = parse_outbound(raw)
                except TwilioProtocolError as exc:
                    self.errors.append(exc.reason)
                    continue
                if isinstance(message, OutboundMedia):
                    self.arrivals.append(now)
                    duration = len(message.payload) / 8000
                    self.queued_until = max(self.queued_until, now) + duration
                    self.received_ms += duration * 1000
                elif isinstance(message, OutboundMark):
                    self._pending[message.name] = loop.call_at(self.queued_until, self._echo, message.name)
                elif isinstance(message, Clear):
                    played = self.played_ms(now)
                    last = self.arrivals[-1] if self.arrivals else now
                    self.clears.append((now, played, last))
                    self.cleared.set()
                    self.received_ms = played
                    self.queued_until = now
                    for name, handle in list(self._pending.items()):
                        handle.cancel()
                        self._echo(name)
                else:
                    self.errors.append(f"unexpected {type(message).__name__}")
        except ConnectionClosed:
            pass
        finally:
            self.closed = True

    def _echo(self, name: str) -> None:
        self._pending.pop(name, None)
        text = encode_message(Mark(self.stream_sid, name, self._next_seq()))
        asyncio.get_running_loop().create_task(self.send(text))

    async def stop(self) -> None:
        """``stop`` then close (the caller hangs up)."""
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        await self.send(
            encode_message(Stop(self.stream_sid, "AC" + "00" * 16, self.call_sid, self._next_seq()))
        )
        self.closed = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


class Sender:
    """ONE task sending every open caller's next 20 ms frame on absolute deadlines."""

    def __init__(self) -> None:
        self.callers: list[BenchCaller] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bench-sender")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            now = loop.time()
            for caller in list(self.callers):
                if not caller.closed and caller.ws is not None:
                    await caller.send(caller.next_frame(now))
            deadline += FRAME_S
            delay = deadline - loop.time()
            if delay < -0.2:
                deadline = loop.time()  # fell far behind: resume on a fresh grid rather than burst
            await asyncio.sleep(max(0.0, delay))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _start_service(home: Path, upstream: str) -> Service:
    port = free_port()
    env = clean_env()
    env.update(
        {
            "TWILIO_AUTH_TOKEN": TOKEN,
            "VOICE_PUBLIC_URL": PUBLIC,
            "VOICE_DB_PATH": str(home / "voice.db"),
            "VOICE_RECORDINGS_DIR": str(home / "recordings"),
            "VOICE_MAX_CALLS": "1000",
            "VOICE_LOG_FORMAT": "json",
        }
    )
    log = (home / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "voice", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--upstream", upstream],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    service = Service(proc, port, home)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voice serve exited with {proc.returncode}; see {home / 'serve.log'}")
        with contextlib.suppress(httpx.HTTPError):
            if service.get("/readyz").status_code == 200:
                return service
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"voice serve not ready after {START_TIMEOUT_S} s")


def _stop_service(service: Service) -> None:
    service.proc.terminate()
    try:
        service.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait()


async def _open_all(service: Service, callers: list[BenchCaller], sender: Sender) -> list[str]:
    errors: list[str] = []
    for start in range(0, len(callers), RAMP_BATCH):
        batch = callers[start : start + RAMP_BATCH]
        results = await asyncio.gather(*(c.open() for c in batch), return_exceptions=True)
        for caller, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                errors.append(f"{type(result).__name__}: {result}")
                caller.closed = True
            else:
                sender.callers.append(caller)
    return errors


def _question() -> tuple[bytes, int]:
    """The barge-in utterance as the line carries it, and the index of its first voiced frame."""
    from voice.audio.g711 import ulaw_encode
    from voice.audio.resample import resample_pcm16
    from voice.engine.tts import Synthesizer

    pcm16k = Synthesizer().synthesize(QUESTION, 16000)
    pcm = resample_pcm16(pcm16k, 16000, 8000)
    voiced = 0
    for k in range(0, len(pcm) // 320):
        frame = pcm[k * 320 : (k + 1) * 320]
        samples = [int.from_bytes(frame[i : i + 2], "little", signed=True) for i in range(0, 320, 2)]
        if max(abs(s) for s in samples) > 1000:
            voiced = k
            break
    return ulaw_encode(pcm), voiced


async def _barge_ins(service: Service) -> tuple[list[float], list[float], list[float], int]:
    """Truncation errors (ms), latencies to the agent's pause and to the clear (ms), and misses."""
    speech, voiced_from = _question()
    errors: list[float] = []
    pause_ms: list[float] = []
    clear_ms: list[float] = []
    missed = 0
    sender = Sender()
    sender.start()
    loop = asyncio.get_running_loop()
    rng = random.Random(7)
    try:
        for batch_start in range(0, BARGE_INS, BARGE_IN_BATCH):
            callers = [
                BenchCaller(service.stream, f"call_bench{batch_start + i:04d}{os.urandom(4).hex()}")
                for i in range(BARGE_IN_BATCH)
            ]
            await _open_all(service, callers, sender)
            targets = [rng.uniform(800, 3000) for _ in callers]

            async def barge(caller: BenchCaller, at_ms: float) -> None:
                async with asyncio.timeout(20):
                    while caller.played_ms(loop.time()) < at_ms:  # noqa: ASYNC110 - a clock, not an event
                        await asyncio.sleep(0.005)
                    caller.say(speech, voiced_from)
                    await caller.cleared.wait()
                    await asyncio.sleep(0.5)

            results = await asyncio.gather(
                *(barge(c, t) for c, t in zip(callers, targets, strict=True)), return_exceptions=True
            )
            for caller in callers:
                await caller.stop()
                sender.callers.remove(caller)
            for caller, result in zip(callers, results, strict=True):
                if isinstance(result, BaseException) or not caller.clears or caller.speech_onset is None:
                    missed += 1
                    continue
                clear_t, played, last_frame = caller.clears[0]
                heard = await asyncio.to_thread(_truncated_at, service, caller.call_id)
                if heard is None:
                    missed += 1
                    continue
                errors.append(heard - played)
                pause_ms.append((last_frame - caller.speech_onset) * 1000)
                clear_ms.append((clear_t - caller.speech_onset) * 1000)
    finally:
        await sender.stop()
    return errors, pause_ms, clear_ms, missed


def _truncated_at(service: Service, call_id: str) -> float | None:
    """The ``heard_ms`` of the call's first barge-in (what the truncate carried), once the call is saved."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = service.get(f"/api/calls/{call_id}")
        if response.status_code == 200:
            call = response.json()
            for event in call["transcript"]:
                if event["kind"] == "barge_in" and isinstance(event["data"].get("heard_ms"), int):
                    return float(event["data"]["heard_ms"])
            if call["status"] == "ended":
                return None
        time.sleep(0.1)
    return None


@dataclass
class CapacityRow:
    calls: int
    connected: int
    ramp_s: float
    pacer_p99_ms: float
    late_share: float
    ticks: int
    caller_p99_ms: float
    frames_per_s: float
    """Agent frames a caller received per second of the window, on average (50 while the agent talks)."""
    cpu_per_call_pct: float
    engine_cpu_per_call_pct: float
    rss_per_call_mb: float
    errors: int
    service_cpu_pct: float
    engine_cpu_pct: float
    callers_cpu_pct: float
    preempted_per_s: float
    load: str


class LeanTwilio(LeanWebSocket):
    """Twilio's side of one Media Stream on :class:`~voice.bench.common.LeanWebSocket`, for hundreds of
    concurrent calls in the callers' process: signed upgrade, ``connected`` and ``start``, a ``media`` frame
    per tick, marks echoed when the audio queued before them has played at real-time speed (Twilio's
    playback queue), ``clear`` echoing the outstanding marks at once, a key press, ``stop``."""

    def __init__(self, host: str, port: int, call_id: str) -> None:
        signature = compute_signature(SIGNED_STREAM, {}, TOKEN)
        super().__init__(host, port, "/twilio/stream", {SIGNATURE_HEADER: signature})
        self.call_id = call_id
        self.stream_sid = _sid("MZ")
        self.call_sid = _sid("CA")
        self.seq = 0
        self.chunk = 0
        self.t0 = 0.0
        self.queued_until = 0.0
        self.arrivals: list[tuple[float, float]] = []
        """``(arrival time, seconds of audio)`` of each agent ``media`` message."""
        self.item_starts: set[int] = set()
        """Indexes in :attr:`arrivals` where a new agent item starts (learnt from the marks' names)."""
        self._mark_item: str | None = None
        self._mark_index = 0
        self._pending: dict[str, asyncio.TimerHandle] = {}

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _send_text(self, text: str) -> None:
        self.send(1, text.encode())

    def on_open(self) -> None:
        self.t0 = self.queued_until = self.loop.time()
        self._send_text(encode_message(Connected()))
        self._send_text(_start_message(self.stream_sid, self.call_sid, self.call_id, self._next_seq()))
        self.set_ready()

    def on_message(self, opcode: int, payload: bytes) -> None:
        if opcode == 1:
            self._on_message(payload)

    def _on_message(self, payload: bytes) -> None:
        now = self.loop.time()
        try:
            message = json.loads(payload)
            event = message["event"]
            if event == "media":
                duration = len(base64.b64decode(message["media"]["payload"])) / 8000
                self.arrivals.append((now, duration))
                self.queued_until = max(self.queued_until, now) + duration
            elif event == "mark":
                name = str(message["mark"]["name"])
                self._pending[name] = self.loop.call_at(self.queued_until, self._echo, name)
                # The service marks the end of each item, so the media after the previous mark of another
                # item are the new item's.
                item = mark_item(name)
                if item is not None and item != self._mark_item:
                    if self._mark_item is not None:
                        self.item_starts.add(self._mark_index)
                    self._mark_item = item
                self._mark_index = len(self.arrivals)
            elif event == "clear":
                self.queued_until = now
                for name, handle in list(self._pending.items()):
                    handle.cancel()
                    self._echo(name)
            else:
                self.errors.append(f"unexpected {event}")
        except (ValueError, KeyError, TypeError) as exc:
            self.errors.append(repr(exc))

    def _echo(self, name: str) -> None:
        self._pending.pop(name, None)
        self._send_text(encode_message(Mark(self.stream_sid, name, self._next_seq())))

    def tick(self, now: float) -> None:
        """The next 20 ms of line silence as a ``media`` message."""
        if not self.writable:
            return
        self.chunk += 1
        stamp = round((now - self.t0) * 1000)
        self._send_text(
            f'{{"event":"media","sequenceNumber":"{self._next_seq()}","streamSid":"{self.stream_sid}",'
            f'"media":{{"track":"inbound","chunk":"{self.chunk}","timestamp":"{stamp}",'
            f'"payload":"{_SILENCE_B64}"}}}}'
        )

    def press(self, digit: str) -> None:
        self._send_text(encode_message(Dtmf(self.stream_sid, digit, "inbound_track", self._next_seq())))

    def stop(self) -> None:
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        self._send_text(
            encode_message(Stop(self.stream_sid, "AC" + "00" * 16, self.call_sid, self._next_seq()))
        )
        self.close_later()


_SILENCE_B64: Final = base64.b64encode(SILENCE).decode("ascii")


def _arrival_lateness_ms(
    arrivals: list[list[tuple[float, float]]],
    since: float,
    until: float,
    item_starts: list[set[int]] | None = None,
) -> list[float]:
    """Agent audio's arrival lateness at the callers: within each run of messages (one agent item, gaps <
    100 ms), each message's arrival against the time its audio starts on the run's timeline, anchored at
    the run's earliest-running message (a message may carry one 20 ms frame or several). ``item_starts``
    per caller: indexes of the messages that start a new item (the pause between two items is the
    agent's, not lateness)."""
    out: list[float] = []
    for n, caller in enumerate(arrivals):
        starts = item_starts[n] if item_starts is not None else set()
        timed = [(t, d, k in starts) for k, (t, d) in enumerate(caller) if since <= t <= until]
        run: list[tuple[float, float]] = []
        for t, d, starts_item in [*timed, (float("inf"), 0.0, True)]:
            if run and (starts_item or t - run[-1][0] > 0.1):
                offsets: list[float] = []
                audio = 0.0
                for arrival, duration in run:
                    offsets.append(arrival - audio)
                    audio += duration
                base = min(offsets)
                out.extend((o - base) * 1000 for o in offsets)
                run = []
            run.append((t, d))
    return out


async def _lean_callers(port: int, calls: int, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    callers: list[LeanTwilio] = []
    errors: list[str] = []
    stop = False

    async def ticker() -> None:
        # One ticker for every caller, in four phase groups 5 ms apart (Twilio's streams are not in step).
        deadline = loop.time()
        step = 0
        while not stop:
            now = loop.time()
            for caller in callers[step % 4 :: 4]:
                caller.tick(now)
            step += 1
            deadline += FRAME_S / 4
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    started = time.monotonic()
    task = asyncio.create_task(ticker())
    for index in range(calls):
        try:
            call_id = f"call_cap{calls}n{index:04d}"
            _, caller = await loop.create_connection(
                functools.partial(LeanTwilio, "127.0.0.1", port, call_id), "127.0.0.1", port
            )
            await asyncio.wait_for(caller.ready, 30)
            callers.append(caller)
        except (OSError, TimeoutError, ConnectionError) as exc:
            errors.append(repr(exc))
        await asyncio.sleep(0.01)  # up to 100 new streams a second
    connected = sum(1 for c in callers if not c.closed)
    conn.send(("ready", connected, time.monotonic() - started))
    await loop.run_in_executor(None, conn.recv)  # "go": the window starts
    t0 = loop.time()
    rng = random.Random(calls)
    presses = [loop.call_later(rng.uniform(1.0, 3.0), c.press, "2") for c in callers]
    await loop.run_in_executor(None, conn.recv)  # "stop": the window ended
    t1 = loop.time()
    for handle in presses:
        handle.cancel()
    stop = True
    for caller in callers:
        caller.stop()
    await asyncio.sleep(1.0)
    task.cancel()
    lateness = _arrival_lateness_ms([c.arrivals for c in callers], t0, t1, [c.item_starts for c in callers])
    in_window = sum(d for c in callers for t, d in c.arrivals if t0 <= t <= t1) / FRAME_S  # frames
    conn.send(
        (
            "done",
            {
                "caller_p99_ms": percentile(lateness, 0.99) if len(lateness) >= 100 else float("nan"),
                "frames_per_s": in_window / max(1, len(callers)) / max(t1 - t0, 1e-9),
                "connected": sum(1 for c in callers if any(t0 <= t <= t1 for t, _ in c.arrivals)),
                "errors": len(errors) + sum(len(c.errors) for c in callers),
                "first_errors": (errors + [e for c in callers for e in c.errors])[:3],
            },
        )
    )


def _caller_process(port: int, calls: int, conn: Connection, cpus: frozenset[int] | None) -> None:
    """The callers' process, on the peers' core(s) and at a lower scheduling priority: they stand for
    Twilio's media servers, which run elsewhere, and should not take the CPU from the service they measure."""
    with contextlib.suppress(OSError):
        os.nice(10)
        if cpus:
            os.sched_setaffinity(0, cpus)
    asyncio.run(_lean_callers(port, calls, conn))


async def _recv(conn: Connection, limit_s: float) -> Any:
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, conn.poll, limit_s):
        raise TimeoutError("the callers' process did not answer")
    return conn.recv()


async def _capacity(service: Service, engine_pid: int, calls: int) -> CapacityRow:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_caller_process, args=(service.port, calls, child, peer_cpus()), daemon=True)
    rss0 = service.rss_mb()
    proc.start()
    try:
        _, connected, ramp_s = await _recv(parent, 120)
        await asyncio.sleep(SETTLE_S)
        before = await asyncio.to_thread(PacerStats.read, service)
        callers_pid = proc.pid or 0
        cpu0, engine0, callers0 = service.cpu_s(), cpu_s(engine_pid), cpu_s(callers_pid)
        switches0 = preempted(service.proc.pid)
        t0 = time.monotonic()
        parent.send("go")
        await asyncio.sleep(WINDOW_S)
        elapsed = time.monotonic() - t0
        cpu = service.cpu_s() - cpu0
        engine_cpu = cpu_s(engine_pid) - engine0
        callers_cpu = cpu_s(callers_pid) - callers0
        switches = preempted(service.proc.pid) - switches0
        rss1 = service.rss_mb()
        after = await asyncio.to_thread(PacerStats.read, service)
        load = loadavg()
        parent.send("stop")
        _, stats = await _recv(parent, 60)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    if before is not None and after is not None:
        p99, late_share, ticks = after.since(before)
    else:
        p99, late_share, ticks = float("nan"), float("nan"), 0
    await _wait_idle(service)
    live = max(1, connected)
    return CapacityRow(
        calls=calls,
        connected=min(connected, stats["connected"]),
        ramp_s=ramp_s,
        pacer_p99_ms=p99,
        late_share=late_share,
        ticks=ticks,
        caller_p99_ms=stats["caller_p99_ms"],
        frames_per_s=stats["frames_per_s"],
        cpu_per_call_pct=100 * cpu / elapsed / live,
        engine_cpu_per_call_pct=100 * engine_cpu / elapsed / live,
        rss_per_call_mb=(rss1 - rss0) / live,
        errors=stats["errors"],
        service_cpu_pct=100 * cpu / elapsed,
        engine_cpu_pct=100 * engine_cpu / elapsed,
        callers_cpu_pct=100 * callers_cpu / elapsed,
        preempted_per_s=switches / elapsed,
        load=load,
    )


async def _wait_idle(service: Service, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        health = await asyncio.to_thread(service.get, "/healthz")
        if health.json().get("live_calls") == 0:
            return
        await asyncio.sleep(0.2)


def _print_distribution(name: str, values: list[float], unit: str = "ms") -> None:
    if not values:
        print(f"{name:<52}{'no samples':>12}")
        return
    print(
        f"{name:<52}{statistics.median(values):>8.0f}{unit}{percentile(values, 0.95):>8.0f}{unit}"
        f"{min(values):>8.0f}{unit}{max(values):>8.0f}{unit}"
    )


async def _bench() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="voice-bench-twilio-") as tmp:
        home = Path(tmp)
        started = time.monotonic()
        engine_port = free_port()
        engine = await asyncio.to_thread(start_engine, engine_port, home / "engine.log")
        upstream = f"ws://127.0.0.1:{engine_port}/v1/realtime"
        try:
            service = await asyncio.to_thread(_start_service, home, upstream)
        except BaseException:
            engine.kill()
            raise
        try:
            ready_s = time.monotonic() - started
            where = isolate(service.proc.pid, [engine.pid], "engine and callers")
            print(
                f"service: voice serve --upstream (pid {service.proc.pid}), ready in {ready_s:.1f} s; local "
                f"engine with recognition off in its own process (pid {engine.pid}), standing for the "
                "Realtime API; callers: barge-ins from this process, capacity from a child process at nice "
                f"10; {where}"
            )
            errors, pause_ms, clear_ms, missed = await _barge_ins(service)
            print(
                f"\nbarge-ins: {len(errors)} measured, {missed} missed (speech at 0.8-3 s into the greeting)"
            )
            print(f"{'measure':<52}{'median':>10}{'p95':>10}{'min':>10}{'max':>10}")
            _print_distribution("truncate audio_end_ms - caller played (signed)", errors)
            _print_distribution("|truncation error|", [abs(e) for e in errors])
            _print_distribution("speech onset -> agent audio stops (local VAD)", pause_ms)
            _print_distribution("speech onset -> clear (upstream confirmed)", clear_ms)
            p95 = percentile([abs(e) for e in errors], 0.95)
            print(f"target: |truncation error| p95 <= 40 ms: {'meets' if p95 <= 40 else 'MISSES'}")

            print(f"\ncapacity: {WINDOW_S:g} s window per size, each caller hears the greeting and presses 2")
            ticks = round(WINDOW_S / FRAME_S)
            header = (
                f"{'calls':>6}{'live':>6}{'ramp':>8}{'ticks':>7}{'pacer p99':>11}{'>10ms':>8}"
                f"{'caller p99':>12}{'frames/s':>10}{'svc CPU/call':>14}{'eng CPU/call':>14}{'RSS/call':>10}"
                f"{'errors':>8}"
            )
            print(header)
            rows: list[CapacityRow] = []
            for size in CAPACITY_SIZES:
                try:
                    async with asyncio.timeout(WINDOW_S + 150):
                        row = await _capacity(service, engine.pid, size)
                except TimeoutError:
                    print(f"{size:>6}  did not finish within {WINDOW_S + 150:g} s (service saturated)")
                    break
                rows.append(row)
                print(
                    f"{row.calls:>6}{row.connected:>6}{row.ramp_s:>7.1f}s{row.ticks:>7}"
                    f"{row.pacer_p99_ms:>9.2f}ms{row.late_share * 100:>7.2f}%{row.caller_p99_ms:>10.1f}ms"
                    f"{row.frames_per_s:>10.1f}{row.cpu_per_call_pct:>13.2f}%{row.engine_cpu_per_call_pct:>13.2f}%"
                    f"{row.rss_per_call_mb:>8.2f}MB{row.errors:>8}"
                )
                print(
                    f"      CPU (100% = one core): service {row.service_cpu_pct:.0f}%, engine "
                    f"{row.engine_cpu_pct:.0f}%, callers {row.callers_cpu_pct:.0f}%; service preempted "
                    f"{row.preempted_per_s:.0f}/s; load average {row.load}"
                )
            best = next((r for r in rows if r.calls == TARGET_CALLS), None)
            ok = (
                best is not None
                and best.connected >= TARGET_CALLS
                and best.pacer_p99_ms < 10
                and best.ticks >= 0.95 * ticks
            )
            verdict = "meets" if ok else "MISSES"
            print(
                f"ticks: pacer ticks in the window ({ticks} expected; fewer = ticks dropped under overload); "
                "pacer p99 / >10ms: service tick lateness (/metrics histogram, p99 interpolated in its "
                "bucket); caller p99: agent frame arrival lateness at the callers; frames/s: agent frames "
                "per caller per second; CPU: % of one core; RSS: resident memory growth"
            )
            print(f"target: >= {TARGET_CALLS} concurrent calls with pacer p99 < 10 ms: {verdict}")
            for extra in (r for r in rows if r.calls > TARGET_CALLS):
                print(
                    f"headroom: {extra.connected} calls, pacer p99 {extra.pacer_p99_ms:.2f} ms at "
                    f"{extra.service_cpu_pct:.0f} % of a core"
                )
        finally:
            await asyncio.to_thread(_stop_service, service)
            engine.terminate()
            try:
                engine.wait(timeout=10)
            except subprocess.TimeoutExpired:
                engine.kill()


def run() -> None:
    """Print the Twilio path's figures (see the module docstring)."""
    asyncio.run(_bench())


if __name__ == "__main__":
    run()
