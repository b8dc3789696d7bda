"""Least-privilege NATS permissions for the roles of a mesh (``natsagents auth``).

Pure: from a subject prefix and a list of :class:`Role` values, compute each user's
publish/subscribe allow and deny lists (:func:`permissions_for`) and render them as
nats-server configuration (:func:`render_config`: static users with nkeys, in an
``authorization`` block or an ``accounts`` block) or as account signing-key scoped
templates for operator/JWT mode (:func:`scoped_signing_key`). Generating keys and writing
files is the CLI's job (``natsagents/cli/auth.py``).

Roles (``docs/security.md``, "Roles and permissions"):

``node``      hosts agents of some kinds (or all): subscribes their inboxes only in the queue
              groups ``<prefix>.agents`` and ``<prefix>.agents.*`` (a cluster agent's own
              group) and their activation subjects only in
              ``<prefix>.hosts.<kind>``, its own control subjects and its own inbox; publishes
              replies to inboxes, requests to any agent, activation or node subject, and the
              JetStream API of the mesh's KV buckets and durable-delivery streams.
``caller``    calls and sends to agents of some kinds (durable sends included), adds to and
              reads the mesh's native counters (``mesh.counter``); subscribes nothing but
              its own inbox ``_INBOX.<name>.>``.
``peer``      a caller written in another language: the same, with a configurable inbox.
``operator``  what the CLI's ``nodes``, ``ls``, ``migrate``, ``drain``, ``undrain`` and ``dlq``
              use: reads the members and directory buckets, sends ``info``/``drain``/
              ``undrain``/``migrate`` control requests, reads, replays and deletes dead
              letters, asks the nodes' services API (``$SRV.*.natsagents``), reads the
              native counters; writes no bucket and adds to no counter.

Only nodes create the counters stream (on first use); nobody generated here may delete or
purge it.

A user's own subjects (its inbox, a node's control subjects) carry its name; for JWT
templates the name is ``{{name()}}``, which the server expands per user.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..counters import COUNTER_TOKEN, counters_stream
from ..errors import ConfigurationError
from ..wire.ids import validate_kind
from ..wire.subjects import DEFAULT_PREFIX, SERVICE_NAME, bucket_name, validate_prefix

__all__ = [
    "DEFAULT_REPLY_PREFIX",
    "NAME_TEMPLATE",
    "ROLES",
    "Permissions",
    "Role",
    "permissions_for",
    "permissions_json",
    "render_config",
    "reply_prefixes",
    "scoped_signing_key",
    "template_role_name",
    "validate_roles",
    "validate_subject",
]

ROLES = ("node", "caller", "peer", "operator")
#: Where hosts answer by default (``Mesh.connect(reply_prefixes=…)``).
DEFAULT_REPLY_PREFIX = "_INBOX."
#: The per-user placeholder of account signing-key templates (JWT mode).
NAME_TEMPLATE = "{{name()}}"
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN_RE = re.compile(r"[!-~]+")
_BUCKETS = ("members", "directory", "state", "control")


@dataclass(frozen=True, slots=True)
class Role:
    """One NATS user of the mesh.

    Args:
        role: ``node``, ``caller``, ``peer`` or ``operator``.
        name: the user's name, 1-64 of ``[A-Za-z0-9_-]``; a node's name is its node id.
        kinds: the agent kinds it hosts (node) or may call (the others); ``None`` means
            every kind. An operator calls no agent unless kinds are given.
        inbox: the prefix of its reply subjects, without the trailing ``.``
            (``Mesh.connect(inbox_prefix=…)``); default ``_INBOX.<name>``. An inbox outside
            ``_INBOX.`` must be added to every host's ``reply_prefixes``.

    Raises:
        ConfigurationError: an unknown role, an invalid name, kind or inbox.
    """

    role: str
    name: str
    kinds: tuple[str, ...] | None = None
    inbox: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigurationError(f"unknown role {self.role!r}: use one of {', '.join(ROLES)}")
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ConfigurationError(f"invalid user name {self.name!r}: use 1-64 characters [A-Za-z0-9_-]")
        if self.kinds is not None:
            kinds = tuple(dict.fromkeys(validate_kind(k) for k in self.kinds))
            object.__setattr__(self, "kinds", kinds)
        if self.inbox is not None:
            _check_inbox(self.inbox)

    @classmethod
    def parse(cls, role: str, spec: str) -> Role:
        """A role from the CLI form ``NAME[:KIND,KIND…][:INBOX]`` (no kinds or ``*``: every
        kind; an operator without kinds calls none).

        Raises:
            ConfigurationError: a malformed spec.
        """
        name, _, rest = spec.partition(":")
        kinds_text, _, inbox = rest.partition(":")
        items = [k.strip() for k in kinds_text.split(",") if k.strip()]
        kinds: tuple[str, ...] | None
        if "*" in items:
            if len(items) > 1:
                raise ConfigurationError(f"{spec!r}: '*' (every kind) cannot be combined with kinds")
            kinds = None
        elif items:
            kinds = tuple(items)
        else:
            kinds = () if role == "operator" else None
        return cls(role, name.strip(), kinds, inbox.strip() or None)

    @property
    def inbox_prefix(self) -> str:
        """Its reply subjects' prefix (``Mesh.connect(inbox_prefix=…)``)."""
        return self.inbox or f"_INBOX.{self.name}"

    @property
    def scope(self) -> str:
        """``kinds Counter, Ledger``, ``every kind`` …"""
        if self.kinds is None:
            return "every kind"
        if not self.kinds:
            return "no agent calls" if self.role == "operator" else "no kinds"
        return "kinds " + ", ".join(self.kinds)

    def describe(self) -> str:
        """``node n1 (kinds Counter, Ledger)``."""
        return f"{self.role} {self.name} ({self.scope})"


def _check_inbox(inbox: str) -> None:
    tokens = inbox.split(".") if isinstance(inbox, str) else []
    if (
        not tokens
        or len(inbox) > 128
        or inbox.startswith("$")
        or any(not _TOKEN_RE.fullmatch(t) or t in ("*", ">") for t in tokens)
    ):
        raise ConfigurationError(f"invalid inbox prefix {inbox!r}: use dot-separated tokens like '_INBOX.alice'")


@dataclass(frozen=True, slots=True)
class Permissions:
    """A user's NATS permissions. ``"subject queue"`` entries in ``subscribe_allow`` allow
    the subject only in that queue group. ``allow_responses`` is never set: see
    ``docs/security.md``."""

    publish_allow: tuple[str, ...]
    publish_deny: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    subscribe_deny: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """``{"publish": {"allow", "deny"}, "subscribe": {"allow", "deny"}}``, as in a
        nats-server ``permissions`` block."""
        return {
            "publish": {"allow": list(self.publish_allow), "deny": list(self.publish_deny)},
            "subscribe": {"allow": list(self.subscribe_allow), "deny": list(self.subscribe_deny)},
        }

    def jwt_template(self) -> dict[str, Any]:
        """The ``template`` of an account scoped signing key (nats-io/jwt
        ``UserPermissionLimits``: ``pub``, ``sub``, limits -1 meaning unlimited)."""
        return {
            "pub": {"allow": list(self.publish_allow), "deny": list(self.publish_deny)},
            "sub": {"allow": list(self.subscribe_allow), "deny": list(self.subscribe_deny)},
            "subs": -1,
            "data": -1,
            "payload": -1,
        }


def reply_prefixes(roles: Sequence[Role]) -> tuple[str, ...]:
    """Where hosts must be allowed to publish replies: ``_INBOX.`` and every inbox outside
    it that a role uses (each ending with ``.``)."""
    out = [DEFAULT_REPLY_PREFIX]
    for role in roles:
        own = role.inbox_prefix + "."
        if not own.startswith(DEFAULT_REPLY_PREFIX) and own not in out:
            out.append(own)
    return tuple(out)


def permissions_for(
    role: Role,
    prefix: str = DEFAULT_PREFIX,
    *,
    replies: Sequence[str] = (DEFAULT_REPLY_PREFIX,),
    user: str | None = None,
) -> Permissions:
    """The least-privilege permissions of ``role`` in the mesh of subject ``prefix``.

    Args:
        role: the user.
        prefix: the mesh's subject prefix.
        replies: inbox prefixes (ending with ``.``) hosts answer to (:func:`reply_prefixes`).
        user: the token naming the user in its own subjects (default ``role.name``;
            :data:`NAME_TEMPLATE` for a JWT template).

    Raises:
        ConfigurationError: an invalid prefix, or an inbox under ``<prefix>.``.
    """
    p = validate_prefix(prefix)
    u = user or role.name
    inbox = role.inbox or f"_INBOX.{u}"
    if inbox == p or inbox.startswith(p + "."):
        raise ConfigurationError(f"inbox prefix {inbox!r} is under the mesh's subject prefix {p!r}")
    if role.role == "node":
        return _node(p, u, inbox, role.kinds, replies)
    if role.role == "operator":
        return _operator(p, inbox, role.kinds)
    return _caller(p, inbox, role.kinds)


def _kinds(kinds: tuple[str, ...] | None) -> tuple[str, ...]:
    return ("*",) if kinds is None else kinds


# Nobody but the JetStream server itself needs to see these; a subscriber would see the
# messages published there (durable messages, dead letters, KV writes, API requests).
_SUB_DENY_COMMON = ("$KV.>", "$JS.>", "$SYS.>")


def _caller_publish(p: str, kinds: tuple[str, ...] | None) -> list[str]:
    out = []
    for k in _kinds(kinds):
        out += [f"{p}.agent.{k}.*", f"{p}.activate.{k}", f"{p}.inbox.{k}.*"]
    return out


def _counters(p: str, *, add: bool, create: bool) -> list[str]:
    """Native counters (protocol §18, ``natsagents/counters.py``): read (the stream's info,
    direct gets of counter subjects, leader gets), add (publish to ``<p>.counter.>``; after
    "no responders", which stream listens), create the stream on first use."""
    s = counters_stream(p)
    out = [f"$JS.API.STREAM.INFO.{s}", f"$JS.API.DIRECT.GET.{s}.{p}.{COUNTER_TOKEN}.>", f"$JS.API.STREAM.MSG.GET.{s}"]
    if add:
        out += [f"{p}.{COUNTER_TOKEN}.>", "$JS.API.STREAM.NAMES"]
    if create:
        out += [f"$JS.API.STREAM.CREATE.{s}", f"$JS.API.STREAM.UPDATE.{s}"]
    return out


def _caller_js_deny(p: str) -> list[str]:
    """All of JetStream but reading the counters stream (its info, direct and leader gets)
    and the stream lookup (``STREAM.NAMES``): what a caller's counters need."""
    out = ["$JS.ACK.>", "$JS.FC.>", "$JS.EVENT.>", "$JS.API.INFO", "$JS.API.CONSUMER.>", "$JS.API.ACCOUNT.>"]
    out += ["$JS.API.SERVER.>", "$JS.API.META.>", "$JS.API.STREAM.LIST"]
    verbs = ("CREATE", "UPDATE", "DELETE", "PURGE", "MSG.DELETE", "SNAPSHOT", "RESTORE", "LEADER", "PEER")
    out += [f"$JS.API.STREAM.{verb}.>" for verb in verbs]
    # The mesh's other streams: no reads at all (the control bucket holds the owner key).
    others = [f"KV_{bucket_name(p, b)}" for b in _BUCKETS] + [bucket_name(p, "inbox"), bucket_name(p, "dlq")]
    for s in others:
        out += [f"$JS.API.STREAM.INFO.{s}", f"$JS.API.STREAM.MSG.GET.{s}", f"$JS.API.DIRECT.GET.{s}"]
        out.append(f"$JS.API.DIRECT.GET.{s}.>")
    return out


def _caller(p: str, inbox: str, kinds: tuple[str, ...] | None) -> Permissions:
    return Permissions(
        publish_allow=(*_caller_publish(p, kinds), *_counters(p, add=True, create=False)),
        # No $KV (registry writes), no $JS but the counters' (no stream creation, consumers,
        # direct gets of the control bucket's owner key), no control subjects, no forged
        # replies to inboxes.
        publish_deny=("$KV.>", *_caller_js_deny(p), "$SYS.>", f"{p}.node.>", f"{p}.dlq.>", f"{p}.inboxp.>", "_INBOX.>"),
        subscribe_allow=(f"{inbox}.>",),
        subscribe_deny=(f"{p}.>", *_SUB_DENY_COMMON),
    )


def _kv_api(b: str, *, write: bool, watch: bool, keys: str = ">") -> list[str]:
    """JetStream API subjects of KV bucket ``b`` (stream ``KV_<b>``) that ``transport/kv.py``
    uses: open (STREAM.CREATE, then INFO/UPDATE when it exists with another config),
    direct gets, writes (PUB to ``$KV.<b>.<key>``), watches (push consumers with flow
    control)."""
    stream = f"KV_{b}"
    out = [f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.INFO.{stream}"]
    if write:
        out.append(f"$JS.API.STREAM.UPDATE.{stream}")
    out.append(f"$JS.API.DIRECT.GET.{stream}.$KV.{b}.{keys}")
    # Leader reads (``Bucket.get(leader=True)``): the key is in the body, not the subject.
    out.append(f"$JS.API.STREAM.MSG.GET.{stream}")
    if write:
        out.append(f"$KV.{b}.{keys}")
    if watch:
        out += [f"$JS.API.CONSUMER.CREATE.{stream}.>", f"$JS.API.CONSUMER.DELETE.{stream}.>", f"$JS.FC.{stream}.>"]
    return out


def _node(p: str, u: str, inbox: str, kinds: tuple[str, ...] | None, replies: Sequence[str]) -> Permissions:
    sub = []
    for k in _kinds(kinds):
        # <prefix>.agents.<n>: a cluster agent's own queue group (docs/protocol.md §3).
        sub += [f"{p}.agent.{k}.* {p}.agents", f"{p}.agent.{k}.* {p}.agents.*", f"{p}.activate.{k} {p}.hosts.{k}"]
        sub.append(f"{p}.crdt.{k}.*")  # the deltas of crdt kinds' copies (protocol §21)
    sub.append(f"{p}.node.{u}.*")
    # The NATS services API (protocol §16): $SRV.<verb>, .natsagents, .natsagents.<node>.
    sub += [
        f"$SRV.{v}{tail}"
        for v in ("PING", "INFO", "STATS")
        for tail in ("", f".{SERVICE_NAME}", f".{SERVICE_NAME}.{u}")
    ]
    sub.append(f"{inbox}.>")
    pub = [f"{r}>" for r in replies]
    # Handlers call agents of any kind; partition owners forward durable messages of every
    # kind; placement forwards activations and migrations to other nodes.
    pub += [f"{p}.agent.*.*", f"{p}.activate.*", f"{p}.node.*.*", f"{p}.inbox.*.*", f"{p}.dlq.*.*"]
    pub += [f"{p}.crdt.{k}.*" for k in _kinds(kinds)]
    pub += _kv_api(bucket_name(p, "members"), write=True, watch=True)
    pub += _kv_api(bucket_name(p, "directory"), write=True, watch=True)  # the leader removes any kind's records
    pub += _kv_api(bucket_name(p, "control"), write=True, watch=False)
    state = bucket_name(p, "state")
    if kinds is None:
        pub += _kv_api(state, write=True, watch=False)
    else:  # state records are written and read by their owner only: keys <kind>.<id token>
        stream = f"KV_{state}"
        pub += [f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.UPDATE.{stream}"]
        for k in kinds:
            pub += [f"$JS.API.DIRECT.GET.{stream}.$KV.{state}.{k}.*", f"$KV.{state}.{k}.*"]
        # An activation restores state from the stream leader (STREAM.MSG.GET names the
        # key in its body): reads of other kinds' state are not confined by subject.
        pub.append(f"$JS.API.STREAM.MSG.GET.{stream}")
    # Watches of state records: crdt copies merge each new revision (protocol §21.3), read
    # replicas follow their primary's (§19.3).
    state_stream = f"KV_{state}"
    pub += [f"$JS.API.CONSUMER.CREATE.{state_stream}.>", f"$JS.API.CONSUMER.DELETE.{state_stream}.>"]
    pub.append(f"$JS.FC.{state_stream}.>")
    for stream in (bucket_name(p, "inbox"), bucket_name(p, "dlq")):
        pub += [f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.UPDATE.{stream}"]
    inbox_stream = bucket_name(p, "inbox")
    pub += [
        f"$JS.API.CONSUMER.CREATE.{inbox_stream}.>",
        f"$JS.API.CONSUMER.INFO.{inbox_stream}.*",
        f"$JS.API.CONSUMER.DELETE.{inbox_stream}.*",
        f"$JS.API.CONSUMER.MSG.NEXT.{inbox_stream}.*",
        f"$JS.ACK.{inbox_stream}.>",
        # After "no responders" on a JetStream publish, which stream listens (if any).
        "$JS.API.STREAM.NAMES",
    ]
    pub += _counters(p, add=True, create=True)
    return Permissions(
        publish_allow=tuple(dict.fromkeys(pub)),
        publish_deny=(
            "$JS.API.STREAM.DELETE.>",
            "$JS.API.STREAM.PURGE.>",
            "$JS.API.STREAM.MSG.DELETE.>",
            "$JS.API.ACCOUNT.>",
            "$JS.API.SERVER.>",
            "$SYS.>",
        ),
        subscribe_allow=tuple(sub),
        subscribe_deny=(f"{p}.inbox.>", f"{p}.inboxp.>", f"{p}.dlq.>", *_SUB_DENY_COMMON),
    )


def _operator(p: str, inbox: str, kinds: tuple[str, ...] | None) -> Permissions:
    members, directory, dlq = bucket_name(p, "members"), bucket_name(p, "directory"), bucket_name(p, "dlq")
    pub = [f"{p}.node.*.info", f"{p}.node.*.drain", f"{p}.node.*.undrain", f"{p}.node.*.migrate"]
    # ClusterView opens (STREAM.CREATE: idempotent on an existing bucket), lists keys
    # (a headers-only watch) and reads (direct gets); it never writes.
    pub += _kv_api(members, write=False, watch=True)
    pub += _kv_api(directory, write=False, watch=True)
    # Dead letters: read, delete, replay (a JetStream publish to the agent's inbox).
    pub += [f"$JS.API.STREAM.MSG.GET.{dlq}", f"$JS.API.STREAM.MSG.DELETE.{dlq}", f"{p}.inbox.*.*"]
    pub.append(f"$JS.API.STREAM.INFO.{dlq}")  # how many dead letters (dlq ls, the dashboard)
    pub.append("$JS.API.STREAM.NAMES")
    pub += _counters(p, add=False, create=False)  # reads them, adds nothing
    # natsagents top and the dashboard ask the nodes' services API (protocol §16).
    pub += [f"$SRV.{v}.{SERVICE_NAME}" for v in ("PING", "INFO", "STATS")]
    if kinds:
        pub += [s for s in _caller_publish(p, kinds) if not s.startswith(f"{p}.inbox.")]
    return Permissions(
        publish_allow=tuple(pub),
        publish_deny=(
            "$KV.>",
            f"{p}.node.*.activate",
            f"{p}.node.*.adopt",
            "$JS.ACK.>",
            "$JS.API.STREAM.UPDATE.>",
            "$JS.API.STREAM.DELETE.>",
            "$JS.API.STREAM.PURGE.>",
            "$JS.API.CONSUMER.MSG.NEXT.>",
            "$SYS.>",
            "_INBOX.>",
        ),
        subscribe_allow=(f"{inbox}.>",),
        subscribe_deny=(f"{p}.>", *_SUB_DENY_COMMON),
    )


# -- rendering ------------------------------------------------------------------------


def validate_subject(entry: str) -> str:
    """Return ``entry`` if it is a valid permission subject (``subject`` or
    ``"subject queue"``): non-empty tokens of printable ASCII, ``*`` and ``>`` only as whole
    tokens, ``>`` last.

    Raises:
        ConfigurationError: it is not.
    """
    parts = entry.split(" ")
    if not 1 <= len(parts) <= 2:
        raise ConfigurationError(f"invalid permission subject {entry!r}")
    for part in parts:
        tokens = part.split(".")
        for i, token in enumerate(tokens):
            ok = bool(_TOKEN_RE.fullmatch(token)) and (token in ("*", ">") or not ("*" in token or ">" in token))
            if not ok or (token == ">" and i != len(tokens) - 1):
                raise ConfigurationError(f"invalid permission subject {entry!r}")
    return entry


def _conf_list(key: str, items: Sequence[str], indent: str) -> list[str]:
    if not items:
        return [f"{indent}{key}: []"]
    return [f"{indent}{key}: [", *(f"{indent}  {json.dumps(validate_subject(s))}" for s in items), f"{indent}]"]


def _user_block(role: Role, nkey: str, perms: Permissions, indent: str) -> list[str]:
    i2, i3, i4 = indent + "  ", indent + "    ", indent + "      "
    return [
        f"{indent}# {role.describe()}, inbox {role.inbox_prefix}.>",
        f"{indent}{{",
        f"{i2}nkey: {json.dumps(nkey)}",
        f"{i2}permissions: {{",
        f"{i3}publish: {{",
        *_conf_list("allow", perms.publish_allow, i4),
        *_conf_list("deny", perms.publish_deny, i4),
        f"{i3}}}",
        f"{i3}subscribe: {{",
        *_conf_list("allow", perms.subscribe_allow, i4),
        *_conf_list("deny", perms.subscribe_deny, i4),
        f"{i3}}}",
        f"{i2}}}",
        f"{indent}}}",
    ]


def validate_roles(roles: Sequence[Role], prefix: str = DEFAULT_PREFIX, *, account: str | None = None) -> None:
    """Check that ``roles`` make one valid configuration.

    Raises:
        ConfigurationError: no roles, a name used twice, an invalid prefix or account
            name, an inbox under the mesh's prefix.
    """
    if not roles:
        raise ConfigurationError("no users: give at least one role")
    names = [r.name for r in roles]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigurationError(f"user names must be unique (a NATS user has one permission set): {', '.join(twice)}")
    if account is not None and not _ACCOUNT_RE.fullmatch(account):
        raise ConfigurationError(f"invalid account name {account!r}: use 1-64 characters [A-Za-z0-9_-]")
    for role in roles:
        permissions_for(role, prefix)


def render_config(
    users: Sequence[tuple[Role, str]], prefix: str = DEFAULT_PREFIX, *, account: str | None = None
) -> str:
    """nats-server configuration for ``users`` (each a role and its nkey public key).

    Args:
        users: the users, each with its ``U…`` public key.
        prefix: the mesh's subject prefix.
        account: ``None`` for an ``authorization { users = […] }`` block (the global
            account); a name for an ``accounts { NAME { jetstream: enabled, users = […] } }``
            block (other accounts cannot see the mesh at all).

    Raises:
        ConfigurationError: no users, a name used twice, an invalid account name.
    """
    roles = [role for role, _ in users]
    validate_roles(roles, prefix, account=account)
    replies = reply_prefixes(roles)
    indent = "    " if account is None else "      "
    body: list[str] = []
    for role, nkey in users:
        body += _user_block(role, nkey, permissions_for(role, prefix, replies=replies), indent)
    head = [
        f"# natsagents: least-privilege users of the mesh with subject prefix {json.dumps(prefix)},",
        "# written by `natsagents auth` (docs/security.md). Include it from the server config:",
        '#   include "nats-auth.conf"   # resolved relative to the including file',
    ]
    if account is None:
        return "\n".join([*head, "authorization {", "  users = [", *body, "  ]", "}"]) + "\n"
    lines = [*head, "accounts {", f"  {account} {{", "    jetstream: enabled", "    users = [", *body, "    ]"]
    return "\n".join([*lines, "  }", "}"]) + "\n"


def template_role_name(role: Role) -> str:
    """The scoped key's role name, the same for every user of one role, kinds and (non-default)
    inbox: ``node-all``, ``caller-Counter-Ledger``, ``peer-Counter-_R_web`` …"""
    name = f"{role.role}-all" if role.kinds is None else "-".join((role.role, *role.kinds))
    if role.inbox is not None:
        name += "-" + "".join(c if c.isalnum() or c in "_-" else "_" for c in role.inbox)
    return name


def scoped_signing_key(
    role: Role, key: str, prefix: str = DEFAULT_PREFIX, *, replies: Sequence[str] = (DEFAULT_REPLY_PREFIX,)
) -> dict[str, Any]:
    """An account scoped signing key for JWT (operator) mode, as it appears in the account
    JWT's ``signing_keys``: users signed with ``key`` get these permissions, with
    ``{{name()}}`` (the user JWT's name) in their inbox and, for nodes, their control
    subjects. A user JWT's name must therefore be a valid subject token (a node's: its
    node id).

    Args:
        role: the role; its name is not used (the template serves every user of the role),
            its inbox only when it is not the default.
        key: the account signing key's public key (``A…``).
        prefix: the mesh's subject prefix.
        replies: inbox prefixes hosts answer to (:func:`reply_prefixes`).
    """
    perms = permissions_for(role, prefix, replies=replies, user=NAME_TEMPLATE)
    # nats-server expands a list that holds a template entry by entry and keeps only valid
    # subjects: a "subject queue" entry has a space, so it would be dropped silently. The
    # template allows those subjects without the queue-group restriction instead.
    plain = tuple(dict.fromkeys(entry.split(" ")[0] for entry in perms.subscribe_allow))
    perms = dataclasses.replace(perms, subscribe_allow=plain)
    for entry in (*perms.publish_allow, *perms.publish_deny, *perms.subscribe_allow, *perms.subscribe_deny):
        validate_subject(entry)
    return {
        "kind": "user_scope",
        "key": key,
        "role": template_role_name(role),
        "template": perms.jwt_template(),
        "description": f"natsagents {role.role} ({role.scope}), subject prefix {prefix}",
    }


def permissions_json(roles: Sequence[Role], prefix: str = DEFAULT_PREFIX) -> list[Mapping[str, Any]]:
    """Every role's permission lists (for ``natsagents auth --json``)."""
    replies = reply_prefixes(roles)
    return [
        {
            "user": r.name,
            "role": r.role,
            "kinds": None if r.kinds is None else list(r.kinds),
            "inbox_prefix": r.inbox_prefix,
            "permissions": permissions_for(r, prefix, replies=replies).as_dict(),
        }
        for r in roles
    ]
