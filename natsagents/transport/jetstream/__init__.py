"""JetStream streams, publishes and pull consumers, spoken directly over the wire API.

The layer under durable agent inboxes and under KV buckets (``transport/kv/`` is built on
it; nothing here imports ``kv``). It does not use nats-py's JetStream context: every
operation is a core request through :class:`Transport`'s request mux (``_api.py``:
requests, retries, error decoding), or a pull request whose messages arrive on one
private inbox subscription per consumer.

* **Partitions.** A stream may map its subjects to partitions with a subject transform
  such as ``{{partition(16,1,2)}}``. :func:`partition_of_tokens` computes the partition
  the server picks (FNV-1a 32-bit over the named wildcard tokens *concatenated with no
  separator*, mod n; verified against nats-server 2.15 by ``tests/cluster/test_jetstream.py``).
  The count is recorded in the stream metadata and :func:`ensure_stream` refuses to change
  it: a new count would remap nearly every key.
* **Publishes** carry a ``Nats-Msg-Id``. Timed-out attempts, "no responders" (a stream
  leader election) and transient refusals are retried with the same id until the
  timeout, so the server deduplicates a retry of a publish that did land. When no stream
  listens on the subject at all, :class:`StreamNotFound` comes at once.
* **Pull consumers** fetch with ``$JS.API.CONSUMER.MSG.NEXT``; the server's status
  messages (404 no messages, 408 request timeout, 409 …, 100 heartbeats) end or extend a
  fetch.

Exceptions: the :class:`~natsagents.errors.JetStreamError` family of ``natsagents.errors``
(drawn there), re-exported here::

    JetStreamError                 the server refused, or an operation failed
    ├── StreamNotFound             no such stream, or no stream listens on a subject
    ├── ConsumerNotFound           no such consumer (never created, deleted, expired)
    ├── PublishBatchError          some publishes of :func:`publish_many` failed (defined here)
    └── MalformedAckSubject        (also a ProtocolError) a reply subject is not ``$JS.ACK.…``

Oversized messages raise :class:`~natsagents.errors.PayloadTooLarge`, bad arguments
:class:`~natsagents.errors.ConfigurationError`, timeouts
:class:`~natsagents.errors.CallTimeout`.
"""

from __future__ import annotations

from ...errors import ConsumerNotFound, JetStreamError, MalformedAckSubject, StreamNotFound
from ._api import READ_ATTEMPT, api_request, decode_reply, error_for, labelled, retry, translate
from ._consumers import ConsumerConfig, consumer_info, delete_consumer, ensure_consumer
from ._messages import AckMetadata, JsMsg, parse_ack_subject
from ._partition import partition_of, partition_of_tokens
from ._publish import Outgoing, PubAck, PublishBatchError, publish, publish_many
from ._pull import PullConsumer
from ._streams import PARTITIONS_KEY, Reconcile, StreamConfig, create_stream, delete_stream, ensure_stream, stream_info

__all__ = [
    "PARTITIONS_KEY",
    "READ_ATTEMPT",
    "AckMetadata",
    "ConsumerConfig",
    "ConsumerNotFound",
    "JetStreamError",
    "JsMsg",
    "MalformedAckSubject",
    "Outgoing",
    "PubAck",
    "PublishBatchError",
    "PullConsumer",
    "Reconcile",
    "StreamConfig",
    "StreamNotFound",
    "api_request",
    "consumer_info",
    "create_stream",
    "decode_reply",
    "delete_consumer",
    "delete_stream",
    "ensure_consumer",
    "ensure_stream",
    "error_for",
    "labelled",
    "parse_ack_subject",
    "partition_of",
    "partition_of_tokens",
    "publish",
    "publish_many",
    "retry",
    "stream_info",
    "translate",
]
