"""Batches: several durable messages of one agent in one request (docs/protocol.md §15.4).

A partition owner with more than one message waiting for an agent hands them over in one
core request: headers ``Na-Proto: 1``, ``Na-Batch: <n>`` and ``Na-Msg-Id`` (the batch's own
id, so that a resent copy is answered once), body a msgpack array of ``n`` items
``[headers, body]`` — each exactly the header map and body the message would have as a
request of its own. The host runs the items in order and stops at the first that does not
succeed; the state changes of the items that ran are stored in one write. The reply has
``Na-Status: ok`` and ``Na-Batch: <m>``, body an array of ``m`` ≤ ``n`` items ``[headers,
body]``: the replies of the items that were tried, in order. Items after ``m`` did not run.

Pure functions: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ProtocolError
from . import codec
from . import headers as h
from .envelope import encode_headers_unchecked, headers_of_block, new_message_id
from .owner import owner_mac

__all__ = [
    "MAX_BATCH",
    "Item",
    "batch_reply",
    "batch_request",
    "parse_batch_reply",
    "parse_batch_request",
]

#: Most messages one batch may carry.
MAX_BATCH = 256

Item = tuple[dict[str, str], bytes]


def batch_request(
    items: Sequence[tuple[Mapping[str, str], bytes]],
    deadline_ms: int | None = None,
    *,
    owner_key: bytes | None = None,
    subject: str = "",
) -> tuple[bytes, bytes]:
    """Header block and body of a batch request carrying ``items`` (1..MAX_BATCH), signed
    with ``owner_key`` for ``subject`` when given (``wire.owner``: hosts run batches only
    from partition owners).

    Raises:
        ValueError: no items, or more than ``MAX_BATCH``.
    """
    if not 1 <= len(items) <= MAX_BATCH:
        raise ValueError(f"a batch carries 1..{MAX_BATCH} messages, not {len(items)}")
    hdrs = {h.PROTO: h.PROTO_VERSION, h.BATCH: str(len(items)), h.MESSAGE_ID: new_message_id()}
    if deadline_ms is not None:
        hdrs[h.DEADLINE] = str(deadline_ms)
    body = codec.encode([[dict(hd), data] for hd, data in items])
    if owner_key is not None:
        hdrs[h.OWNER_MAC] = owner_mac(owner_key, subject, hdrs, body)
    return encode_headers_unchecked(hdrs), body


def parse_batch_request(headers: Mapping[str, str], data: bytes) -> list[Item]:
    """The items of a batch request.

    Raises:
        ProtocolError: ``Na-Batch`` is not 1..MAX_BATCH, the body is not an array of that
            many ``[map of string to string, binary]`` items (or breaks ``codec.decode``'s
            limits), or an item is itself a batch (its headers carry ``Na-Batch``).
    """
    raw = headers.get(h.BATCH, "")
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_BATCH:
        raise ProtocolError(f"{h.BATCH} must be an integer within 1..{MAX_BATCH}, not {raw[:20]!r}")
    items = _items(data, int(raw), "request")
    for i, (hdrs, _) in enumerate(items):
        if h.BATCH in hdrs:  # run as a batch, it would nest the host's handling without bound
            raise ProtocolError(f"batch request item {i} carries {h.BATCH}: a batch cannot hold a batch")
    return items


def batch_reply(replies: Sequence[tuple[Mapping[str, str] | bytes, bytes]]) -> tuple[dict[str, str], bytes]:
    """Headers and body of the reply to a batch: one ``[headers, body]`` per item tried.
    An item's headers may be given as an encoded header block: one of the host's prebuilt
    ok blocks, or another (an ok block with ``Na-State-Version`` of a versioned kind)."""
    out = []
    for hdrs, data in replies:
        out.append([headers_of_block(hdrs) if isinstance(hdrs, bytes) else dict(hdrs), data])
    headers = {h.PROTO: h.PROTO_VERSION, h.STATUS: h.STATUS_OK, h.BATCH: str(len(out))}
    return headers, codec.encode(out)


def parse_batch_reply(headers: Mapping[str, str] | None, data: bytes, expected: int) -> list[Item]:
    """The item replies of an ok batch reply (at most ``expected``).

    Raises:
        ProtocolError: malformed (the caller treats the batch as not answered).
    """
    raw = (headers or {}).get(h.BATCH, "")
    if not raw.isascii() or not raw.isdigit() or int(raw) > expected:
        raise ProtocolError(f"batch reply with {h.BATCH} {raw[:20]!r} for {expected} messages")
    return _items(data, int(raw), "reply")


def _items(data: bytes, count: int, what: str) -> list[Item]:
    try:
        value: Any = codec.decode(data)
    except ValueError as exc:
        raise ProtocolError(f"batch {what} body: {exc}") from None
    if not isinstance(value, list) or len(value) != count:
        raise ProtocolError(f"batch {what} body must be an array of {count} items")
    items: list[Item] = []
    for i, item in enumerate(value):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], dict)
            or not isinstance(item[1], bytes)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in item[0].items())
        ):
            raise ProtocolError(f"batch {what} item {i} must be [map of string to string, binary]")
        items.append((item[0], item[1]))
    return items
