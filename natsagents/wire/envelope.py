"""Request and reply envelopes of protocol v1: headers plus a msgpack body.

Pure functions: no I/O, no NATS. ``transport`` moves the bytes, ``runtime`` and the
caller side use these to build and read them.
"""

from __future__ import annotations

import base64
import os
import re
import zlib
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..errors import ProtocolError, error_for_code
from . import codec
from . import headers as h

__all__ = [
    "ACTION_RE",
    "DEFAULT_MAX_PAYLOAD",
    "ERROR_BODY_KEYS",
    "INFLATE_RATIO",
    "MALFORMED",
    "MAX_INFLATED",
    "MESSAGE_ID_RE",
    "OK_HEADER_BLOCK",
    "RequestMeta",
    "deflate",
    "encode_headers",
    "encode_headers_unchecked",
    "error_reply",
    "headers_of_block",
    "headers_size",
    "inflate",
    "inflate_limit",
    "new_message_id",
    "ok_reply",
    "parse_header_block",
    "parse_reply",
    "parse_request",
    "request_headers",
]

#: What a ``Na-Msg-Id`` or ``Na-Correlation-Id`` must match (1-64 of ``[A-Za-z0-9_-]``).
MESSAGE_ID_RE = _ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_message_id(value: object) -> bool:
    """Whether ``value`` can be a ``Na-Msg-Id`` (1-64 of ``[A-Za-z0-9_-]``)."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


#: What ``Na-Action`` (and so every action name) must match.
ACTION_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
#: Keys of the map in an error reply's body.
ERROR_BODY_KEYS = ("code", "message", "agent", "action", "traceback", "details")

_HDR_LINE = len(b"NATS/1.0\r\n") + len(b"\r\n")
_BAD_KEY = re.compile(r"[\s:]|^$")
_BAD_VALUE = re.compile(r"[\r\n]")


class _IdSource:
    """128-bit random ids (protocol §4.1): 16 bytes from the OS's CSPRNG each, read in
    blocks of 256 ids so an id costs a slice, not a syscall. Nothing about one id tells
    anything about the next (a counter or a per-process prefix would: a peer that saw one
    id could pre-send the next ones and poison the host's dedup)."""

    _BLOCK = 16 * 256

    def __init__(self) -> None:
        self._renew()

    def _renew(self) -> None:
        self._buf = b""
        self._pos = self._BLOCK

    def next(self) -> str:
        pos = self._pos
        if pos >= self._BLOCK:
            self._buf = os.urandom(self._BLOCK)
            pos = 0
        self._pos = pos + 16
        return base64.urlsafe_b64encode(self._buf[pos : pos + 16])[:22].decode()


_ids = _IdSource()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids._renew)  # a forked child must not repeat ids


def new_message_id() -> str:
    """A fresh message id: 22 base64url characters carrying 128 random bits."""
    return _ids.next()


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """The NATS header block for ``headers`` (``NATS/1.0\\r\\n`` + ``Key: value\\r\\n``… + ``\\r\\n``).

    Raises:
        ValueError: a key or value contains CR or LF, or a key contains ``:`` or spaces.
    """
    parts = [b"NATS/1.0\r\n"]
    for key, value in headers.items():
        if _BAD_KEY.search(key) or _BAD_VALUE.search(value):
            raise ValueError(f"header {key!r} cannot be sent: CR, LF (or ':', spaces in names) are not allowed")
        parts.append(f"{key}: {value}\r\n".encode())
    parts.append(b"\r\n")
    return b"".join(parts)


def encode_headers_unchecked(headers: Mapping[str, str]) -> bytes:
    """:func:`encode_headers` for values already known to be safe (no CR/LF, plain names)."""
    return ("NATS/1.0\r\n" + "".join([f"{k}: {v}\r\n" for k, v in headers.items()]) + "\r\n").encode()


#: Set by :func:`parse_header_block` on a block it cannot read; requests carrying it are
#: answered ``bad_request`` (a peer may send it too: it only earns itself that answer).
MALFORMED = "Na-Malformed-Headers"
_HDR_PREFIX = b"NATS/1.0"


def parse_header_block(raw: bytes) -> dict[str, str] | None:
    """Read a NATS header block (``NATS/1.0[ <status>[ <description>]]\r\n`` then
    ``Name: value\r\n`` lines). Never raises: any peer can send any bytes here.

    The status line gives ``Status`` (three digits) and ``Description``, as nats-py does.
    Lines without a colon, and names with whitespace or non-ASCII bytes, are skipped;
    bytes that are not UTF-8 become U+FFFD. A block that does not start with ``NATS/1.0``
    gives ``{MALFORMED: reason}``. ``None`` when there is nothing in it.
    """
    if not raw.startswith(_HDR_PREFIX):
        return {MALFORMED: "the header block does not start with NATS/1.0"}
    text = raw[len(_HDR_PREFIX) :].decode("utf-8", "replace")
    first, _, rest = text.partition("\r\n")
    out: dict[str, str] = {}
    if first:
        if first[0] != " ":
            return {MALFORMED: "the header block's first line is not NATS/1.0"}
        code, _, description = first.strip().partition(" ")
        if len(code) == 3 and code.isascii() and code.isdigit():
            out["Status"] = code
            description = description.strip()
            if description:
                out["Description"] = description
    names = _NAMES
    for line in rest.split("\r\n"):
        raw_name, sep, value = line.partition(":")
        if not sep:
            continue
        name = names.get(raw_name)
        if name is None:
            name = _header_name(raw_name)
        if name:
            out[name] = value.strip()
    return out or None


#: Header names as they stand before the colon → the name they give (``""``: a line to
#: skip). A block's names are nearly always the same few, so each is read once; at most
#: ``_MAX_NAMES`` are kept (names past it are read every time, never cached).
_NAMES: dict[str, str] = {}
_MAX_NAMES = 512


def _header_name(raw: str) -> str:
    """The name ``raw`` gives (stripped), or ``""`` when it is empty or has whitespace or
    non-ASCII characters (that line is skipped)."""
    name = raw.strip()
    if not name or not name.isascii() or " " in name or "\t" in name:
        name = ""
    if len(_NAMES) < _MAX_NAMES:
        _NAMES[raw] = name
    return name


def headers_size(headers: Mapping[str, str] | None) -> int:
    """Bytes the header block takes on the wire (counts toward ``max_payload``)."""
    if not headers:
        return 0
    size = _HDR_LINE
    for key, value in headers.items():
        size += len(key) + len(value.encode()) + 4  # "k: v\r\n"
    return size


class RequestMeta(NamedTuple):
    """What the headers of an incoming request say."""

    action: str
    message_id: str
    correlation_id: str
    deadline_ms: int | None
    caller: str | None
    reply_mode: str
    traceparent: str | None
    tracestate: str | None


def request_headers(
    *,
    action: str,
    message_id: str,
    correlation_id: str | None,
    deadline_ms: int | None,
    caller: str | None = None,
    reply_mode: str = h.REPLY_MODE_RESULT,
    trace: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Headers of a request; optional headers are left out when they add nothing."""
    out = {h.PROTO: h.PROTO_VERSION, h.ACTION: action, h.MESSAGE_ID: message_id}
    if correlation_id and correlation_id != message_id:
        out[h.CORRELATION_ID] = correlation_id
    if deadline_ms is not None:
        out[h.DEADLINE] = str(deadline_ms)
    if caller:
        out[h.CALLER] = caller
    if reply_mode != h.REPLY_MODE_RESULT:
        out[h.REPLY_MODE] = reply_mode
    if trace:
        out.update(trace)
    return out


#: Action names that matched :data:`ACTION_RE` (a regular expression per request is most of
#: what checking one costs); at most ``_MAX_ACTIONS``, later ones are matched every time.
_ACTIONS: set[str] = set()
_MAX_ACTIONS = 4096


# Header names read for every request, as module constants (an attribute load less each).
_PROTO, _ACTION, _MESSAGE_ID, _CORRELATION_ID, _DEADLINE = h.PROTO, h.ACTION, h.MESSAGE_ID, h.CORRELATION_ID, h.DEADLINE
_REPLY_MODE, _RESULT, _ACCEPT, _CALLER = h.REPLY_MODE, h.REPLY_MODE_RESULT, h.REPLY_MODE_ACCEPT, h.CALLER
_TRACEPARENT, _TRACESTATE = h.TRACEPARENT, h.TRACESTATE


def parse_request(headers: Mapping[str, str] | None, checked_id: str | None = None) -> RequestMeta:
    """Read and check the headers of a request. ``checked_id``: a ``Na-Msg-Id`` the caller
    already matched against :data:`MESSAGE_ID_RE` (not matched again when it is the one
    in ``headers``).

    Raises:
        ProtocolError: a header is missing or malformed (answered with ``bad_request``).
    """
    get = (headers or _EMPTY).get
    malformed = get(MALFORMED)
    if malformed is not None:
        raise ProtocolError(f"malformed NATS header block: {malformed[:80]}")
    proto = get(_PROTO)
    if proto is not None and proto != h.PROTO_VERSION:
        raise ProtocolError(f"unsupported protocol version {proto!r} (this host speaks {h.PROTO_VERSION})")
    action = get(_ACTION)
    if action is None:
        raise ProtocolError(f"missing {h.ACTION} header")
    if action not in _ACTIONS:
        if not ACTION_RE.fullmatch(action):
            raise ProtocolError(f"malformed {h.ACTION} header {action[:80]!r}")
        if len(_ACTIONS) < _MAX_ACTIONS:
            _ACTIONS.add(action)
    message_id = get(_MESSAGE_ID)
    if message_id is None:
        message_id = new_message_id()
    elif message_id != checked_id and not _ID_RE.fullmatch(message_id):
        raise ProtocolError(f"malformed {h.MESSAGE_ID} header {message_id[:80]!r}")
    correlation_id = get(_CORRELATION_ID)
    if correlation_id is None:
        correlation_id = message_id
    elif not _ID_RE.fullmatch(correlation_id):
        raise ProtocolError(f"malformed {h.CORRELATION_ID} header {correlation_id[:80]!r}")
    deadline_ms: int | None = None
    raw_deadline = get(_DEADLINE)
    if raw_deadline is not None:
        if not raw_deadline.isascii() or not raw_deadline.isdigit() or len(raw_deadline) > 15:
            raise ProtocolError(f"malformed {h.DEADLINE} header {raw_deadline[:80]!r}")
        deadline_ms = int(raw_deadline)
    reply_mode = get(_REPLY_MODE, _RESULT)
    if reply_mode != _RESULT and reply_mode != _ACCEPT:
        raise ProtocolError(f"malformed {h.REPLY_MODE} header {reply_mode[:80]!r}")
    caller = get(_CALLER)
    if caller is not None and len(caller) > 256:
        raise ProtocolError(f"{h.CALLER} header longer than 256 characters")
    # tuple.__new__: RequestMeta's own __new__ is a Python function (a frame per request).
    return _new(
        RequestMeta,
        (action, message_id, correlation_id, deadline_ms, caller, reply_mode, get(_TRACEPARENT), get(_TRACESTATE)),
    )


def deadline_of(headers: Mapping[str, str] | None) -> int | None:
    """The request's ``Na-Deadline`` (unix ms), or ``None`` when absent or malformed
    (:func:`parse_request` refuses a malformed one)."""
    raw = headers.get(h.DEADLINE) if headers is not None else None
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 15:
        return None
    return int(raw)


_EMPTY: Mapping[str, str] = {}
_new = tuple.__new__
_OK_HEADERS: Mapping[str, str] = {h.PROTO: h.PROTO_VERSION, h.STATUS: h.STATUS_OK}
#: The header block of every ok reply, encoded once.
OK_HEADER_BLOCK = encode_headers(_OK_HEADERS)
#: The same for an ok reply whose body is compressed.
OK_DEFLATE_BLOCK = encode_headers({**_OK_HEADERS, h.ENCODING: h.ENCODING_DEFLATE})
_PREBUILT: Mapping[bytes, Mapping[str, str]] = {
    OK_HEADER_BLOCK: _OK_HEADERS,
    OK_DEFLATE_BLOCK: {**_OK_HEADERS, h.ENCODING: h.ENCODING_DEFLATE},
}


def headers_of_block(block: bytes) -> dict[str, str]:
    """The headers of a reply header block the host encoded: one of the prebuilt ok blocks
    (looked up), or another (an ok block with ``Na-State-Version``: parsed)."""
    known = _PREBUILT.get(block)
    return dict(known) if known is not None else (parse_header_block(block) or {})


#: The server's ``max_payload`` when nothing else is known (nats-server's default, 1 MiB).
DEFAULT_MAX_PAYLOAD = 1024 * 1024
#: How far a compressed body may expand, in multiples of the server's ``max_payload``: room
#: for bodies that fit in a message only once compressed, and a bound against zip bombs.
INFLATE_RATIO = 4
#: Largest body a compressed message may expand to with the default ``max_payload`` (4 MiB).
MAX_INFLATED = INFLATE_RATIO * DEFAULT_MAX_PAYLOAD


def deflate(data: bytes) -> bytes | None:
    """``data`` compressed (zlib, fast level), or ``None`` when that is not smaller."""
    packed = zlib.compress(data, 1)
    return packed if len(packed) < len(data) else None


def inflate_limit(max_payload: int) -> int:
    """How far a compressed body that came through a server with this ``max_payload`` may
    expand: ``INFLATE_RATIO * max_payload``, and never less than :data:`MAX_INFLATED`."""
    return max(MAX_INFLATED, INFLATE_RATIO * max_payload)


def inflate(data: bytes, limit: int = MAX_INFLATED) -> bytes:
    """Undo :func:`deflate`. Expands at most ``limit`` (> 0) bytes, however small ``data`` is.

    Raises:
        ProtocolError: not exactly one complete zlib stream (garbage, truncated, or bytes
            after its end), or it expands beyond ``limit`` bytes.
    """
    engine = zlib.decompressobj()
    try:
        out = engine.decompress(data, limit)
        if not engine.eof:
            # Stopped at the limit with input left (or output still held back), or truncated.
            if engine.unconsumed_tail or (len(out) == limit and engine.decompress(b"", 1)):
                raise ProtocolError(f"compressed body expands beyond {limit} bytes")
            raise ProtocolError("compressed body is truncated: its zlib stream does not end")
    except zlib.error as exc:
        raise ProtocolError(f"compressed body is not a valid deflate (zlib) stream: {exc}") from None
    if engine.unused_data:
        raise ProtocolError(f"compressed body has {len(engine.unused_data)} bytes after the end of its zlib stream")
    return out


def ok_reply(result: Any) -> tuple[dict[str, str], bytes]:
    """Headers and body of a successful reply.

    Raises:
        TypeError, ValueError: the result cannot be encoded.
    """
    return dict(_OK_HEADERS), codec.encode(result)


def error_reply(
    code: str,
    message: str,
    *,
    agent: str | None = None,
    action: str | None = None,
    traceback: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> tuple[dict[str, str], bytes]:
    """Headers and body of an error reply."""
    body: dict[str, Any] = {"code": code, "message": message, "agent": agent, "action": action}
    if traceback:
        body["traceback"] = traceback
    if details:
        body["details"] = dict(details)
    try:
        data = codec.encode(body)
    except (TypeError, ValueError):
        body.pop("details", None)
        data = codec.encode(body)
    return {h.PROTO: h.PROTO_VERSION, h.STATUS: code}, data


def parse_reply(
    headers: Mapping[str, str] | None,
    data: bytes,
    *,
    agent: str | None = None,
    action: str | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
) -> Any:
    """Return the result of a reply, or raise the error it carries. ``max_payload``: the
    server's, which sizes how far a compressed reply may expand (:func:`inflate_limit`).

    Raises:
        AgentError: the reply is an error reply (the subclass for its code).
        ProtocolError: the reply is not a protocol v1 reply.
    """
    hdrs = headers or {}
    status = hdrs.get(h.STATUS)
    if status is None:
        raise ProtocolError(f"reply without {h.STATUS} header from {agent or 'peer'}")
    encoding = hdrs.get(h.ENCODING)
    if encoding is not None:
        if encoding != h.ENCODING_DEFLATE:
            raise ProtocolError(f"reply from {agent or 'peer'} uses unknown {h.ENCODING} {encoding!r}")
        data = inflate(data, inflate_limit(max_payload))
    if status == h.STATUS_OK:
        try:
            return codec.decode(data)
        except ValueError as exc:
            raise ProtocolError(f"undecodable reply body from {agent or 'peer'}: {exc}") from exc
    try:
        body = codec.decode(data)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    message = body.get("message")
    tb = body.get("traceback")
    details = body.get("details")
    # Raised unbound: a local holding it would make a cycle with its traceback (this frame),
    # kept with the reply's bytes until the cyclic collector runs.
    raise error_for_code(
        status,
        message if isinstance(message, str) else status,
        agent=body.get("agent") if isinstance(body.get("agent"), str) else agent,
        action=body.get("action") if isinstance(body.get("action"), str) else action,
        remote_traceback=tb if isinstance(tb, str) else None,
        details=details if isinstance(details, dict) else None,
        remote=True,
    )
