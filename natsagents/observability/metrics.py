"""Prometheus metrics, registered in an injectable registry.

The per-message series (calls and handled messages, with their latency histograms) are
kept in plain dicts and lists by a custom collector: recording one is a dict lookup and
two additions, without the lock and label machinery of ``prometheus_client``'s metric
objects (which cost several microseconds per message on the hot path). The registry
reads them when scraped. Rare events use ordinary ``prometheus_client`` metrics.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["KindTotals", "Metrics"]

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LABELS = ("kind", "action", "outcome")


class _Cell:
    __slots__ = ("buckets", "count", "total")

    def __init__(self, size: int) -> None:
        self.count = 0
        self.total = 0.0
        self.buckets = [0] * size  # non-cumulative; the last one is +Inf


class KindTotals(NamedTuple):
    """What one kind's agents on this mesh handled (``Metrics.handled_by_kind``)."""

    handled: int  # messages that reached a handler (or its state write)
    failed: int  # of which the outcome was not ok
    seconds: float  # handler time, all of them together
    refused: int  # messages refused before reaching a handler (natsagents_rejected_total)
    last_error: str  # the latest failure, "<code> (<action>)", or refusal, "<reason> (refused)"; "" if none


class _Series:
    """Counts and a latency histogram per (kind, action, outcome)."""

    __slots__ = ("buckets", "data", "last_error")

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.data: dict[tuple[str, str, str], _Cell] = {}
        self.last_error: dict[str, str] = {}  # kind → the latest outcome that was not ok

    def record(self, kind: str, action: str, outcome: str, seconds: float) -> None:
        key = (kind, action, outcome)
        cell = self.data.get(key)
        if cell is None:
            cell = self.data[key] = _Cell(len(self.buckets) + 1)
        cell.count += 1
        cell.total += seconds
        cell.buckets[bisect.bisect_left(self.buckets, seconds)] += 1
        if outcome != "ok":
            self.last_error[kind] = f"{outcome} ({action})"

    def families(self, counter: str, counter_help: str, histogram: str, histogram_help: str) -> Iterator[Metric]:
        counts = CounterMetricFamily(counter, counter_help, labels=_LABELS)
        # Latency per (kind, action), all outcomes together.
        merged: dict[tuple[str, str], tuple[list[int], float]] = {}
        for (kind, action, outcome), cell in list(self.data.items()):
            counts.add_metric([kind, action, outcome], float(cell.count))
            buckets, s = merged.get((kind, action), ([0] * (len(self.buckets) + 1), 0.0))
            merged[(kind, action)] = ([a + b for a, b in zip(buckets, cell.buckets, strict=True)], s + cell.total)
        yield counts
        hist = HistogramMetricFamily(histogram, histogram_help, labels=("kind", "action"))
        bounds = [*(str(b) for b in self.buckets), "+Inf"]
        for (kind, action), (per_bucket, total) in merged.items():
            cumulative, running = [], 0
            for bound, n in zip(bounds, per_bucket, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            hist.add_metric([kind, action], cumulative, total)
        yield hist


class _HotCollector(Collector):
    def __init__(self, calls: _Series, handled: _Series) -> None:
        self._calls = calls
        self._handled = handled

    def collect(self) -> Iterator[Metric]:
        yield from self._calls.families(
            "natsagents_calls", "Calls made by this mesh", "natsagents_call_seconds", "Call latency seen by the caller"
        )
        yield from self._handled.families(
            "natsagents_handled", "Messages handled by hosted agents", "natsagents_handler_seconds", "Handler latency"
        )


class Metrics:
    """The mesh's metrics.

    Args:
        registry: where to register; default a new private ``CollectorRegistry`` (pass
            ``prometheus_client.REGISTRY`` to export through the global one).

    Series:
        ``natsagents_handled_total{kind,action,outcome}`` messages handled by hosted agents
        ``natsagents_handler_seconds{kind,action}`` handler latency
        ``natsagents_calls_total{kind,action,outcome}`` calls made by this mesh
        ``natsagents_call_seconds{kind,action}`` call latency seen by the caller
        ``natsagents_active_agents{kind}`` active agents hosted here
        ``natsagents_rejected_total{kind,reason}`` messages refused before the handler
        ``natsagents_call_retries_total{kind,reason}`` call attempts repeated by this mesh
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._calls = _Series(_LATENCY_BUCKETS)
        self._handled = _Series(_LATENCY_BUCKETS)
        r.register(_HotCollector(self._calls, self._handled))
        self.active_agents = Gauge("natsagents_active_agents", "Active agents hosted here", ["kind"], registry=r)
        self.rejected = Counter(
            "natsagents_rejected", "Messages refused before reaching a handler", ["kind", "reason"], registry=r
        )
        self.retries = Counter(
            "natsagents_call_retries",
            "Call attempts repeated (agent not active, no host, agent stopping, policy_<code>: the retry policy)",
            ["kind", "reason"],
            registry=r,
        )
        self.handled_one = self._handled.record
        self.called_one = self._calls.record
        # Cluster node series (zero unless the mesh runs as a cluster node).
        self.migrations = Counter(
            "natsagents_migrations", "Agents migrated away from this node", ["kind", "strategy", "outcome"], registry=r
        )
        self.migration_pause = Histogram(
            "natsagents_migration_pause_seconds",
            "Time an agent took no messages while migrating (source unsubscribed → target subscribed)",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.restarts = Counter("natsagents_restarts", "Supervised agent restarts", ["kind", "reason"], registry=r)
        self.idle_deactivations = Counter(
            "natsagents_idle_deactivations", "Agents deactivated after their kind's idle_timeout", ["kind"], registry=r
        )
        self.fenced = Counter(
            "natsagents_fenced", "Stale agent copies stopped because another node owns the agent", ["kind"], registry=r
        )
        self.forged_claims = Counter(
            "natsagents_forged_claims",
            "Directory records naming another node as an agent's owner that did not hold it (written back)",
            ["kind"],
            registry=r,
        )
        self.state_saves = Counter(
            "natsagents_state_saves", "Agent state writes to the store", ["kind", "outcome"], registry=r
        )
        self.state_conflicts = Counter(
            "natsagents_state_conflicts",
            "Concurrent versions of eventual state (split brain): siblings stored, resolutions, "
            "and acknowledged changes the conflict rule overwrote",
            ["kind", "outcome"],
            registry=r,
        )
        self.duplicates = Counter(
            "natsagents_duplicates",
            "Copies of a request already seen (a resend): in_progress, replayed or applied",
            ["kind", "entry"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            "natsagents_circuit_transitions",
            "Circuit breaker state changes of this mesh's calls, by the new state",
            ["kind", "state"],
            registry=r,
        )
        self.durable = Counter(
            "natsagents_durable_messages",
            "Durable messages handled by this node's partitions: ok, already_applied, retried, dead_letter",
            ["kind", "outcome"],
            registry=r,
        )
        self.durable_batches = Histogram(
            "natsagents_durable_batch_messages",
            "Durable messages of one agent handed over in one request (a batch) by this node's partitions",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.partitions_owned = Gauge(
            "natsagents_partitions_owned", "Inbox stream partitions this node consumes", registry=r
        )
        self.circuits_open = Gauge(
            "natsagents_circuits_open",
            "Circuit breakers of this mesh's calls open or half-open now",
            ["kind"],
            registry=r,
        )
        self.resends = Counter(
            "natsagents_resends", "Requests published again after no reply for resend_after seconds", registry=r
        )
        self.queued_placements = Gauge(
            "natsagents_queued_placements", "Activations waiting for a node with capacity", registry=r
        )
        # Read replicas (cluster.replicas, docs/consistency.md).
        self.read_replicas = Gauge(
            "natsagents_read_replicas", "Read replicas of agents this node holds", ["kind"], registry=r
        )
        self.replica_lag = Gauge(
            "natsagents_replica_lag_seconds",
            "Longest time a read replica here has known of a newer state version than it holds",
            ["kind"],
            registry=r,
        )
        self.crdt_deltas = Counter(
            "natsagents_crdt_deltas",
            "CRDT deltas of crdt kinds by outcome: sent, applied, no_copy (no copy here), dropped "
            "(malformed or of another type: ignored), repeated (a whole state merged before), "
            "digest_sent, digest (a digest received, protocol §21.4)",
            ["kind", "outcome"],
            registry=r,
        )
        self.crdt_merges = Counter(
            "natsagents_crdt_merges",
            "Merges of crdt agents' state records: stored (merged into the record), pulled (the record "
            "merged into a copy), failed, dropped (a malformed record ignored), lost (a copy stopped "
            "with changes it could not store)",
            ["kind", "outcome"],
            registry=r,
        )
        self.replica_reads = Counter(
            "natsagents_replica_reads",
            "Messages on read subjects reaching a replica here, by outcome (served, waited, forwarded, refused)",
            ["kind", "outcome"],
            registry=r,
        )
        self.partition_status = Gauge(
            "natsagents_partition_status",
            "1 for this node's partition status now (ok, peers_lapsed, quorum_lost, nats_unreachable), else 0",
            ["status"],
            registry=r,
        )
        self.partition_events = Counter(
            "natsagents_partition_events",
            "Changes of this node's partition status: start, change, heal, by the new status",
            ["event", "status"],
            registry=r,
        )

    def rejected_one(self, kind: str, reason: str) -> None:
        self.rejected.labels(kind, reason).inc()
        self._handled.last_error[kind] = f"{reason} (refused)"

    def handled_by_kind(self) -> dict[str, KindTotals]:
        """Per kind: messages handled and refused here, failures, handler time and the
        latest error (for the NATS services API's endpoint stats, ``observability.micro``)."""
        out: dict[str, list[float]] = {}
        for (kind, _action, outcome), cell in list(self._handled.data.items()):
            row = out.setdefault(kind, [0, 0, 0.0, 0])
            row[0] += cell.count
            row[1] += 0 if outcome == "ok" else cell.count
            row[2] += cell.total
        for family in self.rejected.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    row = out.setdefault(sample.labels.get("kind", ""), [0, 0, 0.0, 0])
                    row[3] += int(sample.value)
        last = self._handled.last_error
        return {
            kind: KindTotals(int(h), int(f), float(s), int(r), last.get(kind, "")) for kind, (h, f, s, r) in out.items()
        }

    def value(self, name: str, labels: dict[str, str]) -> float:
        """Current value of one sample (``0.0`` if absent); for tests and the CLI."""
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else float(v)
