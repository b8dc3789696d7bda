"""The security issue's fuzz requirement: hostile and mutated messages at every subject of
a live two-node cluster whose hosts run in their own processes (harness: ``tests/fuzz.py``).

``test_fuzz_bounded`` runs in the default suite (a few thousand messages);
``test_fuzz_long`` (marked slow) sends ``$FUZZ_MESSAGES`` (default 100,000). Both print
the seed (``$FUZZ_SEED`` replays a run) and the figures, and assert the oracles: every
request answered exactly once, no reply on a hostile subject, the hosts alive and
answering, the canaries exact, the hosts' RSS growth bounded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from natsagents.server import NatsServer
from tests.chaos.test_cluster_chaos import host_processes
from tests.fuzz import HOST_OPTIONS, NODES, Fuzzer, Report, fuzz_seed
from tests.fuzz_agents import FUZZ_KINDS

MiB = 1024 * 1024


async def fuzz(
    nats_url: str, prefix: str, tmp_path: Path, messages: int, *, probe_every: int, monitor_url: str | None = None
) -> Report:
    seed = fuzz_seed()
    print(f"fuzz seed {seed} (FUZZ_SEED={seed} replays it)")
    spec = {
        "kinds": ["Canary", *FUZZ_KINDS],
        "cluster": HOST_OPTIONS,
        "stats": "before_close",
    }
    async with host_processes(nats_url, prefix, tmp_path) as launch:
        hosts = {node: await launch(node, spec) for node in NODES}
        fuzzer = Fuzzer(
            nats_url,
            prefix,
            {node: host.proc.pid for node, host in hosts.items()},
            lambda node: hosts[node].running,
            seed=seed,
            probe_every=probe_every,
            monitor_url=monitor_url,
        )
        try:
            await fuzzer.start()
            report = await fuzzer.run(messages)
        finally:
            await fuzzer.close()
        for node, host in hosts.items():
            if host.running:
                await host.terminate()
                report.host_stats[node] = host.reported("STATS")
    print(report.text())
    return report


def check(report: Report, rss_growth_mib: float) -> None:
    """The oracles. RSS: a host decodes one body at a time, each within ~40 MiB
    (``wire.codec``), and holds at most 64 MiB of large decoded bodies for running handlers
    (``runtime.budget``); what RSS keeps beyond the agents' own state is the C allocator's
    high-water mark from those. With seed 3626751743 the hosts grew 942 MiB (a garbage state
    record kept alive by the error it raised, on every activation attempt: fixed); now
    <= 32 MiB at their peak with it and two other seeds. A leak of the requests themselves
    (100,000 of them, kilobytes each) still breaks the bound."""
    assert not report.failures(), "\n".join(report.failures())
    for node in NODES:
        growth = (report.rss_after[node] - report.rss_before[node]) / MiB
        assert growth < rss_growth_mib, f"{node}: RSS grew {growth:.0f} MiB"
    assert report.probes >= 2 and all(n > 0 for n in report.canary_expected.values())


@pytest.mark.timeout(180)  # about 20 s; more on a loaded machine
async def test_fuzz_bounded(nats_server: NatsServer, mesh_prefix: str, tmp_path: Path) -> None:
    report = await fuzz(
        nats_server.url, mesh_prefix, tmp_path, 3000, probe_every=500, monitor_url=nats_server.monitor_url
    )
    # One body decoded at a time (<= ~40 MiB), the decode budget (64 MiB), the fuzz agents'
    # state and the allocator's slack: seen <= 32 MiB (seeds 3626751743, 1, 2024; it was
    # 942 MiB with the first). Per-body bounds: test_decode_bombs.py, test_decode_limits.py.
    check(report, rss_growth_mib=160)


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
async def test_fuzz_long(nats_server: NatsServer, mesh_prefix: str, tmp_path: Path) -> None:
    messages = int(os.environ.get("FUZZ_MESSAGES", "100000"))
    report = await fuzz(
        nats_server.url, mesh_prefix, tmp_path, messages, probe_every=1000, monitor_url=nats_server.monitor_url
    )
    # 60,000 messages: +160 MiB, growing with the agents left active (870 at the end, each
    # keeping what the fuzz gave it). 100,000 (seed 2162413866): peak 263 MiB; with the
    # fixes in security.md ("Fuzzing") 162 MiB on a loaded machine, 328 MiB on an idle one.
    check(report, rss_growth_mib=512)
