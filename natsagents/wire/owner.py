"""Owner proofs: how a host knows a durable message really comes from a partition owner
(docs/protocol.md §15.5).

``Na-Stream-Seq`` (exactly-once is decided by it) and ``Na-Batch`` (one state write for
many messages) are orders only a partition owner may give: a caller who could send
``Na-Stream-Seq: 999999999999999999`` would make every later exactly-once message to the
agent look applied already. So an owner signs what it forwards with the cluster's owner
key, a 32-byte secret the first node stores in the control bucket (readable by nodes
only, under the permissions ``natsagents auth`` writes), and a host runs such a message
only when the signature checks out.

The signature ``Na-Owner-Mac`` is the hex of a keyed BLAKE2b-128 over the subject, the
values of :data:`SIGNED` (empty when absent), each followed by ``\\n``, then the body.
Header values never contain CR or LF, so the encoding is unambiguous.

Pure functions: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from . import headers as h

__all__ = ["KEY_BYTES", "SIGNED", "owner_mac", "verify_owner_mac"]

#: Length of the owner key.
KEY_BYTES = 32
#: The headers a signature covers, in this order.
SIGNED = (
    h.MESSAGE_ID,
    h.STREAM_SEQ,
    h.BATCH,
    h.DELIVERY,
    h.ACTION,
    h.DEADLINE,
    h.ENCODING,
    h.REPLY_MODE,
)


def owner_mac(key: bytes, subject: str, headers: Mapping[str, str], body: bytes) -> str:
    """The ``Na-Owner-Mac`` of a message an owner sends to ``subject``."""
    mac = hashlib.blake2b(key=key, digest_size=16)
    get = headers.get
    mac.update(("\n".join([subject, *(get(name, "") for name in SIGNED)]) + "\n").encode("utf-8", "surrogatepass"))
    mac.update(body)
    return mac.hexdigest()


def verify_owner_mac(key: bytes | None, subject: str, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether ``headers`` carry a valid ``Na-Owner-Mac`` for this message under ``key``
    (``False`` without a key: a host outside a cluster takes no owner's orders)."""
    given = headers.get(h.OWNER_MAC)
    if key is None or given is None or len(given) != 32:
        return False
    return hmac.compare_digest(given, owner_mac(key, subject, headers, body))
