"""Durable delivery in one process: exactly-once deposits, a retried payment, a dead letter.

Run it with ``python examples/ledger.py``. ``Mesh.embedded()`` starts a private
nats-server with JetStream; the mesh joins it as a one-node cluster
(``ClusterSettings``), so it persists agent state in JetStream KV and consumes the
durable inbox stream. On a real cluster the same code runs unchanged on every node.
"""

from __future__ import annotations

import asyncio

from natsagents import Agent, ClusterSettings, DeliverySettings, HandlerError, Mesh, action


class Account(Agent):
    """A balance. Its state is stored after every action (``persistence = "action"``,
    the default on a cluster node), which exactly-once delivery needs."""

    def initial_state(self) -> dict[str, int]:
        return {"balance": 0}

    @action
    async def deposit(self, amount: int) -> int:
        self.state["balance"] += amount
        return self.state["balance"]

    @action
    async def withdraw(self, amount: int) -> int:
        if amount > self.state["balance"]:
            raise ValueError(f"insufficient funds: balance {self.state['balance']}, asked {amount}")
        self.state["balance"] -= amount
        return self.state["balance"]

    @action
    async def balance(self) -> int:
        return self.state["balance"]


async def main() -> None:
    # Three attempts, quickly, before a message goes to the dead letters (defaults: 5, up to 5 s apart).
    cluster = ClusterSettings(node_id="n1", delivery=DeliverySettings(max_deliver=3, backoff=(0.05,)))
    async with Mesh.embedded(cluster=cluster) as mesh:
        await mesh.host(Account)
        alice = mesh.ref("Account/alice").with_options(delivery="exactly_once")

        # 100 deposits, pipelined into the durable inbox; each is applied exactly once.
        await mesh.send_many([("Account/alice", "deposit", {"amount": 1}) for _ in range(100)], delivery="exactly_once")
        print("balance after 100 deposits:", await alice.call("balance", timeout=10))

        # A payment with our own id: calling again (say, after a timeout) is the same payment.
        payment = alice.with_options(message_id="payment-42")
        print("payment-42:", await payment.call("withdraw", amount=30, timeout=10))
        print("payment-42 again:", await payment.call("withdraw", amount=30, timeout=10))
        print("balance:", await alice.call("balance", timeout=10))

        # A message that keeps failing ends in the dead-letter stream, not in a loop.
        try:
            await alice.call("withdraw", amount=1000, timeout=10)
        except HandlerError as exc:
            print("withdraw 1000:", exc.code)
        for letter in await mesh.dead_letters():
            print(f"dead letter {letter.seq}: {letter.agent} {letter.action} after {letter.deliveries} attempts")
            # After a fix (here: enough money), a replay runs it again.
            await alice.call("deposit", amount=1000, timeout=10)
            await mesh.replay_dead_letter(letter.seq)
        print("dead letters left:", len(await mesh.dead_letters()))
        # Durable messages to one agent run in stream order: this runs after the replay.
        print("balance:", await alice.call("balance", timeout=10))


if __name__ == "__main__":
    asyncio.run(main())
