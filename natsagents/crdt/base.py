"""What every CRDT of the library shares: the immutable value protocol, mutations, the
registry of type tags, and decoding with a typed error."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, NamedTuple, Self, TypeVar

from ._wire import as_map, decode_bytes, encode, fail
from .errors import CrdtDecodeError, CrdtTypeError

__all__ = ["Crdt", "Mutation", "decode"]

C = TypeVar("C", bound="Crdt")

_REGISTRY: dict[str, type[Crdt]] = {}


class Mutation(NamedTuple, Generic[C]):
    """What a mutator returns: the new state and the delta to ship to the other replicas
    (``state == old.merge(delta)``; a replica receiving it does ``mine.apply_delta(delta)``)."""

    state: C
    delta: C


class Crdt(ABC):
    """A state-based CRDT value. Instances are immutable: ``merge``, ``apply_delta`` and every
    mutator return new values and leave their inputs as they were, so an agent can keep the
    previous state for a rollback for free. ``merge`` is commutative, associative and
    idempotent; a delta is a value of the same type, merged like any other."""

    __slots__ = ()

    #: The type tag on the wire (``"t"``).
    TAG: ClassVar[str]
    #: Causal types (ORSet, MVRegister, ORMap) carry dots and a causal context.
    CAUSAL: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "TAG" in cls.__dict__:
            _REGISTRY[cls.TAG] = cls

    @abstractmethod
    def merge(self, other: Self) -> Self:
        """The least upper bound of both states (a new value)."""

    def apply_delta(self, delta: Self) -> Self:
        """Merge a delta produced by a mutator on any replica; same as :meth:`merge`. Deltas
        may come in any order, twice, or not at all (a later full merge catches up)."""
        return self.merge(delta)

    @property
    @abstractmethod
    def value(self) -> Any:
        """The plain value the state stands for."""

    @abstractmethod
    def to_obj(self) -> dict[str, Any]:
        """The msgpack-ready object of protocol §17 (canonical: equal states, equal bytes)."""

    @classmethod
    @abstractmethod
    def _from_obj(cls, obj: Any, depth: int) -> Self: ...

    @classmethod
    def from_obj(cls, obj: Any, depth: int = 0) -> Self:
        """Decode a msgpack-decoded object. Raises :class:`CrdtDecodeError`."""
        try:
            return cls._from_obj(obj, depth)
        except CrdtDecodeError:
            raise
        except (CrdtTypeError, TypeError, ValueError, KeyError, IndexError, RecursionError, OverflowError) as exc:
            raise CrdtDecodeError(f"invalid {cls.TAG}: {exc}") from None

    def to_wire(self) -> bytes:
        """The msgpack bytes of protocol §17."""
        return encode(self.to_obj())

    @classmethod
    def from_wire(cls, data: bytes) -> Self:
        """Decode bytes from any peer: bounded (protocol §5.4 limits) and validated.

        Raises:
            CrdtDecodeError: malformed msgpack, a wrong type tag or version, a value out of
                range, a structure that breaks the type's invariants.
        """
        return cls.from_obj(decode_bytes(data))

    def _same(self, other: object) -> None:
        if type(other) is not type(self):
            raise CrdtTypeError(f"cannot merge {type(self).__name__} with {type(other).__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.value!r})"


def crdt_class(tag: Any, where: str) -> type[Crdt]:
    cls = _REGISTRY.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise fail(f"unknown CRDT type {tag!r}", where)
    return cls


def decode(data: bytes) -> Crdt:
    """Decode a CRDT of any type from its wire bytes (dispatch on ``"t"``).

    Raises:
        CrdtDecodeError: as :meth:`Crdt.from_wire`.
    """
    obj = decode_bytes(data)
    return crdt_class(as_map(obj, "crdt").get("t"), "crdt.t").from_obj(obj)
