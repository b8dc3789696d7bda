"""Delivered messages: the ack subject's metadata, and the ack methods."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ...errors import MalformedAckSubject
from ..connection import Inbound, Transport
from ._api import retry
from ._common import _NS, _seconds

_DIGITS_RE = re.compile(r"[0-9]+")
_ACK_ATTEMPT = 1.0


@dataclass(frozen=True, slots=True)
class AckMetadata:
    """What a delivery's ack subject says.

    Attributes:
        stream, consumer: where it came from.
        num_delivered: 1 for the first delivery, 2 for the first redelivery …
        stream_seq: the message's stream sequence.
        consumer_seq: the delivery's sequence in the consumer.
        timestamp_ns: when the message was stored (Unix nanoseconds).
        num_pending: messages left for the consumer after this one.
        domain: the JetStream domain (``None`` if none).
    """

    stream: str
    consumer: str
    num_delivered: int
    stream_seq: int
    consumer_seq: int
    timestamp_ns: int
    num_pending: int
    domain: str | None = None

    @property
    def timestamp(self) -> float:
        """When the message was stored (Unix seconds)."""
        return self.timestamp_ns / _NS


def parse_ack_subject(reply: str) -> AckMetadata:
    """Parse ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` or the
    v2 form ``$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>…]``.

    Raises:
        MalformedAckSubject: anything else.
    """
    if not isinstance(reply, str):
        raise MalformedAckSubject(f"a JetStream ack subject is a string, not {type(reply).__name__}")
    tokens = reply.split(".")
    if len(tokens) < 2 or tokens[0] != "$JS" or tokens[1] != "ACK":
        raise MalformedAckSubject(f"not a JetStream ack subject: {reply!r}")
    if len(tokens) == 9:
        domain, fields = None, tokens[2:9]
    elif len(tokens) >= 11:
        domain, fields = (tokens[2] if tokens[2] not in ("", "_") else None), tokens[4:11]
    else:
        raise MalformedAckSubject(f"a JetStream ack subject has 9 or at least 11 tokens, not {len(tokens)}: {reply!r}")
    stream, consumer, *numbers = fields
    if not stream or not consumer or not all(_DIGITS_RE.fullmatch(n) for n in numbers):
        raise MalformedAckSubject(f"malformed JetStream ack subject: {reply!r}")
    delivered, sseq, cseq, ts, pending = (int(n) for n in numbers)
    return AckMetadata(stream, consumer, delivered, sseq, cseq, ts, pending, domain)


class JsMsg:
    """A message delivered by a consumer; settle it with one of the ack methods.

    Attributes:
        subject: the stored subject (after the stream's subject transform).
        data: the payload.
        headers: the headers (``{}`` when none).
        reply: the ack subject.
        metadata: what the ack subject says (:class:`AckMetadata`).
    """

    __slots__ = ("_t", "data", "headers", "metadata", "reply", "subject")

    def __init__(
        self, transport: Transport, subject: str, data: bytes, headers: Mapping[str, str] | None, reply: str
    ) -> None:
        """
        Raises:
            MalformedAckSubject: ``reply`` is not a JetStream ack subject.
        """
        self.metadata = parse_ack_subject(reply)
        self._t = transport
        self.subject = subject
        self.data = data
        self.headers: dict[str, str] = dict(headers or {})
        self.reply = reply

    @classmethod
    def _from(cls, transport: Transport, msg: Inbound) -> JsMsg:
        return cls(transport, msg.subject, msg.data, msg.headers, msg.reply)

    def __repr__(self) -> str:
        m = self.metadata
        return f"<JsMsg {self.subject} seq={m.stream_seq} delivered={m.num_delivered}>"

    @property
    def stream_seq(self) -> int:
        return self.metadata.stream_seq

    @property
    def num_delivered(self) -> int:
        return self.metadata.num_delivered

    @property
    def num_pending(self) -> int:
        return self.metadata.num_pending

    @property
    def timestamp(self) -> float:
        """When the message was stored (Unix seconds)."""
        return self.metadata.timestamp

    async def ack(self) -> None:
        """Acknowledge (fire and forget: the ack may be lost; see :meth:`ack_sync`).

        Raises:
            MeshClosed, TransportError.
        """
        await self._t.publish(self.reply, b"+ACK")

    async def ack_sync(self, timeout: float = 5.0) -> None:
        """Acknowledge and wait until the server confirms it (a double ack). Attempts are
        retried (acks are idempotent) until ``timeout``.

        Raises:
            CallTimeout: not confirmed (consumer gone, or its leader unreachable); the
                message may be redelivered. MeshClosed.
        """

        async def attempt(t: float) -> None:
            await self._t.request(self.reply, b"+ACK", timeout=t)

        await retry(f"ack {self!r}", attempt, timeout, attempt_timeout=_ACK_ATTEMPT)

    async def nak(self, delay: float | None = None) -> None:
        """Ask for a redelivery: at once, or after ``delay`` seconds.

        Raises:
            ConfigurationError: ``delay`` is negative. MeshClosed, TransportError.
        """
        if delay is None or delay == 0:
            await self._t.publish(self.reply, b"-NAK")
            return
        ns = _seconds("nak delay", delay)
        await self._t.publish(self.reply, b'-NAK {"delay": %d}' % ns)

    async def term(self, reason: str = "") -> None:
        """Stop redelivering this message (it stays in the stream unless acked elsewhere).

        Raises:
            MeshClosed, TransportError.
        """
        reason = " ".join(reason.split())  # one line
        await self._t.publish(self.reply, b"+TERM" + (b" " + reason.encode() if reason else b""))

    async def in_progress(self) -> None:
        """Still working on it: restart the ack wait timer.

        Raises:
            MeshClosed, TransportError.
        """
        await self._t.publish(self.reply, b"+WPI")
