"""Splitting an image file that the sender maps: each piece is its own headers plus ranges
of the file, so no piece is copied, spooled to a temporary file or read twice.

Why: ``split_sparse`` takes any stream, so it copies every piece into a spooled temporary
file before the piece can be sent. For a regular file that cost two copies and a fresh
temporary file per piece, whose page cache the kernel first has to find (0.3-1 s per
256 MiB on a busy 2-core guest, D204). Here a piece is planned, not written: the chunk
headers the split makes are held in memory (a few KiB), and the RAW data is sent straight
from a read-only map of the image, as the stock fastboot client sends it (D208).

A raw image is scanned for blocks that repeat one 4-byte word (they become FILL chunks,
as in ``split_sparse``) without a Python step per block: the first and last word of every
block in a batch are compared as two big integers, and only the blocks whose words match
are compared whole.
"""

from __future__ import annotations

import bisect
import mmap
import os
from typing import BinaryIO, Iterator

from zflash.errors import Code, ZflashError
from zflash.package.pages import release_pages
from zflash.package.sparse.format import _U32_MAX, ChunkType, _malformed, is_sparse
from zflash.package.sparse.reader import SparseReader
from zflash.package.sparse.split import (
    SparsePiece,
    _check_split_size,
    _open_path,
    _pack,
    _raw_blocks,
    _sparse_runs,
)
from zflash.package.sparse.writer import _block_pattern, _bytes_reader, _Run

#: blocks whose first and last words are compared in one step of the raw-image scan
SCAN_BATCH = 4096
#: the largest view of the mapped file a piece hands out at once (its pages are released
#: from the host's resident set once the sender asks for the next one)
VIEW_LIMIT = 8 << 20


class PieceSegments:
    """One planned piece, file-like for the split's chunk writer: what the writer writes
    (headers, fill words, a padded last block) is kept; RAW data is kept as a reference
    to the mapped image (``write_ref``). ``views`` hands the piece out without a copy;
    ``read`` is there for a caller that wants bytes."""

    def __init__(self, source: mmap.mmap) -> None:
        self._source = source
        self._segments: list[bytearray | tuple[int, int]] = []
        self._starts: list[int] = []
        self._size = 0
        self._position = 0
        self.closed = False

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = base + position
        return self._position

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append at the end, or overwrite bytes written before (a header's placeholder)."""
        if self._position == self._size:
            last = self._segments[-1] if self._segments else None
            if isinstance(last, bytearray):
                last += data
                self._size += len(data)
            else:
                self._append(bytearray(data), len(data))
        else:
            item = bisect.bisect_right(self._starts, self._position) - 1
            segment = self._segments[item]
            offset = self._position - self._starts[item]
            if not isinstance(segment, bytearray) or offset + len(data) > len(segment):
                raise ZflashError(Code.INTERNAL, "sparse split: a header was patched over "
                                                 "data it did not write")
            segment[offset:offset + len(data)] = data
        self._position += len(data)
        return len(data)

    def write_ref(self, offset: int, length: int) -> None:
        """Append ``length`` bytes of the mapped image from ``offset`` (checked to lie in it)."""
        if self._position != self._size:
            raise ZflashError(Code.INTERNAL, "sparse split: data referenced inside a piece")
        if offset < 0 or offset + length > len(self._source):
            raise _malformed(f"RAW data at {offset}+{length} lies past the end of the image")
        self._append((offset, length), length)
        self._position += length

    def _append(self, segment: bytearray | tuple[int, int], length: int) -> None:
        self._starts.append(self._size)
        self._segments.append(segment)
        self._size += length

    def views(self) -> Iterator[bytes | memoryview]:
        """The piece in order: its own bytes, and views of the mapped image of at most
        VIEW_LIMIT bytes, each dropped from the resident set once the next is asked for."""
        for segment in self._segments:
            if isinstance(segment, bytearray):
                yield bytes(segment)
                continue
            offset, length = segment
            for start in range(offset, offset + length, VIEW_LIMIT):
                end = min(offset + length, start + VIEW_LIMIT)
                with memoryview(self._source)[start:end] as view:
                    yield view
                release_pages(self._source, start, end)

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes from the position (all that is left for a negative ``n``)."""
        end = self._size if n < 0 else min(self._size, self._position + n)
        parts = []
        while self._position < end:
            item = bisect.bisect_right(self._starts, self._position) - 1
            offset = self._position - self._starts[item]
            segment = self._segments[item]
            if isinstance(segment, bytearray):
                part = bytes(segment[offset:offset + end - self._position])
            else:
                start = segment[0] + offset
                part = self._source[start:start + min(segment[1] - offset,
                                                      end - self._position)]
            parts.append(part)
            self._position += len(part)
        return b"".join(parts)

    def close(self) -> None:
        self._segments, self._starts, self.closed = [], [], True


def fill_blocks(source: mmap.mmap | bytes, blocks: int, block_size: int
                ) -> Iterator[tuple[int, bytes]]:
    """(index, word) of every one of the first ``blocks`` blocks that repeats one 4-byte word.

    A batch's first words and last words are taken with strided slices (one C loop
    each) and compared as integers: a block whose two words differ is data, and only the
    others (all of them in a zero region, about none in random data) are compared whole.
    A map's scanned pages leave the resident set batch by batch (the sender maps them
    again from the page cache)."""
    words = block_size // 4
    for first in range(0, blocks, SCAN_BATCH):
        count = min(SCAN_BATCH, blocks - first)
        base, end = first * block_size, (first + count) * block_size
        differ = 0
        for byte in range(4):
            heads = source[base + byte:end:block_size]
            tails = source[base + block_size - 4 + byte:end:block_size]
            differ |= int.from_bytes(heads, "big") ^ int.from_bytes(tails, "big")
        marks = differ.to_bytes(count, "big")
        index = marks.find(0)
        while index >= 0:
            start = base + index * block_size
            word = source[start:start + 4]
            if source[start:start + block_size] == word * words:
                yield first + index, word
            index = marks.find(0, index + 1)
        if isinstance(source, mmap.mmap):
            release_pages(source, base, end)


def _mapped_raw_runs(source: mmap.mmap, size: int, block_size: int) -> Iterator[_Run]:
    """A raw image's runs: RAW runs by position in the file, FILL runs (same rules as the
    streaming writer: one word, at most 2^32-1 blocks each); a short last block is padded
    with zeros (as img2simg does), so it is carried as bytes, not by reference."""
    whole = size // block_size
    fill: bytes | None = None
    fill_count = 0
    done = 0  # blocks already in a run

    def flush_fill() -> Iterator[_Run]:
        if fill_count:
            yield _Run(ChunkType.FILL, fill_count, fill=fill)

    for index, word in fill_blocks(source, whole, block_size):
        if index > done:
            yield from flush_fill()
            fill_count = 0
            yield _Run(ChunkType.RAW, index - done, at=done * block_size)
        elif fill_count and (word != fill or fill_count == _U32_MAX):
            yield from flush_fill()
            fill_count = 0
        fill, done = word, index + 1
        fill_count += 1
    if done < whole:
        yield from flush_fill()
        fill_count = 0
        yield _Run(ChunkType.RAW, whole - done, at=done * block_size)
    if size % block_size:
        last = source[whole * block_size:size].ljust(block_size, b"\0")
        word = _block_pattern(last)
        if word is not None and fill_count and word == fill and fill_count < _U32_MAX:
            fill_count += 1
        else:
            yield from flush_fill()
            fill_count = 0
            if word is not None:
                fill, fill_count = word, 1
            else:
                yield _Run(ChunkType.RAW, 1, read=_bytes_reader(last))
    yield from flush_fill()


def split_mapped(source: str | os.PathLike[str], max_size: int, *, block_size: int = 4096
                 ) -> Iterator[SparsePiece]:
    """``split_sparse`` for an image in a regular file: the same pieces, byte for byte,
    planned instead of written, each piece's ``file`` a :class:`PieceSegments` whose
    ``views`` come straight from a map of the image.

    The file is opened and mapped here, before the first piece is asked for: an OSError
    from the map (a file system that cannot map files) reaches the caller at once, which
    can then split with ``split_sparse`` instead. A missing or unreadable file is 9003, an
    empty one 9005.

    The sparse image's CRCs are not checked here: the caller validates the whole image
    first (``validate_sparse_file``, as the fastboot client does before any piece is
    sent), and this walk then reads only chunk headers."""
    fileobj = _open_path(source)
    try:
        size = os.fstat(fileobj.fileno()).st_size
        if not size:
            raise _malformed("the image is empty")
        mapped = mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_READ)
    except BaseException:
        fileobj.close()
        raise
    return _mapped_pieces(fileobj, mapped, size, max_size, block_size)


def _mapped_pieces(fileobj: BinaryIO, mapped: mmap.mmap, size: int, max_size: int,
                   block_size: int) -> Iterator[SparsePiece]:
    """The pieces of an opened, mapped image; both are closed when the split ends."""
    try:
        if is_sparse(mapped[:4]):
            reader = SparseReader(fileobj, check_crc=False)
            _check_split_size(max_size, reader.block_size)
            yield from _pack(_sparse_runs(reader, refer=True), reader.block_size,
                             reader.total_blocks, max_size, lambda: PieceSegments(mapped))
            return
        total = _raw_blocks(max_size, block_size, size)
        yield from _pack(_mapped_raw_runs(mapped, size, block_size), block_size, total,
                         max_size, lambda: PieceSegments(mapped))
    finally:
        fileobj.close()
        try:
            mapped.close()
        except BufferError:
            pass  # a traceback still holds a view of it; unmapped by the GC
