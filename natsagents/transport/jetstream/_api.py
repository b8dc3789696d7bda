"""The JetStream wire API: requests, retries and error decoding.

The bottom of the JetStream and KV layers: every other module of ``transport/jetstream/``
and ``transport/kv/`` sends its API requests through :func:`api_request` (or decodes a
reply with :func:`decode_reply`) and retries through :func:`retry`. A server's refusal
becomes the one exception family of :mod:`natsagents.errors`: :class:`JetStreamError`,
or its subclass for the ``err_code`` (:class:`StreamNotFound`, :class:`ConsumerNotFound`);
``err_code`` 10054 (message too large) becomes :class:`PayloadTooLarge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from ...errors import CallTimeout, ConsumerNotFound, JetStreamError, PayloadTooLarge, StreamNotFound
from ...wire.codec import MAX_OBJECTS
from ..connection import Inbound, NoResponders, Transport

T = TypeVar("T")

READ_ATTEMPT = 1.0  # seconds one read attempt may take before it is retried

_UNKNOWN_STREAM = 10059
_UNKNOWN_CONSUMER = 10014
_MESSAGE_TOO_LARGE = 10054
#: Most commas, brackets and braces a JetStream API answer may hold (counted before it is
#: parsed: each value but the first of an array or object follows a comma, so it decodes to
#: at most ~2x as many objects as this). The server's answers hold hundreds; one that
#: someone else published to our inbox could otherwise cost ~25x its length (1 MiB of
#: ``[],``: +26 MiB), and a JSON nesting deeper than Python recurses is refused too.
_MAX_JSON_VALUES = MAX_OBJECTS // 2


def error_for(message: str, *, status: int | None = None, err_code: int | None = None) -> JetStreamError:
    """The :class:`JetStreamError` (sub)class for a server's ``err_code``."""
    cls: type[JetStreamError] = JetStreamError
    if err_code == _UNKNOWN_STREAM:
        cls = StreamNotFound
    elif err_code == _UNKNOWN_CONSUMER:
        cls = ConsumerNotFound
    return cls(message, status=status, err_code=err_code)


def decode_reply(what: str, msg: Inbound) -> dict[str, Any]:
    """A JetStream API reply as a dict.

    Raises:
        JetStreamError: the reply is an error (a subclass by ``err_code``), a bare status,
            or not a JSON object.
        PayloadTooLarge: the server refused a message as too large (``err_code`` 10054).
    """
    status = (msg.headers or {}).get("Status")
    if status and not msg.data:
        raise JetStreamError(f"{what}: status {status}", status=int(status) if status.isdigit() else None)
    data = msg.data
    if len(data) > _MAX_JSON_VALUES and data.count(b",") + data.count(b"[") + data.count(b"{") > _MAX_JSON_VALUES:
        raise JetStreamError(f"{what}: the reply holds more than {_MAX_JSON_VALUES} JSON values")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser recurses
        raise JetStreamError(f"{what}: the server sent a reply that is not JSON") from None
    err = doc.get("error") if isinstance(doc, dict) else {"description": "the reply is not a JSON object"}
    if isinstance(err, dict):
        code, status_code = err.get("err_code"), err.get("code")
        text = f"{what}: {err.get('description', 'JetStream error')} (err_code {code})"
        if code == _MESSAGE_TOO_LARGE:
            raise PayloadTooLarge(text, details={"err_code": code})
        raise error_for(text, status=_int_or_none(status_code), err_code=_int_or_none(code))
    return doc  # type: ignore[no-any-return]


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


async def api_request(transport: Transport, subject: str, body: object, timeout: float) -> dict[str, Any]:
    """One JetStream API request (JSON in, JSON out), not retried.

    Raises:
        JetStreamError: the server answered with an error. PayloadTooLarge, NoResponders,
            CallTimeout, MeshClosed.
    """
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    return decode_reply(subject, await transport.request(subject, payload, timeout=timeout))


async def retry(
    what: str,
    op: Callable[[float], Awaitable[T]],
    timeout: float,
    *,
    write: bool = False,
    attempt_timeout: float = READ_ATTEMPT,
) -> T:
    """Run ``op(attempt_timeout)`` until it succeeds or ``timeout`` seconds pass.

    Timeouts, "no responders" and transient :class:`JetStreamError` are retried with
    jittered backoff. Writes must be idempotent (``Nats-Msg-Id``): after a timed-out
    attempt the first may still land.

    Raises:
        CallTimeout: no attempt succeeded in time (with ``write``: the outcome is unknown).
        JetStreamError: a refusal that is not transient. Whatever else ``op`` raises.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.02
    last: BaseException | None = None
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            unknown = "; the write may or may not have landed" if write else ""
            raise CallTimeout(f"{what}: no answer within {timeout:g} s (last error: {last}){unknown}") from last
        try:
            return await op(min(remaining, attempt_timeout))
        except (CallTimeout, NoResponders) as exc:
            last = exc
        except JetStreamError as exc:
            if not exc.transient:
                raise
            last = exc
        remaining = deadline - loop.time()
        if remaining > 0:
            await asyncio.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
        delay = min(delay * 2, 0.5)


def translate(exc: JetStreamError, what: str = "") -> JetStreamError:
    """``exc`` told with ``what`` as its context, as the class its ``err_code`` gives.

    Errors with fields of their own (:class:`~natsagents.errors.CasConflict`, a publish
    batch's error) come back unchanged.
    """
    if type(exc).__init__ is not JetStreamError.__init__:
        return exc
    text = f"{what}: {exc}" if what and not str(exc).startswith(what) else str(exc)
    if type(exc) is JetStreamError:
        return error_for(text, status=exc.status, err_code=exc.err_code)
    return type(exc)(text, status=exc.status, err_code=exc.err_code)


@contextlib.contextmanager
def labelled(what: str) -> Iterator[None]:
    """Raise the :class:`JetStreamError` of the block with ``what`` as its context."""
    try:
        yield
    except JetStreamError as exc:
        told = translate(exc, what)
        if told is exc:
            raise
        raise told from exc
