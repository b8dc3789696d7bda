"""Publishing with a ``Nats-Msg-Id``, retried until the timeout so the server deduplicates."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ...errors import CallTimeout, ConfigurationError, JetStreamError, StreamNotFound
from ...wire.envelope import encode_headers
from ..connection import Inbound, NoResponders, Transport
from ._api import api_request, decode_reply
from ._common import _LOOKUP_TIMEOUT, _name, _subject

_PUBLISH_ATTEMPT = 2.0  # one publish attempt; retried with the same Nats-Msg-Id


@dataclass(frozen=True, slots=True)
class PubAck:
    """The server's acknowledgement of a stored message.

    Attributes:
        stream: the stream that stored it.
        seq: its stream sequence.
        duplicate: ``True`` when the ``Nats-Msg-Id`` was seen within the duplicate window:
            nothing new was stored and ``seq`` is the first copy's.
        value: a counter stream's new total (ADR-49 ``val``, a decimal string), else ``None``.
    """

    stream: str
    seq: int
    duplicate: bool = False
    value: str | None = None


class PublishBatchError(JetStreamError):
    """Some publishes of :func:`publish_many` failed; the others completed.

    Attributes:
        results: per message, in order: its :class:`PubAck`, or the exception it failed
            with (a :class:`~natsagents.errors.CallTimeout` means its outcome is unknown:
            publish it again with the same ``msg_id``).
    """

    def __init__(self, message: str, results: Sequence[PubAck | Exception]) -> None:
        super().__init__(message)
        self.results: tuple[PubAck | Exception, ...] = tuple(results)

    @property
    def failures(self) -> dict[int, Exception]:
        """Index → exception of every failed message."""
        return {i: r for i, r in enumerate(self.results) if isinstance(r, Exception)}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for :func:`publish_many`."""

    subject: str
    payload: bytes
    msg_id: str
    headers: Mapping[str, str] | None = field(default=None, hash=False)


def _header_block(
    transport: Transport,
    subject: str,
    payload: bytes,
    headers: Mapping[str, str] | None,
    msg_id: str,
    expected_stream: str | None,
) -> bytes:
    """The header block of a JetStream publish, size-checked against ``max_payload``."""
    _subject("publish subject", subject, wildcards=False)
    if not isinstance(payload, bytes):
        raise ConfigurationError(f"a payload is bytes, not {type(payload).__name__}")
    if not isinstance(msg_id, str) or not msg_id:
        raise ConfigurationError(f"msg_id must be a non-empty string, not {msg_id!r}")
    merged = dict(headers or {})
    merged["Nats-Msg-Id"] = msg_id
    if expected_stream is not None:
        merged["Nats-Expected-Stream"] = _name("stream", expected_stream)
    try:
        block = encode_headers(merged)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    transport.check_size(subject, block, payload)
    return block


class _StreamLookup:
    """Which streams listen on a subject, asked once per subject after "no responders"."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self._known: dict[str, list[str]] = {}
        self._asking: dict[str, asyncio.Future[list[str] | None]] = {}

    async def streams(self, subject: str, deadline: float) -> list[str] | None:
        """The names, or ``None`` when the server did not say (keep retrying)."""
        if subject in self._known:
            return self._known[subject]
        pending = self._asking.get(subject)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[list[str] | None] = asyncio.get_running_loop().create_future()
        self._asking[subject] = fut
        result: list[str] | None = None
        try:
            t = min(_LOOKUP_TIMEOUT, max(deadline - asyncio.get_running_loop().time(), 0.05))
            reply = await api_request(self._t, "$JS.API.STREAM.NAMES", {"subject": subject}, t)
            result = [str(s) for s in reply.get("streams") or ()]
            self._known[subject] = result
        except NoResponders:
            result = []  # JetStream is not enabled: no stream listens anywhere
            self._known[subject] = result
        except (CallTimeout, JetStreamError):
            result = None
        finally:
            del self._asking[subject]
            fut.set_result(result)
        return result


def _pub_ack(what: str, msg: Inbound) -> PubAck:
    doc = decode_reply(what, msg)
    stream, seq = doc.get("stream"), doc.get("seq")
    if not isinstance(stream, str) or not isinstance(seq, int) or isinstance(seq, bool):
        raise JetStreamError(f"{what}: the reply is not a JetStream PubAck (a core subscriber answered?)")
    value = doc.get("val")
    return PubAck(stream, seq, bool(doc.get("duplicate", False)), value if isinstance(value, str) else None)


async def _publish(
    transport: Transport,
    subject: str,
    payload: bytes,
    block: bytes,
    *,
    timeout: float,
    expected_stream: str | None,
    lookup: _StreamLookup,
) -> PubAck:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    what = f"publish to {subject}"
    delay = 0.02
    timed_out = False
    last: BaseException | None = None
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            reply = await transport.request(subject, payload, headers=block, timeout=min(remaining, _PUBLISH_ATTEMPT))
            return _pub_ack(what, reply)
        except CallTimeout as exc:
            timed_out = True
            last = exc
        except NoResponders as exc:
            last = exc
            streams = await lookup.streams(subject, deadline)
            if streams is not None and (not streams or (expected_stream and expected_stream not in streams)):
                wanted = f"stream {expected_stream}" if expected_stream else "no stream"
                listening = f" (listening: {', '.join(streams)})" if streams else ""
                raise StreamNotFound(
                    f"{what}: {wanted} listens on this subject{listening}; nothing was stored", status=503
                ) from exc
        except JetStreamError as exc:
            if not exc.transient:
                raise
            last = exc
        remaining = deadline - loop.time()
        if remaining > 0:
            await asyncio.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
        delay = min(delay * 2, 0.5)
    if timed_out:
        raise CallTimeout(
            f"{what}: no PubAck within {timeout:g} s (last error: {last}); the outcome is unknown: the message "
            "may or may not be stored. Publish it again with the same msg_id within the duplicate window."
        ) from last
    raise JetStreamError(
        f"{what}: no stream leader stored it within {timeout:g} s (last error: {last}); it was not stored",
        status=503,
    ) from last


async def publish(
    transport: Transport,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    expected_stream: str | None = None,
) -> PubAck:
    """Store one message in the stream that listens on ``subject``.

    Timed-out attempts, "no responders" (a stream leader election: several seconds on a
    cluster) and transient refusals are retried with the same ``msg_id`` until
    ``timeout``; the server drops copies within the stream's duplicate window.

    Args:
        transport: the connection.
        subject: the subject (no wildcards).
        payload: the body.
        msg_id: the ``Nats-Msg-Id``: the same id for the same logical message, a new one
            for every other (a reused id silently drops the second message).
        headers: extra headers.
        timeout: seconds for the whole publish.
        expected_stream: refuse unless this stream stores the message
            (``Nats-Expected-Stream``).

    Returns:
        The :class:`PubAck`; ``duplicate`` is ``True`` when the id was already stored.

    Raises:
        PayloadTooLarge: headers + payload exceed ``max_payload`` (nothing is sent), or the
            stream's ``max_msg_size``.
        StreamNotFound: no stream (or not ``expected_stream``) listens on ``subject``.
        CallTimeout: an attempt timed out and no later one got an answer: the outcome is
            unknown; publish again with the same ``msg_id``.
        JetStreamError: the server refused (``err_code`` says why: 10060 another stream,
            10071 wrong last sequence …), or every attempt met an unavailable stream
            (nothing stored).
        ConfigurationError, MeshClosed.
    """
    if timeout <= 0:
        raise ConfigurationError(f"timeout must be > 0, not {timeout}")
    block = _header_block(transport, subject, payload, headers, msg_id, expected_stream)
    return await _publish(
        transport,
        subject,
        payload,
        block,
        timeout=timeout,
        expected_stream=expected_stream,
        lookup=_StreamLookup(transport),
    )


async def publish_many(
    transport: Transport,
    messages: Iterable[Outgoing],
    *,
    timeout: float = 5.0,
    expected_stream: str | None = None,
) -> list[PubAck]:
    """Publish many messages pipelined: every request goes out before any ack is awaited.

    Each message is published as :func:`publish` does, with its own deadline ``timeout``
    seconds from now and its own retries. First attempts are sent in order; a retried
    message may be stored after later ones.

    All sizes are checked first: an oversized message raises before anything is sent.
    Otherwise every message runs to completion; if any failed, :class:`PublishBatchError`
    is raised afterwards with every result (acks and exceptions, in order), so only the
    failed ones need publishing again (with the same ids).

    Args:
        transport: the connection.
        messages: what to publish.
        timeout: seconds allowed for each message.
        expected_stream: refuse any message not stored by this stream.

    Returns:
        The :class:`PubAck` of each message, in order.

    Raises:
        PayloadTooLarge: a message is too large (nothing was sent).
        PublishBatchError: some messages failed; ``results`` holds each outcome.
        ConfigurationError, MeshClosed.
    """
    if timeout <= 0:
        raise ConfigurationError(f"timeout must be > 0, not {timeout}")
    items = list(messages)
    blocks = [_header_block(transport, m.subject, m.payload, m.headers, m.msg_id, expected_stream) for m in items]
    if not items:
        return []
    await transport._ensure_mux()  # created once up front, so first attempts go out in order
    lookup = _StreamLookup(transport)
    outcomes = await asyncio.gather(
        *(
            _publish(
                transport,
                m.subject,
                m.payload,
                block,
                timeout=timeout,
                expected_stream=expected_stream,
                lookup=lookup,
            )
            for m, block in zip(items, blocks, strict=True)
        ),
        return_exceptions=True,
    )
    results: list[PubAck | Exception] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome
        results.append(outcome)
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        raise PublishBatchError(
            f"{len(failed)} of {len(results)} publishes failed (first: {failed[0]})", results
        ) from failed[0]
    return [r for r in results if isinstance(r, PubAck)]
