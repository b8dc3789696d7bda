"""Subject names of protocol v1.

``<prefix>.agent.<kind>.<id-token>``  an agent's inbox (requests and sends)
``<prefix>.read.<kind>.<id-token>``   read-only actions of a kind with read replicas
``<prefix>.activate.<kind>``         activation requests, answered by a host of ``kind``
``<prefix>.node.<node>.<op>``        a cluster node's control requests (activate, adopt,
                                     migrate, drain, info)

Hosts subscribe agent inboxes in the queue group ``<prefix>.agents``: should two copies of
one agent ever overlap (a stale owner resuming after a partition), each message still
reaches only one of them.
"""

from __future__ import annotations

import re

from ..errors import ConfigurationError
from .ids import encode_id, validate_kind

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_REPLY_PREFIXES",
    "SERVICE_NAME",
    "activate_subject",
    "agent_queue",
    "agent_subject",
    "agent_wildcard",
    "bucket_name",
    "crdt_subject",
    "dead_letter_subject",
    "durable_subject",
    "is_reply_subject",
    "node_subject",
    "partition_subject",
    "read_queue",
    "read_subject",
    "reply_subject_pattern",
    "validate_prefix",
]

DEFAULT_PREFIX = "na"
#: The NATS services API name every natsagents node registers under (protocol §16).
SERVICE_NAME = "natsagents"
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is one or more dot-separated safe tokens.

    Raises:
        ConfigurationError: empty, wildcards, spaces or empty tokens.
    """
    if not isinstance(prefix, str) or len(prefix) > 64 or not _PREFIX_RE.fullmatch(prefix):
        raise ConfigurationError(f"invalid subject prefix {prefix!r}: use dot-separated tokens of [A-Za-z0-9_-]")
    return prefix


def bucket_name(prefix: str, purpose: str) -> str:
    """Name of the mesh's KV bucket for ``purpose`` (``members``, ``directory``, ``state`` …):
    ``<prefix>_<purpose>`` with the prefix's dots made underscores (bucket names have none)."""
    return f"{prefix.replace('.', '_')}_{purpose}"


def agent_subject(prefix: str, kind: str, agent_id: str) -> str:
    """The inbox subject of agent ``kind/agent_id`` (the id is encoded)."""
    return f"{prefix}.agent.{validate_kind(kind)}.{encode_id(agent_id)}"


def read_subject(prefix: str, kind: str, agent_id: str) -> str:
    """Where read-only actions of a kind with read replicas go: the primary and the
    replicas of ``kind/agent_id`` subscribe it in :func:`read_queue` (protocol §19)."""
    return f"{prefix}.read.{validate_kind(kind)}.{encode_id(agent_id)}"


def crdt_subject(prefix: str, kind: str, agent_id: str) -> str:
    """Where the copies of a crdt agent publish their deltas (protocol §21)."""
    return f"{prefix}.crdt.{validate_kind(kind)}.{encode_id(agent_id)}"


def read_queue(prefix: str) -> str:
    """Queue group of every read-subject subscription."""
    return f"{prefix}.readers"


def agent_wildcard(prefix: str, kind: str) -> str:
    """Subject matching every agent inbox of ``kind``."""
    return f"{prefix}.agent.{validate_kind(kind)}.*"


def activate_subject(prefix: str, kind: str) -> str:
    """Subject on which hosts of ``kind`` answer activation requests."""
    return f"{prefix}.activate.{validate_kind(kind)}"


def agent_queue(prefix: str) -> str:
    """Queue group of every agent inbox subscription."""
    return f"{prefix}.agents"


def node_subject(prefix: str, node: str, op: str) -> str:
    """Control subject ``op`` of cluster node ``node`` (a KV-key-safe id without dots)."""
    return f"{prefix}.node.{node}.{op}"


def durable_subject(prefix: str, kind: str, agent_id: str) -> str:
    """Where a durable message to ``kind/agent_id`` is published (the inbox stream)."""
    return f"{prefix}.inbox.{validate_kind(kind)}.{encode_id(agent_id)}"


def partition_subject(prefix: str, partition: int | str) -> str:
    """The stored subjects of one inbox partition (``<prefix>.inboxp.<n>.<kind>.<token>``)."""
    return f"{prefix}.inboxp.{partition}.>"


def dead_letter_subject(prefix: str, kind: str, token: str) -> str:
    """Where a dead letter of ``kind``/``token`` (the encoded id) is kept."""
    return f"{prefix}.dlq.{validate_kind(kind)}.{token}"


#: Where replies may go unless a mesh names other inbox prefixes (protocol §3.1).
DEFAULT_REPLY_PREFIXES = ("_INBOX.",)
#: Longest reply subject a host answers to.
MAX_REPLY_SUBJECT = 256
#: One token of a reply subject: printable ASCII without ``.``, ``*`` and ``>``.
_REPLY_TOKEN = r"[!-)+-\-/-=?-~]+"
#: prefixes → the pattern :func:`is_reply_subject` matches (one regex: it runs twice a request).
_REPLY_PATTERNS: dict[tuple[str, ...], re.Pattern[str]] = {}


def reply_subject_pattern(prefixes: tuple[str, ...]) -> re.Pattern[str]:
    """Printable ASCII with no ``*``, ``>`` or empty token (an optional leading ``.``, then
    tokens joined by single dots, the last not empty), starting with one of ``prefixes``:
    :func:`is_reply_subject` is ``len(subject) <= MAX_REPLY_SUBJECT`` and a full match."""
    pattern = _REPLY_PATTERNS.get(prefixes)
    if pattern is None:
        starts = "|".join(re.escape(p) for p in prefixes) if prefixes else "(?!)"
        pattern = re.compile(rf"(?=(?:{starts}))\.?{_REPLY_TOKEN}(?:\.{_REPLY_TOKEN})*")
        if len(_REPLY_PATTERNS) < 64:  # a handful of settings per process; never grows unbounded
            _REPLY_PATTERNS[prefixes] = pattern
    return pattern


def is_reply_subject(subject: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a host may publish a reply to ``subject``: it starts with one of the inbox
    ``prefixes`` (each ending with ``.``), is printable ASCII of at most
    :data:`MAX_REPLY_SUBJECT` characters, and has no empty token and no ``*`` or ``>``.

    A host publishes with its own permissions, so a reply subject is an order from the
    sender: "publish this to X". Only a caller's own inbox is a place a reply belongs;
    anything else (``$KV.…``, ``$JS.…``, a node's control subject, another agent) is refused.
    """
    return len(subject) <= MAX_REPLY_SUBJECT and reply_subject_pattern(prefixes).fullmatch(subject) is not None
