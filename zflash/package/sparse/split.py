"""Splitting an image into complete sparse images that each fit the device's download buffer.

A device's ``max-download-size`` is usually smaller than the partition, so the host cuts the
image into pieces that each cover part of it and leave the rest DONT_CARE (fastboot's method).
Choices beyond the format: split pieces carry no CRC: each piece's CRC would describe a
different output.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator, Union

from zflash.errors import Code, ZflashError
from zflash.package.sparse.format import (
    _U32_MAX,
    CHUNK_HEADER_SIZE,
    FILE_HEADER_SIZE,
    PIECE,
    ChunkType,
    _malformed,
    is_sparse,
)
from zflash.package.sparse.reader import SparseReader
from zflash.package.sparse.streams import _bytes_left, _peek, _spool
from zflash.package.sparse.writer import (
    _check_block_size,
    _check_size,
    _ChunkWriter,
    _raw_runs,
    _RawBlocks,
    _Run,
)

Source = Union[BinaryIO, str, "os.PathLike[str]"]


@dataclass
class SparsePiece:
    """One complete sparse image of a split, ready for ``download`` + ``flash``.

    ``file`` is positioned at 0 and is closed when the split iterator moves on.
    Blocks outside [start_block, end_block) are DONT_CARE in this piece.
    """

    index: int
    start_block: int
    end_block: int
    size: int
    file: BinaryIO = field(repr=False)

    def read(self, n: int = -1) -> bytes:
        return self.file.read(n)

    def iter_bytes(self, piece: int = PIECE) -> Iterator[bytes]:
        """The piece's bytes in pieces of at most ``piece`` bytes."""
        while data := self.file.read(piece):
            yield data


class _PieceBuilder:
    """Packs runs into one piece within ``max_size``, keeping room for the trailing DONT_CARE."""

    def __init__(self, index: int, start_block: int, block_size: int, total_blocks: int,
                 max_size: int, make_out: Callable[[], BinaryIO] = _spool) -> None:
        self.index = index
        self.start_block = start_block
        self._bs = block_size
        self._total = total_blocks
        self._max = max_size
        self.has_data = False
        self.end_block = start_block
        self._make_out = make_out
        self.file = make_out()
        self.writer = _ChunkWriter(self.file, block_size)
        if start_block:
            self.writer.add(_Run(ChunkType.DONT_CARE, start_block))

    def _room(self) -> int:
        """Bytes free once the trailing DONT_CARE header is reserved."""
        return self._max - self.writer.size - CHUNK_HEADER_SIZE

    def raw_fit(self, wanted: int) -> int:
        """How many of ``wanted`` RAW blocks fit now (merging into an open RAW chunk if any)."""
        merge_room = self.writer.room_in_open(ChunkType.RAW)
        if merge_room:
            return max(0, min(wanted, merge_room, self._room() // self._bs))
        new_chunk_room = (self._room() - CHUNK_HEADER_SIZE) // self._bs
        return max(0, min(wanted, self.writer.raw_cap, new_chunk_room))

    def fits(self, run: _Run) -> bool:
        return self.writer.cost(run.kind, run.blocks, run.fill) <= self._room()

    def add(self, run: _Run) -> None:
        self.writer.add(run)
        if run.kind is not ChunkType.DONT_CARE:
            self.has_data = True

    def finish(self) -> SparsePiece:
        self.end_block = end = self.writer.blocks
        if end < self._total:
            self.writer.add(_Run(ChunkType.DONT_CARE, self._total - end))
        size = self.writer.finish(self._total)
        self.file.seek(0)
        return SparsePiece(self.index, self.start_block, end, size, self.file)

    def next_piece(self) -> "_PieceBuilder":
        """The builder for the piece after this finished one."""
        return _PieceBuilder(self.index + 1, self.end_block, self._bs, self._total, self._max,
                             self._make_out)


def _emit(builder: _PieceBuilder) -> Iterator[SparsePiece]:
    try:
        yield builder.finish()
    finally:
        builder.file.close()


def _pack(runs: Iterator[_Run], block_size: int, total_blocks: int, max_size: int,
          make_out: Callable[[], BinaryIO] = _spool) -> Iterator[SparsePiece]:
    """Greedy packing: fill each piece until the next run (or RAW block) does not fit.
    ``make_out`` makes each piece's file (a spooled temp file, or a list of references to
    a mapped source: zflash.package.sparse.mapped)."""
    builder = _PieceBuilder(0, 0, block_size, total_blocks, max_size, make_out)
    try:
        for run in runs:
            if run.kind is ChunkType.RAW:
                left = run.blocks
                while left:
                    take = builder.raw_fit(left)
                    if take == 0:
                        if not builder.has_data:
                            raise ZflashError(Code.INTERNAL, "split: a block does not fit a piece")
                        yield from _emit(builder)
                        builder = builder.next_piece()
                        continue
                    builder.add(run.part((run.blocks - left) * block_size, take))
                    left -= take
            elif run.kind is ChunkType.DONT_CARE or builder.fits(run):
                builder.add(run)
            else:
                yield from _emit(builder)
                builder = builder.next_piece()
                builder.add(run)
        if builder.has_data or builder.index == 0:
            yield from _emit(builder)
    finally:
        builder.file.close()


def min_split_size(block_size: int) -> int:
    """Smallest max_size that holds one block: header, DONT_CARE, RAW header + block, DONT_CARE."""
    return FILE_HEADER_SIZE + 3 * CHUNK_HEADER_SIZE + block_size


def _sparse_runs(reader: SparseReader, refer: bool = False) -> Iterator[_Run]:
    """Chunks of a sparse source as runs; CRC32 chunks are checked by the reader and dropped.
    ``refer``: RAW runs name where their data lies in the file instead of reading it."""
    for chunk in reader.iter_chunks():
        if chunk.block_count == 0:
            continue
        if chunk.type is ChunkType.RAW:
            yield _Run(ChunkType.RAW, chunk.block_count, read=chunk.read,
                       at=chunk.data_offset if refer else None)
        elif chunk.type is ChunkType.FILL:
            yield _Run(ChunkType.FILL, chunk.block_count, fill=chunk.fill)
        elif chunk.type is ChunkType.DONT_CARE:
            yield _Run(ChunkType.DONT_CARE, chunk.block_count)


def _raw_size(fileobj: BinaryIO, size: int | None) -> int:
    _check_size(size)
    if size is not None:
        return size
    left = _bytes_left(fileobj)
    if left is None:
        raise ZflashError(Code.USAGE, "a raw image read from a stream needs its size "
                                      "(every piece's header holds the total block count)")
    return left


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[BinaryIO]:
    """A file object for a path (closed afterwards) or the caller's own file object."""
    if not isinstance(source, (str, os.PathLike)):
        yield source
        return
    with _open_path(source) as fileobj:
        yield fileobj


def _open_path(path: str | os.PathLike[str]) -> BinaryIO:
    """An image file opened for reading; 9003 if it cannot be."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None


def _check_split_size(max_size: int, block_size: int) -> None:
    need = min_split_size(block_size)
    if not isinstance(max_size, int) or max_size < need:
        raise ZflashError(Code.USAGE, f"download size limit {max_size!r} is too small for one "
                                      f"{block_size}-byte block with headers (need {need})")


def _raw_blocks(max_size: int, block_size: int, raw_size: int) -> int:
    """The block count of a raw image to split, after the checks every split makes of its
    arguments (a usable block size, room for one block, at most 2^32-1 blocks)."""
    _check_block_size(block_size)
    _check_split_size(max_size, block_size)
    total = -(-raw_size // block_size)
    if total > _U32_MAX:
        raise _malformed(f"raw image of {raw_size} bytes has more than 2^32-1 blocks")
    return total


def split_sparse(source: Source, max_size: int, *, block_size: int = 4096,
                 size: int | None = None) -> Iterator[SparsePiece]:
    """Split a raw or sparse image into complete sparse images of at most ``max_size`` bytes.

    Every piece has the source's blk_sz and total_blks; blocks outside it are DONT_CARE, so
    flashing the pieces in order writes the whole image (fastboot's method). A raw source is
    converted on the fly with ``block_size`` (zero blocks become FILL 0, so they are written);
    a stream needs ``size``. A sparse source keeps its chunks (split at block boundaries).

    Packing is greedy, so every piece but the last is within ``block_size + 24`` bytes of
    ``max_size``: at least 7/8 full whenever ``max_size >= 8 * (block_size + 24)``.
    A ``max_size`` below :func:`min_split_size` raises ``Code.USAGE``.

    Memory: each piece is built in a SpooledTemporaryFile (in memory up to 8 MiB, then on
    disk) plus one 1 MiB read buffer, whatever the image size; the piece's file is closed
    when the iterator advances. Errors in the source (including a CRC mismatch found at its
    end) can surface after earlier pieces were yielded.
    """
    with _opened(source) as fileobj:
        head, fileobj = _peek(fileobj, 4)
        if is_sparse(head):
            reader = SparseReader(fileobj)
            _check_split_size(max_size, reader.block_size)
            yield from _pack(_sparse_runs(reader), reader.block_size, reader.total_blocks,
                             max_size)
            return
        _check_block_size(block_size)  # before a stream's size is asked for
        raw_size = _raw_size(fileobj, size)
        total = _raw_blocks(max_size, block_size, raw_size)
        blocks = _RawBlocks(fileobj, block_size, raw_size)
        yield from _pack(_raw_runs(iter(blocks), block_size, False), block_size, total, max_size)
