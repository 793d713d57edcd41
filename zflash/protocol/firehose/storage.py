"""What the device-side Firehose programmer writes to: sectors per LUN.

``Storage`` is the protocol the emulator implements over files; ``MemoryStorage`` keeps the
LUNs in memory for tests. Callers pass whole sectors and in-range addresses only: the
programmer checks ranges and sector sizes before it calls.
"""

from __future__ import annotations

from typing import Protocol, Sequence

Buffer = bytes | bytearray | memoryview


class Storage(Protocol):
    """Sector-addressed storage with one or more LUNs (physical partitions)."""

    @property
    def sector_size(self) -> int:
        """Bytes per sector (512 or 4096), the same on every LUN."""
        ...

    @property
    def lun_count(self) -> int:
        ...

    def num_sectors(self, lun: int) -> int:
        """Sectors on ``lun``."""
        ...

    def read(self, lun: int, start: int, count: int) -> bytes:
        """``count`` sectors from ``start``."""
        ...

    def write(self, lun: int, start: int, data: Buffer) -> None:
        """Whole sectors at ``start``."""
        ...

    def erase(self, lun: int, start: int, count: int) -> None:
        """Erase ``count`` sectors (they then read as the storage's erased value)."""
        ...


class MemoryStorage:
    """LUNs as bytearrays; erased sectors read as ``erased`` bytes (zeros by default)."""

    def __init__(self, sectors: Sequence[int], sector_size: int = 4096,
                 erased: int = 0) -> None:
        self._sector_size = sector_size
        self.erased = erased
        self.luns = [bytearray([erased]) * (n * sector_size) for n in sectors]

    @property
    def sector_size(self) -> int:
        return self._sector_size

    @property
    def lun_count(self) -> int:
        return len(self.luns)

    def num_sectors(self, lun: int) -> int:
        return len(self.luns[lun]) // self._sector_size

    def read(self, lun: int, start: int, count: int) -> bytes:
        size = self._sector_size
        return bytes(self.luns[lun][start * size:(start + count) * size])

    def write(self, lun: int, start: int, data: Buffer) -> None:
        offset = start * self._sector_size
        self.luns[lun][offset:offset + len(data)] = data

    def erase(self, lun: int, start: int, count: int) -> None:
        size = self._sector_size
        self.luns[lun][start * size:(start + count) * size] = bytes([self.erased]) * (count * size)
