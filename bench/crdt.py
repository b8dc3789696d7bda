"""CRDT throughput: delta mutations (mutate on one replica, apply the delta on another) and
full-state merges, per type, beside a plain-Python baseline doing the same count of dict/set
operations (pure CPU). Then the counters over the network, on a 3-server cluster started for
the run (``bench/_counters.py`` says what each variant does and guarantees): the native
JetStream counter (``mesh.counter``, ADR-49) beside the CRDT PNCounter replicated to 3
replicas over core NATS (and, durably, through an R3 stream), from 1 and from 8 concurrent
clients: increments/s, latency p50/p99 per increment, convergence; raw nats-py is the
baseline for the native counter's SDK cost. The last line is one JSON object
(``ratio_native_crdt_incr``: native ÷ CRDT increments/s with 8 clients).

    .venv/bin/python bench/crdt.py              # about 1.5 min
    .venv/bin/python bench/crdt.py --quick      # under a minute
    .venv/bin/python bench/crdt.py --no-server  # the CPU part only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info
from _counters import run_counters

from natsagents.crdt import HLC, GCounter, LWWRegister, MVRegister, ORMap, ORSet, PNCounter

REPLICAS = ("node-a", "node-b", "node-c")


def _best(fn: Callable[[int], None], n: int, runs: int) -> float:
    """Best ops/s of ``runs`` timings of ``fn(n)``."""
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t)
    return n / best


# -- delta path: mutate on A, apply the delta on B ----------------------------------------------


def delta_gcounter(n: int) -> None:
    a, b = GCounter(), GCounter()
    for _ in range(n):
        a, d = a.increment("node-a")
        b = b.apply_delta(d)


def delta_pncounter(n: int) -> None:
    a, b = PNCounter(), PNCounter()
    for i in range(n):
        a, d = a.increment("node-a", 1 if i & 1 else -1)
        b = b.apply_delta(d)


def delta_orset(n: int) -> None:  # a working set of 100 elements, add then remove
    a, b = ORSet(), ORSet()
    for i in range(n):
        e = i % 100
        a, d = a.remove(e) if i & 1 and e in a else a.add("node-a", e)
        b = b.apply_delta(d)


def delta_lww(n: int) -> None:
    clock = HLC("node-a")
    a, b = LWWRegister(), LWWRegister()
    for i in range(n):
        a, d = a.set(i, clock)
        b = b.apply_delta(d)


def delta_mvreg(n: int) -> None:
    a, b = MVRegister(), MVRegister()
    for i in range(n):
        a, d = a.set("node-a", i)
        b = b.apply_delta(d)


def delta_ormap(n: int) -> None:  # 100 keys of counters
    a, b = ORMap(GCounter), ORMap(GCounter)
    for i in range(n):
        a, d = a.update("node-a", i % 100, lambda v: v.increment("node-a"))
        b = b.apply_delta(d)


_BIG: dict[str, Any] = {}


def _big(kind: str) -> tuple[Any, Any]:
    """A state of 10,000 live entries on two replicas (built once, outside the timing)."""
    if kind not in _BIG:
        if kind == "orset":
            a: Any = ORSet()
            for i in range(10_000):
                a, _ = a.add("node-a", i)
            _BIG[kind] = (a, ORSet().merge(a))
        else:
            m: Any = ORMap(GCounter)
            for i in range(10_000):
                m, _ = m.update("node-a", i, lambda v: v.increment("node-a"))
            _BIG[kind] = (m, ORMap(GCounter).merge(m))
    return _BIG[kind]  # type: ignore[no-any-return]


def delta_orset_10k(n: int) -> None:
    a, b = _big("orset")
    for i in range(n):
        e = i % 10_000
        a, d = a.remove(e) if e in a else a.add("node-a", e)  # toggles: removes, then adds back
        b = b.apply_delta(d)


def delta_ormap_10k(n: int) -> None:
    a, b = _big("ormap")
    for i in range(n):
        a, d = a.update("node-a", i % 10_000, lambda v: v.increment("node-a"))
        b = b.apply_delta(d)


def base_set_10k(n: int) -> None:
    a, b = set(range(10_000)), set(range(10_000))
    for i in range(n):
        e = i % 10_000
        if e in a:
            a.discard(e)
            b.discard(e)
        else:
            a.add(e)
            b.add(e)


def base_map_10k(n: int) -> None:
    a = dict.fromkeys(range(10_000), 1)
    b = dict(a)
    for i in range(n):
        k = i % 10_000
        a[k] += 1
        b[k] = a[k]


def base_counter(n: int) -> None:
    a: dict[str, int] = {}
    b: dict[str, int] = {}
    for _ in range(n):
        a["node-a"] = a.get("node-a", 0) + 1
        b["node-a"] = a["node-a"]


def base_set(n: int) -> None:
    a: set[int] = set()
    b: set[int] = set()
    for i in range(n):
        e = i % 100
        if i & 1 and e in a:
            a.discard(e)
            b.discard(e)
        else:
            a.add(e)
            b.add(e)


def base_register(n: int) -> None:
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    for i in range(n):
        a["v"] = (i, time.time_ns())
        b["v"] = a["v"]


def base_map(n: int) -> None:
    a: dict[int, int] = {}
    b: dict[int, int] = {}
    for i in range(n):
        k = i % 100
        a[k] = a.get(k, 0) + 1
        b[k] = a[k]


DELTA = {
    "gcounter": (delta_gcounter, base_counter),
    "pncounter": (delta_pncounter, base_counter),
    "orset": (delta_orset, base_set),
    "lww": (delta_lww, base_register),
    "mvreg": (delta_mvreg, base_register),
    "ormap": (delta_ormap, base_map),
    "orset_10k": (delta_orset_10k, base_set_10k),
    "ormap_10k": (delta_ormap_10k, base_map_10k),
}


# -- full merges of two states of 1,000 entries -------------------------------------------------


def _states() -> dict[str, tuple[Any, Any, Callable[[], Any]]]:
    """type → (state A, state B, baseline merge of two plain values of the same size)."""
    sa, sb = ORSet(), ORSet()
    ma, mb = ORMap(GCounter), ORMap(GCounter)
    ga, gb = GCounter(), GCounter()
    for i in range(1000):
        sa, _ = sa.add("node-a", i)
        sb, _ = sb.add("node-b", i + 500)
        ma, _ = ma.update("node-a", i, lambda v: v.increment("node-a"))
        mb, _ = mb.update("node-b", i + 500, lambda v: v.increment("node-b"))
        ga, _ = ga.increment(f"r{i}")
        gb, _ = gb.increment(f"r{i + 500}", 2)
    plain_a, plain_b = set(range(1000)), set(range(500, 1500))
    da = {i: 1 for i in range(1000)}
    db = {i: 2 for i in range(500, 1500)}

    def dict_max() -> dict[int, int]:
        out = dict(da)
        for k, v in db.items():
            if v > out.get(k, 0):
                out[k] = v
        return out

    return {
        "gcounter(1000 replicas)": (ga, gb, dict_max),
        "orset(1000 elements)": (sa, sb, lambda: plain_a | plain_b),
        "ormap(1000 counters)": (ma, mb, dict_max),
    }


def _repeat(fn: Callable[[], Any]) -> Callable[[int], None]:
    def run(k: int) -> None:
        for _ in range(k):
            fn()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer operations and rounds (under a minute)")
    parser.add_argument("--no-server", action="store_true", help="skip the counters over a 3-server cluster")
    args = parser.parse_args()
    n, runs, merges = (5_000, 2, 50) if args.quick else (30_000, 3, 300)

    result: dict[str, Any] = {"machine": machine_info(), "ops": n, "runs": runs}
    rows = []
    for name, (crdt_fn, base_fn) in DELTA.items():
        crdt_ops = _best(crdt_fn, n, runs)
        base_ops = _best(base_fn, n, runs)
        ratio = crdt_ops / base_ops
        rows.append([f"delta {name}", f"{crdt_ops:,.0f}", f"{base_ops:,.0f}", f"{ratio:.3f}"])
        result[f"delta_{name}_ops"] = round(crdt_ops)
        result[f"delta_{name}_ratio"] = round(ratio, 4)
    for name, (a, b, base) in _states().items():
        crdt_ops = _best(_repeat(partial(a.merge, b)), merges, runs)
        base_ops = _best(_repeat(base), merges, runs)
        ratio = crdt_ops / base_ops
        key = name.split("(")[0]
        rows.append([f"merge {name}", f"{crdt_ops:,.0f}", f"{base_ops:,.0f}", f"{ratio:.3f}"])
        result[f"merge_{key}_ops"] = round(crdt_ops)
        result[f"merge_{key}_ratio"] = round(ratio, 4)
        encoded = a.merge(b).to_wire()
        t = time.perf_counter()
        for _ in range(merges):
            type(a).from_wire(encoded)
        result[f"decode_{key}_us"] = round((time.perf_counter() - t) / merges * 1e6)
        result[f"encoded_{key}_bytes"] = len(encoded)
    print(format_table(["operation", "crdt ops/s", "baseline ops/s", "ratio"], rows))
    print("baseline: the same count of plain dict/set operations on two plain values")
    if not args.no_server:
        counter_rows, counter_result = run_counters(args.quick)
        result.update(counter_result)
        print()
        header = ["counter", "clients", "incr/s", "p50 µs", "p99 µs", "converge ms"]
        print(format_table(header, counter_rows))
        print(
            "native: add() awaits the PubAck of an R3 counter stream (a quorum stored it, the total is exact); "
            "raw: the same request from bare nats-py (baseline);\n"
            "crdt: PNCounter delta published over core NATS, not awaited, merged by 3 replicas (nothing stored); "
            "crdt_durable: the delta stored in an R3 stream (PubAck awaited) and merged live by the replicas"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
