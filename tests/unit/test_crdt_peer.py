"""A peer written from docs/protocol.md §17 alone (plain msgpack objects, no natsagents code)
merges the SDK's encodings: its result must equal the SDK's merge, in canonical form."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings

from .test_crdt_laws import ops_strategy, run

# -- the peer ---------------------------------------------------------------------------------


def atom_key(a: Any) -> tuple[int, Any]:
    return ({int: 0, str: 1, bytes: 2}[type(a)], a)


def cc_read(cc: dict[str, Any]) -> tuple[dict[str, int], set[tuple[str, int]]]:
    return dict(cc["vv"]), {(r, n) for r, n in cc["dc"]}


def cc_seen(dot: tuple[str, int], cc: tuple[dict[str, int], set[tuple[str, int]]]) -> bool:
    return dot[1] <= cc[0].get(dot[0], 0) or dot in cc[1]


def cc_union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    vv, cloud = cc_read(a)
    for r, n in b["vv"].items():
        vv[r] = max(vv.get(r, 0), n)
    cloud |= {(r, n) for r, n in b["dc"]}
    rest = []
    for r, n in sorted(cloud):  # fold the dots that extend the gap-free prefix
        if n == vv.get(r, 0) + 1:
            vv[r] = n
        elif n > vv.get(r, 0):
            rest.append([r, n])
    return {"vv": dict(sorted(vv.items())), "dc": rest}


def join_dots(d1: set[Any], c1: Any, d2: set[Any], c2: Any) -> set[Any]:
    return (d1 & d2) | {d for d in d1 - d2 if not cc_seen(d, c2)} | {d for d in d2 - d1 if not cc_seen(d, c1)}


def join_fun(f1: dict[Any, Any], c1: Any, f2: dict[Any, Any], c2: Any, both: Any) -> dict[Any, Any]:
    out = {}
    for d in set(f1) | set(f2):
        if d in f1 and d in f2:
            out[d] = both(f1[d], f2[d])
        elif d in f1 and not cc_seen(d, c2):
            out[d] = f1[d]
        elif d in f2 and not cc_seen(d, c1):
            out[d] = f2[d]
    return out


def max_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return dict(sorted({r: max(a.get(r, 0), b.get(r, 0)) for r in a.keys() | b.keys()}.items()))


def pack(x: Any) -> bytes:
    return msgpack.packb(x)


def join_store(vt: list[str], s1: Any, c1: Any, s2: Any, c2: Any) -> list[Any]:
    """Join two ORMap stores of value type ``vt`` (protocol §17.5, the ORMap table)."""
    head = vt[0]
    if head == "orset":
        e1 = {e: {tuple(d) for d in ds} for e, ds in s1}
        e2 = {e: {tuple(d) for d in ds} for e, ds in s2}
        out = []
        for e in sorted(e1.keys() | e2.keys(), key=atom_key):
            kept = join_dots(e1.get(e, set()), c1, e2.get(e, set()), c2)
            if kept:
                out.append([e, [list(d) for d in sorted(kept)]])
        return out
    if head == "ormap":
        m1, m2 = dict(s1), dict(s2)
        out = []
        for k in sorted(m1.keys() | m2.keys(), key=atom_key):
            joined = join_store(vt[1:], m1.get(k, []), c1, m2.get(k, []), c2)
            if joined:
                out.append([k, joined])
        return out
    f1 = {tuple(d): v for d, v in s1}
    f2 = {tuple(d): v for d, v in s2}
    if head == "mvreg":
        both = lambda x, y: x if pack(x) <= pack(y) else y  # noqa: E731
    else:
        both = merge
    fun = join_fun(f1, c1, f2, c2, both)
    return [[list(d), fun[d]] for d in sorted(fun)]


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    t = a["t"]
    assert b["t"] == t and a["v"] == b["v"] == 1
    if t == "gcounter":
        return {"t": t, "v": 1, "c": max_counts(a["c"], b["c"])}
    if t == "pncounter":
        return {"t": t, "v": 1, "p": max_counts(a["p"], b["p"]), "n": max_counts(a["n"], b["n"])}
    if t == "gset":
        return {"t": t, "v": 1, "e": sorted(set(a["e"]) | set(b["e"]), key=atom_key)}
    if t == "lww":
        if a["ts"] is None or b["ts"] is None:
            return a if b["ts"] is None else b
        ka, kb = (a["ts"], pack(a["x"])), (b["ts"], pack(b["x"]))
        return a if ka >= kb else b
    c1, c2 = cc_read(a["cc"]), cc_read(b["cc"])
    cc = cc_union(a["cc"], b["cc"])
    if t == "orset":
        return {"t": t, "v": 1, "e": join_store(["orset"], a["e"], c1, b["e"], c2), "cc": cc}
    if t == "mvreg":
        return {"t": t, "v": 1, "e": join_store(["mvreg"], a["e"], c1, b["e"], c2), "cc": cc}
    assert t == "ormap" and a["vt"] == b["vt"]
    return {"t": t, "v": 1, "vt": a["vt"], "e": join_store(["ormap", *a["vt"]], a["e"], c1, b["e"], c2), "cc": cc}


# -- the test -----------------------------------------------------------------------------------

NAMES = ["gcounter", "pncounter", "gset", "orset", "lww", "mvreg", "ormap_gcounter", "ormap_orset", "ormap_ormap_mvreg"]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_strategy)
def test_a_peer_from_the_document_merges_like_the_sdk(name: str, ops: list[tuple[int, int, int]]) -> None:
    history = run(name, ops)
    values = [*history.states, *history.deltas[-3:]]
    for x in values:
        for y in values:
            theirs = merge(msgpack.unpackb(x.to_wire()), msgpack.unpackb(y.to_wire()))
            assert theirs == msgpack.unpackb(x.merge(y).to_wire())
