"""A partition's image as Android sparse pieces built from the package's block table and
streamed straight into ``download``: no temporary file, no scan of the data for runs, each
block decoded once.

The layout of every piece is planned from the table alone (which blocks carry data, which
are zero), so each piece's size is known before its ``download:`` command, and the data is
read from the package only while it is sent. Data blocks become RAW chunks; zero blocks
become DONT_CARE after the partition was erased (``zero_chunk=DONT_CARE``), or FILL chunks of
zeros when the bootloader cannot erase it, so the slot always ends up equal to the image.
Every piece covers the whole image (DONT_CARE outside its range), as the stock client's split
does, so pieces may be flashed one after another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from zflash.errors import Code, ZflashError
from zflash.package.format import KIND_ZERO
from zflash.package.sparse.format import (CHUNK_HEADER_SIZE, FILE_HEADER_SIZE, ChunkType,
                                          chunk_header, file_header)
from zflash.targets.blocks import PartitionBlocks

FILL_ZERO = b"\0\0\0\0"
SPARSE_BLOCK_SIZES = (4096, 512)  # the first whose padding still fits the partition


def sparse_block_size(size: int, capacity: int | None) -> int | None:
    """The sparse block size for an image: a sparse image is whole blocks, so the padded
    image must still fit the partition (any size fits an unknown capacity)."""
    for block_size in SPARSE_BLOCK_SIZES:
        if capacity is None or -(-size // block_size) * block_size <= capacity:
            return block_size
    return None


@dataclass
class Chunk:
    kind: ChunkType
    first: int  # first sparse block
    count: int  # sparse blocks

    def wire_size(self, block_size: int) -> int:
        data = {ChunkType.RAW: self.count * block_size, ChunkType.FILL: 4}.get(self.kind, 0)
        return CHUNK_HEADER_SIZE + data


@dataclass
class PiecePlan:
    """One sparse image: ``chunks`` cover sparse blocks [start, end); DONT_CARE elsewhere."""

    index: int
    start: int
    end: int
    total: int  # sparse blocks of the whole image
    chunks: list[Chunk] = field(default_factory=list)

    def all_chunks(self) -> list[Chunk]:
        head = [Chunk(ChunkType.DONT_CARE, 0, self.start)] if self.start else []
        tail = [Chunk(ChunkType.DONT_CARE, self.end, self.total - self.end)] \
            if self.end < self.total else []
        return head + self.chunks + tail

    def size(self, block_size: int) -> int:
        return FILE_HEADER_SIZE + sum(c.wire_size(block_size) for c in self.all_chunks())


def _runs(blocks: PartitionBlocks, block_size: int, zero_chunk: ChunkType
          ) -> Iterator[Chunk]:
    """Runs of sparse blocks from the package table: data -> RAW, zero -> ``zero_chunk``."""
    part = blocks.part
    per = part.block_size // block_size
    kinds = blocks.table.kinds()
    total = -(-part.size // block_size)
    run: Chunk | None = None
    for index, kind in enumerate(kinds):
        first = index * per
        count = min(per, total - first)
        chunk_kind = zero_chunk if kind == KIND_ZERO else ChunkType.RAW
        if run is not None and run.kind == chunk_kind:
            run.count += count
            continue
        if run is not None:
            yield run
        run = Chunk(chunk_kind, first, count)
    if run is not None:
        yield run


def plan_pieces(blocks: PartitionBlocks, block_size: int, limit: int,
                zero_chunk: ChunkType) -> list[PiecePlan]:
    """Greedy pieces of at most ``limit`` bytes; a RAW run is split at sparse-block
    granularity, so a piece is full whenever ``limit`` holds a few blocks."""
    part = blocks.part
    if part.block_size % block_size:
        raise ZflashError(Code.INTERNAL, "sparse block size must divide the package's")
    total = -(-part.size // block_size)
    reserve = FILE_HEADER_SIZE + 2 * CHUNK_HEADER_SIZE  # header, leading and trailing skip
    pieces: list[PiecePlan] = []
    piece = PiecePlan(0, 0, 0, total)
    used = reserve

    def close() -> None:
        nonlocal piece, used
        pieces.append(piece)
        piece = PiecePlan(len(pieces), piece.end, piece.end, total)
        used = reserve

    for run in _runs(blocks, block_size, zero_chunk):
        first, left = run.first, run.count
        while left:
            if run.kind is ChunkType.RAW:
                room = (limit - used - CHUNK_HEADER_SIZE) // block_size
                if room <= 0:
                    if not piece.chunks:
                        raise ZflashError(Code.DEVICE_REFUSED, f"max-download-size {limit} "
                                          "is too small for one sparse block")
                    close()
                    continue
                take = min(room, left)
            else:
                if used + Chunk(run.kind, 0, 0).wire_size(block_size) > limit:
                    close()
                    continue
                take = left
            chunk = Chunk(run.kind, first, take)
            piece.chunks.append(chunk)
            used += chunk.wire_size(block_size)
            piece.end = first + take
            first += take
            left -= take
    if piece.chunks or not pieces:
        pieces.append(piece)
    return pieces


def image_bytes(blocks: PartitionBlocks, start: int, end: int
                ) -> Iterator[bytes | memoryview]:
    """Image bytes ``start..end`` of the partition, zeros past the image's end (a sparse
    image is whole sparse blocks), as views of the package where its blocks are raw."""
    size = blocks.part.block_size
    first = start // size
    stop = min(-(-end // size), len(blocks.table))
    position = first * size
    for view in blocks.raw_views(first, stop):
        view = memoryview(view)
        low, high = max(start - position, 0), min(len(view), end - position)
        if low < high:
            yield view[low:high]
        position += len(view)
    if position < end:  # the image's short last block, padded to a whole sparse block
        yield bytes(end - max(position, start))


class ImageStream:
    """The whole image as one raw download (what the stock client sends for an image
    that fits max-download-size): for an image without zero blocks, where a sparse image
    saves nothing and costs the device a parse and, often, a second piece (D184)."""

    def __init__(self, blocks: PartitionBlocks) -> None:
        self.size = blocks.part.size
        self._blocks = blocks

    def views(self) -> Iterator[bytes | memoryview]:
        return image_bytes(self._blocks, 0, self.size)


class PieceStream:
    """One planned piece as a read-only stream (``readinto``) for the download: headers
    from the plan, RAW data from the package's blocks as they are needed."""

    def __init__(self, blocks: PartitionBlocks, plan: PiecePlan, block_size: int) -> None:
        self.size = plan.size(block_size)
        self._parts = self._generate(blocks, plan, block_size)
        self._current = memoryview(b"")

    @staticmethod
    def _generate(blocks: PartitionBlocks, plan: PiecePlan,
                  block_size: int) -> Iterator[bytes | memoryview]:
        chunks = plan.all_chunks()
        yield file_header(block_size, plan.total, len(chunks))
        for chunk in chunks:
            if chunk.kind is ChunkType.RAW:
                yield chunk_header(chunk.kind, chunk.count, chunk.count * block_size)
                yield from image_bytes(blocks, chunk.first * block_size,
                                       (chunk.first + chunk.count) * block_size)
            elif chunk.kind is ChunkType.FILL:
                yield chunk_header(chunk.kind, chunk.count, 4) + FILL_ZERO
            else:
                yield chunk_header(chunk.kind, chunk.count, 0)

    def views(self) -> Iterator[bytes | memoryview]:
        """The piece as it is sent: headers and views of the package's blocks, no copy
        (the client sends each view as it is; ``readinto`` copies, for other readers)."""
        if len(self._current):
            yield self._current
            self._current = memoryview(b"")
        yield from self._parts

    def readinto(self, buffer: memoryview | bytearray) -> int:
        view = memoryview(buffer)
        filled = 0
        while filled < len(view):
            if not len(self._current):
                nxt = next(self._parts, None)
                if nxt is None:
                    break
                self._current = memoryview(nxt)
                continue
            n = min(len(view) - filled, len(self._current))
            view[filled:filled + n] = self._current[:n]
            self._current = self._current[n:]
            filled += n
        return filled

    def read(self, n: int = -1) -> bytes:
        out = bytearray(self.size if n < 0 else n)
        got = self.readinto(out)
        return bytes(out[:got])
