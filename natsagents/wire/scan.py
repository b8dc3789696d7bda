"""A structural check of a msgpack body before anything is built from it (``codec.decode``).

msgpack's C unpacker allocates the item slots of an array when it reads the array's header,
for the number of items the header *announces* (``PyList_New(n)``, 8 bytes a slot), before it
knows whether the body holds them. A body that announces long arrays it never fills — up to
1,024 of them, each inside the last — made it allocate ~80 MiB from 4 KiB (msgpack 1.2.4;
``docs/security.md``, "Bounded decoding"). And hooks that count what it builds see an array
only when it closes, after its items are built. :func:`scan` walks the headers only, builds
nothing, and proves three things of a body, or raises:

- it is *complete*: every item announced is there and nothing follows the value. Then every
  slot the unpacker allocates is filled by an object of at least one byte, so it allocates at
  most one slot per object;
- it counts at most ``max_objects`` objects, counted as ``codec`` documents it (each array
  and map 1 + its items, a map's entries 2), at its headers, before any of it is built;
- it nests at most :data:`MAX_DEPTH` arrays and maps (msgpack's fixed stack).

Pure Python, one loop step per object, except that runs of one-byte objects (small ints,
nil, booleans, empty arrays and maps) inside an array or map are skipped by one regular
expression match.
"""

from __future__ import annotations

import re

__all__ = ["MAX_DEPTH", "BodyError", "DepthError", "ObjectsError", "scan"]

#: Deepest nesting a body may have: the fixed stack of msgpack's C unpacker (1,024 arrays
#: and maps open at once; an empty one is never open).
MAX_DEPTH = 1024


class BodyError(ValueError):
    """The body is not one complete msgpack value."""


class ObjectsError(BodyError):
    """More objects than allowed."""


class DepthError(BodyError):
    """Nested deeper than :data:`MAX_DEPTH`."""


def _tables() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per first byte: the size of an object whose size that byte fixes (0: not fixed), and
    the number of items of a fix-sized array or map (entries count twice: key and value)."""
    size = [0] * 256
    items = [0] * 256
    for b in range(0x00, 0x80):
        size[b] = 1  # positive fixint
    for b in range(0xE0, 0x100):
        size[b] = 1  # negative fixint
    for b in range(0xA0, 0xC0):
        size[b] = 1 + (b & 0x1F)  # fixstr
    size[0x80] = size[0x90] = 1  # an empty map or array: complete in one byte
    for b in range(0x81, 0x90):
        items[b] = 2 * (b & 0x0F)  # fixmap
    for b in range(0x91, 0xA0):
        items[b] = b & 0x0F  # fixarray
    fixed = {
        0xC0: 1,  # nil
        0xC2: 1,  # false
        0xC3: 1,  # true
        0xCA: 5,  # float 32
        0xCB: 9,  # float 64
        0xCC: 2,  # uint 8 … 64
        0xCD: 3,
        0xCE: 5,
        0xCF: 9,
        0xD0: 2,  # int 8 … 64
        0xD1: 3,
        0xD2: 5,
        0xD3: 9,
        0xD4: 3,  # fixext 1, 2, 4, 8, 16: type byte + data
        0xD5: 4,
        0xD6: 6,
        0xD7: 10,
        0xD8: 18,
    }
    for b, n in fixed.items():
        size[b] = n
    return tuple(size), tuple(items)


_SIZE, _ITEMS = _tables()
#: Objects of one byte, which need no header walk: fixints, nil, false, true, "", {} and [].
_ONE_BYTE_RUN = re.compile(rb"[\x00-\x7f\x80\x90\xa0\xc0\xc2\xc3\xe0-\xff]+")
#: Variable-size objects: first byte → (bytes of the length field, extra header bytes).
#: str 8/16/32, bin 8/16/32, ext 8/16/32 (whose type byte follows the length).
_SIZED = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4, 0xC7: 1, 0xC8: 2, 0xC9: 4}
_EXT = (0xC7, 0xC8, 0xC9)
#: array 16/32, map 16/32: first byte → (bytes of the count field, items per count).
_LONG = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
#: A run of one-byte items is matched with the regular expression only in an array or map
#: that has at least this many items left (below it the loop is faster).
_RUN = 8


def scan(data: bytes, max_objects: int | None) -> int:
    """Check that ``data`` is one complete msgpack value within the limits (see the module
    docstring) and return its count of objects as ``codec`` counts them: each array and map
    1 + its items (a map's entries count 2: key and value); a scalar at the top level 0.
    A body can count at most twice its length. Builds nothing; its own memory is a stack of
    at most :data:`MAX_DEPTH` integers.

    Args:
        data: the body (not empty).
        max_objects: the most it may count (``None``: no limit).

    Raises:
        ObjectsError: it counts more than ``max_objects``.
        DepthError: nested deeper than :data:`MAX_DEPTH`.
        BodyError: not one complete value: it ends inside one (an announced item, string or
            binary is missing), bytes follow it, or it uses the reserved byte 0xc1.
    """
    end = len(data)
    limit = 2 * end if max_objects is None else max_objects
    size_of = _SIZE
    items_of = _ITEMS
    run = _ONE_BYTE_RUN.match
    count = data.count
    stack: list[int] = []  # items left in each enclosing array or map
    left = 1  # items left in the innermost open array or map (the top level: one value)
    objects = 0
    i = 0
    try:
        while True:
            b = data[i]  # IndexError: the body ends here
            size = size_of[b]
            if size:  # a scalar, or an empty array or map
                if size == 1:
                    if left >= _RUN:  # a run of one-byte objects: matched in C
                        stop = run(data, i, min(end, i + left)).end()  # type: ignore[union-attr]  # data[i] matches
                        objects += count(b"\x80", i, stop) + count(b"\x90", i, stop)  # the empty maps and arrays
                        left -= stop - i
                        i = stop
                    else:
                        if b == 0x80 or b == 0x90:
                            objects += 1
                        i += 1
                        left -= 1
                    if objects > limit:
                        raise ObjectsError(f"msgpack body holds more than {limit} objects")
                else:
                    i += size
                    left -= 1
                if left:
                    continue
            else:
                n = items_of[b]
                header = None
                if n:  # a fixarray or fixmap with items
                    i += 1
                else:
                    header = _LONG.get(b)
                    if header is not None:  # array or map 16/32
                        width, per = header
                        n = int.from_bytes(data[i + 1 : i + 1 + width], "big") * per
                        i += 1 + width
                    elif b in _SIZED:  # str, bin or ext 8/16/32
                        width = _SIZED[b]
                        i += 1 + width + int.from_bytes(data[i + 1 : i + 1 + width], "big") + (b in _EXT)
                    else:  # 0xc1
                        raise BodyError(f"byte 0xc1 at offset {i} is reserved (never used) in msgpack")
                if n:
                    if n > end - i:  # each item takes at least a byte
                        raise BodyError(_truncated(i + n, end))
                    objects += 1 + n
                    if objects > limit:
                        raise ObjectsError(f"msgpack body holds more than {limit} objects")
                    stack.append(left)
                    if len(stack) > MAX_DEPTH:
                        raise DepthError(f"msgpack body nested deeper than {MAX_DEPTH} levels")
                    left = n
                    continue
                if header is not None:  # an empty array or map 16/32
                    objects += 1
                    if objects > limit:
                        raise ObjectsError(f"msgpack body holds more than {limit} objects")
                left -= 1
            while not left:
                if not stack:
                    if i > end:
                        raise BodyError(_truncated(i, end))
                    if i < end:
                        raise BodyError(f"{end - i} bytes follow the msgpack value")
                    return objects
                left = stack.pop() - 1
    except IndexError:
        raise BodyError(_truncated(i + 1, end)) from None


def _truncated(needed: int, end: int) -> str:
    return f"the body ends inside a value ({end} bytes, at least {needed} needed)"
