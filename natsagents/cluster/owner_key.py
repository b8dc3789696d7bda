"""The cluster's owner key (``wire.owner``): the secret partition owners sign forwarded
durable messages with, so that hosts take ``Na-Stream-Seq`` and ``Na-Batch`` from owners
only. The first node creates it (create-if-absent, so concurrent starts agree) in the
``<prefix>_control`` bucket under :data:`KEY`; every node reads it at start.

Anyone who can read the control bucket can sign: NATS permissions keep callers away from
it (``docs/security.md``). A value that is not a key (wrong length: garbage written by a
peer with write access) is replaced by compare-and-set, with a warning.
"""

from __future__ import annotations

import logging
import os

from ..errors import TransportError
from ..transport.kv import Bucket, CasConflict
from ..wire.owner import KEY_BYTES

__all__ = ["KEY", "load_owner_key"]

log = logging.getLogger("natsagents.cluster")

#: The control bucket key holding the owner key.
KEY = "owner-key"


async def load_owner_key(control: Bucket, *, attempts: int = 10) -> bytes:
    """The cluster's owner key, created if there is none.

    Raises:
        TransportError: the bucket kept changing under us (``attempts`` conflicts) or
            cannot be reached.
    """
    for _ in range(attempts):
        entry = await control.get(KEY)
        if entry is not None and len(entry.value) == KEY_BYTES:
            return entry.value
        fresh = os.urandom(KEY_BYTES)
        try:
            if entry is None:
                await control.create(KEY, fresh)
            else:
                log.warning("the owner key in %s is not a key (%d bytes): replacing it", control.name, len(entry.value))
                await control.update(KEY, fresh, revision=entry.revision)
        except CasConflict:
            continue  # another node wrote it first: read theirs
        return fresh
    raise TransportError(f"could not read or create the owner key in {control.name}")
