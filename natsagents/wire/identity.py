"""Caller signatures: how a host knows who sent a request (docs/protocol.md §4.4).

``Na-Caller`` is whatever the sender writes. A caller that wants to be recognised signs
each request with its NATS user nkey (ed25519) and sends three headers:

* ``Na-Caller-Key``: its public nkey (``U…``, 56 characters);
* ``Na-Caller-Expires``: when the signature stops being valid (Unix ms);
* ``Na-Caller-Sig``: the base64url (no padding) of the 64-byte ed25519 signature over
  :func:`canonical_bytes`.

The canonical bytes are the UTF-8 of ``natsagents-caller-v1``, the agent subject, the
values of :data:`SIGNED` (empty when absent) and the lower-case hex SHA-256 of the body
as sent, each followed by ``\\n``. Header values never contain CR or LF, so the encoding
is unambiguous. The subject is always the agent subject (``<prefix>.agent.<kind>.<token>``),
also for a durable message published to its inbox subject: that is the subject its
partition owner forwards it to. An operator's control request (protocol §14.4) is signed
the same way over its control subject ``<prefix>.node.<node>.<op>``.

Pure code but for the ed25519 operations, which use PyNaCl (installed with the ``nkeys``
extra) and are imported only when an identity or a trusted key is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from . import headers as h

__all__ = [
    "CALL_VALIDITY_MS",
    "DOMAIN",
    "DURABLE_VALIDITY_MS",
    "MAX_VALIDITY_MS",
    "SIGNED",
    "Identity",
    "SignatureError",
    "body_digest",
    "call_expiry",
    "canonical_bytes",
    "check",
    "decode_public_key",
    "expires_of",
    "is_signed",
    "verifier",
]

#: The first line of the canonical bytes (what is signed, and in which version).
DOMAIN = "natsagents-caller-v1"
#: The request headers a signature covers, in this order, after the subject.
SIGNED = (
    h.MESSAGE_ID,
    h.ACTION,
    h.CALLER_EXPIRES,
    h.DEADLINE,
    h.DELIVERY,
    h.REPLY_MODE,
    h.ENCODING,
)
#: Hosts refuse a signature whose ``Na-Caller-Expires`` lies further ahead than this (ms):
#: what a host must remember to refuse a replay stays bounded.
MAX_VALIDITY_MS = 300_000
#: How long the SDK's signatures last: a call's until its deadline plus a second (a late
#: copy then meets the deadline, ``timeout``, not an expired signature), at most 240 s (a
#: call that waits longer is refused ``expired`` if it must be sent again after that); a
#: durable message's 90 s, by which it must be stored (its partition owner checks that
#: against the inbox stream's duplicate window, 120 s by default, protocol §15.2).
CALL_VALIDITY_MS = 240_000
DURABLE_VALIDITY_MS = 90_000

_USER_PREFIX = 20 << 3  # nkeys: the version byte of user public keys ('U…')
_KEY_RE = re.compile(r"U[A-Z2-7]{55}")
_SIG_RE = re.compile(r"[A-Za-z0-9_-]{86}")
_EXPIRES_RE = re.compile(r"[0-9]{1,15}")


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum nkeys append to every key."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        crc &= 0xFFFF
    return crc


def decode_public_key(key: str) -> bytes:
    """The 32 raw ed25519 bytes of a user nkey (``U…``).

    Raises:
        ConfigurationError: not a valid user public nkey (format or checksum).
    """
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise ConfigurationError(f"not a user public nkey (56 characters starting with 'U'): {str(key)[:60]!r}")
    try:
        raw = base64.b32decode(key)
    except binascii.Error:
        raise ConfigurationError(f"not a user public nkey: {key!r}") from None
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if len(body) != 33 or body[0] != _USER_PREFIX or _crc16(body) != crc:
        raise ConfigurationError(f"not a user public nkey (bad prefix or checksum): {key!r}")
    return body[1:]


def body_digest(body: bytes) -> str:
    """Lower-case hex SHA-256 of a body as it travels (compressed if it is)."""
    return hashlib.sha256(body).hexdigest()


def canonical_bytes(subject: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """What a caller signs for a request to the agent ``subject`` (see the module docstring)."""
    get = headers.get
    lines = [DOMAIN, subject, *(get(name, "") for name in SIGNED), body_digest(body)]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


def call_expiry(deadline: float | None, now: float) -> int:
    """``Na-Caller-Expires`` for a call with this deadline (Unix seconds; ``None``: none)."""
    cap = int(now * 1000) + CALL_VALIDITY_MS
    return cap if deadline is None else min(cap, int(deadline * 1000) + 1000)


def is_signed(headers: Mapping[str, str]) -> bool:
    """Whether a request carries any of the caller-signature headers."""
    return h.CALLER_SIG in headers or h.CALLER_KEY in headers or h.CALLER_EXPIRES in headers


def _need_nacl() -> None:
    if importlib.util.find_spec("nacl") is None:
        raise ConfigurationError('caller signatures need the nkeys package: pip install "natsagents[nkeys]"')


def _read_seed(seed: str | Path) -> bytes:
    text = str(seed).strip()
    if not text.startswith("SU") and Path(text).is_file():
        text = Path(text).read_text().strip()
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("SU")]
    if not lines:
        raise ConfigurationError("an identity needs a user nkey seed ('SU…') or a file holding one")
    return lines[0].encode("ascii")


class Identity:
    """A caller's signing key: requests sent through a mesh with an identity carry a
    signature hosts can verify against the keys they trust (``self.context.caller_identity``).

    Make one with :meth:`from_seed`. The seed is the same kind of secret as a NATS user's
    (``Auth(nkey_seed=…)``; the same seed may serve both); ``repr`` shows only the public key.
    """

    __slots__ = ("_sign", "public_key")

    def __init__(self, seed: bytes) -> None:
        _need_nacl()
        import nkeys

        try:
            pair = nkeys.from_seed(bytearray(seed))
            public = pair.public_key.decode("ascii")
        except Exception as exc:
            raise ConfigurationError(f"invalid nkey seed: {type(exc).__name__}") from None
        if not public.startswith("U"):
            raise ConfigurationError(f"an identity needs a user nkey seed ('SU…'), not one for {public[0]!r} keys")
        #: The public nkey (``U…``) hosts list in ``trusted_callers``.
        self.public_key: str = public
        self._sign = pair.sign

    @staticmethod
    def check_available() -> None:
        """Raises ConfigurationError when PyNaCl (the ``nkeys`` extra) is missing."""
        _need_nacl()

    @classmethod
    def from_seed(cls, seed: str | Path) -> Identity:
        """An identity from a user nkey seed (``SU…``) or a file holding one (a ``.nk``
        file of ``natsagents auth``, or a ``.creds`` file).

        Raises:
            ConfigurationError: no valid user seed, or the nkeys package is missing.
        """
        return cls(_read_seed(seed))

    def __repr__(self) -> str:
        return f"Identity({self.public_key})"

    def sign(self, subject: str, headers: MutableMapping[str, str], body: bytes, expires_ms: int) -> None:
        """Add ``Na-Caller-Key``, ``Na-Caller-Expires`` and ``Na-Caller-Sig`` to the
        headers of a request to ``subject`` (the agent subject) carrying ``body``; call it
        after every other signed header is final."""
        headers[h.CALLER_KEY] = self.public_key
        headers[h.CALLER_EXPIRES] = str(expires_ms)
        signature = self._sign(canonical_bytes(subject, headers, body))
        headers[h.CALLER_SIG] = base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii")


class SignatureError(Exception):
    """A caller signature that does not check out; ``reason`` is a short label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def verifier(key: str) -> Any:
    """A verifier for the user nkey ``key``: ``verify(message, signature)`` raises on a
    bad signature (PyNaCl's ``VerifyKey``).

    Raises:
        ConfigurationError: not a user public nkey, or the nkeys package is missing.
    """
    raw = decode_public_key(key)
    _need_nacl()
    from nacl.signing import VerifyKey

    return VerifyKey(raw)


def expires_of(headers: Mapping[str, str]) -> int | None:
    """``Na-Caller-Expires`` as an int, or ``None`` when absent or malformed."""
    value = headers.get(h.CALLER_EXPIRES)
    if value is None or not _EXPIRES_RE.fullmatch(value):
        return None
    return int(value)


def check(
    verify: Any,
    subject: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now_ms: int | None,
) -> int:
    """Check the signature of a request from the holder of ``verify`` (see :func:`verifier`).
    ``now_ms``: the host's clock, or ``None`` for a durable message whose freshness its
    partition owner checked when it was stored. Returns ``Na-Caller-Expires``.

    Raises:
        SignatureError: ``reason`` ``malformed``, ``expired``, ``too_far`` or ``bad_signature``.
    """
    sig = headers.get(h.CALLER_SIG)
    expires = expires_of(headers)
    if sig is None or expires is None or not _SIG_RE.fullmatch(sig):
        raise SignatureError(
            "malformed",
            f"a caller signature needs {h.CALLER_KEY}, {h.CALLER_EXPIRES} (Unix ms) and {h.CALLER_SIG} "
            "(86 base64url characters)",
        )
    if now_ms is not None:
        if expires <= now_ms:
            raise SignatureError("expired", f"the caller signature expired {now_ms - expires} ms ago")
        if expires > now_ms + MAX_VALIDITY_MS:
            raise SignatureError(
                "too_far",
                f"{h.CALLER_EXPIRES} lies more than {MAX_VALIDITY_MS // 1000} s ahead of this host's clock",
            )
    from nacl.exceptions import BadSignatureError

    try:
        verify.verify(canonical_bytes(subject, headers, body), base64.urlsafe_b64decode(sig + "=="))
    except (BadSignatureError, ValueError, binascii.Error):
        raise SignatureError("bad_signature", "the caller signature does not match this message") from None
    return expires
