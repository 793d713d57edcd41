"""Block maps: one byte per block of a partition, 1 for "in", 0 for "out".

Why: a 1 GiB image has 16,384 blocks of 64 KiB and a re-flash asks the same questions of
every one of them (zero? already on the device? hash equal?). As Python loops that is
~1 us a block per question on each side of the link; as byte strings the work is done by
``bytes.find``, ``bytes.translate`` and big-integer ``|``/``&``, so it costs per run of
blocks, not per block (docs/DECISIONS.md D182). The host and the emulated device share it.
"""

from __future__ import annotations

from typing import Iterator

Map = bytes | bytearray


def of_kind(kinds: bytes, kind: int) -> bytes:
    """The map of blocks whose kind byte is ``kind`` (``kinds``: BlockTable.kinds())."""
    table = bytearray(256)
    table[kind] = 1
    return kinds.translate(table)


def union(a: Map, b: Map) -> bytes:
    """Blocks in ``a`` or ``b`` (maps of one partition: the same length)."""
    return (int.from_bytes(a, "big") | int.from_bytes(b, "big")).to_bytes(len(a), "big")


def intersection(a: Map, b: Map) -> bytes:
    return (int.from_bytes(a, "big") & int.from_bytes(b, "big")).to_bytes(len(a), "big")


def without(a: Map, b: Map) -> bytes:
    """Blocks in ``a`` and not in ``b``."""
    return (int.from_bytes(a, "big") & ~int.from_bytes(b, "big")).to_bytes(len(a), "big")


def runs(flags: Map) -> Iterator[tuple[int, int]]:
    """(first, count) of each run of blocks in the map, in order."""
    start = flags.find(1)
    while start >= 0:
        end = flags.find(0, start)
        if end < 0:
            end = len(flags)
        yield start, end - start
        start = flags.find(1, end)


def members(flags: Map) -> Iterator[int]:
    """The block indexes in the map, in order."""
    for first, count in runs(flags):
        yield from range(first, first + count)


def from_runs(count: int, ranges: object) -> bytearray:
    """A map of ``count`` blocks from (first, count) ranges, clipped to the partition."""
    flags = bytearray(count)
    for first, length in ranges:  # type: ignore[attr-defined]
        start, end = max(0, int(first)), min(count, int(first) + int(length))
        if start < end:
            flags[start:end] = b"\x01" * (end - start)
    return flags
