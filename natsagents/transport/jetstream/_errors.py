"""The JetStream exceptions, and the boundary that raises ``kv.py``'s API errors as them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from ...errors import ProtocolError, TransportError
from ..kv import KvError

if TYPE_CHECKING:
    from ._publish import PubAck


_UNKNOWN_STREAM = 10059
_UNKNOWN_CONSUMER = 10014


class JetStreamError(TransportError):
    """A JetStream operation failed on the server.

    Attributes:
        status: the status (400, 404, 409, 503 …), when the server gave one.
        err_code: the JetStream error code (10058 …), when the server gave one.
    """

    def __init__(self, message: str, *, status: int | None = None, err_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.err_code = err_code

    @property
    def transient(self) -> bool:
        """Whether the server refused for now (leader election, quorum lost): retry later."""
        return self.status in (408, 503) or self.err_code in (10008, 10118)


class StreamNotFound(JetStreamError):
    """No such stream, or no stream listens on the subject published to."""


class ConsumerNotFound(JetStreamError):
    """No such consumer: never created, deleted, or expired (``inactive_threshold``)."""


class MalformedAckSubject(JetStreamError, ProtocolError):
    """A message's reply subject is not a JetStream ack subject (``$JS.ACK.…``)."""


class PublishBatchError(JetStreamError):
    """Some publishes of :func:`publish_many` failed; the others completed.

    Attributes:
        results: per message, in order: its :class:`PubAck`, or the exception it failed
            with (a :class:`~natsagents.errors.CallTimeout` means its outcome is unknown:
            publish it again with the same ``msg_id``).
    """

    def __init__(self, message: str, results: Sequence[PubAck | Exception]) -> None:
        super().__init__(message)
        self.results: tuple[PubAck | Exception, ...] = tuple(results)

    @property
    def failures(self) -> dict[int, Exception]:
        """Index → exception of every failed message."""
        return {i: r for i, r in enumerate(self.results) if isinstance(r, Exception)}


def translate(exc: KvError, what: str = "") -> JetStreamError:
    """The :class:`JetStreamError` for an API error decoded by ``kv.py``."""
    text = f"{what}: {exc}" if what and not str(exc).startswith(what) else str(exc)
    cls: type[JetStreamError] = JetStreamError
    if exc.err_code == _UNKNOWN_STREAM:
        cls = StreamNotFound
    elif exc.err_code == _UNKNOWN_CONSUMER:
        cls = ConsumerNotFound
    return cls(text, status=exc.status, err_code=exc.err_code)


@contextlib.contextmanager
def _boundary(what: str) -> Iterator[None]:
    """Raise ``kv.py``'s API errors as :class:`JetStreamError`."""
    try:
        yield
    except KvError as exc:
        raise translate(exc, what) from exc
