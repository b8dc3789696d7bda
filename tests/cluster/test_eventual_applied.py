"""The applied ids of an eventual kind (``Owned.add_applied``): each acknowledged change
appends its id, the list is trimmed only when it has doubled (a flush persists it trimmed),
so a write costs the same whatever the number of recent ids; what a flush stores is what a
trim of every id would keep (a resent copy is never applied twice, here or by a successor)."""

from __future__ import annotations

import contextvars
import time
from typing import Any

import pytest

from natsagents.cluster import owned as owned_module
from natsagents.cluster import ownership as ownership_module
from natsagents.cluster.directory import Claim, DirectoryRecord, Status
from natsagents.cluster.owned import Owned
from natsagents.cluster.placement import Resources
from natsagents.runtime import dedup
from natsagents.testing import wait_for
from tests.cluster.test_cluster_node import node_of, nodes
from tests.cluster.test_consistency import KINDS


def _owned() -> Owned:
    record = DirectoryRecord("Tally", "a", "n1", 1, Status.ACTIVE, time.time())
    return Owned(Claim(record, 1), 1, Resources(), "action", None)


def test_appended_ids_are_trimmed_when_the_list_doubles_and_read_trimmed() -> None:
    own = _owned()
    now_ms = int(time.time() * 1000)
    cap = 4096
    every: list[Any] = []
    longest = 0
    for i in range(3000):
        entry = (f"m{i:08d}", now_ms + 60_000 + i, b"r" * 20)
        every.append(entry)
        own.add_applied(entry, now_ms, cap)
        assert own.applied is not None
        longest = max(longest, len(own.applied))
    kept = dedup.trim_applied(every, now_ms, cap)
    assert longest <= 2 * len(kept) + 40  # bounded: at most about twice what a trim keeps
    assert own.applied_now() == kept  # what a flush or a migration takes
    assert own.untrimmed == 0
    # An expired head is dropped as before.
    own.add_applied(("late", now_ms + 120_000, None), now_ms, cap)
    assert own.applied_now()[-1][0] == "late"


def test_a_change_not_kept_forgets_its_id() -> None:
    own = _owned()
    now_ms = int(time.time() * 1000)
    first = ("a", now_ms + 10_000, None)
    second = ("b", now_ms + 10_000, None)
    own.add_applied(first, now_ms, 1024)
    own.add_applied(second, now_ms, 1024)
    own.drop_applied(second)
    assert own.applied_now() == [first]
    own.drop_applied(second)  # not the newest any more: nothing happens
    assert own.applied_now() == [first]


async def test_eventual_writes_do_not_rescan_the_recent_ids(mesh_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each acknowledged change used to trim the whole list of recent ids (every id of the
    last deadline + 1 s): quadratic in the write rate. Now the entries scanned by trims
    grow linearly with the writes, and the flush stores every id."""
    # Counted on the write path only (the action's hook, in the worker's context): a flush
    # trims the whole list once per flush_interval, and on a loaded machine the 400 writes
    # span more flushes.
    scanned = [0]
    writing: contextvars.ContextVar[bool] = contextvars.ContextVar("writing", default=False)
    real = dedup.trim_applied
    real_after = ownership_module.Ownership.after_action

    def counting(applied: Any, now_ms: int, max_bytes: int = dedup.APPLIED_MAX_BYTES) -> Any:
        if writing.get():
            scanned[0] += len(applied)
        return real(applied, now_ms, max_bytes)

    async def after_action(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = writing.set(True)
        try:
            return await real_after(self, *args, **kwargs)
        finally:
            writing.reset(token)

    monkeypatch.setattr(ownership_module, "trim_applied", counting)
    monkeypatch.setattr(owned_module, "trim_applied", counting, raising=False)
    monkeypatch.setattr(ownership_module.Ownership, "after_action", after_action)
    (n1,) = await nodes(mesh_factory, "n1", kinds=KINDS)
    ref = n1.ref("Tally/applied")
    writes = 400
    for i in range(1, writes + 1):
        assert await ref.call("add", timeout=30) == i
    assert 0 < scanned[0] <= 4 * writes, f"{scanned[0]} entries scanned for {writes} writes"
    store = node_of(n1).state

    async def flushed() -> bool:
        loaded = await store.load("Tally", "applied")
        return loaded.data == {"n": writes}

    await wait_for(flushed, timeout=5, what="stored behind")
    loaded = await store.load("Tally", "applied")
    assert len(loaded.applied) == writes  # every id, each still within its deadline + 1 s
