"""Reading sparse images: a streaming parser that checks everything, and the expanded output.

Choices beyond the format: the reader accepts any minor version, ignores bytes after the last
chunk, and allows zero-block RAW/FILL/DONT_CARE chunks (libsparse does); a CRC32 chunk must
cover 0 blocks. DONT_CARE expands to zeros, as ``simg2img`` does.
"""

from __future__ import annotations

import zlib
from typing import BinaryIO, Iterator, NamedTuple

from zflash.errors import Code, ZflashError
from zflash.package.sparse.crc import _crc_fill
from zflash.package.sparse.format import (
    _CHUNK_HEADER,
    _FILE_HEADER,
    _U32,
    _ZERO4,
    FILE_HEADER_SIZE,
    PIECE,
    ChunkType,
    _check_file_header,
    _chunk_payload,
    _malformed,
)
from zflash.package.sparse.streams import _bytes_left, _read_exact


def _pattern_pieces(pattern: bytes, length: int, piece: int) -> Iterator[bytes]:
    """``pattern`` repeated over ``length`` bytes, as pieces of at most ``piece`` bytes."""
    full = b""
    while length:
        size = min(piece, length)
        if size == piece:
            full = full or pattern * (piece // 4)
            yield full
        else:
            yield pattern * (size // 4)
        length -= size


def _piece_size(piece: int) -> int:
    """Pieces are whole 4-byte words so that fill patterns keep their phase."""
    if not isinstance(piece, int) or piece < 4:
        raise ZflashError(Code.USAGE, f"piece size must be an integer >= 4, not {piece!r}")
    return piece - piece % 4


class SparseChunk:
    """One chunk as read: where its output goes and, for RAW, a bounded reader of its data.

    RAW data must be read before the iterator moves on; whatever is left unread is then read
    and discarded (the input may be a pipe, and the CRC covers it).
    """

    def __init__(self, reader: "SparseReader", index: int, kind: ChunkType, start_block: int,
                 block_count: int, fill: bytes | None = None, crc32: int | None = None) -> None:
        self._reader = reader
        self.index = index
        self.type = kind
        self.start_block = start_block
        self.block_count = block_count
        self.fill = fill  # the 4-byte pattern of a FILL chunk
        self.crc32 = crc32  # the value stored in a CRC32 chunk
        self.remaining = block_count * reader.block_size if kind is ChunkType.RAW else 0
        #: where the RAW data starts in a seekable file (None for a stream): what a sender
        #: that maps the file sends from, without reading the data here
        self.data_offset = reader._position() if kind is ChunkType.RAW else None

    @property
    def offset(self) -> int:
        """Output byte offset of the chunk."""
        return self.start_block * self._reader.block_size

    @property
    def size(self) -> int:
        """Output bytes the chunk stands for."""
        return self.block_count * self._reader.block_size

    def read(self, n: int = PIECE) -> bytes:
        """Up to ``n`` more bytes of RAW data (b"" when done); never more than asked."""
        n = min(n if n >= 0 else PIECE, self.remaining)
        if n == 0:
            return b""
        data = _read_exact(self._reader._file, n, f"the data of chunk {self.index}")
        self.remaining -= n
        if self._reader.check_crc:
            self._reader._crc = zlib.crc32(data, self._reader._crc)
        return data

    def iter_data(self, piece: int = PIECE) -> Iterator[bytes]:
        """The rest of the RAW data in pieces of at most ``piece`` bytes."""
        while data := self.read(piece):
            yield data

    def _drain(self) -> None:
        """Move past unread RAW data: by a seek in a file whose CRCs are not being checked
        (a structure pass over a large image then reads only its headers), else by reading
        (a pipe, or the CRC covers the data)."""
        reader = self._reader
        if self.remaining and not reader.check_crc and reader._end is not None:
            position = reader._file.tell()
            if position + self.remaining > reader._end:
                raise _malformed(f"file truncated in the data of chunk {self.index}: needed "
                                 f"{self.remaining} bytes, found {reader._end - position}")
            reader._file.seek(self.remaining, 1)
            self.remaining = 0
            return
        while self.read(PIECE):
            pass

    def __repr__(self) -> str:
        return (f"SparseChunk({self.type.name}, start_block={self.start_block}, "
                f"block_count={self.block_count})")


class SparseReader:
    """Streaming parser of a sparse image from a binary file object, seekable or not.

    The header is parsed and checked on construction; :meth:`iter_chunks` then walks the
    chunks once, checking each against the header and verifying CRC32s where present.
    Any malformation raises ``ZflashError(Code.MALFORMED_IMAGE)``. ``check_crc=False`` skips
    the CRC32 checks (for a second pass over an image :func:`validate_sparse` already checked:
    the CRC of a huge FILL chunk costs about 0.4 ms of arithmetic).
    """

    def __init__(self, fileobj: BinaryIO, check_crc: bool = True) -> None:
        self._file = fileobj
        self.check_crc = check_crc
        self.crc_chunks = 0  # CRC32 chunks seen so far
        raw = _read_exact(fileobj, FILE_HEADER_SIZE, "the file header")
        (magic, major, self.minor_version, file_hdr_sz, chunk_hdr_sz, self.block_size,
         self.total_blocks, self.total_chunks, self.image_checksum) = _FILE_HEADER.unpack(raw)
        _check_file_header(magic, major, file_hdr_sz, chunk_hdr_sz, self.block_size,
                           self.total_blocks, self.total_chunks)
        self.chunk_header_size = chunk_hdr_sz
        _read_exact(fileobj, file_hdr_sz - FILE_HEADER_SIZE, "the extra file header bytes")
        left = _bytes_left(fileobj)
        #: the file's size when it is seekable (None for a stream)
        self._end = None if left is None else fileobj.tell() + left
        if left is not None and left < self.total_chunks * chunk_hdr_sz:
            raise _malformed(f"file truncated: {self.total_chunks} chunk headers need "
                             f"{self.total_chunks * chunk_hdr_sz} bytes, {left} left")
        self._crc = 0
        self._started = False

    def _position(self) -> int | None:
        return None if self._end is None else self._file.tell()

    @property
    def total_size(self) -> int:
        """Expanded output size in bytes."""
        return self.block_size * self.total_blocks

    def iter_chunks(self) -> Iterator[SparseChunk]:
        """Yield every chunk in order (once: the input is a stream)."""
        if self._started:
            raise RuntimeError("SparseReader.iter_chunks() can run only once")
        self._started = True
        return self._walk()

    def _walk(self) -> Iterator[SparseChunk]:
        block = 0
        for index in range(self.total_chunks):
            chunk = self._next_chunk(index, block)
            block += chunk.block_count
            yield chunk
            chunk._drain()
        if block != self.total_blocks:
            raise _malformed(f"chunks cover {block} blocks, header declares {self.total_blocks}")
        if self.check_crc and self.image_checksum and self._crc != self.image_checksum:
            raise _malformed(f"image checksum mismatch: header 0x{self.image_checksum:08X}, "
                             f"data 0x{self._crc:08X}")

    def _next_chunk(self, index: int, block: int) -> SparseChunk:
        """Read and check one chunk header and its small payload (FILL pattern, CRC)."""
        raw = _read_exact(self._file, self.chunk_header_size, f"the header of chunk {index}")
        ctype, _reserved, blocks, total_sz = _CHUNK_HEADER.unpack_from(raw)
        try:
            kind = ChunkType(ctype)
        except ValueError:
            raise _malformed(f"chunk {index} has unknown type 0x{ctype:04X}") from None
        expected = self.chunk_header_size + _chunk_payload(kind, blocks, self.block_size)
        if total_sz != expected:
            raise _malformed(f"chunk {index} ({kind.name}, {blocks} blocks) has total_sz "
                             f"{total_sz}, expected {expected}")
        if kind is ChunkType.CRC32 and blocks:
            raise _malformed(f"CRC32 chunk {index} claims {blocks} blocks; it covers none")
        if block + blocks > self.total_blocks:
            raise _malformed(f"chunk {index} ends at block {block + blocks}, past the "
                             f"{self.total_blocks} blocks the header declares")
        return self._make_chunk(index, kind, block, blocks)

    def _make_chunk(self, index: int, kind: ChunkType, block: int, blocks: int) -> SparseChunk:
        nbytes = blocks * self.block_size
        if kind is ChunkType.FILL:
            fill = _read_exact(self._file, 4, f"the fill pattern of chunk {index}")
            if self.check_crc:
                self._crc = _crc_fill(self._crc, fill, nbytes)
            return SparseChunk(self, index, kind, block, blocks, fill=fill)
        if kind is ChunkType.DONT_CARE:
            if self.check_crc:
                self._crc = _crc_fill(self._crc, _ZERO4, nbytes)
        elif kind is ChunkType.CRC32:
            (value,) = _U32.unpack(_read_exact(self._file, 4, f"the CRC of chunk {index}"))
            self.crc_chunks += 1
            if self.check_crc and value != self._crc:
                raise _malformed(f"CRC32 chunk {index} says 0x{value:08X}, data so far "
                                 f"gives 0x{self._crc:08X}")
            return SparseChunk(self, index, kind, block, 0, crc32=value)
        return SparseChunk(self, index, kind, block, blocks)


class Extent(NamedTuple):
    """A stretch of expanded output: ``data`` is None only for DONT_CARE."""

    offset: int
    length: int
    data: bytes | None
    fill: bytes | None  # the 4-byte pattern when the stretch comes from a FILL chunk


def _chunk_extents(chunk: SparseChunk, piece: int) -> Iterator[Extent]:
    offset = chunk.offset
    if chunk.type is ChunkType.RAW:
        for data in chunk.iter_data(piece):
            yield Extent(offset, len(data), data, None)
            offset += len(data)
    elif chunk.type is ChunkType.FILL:
        assert chunk.fill is not None
        for data in _pattern_pieces(chunk.fill, chunk.size, piece):
            yield Extent(offset, len(data), data, chunk.fill)
            offset += len(data)
    elif chunk.type is ChunkType.DONT_CARE and chunk.size:
        yield Extent(offset, chunk.size, None, None)


def iter_ranges(fileobj: BinaryIO | SparseReader, piece: int = PIECE) -> Iterator[Extent]:
    """The expanded output of a sparse image as extents; no data piece exceeds ``piece`` bytes.

    RAW and FILL give their bytes; DONT_CARE gives ``data=None`` (one extent per chunk, any
    length), so a flasher can skip it and :func:`expand_to` can write zeros.
    """
    piece = _piece_size(piece)
    reader = fileobj if isinstance(fileobj, SparseReader) else SparseReader(fileobj)
    for chunk in reader.iter_chunks():
        yield from _chunk_extents(chunk, piece)


def iter_expanded(fileobj: BinaryIO | SparseReader, piece: int = PIECE) -> Iterator[bytes]:
    """The expanded output as byte pieces of at most ``piece`` bytes, DONT_CARE as zeros."""
    piece = _piece_size(piece)
    for extent in iter_ranges(fileobj, piece):
        if extent.data is not None:
            yield extent.data
        else:
            yield from _pattern_pieces(_ZERO4, extent.length, piece)


def expand_to(fileobj_in: BinaryIO | SparseReader, fileobj_out: BinaryIO) -> int:
    """Write the expanded image (like ``simg2img``, DONT_CARE as zeros); return its size."""
    written = 0
    for data in iter_expanded(fileobj_in):
        fileobj_out.write(data)
        written += len(data)
    return written
