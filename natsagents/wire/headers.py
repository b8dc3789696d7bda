"""Header names and values of protocol v1 (see docs/protocol.md)."""

from __future__ import annotations

__all__ = [
    "ACCEPT_ENCODING",
    "ACTION",
    "BATCH",
    "CALLER",
    "CALLER_EXPIRES",
    "CALLER_KEY",
    "CALLER_SIG",
    "CORRELATION_ID",
    "CRDT_DIGEST",
    "CRDT_ECHO",
    "CRDT_HELLO",
    "CRDT_NODE",
    "CRDT_WHOLE",
    "DEADLINE",
    "DEGRADED",
    "DELIVERY",
    "DELIVERY_AT_LEAST_ONCE",
    "DELIVERY_EXACTLY_ONCE",
    "DLQ_DELIVERIES",
    "DLQ_ERROR",
    "DLQ_REASON",
    "DLQ_STREAM_SEQ",
    "DLQ_SUBJECT",
    "DLQ_TIME",
    "ENCODING",
    "ENCODING_DEFLATE",
    "MESSAGE_ID",
    "MIN_VERSION",
    "OWNER_MAC",
    "PRIORITIES",
    "PRIORITY",
    "PROTO",
    "PROTO_VERSION",
    "REPLICA",
    "REPLICA_LAG",
    "REPLY_MODE",
    "REPLY_MODE_ACCEPT",
    "REPLY_MODE_REPLAY",
    "REPLY_MODE_RESULT",
    "REPLY_TO",
    "STATE_VERSION",
    "STATUS",
    "STATUS_OK",
    "STREAM_SEQ",
    "TRACEPARENT",
    "TRACESTATE",
]

#: Protocol version; every request and reply carries ``Na-Proto: 1``.
PROTO = "Na-Proto"
PROTO_VERSION = "1"
#: Unique id of this logical message (22 base64url characters from the SDK; any
#: 1-64 characters ``[A-Za-z0-9_-]`` from other peers).
MESSAGE_ID = "Na-Msg-Id"
#: On a crdt delta (``<prefix>.crdt.<kind>.<token>``, protocol §21): the node that sent it.
CRDT_NODE = "Na-Crdt-Node"
#: ``1`` on a crdt delta that is the sender's whole state (a heal, a partition's gossip):
#: a copy holding more answers with its own whole state.
CRDT_WHOLE = "Na-Crdt-Whole"
#: ``1`` on a crdt digest (protocol §21.4): the body names what the sender's copy holds.
CRDT_DIGEST = "Na-Crdt-Digest"
#: On a crdt hello (``<prefix>.crdt.<kind>.~hello``): seconds the sender has not been ``ok``.
CRDT_HELLO = "Na-Crdt-Hello"
#: ``1`` on a hello that answers another (never answered itself).
CRDT_ECHO = "Na-Crdt-Echo"
#: Id shared by every message caused by one external request.
CORRELATION_ID = "Na-Corr-Id"
#: Name of the action to run.
ACTION = "Na-Action"
#: Absolute deadline, integer milliseconds since the Unix epoch (UTC).
DEADLINE = "Na-Deadline"
#: Who is calling: ``Kind/id`` of a calling agent, or a client name. Informational only
#: (logs, ``self.context.caller``): the sender writes what it likes. Who a caller *is*
#: comes from its signature (``CALLER_KEY`` …), never from this header.
CALLER = "Na-Caller"
#: A caller signature (``wire.identity``, docs/protocol.md §4.4): the signer's public
#: user nkey (``U…``), when the signature stops being valid (Unix ms), and the base64url
#: ed25519 signature.
CALLER_KEY = "Na-Caller-Key"
CALLER_EXPIRES = "Na-Caller-Expires"
CALLER_SIG = "Na-Caller-Sig"
#: ``result`` (default): reply after the handler ran, with its result.
#: ``accept``: reply as soon as the message is in the agent's mailbox.
REPLY_MODE = "Na-Reply-Mode"
REPLY_MODE_RESULT = "result"
REPLY_MODE_ACCEPT = "accept"
#: ``replay``: do not run anything; answer with the stored reply of the message whose
#: ``Na-Msg-Id`` this request carries (how a caller gets the result of a durable message
#: it stored earlier, docs/protocol.md §15.1).
REPLY_MODE_REPLAY = "replay"
#: Reply status: ``ok`` or an error code.
STATUS = "Na-Status"
STATUS_OK = "ok"
#: Durable delivery (docs/delivery.md): ``at_least_once`` or ``exactly_once``.
DELIVERY = "Na-Delivery"
DELIVERY_AT_LEAST_ONCE = "at_least_once"
DELIVERY_EXACTLY_ONCE = "exactly_once"
#: The inbox stream sequence of a durable message, set by the partition owner.
STREAM_SEQ = "Na-Stream-Seq"
#: Proof that a message carrying ``Na-Stream-Seq`` or ``Na-Batch`` comes from a partition
#: owner (``wire.owner``, docs/protocol.md §15.5).
OWNER_MAC = "Na-Owner-Mac"
#: A batch request or reply: the number of durable messages its body carries.
BATCH = "Na-Batch"
#: Where the result of a durable request goes (the caller's inbox).
REPLY_TO = "Na-Reply-To"
#: Mailbox priority of a message: ``high``, ``normal`` (default) or ``low``.
PRIORITY = "Na-Priority"
PRIORITIES = ("high", "normal", "low")
#: The body is compressed: ``deflate`` (zlib stream). On requests and on replies.
ENCODING = "Na-Encoding"
ENCODING_DEFLATE = "deflate"
#: The caller takes compressed replies (``deflate``).
ACCEPT_ENCODING = "Na-Accept-Encoding"
#: Session consistency and read replicas (docs/protocol.md §19). On replies of kinds with
#: ``consistency = "session"`` or ``read_replicas``: the KV revision of the agent's state
#: record the answer reflects (1-19 digits; 0: nothing stored yet).
STATE_VERSION = "Na-State-Version"
#: On requests on a read subject: the lowest state version the caller may see (1-19 digits).
MIN_VERSION = "Na-Min-Version"
#: On replies from a read replica: the replica's node, and how far behind the newest
#: version it knows of it was, in ms (0: current).
#: ``1`` on a reply from a copy on the minority side of a partition serving degraded
#: (``partition_strategy = "continue_degraded"``): an ok reply ran on its last known
#: state; a ``queued`` reply did not run (protocol §20).
DEGRADED = "Na-Degraded"
REPLICA = "Na-Replica"
REPLICA_LAG = "Na-Replica-Lag"
#: W3C trace context, passed through unchanged.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: Headers a dead letter carries besides the original ones (docs/protocol.md §15.2): the
#: error code, a one-line reason, the attempts made, its inbox stream sequence, the inbox
#: subject it was published to, when it died (Unix ms).
DLQ_ERROR = "Na-Dlq-Error"
DLQ_REASON = "Na-Dlq-Reason"
DLQ_DELIVERIES = "Na-Dlq-Deliveries"
DLQ_STREAM_SEQ = "Na-Dlq-Stream-Seq"
DLQ_SUBJECT = "Na-Dlq-Subject"
DLQ_TIME = "Na-Dlq-Time"
