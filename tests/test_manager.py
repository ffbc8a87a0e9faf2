"""voice.manager.SessionManager: admission control, the registry of live calls, hang-up and graceful drain.

The runner is replaced by a scripted fake (the real one is exercised end to end in test_server.py), so these
tests check the manager's own promises: a busy answer at once (never a hang), one failing call never touching
another, drain refusing new calls, waiting, then ending the rest with reason ``shutdown``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bridges.base import AudioCodec, LegCapabilities, LegEvent, LegKind
from voice import metrics
from voice.call.pacer import FramePacer
from voice.call.tools import ToolRegistry
from voice.config import Settings
from voice.manager import CallRefused, SessionManager
from voice.profiles import AgentProfile
from voice.realtime.client import RealtimeConnection
from voice.realtime.pricing import PriceTable, default_price_table
from voice.store import CallStore


class FakeLeg:
    kind: LegKind = "browser"
    codec: AudioCodec = "pcm16_24k"
    capabilities = LegCapabilities(codecs=("pcm16_24k",))

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self.metadata: dict[str, Any] = {}

    async def events(self) -> AsyncIterator[LegEvent]:
        return
        yield

    async def play(self, frame: bytes, item_id: str, item_ms: int) -> None: ...
    async def clear(self) -> None: ...
    async def send_dtmf(self, digits: str) -> None: ...
    async def transfer(self, target: str) -> None: ...
    async def hangup(self, reason: str) -> None: ...
    async def send_control(self, message: dict[str, Any]) -> None: ...


class FakeRunner:
    """Ends when ``finish`` is set or on hangup (unless ``stubborn``), returning the reason."""

    def __init__(self, leg: FakeLeg, *, stubborn: bool = False, fail: bool = False) -> None:
        self.call_id = leg.call_id
        self.finish = asyncio.Event()
        self.reason = "caller_hangup"
        self.stubborn = stubborn
        self.fail = fail
        self.hangups: list[str] = []
        self.cancelled = False

    async def run(self) -> str:
        if self.fail:
            raise RuntimeError("boom")
        try:
            await self.finish.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return self.reason

    async def hangup(self, reason: str = "operator") -> None:
        self.hangups.append(reason)
        if not self.stubborn:
            self.reason = reason
            self.finish.set()

    def snapshot(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "state": "live"}


class Factory:
    def __init__(self) -> None:
        self.runners: dict[str, FakeRunner] = {}
        self.options: dict[str, dict[str, bool]] = {}
        self.kwargs: list[dict[str, Any]] = []
        self.raise_next = False

    def __call__(self, **kwargs: Any) -> FakeRunner:
        if self.raise_next:
            self.raise_next = False
            raise RuntimeError("cannot build")
        self.kwargs.append(kwargs)
        leg = kwargs["leg"]
        runner = FakeRunner(leg, **self.options.get(leg.call_id, {}))
        self.runners[leg.call_id] = runner
        return runner


async def _no_upstream(model: str) -> RealtimeConnection:
    raise AssertionError("the fake runner never opens an upstream")


@pytest.fixture
def store(tmp_path: Path) -> CallStore:
    with CallStore(tmp_path / "voice.db") as s:
        yield s


def _manager(
    store: CallStore, factory: Factory, *, max_calls: int = 2, drain_timeout_s: float = 1.0
) -> SessionManager:
    settings = Settings(max_calls=max_calls, drain_timeout_s=drain_timeout_s, db_path=store.path)
    open_upstream: Callable[[str], Awaitable[RealtimeConnection]] = _no_upstream
    table: PriceTable = default_price_table()
    return SessionManager(
        settings, store, FramePacer(), open_upstream, table, lambda _p: ToolRegistry(), runner_factory=factory
    )


PROFILE = AgentProfile(name="restaurant")


def _refused(reason: str) -> float:
    value = metrics.CALLS_REFUSED.labels(reason=reason)._value.get()
    return float(value)


async def test_start_registers_and_passes_the_contract_arguments(store: CallStore) -> None:
    factory = Factory()
    manager = _manager(store, factory)
    runner = await manager.start(FakeLeg("call_a"), PROFILE)
    assert manager.get("call_a") is runner
    assert manager.live() == [runner]
    assert manager.snapshots() == {"call_a": {"call_id": "call_a", "state": "live"}}
    kwargs = factory.kwargs[0]
    assert set(kwargs) == {
        "leg",
        "profile",
        "settings",
        "store",
        "pacer",
        "open_upstream",
        "tools",
        "price_table",
    }
    assert kwargs["profile"] is PROFILE and kwargs["store"] is store
    factory.runners["call_a"].finish.set()
    assert await manager.wait("call_a") == "caller_hangup"
    assert manager.get("call_a") is None
    assert manager.ended == {"caller_hangup": 1}
    assert await manager.wait("call_a") == ""


async def test_busy_is_answered_at_once(store: CallStore) -> None:
    factory = Factory()
    manager = _manager(store, factory, max_calls=2)
    await manager.start(FakeLeg("call_a"), PROFILE)
    held = manager.admit()  # admitted, not started yet: it counts
    before = _refused("busy")
    with pytest.raises(CallRefused) as exc:
        manager.admit()
    assert exc.value.reason == "busy"
    assert "busy" in exc.value.message
    assert _refused("busy") == before + 1
    with pytest.raises(CallRefused):
        await manager.start(FakeLeg("call_b"), PROFILE)
    held.release()
    await manager.start(FakeLeg("call_b"), PROFILE)
    assert manager.occupancy() == 2
    for runner in factory.runners.values():
        runner.finish.set()
    await manager.wait("call_a")
    await manager.wait("call_b")
    assert manager.occupancy() == 0
    manager.admit().release()


async def test_an_admission_is_used_once(store: CallStore) -> None:
    manager = _manager(store, Factory())
    admission = manager.admit()
    await manager.start(FakeLeg("call_a"), PROFILE, admission)
    with pytest.raises(ValueError):
        await manager.start(FakeLeg("call_b"), PROFILE, admission)
    with manager.admit() as unused:
        assert manager.occupancy() == 2
    assert unused.released
    assert manager.occupancy() == 1
    await manager.hangup("call_a")
    await manager.wait("call_a")


async def test_a_runner_that_cannot_be_built_gives_its_slot_back(store: CallStore) -> None:
    factory = Factory()
    factory.raise_next = True
    manager = _manager(store, factory, max_calls=1)
    with pytest.raises(RuntimeError):
        await manager.start(FakeLeg("call_a"), PROFILE)
    assert manager.occupancy() == 0
    await manager.start(FakeLeg("call_b"), PROFILE)
    await manager.hangup("call_b")
    assert await manager.wait("call_b") == "operator"


async def test_a_failing_call_does_not_touch_the_others(store: CallStore) -> None:
    factory = Factory()
    factory.options["call_bad"] = {"fail": True}
    manager = _manager(store, factory, max_calls=3)
    await manager.start(FakeLeg("call_ok"), PROFILE)
    await manager.start(FakeLeg("call_bad"), PROFILE)
    assert await manager.wait("call_bad") == "error"
    assert manager.get("call_ok") is not None
    assert manager.ended == {"error": 1}
    factory.runners["call_ok"].finish.set()
    assert await manager.wait("call_ok") == "caller_hangup"


async def test_hangup(store: CallStore) -> None:
    factory = Factory()
    manager = _manager(store, factory)
    await manager.start(FakeLeg("call_a"), PROFILE)
    assert await manager.hangup("call_nope") is False
    assert await manager.hangup("call_a", "operator") is True
    assert await manager.wait("call_a") == "operator"
    assert factory.runners["call_a"].hangups == ["operator"]


async def test_run_waits_and_survives_its_waiter_being_cancelled(store: CallStore) -> None:
    factory = Factory()
    manager = _manager(store, factory)
    waiter = asyncio.create_task(manager.run(FakeLeg("call_a"), PROFILE))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert manager.get("call_a") is not None  # the call goes on
    factory.runners["call_a"].finish.set()
    assert await manager.wait("call_a") == "caller_hangup"


async def test_drain_lets_calls_finish_then_ends_the_rest(store: CallStore) -> None:
    factory = Factory()
    manager = _manager(store, factory, max_calls=5)
    await manager.start(FakeLeg("call_quick"), PROFILE)
    await manager.start(FakeLeg("call_long"), PROFILE)
    drain = asyncio.create_task(manager.drain(0.3))
    await asyncio.sleep(0.05)
    assert manager.draining
    with pytest.raises(CallRefused) as exc:
        manager.admit()
    assert exc.value.reason == "draining"
    factory.runners["call_quick"].finish.set()  # finishes within the deadline on its own
    ended = await drain
    assert ended == ["call_long"]
    assert factory.runners["call_quick"].hangups == []
    assert factory.runners["call_long"].hangups == ["shutdown"]
    assert manager.live() == []
    assert manager.ended == {"caller_hangup": 1, "shutdown": 1}


async def test_drain_with_no_calls_returns_at_once(store: CallStore) -> None:
    manager = _manager(store, Factory(), drain_timeout_s=30)
    async with asyncio.timeout(1):
        assert await manager.drain() == []
    assert manager.draining


async def test_drain_cancels_a_runner_that_does_not_stop(store: CallStore) -> None:
    factory = Factory()
    factory.options["call_stuck"] = {"stubborn": True}
    manager = _manager(store, factory)
    await manager.start(FakeLeg("call_stuck"), PROFILE)
    async with asyncio.timeout(5):
        assert await manager.drain(0.05, grace_s=0.1) == ["call_stuck"]
    runner = factory.runners["call_stuck"]
    assert runner.hangups == ["shutdown"]
    assert runner.cancelled
    assert manager.live() == []


async def test_start_during_drain_is_refused(store: CallStore) -> None:
    manager = _manager(store, Factory())
    admission = manager.admit()
    manager.begin_drain()
    with pytest.raises(CallRefused) as exc:
        await manager.start(FakeLeg("call_a"), PROFILE, admission)
    assert exc.value.reason == "draining"
    assert manager.occupancy() == 0
