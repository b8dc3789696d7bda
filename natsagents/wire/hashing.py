"""The stable 64-bit hash of protocol v1: placement's hash ring (``cluster.ring``) and the
partition owners' rendezvous hashing (``delivery.owners``) both use it, and any peer can
compute it: BLAKE2b with an 8-byte digest and the personalisation ``natsagents.ring``
over the UTF-8 bytes, read big-endian. Pinned by golden values in the tests.

Pure functions: no I/O.
"""

from __future__ import annotations

import hashlib

__all__ = ["hash64"]

_PERSON = b"natsagents.ring"  # blake2b personalisation (≤ 16 bytes): domain separation


def hash64(text: str) -> int:
    """The stable 64-bit hash of ``text`` used for keys and virtual nodes.

    Identical in every process and on every platform (unlike ``hash()``, which is salted
    per process).
    """
    data = text.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=_PERSON).digest(), "big")
