"""JSON control payloads (zdl.md 3.1): canonical encoding and strict, bounded field checks.

Everything a device sends is untrusted, so every read goes through a checker that raises
``ZflashError(Code.PROTOCOL)`` with the message and field named, and nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from zflash.errors import Code, ZflashError

Ranges = tuple[tuple[int, int], ...]

MAX_RANGES = 1 << 20
MAX_JSON = 64 << 10  # default bound of a JSON payload, checked before parsing
MAX_JSON_ITEMS = 4096  # default bound of its elements (values, pairs), checked before parsing
U32 = 0xFFFFFFFF
U63 = (1 << 63) - 1


def dumps(obj: dict[str, Any]) -> bytes:
    """Canonical form: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def json_items(raw: bytes) -> int:
    """An upper bound of the elements in a JSON text, counted without parsing it.

    Every value after the first in an array or object follows a comma, and every container
    opens with a bracket; commas and brackets inside strings only raise the count.
    """
    return 1 + raw.count(b",") + raw.count(b"[") + raw.count(b"{")


def loads(payload: bytes | bytearray | memoryview, what: str, max_bytes: int = MAX_JSON,
          max_items: int = MAX_JSON_ITEMS) -> dict[str, Any]:
    """Parse one JSON object; malformed input of any kind is a protocol error.

    The size and the element count are bounded before ``json.loads`` builds anything: a
    hostile peer's million-element list would otherwise cost hundreds of MB before any field
    check could refuse it.
    """
    if len(payload) > max_bytes:
        raise ZflashError(Code.PROTOCOL, f"{what}: JSON payload of {len(payload)} bytes, "
                                         f"more than the {max_bytes} allowed")
    raw = bytes(payload)
    if json_items(raw) > max_items:
        raise ZflashError(Code.PROTOCOL, f"{what}: JSON payload has more than {max_items} "
                                         "elements")
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ZflashError(Code.PROTOCOL, f"{what}: malformed JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ZflashError(Code.PROTOCOL, f"{what}: payload is not a JSON object")
    return obj


class Reader:
    """Typed access to one decoded JSON object, naming the message in every error."""

    def __init__(self, obj: dict[str, Any], what: str) -> None:
        self.obj = obj
        self.what = what

    def fail(self, key: str, why: str) -> ZflashError:
        return ZflashError(Code.PROTOCOL, f"{self.what}: field {key!r} {why}")

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.obj:
            if optional:
                return None
            raise self.fail(key, "is missing")
        return self.obj[key]

    def int(self, key: str, lo: int = 0, hi: int = U63, optional: bool = False) -> Any:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not _is_int(value) or not lo <= value <= hi:
            raise self.fail(key, f"must be an integer in {lo}..{hi}")
        return value

    def str(self, key: str, lo: int = 1, hi: int = 256, optional: bool = False) -> Any:
        value = self._get(key, optional)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not lo <= len(value) <= hi:
            raise self.fail(key, f"must be a string of {lo}..{hi} characters")
        return value

    def bool(self, key: str) -> bool:
        value = self._get(key, False)
        if not isinstance(value, bool):
            raise self.fail(key, "must be a boolean")
        return value

    def slot(self, key: str = "slot") -> str | None:
        """A slot name, or None for an unslotted partition (the key must be present)."""
        self._get(key, False)
        return self.str(key, 1, 8, optional=True)

    def object(self, key: str) -> dict[str, Any]:
        value = self._get(key, False)
        if not isinstance(value, dict):
            raise self.fail(key, "must be an object")
        return value

    def list(self, key: str, hi: int) -> list[Any]:
        value = self._get(key, False)
        if not isinstance(value, list) or len(value) > hi:
            raise self.fail(key, f"must be a list of at most {hi} items")
        return value

    def str_list(self, key: str, lo: int, hi: int, item_hi: int) -> tuple[str, ...]:
        items = self.list(key, hi)
        if len(items) < lo or any(not isinstance(i, str) or not 1 <= len(i) <= item_hi
                                  for i in items) or len(set(items)) != len(items):
            raise self.fail(key, f"must hold {lo}..{hi} distinct strings of 1..{item_hi} chars")
        return tuple(items)

    def int_list(self, key: str, lo: int, hi: int, item_lo: int, item_hi: int) -> tuple[int, ...]:
        items = self.list(key, hi)
        if len(items) < lo or any(not _is_int(i) or not item_lo <= i <= item_hi for i in items):
            raise self.fail(key, f"must hold {lo}..{hi} integers in {item_lo}..{item_hi}")
        return tuple(items)

    def hex(self, key: str, lo: int, hi: int) -> str:
        value = self.str(key, lo, hi)
        if any(c not in "0123456789abcdef" for c in value):
            raise self.fail(key, "must be lowercase hex")
        return value

    def ranges(self, key: str) -> Ranges:
        return check_ranges(self.list(key, MAX_RANGES), self, key)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_ranges(items: Any, reader: Reader | None = None, key: str = "ranges") -> Ranges:
    """Validate a range list: [first, count] pairs, sorted, disjoint, within u32 block numbers."""
    out: list[tuple[int, int]] = []
    end = 0
    for item in items:
        if (not isinstance(item, (list, tuple)) or len(item) != 2
                or not all(_is_int(v) for v in item)):
            break
        first, count = item
        if first < end or count < 1 or first + count > U32 + 1:
            break
        out.append((first, count))
        end = first + count
    else:
        return tuple(out)
    why = "must be sorted, disjoint [first, count] pairs of block numbers"
    if reader is not None:
        raise reader.fail(key, why)
    raise ZflashError(Code.PROTOCOL, f"{key} {why}")


def ranges_json(ranges: Ranges) -> list[list[int]]:
    return [[first, count] for first, count in ranges]


def merge_ranges(ranges: Ranges) -> Ranges:
    """Join touching ranges of a validated list, so each block run is one pair."""
    out: list[tuple[int, int]] = []
    for first, count in ranges:
        if out and out[-1][0] + out[-1][1] == first:
            out[-1] = (out[-1][0], out[-1][1] + count)
        else:
            out.append((first, count))
    return tuple(out)


def ranges_subset(inner: Ranges, outer: Ranges) -> bool:
    """True when every block of ``inner`` lies in ``outer`` (both validated, sorted)."""
    outer = merge_ranges(outer)
    j = 0
    for first, count in inner:
        while j < len(outer) and outer[j][0] + outer[j][1] <= first:
            j += 1
        if j == len(outer) or outer[j][0] > first or first + count > outer[j][0] + outer[j][1]:
            return False
    return True
