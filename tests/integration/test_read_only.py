"""Read-only actions on one host: reads of one agent run beside each other, writes run
alone and never overlap a read, a waiting write is not overtaken by later reads (FIFO),
priorities keep their lanes, deadlines and deactivation behave as for any message."""

from __future__ import annotations

import asyncio
import time

import pytest

from natsagents import Agent, CallTimeout, Mesh, action
from natsagents.testing import wait_for


class Board(Agent):
    """Records what runs at once: ``events`` in start/end order, peak concurrency."""

    kind = "Board"
    running: dict[str, int] = {"read": 0, "write": 0}
    peak: dict[str, int] = {"read": 0, "mixed": 0}
    events: list[str] = []
    gate: asyncio.Event | None = None

    @classmethod
    def reset(cls) -> None:
        cls.running = {"read": 0, "write": 0}
        cls.peak = {"read": 0, "mixed": 0}
        cls.events = []
        cls.gate = None

    def _enter(self, what: str, tag: str) -> None:
        Board.running[what] += 1
        Board.events.append(f"+{tag}")
        Board.peak["read"] = max(Board.peak["read"], Board.running["read"])
        if Board.running["write"] and (Board.running["read"] or Board.running["write"] > 1):
            Board.peak["mixed"] += 1  # a write overlapped something

    def _leave(self, what: str, tag: str) -> None:
        Board.running[what] -= 1
        Board.events.append(f"-{tag}")

    @action(read_only=True)
    async def read(self, tag: str = "r", wait: float = 0.02) -> int:
        self._enter("read", tag)
        try:
            gate = Board.gate
            if gate is not None and tag.startswith("a"):
                await gate.wait()
            await asyncio.sleep(wait)
            return int(self.state.get("n", 0))
        finally:
            self._leave("read", tag)

    @action
    async def write(self, tag: str = "w", wait: float = 0.02) -> int:
        self._enter("write", tag)
        try:
            gate = Board.gate
            if gate is not None and tag == "hold":
                await gate.wait()
            await asyncio.sleep(wait)
            self.state["n"] = self.state.get("n", 0) + 1
            return int(self.state["n"])
        finally:
            self._leave("write", tag)


def waiting(mesh: Mesh, agent_id: str) -> int:
    """Messages waiting in the mailbox of ``Board/<agent_id>`` here."""
    act = mesh._host.activations.get(("Board", agent_id))
    return 0 if act is None else len(act.mailbox)


@pytest.fixture
async def board(mesh: Mesh) -> Mesh:
    Board.reset()
    await mesh.host(Board)
    return mesh


async def test_reads_run_together_and_writes_alone(board: Mesh) -> None:
    ref = board.ref("Board/b")
    await ref.call("write")
    Board.reset()
    await asyncio.gather(*(ref.call("read", tag=f"r{i}", wait=0.05) for i in range(20)))
    assert Board.peak["read"] > 1, Board.peak
    calls = [ref.call("write" if i % 5 == 0 else "read", tag=str(i), wait=0.01) for i in range(60)]
    results = await asyncio.gather(*calls)
    assert Board.peak["mixed"] == 0, "a write ran beside another handler"
    assert max(r for i, r in enumerate(results) if i % 5 == 0) == 13  # 1 + 12 writes, none lost


async def test_a_write_waits_for_earlier_reads_and_later_reads_wait_for_it(board: Mesh) -> None:
    ref = board.ref("Board/order")
    await ref.call("write", tag="w0")
    Board.reset()
    Board.gate = asyncio.Event()  # the first reads run until released
    first = [asyncio.ensure_future(ref.call("read", tag=f"a{i}", wait=0)) for i in range(5)]
    await wait_for(lambda: Board.running["read"] == 5, what="the first reads run")
    write = asyncio.ensure_future(ref.call("write", tag="W", wait=0.02))
    await wait_for(lambda: waiting(board, "order") == 1, what="the write waits")
    later = [asyncio.ensure_future(ref.call("read", tag=f"b{i}", wait=0.01)) for i in range(5)]
    await wait_for(lambda: waiting(board, "order") == 6, what="the later reads wait")
    Board.gate.set()
    await asyncio.gather(*first, write, *later)
    ev = Board.events
    w_start, w_end = ev.index("+W"), ev.index("-W")
    assert all(ev.index(f"-a{i}") < w_start for i in range(5)), ev  # earlier reads finished first
    assert all(ev.index(f"+b{i}") > w_end for i in range(5)), ev  # later reads waited for the write


async def test_a_stream_of_reads_does_not_starve_a_write(board: Mesh) -> None:
    ref = board.ref("Board/starve")
    stop = False
    done_reads = 0

    async def reader() -> None:
        nonlocal done_reads
        while not stop:
            await ref.call("read", wait=0.01)
            done_reads += 1

    readers = [asyncio.ensure_future(reader()) for _ in range(20)]
    try:
        await wait_for(lambda: done_reads > 40, timeout=20, what="reads flowing")
        Board.events.append("issued")
        assert await ref.call("write", tag="w", wait=0.0, timeout=20) == 1
    finally:
        stop = True
        await asyncio.gather(*readers)
    ev = Board.events
    overtaking = [e for e in ev[ev.index("issued") : ev.index("+w")] if e.startswith("+")]
    # FIFO: only reads already sent when the write was (one per caller) run before it.
    assert len(overtaking) <= 20, f"{len(overtaking)} reads ran before a waiting write"
    assert Board.peak["mixed"] == 0


async def test_high_priority_keeps_its_lane(board: Mesh) -> None:
    ref = board.ref("Board/prio")
    Board.gate = asyncio.Event()
    hold = asyncio.ensure_future(ref.call("write", tag="hold", wait=0))
    await wait_for(lambda: Board.running["write"] == 1, what="the holding write runs")
    reads = [asyncio.ensure_future(ref.call("read", tag=f"r{i}", wait=0)) for i in range(3)]
    await wait_for(lambda: waiting(board, "prio") == 3, what="the reads wait")
    urgent = asyncio.ensure_future(ref.with_options(priority="high").call("write", tag="urgent", wait=0))
    await wait_for(lambda: waiting(board, "prio") == 4, what="the urgent write waits")
    Board.gate.set()
    await asyncio.gather(hold, urgent, *reads)
    ev = Board.events
    assert ev.index("+urgent") < min(ev.index(f"+r{i}") for i in range(3)), ev


async def test_a_read_behind_a_slow_write_times_out_without_running(board: Mesh) -> None:
    ref = board.ref("Board/deadline")
    slow = asyncio.ensure_future(ref.call("write", tag="slow", wait=0.6))
    await wait_for(lambda: Board.running["write"] == 1, what="the write runs")
    with pytest.raises(CallTimeout):
        await ref.call("read", tag="late", timeout=0.2)
    assert await slow == 1
    await wait_for(lambda: Board.running["read"] == 0 and Board.running["write"] == 0, what="idle")
    assert "+late" not in Board.events  # refused at its deadline, never started
    assert await ref.call("read") == 1


async def test_a_cancelled_read_call_leaves_the_agent_serving(board: Mesh) -> None:
    ref = board.ref("Board/cancel")
    task = asyncio.ensure_future(ref.call("read", tag="c", wait=0.2))
    await wait_for(lambda: Board.running["read"] == 1, what="the read runs")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await ref.call("write", wait=0) == 1  # the handler finished; the write ran after it
    assert Board.peak["mixed"] == 0


async def test_deactivation_waits_for_reads_in_flight(board: Mesh) -> None:
    ref = board.ref("Board/stop")
    await ref.call("write", wait=0)
    Board.gate = asyncio.Event()
    reads = [asyncio.ensure_future(ref.call("read", tag=f"a{i}", wait=0)) for i in range(10)]
    await wait_for(lambda: Board.running["read"] == 10, timeout=20, what="reads in flight")
    stopping = asyncio.ensure_future(board.deactivate("Board/stop"))
    act = board._host.activations[("Board", "stop")]
    await wait_for(lambda: act.state.value == "stopping", what="stopping")
    assert not stopping.done()  # waits for the reads
    Board.gate.set()
    assert await stopping
    assert Board.running["read"] == 0  # every read finished before the agent stopped
    assert await asyncio.gather(*reads) == [1] * 10


async def test_a_crdt_kind_is_hosted_standalone(mesh: Mesh) -> None:
    """On a standalone host a crdt kind is one in-process copy (nothing is stored)."""
    from natsagents.crdt import PNCounter

    class Hits(Agent):
        consistency = "crdt"

        def initial_state(self) -> PNCounter:
            return PNCounter()

        @action
        async def hit(self) -> int:
            return int(self.mutate(self.state.increment(self.replica, 1)).value)

    await mesh.host(Hits)
    assert await mesh.ref("Hits/a").call("hit") == 1
    assert await mesh.ref("Hits/a").call("hit") == 2


async def test_overlapping_reads_do_not_look_like_a_hung_handler(board: Mesh) -> None:
    """``busy_since`` (the supervisor's hung-handler clock) is the oldest read still running,
    not the first of a stream of overlapping reads."""
    ref = board.ref("Board/hung")
    await ref.call("read", wait=0)
    act = board._host.activations[("Board", "hung")]
    stop = False
    oldest = 0.0

    async def reader(delay: float) -> None:
        await asyncio.sleep(delay)
        while not stop:
            await ref.call("read", wait=0.05)

    readers = [asyncio.ensure_future(reader(i * 0.005)) for i in range(20)]
    try:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            await asyncio.sleep(0.01)
            if act.busy_since:
                oldest = max(oldest, time.monotonic() - act.busy_since)
    finally:
        stop = True
        await asyncio.gather(*readers)
    assert 0 < oldest < 1.0, f"busy for {oldest:.2f} s by the hung-handler clock"
