"""What keeping replies with the state costs (docs/protocol.md §8.6, §14.3).

A cluster node persists, in every state write of an agent, the ids and ok replies of the
requests still inside their reply window (deadline + 1 s), so that a successor activation
answers a resent copy with its first result. This bench drives one ``Counter`` agent
(``persistence = "action"``) with C concurrent callers (``timeout=10``) for D seconds on an
embedded JetStream server and samples the stored record:

* ``record_bytes``: the size of each write now (state + ``applied``);
* ``state_only``: the same state without ``applied``;
* ``old_policy``: the same ``applied`` list trimmed as before this change (32 newest ids,
  replies only for the newest four of at most 1 KiB): its size, computed from the same
  samples in the same run (the baseline);
* ``bytes_per_entry``: (record - state only) / entries;
* throughput with the entries kept against the same run with ``APPLIED_MAX_BYTES = 0``
  (nothing kept), measured alternately.

Usage: ``python bench/reply_window.py [--quick]``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natsagents import Agent, ClusterSettings, Mesh, action
from natsagents.cluster import ownership
from natsagents.server import NatsServer
from natsagents.state.store import StateStore, parse_applied
from natsagents.wire import codec
from natsagents.wire.ids import agent_key


class Tally(Agent):
    @action
    async def add(self, by: int = 1) -> int:
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])


def _old_policy(applied: list[tuple[str, int, bytes | None]]) -> list[tuple[str, int, bytes | None]]:
    """The trimming before this change: 32 newest ids, replies for the 4 newest <= 1 KiB."""
    kept = [a if a[2] is not None and len(a[2]) <= 1024 else (a[0], a[1], None) for a in applied[-32:]]
    with_reply = [i for i, a in enumerate(kept) if a[2] is not None]
    for i in with_reply[:-4]:
        kept[i] = (kept[i][0], kept[i][1], None)
    return kept


async def _round(mesh: Mesh, agent: str, concurrency: int, duration: float) -> dict[str, Any]:
    ref = mesh.ref("Tally", agent)
    await ref.call("add")
    stop = time.monotonic() + duration
    calls = 0

    async def loop() -> None:
        nonlocal calls
        while time.monotonic() < stop:
            await ref.call("add", timeout=10)
            calls += 1

    samples: list[tuple[int, int, int, int]] = []

    async def sample() -> None:
        bucket = mesh.cluster_node.state.bucket
        key = agent_key("Tally", agent)
        while time.monotonic() < stop:
            entry = await bucket.get(key)
            if entry is not None:
                record = codec.decode(entry.value)
                applied = list(parse_applied(record.get("applied")))
                plain = StateStore.encode(record["data"], record["epoch"])
                old = StateStore.with_extras(plain, _old_policy(applied), record.get("seq", 0))
                samples.append((len(entry.value), len(plain), len(old), len(applied)))
            await asyncio.sleep(0.05)

    started = time.monotonic()
    await asyncio.gather(sample(), *(loop() for _ in range(concurrency)))
    took = time.monotonic() - started
    return {"calls_per_s": calls / took, "samples": samples}


async def main(quick: bool) -> None:
    duration = 2.0 if quick else 5.0
    concurrency = 8
    server = NatsServer(jetstream=True).start()
    try:
        async with Mesh.connect(
            server.url, prefix="rw", cluster=ClusterSettings(node_id="b1", delivery=None, rebalance=False)
        ) as mesh:
            await mesh.host(Tally)
            kept_cap = ownership.APPLIED_MAX_BYTES
            with_rates: list[float] = []
            none_rates: list[float] = []
            samples: list[tuple[int, int, int, int]] = []
            for r in range(1 if quick else 3):
                ownership.APPLIED_MAX_BYTES = kept_cap  # type: ignore[misc]
                got = await _round(mesh, f"w{r}", concurrency, duration)
                with_rates.append(got["calls_per_s"])
                samples += got["samples"]
                ownership.APPLIED_MAX_BYTES = 0  # type: ignore[misc]
                none_rates.append((await _round(mesh, f"n{r}", concurrency, duration))["calls_per_s"])
            ownership.APPLIED_MAX_BYTES = kept_cap  # type: ignore[misc]
    finally:
        server.stop()
    steady = samples[len(samples) // 4 :] or samples  # after the window filled
    record = statistics.mean(s[0] for s in steady)
    plain = statistics.mean(s[1] for s in steady)
    old = statistics.mean(s[2] for s in steady)
    entries = statistics.mean(s[3] for s in steady)
    per_entry = (record - plain) / entries if entries else 0.0
    kept_rate, none_rate = statistics.median(with_rates), statistics.median(none_rates)
    print(f"one agent, {concurrency} callers, timeout 10 s, {duration:.0f} s rounds")
    print(f"  state only            {plain:8.0f} B per write")
    print(f"  old policy (baseline) {old:8.0f} B per write (32 ids, 4 replies)")
    biggest = max(s[0] for s in steady)
    ratio = kept_rate / none_rate
    print(f"  now                   {record:8.0f} B per write ({entries:.0f} entries in the window, max {biggest} B)")
    print(f"  per kept entry        {per_entry:8.1f} B (id, expiry, a small reply)")
    print(f"  throughput            {kept_rate:8.0f} calls/s kept vs {none_rate:.0f} nothing kept (ratio {ratio:.2f})")
    print(
        json.dumps(
            {
                "write_bytes_now": round(record),
                "write_bytes_old_policy": round(old),
                "write_bytes_state_only": round(plain),
                "ratio_write_now_old": round(record / old, 2),
                "bytes_per_kept_entry": round(per_entry, 1),
                "entries_in_window": round(entries),
                "calls_per_s_kept": round(kept_rate),
                "calls_per_s_nothing_kept": round(none_rate),
                "ratio_throughput_kept_none": round(kept_rate / none_rate, 2),
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
