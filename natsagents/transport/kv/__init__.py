"""JetStream key-value buckets, built on the JetStream layer (``transport/jetstream/``).

The cluster layer keeps membership leases, the agent directory and agent state here:

* ``entry.py``: keys, :class:`Entry`, and how a stored message reads as a put, delete or purge;
* ``watch.py``: :class:`Watch`, a watch that recreates its consumer after reconnects and gaps;
* ``bucket.py``: :func:`open_bucket` (its stream made by ``jetstream.create_stream``) and
  :class:`Bucket`'s reads and writes.

Errors are the JetStream family of :mod:`natsagents.errors`: :data:`KvError` is
:class:`~natsagents.errors.JetStreamError` under its KV name; :class:`CasConflict` and
:class:`KeyNotFound` are its compare-and-set refusals. ``api_request`` is re-exported from
the JetStream layer for callers that send raw API requests.
"""

from ...errors import CasConflict, KeyNotFound
from ...errors import JetStreamError as KvError
from ..jetstream import api_request
from .bucket import Bucket, open_bucket
from .entry import Entry, Operation, validate_key
from .watch import Watch

__all__ = [
    "Bucket",
    "CasConflict",
    "Entry",
    "KeyNotFound",
    "KvError",
    "Operation",
    "Watch",
    "api_request",
    "open_bucket",
    "validate_key",
]
