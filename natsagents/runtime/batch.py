"""Batches (``wire.batch``, protocol §15.4): the durable messages a partition owner hands
over in one request, run in order through the dispatcher, their state stored in one write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import BAD_REQUEST, HANDLER_ERROR, UNAUTHORIZED, AgentError, ProtocolError, Unavailable
from ..observability import Metrics
from ..transport import Inbound
from ..wire import batch as wire_batch
from ..wire import envelope
from ..wire import headers as h
from .activation import Activation, Outcome
from .dedup import Dedup, Reply
from .dispatch import Dispatcher
from .exactly_once import SETTLED
from .guard import Denied, Guard

__all__ = ["BatchRunner"]

log = logging.getLogger("natsagents.runtime")


class BatchRunner:
    """Runs batch requests (see the module docstring).

    Args:
        dispatcher: runs each item as the request it stands for.
        dedup: where an item's reply is kept for a replay or a copy.
        guard: checks each item's caller signature and the action's policy.
        metrics: the mesh's.
        max_payload: the server's ``max_payload`` now (the batch reply must fit in it).
    """

    def __init__(
        self, dispatcher: Dispatcher, dedup: Dedup, guard: Guard, metrics: Metrics, max_payload: Callable[[], int]
    ) -> None:
        self._dispatcher = dispatcher
        self._dedup = dedup
        self._guard = guard
        self._metrics = metrics
        self._max_payload = max_payload

    async def run(self, act: Activation, msg: Inbound) -> Outcome:
        """Run the durable messages of a batch request in order, each as it would run
        alone, stopping at the first that does not succeed; a cluster node stores their
        state changes in one write before the batch is answered. The reply holds
        ``[headers, body]`` per item tried; a failed write answers the first item with the
        error and nothing else (none of them is applied). Never raises."""
        address = act.address
        try:
            items = wire_batch.parse_batch_request(msg.headers or {}, msg.data)
            for i, (hdrs, _) in enumerate(items):
                if h.STREAM_SEQ not in hdrs:
                    raise ProtocolError(f"batch item {i} has no {h.STREAM_SEQ}: only durable messages are batched")
                if h.BATCH in hdrs:
                    raise ProtocolError(f"batch item {i} is itself a batch")
        except ProtocolError as exc:
            self._metrics.rejected_one(act.kind, BAD_REQUEST)
            return Outcome(envelope.error_reply(BAD_REQUEST, str(exc), agent=address), True, None)
        replies: list[Reply] = []
        node = self._dispatcher.node if act.cluster is not None else None
        try:
            if node is not None:
                node.begin_batch(act)
            # The batch reply must fit in one message: stop taking items once the replies
            # fill a quarter of max_payload (one more reply, itself within max_payload, fits
            # then in all but extreme cases; the owner copes with the rest).
            budget = self._max_payload() // 4
            size = 0
            guard = self._guard
            for hdrs, data in items:
                hdrs.pop(h.REPLY_MODE, None)  # each item is answered with its result
                reply: Reply | None = None
                caller = None
                if guard.active:
                    try:
                        admitted = guard.admit(act.kind, hdrs.get(h.ACTION), msg.subject, hdrs, data, durable=True)
                        caller = admitted.caller if admitted is not None else None
                    except Denied as denied:
                        self._metrics.rejected_one(act.kind, UNAUTHORIZED)
                        reply = envelope.error_reply(
                            UNAUTHORIZED,
                            denied.message,
                            agent=address,
                            action=hdrs.get(h.ACTION),
                            details={"reason": denied.reason},
                        )
                if reply is None:
                    outcome = await self._dispatcher.run(act, hdrs, data, reply=True, caller=caller)
                    reply = outcome.reply or envelope.error_reply(HANDLER_ERROR, "no reply", agent=address)
                replies.append(reply)
                status, reply_body = reply
                if not isinstance(status, bytes) and status.get(h.STATUS) not in SETTLED:
                    break
                size += len(reply_body) + 64
                if size >= budget:
                    break  # the items after it did not run: the owner sends them again
            if node is not None:
                try:
                    await node.end_batch(act)
                except Exception as exc:
                    if not isinstance(exc, AgentError):
                        log.exception("persisting %s after a batch failed", address)
                        exc = Unavailable(f"state could not be saved: {exc}", details={"retry": True})
                    first = items[0][0].get(h.ACTION)
                    replies[:] = [
                        envelope.error_reply(exc.code, exc.message, agent=address, action=first, details=exc.details)
                    ]
        finally:
            if node is not None:
                node.abort_batch(act)  # a no-op after end_batch; else (cancelled) undo it all
        for (hdrs, _), reply in zip(items, replies, strict=False):
            # Like a message that came alone: its reply is kept for a replay (§15.1) or a copy.
            if not isinstance(reply[0], bytes) or h.MESSAGE_ID not in hdrs:
                continue  # only ok replies (prebuilt blocks) are worth keeping
            self._dedup.finish(act, hdrs[h.MESSAGE_ID], reply, envelope.deadline_of(hdrs), h.STREAM_SEQ in hdrs)
        out = wire_batch.batch_reply(replies)
        return Outcome(out, True, out)
