"""A cluster node process for the chaos tests (``tests/test_cluster_chaos.py``).

Usage: ``python -m tests._cluster_host URLS PREFIX NODE_ID [OPTIONS_JSON]``

Joins the cluster as ``NODE_ID`` (``ClusterSettings`` built from ``OPTIONS_JSON``, lease
1.5 s unless given), hosts ``Counter`` (restart transient) and ``PermCounter`` (restart
permanent), prints ``READY`` and serves until SIGTERM. On SIGTERM it drains (moves every
agent to the other nodes), prints ``DRAINED {json}``, closes, prints
``STATS {json}`` (its counters: state saves, fencing, migrations …) and ``STOPPED``.
Logs go to stderr at ``$CLUSTER_HOST_LOG`` (default ``WARNING``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from natsagents import ClusterSettings, Mesh
from tests.agents import Counter  # a persisted counter: ``add`` returns the new total


class PermCounter(Counter):
    """The same counter, re-placed by the leader when its node dies."""

    restart = "permanent"


def _counters(mesh: Mesh) -> dict[str, float]:
    """Sample values of this process's counters, keyed ``metric{labels}``."""
    out: dict[str, float] = {}
    registry = mesh.metrics.registry
    for family in registry.collect():
        if not family.name.startswith("natsagents_"):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = out.get(f"{sample.name}{{{labels}}}", 0.0) + sample.value
    return out


async def main(urls: str, prefix: str, node_id: str, options: dict[str, Any]) -> None:
    logging.basicConfig(
        level=os.environ.get("CLUSTER_HOST_LOG", "WARNING"),
        stream=sys.stderr,
        format=f"%(asctime)s {node_id} %(name)s %(levelname)s %(message)s",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    options.setdefault("lease", 1.5)
    options.setdefault("delivery", None)  # these chaos tests are about the cluster core
    settings = ClusterSettings(node_id=node_id, **options)
    mesh = await Mesh.connect(urls.split(","), prefix=prefix, name=node_id, cluster=settings, stop_timeout=5.0)
    try:
        await mesh.host(Counter, PermCounter)
        print("READY", flush=True)
        await stop.wait()
        drained = await mesh.drain()
        print("DRAINED " + json.dumps(drained), flush=True)
    finally:
        await mesh.aclose()
    try:
        print("STATS " + json.dumps(_counters(mesh)), flush=True)
    except Exception as exc:  # diagnostics only
        print(f"STATS {{}} ({exc})", flush=True)
    print("STOPPED", flush=True)


if __name__ == "__main__":
    opts = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], opts))
