"""The degraded write queue file (``cluster.write_queue``): order, bounds, done marks,
recovery after a restart, and garbage in the file (never a crash)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

from natsagents.cluster.write_queue import MAGIC, QueuedWrite, QueueFull, WriteQueue
from natsagents.wire import codec


def _write(n: int, *, body: bytes = b"\x81\xa2by\x01") -> QueuedWrite:
    return QueuedWrite(
        f"msg-{n}",
        "Counter",
        f"c{n % 3}",
        "add",
        {"Na-Proto": "1", "Na-Action": "add", "Na-Msg-Id": f"msg-{n}", "Na-Delivery": "exactly_once"},
        body,
        1.5 + n,
        "exactly_once",
    )


async def test_writes_survive_a_restart_in_order_and_done_ones_are_not_replayed(tmp_path: Path) -> None:
    path = tmp_path / "n1.degraded"
    queue = WriteQueue(path)
    assert queue.open() == 0
    for n in range(5):
        assert await queue.put(_write(n)) == n + 1
    assert await queue.put(_write(2)) == 3  # the same message id: queued once
    await queue.done("msg-0")
    await queue.done("msg-3")
    queue.close()  # as a crash: nothing else written

    again = WriteQueue(path)
    assert again.open() == 3
    assert [w.message_id for w in again.pending()] == ["msg-1", "msg-2", "msg-4"]
    assert again.pending()[0] == _write(1)
    for w in again.pending():
        await again.done(w.message_id)
    assert path.stat().st_size == 0  # an empty queue truncates its file
    again.close()
    assert WriteQueue(path).open() == 0


async def test_the_queue_is_bounded_in_writes_and_bytes(tmp_path: Path) -> None:
    queue = WriteQueue(tmp_path / "n.degraded", max_writes=3, max_bytes=10_000)
    queue.open()
    for n in range(3):
        await queue.put(_write(n))
    with pytest.raises(QueueFull):
        await queue.put(_write(3))
    await queue.done("msg-0")
    await queue.put(_write(3))
    small = WriteQueue(tmp_path / "m.degraded", max_writes=100, max_bytes=2_000)
    small.open()
    await small.put(_write(0, body=b"x" * 1000))
    with pytest.raises(QueueFull):
        await small.put(_write(1, body=b"x" * 1000))
    queue.close()
    small.close()


def _frame(record: object) -> bytes:
    payload = codec.encode(record)
    return struct.pack(">4sII", MAGIC, len(payload), zlib.crc32(payload)) + payload


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 7,  # a torn header
        b"NAQ1\x00\x00\x00\x10\x00\x00\x00\x00abc",  # a torn payload
        b"XXXX" + b"\x00" * 40,  # a bad magic
        struct.pack(">4sII", MAGIC, 2**31, 0),  # a huge length
        struct.pack(">4sII", MAGIC, 3, 12345) + b"\x93\x01\x02",  # a bad CRC
        _frame([1, 2, 3]),  # not a map
        _frame({"op": "put", "id": "x y", "kind": "Counter"}),  # not a valid write
        _frame({**_write(9).to_record(), "headers": {"A": "x\r\ny"}}),  # a header that cannot be sent
        _frame({"op": "launch"}),
        os.urandom(4096),
    ],
)
async def test_garbage_in_the_file_is_set_aside_and_the_valid_writes_are_kept(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "n.degraded"
    queue = WriteQueue(path)
    queue.open()
    await queue.put(_write(1))
    await queue.put(_write(2))
    queue.close()
    with path.open("ab") as f:
        f.write(garbage)
    again = WriteQueue(path)
    assert again.open() == 2  # never raises
    assert [w.message_id for w in again.pending()] == ["msg-1", "msg-2"]
    assert again.moved_to is not None and again.moved_to.exists()  # kept for an operator
    assert again.moved_to.read_bytes().endswith(garbage)
    await again.put(_write(3))  # and the queue works on
    again.close()
    third = WriteQueue(path)
    assert third.open() == 3 and third.moved_to is None
    third.close()


async def test_a_file_of_pure_garbage_gives_an_empty_queue(tmp_path: Path) -> None:
    path = tmp_path / "n.degraded"
    path.write_bytes(os.urandom(100_000))
    queue = WriteQueue(path)
    assert queue.open() == 0
    assert queue.discarded == 100_000
    queue.close()
