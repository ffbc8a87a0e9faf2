"""The service's loop runs the timers that are due before the I/O callbacks of the same pass, and between
them in a long pass."""

from __future__ import annotations

import asyncio
import socket
import time

from voice.eventloop import TimersFirstLoop, loop_factory


def _order_in_one_pass(loop: asyncio.AbstractEventLoop) -> list[str]:
    """A timer and a readable socket that both become ready while one callback blocks the loop: the order
    in which the next pass runs them."""
    order: list[str] = []
    a, b = socket.socketpair()
    a.setblocking(False)
    try:

        def read() -> None:
            a.recv(16)
            order.append("io")
            loop.remove_reader(a)

        def block() -> None:
            loop.call_at(loop.time() + 0.005, order.append, "timer")
            b.send(b"x")
            time.sleep(0.03)  # both are ready when the next pass polls

        loop.add_reader(a, read)
        loop.call_soon(block)

        async def wait() -> None:
            while len(order) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.005)

        loop.run_until_complete(asyncio.wait_for(wait(), 5))
    finally:
        a.close()
        b.close()
        loop.close()
    return order


def test_a_due_timer_runs_before_the_io_of_the_same_pass() -> None:
    assert _order_in_one_pass(TimersFirstLoop()) == ["timer", "io"]


def test_the_plain_selector_loop_runs_the_io_first() -> None:
    # What TimersFirstLoop changes: asyncio's own order (if this ever changes, the subclass is moot).
    assert _order_in_one_pass(asyncio.SelectorEventLoop()) == ["io", "timer"]


def test_timers_still_run_once_in_deadline_order_and_cancelled_ones_not_at_all() -> None:
    loop = TimersFirstLoop()
    ran: list[int] = []
    try:
        now = loop.time()
        handles = [loop.call_at(now + 0.001 * (5 - k), ran.append, k) for k in range(5)]
        handles[2].cancel()
        loop.run_until_complete(asyncio.sleep(0.05))
    finally:
        loop.close()
    assert ran == [4, 3, 1, 0]


_READERS = 40
_WORK_S = 0.001


def _long_pass(
    loop: asyncio.AbstractEventLoop, due_in_pass_s: list[float], cancel: int | None = None
) -> list[str]:
    """Forty sockets become readable while a callback blocks the loop, so the next pass runs forty I/O
    callbacks of about 1 ms each; timers come due ``due_in_pass_s`` into that pass (timer ``cancel`` is
    cancelled first). What ran, in order: ``io``, or ``timer<k>`` (``early`` if it ran before its deadline).
    """
    order: list[str] = []
    pairs = [socket.socketpair() for _ in range(_READERS)]
    block_s = 0.03
    try:

        def read(sock: socket.socket) -> None:
            sock.recv(16)
            loop.remove_reader(sock)
            time.sleep(_WORK_S)
            order.append("io")

        def fire(k: int, when: float) -> None:
            order.append(f"timer{k}" if loop.time() >= when else "early")

        def block() -> None:
            start = loop.time() + block_s
            for k, offset in enumerate(due_in_pass_s):
                handle = loop.call_at(start + offset, fire, k, start + offset)
                if k == cancel:
                    handle.cancel()
            for _, b in pairs:
                b.send(b"x")
            time.sleep(block_s)  # all forty are ready when the next pass polls

        for a, _ in pairs:
            a.setblocking(False)
            loop.add_reader(a, read, a)
        loop.call_soon(block)
        expected = _READERS + len(due_in_pass_s) - (cancel is not None)

        async def wait() -> None:
            while len(order) < expected:  # noqa: ASYNC110
                await asyncio.sleep(0.005)

        loop.run_until_complete(asyncio.wait_for(wait(), 10))
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        loop.close()
    return order


def test_a_timer_that_comes_due_in_a_long_pass_runs_before_the_pass_ends() -> None:
    order = _long_pass(TimersFirstLoop(), [0.010])
    assert order.count("io") == _READERS
    assert "early" not in order
    assert order.index("timer0") < _READERS  # some of the pass's I/O callbacks run after it


def test_the_plain_selector_loop_runs_it_after_the_whole_pass() -> None:
    # What the checks change: asyncio's own loop runs the timer in the next pass.
    assert _long_pass(asyncio.SelectorEventLoop(), [0.010]) == ["io"] * _READERS + ["timer0"]


def test_timers_due_in_a_long_pass_run_once_in_deadline_order_never_early_and_not_when_cancelled() -> None:
    loop = TimersFirstLoop()
    order = _long_pass(loop, [0.012, 0.004, 0.008], cancel=2)
    timers = [event for event in order if event != "io"]
    assert timers == ["timer1", "timer0"]
    assert order.count("io") == _READERS


def test_the_service_gets_the_timers_first_loop_here() -> None:
    assert loop_factory() is TimersFirstLoop


def test_tasks_sockets_and_executors_work_as_usual() -> None:
    async def main() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        data = await reader.read(100)
        writer.close()
        server.close()
        await server.wait_closed()
        assert await asyncio.get_running_loop().run_in_executor(None, sum, [1, 2]) == 3
        return data

    with asyncio.Runner(loop_factory=TimersFirstLoop) as runner:
        assert runner.run(main()) == b"hello"
