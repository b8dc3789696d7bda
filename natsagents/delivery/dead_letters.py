"""The dead-letter stream: list, replay and delete dead letters.

A dead letter is the original durable message (body and headers) plus ``Na-Dlq-Error``
(the error code), ``Na-Dlq-Reason``, ``Na-Dlq-Deliveries``, ``Na-Dlq-Stream-Seq`` (its
sequence in the inbox stream), ``Na-Dlq-Subject`` (where it was published) and
``Na-Dlq-Time`` (Unix ms). Replaying publishes it again, unchanged but for those headers,
to its inbox subject (same ``Na-Msg-Id``, a new ``Nats-Msg-Id`` so that the stream's
duplicate window does not drop it), then deletes the dead letter.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from ..errors import AgentNotFound, ProtocolError
from ..transport import Transport
from ..transport import jetstream as js
from ..transport.kv import KvError, api_request
from ..wire import headers as h
from .settings import dlq_stream

__all__ = ["DeadLetter", "delete_dead_letter", "list_dead_letters", "replay_dead_letter"]

# "no message found" (10037), "sequence not found" (10043); a delete of a sequence outside
# the stream answers the general "delete failed" (10057) with one of these texts.
_NOT_FOUND = (10037, 10043)
_NOT_FOUND_TEXTS = ("no message found", "stream store eof", "not found")


def _missing(exc: KvError) -> bool:
    if exc.err_code in _NOT_FOUND:
        return True
    return exc.err_code == 10057 and any(t in str(exc).lower() for t in _NOT_FOUND_TEXTS)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message in the dead-letter stream."""

    seq: int  # its sequence in the dead-letter stream
    subject: str  # the inbox subject it was published to
    agent: str  # Kind/token
    action: str
    error: str
    reason: str
    deliveries: int
    stream_seq: int  # its sequence in the inbox stream
    time_ms: int
    message_id: str
    data: bytes = field(repr=False)
    headers: dict[str, str] = field(repr=False)

    def to_wire(self) -> dict[str, Any]:
        """A JSON-friendly summary (for ``natsagents dlq ls --json``)."""
        return {
            "seq": self.seq,
            "agent": self.agent,
            "action": self.action,
            "error": self.error,
            "reason": self.reason,
            "deliveries": self.deliveries,
            "stream_seq": self.stream_seq,
            "time_ms": self.time_ms,
            "message_id": self.message_id,
            "bytes": len(self.data),
        }


def _headers(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        text = base64.b64decode(raw).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"dead letter headers are not valid: {exc}") from None
    out: dict[str, str] = {}
    for line in text.split("\r\n")[1:]:
        if not line:
            continue
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _letter(raw: dict[str, Any]) -> DeadLetter:
    msg = raw.get("message")
    if not isinstance(msg, dict):
        raise ProtocolError("the stream answered without a message")
    hdrs = _headers(msg.get("hdrs"))
    try:
        data = base64.b64decode(msg.get("data") or "")
    except binascii.Error as exc:
        raise ProtocolError(f"dead letter body is not valid base64: {exc}") from None
    subject = hdrs.get(h.DLQ_SUBJECT, "")
    agent = ".".join(subject.split(".")[-2:]).replace(".", "/", 1) if subject else ""

    def number(name: str) -> int:
        value = hdrs.get(name, "")
        return int(value) if value.isdigit() else 0

    return DeadLetter(
        seq=int(msg.get("seq", 0)),
        subject=subject,
        agent=agent,
        action=hdrs.get(h.ACTION, ""),
        error=hdrs.get(h.DLQ_ERROR, ""),
        reason=hdrs.get(h.DLQ_REASON, ""),
        deliveries=number(h.DLQ_DELIVERIES),
        stream_seq=number(h.DLQ_STREAM_SEQ),
        time_ms=number(h.DLQ_TIME),
        message_id=hdrs.get(h.MESSAGE_ID, ""),
        data=data,
        headers=hdrs,
    )


async def _get(transport: Transport, prefix: str, body: dict[str, Any], timeout: float) -> DeadLetter | None:
    try:
        raw = await api_request(transport, f"$JS.API.STREAM.MSG.GET.{dlq_stream(prefix)}", body, timeout)
    except KvError as exc:
        if _missing(exc):
            return None
        raise js.translate(exc, "dead letters") from None
    return _letter(raw)


async def list_dead_letters(
    transport: Transport, prefix: str, *, limit: int = 100, timeout: float = 5.0
) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters.

    Raises:
        StreamNotFound: no dead-letter stream (no node with durable delivery ran yet).
        JetStreamError, CallTimeout, MeshClosed.
    """
    out: list[DeadLetter] = []
    seq = 1
    while len(out) < limit:
        letter = await _get(transport, prefix, {"seq": seq, "next_by_subj": f"{prefix}.dlq.>"}, timeout)
        if letter is None:
            break
        out.append(letter)
        seq = letter.seq + 1
    return out


async def delete_dead_letter(transport: Transport, prefix: str, seq: int, *, timeout: float = 5.0) -> bool:
    """Remove one dead letter; ``False`` if there was none with that sequence."""
    try:
        await api_request(
            transport, f"$JS.API.STREAM.MSG.DELETE.{dlq_stream(prefix)}", {"seq": seq, "no_erase": True}, timeout
        )
    except KvError as exc:
        if _missing(exc):
            return False
        raise js.translate(exc, "dead letters") from None
    return True


async def replay_dead_letter(transport: Transport, prefix: str, seq: int, *, timeout: float = 10.0) -> js.PubAck:
    """Publish dead letter ``seq`` to its inbox again, then delete it.

    Raises:
        AgentNotFound: no dead letter with that sequence. JetStreamError, CallTimeout.
    """
    letter = await _get(transport, prefix, {"seq": seq}, timeout)
    if letter is None:
        raise AgentNotFound(f"no dead letter {seq} in {dlq_stream(prefix)}")
    if not letter.subject:
        raise ProtocolError(f"dead letter {seq} does not say where it came from ({h.DLQ_SUBJECT})")
    hdrs = {k: v for k, v in letter.headers.items() if not k.startswith(("Na-Dlq-", "Nats-"))}
    ack = await js.publish(
        transport,
        letter.subject,
        letter.data,
        msg_id=f"{letter.message_id or 'dlq'}-replay-{letter.seq}",
        headers=hdrs,
        timeout=timeout,
    )
    await delete_dead_letter(transport, prefix, seq, timeout=timeout)
    return ack
