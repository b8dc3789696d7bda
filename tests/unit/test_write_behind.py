"""The write-behind scheduler of eventual kinds (``state.behind``), on its own: when
flushes run, coalescing, changes made during a flush, retries, flush_now and forget."""

from __future__ import annotations

import asyncio

import pytest

from natsagents.state.behind import WriteBehind
from natsagents.tasks import TaskGroup
from natsagents.testing import wait_for


class Store:
    """A fake owner: ``dirty`` holds the newest unflushed value per key."""

    def __init__(self) -> None:
        self.dirty: dict[str, int] = {}
        self.stored: dict[str, list[int]] = {}
        self.fail = 0
        self.hold: asyncio.Event | None = None
        self.stale: set[str] = set()
        self.started = 0  # flushes that took their value

    async def flush(self, key: str) -> None:
        value = self.dirty.get(key)
        if value is None:
            return
        self.started += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.fail:
            self.fail -= 1
            raise OSError("store down")
        self.stored.setdefault(key, []).append(value)
        if self.dirty.get(key) == value:
            del self.dirty[key]


@pytest.fixture
async def setup() -> tuple[Store, WriteBehind[str], TaskGroup]:
    store = Store()
    tasks = TaskGroup("test")
    behind: WriteBehind[str] = WriteBehind(
        store.flush, tasks, dirty=lambda k: k in store.dirty, stale=lambda k: k in store.stale
    )
    return store, behind, tasks


def change(store: Store, behind: WriteBehind[str], key: str, value: int, interval: float = 0.05) -> None:
    store.dirty[key] = value
    behind.mark(key, interval)


async def test_changes_within_a_window_are_stored_once(setup: tuple[Store, WriteBehind[str], TaskGroup]) -> None:
    store, behind, tasks = setup
    for v in range(1, 11):
        change(store, behind, "a", v)
    await wait_for(lambda: "a" not in store.dirty and not behind.pending("a"), timeout=2)
    assert store.stored == {"a": [10]}
    await tasks.aclose()


async def test_a_change_during_a_flush_is_stored_by_the_next(setup: tuple[Store, WriteBehind[str], TaskGroup]) -> None:
    store, behind, tasks = setup
    store.hold = asyncio.Event()
    change(store, behind, "a", 1, interval=0.01)
    await wait_for(lambda: store.started == 1, timeout=2)  # flushing
    change(store, behind, "a", 2, interval=0.01)
    store.hold.set()
    await wait_for(lambda: store.stored.get("a") == [1, 2], timeout=2)
    await tasks.aclose()


async def test_failures_are_retried_with_backoff(setup: tuple[Store, WriteBehind[str], TaskGroup]) -> None:
    store, behind, tasks = setup
    store.fail = 2
    change(store, behind, "a", 7, interval=0.01)
    await wait_for(lambda: store.stored.get("a") == [7], timeout=3)  # after 0.1 s and 0.2 s
    assert not behind.pending("a")
    await tasks.aclose()


async def test_flush_now_waits_for_the_flush_in_flight_and_stores_the_rest(
    setup: tuple[Store, WriteBehind[str], TaskGroup],
) -> None:
    store, behind, tasks = setup
    store.hold = asyncio.Event()
    change(store, behind, "a", 1, interval=0.01)
    await wait_for(lambda: store.started == 1, timeout=2)
    change(store, behind, "a", 2, interval=10)
    done = asyncio.ensure_future(behind.flush_now("a"))
    await asyncio.sleep(0.02)
    assert not done.done()  # waiting for the flush in flight
    store.hold.set()
    await done
    assert store.stored == {"a": [1, 2]} and not behind.pending("a")
    await tasks.aclose()


async def test_forget_drops_a_due_flush(setup: tuple[Store, WriteBehind[str], TaskGroup]) -> None:
    store, behind, tasks = setup
    change(store, behind, "a", 1, interval=0.05)
    behind.forget("a")
    await asyncio.sleep(0.1)  # the timer would have fired by now
    assert store.stored == {} and not behind.pending("a")
    await tasks.aclose()


async def test_hurry_brings_a_retry_forward_and_leaves_a_window_alone(
    setup: tuple[Store, WriteBehind[str], TaskGroup],
) -> None:
    store, behind, tasks = setup
    store.fail = 4  # retried after 0.1, 0.2, 0.4, then 0.8 s
    change(store, behind, "a", 1, interval=0.01)
    await wait_for(lambda: store.started >= 4 and behind._retry.get("a", 0) >= 0.8 and "a" in behind._timers, timeout=3)
    store.fail = 0
    loop = asyncio.get_running_loop()
    assert behind._timers["a"].when() > loop.time() + 0.5  # waiting out its backoff
    behind.hurry("a", 0.01)
    await wait_for(lambda: store.stored.get("a") == [1], timeout=1, what="stored soon after hurry")
    change(store, behind, "b", 2, interval=30.0)  # an ordinary window: not a retry
    due = behind._timers["b"].when()
    behind.hurry("b", 0.01)
    assert behind._timers["b"].when() == due
    behind.forget("b")
    await tasks.aclose()
