"""The durable inbox: stream layout shared by publishers (callers) and partition owners.

Two JetStream streams per mesh (see docs/delivery.md):

* ``<prefix>_inbox`` (prefix dots made ``_``): subjects ``<prefix>.inbox.<kind>.<token>``,
  stored as ``<prefix>.inboxp.<n>.<kind>.<token>`` by a subject transform, ``n`` =
  ``{{partition(P,1,2)}}`` (FNV-1a over kind and token, any client can compute it). Work-
  queue retention: an acknowledged message is gone. ``P`` is fixed when the stream is
  created (recorded in its metadata) and never changes.
* ``<prefix>_dlq``: dead letters on ``<prefix>.dlq.<kind>.<token>``, kept for
  ``dlq_max_age``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigurationError
from ..transport import Transport
from ..transport.jetstream import StreamConfig, ensure_stream
from ..wire.batch import MAX_BATCH
from ..wire.subjects import bucket_name

__all__ = ["DeliverySettings", "dlq_stream", "ensure_delivery_streams", "inbox_stream"]


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """Durable delivery configuration (cluster nodes consume; any mesh publishes).

    Args:
        partitions: inbox partitions, fixed when the stream is first created (64-256 for
            large clusters; the default suits up to a few dozen nodes).
        max_deliver: attempts before a message goes to the dead-letter stream.
        backoff: seconds between attempts (the last value repeats).
        ack_wait: seconds a delivery may stay unacknowledged before the server hands it
            out again (the owner renews it while the message waits or runs).
        attempt_timeout: seconds one forwarded attempt waits for the agent's reply.
        duplicate_window: seconds within which a re-published ``Nats-Msg-Id`` is dropped.
        batch: messages fetched at once per partition.
        forward_batch: most messages of one agent handed to it in one request (their
            state changes stored in one write); 1 sends each message alone.
        max_pending: unacknowledged messages per partition (the consumer's
            ``max_ack_pending``).
        dlq_max_age: seconds dead letters are kept.
        replicas: stream replicas (``None``: 3 on a cluster of ≥ 3 servers, else 1).
    """

    partitions: int = 16
    max_deliver: int = 5
    backoff: tuple[float, ...] = (0.1, 0.5, 2.0, 5.0)
    ack_wait: float = 30.0
    attempt_timeout: float = 30.0
    duplicate_window: float = 120.0
    batch: int = 64
    forward_batch: int = 32
    max_pending: int = 1024
    dlq_max_age: float = 7 * 24 * 3600.0
    replicas: int | None = None

    def __post_init__(self) -> None:
        if type(self.partitions) is not int or not 1 <= self.partitions <= 1024:
            raise ConfigurationError(f"partitions must be an int within 1..1024, not {self.partitions!r}")
        for name in ("max_deliver", "batch", "max_pending", "forward_batch"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, not {value!r}")
        if self.forward_batch > MAX_BATCH:
            raise ConfigurationError(f"forward_batch must be at most {MAX_BATCH}, not {self.forward_batch}")
        if not self.backoff or any(not isinstance(b, (int, float)) or b < 0 for b in self.backoff):
            raise ConfigurationError("backoff must be a non-empty sequence of seconds >= 0")
        for name in ("ack_wait", "attempt_timeout", "duplicate_window", "dlq_max_age"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(f"{name} must be > 0 seconds, not {value!r}")

    def delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1`` (``attempt`` ≥ 1)."""
        return float(self.backoff[min(attempt, len(self.backoff)) - 1])


def inbox_stream(prefix: str) -> str:
    return bucket_name(prefix, "inbox")


def dlq_stream(prefix: str) -> str:
    return bucket_name(prefix, "dlq")


async def ensure_delivery_streams(
    transport: Transport, prefix: str, settings: DeliverySettings | None = None, *, timeout: float = 10.0
) -> int:
    """Create the inbox and dead-letter streams, or bind to them. Returns the number of
    partitions (the existing stream's, which wins over ``settings``).

    Raises:
        JetStreamError: the server refused; CallTimeout.
    """
    settings = settings or DeliverySettings()
    p = settings.partitions
    inbox = StreamConfig(
        name=inbox_stream(prefix),
        subjects=[f"{prefix}.inbox.*.*"],
        subject_transform=(
            f"{prefix}.inbox.*.*",
            f"{prefix}.inboxp.{{{{partition({p},1,2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}",
        ),
        retention="workqueue",
        max_consumers=max(64, p * 4),
        duplicate_window=settings.duplicate_window,
        replicas=settings.replicas,
    )
    try:
        info = await ensure_stream(transport, inbox, timeout=timeout)
    except ConfigurationError:
        # Another partition count was chosen when the stream was made: that one stays.
        info = await _bind(transport, inbox.name, timeout)
    dlq = StreamConfig(
        name=dlq_stream(prefix),
        subjects=[f"{prefix}.dlq.>"],
        retention="limits",
        max_age=settings.dlq_max_age,
        duplicate_window=settings.duplicate_window,
        replicas=settings.replicas,
    )
    await ensure_stream(transport, dlq, timeout=timeout)
    return _partitions(info, p)


async def _bind(transport: Transport, name: str, timeout: float) -> dict[str, object]:
    from ..transport.jetstream import stream_info

    return await stream_info(transport, name, timeout=timeout)


def _partitions(info: dict[str, object], default: int) -> int:
    from ..transport.jetstream import PARTITIONS_KEY

    config = info.get("config", info)
    metadata = config.get("metadata") if isinstance(config, dict) else None
    raw = metadata.get(PARTITIONS_KEY) if isinstance(metadata, dict) else None
    return int(raw) if isinstance(raw, str) and raw.isdigit() else default
