"""A cluster node process for the durable delivery chaos tests (``tests/test_delivery_chaos.py``).

Usage: ``python -m tests._delivery_host URLS PREFIX NODE_ID [OPTIONS_JSON]``

Joins the cluster as ``NODE_ID`` with ``ClusterSettings`` built from ``OPTIONS_JSON``
(lease 1.5 s and no rebalancer unless given; its ``"delivery"`` object becomes the
:class:`DeliverySettings`), so it consumes its share of the durable inbox partitions.
Hosts ``Counter`` and ``Crasher`` (whose ``boom`` kills the process), prints ``READY``
and serves until SIGTERM; then prints ``STATS {json}`` (its ``natsagents_*_total``
counters: durable outcomes, duplicates …), closes and prints ``STOPPED``. Logs go to
stderr at ``$CLUSTER_HOST_LOG`` (default ``WARNING``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from natsagents import Agent, ClusterSettings, DeliverySettings, Mesh, action
from tests.agents import Counter  # a persisted counter: ``add`` returns the new total


class Crasher(Agent):
    """``boom`` kills the process that runs it: a poison message that crashes its host."""

    @action
    async def boom(self) -> None:
        sys.stderr.flush()
        os._exit(3)


def counters(mesh: Mesh) -> dict[str, float]:
    """This process's ``natsagents_*_total`` samples, keyed ``metric{labels}``."""
    out: dict[str, float] = {}
    for family in mesh.metrics.registry.collect():
        if not family.name.startswith("natsagents_"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                key = f"{sample.name}{{{labels}}}"
                out[key] = out.get(key, 0.0) + sample.value
    return out


def settings(node_id: str, options: dict[str, Any]) -> ClusterSettings:
    options = dict(options)
    options.setdefault("lease", 1.5)
    options.setdefault("rebalance", False)
    delivery = dict(options.pop("delivery", {}))
    if "backoff" in delivery:
        delivery["backoff"] = tuple(delivery["backoff"])
    return ClusterSettings(node_id=node_id, delivery=DeliverySettings(**delivery), **options)


async def main(urls: str, prefix: str, node_id: str, options: dict[str, Any]) -> None:
    logging.basicConfig(
        level=os.environ.get("CLUSTER_HOST_LOG", "WARNING"),
        stream=sys.stderr,
        format=f"%(asctime)s {node_id} %(name)s %(levelname)s %(message)s",
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    mesh = await Mesh.connect(
        urls.split(","), prefix=prefix, name=node_id, cluster=settings(node_id, options), stop_timeout=5.0
    )
    try:
        await mesh.host(Counter, Crasher)
        print("READY", flush=True)
        await stop.wait()
        print("STATS " + json.dumps(counters(mesh)), flush=True)
    finally:
        await mesh.aclose()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    opts = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], opts))
