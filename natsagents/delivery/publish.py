"""The durable publish path: a caller stores a message in the inbox stream (docs/delivery.md,
protocol §15.1) and, when it wants the result, waits on its own reply subject; a retry of a
message stored before asks the agent for the earlier result (a replay request, §7.5).

The caller (``runtime.caller``) hands every call with ``delivery`` other than
``at_most_once`` to :class:`DurablePublisher` (its ``DurablePath``), which the mesh plugs in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..errors import CallTimeout, Unavailable
from ..runtime.caller import Caller
from ..transport import Transport, jetstream
from ..wire import envelope
from ..wire import headers as h
from ..wire.identity import DURABLE_VALIDITY_MS
from ..wire.subjects import agent_subject, durable_subject
from .settings import ensure_delivery_streams

__all__ = ["DurablePublisher"]


class DurablePublisher:
    """Publishes durable messages for one mesh.

    Args:
        transport: the mesh's connection.
        caller: the mesh's caller (replay requests go through it, activation included).
        prefix: the mesh's subject prefix.
    """

    def __init__(self, transport: Transport, caller: Caller, prefix: str) -> None:
        self._t = transport
        self._caller = caller
        self._prefix = prefix

    async def publish(
        self,
        kind: str,
        agent_id: str,
        action: str,
        body: bytes,
        hdrs: dict[str, str],
        deadline: float | None,
        accept_only: bool,
        delivery: str,
        message_ttl: float | None = None,
        on_reply: Callable[[Mapping[str, str]], None] | None = None,
    ) -> Any:
        """Store the message in the durable inbox stream (``Nats-Msg-Id`` = the message id,
        so a retried publish is stored once), then wait for its result when one is wanted.
        The caller's deadline bounds only its wait: the stored message runs whenever an
        agent can take it, and carries no ``Na-Deadline``. With an identity, the message
        is signed for its agent subject (the one its partition owner forwards it to).
        ``on_reply`` sees the reply's headers (a session's ``Na-State-Version``)."""
        address = f"{kind}/{agent_id}"
        hdrs = dict(hdrs)
        hdrs.pop(h.DEADLINE, None)
        hdrs.pop(h.REPLY_MODE, None)
        hdrs.pop(h.PRIORITY, None)  # the stream's order is the agent's order
        if message_ttl is not None:
            hdrs[h.DEADLINE] = str(int((time.time() + message_ttl) * 1000))
        hdrs[h.DELIVERY] = delivery
        remaining = None if deadline is None else max(0.001, deadline - time.time())
        wait = None
        if not accept_only:
            reply_to, wait = await self._t.expect_reply(remaining)
            hdrs[h.REPLY_TO] = reply_to
        identity = self._caller.settings.identity
        if identity is not None:
            expires = int(time.time() * 1000) + DURABLE_VALIDITY_MS
            identity.sign(agent_subject(self._prefix, kind, agent_id), hdrs, body, expires)
        subject = durable_subject(self._prefix, kind, agent_id)
        publish_timeout = 30.0 if remaining is None else remaining
        try:
            try:
                ack = await jetstream.publish(
                    self._t, subject, body, msg_id=hdrs[h.MESSAGE_ID], headers=hdrs, timeout=publish_timeout
                )
            except jetstream.StreamNotFound:
                await ensure_delivery_streams(self._t, self._prefix, timeout=publish_timeout)
                ack = await jetstream.publish(
                    self._t, subject, body, msg_id=hdrs[h.MESSAGE_ID], headers=hdrs, timeout=publish_timeout
                )
        except jetstream.JetStreamError as exc:
            raise Unavailable(
                f"the durable inbox did not store the message: {exc}", agent=address, action=action
            ) from exc
        except CallTimeout as exc:
            raise CallTimeout(
                f"storing the message timed out; it may or may not be stored ({exc.message})",
                agent=address,
                action=action,
            ) from None
        if wait is None:
            return None
        if ack.duplicate:
            # Stored before (the same Na-Msg-Id): by an earlier call, whose result goes to
            # that call's reply subject, or by our own publish retried. Wait for ours and
            # ask the agent for the earlier result; the first answer wins.
            msg = await self._earlier_result(wait, kind, agent_id, action, hdrs, deadline, ack.seq)
            if on_reply is not None and msg.headers:
                on_reply(msg.headers)
            return envelope.parse_reply(
                msg.headers, msg.data, agent=address, action=action, max_payload=self._t.max_payload
            )
        try:
            msg = await wait()
        except CallTimeout:
            raise CallTimeout(
                f"no result within the timeout; the message is stored (stream sequence {ack.seq}) and will run",
                agent=address,
                action=action,
                details={"stored": True, "stream_seq": ack.seq},
            ) from None
        if on_reply is not None and msg.headers:
            on_reply(msg.headers)
        return envelope.parse_reply(
            msg.headers, msg.data, agent=address, action=action, max_payload=self._t.max_payload
        )

    async def _earlier_result(
        self,
        wait: Callable[[], Awaitable[Any]],
        kind: str,
        agent_id: str,
        action: str,
        hdrs: Mapping[str, str],
        deadline: float | None,
        seq: int,
    ) -> Any:
        """The reply of a durable message stored before: whichever comes first of the
        reply to our own reply subject and the agent's answer to a ``replay`` request
        (protocol §15.1), asked again while the agent does not know it yet."""
        question = {
            h.PROTO: h.PROTO_VERSION,
            h.ACTION: action,
            h.MESSAGE_ID: hdrs[h.MESSAGE_ID],
            h.REPLY_MODE: h.REPLY_MODE_REPLAY,
        }
        subject = agent_subject(self._prefix, kind, agent_id)
        ask = self._caller.forward(
            subject, b"", envelope.encode_headers_unchecked(question), deadline, kind, agent_id, action
        )
        tasks = {asyncio.ensure_future(wait()), asyncio.ensure_future(ask)}
        try:
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if not task.cancelled() and task.exception() is None:
                        return task.result()
        finally:
            for task in tasks:
                task.cancel()
        raise CallTimeout(
            f"no result within the timeout; the message was stored before (stream sequence {seq}) "
            "and its result is not known to the agent yet",
            agent=f"{kind}/{agent_id}",
            action=action,
            details={"stored": True, "stream_seq": seq, "duplicate": True},
        )
