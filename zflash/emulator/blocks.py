"""Cheap facts about blocks on the emulated flash: holes, zeros, remembered hashes.

Why: the delta probe and KEEP_BLOCKS must not cost a hash pass over data that is known to be
zero (a partition file's holes, an erased region) or that the device hashed moments ago.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

_ZEROS = bytes(1 << 20)


def has_no_data(fd: int, offset: int, length: int) -> bool:
    """True when ``offset..offset+length`` of the file is a hole (reads as zeros) or lies
    past its end; asked of the file system (SEEK_DATA), not by reading."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError:
        return True  # ENXIO: no data at or after offset
    except AttributeError:  # pragma: no cover - platforms without SEEK_DATA
        return False


def is_zero_bytes(data: bytes | memoryview) -> bool:
    """All zero (a memory compare, several times faster than hashing)."""
    view = memoryview(data)
    for start in range(0, len(view), len(_ZEROS)):
        piece = view[start:start + len(_ZEROS)]
        if piece != _ZEROS[:len(piece)]:
            return False
    return True


def is_zero(fd: int, offset: int, length: int) -> bool:
    """The region already reads as zeros (so a zero block need not be written)."""
    return has_no_data(fd, offset, length) or is_zero_bytes(os.pread(fd, length, offset))


class BlockHashCache:
    """Digests the device computed per (file, block size), valid while the file is unchanged
    (same size and modification time) and until the device writes it (``forget``)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], tuple[tuple[int, int], dict[int, bytes]]] = {}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        try:
            info = os.stat(path)
        except OSError:
            return (-1, -1)
        return (info.st_mtime_ns, info.st_size)

    def get(self, path: Path, block_size: int) -> dict[int, bytes]:
        """The (mutable) digests of ``path``; empty after any change to the file."""
        key, stamp = (str(path), block_size), self._stamp(path)
        entry = self._entries.get(key)
        if entry is None or entry[0] != stamp:
            entry = self._entries[key] = (stamp, {})
        return entry[1]

    def forget(self, path: Path) -> None:
        for key in [k for k in self._entries if k[0] == str(path)]:
            del self._entries[key]


class DigestRecords:
    """Per slot-partition, the block digests the device committed, kept on its flash.

    Why: the device checked every block of a committed image against the signed table, so
    it knows each block's digest without reading its flash again; a delta probe of a slot
    it committed is answered from this record. A record is valid only while the partition
    file is unchanged since (size and modification time), and the device deletes it before
    any other write to that file.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, partition: Path) -> Path:
        return self.root / f"{partition.name}.digests"

    def save(self, partition: Path, block_size: int, image_size: int,
             digests: bytes) -> None:
        from zflash.emulator.storage import atomic_write
        info = os.stat(partition)
        header = f"{block_size} {image_size} {info.st_mtime_ns} {info.st_size}\n".encode()
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(partition), header + digests)

    def load(self, partition: Path, block_size: int) -> tuple[int, bytes] | None:
        """(image size, digests) when a valid record exists for ``block_size``."""
        try:
            data = self._path(partition).read_bytes()
            info = os.stat(partition)
        except OSError:
            return None
        line, _, digests = data.partition(b"\n")
        try:
            size, image, mtime, length = (int(x) for x in line.split())
        except ValueError:
            return None
        if (size, mtime, length) != (block_size, info.st_mtime_ns, info.st_size) or \
                len(digests) % 32:
            return None
        return image, digests

    def holds(self, partition: Path, image_size: int) -> bool:
        """A valid record of an image of ``image_size`` bytes: the file is exactly as the
        device wrote and checked it, block by block, at commit."""
        try:
            with open(self._path(partition), "rb") as handle:
                line = handle.readline(256)  # the header only: the digests are not needed
            info = os.stat(partition)
            block, image, mtime, length = (int(x) for x in line.split())
        except (OSError, ValueError):
            return False
        return (image, mtime, length) == (image_size, info.st_mtime_ns, info.st_size)

    def drop(self, partition: Path) -> None:
        try:
            self._path(partition).unlink()
        except FileNotFoundError:
            pass


def copy_data(src: int, dst: int, size: int, chunk: int,
              alive: Callable[[], None] = lambda: None) -> None:
    """Copy ``size`` bytes from fd ``src`` to fd ``dst`` (already truncated to all holes),
    one ``chunk`` at a time: holes are skipped by SEEK_DATA/SEEK_HOLE and all-zero chunks are
    not written, so the copy stays sparse and memory stays one chunk whatever the size.
    ``alive`` is called per chunk (the device's keep-alive)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
            end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        except OSError:
            return  # ENXIO: only a hole from here on
        for position in range(start, end, chunk):
            data = os.pread(src, min(chunk, end - position), position)
            if data and not is_zero_bytes(data):
                os.pwrite(dst, data, position)
            alive()
        offset = max(end, offset + 1)
