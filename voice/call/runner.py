"""The call runner: the asyncio adapter that runs one call (DESIGN.md "Layers": adapters only pump).

:class:`CallRunner` owns one call's I/O and time and nothing else; every decision is the
:class:`~voice.call.core.CallCore`'s. It

- opens the upstream (``open_upstream(model)``, with retries and backoff), configures the session from the
  agent profile with the leg's codec as the audio format (``pcm16_24k`` <-> ``audio/pcm`` 24 kHz, G.711
  passes through; no transcoding) and asks for the agent's greeting;
- pumps leg events (caller audio, DTMF, playback reports, hang-up) and upstream events into the core, and
  ticks the core from the shared :class:`~voice.call.pacer.FramePacer` every 20 ms;
- carries out the core's actions: client events to the upstream (one writer task, in order), frames,
  clears, DTMF, transfer and hang-up on the leg (one writer task, in order, so a slow leg never blocks the
  pacer), tools as tasks with timeouts (:class:`~voice.call.tools.ToolRegistry`), control messages for legs
  with a UI;
- feeds the records: the :class:`~voice.call.transcript.Transcript` (persisted event by event through
  ``store.add_transcript_event``), the :class:`~voice.call.cost.CostMeter` and ``store.add_usage`` for every
  ``response.done`` and transcription usage, and the stereo :class:`~voice.call.recorder.Recorder` (caller
  left at the time the audio arrived on the caller's media clock, agent right when each frame was played,
  cut where the caller stopped hearing it on a barge-in) flushed at least every second;
- sends the live cost meter to the leg, warns the model at 80 % of the budget and ends the call at 100 %;
- survives the upstream: a dropped connection is reopened with backoff and the conversation restored
  (``session.update`` + the transcript's items, :func:`voice.call.upstream.restore_items`) so the call goes
  on; when that fails the caller hears a short apology (local speech synthesis) and the call ends with
  ``upstream_failed``. A session older than ``session_limit_s`` is handed over to a fresh one at a quiet
  moment the same way;
- ends with one of :data:`END_REASONS` and always saves the record (row, transcript, usage, recording):
  every exception is caught at the call boundary and logged with the call id bound, so one call's failure
  never touches another.

The call clock (``now_ms``) is ms since the runner started, on the pacer's monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import numpy as np
import structlog

from bridges.base import (
    FRAME_MS,
    AudioCodec,
    CallerAudio,
    CallerDtmf,
    DirectLeg,
    Leg,
    LegEvent,
    LegHangup,
    LegHold,
    PlaybackReport,
    PlayoutClock,
    bytes_per_ms,
    frame_bytes,
    sample_rate,
    silence_frame,
)
from voice import metrics
from voice.audio.dtmf import dtmf_tones
from voice.audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from voice.call.context import call_context
from voice.call.core import (
    INTERNAL_ERROR_METRIC,
    Action,
    CallCore,
    ClearLeg,
    Control,
    Hangup,
    Metric,
    PlayFrame,
    RunTool,
    SendDtmf,
    SendUpstream,
    TranscriptEntry,
    Transfer,
    UsageReported,
)
from voice.call.cost import BUDGET_WARNING_INSTRUCTIONS, CostMeter
from voice.call.pacer import FramePacer
from voice.call.recorder import Recorder
from voice.call.tools import ToolRegistry, error_output
from voice.call.transcript import Transcript, TranscriptEvent
from voice.call.upstream import (
    DEFAULT_BACKOFF,
    Backoff,
    OpenUpstream,
    UpstreamOpener,
    open_with_retry,
    restore_events,
)
from voice.config import Settings
from voice.errors import ConfigError, UpstreamClosedError, VoiceError
from voice.logs import get_logger
from voice.profiles import AgentProfile
from voice.realtime.builders import item_create, message_item
from voice.realtime.client import RealtimeConnection
from voice.realtime.events import parse_server_event
from voice.realtime.pricing import PriceTable, with_overrides
from voice.store import CallStore

__all__ = ["APOLOGY", "END_REASONS", "CallRunner", "EndReason", "RunnerState", "warm_up"]

EndReason: TypeAlias = Literal[
    "caller_hangup",
    "agent_end_call",
    "operator",
    "budget",
    "upstream_failed",
    "error",
    "shutdown",
    "transferred",
]
END_REASONS: Final[frozenset[str]] = frozenset(
    {
        "caller_hangup",
        "agent_end_call",
        "operator",
        "budget",
        "upstream_failed",
        "error",
        "shutdown",
        "transferred",
    }
)
RunnerState: TypeAlias = Literal["starting", "live", "reconnecting", "apology", "ending", "ended"]

APOLOGY: Final = "Sorry, we are having technical trouble and have to end this call. Please call again later."
"""What the caller hears when the upstream cannot be reached (synthesized locally)."""

_LegOp: TypeAlias = Callable[[], Awaitable[None]]
_HOUSEKEEPING_S: Final = 0.25
_RECORDER_FLUSH_MS: Final = 1000
"""How often the recording's file is brought up to date (a write and a header rewrite): what the caller's
audio moves forward, or the housekeeping timer when the file has fallen this far behind (a leg that sends
no caller audio). A killed process loses at most this plus the hold."""
_RECORDER_HOLD_MS: Final = 500
_RECORDER_RUN_MS: Final = 500
"""Audio the recorder gathers per channel before decoding and placing it (twice per file update)."""
_COST_EVERY_MS: Final = 5000
_LEG_BACKLOG_WARN: Final = 250  # 5 s of frames
_LEG_BACKLOG_FAIL: Final = 3000  # 60 s: the leg is not taking anything any more
_CALLER_REANCHOR_MS: Final = 200
_ANCHOR_LEARN_MS: Final = 1000
_CALLER_SNAP_MS: Final = 10
"""Caller audio within this of where the previous frame ended is recorded right after it (media clocks
jitter by a few ms; exact placement would leave clicks of silence or overlaps)."""
_CONTIGUOUS_MS: Final = 10
_MAX_PLAYOUT_DELAY_MS: Final = 300
_NEVER: Final = -(10**9)
"""Largest delay between sending an agent frame and the caller hearing it that the recording follows."""
_STOP_TIMEOUT_S: Final = 3.0
_COST_KEYS: Final = (
    "response_usd",
    "transcription_usd",
    "audio_usd",
    "text_usd",
    "cached_share",
    "savings_usd",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "budget_usd",
    "budget_used",
)


def _now_utc() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=8)
def _apology_audio(text: str, codec: AudioCodec) -> bytes:
    """``text`` spoken by the local synthesizer in ``codec`` (blocking; cached)."""
    from voice.engine.tts import Synthesizer

    pcm = Synthesizer().synthesize(text, sample_rate(codec))
    return _encode(pcm, codec)


def warm_up(codecs: tuple[AudioCodec, ...] = ("pcm16_24k", "pcmu")) -> None:
    """Build a throwaway call core per codec so the first real call does not pay for the one-time set-up
    (filter designs, VAD and codec tables: about half a second that would stall the shared pacer). Blocking:
    run it at start-up, e.g. ``await asyncio.to_thread(warm_up)``."""
    profile = AgentProfile(name="warm-up")
    for codec in codecs:
        core = CallCore("call_warm_up", profile, codec, reports_playback=False)
        core.caller_audio(silence_frame(codec), 0)
        core.tick(0)


class _FrameLog:
    """The frames of one agent item as they were played: where each was recorded on the call timeline, its
    end in the item (``item_ms``) and when it was sent, in three lists of ints.

    Not a list of tuples: an item has a frame every 20 ms and keeps them until it is four items old, so at
    200 calls a tuple per frame was some 10 000 new container objects a second that lived for seconds,
    and every young-generation collection had to walk them (a pause of 10-20 ms every few seconds, felt by
    every call). Ints are not tracked by the garbage collector.
    """

    __slots__ = ("at", "item_ms", "sent")

    def __init__(self) -> None:
        self.at: list[int] = []
        self.item_ms: list[int] = []
        self.sent: list[int] = []

    def add(self, at: int, item_ms: int, sent: int) -> None:
        self.at.append(at)
        self.item_ms.append(item_ms)
        self.sent.append(sent)


async def _run_sync(fn: Callable[[], None]) -> None:
    """A synchronous leg operation as a writer-task operation (to keep its place in the order)."""
    fn()


def _decode(audio: bytes, codec: AudioCodec) -> bytes:
    """Leg codec -> PCM16 at the codec's rate."""
    if codec == "pcmu":
        return ulaw_decode(audio)
    if codec == "pcma":
        return alaw_decode(audio)
    return audio[: len(audio) - len(audio) % 2]


def _encode(pcm: bytes, codec: AudioCodec) -> bytes:
    """PCM16 at the codec's rate -> leg codec."""
    if codec == "pcmu":
        return ulaw_encode(pcm)
    if codec == "pcma":
        return alaw_encode(pcm)
    return pcm


def _mix(a: bytes, b: bytes, codec: AudioCodec) -> bytes:
    """Two frames of ``codec`` audio added (PCM16, clipped), as one frame of ``codec`` audio."""
    x = np.frombuffer(_decode(a, codec), dtype="<i2").astype(np.int32)
    y = np.frombuffer(_decode(b, codec), dtype="<i2").astype(np.int32)
    n = max(len(x), len(y))
    mixed = np.zeros(n, dtype=np.int32)
    mixed[: len(x)] += x
    mixed[: len(y)] += y
    return _encode(np.clip(mixed, -32768, 32767).astype("<i2").tobytes(), codec)


class CallRunner:
    """Runs one call between ``leg`` and the upstream (see the module docstring).

    Required (the contract): ``leg``, ``profile``, ``settings``, ``store``, ``pacer``, ``open_upstream``
    (``model`` -> an open connection whose ``session.created`` was received), ``tools``, ``price_table``
    (the profile's ``prices`` are applied on top). Options: ``greeting`` (ask the agent to speak first),
    ``backoff`` (upstream (re)connection tries), ``session_limit_s`` (hand over to a fresh session after this
    long, at a quiet moment), ``tool_timeout_s`` (outer bound on a tool call), ``default_transfer_target``,
    ``apology`` (text played when the upstream is lost; ``None``: none), ``core_options`` (extra
    :class:`CallCore` keyword arguments), ``recordings_dir`` (default ``settings.recordings_dir``).
    """

    def __init__(
        self,
        *,
        leg: Leg,
        profile: AgentProfile,
        settings: Settings,
        store: CallStore,
        pacer: FramePacer,
        open_upstream: OpenUpstream,
        tools: ToolRegistry,
        price_table: PriceTable,
        greeting: bool = True,
        backoff: Backoff = DEFAULT_BACKOFF,
        session_limit_s: float = 25 * 60,
        tool_timeout_s: float = 30.0,
        default_transfer_target: str | None = None,
        apology: str | None = APOLOGY,
        core_options: Mapping[str, Any] | None = None,
        recordings_dir: Path | None = None,
    ) -> None:
        self.leg = leg
        self.profile = profile
        self.settings = settings
        self.store = store
        self.pacer = pacer
        self.tools = tools
        self.call_id: str = leg.call_id
        self.codec: AudioCodec = leg.codec
        self.greeting = greeting
        self.backoff = backoff
        self.session_limit_s = session_limit_s
        self.tool_timeout_s = tool_timeout_s
        self.apology = apology
        if isinstance(open_upstream, UpstreamOpener):
            open_upstream = open_upstream.for_agent(profile.name)
        self._open_upstream: OpenUpstream = open_upstream
        self.price_table = with_overrides(price_table, profile.prices) if profile.prices else price_table
        self.log = get_logger(call_id=self.call_id, component="call", agent=profile.name, leg=leg.kind)
        self.state: RunnerState = "starting"
        self.end_reason: str | None = None
        self.started_at = _now_utc()
        self._t0 = pacer.now_ms()
        caps = leg.capabilities
        default_transfer_target = default_transfer_target or leg.metadata.get("transfer_target")
        self.core = CallCore(
            self.call_id,
            profile,
            self.codec,
            reports_playback=caps.reports_playback,
            can_transfer=caps.can_transfer,
            default_transfer_target=default_transfer_target,
            **{"append_ms": self.settings.upstream_append_ms, **dict(core_options or {})},
        )
        self.transcript = Transcript(self.call_id, sink=self._persist_event)
        self.meter: CostMeter | None = None
        self.recorder: Recorder | None = None
        self.recording_path = (recordings_dir or settings.recordings_dir) / f"{self.call_id}.wav"
        self.counters: dict[str, float] = {}
        """Metric actions of the core and runner events, summed (for snapshots and benchmarks)."""
        self.frames_played = 0
        self.reconnects = 0
        self._upstream: RealtimeConnection | None = None
        self._upstream_ok = False
        self._session_started = 0
        self._up_q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._leg_q: asyncio.Queue[_LegOp | None] = asyncio.Queue()
        self._leg_busy = False  # the writer task is running an operation
        self._sending = False  # the last pacer tick played a frame
        self._direct: DirectLeg | None = leg if isinstance(leg, DirectLeg) else None
        self._clock: PlayoutClock | None = leg if isinstance(leg, PlayoutClock) else None
        self._ended = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tool_names: dict[str, str] = {}
        self._injected = bytearray()
        self._injected_drained = asyncio.Event()
        self._item_frames: dict[str, _FrameLog] = {}
        self._agent_end_ms = 0  # where the recording's agent audio ends
        self._sent_end_ms = _NEVER  # where the audio sent so far ends on the send clock
        self._playout_delay_ms: float | None = None  # learnt from playback reports (None: not yet)
        self._caller_anchor: int | None = None
        self._caller_end_ms: int | None = None  # where the recorded caller audio ends
        self._last_flush_ms = 0
        self._last_cost_ms = 0
        self._cost_dirty = False
        self._backlog_warned = False
        self._handover: asyncio.Task[None] | None = None
        self._store_ok = True
        self._frame_bytes = frame_bytes(self.codec)
        self._bytes_per_ms = bytes_per_ms(self.codec)

    # -- public ---------------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """The call clock: ms since the call started (:meth:`run`), on the pacer's monotonic clock."""
        return max(0, self.pacer.now_ms() - self._t0)

    async def hangup(self, reason: str = "operator") -> None:
        """End the call (operator action, drain): the run finishes and saves the record."""
        self.log.info("call.hangup_requested", reason=reason)
        self._request_end(reason)

    def instruct(self, text: str, *, respond: bool = False) -> None:
        """Give the model a system note (a conversation item, after what is already queued for the upstream);
        with ``respond``, ask for a response (serialized by the core: after the active one, if any). Before
        the upstream is connected both wait for it (and a response request replaces the greeting)."""
        self._up_q.put_nowait(item_create(message_item("system", text)))
        if respond:
            self._request_response()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view of the live call (for the operator API)."""
        now = self.now_ms()
        meter = self.meter
        return {
            "call_id": self.call_id,
            "leg": self.leg.kind,
            "agent": self.profile.name,
            "model": self.profile.model,
            "caller": self.leg.metadata.get("caller"),
            "started_at": self.started_at.isoformat(timespec="milliseconds"),
            "duration_ms": now,
            "cost_usd": str(meter.total) if meter is not None else "0",
            "state": self.state,
            "end_reason": self.end_reason,
            "agent_speaking": self.core.agent_speaking,
            "reconnects": self.reconnects,
        }

    async def run(self) -> str:
        """Run the call to its end and return the end reason; the record is saved whatever happens."""
        metrics.CALLS_LIVE.inc()
        with structlog.contextvars.bound_contextvars(call_id=self.call_id):
            try:
                await self._run()
            except asyncio.CancelledError:
                self._request_end("shutdown")
                self.log.info("call.cancelled")
                await self._finish()
                raise
            except Exception:
                self.log.exception("call.failed")
                self._request_end("error")
            await self._finish()
        return self.end_reason or "error"

    # -- the call -------------------------------------------------------------------------------------

    async def _run(self) -> None:
        self._t0 = self.pacer.now_ms()  # the call starts now: its clock and the recording's time zero
        self.started_at = _now_utc()
        self._open_records()
        self.log.info("call.started", caller=self.leg.metadata.get("caller"), model=self.profile.model)
        self._spawn(self._leg_writer(), "leg-writer")
        self._leg_op(
            functools.partial(self.leg.send_control, {"type": "call_start", "agent": self.profile.name})
        )
        self._spawn(self._leg_reader(), "leg-reader")
        if self._direct is not None:
            self._direct.listen(self._on_direct_event)
        self._spawn(self._housekeeping(), "housekeeping")
        if await self._connect_first():
            self._spawn(self._upstream_writer(), "upstream-writer")
            self._spawn(self._upstream_reader(), "upstream-reader")
            self.state = "live"
            self.pacer.register(self.call_id, self._tick)
        await self._ended.wait()

    def _open_records(self) -> None:
        transcription = self.profile.transcription
        self.meter = CostMeter(
            self.profile.model,
            self.price_table,
            self.settings.budget_usd,
            transcription_model=transcription.model if transcription else None,
        )
        meta = self.leg.metadata
        self._store(
            "create_call",
            self.call_id,
            leg=self.leg.kind,
            caller=meta.get("caller"),
            callee=meta.get("callee"),
            agent=self.profile.name,
            model=self.profile.model,
            started_at=self.started_at,
            recording_path=self.recording_path,
            metadata=meta,
        )
        try:
            self.recorder = Recorder(
                self.recording_path,
                sample_rate(self.codec),
                hold_ms=_RECORDER_HOLD_MS,
                flush_every_ms=_RECORDER_FLUSH_MS,
                run_ms=_RECORDER_RUN_MS,
                codec="pcm16" if self.codec == "pcm16_24k" else self.codec,
            )
        except VoiceError as exc:
            self.log.error("call.recording_unavailable", error=str(exc))
        self.transcript.system(0, "call started", agent=self.profile.name, leg=self.leg.kind)

    def _request_end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
            self.log.info("call.ending", reason=reason)
        self._ended.set()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(f"{self.call_id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.log.error("call.task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)
            self._request_end("error")

    # -- upstream -------------------------------------------------------------------------------------

    def _upstream_failure(self, exc: BaseException) -> None:
        metrics.UPSTREAM_ERRORS.inc()
        self._count("upstream.open_failed")

    async def _open_or_fail(self, event: str, what: str) -> RealtimeConnection | None:
        """Open an upstream session with retries (first connection and reconnection alike). ``None`` when
        that failed (logged as ``event``, noted in the transcript as ``what``, the apology played and the call
        ended) or when the call ended meanwhile (the new connection is closed)."""
        try:
            conn = await open_with_retry(
                self._open_upstream,
                self.profile.model,
                backoff=self.backoff,
                log=self.log,
                on_failure=self._upstream_failure,
            )
        except (VoiceError, OSError, TimeoutError) as exc:
            self.log.error(event, error=str(exc))
            self.transcript.error(self.now_ms(), f"{what}: {exc}", type="upstream_failed")
            await self._fail_upstream()
            return None
        if self._ended.is_set():
            await _close_quietly(conn)
            return None
        return conn

    async def _connect_first(self) -> bool:
        conn = await self._open_or_fail("upstream.unavailable", "upstream unavailable")
        if conn is None:
            return False
        self._install(conn, restore=False)
        return True

    def _session_events(self) -> list[dict[str, Any]]:
        declared = [t.to_session() for t in self.profile.tools]
        context = call_context(self.leg.metadata)
        return [self.core.session_event(self.tools.session_tools(declared), context)]

    def _install(self, conn: RealtimeConnection, *, restore: bool) -> None:
        """Make ``conn`` the upstream and queue its set-up events first (synchronous: nothing interleaves).

        First connection: ``session.update``, then what the call queued while connecting (a key pressed
        early, the first caller audio), then the greeting unless the call already asked for a response.
        A restored session: ``session.update`` and the transcript's items; events queued for the lost
        session are dropped, as the restore already holds what they carried.
        """
        queued: list[dict[str, Any]] = []
        while not self._up_q.empty():
            event = self._up_q.get_nowait()
            if event is not None:
                queued.append(event)
        self._upstream = conn
        self._upstream_ok = True
        self._session_started = self.now_ms()
        events = self._session_events()
        if restore:
            events += restore_events(self.transcript.events)
        else:
            events += queued
        for event in events:
            self._up_q.put_nowait(event)
        if not restore and self.greeting and not any(e.get("type") == "response.create" for e in queued):
            self._request_response()  # the agent's greeting

    def _request_response(self) -> None:
        """Ask for a response through the core, which serializes every ``response.create`` (only one
        response may be active; a key pressed before the greeting started must still be answered)."""
        request = getattr(self.core, "request_response", None)
        if request is None:  # the core has no public entry point for this yet
            request = self.core._request_response
        self._apply(request(self.now_ms()))

    async def _upstream_writer(self) -> None:
        while True:
            event = await self._up_q.get()
            if event is None:
                return
            conn = self._upstream
            if conn is None or not self._upstream_ok:
                self._count("upstream.dropped_event")
                continue
            try:
                await conn.send(event)
            except UpstreamClosedError:
                self._count("upstream.dropped_event")
                if conn is self._upstream:
                    self._upstream_ok = False  # the reader sees the close and reconnects

    async def _upstream_reader(self) -> None:
        while not self._ended.is_set():
            conn = self._upstream
            if conn is None:
                return
            try:
                event = await conn.recv()
            except UpstreamClosedError as exc:
                if conn is not self._upstream:
                    continue  # handed over to a new session on purpose
                if self._ended.is_set():
                    return
                if not await self._reconnect(exc):
                    return
                continue
            if conn is not self._upstream:
                continue  # a late event of the session we left
            now = self.now_ms()
            if getattr(event, "type", None) == "input_audio_buffer.speech_started":
                self._refresh_heard(now)  # a barge-in may truncate: with what was heard until now
            self._apply(self.core.upstream_event(event, now), now)

    async def _reconnect(self, exc: UpstreamClosedError) -> bool:
        """The upstream dropped: reopen with backoff and restore; apologize and end if that fails."""
        self._upstream_ok = False
        metrics.UPSTREAM_ERRORS.inc()
        self.state = "reconnecting"
        now = self.now_ms()
        self.log.warning("upstream.lost", code=exc.code, reason=exc.reason)
        self.transcript.error(now, f"upstream connection lost: {exc}", type="upstream_closed", code=exc.code)
        self._leg_control(
            {"type": "error", "code": "upstream", "message": "connection to the agent lost; reconnecting"}
        )
        active = self._settle_responses(now)
        conn = await self._open_or_fail("upstream.reconnect_failed", "upstream reconnect failed")
        if conn is None:
            return False
        old = self._upstream
        self._install(conn, restore=True)
        if active:
            self._request_response()  # the interrupted answer is generated again
        if old is not None:
            self._spawn(_close_quietly(old), "close-old-upstream")
        self.reconnects += 1
        metrics.UPSTREAM_RECONNECTS.inc()
        self.state = "live"
        self.log.info("upstream.reconnected", restored_items=len(self.transcript.events))
        self.transcript.system(self.now_ms(), "upstream reconnected; conversation restored")
        return True

    def _settle_responses(self, now: int) -> bool:
        """Tell the core the lost session's responses are over (they will never send response.done)."""
        active = self.core.active_responses
        for response_id in active:
            done = {
                "type": "response.done",
                "event_id": f"event_local_{response_id}",
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "cancelled",
                    "output": [],
                },
            }
            self._apply(self.core.upstream_event(parse_server_event(json.dumps(done)), now), now)
        return bool(active)

    async def _fail_upstream(self) -> None:
        """The upstream is gone for good: play the apology (if any) and end with ``upstream_failed``."""
        self.state = "apology"
        self._upstream_ok = False
        self.pacer.unregister(self.call_id)
        if self.apology and not self._ended.is_set():
            try:
                audio = await asyncio.to_thread(_apology_audio, self.apology, self.codec)
            except Exception as exc:  # speech synthesis missing or failing: end without the apology
                self.log.warning("call.apology_unavailable", error=repr(exc))
                audio = b""
            if audio and not self._ended.is_set():
                self._leg_op(self.leg.clear)
                self._injected_drained.clear()
                self._injected += audio
                self.pacer.register(self.call_id, self._tick)
                limit = len(audio) / bytes_per_ms(self.codec) / 1000 + 2
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(limit):
                        done = asyncio.ensure_future(self._injected_drained.wait())
                        ended = asyncio.ensure_future(self._ended.wait())
                        try:
                            await asyncio.wait({done, ended}, return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            done.cancel()
                            ended.cancel()
        self._request_end("upstream_failed")

    async def _hand_over(self) -> None:
        """Move a long call to a fresh session before the upstream's session-length limit."""
        old_started = self._session_started
        try:
            conn = await open_with_retry(
                self._open_upstream, self.profile.model, backoff=self.backoff, log=self.log
            )
        except (VoiceError, OSError, TimeoutError) as exc:
            self.log.warning("upstream.handover_failed", error=str(exc))
            self._session_started = old_started + 60_000  # try again in a minute
            return
        if self._ended.is_set() or self.state != "live":
            await _close_quietly(conn)
            return
        old = self._upstream
        self._settle_responses(self.now_ms())
        self._install(conn, restore=True)
        if old is not None:
            await _close_quietly(old)
        self.reconnects += 1
        metrics.UPSTREAM_RECONNECTS.inc()
        self.log.info("upstream.handed_over")
        self.transcript.system(self.now_ms(), "moved to a fresh upstream session")

    # -- leg ------------------------------------------------------------------------------------------

    @property
    def _leg_idle(self) -> bool:
        """No leg operation is queued or running: one done synchronously now keeps its place in the order."""
        return not self._leg_busy and self._leg_q.empty()

    def _leg_op(self, op: _LegOp) -> None:
        self._leg_q.put_nowait(op)

    def _leg_control(self, message: dict[str, Any]) -> None:
        self._leg_op(functools.partial(self.leg.send_control, message))

    async def _leg_writer(self) -> None:
        while True:
            op = await self._leg_q.get()
            if op is None:
                return
            self._leg_busy = True
            try:
                await op()
            except VoiceError as exc:
                self.log.warning("leg.operation_failed", error=str(exc))
            except Exception:
                self.log.exception("leg.operation_crashed")
            finally:
                self._leg_busy = False

    async def _leg_reader(self) -> None:
        async for event in self.leg.events():
            if self._ended.is_set():
                return
            if isinstance(event, LegHangup):
                self._leg_hung_up(event)
                return
            self._on_leg_event(event)
        self._request_end("caller_hangup")

    def _on_direct_event(self, event: LegEvent) -> None:
        """An inbound event handed over by the leg as it arrived (:meth:`bridges.base.DirectLeg.listen`)."""
        if self._ended.is_set():
            return
        try:
            if isinstance(event, LegHangup):
                self._leg_hung_up(event)
            else:
                self._on_leg_event(event)
        except Exception:
            self.log.exception("leg.event_failed", leg_event=type(event).__name__)

    def _leg_hung_up(self, event: LegHangup) -> None:
        self.log.info("leg.hangup", reason=event.reason)
        self.transcript.system(self.now_ms(), f"caller hung up ({event.reason})", leg_reason=event.reason)
        self._request_end("transferred" if event.reason == "transferred" else "caller_hangup")

    def _on_leg_event(self, event: LegEvent) -> None:
        now = self.now_ms()
        if isinstance(event, CallerAudio):
            self._record_caller(event, now)
            self._apply(self.core.caller_audio(event.audio, now), now)
        elif isinstance(event, CallerDtmf):
            self._refresh_heard(now)  # a key may barge in
            self._apply(self.core.caller_dtmf(event.digit, now), now)
        elif isinstance(event, PlaybackReport):
            self._learn_playout_delay(event.item_id, event.played_ms, now)
            self._apply(self.core.playback_report(event.item_id, event.played_ms, now), now)
        elif isinstance(event, LegHold):
            self.log.info("call.hold" if event.held else "call.resume")
            note = "the caller put the call on hold" if event.held else "the call resumed"
            self.transcript.system(now, note)
            self._apply(self.core.hold(event.held, now), now)

    def _refresh_heard(self, now: int) -> None:
        """Tell the core how much of the playing item the caller has heard right now, from the leg's own
        playout clock, when it runs between reports (:class:`bridges.base.PlayoutClock`)."""
        clock = self._clock
        position = clock.heard_now() if clock is not None else None
        if position is not None:
            self._apply(self.core.playback_report(position[0], position[1], now), now)

    def _record_caller(self, event: CallerAudio, now: int) -> None:
        """Caller audio on the left channel, placed by the caller's media clock.

        The media clock is anchored to the call clock by ``arrival - media_ms``. Transport only ever adds
        delay, so during the first second of the stream the smallest such offset seen wins (the first
        chunks may have waited while the call was being set up). Later, a chunk arriving well after its
        predicted time means the caller stopped sending for a while: the anchor moves forward. (A burst
        after a network stall is then placed back to back from where the stall ended.) A frame within
        ``_CALLER_SNAP_MS`` of where the previous one ended follows it directly: media clocks jitter by a
        few ms (Twilio's timestamps do), and the recording should not get clicks of silence or overlaps.
        """
        if self.recorder is None or self.recorder.closed:
            return
        offset = now - event.media_ms
        anchor = self._caller_anchor
        learning = event.media_ms < _ANCHOR_LEARN_MS
        if anchor is None or (learning and offset < anchor) or offset - anchor > _CALLER_REANCHOR_MS:
            self._caller_anchor = anchor = offset
        at = anchor + event.media_ms
        end = self._caller_end_ms
        if end is not None and abs(at - end) <= _CALLER_SNAP_MS:
            at = end
        self._caller_end_ms = at + len(event.audio) // self._bytes_per_ms
        try:
            self.recorder.write_caller(event.audio, at)
        except VoiceError as exc:
            self._recording_failed(exc)

    # -- the pacer tick -------------------------------------------------------------------------------

    def _tick(self, _pacer_ms: int) -> None:
        if self._ended.is_set():
            return
        try:
            now = self.now_ms()
            played = self.frames_played
            injected = self._take_injected()
            if self.state == "apology":
                if injected is not None:
                    self._play(injected, "apology", 0, now)
                return
            actions = self.core.tick(now)
            if injected is not None:
                actions = self._mix_injected(actions, injected, now)
            self._apply(actions, now)
            if self.frames_played != played:
                self._sending = True
            elif self._sending:
                self._sending = False
                self._audio_stopped()
        except Exception:
            self.log.exception("call.tick_failed")
            self._request_end("error")

    def _audio_stopped(self) -> None:
        """Tell a direct leg that the frames stopped, in order with the frames before."""
        direct = self._direct
        if direct is None:
            return
        if self._leg_idle:
            direct.audio_stopped()
        else:
            self._leg_op(functools.partial(_run_sync, direct.audio_stopped))

    def _take_injected(self) -> bytes | None:
        if not self._injected:
            return None
        frame = bytes(self._injected[: self._frame_bytes])
        del self._injected[: self._frame_bytes]
        if len(frame) < self._frame_bytes:
            frame += silence_frame(self.codec)[len(frame) :]
        if not self._injected:
            self._injected_drained.set()
        return frame

    def _mix_injected(self, actions: list[Action], injected: bytes, now: int) -> list[Action]:
        for i, action in enumerate(actions):
            if isinstance(action, PlayFrame):
                actions[i] = PlayFrame(
                    _mix(action.frame, injected, self.codec), action.item_id, action.item_ms
                )
                return actions
        self._play(injected, "dtmf", 0, now)
        return actions

    def _learn_playout_delay(self, item_id: str, played_ms: int, now: int) -> None:
        """Learn how long after it is sent the caller hears a frame, from the leg's own playout clock.

        A report that ``played_ms`` of an item have been heard now names the frame that ended there, and
        that frame was sent at a known time: the difference is the delay (the page's jitter buffer, Twilio's
        queue, the network). It is smoothed, as reports come in steps of a frame or more. Legs without a
        playout clock keep the send time.
        """
        frames = self._item_frames.get(item_id)
        if frames is None:
            return
        sent_at = frames.sent
        ends = frames.item_ms
        for i in range(len(ends) - 1, -1, -1):
            item_ms = ends[i]
            if item_ms == played_ms:
                measured = now - (sent_at[i] + FRAME_MS)
                if 0 <= measured <= _MAX_PLAYOUT_DELAY_MS:
                    if self._playout_delay_ms is None:  # the first measure is the estimate
                        self._playout_delay_ms = float(measured)
                    else:
                        self._playout_delay_ms += 0.25 * (measured - self._playout_delay_ms)
                return
            if item_ms < played_ms:
                return

    def _play(self, frame: bytes, item_id: str, item_ms: int, now: int) -> tuple[int, int]:
        """Queue one frame for the leg and record it; return where it sits on the call timeline and when it
        was sent.

        A frame that follows the previous one within the pacer's jitter (or comes early, when the pacer
        catches up after a stall) is recorded right after it: the leg plays frames back to back, so that is
        where the caller hears them. The first frame after a real gap (a pause, an underrun, a barge-in) is
        recorded where the caller hears it: ``now`` plus the playout delay learnt from the leg's reports
        (:meth:`_learn_playout_delay`).
        """
        self.frames_played += 1
        # Straight to the leg when no operation is queued or running before it (order kept) and the leg can
        # send it now; otherwise the writer task plays it in turn.
        direct = self._direct
        if direct is None or not self._leg_idle or not direct.play_now(frame, item_id, item_ms):
            self._leg_op(functools.partial(self.leg.play, frame, item_id, item_ms))
        contiguous = now - self._sent_end_ms < _CONTIGUOUS_MS
        sent = self._sent_end_ms if contiguous else now
        self._sent_end_ms = sent + FRAME_MS
        at = self._agent_end_ms if contiguous else now + round(self._playout_delay_ms or 0.0)
        self._agent_end_ms = at + FRAME_MS
        if self.recorder is not None and not self.recorder.closed:
            try:
                self.recorder.write_agent(frame, at)
            except VoiceError as exc:
                self._recording_failed(exc)
        return at, sent

    # -- actions --------------------------------------------------------------------------------------

    def _apply(self, actions: list[Action], now: int | None = None) -> None:
        """Carry out the core's actions, in order (synchronously: I/O is queued to the writer tasks)."""
        for action in actions:
            handler = _ACTION_HANDLERS.get(type(action))
            if handler is None:
                self.log.warning("call.unknown_action", action=type(action).__name__)
                continue
            try:
                handler(self, action, self.now_ms() if now is None else now)
            except Exception:
                self.log.exception("call.action_failed", action=type(action).__name__)

    def _on_send_upstream(self, action: SendUpstream, now: int) -> None:
        event = action.event
        if event.get("type") == "conversation.item.truncate":
            self.log.info(
                "upstream.truncate", item_id=event.get("item_id"), audio_end_ms=event.get("audio_end_ms")
            )
        conn = self._upstream
        # Straight to the socket when nothing is queued before it (order kept) and that cannot block; the
        # writer task takes the rest (a full socket buffer, a reconnect in progress).
        if conn is not None and self._upstream_ok and self._up_q.empty() and conn.send_nowait(event):
            return
        self._up_q.put_nowait(event)

    def _on_play_frame(self, action: PlayFrame, now: int) -> None:
        frames = self._item_frames.get(action.item_id)
        if frames is None:
            if len(self._item_frames) >= 4:
                del self._item_frames[next(iter(self._item_frames))]
            frames = self._item_frames[action.item_id] = _FrameLog()
        at, sent = self._play(action.frame, action.item_id, action.item_ms, now)
        frames.add(at, action.item_ms, sent)

    def _on_clear(self, action: ClearLeg, now: int) -> None:
        self._leg_op(self.leg.clear)

    def _on_send_dtmf(self, action: SendDtmf, now: int) -> None:
        caps = self.leg.capabilities
        if caps.native_dtmf or caps.sends_dtmf_tones:  # the leg sends them (RFC 4733, or its own tones)
            self._leg_op(functools.partial(self.leg.send_dtmf, action.digits))
            return
        tones = dtmf_tones(action.digits, sample_rate(self.codec))  # in-band (DESIGN.md "DTMF")
        self._injected += _encode(tones, self.codec)

    def _on_transfer(self, action: Transfer, now: int) -> None:
        self.log.info("call.transfer", target=action.target)
        self._leg_op(functools.partial(self._transfer, action.target))

    async def _transfer(self, target: str) -> None:
        """Hand the caller over (``leg.transfer``, on the leg writer); the call then ends as ``transferred``.

        A refused transfer (the leg cannot transfer, a target that cannot be dialled, the carrier's refusal)
        goes to the transcript and back to the model as a system note with a new response, so the agent
        tells the caller, who is still on the line; the call goes on.
        """
        try:
            await self.leg.transfer(target)
        except (VoiceError, ValueError) as exc:
            now = self.now_ms()
            self.log.warning("call.transfer_failed", target=target, error=str(exc))
            self.transcript.error(now, f"transfer to {target} failed: {exc}", type="transfer_failed")
            note = (
                f"The transfer to {target} failed: {exc}. The caller is still on the line: tell them briefly "
                "and offer another way to help."
            )
            self.instruct(note, respond=True)
            return
        self._request_end("transferred")

    def _on_hangup(self, action: Hangup, now: int) -> None:
        self.log.info("call.agent_hangup", reason=action.reason)
        self._request_end("agent_end_call")

    def _on_run_tool(self, action: RunTool, now: int) -> None:
        self._spawn(self._run_tool(action), f"tool-{action.name}")

    def _on_control(self, action: Control, now: int) -> None:
        self._leg_control(action.message)

    def _on_transcript(self, action: TranscriptEntry, now: int) -> None:
        data = dict(action.data)
        self.transcript.add(action.kind, max(0, action.t_ms), action.text, **data)
        if action.kind == "barge_in":
            metrics.BARGE_INS.inc()
            self._count("barge_in")
            self._cut_agent_recording(data.get("item_id"), data.get("heard_ms"), now)
        elif action.kind == "agent":
            self._leg_control(
                {
                    "type": "transcript",
                    "role": "agent",
                    "item_id": data.get("item_id"),
                    "text": action.text,
                    "final": True,
                    "interrupted": bool(data.get("interrupted")),
                }
            )
        elif action.kind == "tool_call":
            name = str(data.get("name") or action.text)
            self._tool_names[str(data.get("call_id"))] = name
            self._leg_control({"type": "tool", "name": name, "status": "running"})
        elif action.kind == "tool_result":
            name = self._tool_names.get(str(data.get("call_id")), "")
            status = "failed" if data.get("error") else "done"
            self._leg_control({"type": "tool", "name": name, "status": status})

    def _on_metric(self, action: Metric, now: int) -> None:
        self._count(action.name, action.value)
        if action.name == "upstream.error":
            metrics.UPSTREAM_ERRORS.inc()
        elif action.name == INTERNAL_ERROR_METRIC:
            self.log.error("call.core_error")
        elif action.name == "upstream.truncated_ms":
            self.log.info("upstream.truncated", audio_end_ms=int(action.value))

    def _on_usage(self, action: UsageReported, now: int) -> None:
        meter = self.meter
        if meter is None:
            return
        try:
            if action.kind == "response":
                meter.add_response_usage(action.usage)
                model = meter.model
            else:
                model = action.model or meter.transcription_model or ""
                meter.add_transcription_usage(model or None, action.usage)
        except (ConfigError, VoiceError) as exc:
            self.log.error("call.usage_not_priced", kind=action.kind, model=action.model, error=str(exc))
            self.transcript.error(now, f"usage not priced: {exc}", type="pricing")
            return
        cost = meter.last
        assert cost is not None
        self._store(
            "add_usage", self.call_id, t_ms=now, kind=action.kind, model=model, usage=action.usage, cost=cost
        )
        metrics.COST_USD.labels(model=model).inc(float(cost.total))
        self._cost_dirty = True
        self._send_cost(now)
        budget = meter.budget_action()
        if budget == "warn":
            self.log.info("call.budget_warning", total_usd=str(meter.total), budget_usd=str(meter.budget_usd))
            self.transcript.system(now, "budget 80 % used: the agent was asked to wrap up")
            self.instruct(BUDGET_WARNING_INSTRUCTIONS)
        elif budget == "end":
            self.log.info(
                "call.budget_exhausted", total_usd=str(meter.total), budget_usd=str(meter.budget_usd)
            )
            self.transcript.system(now, "budget used up: the call ends")
            self._request_end("budget")

    # -- tools ----------------------------------------------------------------------------------------

    async def _run_tool(self, action: RunTool) -> None:
        started = time.perf_counter()
        try:
            output = await asyncio.wait_for(
                self.tools.invoke(action.name, action.arguments), self.tool_timeout_s
            )
        except TimeoutError:
            output = error_output(f"the tool {action.name!r} timed out after {self.tool_timeout_s:g} s")
        self.log.info(
            "tool.finished",
            tool=action.name,
            tool_call_id=action.call_id,
            ms=round((time.perf_counter() - started) * 1000),
        )
        if not self._ended.is_set():
            self._apply(self.core.tool_result(action.call_id, output, self.now_ms()))

    # -- housekeeping ---------------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while not self._ended.is_set():
            await asyncio.sleep(_HOUSEKEEPING_S)
            now = self.now_ms()
            if (
                self.recorder is not None
                and not self.recorder.closed
                and now - self._last_flush_ms >= _RECORDER_FLUSH_MS
            ):
                self._last_flush_ms = now
                upto = now - _RECORDER_HOLD_MS
                # Only when the caller's audio has not kept the file up to date (it commits as it flows).
                if upto - self.recorder.committed_ms >= _RECORDER_FLUSH_MS:
                    try:
                        self.recorder.flush(upto_ms=upto)
                    except VoiceError as exc:
                        self._recording_failed(exc)
            if now - self._last_cost_ms >= _COST_EVERY_MS:
                self._send_cost(now, force=True)
            backlog = self._leg_q.qsize()
            if backlog > _LEG_BACKLOG_WARN and not self._backlog_warned:
                self._backlog_warned = True
                self.log.warning("leg.backlog", queued=backlog)
            if backlog > _LEG_BACKLOG_FAIL:
                self.log.error("leg.stalled", queued=backlog)
                self._request_end("error")
            self._maybe_handover(now)

    def _maybe_handover(self, now: int) -> None:
        if (
            self.state != "live"
            or self._handover_task_running()
            or now - self._session_started < self.session_limit_s * 1000
            or self.core.agent_speaking
            or self.core.active_responses
            or self.core.pending_tools
        ):
            return
        self._handover = self._spawn(self._hand_over(), "handover")

    def _handover_task_running(self) -> bool:
        return self._handover is not None and not self._handover.done()

    def _send_cost(self, now: int, *, force: bool = False) -> None:
        meter = self.meter
        if meter is None or not (force or self._cost_dirty):
            return
        self._last_cost_ms = now
        self._cost_dirty = False
        breakdown = meter.breakdown(now)
        self._leg_control(
            {
                "type": "cost",
                "total_usd": breakdown["total_usd"],
                "per_minute_usd": breakdown["per_minute_usd"],
                "breakdown": {k: breakdown.get(k) for k in _COST_KEYS},
            }
        )

    # -- records --------------------------------------------------------------------------------------

    def _count(self, name: str, value: float = 1.0) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + value

    def _store(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a store method; a failing store is logged and never ends the call."""
        if not self._store_ok and method != "end_call":
            return None
        try:
            return getattr(self.store, method)(*args, **kwargs)
        except Exception as exc:
            self.log.error("call.store_failed", method=method, error=repr(exc))
            if method == "create_call":
                self._store_ok = False
            return None

    def _persist_event(self, event: TranscriptEvent) -> None:
        self._store("add_transcript_event", event)

    def _recording_failed(self, exc: VoiceError) -> None:
        self.log.error("call.recording_failed", error=str(exc))
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            with contextlib.suppress(Exception):
                recorder.close()

    def _cut_agent_recording(self, item_id: Any, heard_ms: Any, now: int) -> None:
        """After a barge-in, silence the agent channel from where the caller stopped hearing the item."""
        if self.recorder is None or self.recorder.closed:
            return
        cut = now
        frames = self._item_frames.get(item_id) if isinstance(item_id, str) else None
        if frames is not None and frames.at and isinstance(heard_ms, int):
            cut = frames.at[-1] + FRAME_MS
            for t, item_ms in zip(frames.at, frames.item_ms, strict=True):
                if item_ms >= heard_ms:
                    cut = t + max(0, heard_ms - (item_ms - FRAME_MS))
                    break
        cut = max(0, min(cut, self._agent_end_ms))
        self._agent_end_ms = cut
        self._sent_end_ms = _NEVER  # what comes next starts a new run of frames
        try:
            self.recorder.truncate_agent(cut)
        except VoiceError as exc:
            self._recording_failed(exc)

    # -- the end --------------------------------------------------------------------------------------

    async def _finish(self) -> None:
        """End the call everywhere and save the record; every step runs even if an earlier one fails."""
        if self.state == "ended":
            return
        self.state = "ending"
        reason = self.end_reason or "error"
        self.pacer.unregister(self.call_id)
        now = self.now_ms()
        try:
            self._apply(self.core.end(reason, now), now)
        except Exception:
            self.log.exception("call.core_end_failed")
        self._leg_op(functools.partial(self.leg.hangup, reason))
        self._leg_q.put_nowait(None)
        self._up_q.put_nowait(None)
        await self._stop_tasks()
        if self._upstream is not None:
            await _close_quietly(self._upstream)
        if self.recorder is not None:
            try:
                self.recorder.close(end_ms=now)
            except Exception as exc:
                self.log.error("call.recording_close_failed", error=repr(exc))
        meter = self.meter
        self._store(
            "end_call",
            self.call_id,
            reason,
            duration_ms=now,
            cost_usd=meter.total if meter is not None else Decimal(0),
            usage=meter.usage() if meter is not None else None,
            cost=meter.breakdown(now) if meter is not None else None,
        )
        self.state = "ended"
        metrics.CALLS_LIVE.dec()
        metrics.CALLS_ENDED.labels(reason=reason).inc()
        metrics.CALL_DURATION.observe(now / 1000)
        self.log.info(
            "call.ended",
            reason=reason,
            duration_ms=now,
            cost_usd=str(meter.total) if meter is not None else "0",
            frames_played=self.frames_played,
            reconnects=self.reconnects,
        )

    async def _stop_tasks(self) -> None:
        """Let the leg writer send what is queued (call.ended, the close), then stop every task."""
        writers = [t for t in self._tasks if t.get_name().endswith(("leg-writer", "upstream-writer"))]
        if writers:
            await asyncio.wait(writers, timeout=_STOP_TIMEOUT_S)
        current = asyncio.current_task()
        rest = [t for t in list(self._tasks) if t is not current and not t.done()]
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=_STOP_TIMEOUT_S)


async def _close_quietly(conn: RealtimeConnection) -> None:
    try:
        async with asyncio.timeout(_STOP_TIMEOUT_S):
            await conn.close()
    except Exception:  # closing a connection we are abandoning: nothing left to do
        pass


_ACTION_HANDLERS: Final[dict[type, Callable[[CallRunner, Any, int], None]]] = {
    SendUpstream: CallRunner._on_send_upstream,
    PlayFrame: CallRunner._on_play_frame,
    ClearLeg: CallRunner._on_clear,
    SendDtmf: CallRunner._on_send_dtmf,
    Transfer: CallRunner._on_transfer,
    Hangup: CallRunner._on_hangup,
    RunTool: CallRunner._on_run_tool,
    Control: CallRunner._on_control,
    TranscriptEntry: CallRunner._on_transcript,
    Metric: CallRunner._on_metric,
    UsageReported: CallRunner._on_usage,
}
"""Core action type -> what the runner does with it."""
