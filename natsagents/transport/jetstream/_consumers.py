"""Durable pull consumers: create (or update), inspect and delete."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ...errors import ConfigurationError, ConsumerNotFound, StreamNotFound
from ..connection import Transport
from ._api import api_request, labelled, retry
from ._common import _NS, _name, _seconds, _subject

DeliverPolicy = Literal["all", "new", "last"]


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """A durable pull consumer with explicit acks.

    Attributes:
        durable: its name, ``[a-zA-Z0-9_-]+``.
        filter_subject: deliver only messages whose stored subject matches (after the
            stream's subject transform).
        filter_subjects: several filters instead (not with ``filter_subject``).
        ack_wait: seconds a delivery may stay unacked before it is redelivered. With
            ``backoff`` the server replaces it with ``backoff[0]``.
        max_deliver: deliveries per message (-1: unlimited; poison messages then loop
            for ever).
        max_ack_pending: unacked deliveries allowed at once (-1: unlimited).
        backoff: seconds to wait before each redelivery after an ack timeout (the last
            value repeats); needs ``max_deliver >= len(backoff)`` (or -1).
        inactive_threshold: seconds without fetches after which the server deletes the
            consumer; ``None`` never (a durable).
        deliver_policy: start with ``"all"`` stored messages, only ``"new"`` ones, or the
            ``"last"`` one.
        replicas: the consumer's replicas; 0 for the stream's.
        max_waiting: pull requests the server holds at once.
    """

    durable: str
    filter_subject: str | None = None
    filter_subjects: Sequence[str] = ()
    ack_wait: float = 30.0
    max_deliver: int = -1
    max_ack_pending: int = 1000
    backoff: Sequence[float] = ()
    inactive_threshold: float | None = None
    deliver_policy: DeliverPolicy = "all"
    replicas: int = 0
    max_waiting: int = 512

    def __post_init__(self) -> None:
        _name("consumer", self.durable)
        filters = tuple(self.filter_subjects)
        if self.filter_subject is not None:
            _subject("filter_subject", self.filter_subject)
            if filters:
                raise ConfigurationError("give filter_subject or filter_subjects, not both")
        for subject in filters:
            _subject("filter subject", subject)
        object.__setattr__(self, "filter_subjects", filters)
        _seconds("ack_wait", self.ack_wait)
        backoff = tuple(self.backoff)
        for value in backoff:
            _seconds("a backoff value", value)
        object.__setattr__(self, "backoff", backoff)
        if not isinstance(self.max_deliver, int) or (self.max_deliver < 1 and self.max_deliver != -1):
            raise ConfigurationError(f"max_deliver must be >= 1 or -1, not {self.max_deliver!r}")
        if backoff and self.max_deliver != -1 and self.max_deliver < len(backoff):
            raise ConfigurationError(f"max_deliver ({self.max_deliver}) must be >= len(backoff) ({len(backoff)})")
        if not isinstance(self.max_ack_pending, int) or (self.max_ack_pending < 1 and self.max_ack_pending != -1):
            raise ConfigurationError(f"max_ack_pending must be >= 1 or -1, not {self.max_ack_pending!r}")
        if self.inactive_threshold is not None:
            _seconds("inactive_threshold", self.inactive_threshold)
        if self.deliver_policy not in ("all", "new", "last"):
            raise ConfigurationError(f"deliver_policy is all, new or last, not {self.deliver_policy!r}")
        if not isinstance(self.replicas, int) or not 0 <= self.replicas <= 5:
            raise ConfigurationError(f"replicas must be within 0..5, not {self.replicas!r}")
        if not isinstance(self.max_waiting, int) or self.max_waiting < 1:
            raise ConfigurationError(f"max_waiting must be >= 1, not {self.max_waiting!r}")

    def _body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "durable_name": self.durable,
            "deliver_policy": self.deliver_policy,
            "ack_policy": "explicit",
            "ack_wait": round(self.ack_wait * _NS),
            "max_deliver": self.max_deliver,
            "max_ack_pending": self.max_ack_pending,
            "max_waiting": self.max_waiting,
            "replay_policy": "instant",
            "num_replicas": self.replicas,
        }
        if self.filter_subject is not None:
            body["filter_subject"] = self.filter_subject
        if self.filter_subjects:
            body["filter_subjects"] = list(self.filter_subjects)
        if self.backoff:
            body["backoff"] = [round(b * _NS) for b in self.backoff]
        if self.inactive_threshold is not None:
            body["inactive_threshold"] = round(self.inactive_threshold * _NS)
        return body


async def ensure_consumer(
    transport: Transport, stream: str, config: ConsumerConfig, *, timeout: float = 5.0
) -> dict[str, Any]:
    """Create the durable consumer, or update it to ``config`` if it exists.

    Args:
        transport: the connection.
        stream: the stream.
        config: the consumer wanted.
        timeout: seconds for the whole operation.

    Returns:
        The server's consumer info (``config``, ``num_pending``, ``num_ack_pending`` …).

    Raises:
        StreamNotFound: no such stream.
        JetStreamError: the server refused (``err_code`` 10026: the stream's
            ``max_consumers`` is reached; 10100: on a workqueue stream, another consumer's
            filter overlaps; a change it cannot apply to an existing consumer …).
        ConfigurationError, CallTimeout, MeshClosed.
    """
    _name("stream", stream)
    subject = f"$JS.API.CONSUMER.CREATE.{stream}.{config.durable}"
    body = {"stream_name": stream, "config": config._body(), "action": ""}  # "": create or update
    what = f"ensure consumer {stream}/{config.durable}"
    with labelled(what):
        return await retry(what, lambda t: api_request(transport, subject, body, t), timeout)


async def consumer_info(transport: Transport, stream: str, durable: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """The server's ``CONSUMER.INFO`` reply (``config``, ``delivered``, ``num_pending`` …).

    Raises:
        StreamNotFound, ConsumerNotFound, ConfigurationError, JetStreamError, CallTimeout, MeshClosed.
    """
    subject = f"$JS.API.CONSUMER.INFO.{_name('stream', stream)}.{_name('consumer', durable)}"
    what = f"consumer info {stream}/{durable}"
    with labelled(what):
        return await retry(what, lambda t: api_request(transport, subject, None, t), timeout)


async def delete_consumer(transport: Transport, stream: str, durable: str, *, timeout: float = 5.0) -> bool:
    """Delete a consumer (its unacked deliveries are dropped).

    Returns:
        ``True`` if it was deleted, ``False`` if it (or the stream) did not exist.

    Raises:
        ConfigurationError, JetStreamError, CallTimeout, MeshClosed.
    """
    subject = f"$JS.API.CONSUMER.DELETE.{_name('stream', stream)}.{_name('consumer', durable)}"
    what = f"delete consumer {stream}/{durable}"
    try:
        with labelled(what):
            await retry(what, lambda t: api_request(transport, subject, None, t), timeout)
    except (ConsumerNotFound, StreamNotFound):
        return False
    return True
