"""Retry policies, circuit breakers and bulkheads, against a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from natsagents import (
    Agent,
    BreakerSettings,
    CircuitOpen,
    CircuitState,
    ConfigurationError,
    HandlerError,
    Mesh,
    Overloaded,
    RetryPolicy,
    Unavailable,
    action,
)
from natsagents.errors import ActionDefinitionError
from natsagents.testing import wait_for


class Flaky(Agent):
    """Fails the first ``fail`` calls of each action, then answers with the attempt count."""

    def initial_state(self) -> dict[str, Any]:
        return {"plain": 0, "idem": 0}

    @action
    async def plain(self, fail: int) -> int:
        self.state["plain"] += 1
        if self.state["plain"] <= fail:
            raise RuntimeError(f"attempt {self.state['plain']} fails")
        return int(self.state["plain"])

    @action(idempotent=True)
    async def idem(self, fail: int) -> int:
        self.state["idem"] += 1
        if self.state["idem"] <= fail:
            raise RuntimeError(f"attempt {self.state['idem']} fails")
        return int(self.state["idem"])


class Hot(Agent):
    """Blocks until released; at most two of its handlers run at once per host."""

    bulkhead = 2
    max_concurrency = 4

    async def on_start(self) -> None:
        self.gate = asyncio.Event()
        self.running = 0

    @action
    async def block(self) -> str:
        self.running += 1
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return self.id

    @action(bulkhead=1)
    async def single(self) -> str:
        self.running += 1
        await self.gate.wait()
        return "single"

    @action
    async def ping(self) -> str:
        return "pong"


class Patient(Hot):
    kind = "Patient"
    bulkhead = 1
    bulkhead_wait = True


class Cold(Agent):
    @action
    async def ping(self) -> str:
        return "pong"


FAST = RetryPolicy(max_attempts=5, backoff_initial=0.01, backoff_max=0.05)


def retries(mesh: Mesh, kind: str, code: str) -> float:
    return mesh.metrics.value("natsagents_call_retries_total", {"kind": kind, "reason": f"policy_{code}"})


# -- retry policy ------------------------------------------------------------------------


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = RetryPolicy(backoff_initial=0.1, backoff_max=0.5, multiplier=2.0, jitter=0.5)
    for _ in range(50):
        assert 0.05 <= policy.backoff(1) <= 0.1
        assert 0.1 <= policy.backoff(2) <= 0.2
        assert 0.25 <= policy.backoff(10) <= 0.5
    assert RetryPolicy(jitter=0.0, backoff_initial=0.1).backoff(1) == 0.1


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"max_attempts": 1.5},
        {"backoff_initial": -1},
        {"multiplier": 0.5},
        {"jitter": 2},
        {"attempt_timeout": 0},
        {"retry_on": ["timeout"]},
    ],
)
def test_invalid_retry_policies_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**bad)


async def test_handler_errors_are_retried_only_for_idempotent_actions(mesh: Mesh) -> None:
    await mesh.host(Flaky)
    policy = RetryPolicy(max_attempts=4, backoff_initial=0.01, retry_on=frozenset({"handler_error"}))
    ref = mesh.ref("Flaky/f").with_options(retry=policy)
    with pytest.raises(HandlerError, match="attempt 1 fails"):
        await ref.call("plain", fail=2)
    assert await mesh.ref("Flaky/f").call("plain", fail=0) == 2  # ran once, not retried
    # The ref knows the class (hosted here): @action(idempotent=True) allows the retries,
    # each a new message (a copy would only get the stored error back).
    assert await ref.call("idem", fail=2) == 3
    assert retries(mesh, "Flaky", "handler_error") == 2
    # Saying so per ref works too.
    other = mesh.ref("Flaky/g").with_options(retry=policy, idempotent=True)
    assert await other.call("plain", fail=1) == 2


async def test_a_refusal_is_retried_for_any_action_until_it_goes_through(mesh: Mesh) -> None:
    await mesh.host(Hot)
    blockers = [mesh.ref(f"Hot/h{i}").request("block") for i in range(2)]
    await wait_for(lambda: all(mesh.local_agent(f"Hot/h{i}") for i in range(2)), timeout=5, what="active")
    await wait_for(
        lambda: sum(mesh.local_agent(f"Hot/h{i}").running for i in range(2)) == 2, timeout=5, what="bulkhead full"
    )
    third = mesh.ref("Hot/h2").with_options(retry=RetryPolicy(max_attempts=50, backoff_initial=0.02))
    pending = third.request("ping")
    await wait_for(lambda: retries(mesh, "Hot", "overloaded") >= 1, timeout=5, what="a refused attempt")
    for i in range(2):
        mesh.local_agent(f"Hot/h{i}").gate.set()
    assert await pending == "pong"
    assert [await b for b in blockers] == ["h0", "h1"]


async def test_the_mesh_default_policy_applies_and_a_ref_can_turn_it_off(mesh_factory: Any) -> None:
    host = await mesh_factory(name="host")
    await host.host(Hot)
    client = await mesh_factory(name="client", retry=FAST)
    blockers = [client.ref(f"Hot/d{i}").request("block") for i in range(2)]
    await wait_for(
        lambda: sum(getattr(host.local_agent(f"Hot/d{i}"), "running", 0) for i in range(2)) == 2,
        timeout=5,
        what="bulkhead full",
    )
    with pytest.raises(Overloaded):
        await client.ref("Hot/d2").with_options(retry=None).call("ping")
    assert retries(client, "Hot", "overloaded") == 0
    with pytest.raises(Overloaded):  # 5 attempts, all refused
        await client.ref("Hot/d2").call("ping")
    assert retries(client, "Hot", "overloaded") == 4
    for i in range(2):
        host.local_agent(f"Hot/d{i}").gate.set()
    assert sorted([await b for b in blockers]) == ["d0", "d1"]


# -- circuit breaker ---------------------------------------------------------------------


async def test_a_circuit_opens_fails_fast_half_opens_and_closes(mesh: Mesh, mesh_factory: Any) -> None:
    settings = BreakerSettings(failure_threshold=3, reset_timeout=0.3)
    client = await mesh_factory(name="client", circuit_breaker=settings)
    ref = client.ref("Cold/c")
    for _ in range(3):  # nobody hosts Cold yet: each call fails with "no host" (raised at
        # its deadline; with 0.1 s a slow "no host" answer in CI left only a CallTimeout)
        with pytest.raises(Unavailable):
            await ref.call("ping", timeout=2.0)
    assert client.circuit("Cold/c") is CircuitState.OPEN
    with pytest.raises(CircuitOpen) as err:
        await ref.call("ping", timeout=5)
    assert 0 < err.value.details["retry_after"] <= 0.3
    assert err.value.remote is False
    opened = {"kind": "Cold", "state": "open"}
    assert client.metrics.value("natsagents_circuit_transitions_total", opened) == 1
    assert client.metrics.value("natsagents_circuits_open", {"kind": "Cold"}) == 1
    await asyncio.sleep(0.35)  # the reset timeout itself is what is tested
    with pytest.raises(Unavailable):  # the half-open trial fails: open again
        await ref.call("ping", timeout=2.0)
    assert client.circuit("Cold/c") is CircuitState.OPEN
    assert client.metrics.value("natsagents_circuit_transitions_total", opened) == 2
    await mesh.host(Cold)
    await asyncio.sleep(0.35)
    assert await ref.call("ping") == "pong"  # the trial succeeds: closed
    assert client.circuit("Cold/c") is CircuitState.CLOSED
    assert client.metrics.value("natsagents_circuit_transitions_total", {"kind": "Cold", "state": "closed"}) == 1
    assert client.metrics.value("natsagents_circuits_open", {"kind": "Cold"}) == 0
    # Other destinations were never affected.
    assert client.circuit("Cold/other") is CircuitState.CLOSED


async def test_handler_errors_do_not_open_a_circuit(mesh: Mesh, mesh_factory: Any) -> None:
    await mesh.host(Flaky)
    client = await mesh_factory(name="client", circuit_breaker=BreakerSettings(failure_threshold=2))
    for _ in range(3):
        with pytest.raises(HandlerError):
            await client.ref("Flaky/x").call("plain", fail=10)
    assert await client.ref("Flaky/x").call("plain", fail=0) == 4


def test_invalid_breaker_settings_are_refused() -> None:
    for bad in ({"failure_threshold": 0}, {"reset_timeout": 0}, {"scope": "node"}, {"half_open_calls": 0}):
        with pytest.raises(ConfigurationError):
            BreakerSettings(**bad)  # type: ignore[arg-type]


async def test_mesh_options_are_checked(nats_url: str, mesh: Mesh) -> None:
    with pytest.raises(ConfigurationError):
        await Mesh.connect(nats_url, retry="twice")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        await Mesh.connect(nats_url, circuit_breaker=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        mesh.ref("Cold/c").with_options(retry=5)
    with pytest.raises(ConfigurationError):
        mesh.ref("Cold/c").with_options(idempotent="yes")  # type: ignore[arg-type]


# -- bulkheads -------------------------------------------------------------------------


async def test_a_full_bulkhead_refuses_while_other_kinds_keep_going(mesh: Mesh) -> None:
    await mesh.host(Hot, Cold)
    blockers = [mesh.ref(f"Hot/b{i}").request("block") for i in range(2)]
    await wait_for(
        lambda: sum(getattr(mesh.local_agent(f"Hot/b{i}"), "running", 0) for i in range(2)) == 2,
        timeout=5,
        what="bulkhead full",
    )
    with pytest.raises(Overloaded) as err:
        await mesh.ref("Hot/b2").call("ping")
    assert err.value.details["reason"] == "bulkhead"
    assert mesh.metrics.value("natsagents_rejected_total", {"kind": "Hot", "reason": "bulkhead"}) == 1
    # Another kind is not held up by Hot's full bulkhead.
    assert [await mesh.ref(f"Cold/c{i}").call("ping") for i in range(20)] == ["pong"] * 20
    for i in range(2):
        mesh.local_agent(f"Hot/b{i}").gate.set()
    assert [await b for b in blockers] == ["b0", "b1"]
    assert await mesh.ref("Hot/b2").call("ping") == "pong"  # room again


async def test_an_action_bulkhead_limits_only_that_action(mesh: Mesh) -> None:
    await mesh.host(Hot)
    first = mesh.ref("Hot/s0").request("single")
    await wait_for(lambda: mesh.local_agent("Hot/s0") is not None, timeout=5, what="active")
    await wait_for(lambda: mesh.local_agent("Hot/s0").running == 1, timeout=5, what="slot taken")
    with pytest.raises(Overloaded):
        await mesh.ref("Hot/s1").call("single")
    assert await mesh.ref("Hot/s1").call("ping") == "pong"  # same kind, other action
    mesh.local_agent("Hot/s0").gate.set()
    assert await first == "single"


async def test_a_waiting_bulkhead_queues_until_a_slot_frees_or_the_deadline(mesh: Mesh) -> None:
    await mesh.host(Patient)
    first = mesh.ref("Patient/p0").request("block")
    await wait_for(lambda: getattr(mesh.local_agent("Patient/p0"), "running", 0) == 1, timeout=5, what="running")
    second = mesh.ref("Patient/p1").request("ping")
    with pytest.raises(Exception) as late:  # waits for the slot, then its deadline passes
        await mesh.ref("Patient/p2").call("ping", timeout=0.3)
    assert late.type.__name__ in ("CallTimeout", "Overloaded")
    assert not second.done()
    mesh.local_agent("Patient/p0").gate.set()
    assert await first == "p0"
    assert await second == "pong"


def test_invalid_bulkheads_are_refused_at_definition() -> None:
    with pytest.raises(ActionDefinitionError):
        type("B1", (Agent,), {"bulkhead": 0})
    with pytest.raises(ActionDefinitionError):
        type("B2", (Agent,), {"bulkhead_wait": "yes"})
    with pytest.raises(ActionDefinitionError):
        action(bulkhead=0)
