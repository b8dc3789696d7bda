"""``natsagents auth``: least-privilege NATS users for a mesh.

``natsagents auth --out DIR --node n1:Counter,Ledger --caller alice:Counter --operator ops
--peer web:Counter`` writes, in ``DIR``:

* ``nats-auth.conf``: the users (nkey public keys) with the permissions of their role
  (``natsagents.server.permissions``), to ``include`` from a server config;
* ``<user>.nk``: each user's nkey seed (mode 0600). An existing seed file is kept, so
  running the command again changes permissions without changing keys;
* ``jwt/<role>.json`` and ``jwt/<role>.nk``: for operator (JWT) mode, one account scoped
  signing key per distinct role, its template using ``{{name()}}`` for per-user subjects.

Then it prints how each user connects. ``--json`` prints the same as JSON, with every
permission list; without ``--out`` nothing is written and no key is made.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..server.permissions import (
    DEFAULT_REPLY_PREFIX,
    Role,
    permissions_json,
    render_config,
    reply_prefixes,
    scoped_signing_key,
    template_role_name,
    validate_roles,
)
from ..wire.subjects import DEFAULT_PREFIX, validate_prefix
from .main import Exit, command, print_json

__all__ = ["CONFIG_NAME", "Generated", "UserKey", "generate", "roles_from_args"]

CONFIG_NAME = "nats-auth.conf"


@dataclass(frozen=True, slots=True)
class UserKey:
    """A user written by :func:`generate`: its role, public key and seed file."""

    role: Role
    public_key: str
    seed_file: Path
    created: bool  # a new key (False: the seed file existed and was kept)


@dataclass(frozen=True, slots=True)
class Generated:
    """What :func:`generate` wrote."""

    config: Path
    users: tuple[UserKey, ...]
    templates: tuple[Path, ...]


def _nkeys() -> Any:
    try:
        import nkeys
    except ImportError:
        raise ConfigurationError('natsagents auth needs the nkeys package: pip install "natsagents[nkeys]"') from None
    return nkeys


def _key_pair(path: Path, kind: str) -> tuple[str, bool]:
    """The public key of the seed in ``path`` (``kind``: ``"U"`` user, ``"A"`` account),
    made and written (mode 0600) if the file does not exist; and whether it was made."""
    nkeys = _nkeys()
    if path.exists():
        seed = path.read_bytes().strip()
        if not seed.startswith(b"S" + kind.encode()):
            raise ConfigurationError(f"{path} does not hold an nkey {'user' if kind == 'U' else 'account'} seed")
        os.chmod(path, 0o600)
        return str(nkeys.from_seed(seed).public_key.decode()), False
    prefix = nkeys.PREFIX_BYTE_USER if kind == "U" else nkeys.PREFIX_BYTE_ACCOUNT
    seed = bytes(nkeys.encode_seed(os.urandom(32), prefix))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed + b"\n")
    return str(nkeys.from_seed(seed).public_key.decode()), True


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def generate(
    out: str | os.PathLike[str], roles: Sequence[Role], *, prefix: str = DEFAULT_PREFIX, account: str | None = None
) -> Generated:
    """Write the server configuration, the users' seeds and the JWT templates to ``out``.

    Args:
        out: the directory (created if missing).
        roles: the users.
        prefix: the mesh's subject prefix.
        account: render the users in an ``accounts`` block of that name (``None``: an
            ``authorization`` block).

    Raises:
        ConfigurationError: invalid roles, names used twice, a seed file of the wrong
            kind, no ``nkeys`` package.
    """
    validate_roles(roles, prefix, account=account)  # before writing anything
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    users = []
    for role in roles:
        seed_file = directory / f"{role.name}.nk"
        public, created = _key_pair(seed_file, "U")
        users.append(UserKey(role, public, seed_file, created))
    config = directory / CONFIG_NAME
    _write_text(config, render_config([(u.role, u.public_key) for u in users], prefix, account=account))
    return Generated(config, tuple(users), _write_templates(directory / "jwt", roles, prefix))


def _write_templates(directory: Path, roles: Sequence[Role], prefix: str) -> tuple[Path, ...]:
    """One scoped signing key per distinct role (role, kinds, non-default inbox)."""
    replies = reply_prefixes(roles)
    distinct: dict[str, Role] = {}
    for role in roles:
        distinct.setdefault(template_role_name(role), role)
    directory.mkdir(exist_ok=True)
    written = []
    for name, role in distinct.items():
        key, _ = _key_pair(directory / f"{name}.nk", "A")
        scope = scoped_signing_key(role, key, prefix, replies=replies)
        path = directory / f"{name}.json"
        _write_text(path, json.dumps(scope, indent=2) + "\n")
        written.append(path)
    return tuple(written)


# -- the command ----------------------------------------------------------------------


def _options(parser: argparse.ArgumentParser) -> None:
    spec = "NAME[:KIND,...][:INBOX]"
    parser.add_argument("--out", metavar="DIR", default=None, help=f"write {CONFIG_NAME}, the seeds and jwt/ here")
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"subject prefix of the mesh (default: {DEFAULT_PREFIX})"
    )
    parser.add_argument(
        "--account", metavar="NAME", default=None, help="put the users in account NAME (default: the global account)"
    )
    for role, text in (
        ("node", "a cluster node hosting KINDs (default: every kind); NAME is its node id"),
        ("caller", "a caller of KINDs (default: every kind), durable sends included"),
        ("peer", "a caller in another language; INBOX: its reply prefix (default _INBOX.NAME)"),
        ("operator", "the CLI's nodes/ls/migrate/drain/dlq; KINDs it may also call (default: none)"),
    ):
        parser.add_argument(
            f"--{role}", dest="roles", metavar=spec, action="append", default=[], type=_tagged(role), help=text
        )
    parser.add_argument("--json", action="store_true", help="print the users and their permission lists as JSON")


def _tagged(role: str) -> Any:
    def parse(text: str) -> tuple[str, str]:
        return role, text

    parse.__name__ = role  # argparse names the type in errors
    return parse


def roles_from_args(args: argparse.Namespace) -> list[Role]:
    """The :class:`Role` of every ``--node``/``--caller``/``--peer``/``--operator``.

    Raises:
        ConfigurationError: a malformed spec.
    """
    return [Role.parse(role, text) for role, text in args.roles]


@command(
    "auth",
    help="generate least-privilege NATS users (nkeys) for nodes, callers, peers and operators",
    configure=_options,
    description="Compute each role's NATS publish/subscribe permissions for the mesh and write DIR/"
    f"{CONFIG_NAME} (users with nkey public keys, to include from nats-server's config), a seed file per "
    "user (mode 0600; an existing one is kept) and, for operator/JWT mode, scoped signing-key templates in "
    "DIR/jwt/. Prints how each user connects. See docs/security.md.",
)
def _auth(args: argparse.Namespace) -> int:
    prefix = validate_prefix(args.prefix)
    roles = roles_from_args(args)
    if not roles:
        raise ConfigurationError("give at least one --node, --caller, --peer or --operator")
    if args.out is None:
        if not args.json:
            raise ConfigurationError("give --out DIR to write the users, or --json to print the permissions only")
        validate_roles(roles, prefix, account=args.account)
        print_json({"prefix": prefix, "users": permissions_json(roles, prefix)})
        return Exit.OK
    done = generate(args.out, roles, prefix=prefix, account=args.account)
    if args.json:
        listed = permissions_json(roles, prefix)
        print_json(
            {
                "prefix": prefix,
                "config": str(done.config),
                "users": [
                    {**entry, "public_key": u.public_key, "seed_file": str(u.seed_file), "new_key": u.created}
                    for entry, u in zip(listed, done.users, strict=True)
                ],
                "jwt_templates": [str(p) for p in done.templates],
            }
        )
    else:
        _report(done, prefix, reply_prefixes(roles))
    return Exit.OK


def _report(done: Generated, prefix: str, replies: tuple[str, ...]) -> None:
    out = sys.stdout
    print(f"wrote {done.config} ({len(done.users)} users, subject prefix {prefix!r})", file=out)
    print(f'  include it from nats-server\'s config: include "{CONFIG_NAME}"  (relative to that file)', file=out)
    for u in done.users:
        print(f"  {u.role.describe()}: seed {u.seed_file} ({'new' if u.created else 'kept'})", file=out)
    print(f"wrote {len(done.templates)} scoped signing-key templates for operator (JWT) mode in", file=out)
    print(f"  {done.templates[0].parent}/ (see docs/security.md)", file=out)
    extra = [r for r in replies if r != DEFAULT_REPLY_PREFIX]
    host_opts = f", reply_prefixes={(DEFAULT_REPLY_PREFIX, *extra)!r}" if extra else ""
    prefix_opt = f", prefix={prefix!r}" if prefix != DEFAULT_PREFIX else ""
    print("connect:", file=out)
    for u in done.users:
        r, seed = u.role, str(u.seed_file)
        common = f'auth=Auth(nkey_seed="{seed}"), inbox_prefix="{r.inbox_prefix}"{prefix_opt}'
        if r.role == "node":
            cluster = f'name="{r.name}", cluster=ClusterSettings(node_id="{r.name}")'
            print(f"  {r.name}: Mesh.connect(URL, {cluster}, {common}{host_opts})", file=out)
        elif r.role == "peer":
            print(
                f"  {r.name}: any NATS client with the nkey seed in {seed} and the inbox prefix {r.inbox_prefix}"
                f" (nats CLI: --nkey {seed} --inbox-prefix {r.inbox_prefix})",
                file=out,
            )
        else:
            print(f"  {r.name}: Mesh.connect(URL, {common})", file=out)
            cli_prefix = f" --prefix {prefix}" if prefix != DEFAULT_PREFIX else ""
            command = "nodes" if r.role == "operator" else "call KIND/ID ACTION"
            print(
                f"  {'':{len(r.name)}}  natsagents {command} --servers URL --nkey {seed}"
                f" --inbox-prefix {r.inbox_prefix}{cli_prefix}",
                file=out,
            )
    out.flush()
