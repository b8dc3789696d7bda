"""Why a connection to NATS failed, in words a user can act on.

nats-py reports connection problems as whatever the socket, TLS or protocol layer raised:
``[Errno 111] Connect call failed ('127.0.0.1', 4222)``, ``nats: unexpected EOF``,
``[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] …``. :func:`classify` turns one into a
:class:`Failure`: a short reason code (``ConnectError.reason``), a sentence, and whether
retrying the same server can help. Failures that cannot heal by waiting (nothing listens,
unknown host, TLS refused) are *permanent*: a fail-fast connection gives up on them at once.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from dataclasses import dataclass

import nats.errors

__all__ = ["Failure", "classify"]

#: errno values meaning "nothing to connect to there" (the address refuses or cannot be reached).
_REFUSED = {errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH}
_ERRNO_RE = re.compile(r"\[Errno (\d+)\]")


@dataclass(frozen=True, slots=True)
class Failure:
    """One classified connection failure.

    ``reason``: ``refused``, ``unknown_host``, ``tls_untrusted``, ``tls_client_cert``,
    ``tls``, ``closed`` (the server closed the connection), ``timeout`` or ``error``.
    """

    reason: str
    text: str
    permanent: bool


def _refused(exc: OSError) -> bool:
    """``ECONNREFUSED`` and its kin, also inside asyncio's "Multiple exceptions: …" (one
    attempt per address of a host name, e.g. ``::1`` and ``127.0.0.1`` for localhost)."""
    if exc.errno is not None:
        return exc.errno in _REFUSED
    codes = [int(code) for code in _ERRNO_RE.findall(str(exc))]
    return bool(codes) and all(code in _REFUSED for code in codes)


def classify(exc: BaseException) -> Failure:
    """What ``exc``, raised or reported while connecting (or reconnecting), means."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or str(exc)
        return Failure("tls_untrusted", f"TLS: the server's certificate is not trusted ({detail})", True)
    if isinstance(exc, ssl.SSLError):
        text = str(exc)
        if "CERTIFICATE_REQUIRED" in text or "certificate required" in text:
            return Failure("tls_client_cert", "TLS: the server requires a client certificate", True)
        if "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text or "bad certificate" in text:
            return Failure("tls_client_cert", f"TLS: the server refused the client certificate ({text})", True)
        return Failure("tls", f"TLS handshake failed ({exc.reason or text})", True)
    if isinstance(exc, socket.gaierror):
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return Failure("unknown_host", f"unknown host ({exc.strerror})", True)
        return Failure("error", f"host name lookup failed ({exc.strerror})", False)
    if isinstance(exc, nats.errors.UnexpectedEOF) or isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return Failure("closed", "the server closed the connection", False)
    if isinstance(exc, OSError) and _refused(exc):
        return Failure("refused", "the connection was refused: no server listens there", True)
    if isinstance(exc, (TimeoutError, nats.errors.TimeoutError)):
        return Failure("timeout", "the server did not answer in time", False)
    if isinstance(exc, nats.errors.StaleConnectionError):
        return Failure("closed", "the connection went stale (no answer to pings)", False)
    if isinstance(exc, nats.errors.NoServersError):
        return Failure("refused", "no server accepts connections", True)
    return Failure("error", str(exc) or type(exc).__name__, False)
