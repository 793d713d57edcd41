"""Whole-image validation of a sparse image before anything acts on it.

Why: the streaming reader finds a fault only when it reaches it, so a flasher that writes as
it reads has already written the chunks before a bad one (a half-written partition), and a
host that sends as it reads has already sent them. A fastboot device holds the whole download
and a host holds the whole file, so both can afford one full pass first.

Bounded time: the first pass checks structure only (headers, sizes, chunk sizes against
``total_blks``, truncation, RAW data present); CRC arithmetic runs in a second pass and only
when the image carries a checksum. A FILL or DONT_CARE run larger than 64 KiB costs about
0.4 ms of CRC arithmetic, so an image that asks for CRC checks may hold at most
``MAX_CHECKED_RUNS`` of them (a few seconds); no real image comes near.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

from zflash.errors import Code, ZflashError
from zflash.package.sparse.format import ChunkType, _malformed
from zflash.package.sparse.reader import SparseReader
from zflash.package.sparse.streams import _seekable

MAX_CHECKED_RUNS = 1 << 14
_CHEAP_RUN = 64 << 10  # runs up to this size are hashed with zlib directly


@dataclass(frozen=True)
class SparseSummary:
    """What a valid image describes."""

    block_size: int
    total_blocks: int
    chunks: int
    expanded_size: int
    raw_bytes: int  # RAW data carried in the file
    crc_checked: bool


def validate_sparse(fileobj: BinaryIO, max_size: int | None = None) -> SparseSummary:
    """Parse the whole image from the current position; 9005 on any fault.

    ``max_size`` bounds the expanded size (a partition's capacity, a package's limit) and is
    checked from the header, before any chunk is read. A seekable input is left where it
    started, so the caller can then use it; a stream is consumed.
    """
    start = fileobj.tell() if _seekable(fileobj) else None
    reader = SparseReader(fileobj, check_crc=False)
    if max_size is not None and reader.total_size > max_size:
        raise _malformed(f"sparse image expands to {reader.total_size} bytes, more than the "
                         f"{max_size} allowed here")
    raw_bytes, long_runs = 0, 0
    for chunk in reader.iter_chunks():
        if chunk.type is ChunkType.RAW:
            raw_bytes += chunk.size
        elif chunk.type in (ChunkType.FILL, ChunkType.DONT_CARE) and chunk.size > _CHEAP_RUN:
            long_runs += 1
    needs_crc = bool(reader.image_checksum or reader.crc_chunks)
    if needs_crc:
        if start is None:
            raise _malformed("a sparse stream carrying CRC32 checks can be validated only from "
                             "a seekable file")
        if long_runs > MAX_CHECKED_RUNS:
            raise _malformed(f"sparse image asks for CRC checks over {long_runs} long FILL or "
                             f"DONT_CARE runs; at most {MAX_CHECKED_RUNS} are checked")
        fileobj.seek(start)
        for _ in SparseReader(fileobj).iter_chunks():
            pass  # the reader checks every CRC32 chunk and the image checksum
    if start is not None:
        fileobj.seek(start)
    return SparseSummary(reader.block_size, reader.total_blocks, reader.total_chunks,
                         reader.total_size, raw_bytes, needs_crc)


def validate_sparse_file(path: str | os.PathLike[str], max_size: int | None = None
                         ) -> SparseSummary:
    """:func:`validate_sparse` on a file by name (9003 if it cannot be read)."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None
    with handle:
        return validate_sparse(handle, max_size)
