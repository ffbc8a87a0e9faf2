"""The session manager: the registry of live calls, admission control and graceful drain.

One :class:`SessionManager` per service process. A transport endpoint (``/ws/browser``, later Twilio, SIP,
WebRTC) asks :meth:`SessionManager.admit` for a slot *before* it does any work for a new caller, then hands
its leg to :meth:`SessionManager.start` (or :meth:`SessionManager.run`, which also waits for the end):

- **Admission** (``settings.max_calls``): live calls plus admitted-but-not-started ones never exceed the
  limit; the next caller gets :class:`CallRefused` with reason ``"busy"`` at once, never a hang. While the
  service drains every new caller gets reason ``"draining"``. Refusals are counted in
  ``voice_calls_refused_total{reason}``.
- **Runs**: each call is a :class:`~voice.call.runner.CallRunner` running as its own task, so one failing
  call never touches another; the runner saves the record whatever happens. The manager only keeps the
  registry and counts end reasons.
- **Drain** (:meth:`SessionManager.drain`, on SIGTERM): refuse new calls, let live ones finish up to a
  deadline, then end the rest politely (``hangup("shutdown")``: the caller's leg gets a goodbye and the
  record is closed with end reason ``shutdown``), and as a last resort cancel a runner that does not stop.

The runner owns the per-call metrics (``voice_calls_live``, ``voice_calls_ended_total``, durations).

Upstream connections are opened by ``open_upstream`` (a :class:`voice.call.upstream.UpstreamOpener`, which
the runner binds to the call's agent, or any ``model -> connection`` callable), passed to each runner as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from bridges.base import Leg
from voice import metrics
from voice.call.pacer import FramePacer
from voice.call.tools import ToolRegistry
from voice.call.upstream import OpenUpstream
from voice.config import Settings
from voice.errors import VoiceError
from voice.logs import get_logger
from voice.profiles import AgentProfile
from voice.realtime.pricing import PriceTable
from voice.store import CallStore

__all__ = [
    "Admission",
    "CallRefused",
    "RefusalReason",
    "RunnerFactory",
    "RunnerLike",
    "SessionManager",
    "ToolsFactory",
]

RefusalReason = Literal["busy", "draining"]

STOP_GRACE_S: Final = 10.0
"""After ``hangup("shutdown")``, how long a runner gets to say goodbye and save before it is cancelled."""

_log = get_logger(component="manager")


class CallRefused(VoiceError):
    """A new call was not admitted: ``reason`` is ``"busy"`` (at ``max_calls``) or ``"draining"``."""

    def __init__(self, reason: RefusalReason, message: str | None = None) -> None:
        text = message or (
            "all lines are busy, please try again in a moment"
            if reason == "busy"
            else "the service is shutting down, please try again in a moment"
        )
        super().__init__(text)
        self.reason: RefusalReason = reason
        self.message = text


class RunnerLike(Protocol):
    """What the manager needs of a call runner (:class:`voice.call.runner.CallRunner` is the real one)."""

    @property
    def call_id(self) -> str:
        """The call's id."""
        ...

    async def run(self) -> str:
        """Run the call to its end; return the end reason (the record is saved whatever happens)."""
        ...

    async def hangup(self, reason: str = "operator") -> None:
        """End the call politely."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view of the live call."""
        ...


class RunnerFactory(Protocol):
    """Builds the runner of one call (the keyword arguments of ``CallRunner``)."""

    def __call__(
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
    ) -> RunnerLike: ...


ToolsFactory = Callable[[AgentProfile], ToolRegistry]
"""The function tools of an agent (a fresh registry per call is fine; registries are cheap)."""


def _default_runner_factory() -> RunnerFactory:
    from voice.call.runner import CallRunner

    factory: RunnerFactory = CallRunner
    return factory


@dataclass(eq=False)
class Admission:
    """A reserved call slot from :meth:`SessionManager.admit`; give it to ``start`` or ``release`` it.

    Usable as a context manager that releases the slot unless it was used.
    """

    manager: SessionManager
    used: bool = False
    released: bool = False

    def release(self) -> None:
        """Give the slot back (idempotent; a no-op once the call started)."""
        if not self.used and not self.released:
            self.released = True
            self.manager._pending.discard(self)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


@dataclass(eq=False)
class _Live:
    runner: RunnerLike
    task: asyncio.Task[str]
    agent: str
    leg_kind: str
    started: float = field(default_factory=time.monotonic)


class SessionManager:
    """The registry of live calls (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: CallStore,
        pacer: FramePacer,
        open_upstream: OpenUpstream,
        price_table: PriceTable,
        tools: ToolsFactory,
        *,
        runner_factory: RunnerFactory | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.pacer = pacer
        self.open_upstream = open_upstream
        self.price_table = price_table
        self.tools = tools
        self._runner_factory = runner_factory
        self._live: dict[str, _Live] = {}
        self._pending: set[Admission] = set()
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.ended: dict[str, int] = {}
        """How many calls ended with each reason since start (also ``voice_calls_ended_total``)."""

    # -- admission ---------------------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` (or :meth:`begin_drain`) was called: new calls are refused."""
        return self._draining

    @property
    def capacity(self) -> int:
        """``settings.max_calls``."""
        return self.settings.max_calls

    def occupancy(self) -> int:
        """Live calls plus admitted calls that have not started yet."""
        return len(self._live) + len(self._pending)

    def admit(self) -> Admission:
        """Reserve a slot for a new call or raise :class:`CallRefused` (``busy`` or ``draining``)."""
        reason: RefusalReason | None = None
        if self._draining:
            reason = "draining"
        elif self.occupancy() >= self.settings.max_calls:
            reason = "busy"
        if reason is not None:
            metrics.CALLS_REFUSED.labels(reason=reason).inc()
            _log.warning("call_refused", reason=reason, live=len(self._live), max_calls=self.capacity)
            raise CallRefused(reason)
        admission = Admission(self)
        self._pending.add(admission)
        return admission

    # -- running -----------------------------------------------------------------------------------------

    async def start(self, leg: Leg, profile: AgentProfile, admission: Admission | None = None) -> RunnerLike:
        """Start a call on ``leg`` with ``profile`` as its own task and register it; return its runner.

        Without an ``admission`` one is taken now (and :class:`CallRefused` may be raised).
        """
        slot = admission if admission is not None else self.admit()
        if slot.released or slot.used or slot.manager is not self:
            raise ValueError("this admission was already used or released")
        if self._draining:
            slot.release()
            metrics.CALLS_REFUSED.labels(reason="draining").inc()
            raise CallRefused("draining")
        try:
            factory = self._runner_factory or _default_runner_factory()
            runner = factory(
                leg=leg,
                profile=profile,
                settings=self.settings,
                store=self.store,
                pacer=self.pacer,
                open_upstream=self.open_upstream,
                tools=self.tools(profile),
                price_table=self.price_table,
            )
        except BaseException:
            slot.release()
            raise
        slot.used = True
        self._pending.discard(slot)
        task = asyncio.create_task(self._run(runner), name=f"call-{runner.call_id}")
        self._live[runner.call_id] = _Live(runner, task, profile.name, leg.kind)
        self._idle.clear()
        _log.info(
            "call_admitted", call_id=runner.call_id, agent=profile.name, leg=leg.kind, live=len(self._live)
        )
        return runner

    async def _run(self, runner: RunnerLike) -> str:
        log = _log.bind(call_id=runner.call_id)
        reason = "error"
        try:
            reason = await runner.run()
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        except Exception:
            log.exception("call_runner_failed")
        finally:
            self._live.pop(runner.call_id, None)
            self.ended[reason] = self.ended.get(reason, 0) + 1
            if not self._live:
                self._idle.set()
            log.info("call_finished", end_reason=reason, live=len(self._live))
        return reason

    async def run(self, leg: Leg, profile: AgentProfile, admission: Admission | None = None) -> str:
        """:meth:`start` the call, then wait for its end reason.

        Cancelling the waiter (its transport handler went away) does not cancel the call: the runner sees
        the leg's hang-up and finishes on its own, saving the record.
        """
        runner = await self.start(leg, profile, admission)
        return await self.wait(runner.call_id)

    async def wait(self, call_id: str) -> str:
        """Wait for a live call to end and return its end reason ("" if the id is not live)."""
        live = self._live.get(call_id)
        if live is None:
            return ""
        return await asyncio.shield(live.task)

    # -- registry ----------------------------------------------------------------------------------------

    def live(self) -> list[RunnerLike]:
        """The runners of the live calls, oldest first."""
        return [entry.runner for entry in self._live.values()]

    def get(self, call_id: str) -> RunnerLike | None:
        """The runner of a live call, or None."""
        entry = self._live.get(call_id)
        return entry.runner if entry is not None else None

    def snapshots(self) -> dict[str, dict[str, Any]]:
        """``call_id -> runner.snapshot()`` for every live call (a failing snapshot is left out)."""
        out: dict[str, dict[str, Any]] = {}
        for call_id, entry in list(self._live.items()):
            try:
                out[call_id] = entry.runner.snapshot()
            except Exception:
                _log.exception("snapshot_failed", call_id=call_id)
        return out

    async def hangup(self, call_id: str, reason: str = "operator") -> bool:
        """Ask a live call to end (politely: the runner says goodbye and saves). False if it is not live."""
        entry = self._live.get(call_id)
        if entry is None:
            return False
        _log.info("call_hangup_requested", call_id=call_id, reason=reason)
        await entry.runner.hangup(reason)
        return True

    # -- drain -------------------------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Refuse new calls from now on (``/readyz`` answers 503)."""
        if not self._draining:
            self._draining = True
            _log.info("drain_started", live=len(self._live))

    async def drain(self, timeout_s: float | None = None, *, grace_s: float = STOP_GRACE_S) -> list[str]:
        """Refuse new calls, wait up to ``timeout_s`` (default ``settings.drain_timeout_s``) for live calls
        to end, then hang up the rest with reason ``"shutdown"`` and wait up to ``grace_s`` more; runners
        still running after that are cancelled. Returns the ids that had to be ended."""
        self.begin_drain()
        deadline = self.settings.drain_timeout_s if timeout_s is None else timeout_s
        if self._live and deadline > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(deadline):
                    await self._idle.wait()
        remaining = list(self._live)
        if not remaining:
            _log.info("drain_done", ended=0)
            return []
        _log.warning("drain_deadline", ending=remaining)
        for call_id in remaining:
            try:
                await self.hangup(call_id, "shutdown")
            except Exception:
                _log.exception("drain_hangup_failed", call_id=call_id)
        tasks = [entry.task for entry in self._live.values()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                _log.error("drain_cancel", call=task.get_name())
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace_s)
        _log.info("drain_done", ended=len(remaining))
        return remaining
