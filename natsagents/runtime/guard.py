"""Authenticated callers and action policies: the host's check before a message may run
(docs/security.md "Authenticated callers and action policies", protocol §4.4).

A host that trusts caller keys (``Mesh.connect(trusted_callers=…)``) verifies every
signed request (``wire.identity``): an unknown key, a malformed, expired or wrong
signature is refused ``unauthorized``, whatever the action's policy, so a handler never
runs under an identity that did not check out. A host that trusts no keys ignores
signatures. Then the action's policy (``@action(allow=…)``, else the kind's ``allow``,
else the mesh's ``default_allow``; ``agent.policy``) must admit the verified caller, or
the request is refused ``unauthorized``. ``Na-Caller`` plays no part.

Replays. A signature covers the agent subject, the message id, the action, the body and
an expiry at most :data:`~natsagents.wire.identity.MAX_VALIDITY_MS` ahead, so a captured
request runs nowhere else and nowhere later. A copy sent to the *same* agent before it
expires is a resend as far as the bytes go; the agent's dedup memory (``runtime.dedup``)
answers it while it remembers the id, and this guard remembers the ``(key, id)`` of every
signed request that ran until its signature expires, so that a copy the dedup forgot gets
``already_applied`` and does not run again. The dedup keeps the reply until the request's
deadline + 1 s, which a signature's expiry does not pass for a request with a deadline
(``call_expiry``), so that answer only comes to a copy past the reply window (a request
without a deadline: after 60 s) or whose activation went away on a standalone host.
Durable messages are checked by their partition owner instead (the signature must be fresh
when the message is stored, and the inbox stream's duplicate window drops a second copy;
``delivery.partition``).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..agent.base import Agent
from ..agent.policy import Policy, TrustedCaller
from ..transport import Inbound
from ..wire import headers as h
from ..wire.identity import SignatureError, check, is_signed, verifier

__all__ = ["Admitted", "Denied", "Guard", "Verified"]

log = logging.getLogger("natsagents.runtime")


class Denied(Exception):
    """A request the guard refuses (``unauthorized``); ``reason`` labels why: ``unsigned``,
    ``unknown_key``, ``malformed``, ``expired``, ``too_far``, ``bad_signature``, ``denied``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Admitted(NamedTuple):
    """A request whose caller signature checked out."""

    caller: TrustedCaller
    key: str
    message_id: str
    expires_ms: int
    durable: bool


class Verified:
    """A received message (``transport.Inbound``) together with its verified caller, as
    it waits in the mailbox."""

    __slots__ = ("admitted", "data", "headers", "reply", "subject")

    def __init__(self, msg: Inbound, admitted: Admitted) -> None:
        self.subject = msg.subject
        self.reply = msg.reply
        self.data = msg.data
        self.headers = msg.headers
        self.admitted = admitted


class Guard:
    """One host's trusted keys, policies and replay memory.

    Args:
        trusted: public user nkey → the caller it identifies.
        default: the mesh's ``default_allow`` (``None``: anyone).
        max_remembered: ``(key, message id)`` pairs of signed requests kept at most; past
            it, those whose signatures expire first are forgotten first.
    """

    def __init__(
        self, trusted: Mapping[str, TrustedCaller], default: Policy | None, *, max_remembered: int = 200_000
    ) -> None:
        self._trusted: dict[str, tuple[TrustedCaller, Any]] = {
            key: (caller, verifier(key)) for key, caller in trusted.items()
        }
        self._default = None if default is None or default.anyone else default
        #: kind → (action → policy, the policy of actions it does not have); ``None``: anyone.
        self._kinds: dict[str, tuple[dict[str, Policy | None], Policy | None]] = {}
        #: Whether anything is checked at all: the default path costs one attribute read.
        self.active = bool(self._trusted) or self._default is not None
        self._seen: dict[tuple[str, str], int] = {}
        self._expiry: list[tuple[int, str, str]] = []  # heap of (expires ms, key, message id)
        self._max_remembered = max_remembered

    def add_kind(self, cls: type[Agent]) -> None:
        """Compile the policies of a kind this host serves."""
        fallback = cls.__policy__ if cls.__policy__ is not None else self._default
        if fallback is not None and fallback.anyone:
            fallback = None
        actions: dict[str, Policy | None] = {}
        for name, spec in cls.__actions__.items():
            policy = spec.allow if spec.allow is not None else fallback
            actions[name] = None if policy is None or policy.anyone else policy
        self._kinds[cls.kind] = (actions, fallback)
        if fallback is not None or any(p is not None for p in actions.values()):
            self.active = True
            if not self._trusted:
                log.warning(
                    "kind %s has caller policies but this mesh trusts no caller keys (trusted_callers): "
                    "its protected actions refuse every request",
                    cls.kind,
                )

    def admit(
        self,
        kind: str,
        action: str | None,
        subject: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        durable: bool,
    ) -> Admitted | None:
        """Check one request to an agent of ``kind`` received on ``subject``. Returns its
        verified caller (``None``: unsigned, or signatures are not checked here).
        ``durable``: its partition owner vouches (``Na-Owner-Mac``) for the signature's
        freshness when it was stored.

        Raises:
            Denied: a signature that does not check out, or a caller the policy refuses.
        """
        admitted: Admitted | None = None
        trusted = self._trusted
        if trusted and is_signed(headers):
            key = headers.get(h.CALLER_KEY, "")
            entry = trusted.get(key)
            if entry is None:
                raise Denied("unknown_key", f"caller key {key[:16]!r}… is not trusted by this host")
            caller, verify = entry
            message_id = headers.get(h.MESSAGE_ID)
            if message_id is None:
                raise Denied("malformed", f"a signed request needs a {h.MESSAGE_ID}")
            try:
                expires = check(verify, subject, headers, body, now_ms=None if durable else int(time.time() * 1000))
            except SignatureError as exc:
                raise Denied(exc.reason, exc.message) from None
            admitted = Admitted(caller, key, message_id, expires, durable)
        known = self._kinds.get(kind)
        if known is None:
            policy = self._default
        else:
            actions, fallback = known
            policy = actions.get(action, fallback) if action is not None else fallback
        if policy is not None:
            if admitted is None:
                raise Denied(
                    "unsigned",
                    f"{kind}.{action} takes only requests signed by a caller this host trusts and the action allows",
                )
            if not policy.admits(admitted.caller, admitted.key):
                raise Denied("denied", f"caller {admitted.caller.name!r} may not call {kind}.{action}")
        return admitted

    # -- replays -------------------------------------------------------------------------

    def ran_before(self, admitted: Admitted) -> bool:
        """Whether a signed request with this key and message id ran here before (and
        its signature has not expired since)."""
        expires = self._seen.get((admitted.key, admitted.message_id))
        return expires is not None and expires > time.time() * 1000

    def remember(self, admitted: Admitted) -> None:
        """A signed request ran: refuse to run it again until its signature expires."""
        now_ms = int(time.time() * 1000)
        heap, seen = self._expiry, self._seen
        while heap and (heap[0][0] <= now_ms or len(seen) >= self._max_remembered):
            expires, key, message_id = heapq.heappop(heap)
            if seen.get((key, message_id)) == expires:
                del seen[(key, message_id)]
        pair = (admitted.key, admitted.message_id)
        if pair not in seen:
            seen[pair] = admitted.expires_ms
            heapq.heappush(heap, (admitted.expires_ms, *pair))
