"""Dead-letter commands: ``dlq ls``, ``dlq replay`` and ``dlq rm``.

A durable message (``call``/``send --delivery at_least_once|exactly_once``) that keeps
failing, or fails in a way a retry cannot fix (unknown action, bad parameters), goes to
the mesh's dead-letter stream. ``dlq ls`` lists those messages, ``dlq replay`` publishes
them to their agent's inbox again (once the agent is fixed) and ``dlq rm`` drops them.
Until something is dead-lettered the stream may not exist: ``ls`` then lists nothing, and
``replay``/``rm`` report each sequence as not found.

Exit codes as for every command: 0 ok, 1 the operation failed (for ``replay`` and ``rm``:
any of the sequences given), 2 bad usage, 3 NATS unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import AgentError, AgentNotFound, ConfigurationError, NatsAgentsError, ProtocolError
from ..transport.jetstream import JetStreamError, StreamNotFound
from ..transport.kv import KvError
from ..wire import codec, envelope
from ..wire import headers as h
from ..wire.subjects import validate_prefix
from .cluster import render_table
from .main import Exit, _error, _positive_int, add_connection_options, command, open_mesh, print_json, to_jsonable

if TYPE_CHECKING:
    from ..delivery import DeadLetter
    from ..mesh import Mesh

__all__ = ["format_age", "render_body"]

#: Errors of one dead-letter operation: reported, and the command goes on to the next
#: sequence. Connection errors (other TransportErrors) end the command with exit code 3.
_OPERATION_ERRORS = (AgentError, JetStreamError, KvError, ProtocolError)
_STREAM_NOT_FOUND = 10059  # JetStream's err_code for "stream not found"
_SEQUENCE_NOT_FOUND = 10043  # MSG.DELETE of a sequence already deleted
_DELETE_FAILED = 10057  # MSG.DELETE failed; the description says why
_NO_SUCH_MESSAGE = ("no message found", "stream store EOF")  # ... below the first / past the last sequence
_ALL = 1_000_000  # "every dead letter" for replay --all
_REASON_WIDTH = 60
_BODY_CHARS = 200  # --body-max default

DlqRunner = Callable[["Mesh", argparse.Namespace], Awaitable[int]]


# -- output helpers -------------------------------------------------------------------


def format_age(seconds: float) -> str:
    """A duration in the largest whole unit: ``45s``, ``12m``, ``3h``, ``6d``."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _printable(text: str) -> str:
    """``text`` safe for a terminal: every character that is not printable (control
    characters, escape sequences, line separators) written as ``\\uXXXX``."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _truncate(text: str, width: int = _REASON_WIDTH) -> str:
    flat = _printable(re.sub(r"\s+", " ", text).strip())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def render_body(data: bytes, headers: dict[str, str], limit: int = _BODY_CHARS) -> tuple[str, str, bool]:
    """A dead letter's body as one line of at most ``limit`` characters:
    ``(text, form, truncated)``.

    ``form`` says how it was read: ``msgpack`` (decoded, shown as JSON; bytes inside as
    base64), ``deflate+msgpack`` (``Na-Encoding: deflate``, inflated within the protocol's
    bound first), ``text`` (UTF-8 that is not msgpack, non-printable characters escaped),
    ``hex`` (anything else) or ``empty``. The body is a peer's bytes: decoding is bounded
    (wire.codec's limits) and nothing unprintable reaches the terminal.
    """
    if not data:
        return "", "empty", False
    body, form = data, "msgpack"
    if headers.get(h.ENCODING) == "deflate":
        try:
            body, form = envelope.inflate(data), "deflate+msgpack"
        except ProtocolError:
            body, form = data, "msgpack"
    try:
        text = json.dumps(to_jsonable(codec.decode(body), set()), ensure_ascii=False)
    except (ValueError, RecursionError):
        try:
            text, form = json.dumps(data.decode("utf-8"), ensure_ascii=False)[1:-1], "text"
        except UnicodeDecodeError:
            text, form = data[:limit].hex(), "hex"  # enough bytes for `limit` characters, and cut below
    text = _printable(text)
    if len(text) <= limit:
        return text, form, False
    return text[: max(0, limit - 3)] + "...", form, True


def _stream_missing(exc: BaseException) -> bool:
    """The dead-letter stream does not exist (yet). The SDK raises StreamNotFound, or a
    ``KvError`` with the same err_code from its raw API requests."""
    return isinstance(exc, StreamNotFound) or (isinstance(exc, KvError) and exc.err_code == _STREAM_NOT_FOUND)


def _no_such_letter(exc: BaseException) -> bool:
    """The stream has no message with the sequence given (or there is no stream).

    ``delete_dead_letter`` returns ``False`` only for err_code 10037; the server answers a
    delete of a missing sequence with 10043 or 10057 instead, which come here as errors.
    """
    if _stream_missing(exc) or isinstance(exc, AgentNotFound):
        return True
    if not isinstance(exc, (JetStreamError, KvError)):
        return False
    if exc.err_code == _SEQUENCE_NOT_FOUND:
        return True
    return exc.err_code == _DELETE_FAILED and any(text in exc.message for text in _NO_SUCH_MESSAGE)


def _describe(exc: NatsAgentsError) -> str:
    """One line: the error's code and message."""
    if isinstance(exc, AgentError):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, ProtocolError):
        return f"protocol_error: {exc.message}"
    return f"jetstream: {exc.message}"


async def _letters(mesh: Mesh, limit: int) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters; none when the stream does not exist yet."""
    try:
        return await mesh.dead_letters(limit=limit)
    except (JetStreamError, KvError) as exc:
        if _stream_missing(exc):
            return []
        raise


# -- argument parsing -----------------------------------------------------------------


def _seq_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects instead of text")
    add_connection_options(parser)
    # As on every command: -v also works after the subcommand.
    parser.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="log to stderr (-v: info, -vv: debug)"
    )


def _dlq_options(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dlq_command", metavar="SUBCOMMAND", required=True)

    ls = sub.add_parser(
        "ls",
        help="list dead letters, oldest first",
        description="List the dead-letter stream, oldest first: SEQ (use it with replay and rm), the agent and "
        "action, the ERROR code, how many DELIVERIES were tried, AGE and the REASON; with --body also the BODY "
        "(msgpack shown as JSON, else text or hex, cut after --body-max characters; with --json the fields body, "
        "body_form and body_truncated). "
        "Exit codes: 0 ok, 2 bad usage, 3 NATS unreachable.",
    )
    ls.add_argument(
        "--limit", metavar="N", type=_positive_int, default=100, help="list at most N dead letters (default: 100)"
    )
    ls.add_argument(
        "--body",
        action="store_true",
        help="also show each message body: msgpack decoded and shown as JSON, else UTF-8 text or hex",
    )
    ls.add_argument(
        "--body-max",
        metavar="CHARS",
        type=_positive_int,
        default=_BODY_CHARS,
        help=f"cut each body shown after CHARS characters (default: {_BODY_CHARS})",
    )
    _seq_options(ls)
    ls.set_defaults(_dlq_run=_ls)

    replay = sub.add_parser(
        "replay",
        help="publish dead letters to their agent's inbox again, then delete them",
        description="Publish each dead letter SEQ (or every one, with --all) to its agent's durable inbox again, "
        "unchanged, and delete it from the dead-letter stream; a cluster node then runs it. Sequences that exist "
        "are replayed even when others fail. Exit codes: 0 all replayed, 1 any failed (no such dead letter), "
        "2 bad usage, 3 NATS unreachable.",
    )
    replay.add_argument("seqs", metavar="SEQ", nargs="*", type=_positive_int, help="dead letter sequences (dlq ls)")
    replay.add_argument("--all", action="store_true", help="replay every dead letter listed when the command starts")
    _seq_options(replay)
    replay.set_defaults(_dlq_run=_replay)

    rm = sub.add_parser(
        "rm",
        help="delete dead letters",
        description="Delete dead letters SEQ ... from the dead-letter stream. Exit codes: 0 all deleted, 1 any "
        "was not found, 2 bad usage, 3 NATS unreachable.",
    )
    rm.add_argument("seqs", metavar="SEQ", nargs="+", type=_positive_int, help="dead letter sequences (dlq ls)")
    _seq_options(rm)
    rm.set_defaults(_dlq_run=_rm)


@command(
    "dlq",
    help="list, replay or delete dead letters (durable messages that could not be delivered)",
    configure=_dlq_options,
    description="The dead-letter stream of durable delivery: 'dlq ls' lists it, 'dlq replay SEQ ...|--all' "
    "sends messages to their agents again, 'dlq rm SEQ ...' drops them.",
)
def _dlq(args: argparse.Namespace) -> int:
    # Everything that can be wrong with the arguments is found before connecting.
    validate_prefix(args.prefix)
    if args.dlq_command == "replay":
        if args.all and args.seqs:
            raise ConfigurationError("give dead letter sequences or --all, not both")
        if not args.all and not args.seqs:
            raise ConfigurationError("give the dead letter sequences to replay (see 'natsagents dlq ls'), or --all")
    run: DlqRunner = args._dlq_run
    return asyncio.run(_with_mesh(args, run))


async def _with_mesh(args: argparse.Namespace, run: DlqRunner) -> int:
    async with open_mesh(args) as mesh:
        try:
            return await run(mesh, args)
        except _OPERATION_ERRORS as exc:
            _error(_describe(exc))
            return Exit.FAILED


# -- ls -------------------------------------------------------------------------------


async def _ls(mesh: Mesh, args: argparse.Namespace) -> int:
    letters = await _letters(mesh, args.limit + 1)  # one more: tells whether there are more
    more = len(letters) > args.limit
    letters = letters[: args.limit]
    bodies = [render_body(d.data, d.headers, args.body_max) if args.body else None for d in letters]
    if args.json:
        out = []
        for letter, body in zip(letters, bodies, strict=True):
            item = letter.to_wire()
            if body is not None:
                item.update(body=body[0], body_form=body[1], body_truncated=body[2])
            out.append(item)
        print_json(out)
    elif not letters:
        print("no dead letters", flush=True)
    else:
        now_ms = time.time() * 1000
        rows = [
            (
                str(d.seq),
                _printable(d.agent) or "-",
                _printable(d.action) or "-",
                _printable(d.error) or "-",
                str(d.deliveries),
                format_age((now_ms - d.time_ms) / 1000) if d.time_ms else "-",
                _truncate(d.reason) or "-",
                *([f"{body[1]}: {body[0]}" if body[0] else body[1]] if body is not None else []),
            )
            for d, body in zip(letters, bodies, strict=True)
        ]
        headers = ("SEQ", "AGENT", "ACTION", "ERROR", "DELIVERIES", "AGE", "REASON", *(["BODY"] if args.body else []))
        print(render_table(headers, rows), flush=True)
        if any(body is not None and body[2] for body in bodies):
            print(f"note: bodies cut after {args.body_max} characters; --body-max N shows more", file=sys.stderr)
    if more:
        print(f"note: showing the oldest {args.limit}; --limit N shows more", file=sys.stderr, flush=True)
    return Exit.OK


# -- replay / rm ----------------------------------------------------------------------


def _unique(seqs: Sequence[int]) -> list[int]:
    return list(dict.fromkeys(seqs))


def _failed(seq: int, exc: NatsAgentsError) -> dict[str, Any]:
    """Report a failed operation on dead letter ``seq`` on stderr; its JSON fields."""
    if _no_such_letter(exc):
        code, message = AgentNotFound.code, f"no dead letter {seq}"
    else:
        code, _, message = _describe(exc).partition(": ")
        message = f"dead letter {seq}: {message}"
    _error(f"{code}: {message}")
    return {"seq": seq, "error": code, "message": message}


async def _replay(mesh: Mesh, args: argparse.Namespace) -> int:
    seqs = [d.seq for d in await _letters(mesh, _ALL)] if args.all else _unique(args.seqs)
    results: list[dict[str, Any]] = []
    for seq in seqs:
        try:
            inbox_seq = await mesh.replay_dead_letter(seq)
        except _OPERATION_ERRORS as exc:
            results.append({"seq": seq, "replayed": False, **_failed(seq, exc)})
            continue
        results.append({"seq": seq, "replayed": True, "inbox_seq": inbox_seq})
        if not args.json:
            print(f"replayed {seq} (inbox seq {inbox_seq})", flush=True)
    if args.json:
        print_json(results)
    elif not seqs:
        print("no dead letters", flush=True)
    return Exit.OK if all(r["replayed"] for r in results) else Exit.FAILED


async def _rm(mesh: Mesh, args: argparse.Namespace) -> int:
    results: list[dict[str, Any]] = []
    for seq in _unique(args.seqs):
        try:
            deleted = await mesh.delete_dead_letter(seq)
        except _OPERATION_ERRORS as exc:
            results.append({"seq": seq, "deleted": False, **_failed(seq, exc)})
            continue
        if not deleted:
            results.append({"seq": seq, "deleted": False, **_failed(seq, AgentNotFound(f"no dead letter {seq}"))})
            continue
        results.append({"seq": seq, "deleted": True})
        if not args.json:
            print(f"deleted {seq}", flush=True)
    if args.json:
        print_json(results)
    return Exit.OK if all(r["deleted"] for r in results) else Exit.FAILED
