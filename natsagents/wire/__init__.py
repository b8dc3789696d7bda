"""Protocol v1 of natsagents: subjects, headers, ids, msgpack bodies, envelopes.

Pure code: nothing here does I/O. ``docs/protocol.md`` is the normative description.
"""

from . import codec, envelope, headers, ids, subjects

__all__ = ["codec", "envelope", "headers", "ids", "subjects"]
