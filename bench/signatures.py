"""Caller signatures (docs/security.md "Authenticated callers and action policies"): what
signing and verifying a request costs.

* ``sign``: ``Identity.sign`` on a request of ``bench/request_reply.py``'s size (the
  canonical bytes, SHA-256 of the body, ed25519, base64url): the caller's CPU per request.
* ``verify``: ``Guard.admit`` on that request (trusted key lookup, expiry, canonical bytes,
  ed25519 verification, policy): the host's CPU per request, spent in its reader task.
* ``ed25519_sign_us``, ``ed25519_verify_us``: PyNaCl alone on the body, for comparison.
* ``calls``: serial ``ref.call`` latency through one nats-server, unsigned (a host without
  trusted keys) against signed (a host that trusts the caller and a kind with a policy),
  caller and host in this process: the end-to-end difference.

Usage::

    python bench/signatures.py            # about 20 s
    python bench/signatures.py --n 2000   # fewer serial calls

The last line of the output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgpack
import nkeys
from _common import machine_info, percentile

from natsagents import Agent, Identity, Mesh, TrustedCaller, action
from natsagents.agent.policy import parse_allow
from natsagents.runtime.guard import Guard
from natsagents.server import NatsServer
from natsagents.wire import envelope
from natsagents.wire.identity import call_expiry

BODY = msgpack.packb({"payload": {"user": "user-000123", "op": "update", "seq": 123456, "text": "lorem ipsum"}})


class Echo(Agent):
    @action
    async def echo(self, payload: dict) -> dict:  # type: ignore[type-arg]
        return payload


class Guarded(Agent):
    allow = ["bench"]

    @action
    async def echo(self, payload: dict) -> dict:  # type: ignore[type-arg]
        return payload


def per_op_us(fn: object, n: int) -> float:
    """The µs one call of ``fn()`` takes: the best of 5 rounds (the least disturbed by
    other load on the machine)."""
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            fn()  # type: ignore[operator]
        rounds.append((time.perf_counter() - started) / n * 1e6)
    return min(rounds)


def micro(n: int) -> dict[str, float]:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    identity = Identity.from_seed(seed)
    subject = "na.agent.Guarded.g-1"
    base = {"Na-Proto": "1", "Na-Action": "echo", "Na-Msg-Id": envelope.new_message_id()}
    expires = call_expiry(time.time() + 60, time.time())

    def sign() -> None:
        identity.sign(subject, dict(base), BODY, expires)

    signed = dict(base)
    identity.sign(subject, signed, BODY, expires)
    guard = Guard({identity.public_key: TrustedCaller("bench")}, parse_allow(["bench"], "bench"))
    guard.add_kind(Guarded)

    def verify() -> None:
        guard.admit("Guarded", "echo", subject, signed, BODY, durable=False)

    pair = nkeys.from_seed(bytearray(seed.encode()))
    raw = pair.sign(BODY)
    verify_key = pair._keys.verify_key  # PyNaCl alone, for comparison
    return {
        "sign_us": per_op_us(sign, n),
        "verify_us": per_op_us(verify, n),
        "ed25519_sign_us": per_op_us(lambda: pair.sign(BODY), n),
        "ed25519_verify_us": per_op_us(lambda: verify_key.verify(BODY, raw), n),
    }


async def calls(n: int) -> dict[str, float]:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    identity = Identity.from_seed(seed)
    out: dict[str, float] = {}
    with NatsServer() as server:
        for side in ("unsigned", "signed", "unsigned", "signed"):
            signed = side == "signed"
            host_opts = {"trusted_callers": {identity.public_key: "bench"}} if signed else {}
            async with (
                Mesh.connect(server.url, name="host", **host_opts) as host,  # type: ignore[arg-type]
                Mesh.connect(server.url, name="caller", identity=identity if signed else None) as caller,
            ):
                await host.host(Guarded if signed else Echo)
                ref = caller.ref(f"{'Guarded' if signed else 'Echo'}/e-1")
                payload = {"user": "user-000123", "op": "update", "seq": 123456, "text": "lorem ipsum"}
                for _ in range(200):
                    await ref.call("echo", payload=payload)
                lat = []
                for _ in range(n):
                    t0 = time.perf_counter_ns()
                    await ref.call("echo", payload=payload)
                    lat.append((time.perf_counter_ns() - t0) / 1000)
                lat.sort()
                out[f"{side}_p50_us"] = min(out.get(f"{side}_p50_us", 1e12), percentile(lat, 50))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000, help="operations per round / serial calls per side")
    cfg = parser.parse_args()
    result = {**micro(cfg.n), **asyncio.run(calls(cfg.n))}
    result["call_overhead_us"] = result["signed_p50_us"] - result["unsigned_p50_us"]
    for key, value in result.items():
        print(f"{key:>20}: {value:10.1f}")
    print(json.dumps({"machine": machine_info(), **{k: round(v, 1) for k, v in result.items()}}))


if __name__ == "__main__":
    main()
