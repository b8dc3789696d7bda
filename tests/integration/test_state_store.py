"""Agent state store over a real KV bucket: CAS saves, adoption fences the old owner."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import natsagents as na
from natsagents.state import FencedOff, StateStore
from natsagents.transport import ConnectSettings, Transport


@pytest.fixture
async def store(nats_url: str, mesh_prefix: str) -> AsyncIterator[StateStore]:
    t = await Transport.connect(ConnectSettings(servers=(nats_url,)))
    s = StateStore(t, mesh_prefix)
    await s.start()
    try:
        yield s
    finally:
        await t.close()


async def test_save_and_load_round_trip(store: StateStore) -> None:
    empty = await store.load("Counter", "c-1")
    assert (empty.data, empty.epoch, empty.revision) == (None, 0, 0)
    saved = await store.save("Counter", "c-1", {"n": 1}, epoch=1, revision=0)
    saved = await store.save("Counter", "c-1", {"n": 2}, epoch=1, revision=saved.revision)
    loaded = await store.load("Counter", "c-1")
    assert (loaded.data, loaded.epoch, loaded.revision) == ({"n": 2}, 1, saved.revision)


async def test_a_stale_owner_is_fenced_off_after_adoption(store: StateStore) -> None:
    old = await store.save("Counter", "user@example.com", {"n": 5}, epoch=1, revision=0)
    # A new owner (epoch 2) takes over while the old one is paused.
    new = await store.adopt("Counter", "user@example.com", epoch=2)
    assert (new.data, new.epoch) == ({"n": 5}, 2) and new.revision > old.revision
    # The old owner wakes up and tries to write: refused, and the newer state is intact.
    with pytest.raises(FencedOff) as info:
        await store.save("Counter", "user@example.com", {"n": 999}, epoch=1, revision=old.revision)
    assert info.value.agent == "Counter/user@example.com"
    assert (await store.load("Counter", "user@example.com")).data == {"n": 5}
    # An older epoch cannot adopt back.
    with pytest.raises(FencedOff):
        await store.adopt("Counter", "user@example.com", epoch=1)
    after = await store.save("Counter", "user@example.com", {"n": 6}, epoch=2, revision=new.revision)
    assert (await store.load("Counter", "user@example.com")).revision == after.revision


async def test_two_first_writers_cannot_both_win(store: StateStore) -> None:
    await store.save("Counter", "race", {"who": "a"}, epoch=1, revision=0)
    with pytest.raises(FencedOff):
        await store.save("Counter", "race", {"who": "b"}, epoch=1, revision=0)


async def test_size_limit_and_unencodable_state(nats_url: str, mesh_prefix: str) -> None:
    t = await Transport.connect(ConnectSettings(servers=(nats_url,)))
    try:
        small = StateStore(t, mesh_prefix, max_size=100)
        await small.start()
        with pytest.raises(na.PayloadTooLarge):
            await small.save("Counter", "big", {"blob": b"x" * 200}, epoch=1, revision=0)
        with pytest.raises(TypeError):
            await small.save("Counter", "obj", {"x": object()}, epoch=1, revision=0)
        assert (await small.load("Counter", "big")).revision == 0  # nothing was written
    finally:
        await t.close()
