"""voice.bench.common: the CPU split between the service and the processes standing for its peers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from voice import native
from voice.bench.common import cpu_split, pin


def test_split_gives_the_service_one_cpu_and_the_peers_the_rest() -> None:
    split = cpu_split()
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        assert split is None
        return
    assert split is not None
    service, peers = split
    assert len(service) == 1 and service | peers == cpus and not service & peers


def test_pin_moves_every_thread_of_a_process() -> None:
    split = cpu_split()
    if split is None:
        pytest.skip("one CPU: nothing to split")
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = 50
        while len(os.listdir(f"/proc/{child.pid}/task")) < 2 and deadline:
            deadline -= 1
            subprocess.run(["sleep", "0.1"], check=True)
        pin(child.pid, split[0])
        tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tids) == 2
        assert all(os.sched_getaffinity(tid) == split[0] for tid in tids)
    finally:
        child.kill()
        child.wait()
    pin(child.pid, split[0])  # a process that is gone: nothing happens


def test_twilio_arrival_lateness_follows_the_audio_not_the_message_count() -> None:
    from voice.bench.twilio import _arrival_lateness_ms

    # 40 ms messages every 40 ms, then one 20 ms message, then one 40 ms message 15 ms late.
    arrivals = [(1.000, 0.04), (1.040, 0.04), (1.080, 0.02), (1.115, 0.04)]
    late = _arrival_lateness_ms([arrivals], 0.0, 2.0)
    assert [round(x, 6) for x in late] == [0.0, 0.0, 0.0, 15.0]


def test_twilio_arrival_lateness_does_not_count_the_pause_between_two_agent_items() -> None:
    from voice.bench.twilio import _arrival_lateness_ms

    # One item of three frames, a 50 ms pause (under the 100 ms gap), a second item of two frames.
    arrivals = [(1.000, 0.02), (1.020, 0.02), (1.040, 0.02), (1.110, 0.02), (1.131, 0.02)]
    late = _arrival_lateness_ms([arrivals], 0.0, 2.0, [{3}])
    assert [round(x, 6) for x in late] == [0.0, 0.0, 0.0, 0.0, 1.0]
    joined = _arrival_lateness_ms([arrivals], 0.0, 2.0)  # without the item start: the pause counts
    assert round(joined[3], 6) == 50.0


async def test_lean_twilio_caller_learns_where_items_start_from_the_marks() -> None:
    import base64
    import json

    from voice.bench.twilio import LeanTwilio

    caller = LeanTwilio("127.0.0.1", 9, "call_x")
    frame = base64.b64encode(bytes(160)).decode()

    def receive(message: dict[str, object]) -> None:
        caller._on_message(json.dumps(message).encode())

    def media() -> None:
        receive({"event": "media", "media": {"payload": frame}})

    def mark(name: str) -> None:
        receive({"event": "mark", "mark": {"name": name}})

    for _ in range(5):
        media()
    mark("m5:item_a:100")
    media()
    media()
    mark("m7:item_a:140")  # the end of item a (marked at the item change)
    for _ in range(5):
        media()
    mark("m12:item_b:100")  # the first mark of item b: its frames began after item a's last mark
    assert caller.item_starts == {7}
    assert not caller.errors
    for handle in caller._pending.values():  # the mark echoes it would send: nothing is connected
        handle.cancel()


def test_isolate_pins_the_service_and_the_peers_apart() -> None:
    from voice.bench.common import isolate, peer_cpus

    split = cpu_split()
    if split is None:
        pytest.skip("one CPU: nothing to split")
    mine = os.sched_getaffinity(0)
    service = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        where = isolate(service.pid, [peer.pid], "the peers")
        assert os.sched_getaffinity(service.pid) == split[0]
        assert os.sched_getaffinity(peer.pid) == split[1] == peer_cpus()
        assert os.sched_getaffinity(0) == split[1]
        assert where == (
            f"service on CPUs {sorted(split[0])}, the peers on {sorted(split[1])}; "
            f"per-frame modules {native.state()}"
        )
    finally:
        os.sched_setaffinity(0, mine)
        for proc in (service, peer):
            proc.kill()
            proc.wait()
