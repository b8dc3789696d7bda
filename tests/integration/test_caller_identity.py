"""Authenticated callers and action policies (security issue, item 9).

Before: ``Na-Caller`` was whatever the caller wrote (an agent saw ``caller='trusted-ops'``
from user ``caller2``) and nothing restricted which callers may invoke which actions.
Now a caller with an identity signs each request (protocol §4.4), a host verifies the
signature against the keys it trusts, exposes the verified name as
``self.context.caller_identity`` and enforces ``@action(allow=…)``, ``Agent.allow`` and
the mesh's ``default_allow`` with an ``unauthorized`` reply before the handler runs.

The raw peers below sign from the protocol text with ``nkeys`` and ``hashlib`` only (not
the SDK's helper), as a Node.js peer with ``nkeys.js`` would. Every test here fails on the
code before the change (``@action(allow=…)`` and ``Mesh.connect(identity=…)`` did not
exist; a forged ``Na-Caller`` or an unsigned request ran any action)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import nats
import nkeys
import pytest

from natsagents import (
    ActionDefinitionError,
    Agent,
    ClusterSettings,
    ConfigurationError,
    Identity,
    Mesh,
    TrustedCaller,
    Unauthorized,
    action,
)
from natsagents.delivery.settings import DeliverySettings
from natsagents.testing import wait_for
from natsagents.wire import envelope
from natsagents.wire.subjects import agent_subject, durable_subject

FAST = DeliverySettings(partitions=2, max_deliver=3, backoff=(0.02,), ack_wait=5.0, attempt_timeout=5.0)


def new_seed() -> str:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


def public_key(seed: str) -> str:
    return str(nkeys.from_seed(bytearray(seed.encode())).public_key.decode())


OPS, ALICE, BOB, STRANGER = new_seed(), new_seed(), new_seed(), new_seed()
TRUSTED = {
    public_key(OPS): "ops",
    public_key(ALICE): TrustedCaller("alice", frozenset({"admin"})),
    public_key(BOB): "bob",
}


class Vault(Agent):
    """Kind-level policy ``ops`` or role ``admin``; ``rotate`` only ``ops``; ``ping`` anyone."""

    allow = ["ops", "role:admin"]
    runs = 0
    holding = False
    release: asyncio.Event | None = None

    @action
    async def add(self, by: int = 1) -> int:
        Vault.runs += 1
        self.state["n"] = self.state.get("n", 0) + by
        return int(self.state["n"])

    @action
    async def whoami(self) -> dict[str, Any]:
        ctx = self.context
        return {"identity": ctx.caller_identity, "roles": sorted(ctx.caller_roles), "caller": ctx.caller}

    @action(allow=["ops"])
    async def rotate(self) -> str:
        return "rotated"

    @action(allow="anyone")
    async def ping(self) -> str | None:
        return self.context.caller_identity

    @action
    async def hold(self) -> str:
        assert Vault.release is not None
        Vault.holding = True
        await Vault.release.wait()
        return "released"

    @action
    async def note(self, text: str) -> int:
        return len(text)


class Plain(Agent):
    """No policy of its own: the mesh's ``default_allow`` applies."""

    @action
    async def whoami(self) -> str | None:
        return self.context.caller_identity

    @action(allow="anyone")
    async def ping(self) -> str:
        return "pong"


# -- signing from the protocol text (§4.4), as another language would ------------------------


def spec_sign(seed: str, subject: str, headers: dict[str, str], body: bytes, expires_ms: int) -> dict[str, str]:
    """The headers plus ``Na-Caller-Key``, ``Na-Caller-Expires`` and ``Na-Caller-Sig``,
    computed as protocol §4.4 describes (nkeys + hashlib, no natsagents code)."""
    pair = nkeys.from_seed(bytearray(seed.encode()))
    out = {**headers, "Na-Caller-Key": pair.public_key.decode(), "Na-Caller-Expires": str(expires_ms)}
    fields = [
        "Na-Msg-Id",
        "Na-Action",
        "Na-Caller-Expires",
        "Na-Deadline",
        "Na-Delivery",
        "Na-Reply-Mode",
        "Na-Encoding",
    ]
    lines = ["natsagents-caller-v1", subject, *(out.get(f, "") for f in fields), hashlib.sha256(body).hexdigest()]
    signature = pair.sign(("\n".join(lines) + "\n").encode())
    out["Na-Caller-Sig"] = base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    return out


def now_ms() -> int:
    return int(time.time() * 1000)


def request_headers(action_name: str, **extra: str) -> dict[str, str]:
    return {"Na-Proto": "1", "Na-Action": action_name, "Na-Msg-Id": envelope.new_message_id(), **extra}


@pytest.fixture
async def peer(nats_url: str) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_url)
    try:
        yield nc
    finally:
        await nc.close()


async def raw_request(nc: Any, subject: str, body: bytes, headers: dict[str, str]) -> tuple[str, Any, float]:
    """Status, decoded body and seconds taken of one request to an active agent."""
    for _ in range(50):
        started = time.monotonic()
        try:
            reply = await nc.request(subject, body, timeout=5, headers=headers)
            break
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.02)  # the server's early no-responders after a subscribe (protocol §7.2)
    took = time.monotonic() - started
    return (reply.headers or {}).get("Na-Status", ""), msgpack.unpackb(reply.data) if reply.data else None, took


async def a_host(mesh_factory: Any, **options: Any) -> Mesh:
    host = await mesh_factory(name="host", trusted_callers=TRUSTED, **options)
    await host.host(Vault, Plain)
    return host


# -- tests ---------------------------------------------------------------------------------


async def test_a_signed_call_from_a_trusted_key_passes_and_the_handler_sees_who_calls(mesh_factory: Any) -> None:
    await a_host(mesh_factory)
    ops = await mesh_factory(name="ops-client", identity=Identity.from_seed(OPS))
    alice = await mesh_factory(name="trusted-ops", identity=Identity.from_seed(ALICE))
    assert await ops.ref("Vault/v").call("whoami") == {"identity": "ops", "roles": [], "caller": "ops-client"}
    # Na-Caller stays what the caller wrote; the identity is the verified one.
    assert await alice.ref("Vault/v").call("whoami") == {
        "identity": "alice",
        "roles": ["admin"],
        "caller": "trusted-ops",
    }
    assert await ops.ref("Vault/v").call("add", by=2) == 2
    assert await ops.ref("Vault/v").send("add") is None
    assert await ops.ref("Vault/v").call("add") == 4  # the acknowledged send ran, signed, too
    anonymous = await mesh_factory(name="anonymous")
    assert await anonymous.ref("Vault/v").call("ping") is None  # public action, unsigned
    assert await ops.ref("Vault/v").call("ping") == "ops"  # public action, signed: still verified


async def test_an_allowed_identity_passes_and_a_denied_one_is_refused_at_once(mesh_factory: Any) -> None:
    await a_host(mesh_factory)
    ops = await mesh_factory(name="ops", identity=Identity.from_seed(OPS))
    alice = await mesh_factory(name="alice", identity=Identity.from_seed(ALICE))
    bob = await mesh_factory(name="bob", identity=Identity.from_seed(BOB))
    anonymous = await mesh_factory(name="anonymous")
    assert await alice.ref("Vault/d").call("add") == 1  # role admin, kind-level policy
    assert await ops.ref("Vault/d").call("rotate") == "rotated"
    # The agent is busy with a handler that does not finish: refusals do not queue behind it.
    Vault.release = asyncio.Event()
    held = asyncio.ensure_future(ops.ref("Vault/d").call("hold", timeout=30))
    Vault.holding = False
    await wait_for(lambda: Vault.holding, what="hold running")
    try:
        for who, ref_action, reason in (
            (bob, "add", "denied"),
            (alice, "rotate", "denied"),  # the action's own policy is narrower than the kind's
            (anonymous, "add", "unsigned"),
            (anonymous, "no_such_action", "unsigned"),  # the kind's policy covers unknown actions
        ):
            started = time.monotonic()
            with pytest.raises(Unauthorized) as err:
                await who.ref("Vault/d").call(ref_action, timeout=10)
            assert time.monotonic() - started < 1.0
            assert err.value.remote and err.value.details["reason"] == reason
            assert (err.value.agent, err.value.action) == ("Vault/d", ref_action)
        started = time.monotonic()
        with pytest.raises(Unauthorized):
            await bob.ref("Vault/d").send("add")  # an acknowledged send is refused, not acknowledged
        assert time.monotonic() - started < 1.0
        assert not held.done()
    finally:
        Vault.release.set()
    assert await held == "released"
    assert await ops.ref("Vault/d").call("add") == 2  # bob's calls never ran


async def test_kind_level_policy_and_the_mesh_wide_default(mesh_factory: Any) -> None:
    await a_host(mesh_factory, default_allow=["bob"])
    bob = await mesh_factory(name="bob", identity=Identity.from_seed(BOB))
    ops = await mesh_factory(name="ops", identity=Identity.from_seed(OPS))
    anonymous = await mesh_factory(name="anonymous")
    assert await bob.ref("Plain/p").call("whoami") == "bob"  # the mesh's default admits bob
    for who in (ops, anonymous):
        with pytest.raises(Unauthorized):
            await who.ref("Plain/p").call("whoami")
    assert await anonymous.ref("Plain/p").call("ping") == "pong"  # allow="anyone" overrides it
    with pytest.raises(Unauthorized):
        await bob.ref("Vault/k").call("add")  # the kind's own policy overrides the default
    assert await ops.ref("Vault/k").call("add") == 1
    # Without any default (the default default): everyone, as before.
    open_host = await mesh_factory(name="open", prefix="o" + os.urandom(4).hex(), trusted_callers=TRUSTED)
    await open_host.host(Plain)
    caller = await mesh_factory(name="c", prefix=open_host.prefix)
    assert await caller.ref("Plain/p").call("whoami") is None


async def test_forged_unknown_and_stale_signatures_are_refused_at_once(mesh_factory: Any, peer: Any) -> None:
    host = await a_host(mesh_factory)
    await host.spawn("Vault/f")
    await host.spawn("Vault/other")
    subject = agent_subject(host.prefix, "Vault", "f")
    body = msgpack.packb({"by": 1})
    runs = Vault.runs

    def signed(seed: str = OPS, *, to: str = subject, data: bytes = body, expires: int | None = None) -> dict[str, str]:
        return spec_sign(seed, to, request_headers("add"), data, expires or now_ms() + 30_000)

    good = signed()
    flipped = dict(good)
    sig = bytearray(base64.urlsafe_b64decode(good["Na-Caller-Sig"] + "=="))
    sig[10] ^= 0x01
    flipped["Na-Caller-Sig"] = base64.urlsafe_b64encode(bytes(sig)).rstrip(b"=").decode()
    other_key = dict(good, **{"Na-Caller-Key": public_key(BOB)})  # ops's signature under bob's key
    cases = [
        ("unknown key", signed(STRANGER), body, subject, "unknown_key"),
        ("flipped byte", flipped, body, subject, "bad_signature"),
        ("another key", other_key, body, subject, "bad_signature"),
        ("another body", signed(data=msgpack.packb({"by": 1000})), body, subject, "bad_signature"),
        ("another action", dict(good, **{"Na-Action": "rotate"}), body, subject, "bad_signature"),
        ("replay to another agent", good, body, agent_subject(host.prefix, "Vault", "other"), "bad_signature"),
        ("expired", signed(expires=now_ms() - 1), body, subject, "expired"),
        ("valid too long", signed(expires=now_ms() + 3_600_000), body, subject, "too_far"),
        ("no signature", dict(good, **{"Na-Caller-Sig": ""}), body, subject, "malformed"),
        ("half a signature", {k: v for k, v in good.items() if k != "Na-Caller-Sig"}, body, subject, "malformed"),
    ]
    for what, hdrs, data, to, reason in cases:
        status, reply, took = await raw_request(peer, to, data, hdrs)
        assert (status, reply["details"]["reason"]) == ("unauthorized", reason), what
        assert took < 1.0, what
    assert Vault.runs == runs  # nothing ran
    status, reply, _ = await raw_request(peer, subject, body, good)  # the genuine one still runs
    assert (status, reply) == ("ok", 1)
    # Signed for a public action on the same host: a bad signature is refused there too.
    ping = spec_sign(OPS, subject, request_headers("ping"), b"", now_ms() + 30_000)
    assert (await raw_request(peer, subject, b"", dict(ping, **{"Na-Caller-Sig": flipped["Na-Caller-Sig"]})))[0] == (
        "unauthorized"
    )
    assert (await raw_request(peer, subject, b"", ping))[:2] == ("ok", "ops")


async def test_a_replay_to_the_same_agent_never_runs_twice(mesh_factory: Any, peer: Any) -> None:
    """A genuine resend (same id, same bytes) gets the dedup's stored reply; once the
    agent forgot it (here: it was deactivated and activated again), the host still
    remembers that the signed message ran and answers ``already_applied``."""
    host = await a_host(mesh_factory)
    await host.spawn("Vault/r")
    subject = agent_subject(host.prefix, "Vault", "r")
    body = msgpack.packb({"by": 5})
    hdrs = spec_sign(ALICE, subject, request_headers("add"), body, now_ms() + 60_000)
    assert (await raw_request(peer, subject, body, hdrs))[:2] == ("ok", 5)
    assert (await raw_request(peer, subject, body, hdrs))[:2] == ("ok", 5)  # a resend: the same reply
    assert await host._host.deactivate("Vault", "r")
    await host.spawn("Vault/r")
    status, _, took = await raw_request(peer, subject, body, hdrs)
    assert status == "already_applied" and took < 1.0
    ops = await mesh_factory(name="ops", identity=Identity.from_seed(OPS))
    assert await ops.ref("Vault/r").call("add", by=0) == 0  # a fresh activation: nothing was applied twice


async def test_a_forged_na_caller_gives_no_rights(mesh_factory: Any, peer: Any) -> None:
    class Ops(Agent):
        allow = ["trusted-ops"]

        @action
        async def shutdown(self) -> str:
            return f"done for {self.context.caller_identity}"

    host = await mesh_factory(name="host", trusted_callers={public_key(OPS): "trusted-ops"})
    await host.host(Ops)
    await host.spawn("Ops/o")
    subject = agent_subject(host.prefix, "Ops", "o")
    status, reply, took = await raw_request(
        peer, subject, b"", request_headers("shutdown", **{"Na-Caller": "trusted-ops"})
    )
    assert (status, reply["details"]["reason"]) == ("unauthorized", "unsigned") and took < 1.0
    impostor = await mesh_factory(name="trusted-ops")  # Na-Caller: trusted-ops, no signature
    with pytest.raises(Unauthorized):
        await impostor.ref("Ops/o").call("shutdown")
    bob = await mesh_factory(name="trusted-ops-2", identity=Identity.from_seed(BOB))  # signed, untrusted key
    with pytest.raises(Unauthorized, match="not trusted"):
        await bob.ref("Ops/o").call("shutdown")
    real = await mesh_factory(name="whatever", identity=Identity.from_seed(OPS))
    assert await real.ref("Ops/o").call("shutdown") == "done for trusted-ops"


async def test_a_peer_signs_from_the_protocol_text(mesh_factory: Any, peer: Any) -> None:
    """§4.4 alone is enough to sign: a compressed body, a deadline and an acknowledged send
    included; and the SDK signs the same bytes the same way (ed25519 is deterministic)."""
    host = await a_host(mesh_factory)
    await host.spawn("Vault/n")
    subject = agent_subject(host.prefix, "Vault", "n")
    body = msgpack.packb({"by": 3})
    deadline = now_ms() + 10_000
    hdrs = spec_sign(ALICE, subject, request_headers("add", **{"Na-Deadline": str(deadline)}), body, deadline + 1000)
    assert (await raw_request(peer, subject, body, hdrs))[:2] == ("ok", 3)
    packed = envelope.deflate(msgpack.packb({"text": "x" * 300}))
    assert packed is not None
    hdrs = spec_sign(ALICE, subject, request_headers("note", **{"Na-Encoding": "deflate"}), packed, deadline)
    assert (await raw_request(peer, subject, packed, hdrs))[:2] == ("ok", 300)  # the digest is of the bytes sent
    hdrs = spec_sign(ALICE, subject, request_headers("add", **{"Na-Reply-Mode": "accept"}), body, deadline)
    assert (await raw_request(peer, subject, body, hdrs))[:2] == ("ok", None)
    sdk = {"Na-Msg-Id": "Zt3qXv9LbQ2mWc7RkP4sHA", "Na-Action": "add", "Na-Deadline": "1893456000000"}
    mine = dict(sdk)
    Identity.from_seed(ALICE).sign(subject, mine, body, 1893456001000)
    assert mine == spec_sign(ALICE, subject, sdk, body, 1893456001000)


async def test_the_worked_example_of_the_protocol(tmp_path: Path) -> None:
    """The canonical bytes and signature printed in protocol §4.4."""
    seed = "SUAAAAICAMCAKBQHBAEQUCYMBUHA6EARCIJRIFIWC4MBSGQ3DQOR4H776Y"  # bytes 0..31: a test key
    headers = {"Na-Msg-Id": "Zt3qXv9LbQ2mWc7RkP4sHA", "Na-Action": "add", "Na-Deadline": "1893456000000"}
    body = bytes.fromhex("81a2627902")
    signed = spec_sign(seed, "na.agent.Counter.c-1", headers, body, 1893456001000)
    assert signed["Na-Caller-Key"] == "UAB2CB576PHBBPQ5ODORRZ2LYCMWPZGWGCN2KDK7DXOIMZASKUY3RLKK"
    assert signed["Na-Caller-Sig"] == (
        "ycE42sRstTYAI5MTH4x6tBnAJ8bW6WRv33uMdkFQ8d5sAjvZJg4mkcTlfIVjw8JRw-nWBFbpx-lh08ujyj8wCA"
    )
    canonical = (
        b"natsagents-caller-v1\nna.agent.Counter.c-1\nZt3qXv9LbQ2mWc7RkP4sHA\nadd\n1893456001000\n"
        b"1893456000000\n\n\n\n911f39958b3dadc538f9714962f363f61cda9a26801a12741acdbb7df1478b7d\n"
    )
    pair = nkeys.from_seed(bytearray(seed.encode()))
    assert base64.urlsafe_b64encode(pair.sign(canonical)).rstrip(b"=").decode() == signed["Na-Caller-Sig"]
    (tmp_path / "ops.nk").write_text(seed + "\n")
    assert Identity.from_seed(tmp_path / "ops.nk").public_key == signed["Na-Caller-Key"]


async def test_durable_calls_carry_the_signature_through_the_partition_owner(mesh_factory: Any, peer: Any) -> None:
    """The partition owner forwards the caller's headers unchanged (the signature covers the
    agent subject, not the inbox subject); an unsigned durable call to a protected action
    is dead-lettered ``unauthorized`` at its first attempt; a signed durable message stored
    again under another ``Nats-Msg-Id`` (a replay) or stored stale is dead-lettered too."""
    ops = await mesh_factory(name="ops", identity=Identity.from_seed(OPS))
    anonymous = await mesh_factory(name="anonymous")
    for i in range(10):  # stored before any node consumes: they go to the agent in batches
        sender = anonymous if i == 5 else ops  # an unsigned one among them: refused, dead-lettered
        await sender.ref("Vault/e").with_options(delivery="at_least_once").send("add", by=1)
    node = await mesh_factory(
        name="n1",
        cluster=ClusterSettings(node_id="n1", lease=1.5, rebalance=False, delivery=FAST),
        trusted_callers=TRUSTED,
    )
    await node.host(Vault)
    exactly = ops.ref("Vault/e").with_options(delivery="exactly_once")
    assert await exactly.call("add", by=2, timeout=20) == 11
    batched = node.metrics.value("natsagents_durable_batch_messages_sum", {"kind": "Vault"})
    assert batched >= 6  # each item of a batch checked on its own
    assert await exactly.call("whoami", timeout=10) == {"identity": "ops", "roles": [], "caller": "ops"}
    started = time.monotonic()
    with pytest.raises(Unauthorized):
        await anonymous.ref("Vault/e").with_options(delivery="exactly_once").call("add", by=100, timeout=10)
    assert time.monotonic() - started < 2.0
    letters = await ops.dead_letters()
    assert [(x.agent, x.error, x.deliveries) for x in letters] == [("Vault/e", "unauthorized", 1)] * 2
    # A replay: a signed message published again under another Nats-Msg-Id.
    body = msgpack.packb({"by": 1000})
    hdrs = spec_sign(
        OPS,
        agent_subject(node.prefix, "Vault", "e"),
        request_headers("add", **{"Na-Delivery": "at_least_once"}),
        body,
        now_ms() + 60_000,
    )
    js = peer.jetstream()
    inbox = durable_subject(node.prefix, "Vault", "e")
    await js.publish(inbox, body, headers={**hdrs, "Nats-Msg-Id": "replay-" + hdrs["Na-Msg-Id"]})
    stale = spec_sign(OPS, agent_subject(node.prefix, "Vault", "e"), request_headers("add"), body, now_ms() - 1)
    await js.publish(inbox, body, headers={**stale, "Nats-Msg-Id": stale["Na-Msg-Id"]})
    long = spec_sign(OPS, agent_subject(node.prefix, "Vault", "e"), request_headers("add"), body, now_ms() + 200_000)
    await js.publish(inbox, body, headers={**long, "Nats-Msg-Id": long["Na-Msg-Id"]})
    await wait_for(lambda: _dead(node) == 5, timeout=10, what="three more dead letters")
    letters = await ops.dead_letters()
    assert sorted(x.error for x in letters) == ["unauthorized"] * 5
    assert await exactly.call("add", by=0, timeout=10) == 11  # none of them ran


def _dead(node: Mesh) -> float:
    return node.metrics.value("natsagents_durable_messages_total", {"kind": "Vault", "outcome": "dead_letter"})


async def test_an_unsigned_mesh_sends_no_signature_headers(mesh_factory: Any, peer: Any) -> None:
    """The default path is unchanged: a mesh without an identity adds nothing."""
    caller = await mesh_factory(name="plain")
    seen: list[dict[str, str]] = []

    async def fake_host(msg: Any) -> None:
        seen.append(dict(msg.headers or {}))
        await peer.publish(msg.reply, b"\xc0", headers={"Na-Proto": "1", "Na-Status": "ok"})

    await peer.subscribe(agent_subject(caller.prefix, "Vault", "u"), cb=fake_host)
    await peer.flush()
    await caller.ref("Vault/u").call("add")
    signer = await mesh_factory(name="signer", identity=Identity.from_seed(OPS))
    await signer.ref("Vault/u").call("add")
    assert not any(k.startswith("Na-Caller-") for k in seen[0])
    assert {k for k in seen[1] if k.startswith("Na-Caller-")} == {"Na-Caller-Key", "Na-Caller-Expires", "Na-Caller-Sig"}


def test_malformed_policies_and_settings_are_refused(tmp_path: Path) -> None:
    for bad in ("ops", ["ok", 1], ["role:"], ["key:UNOTAKEY"], ["anyone", "ops"], ["has space"], {"ops": 1}):
        with pytest.raises(ActionDefinitionError):
            action(allow=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        action(allow="ops")

    with pytest.raises(ActionDefinitionError, match="allow"):

        class Bad(Agent):
            allow = "ops"

    with pytest.raises(ActionDefinitionError, match="name='allow'"):

        class Hidden(Agent):
            @action
            async def allow(self) -> None: ...  # type: ignore[override]

    class Fine(Agent):
        @action(name="allow", allow=[f"key:{public_key(OPS)}", "*", "role:x", "ops"])
        async def allow_(self) -> None: ...

    assert "allow" in Fine.__actions__
    for kwargs in (
        {"trusted_callers": {"UNOTAKEY": "ops"}},
        # a wrong checksum (the last character changed to another one)
        {"trusted_callers": {public_key(OPS)[:-1] + ("B" if public_key(OPS).endswith("A") else "A"): "ops"}},
        {"trusted_callers": {public_key(OPS): "has space"}},
        {"trusted_callers": {public_key(OPS): TrustedCaller}},
        {"trusted_callers": str(tmp_path / "missing.json")},
        {"default_allow": "ops"},
        {"identity": OPS},
    ):
        with pytest.raises(ConfigurationError):
            Mesh.connect("nats://127.0.0.1:1", **kwargs)
    with pytest.raises(ConfigurationError):
        Identity.from_seed("SUNOTASEED")
    with pytest.raises(ConfigurationError):
        TrustedCaller("alice", "admin")  # type: ignore[arg-type]
    path = tmp_path / "callers.json"
    path.write_text(json.dumps({public_key(OPS): "ops", public_key(ALICE): {"name": "alice", "roles": ["admin"]}}))
    Mesh.connect("nats://127.0.0.1:1", trusted_callers=str(path))  # not awaited: arguments only
    assert repr(Identity.from_seed(OPS)) == f"Identity({public_key(OPS)})"
