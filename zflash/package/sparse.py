"""Android sparse images: read, expand, write and split them, always streaming.

Why this exists: fastboot devices take partition images in libsparse's "sparse" format, and
a device's download buffer (``max-download-size``) is usually smaller than the partition, so
the host must cut an image into several complete sparse images. Images can be many GiB, so
nothing here holds a whole image (or a whole chunk) in memory.

Format facts used (AOSP libsparse ``sparse_format.h``; every integer is little-endian):

* File header, 28 bytes: magic u32 ``0xED26FF3A``, major u16 (1), minor u16 (0),
  file_hdr_sz u16 (28), chunk_hdr_sz u16 (12), blk_sz u32 (a multiple of 4, usually 4096),
  total_blks u32 (output size in blocks), total_chunks u32, image_checksum u32 (CRC32 of the
  whole output; 0 means "not given"). When file_hdr_sz or chunk_hdr_sz are larger than 28/12
  (a newer minor version), readers skip the extra bytes; smaller values are invalid.
* Chunk header, 12 bytes: chunk_type u16, reserved u16, chunk_sz u32 (output blocks),
  total_sz u32 (bytes of the chunk including its header). Chunks describe the output in order:

  - RAW ``0xCAC1``: chunk_sz * blk_sz bytes of data follow.
  - FILL ``0xCAC2``: a 4-byte pattern follows; the output is that pattern repeated.
  - DONT_CARE ``0xCAC3``: nothing follows; the device leaves those blocks as they are.
    ``simg2img`` writes zeros there when expanding, and so does :func:`expand_to`.
  - CRC32 ``0xCAC4``: a u32 follows, the CRC32 of all output so far; it covers no blocks.

* The CRC32 is zlib's (IEEE, reflected); DONT_CARE blocks count as zeros (libsparse).

Choices beyond the format (also in the docstrings below):

* The reader accepts any minor version, ignores bytes after the last chunk, and allows
  zero-block RAW/FILL/DONT_CARE chunks (libsparse does); a CRC32 chunk must cover 0 blocks.
* The writer pads a raw image whose size is not a multiple of the block size with zeros up
  to the next block, exactly as ``img2simg`` does; it always writes image_checksum = 0.
* Split pieces carry no CRC: each piece's CRC would describe a different output.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import BinaryIO, Callable, Iterator, NamedTuple, Union, cast

from zflash.errors import Code, ZflashError

MAGIC = 0xED26FF3A
MAJOR_VERSION = 1
FILE_HEADER_SIZE = 28
CHUNK_HEADER_SIZE = 12
PIECE = 1 << 20  # default bound for one read or one yielded piece of data
MAX_WRITE_BLOCK_SIZE = 64 << 20  # writer/split: one block is held in memory at a time
SPOOL_LIMIT = 8 << 20  # a split piece stays in memory up to this size, then goes to disk

_FILE_HEADER = struct.Struct("<IHHHHIIII")
_CHUNK_HEADER = struct.Struct("<HHII")
_U32 = struct.Struct("<I")
_U32_MAX = 0xFFFFFFFF
_ZERO4 = bytes(4)

Source = Union[BinaryIO, str, "os.PathLike[str]"]


class ChunkType(IntEnum):
    """Chunk types of sparse_format.h."""

    RAW = 0xCAC1
    FILL = 0xCAC2
    DONT_CARE = 0xCAC3
    CRC32 = 0xCAC4


def _malformed(detail: str) -> ZflashError:
    return ZflashError(Code.MALFORMED_IMAGE, detail)


def is_sparse(header: bytes) -> bool:
    """True if ``header`` (at least the first 4 bytes of a file) starts with the sparse magic."""
    return len(header) >= 4 and bytes(header[:4]) == _U32.pack(MAGIC)


# --- stream helpers ---------------------------------------------------------------------------

def _read_upto(fileobj: BinaryIO, n: int) -> bytes:
    """Read n bytes or up to EOF; pipes and sockets return short reads, so loop."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = fileobj.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _read_exact(fileobj: BinaryIO, n: int, what: str) -> bytes:
    """Read exactly n bytes (n is always bounded by the caller); EOF means truncation."""
    data = _read_upto(fileobj, n)
    if len(data) < n:
        raise _malformed(f"file truncated in {what}: needed {n} bytes, found {len(data)}")
    return data


def _seekable(fileobj: object) -> bool:
    try:
        return bool(fileobj.seekable())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _bytes_left(fileobj: BinaryIO) -> int | None:
    """Bytes from the position to EOF, when the stream can tell (for early sanity checks)."""
    if not _seekable(fileobj):
        return None
    try:
        pos = fileobj.tell()
        end = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(pos)
    except (OSError, ValueError):
        return None
    return end - pos


class _Prefixed:
    """A non-seekable stream with some already-read bytes put back in front (a peek)."""

    def __init__(self, prefix: bytes, inner: BinaryIO) -> None:
        self._prefix = prefix
        self._inner = inner

    def read(self, n: int = -1) -> bytes:
        if not self._prefix:
            return self._inner.read(n)
        if n < 0:
            n = len(self._prefix)
        data, self._prefix = self._prefix[:n], self._prefix[n:]
        return data

    def seekable(self) -> bool:
        return False


def _peek(fileobj: BinaryIO, n: int) -> tuple[bytes, BinaryIO]:
    """The first n bytes, and a stream that still starts at them."""
    if _seekable(fileobj):
        pos = fileobj.tell()
        head = _read_upto(fileobj, n)
        fileobj.seek(pos)
        return head, fileobj
    head = _read_upto(fileobj, n)
    return head, cast(BinaryIO, _Prefixed(head, fileobj))


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


# --- CRC32 arithmetic -------------------------------------------------------------------------
# A FILL or DONT_CARE chunk may stand for terabytes; hashing its expansion byte by byte would
# hang on a hostile header. CRC32 is linear over GF(2), so the CRC of a repeated pattern and the
# effect of appending n bytes are computed with polynomial arithmetic in O(log n) steps instead.

_CRC_POLY = 0xEDB88320  # the IEEE polynomial in zlib's reflected bit order
_X0 = 1 << 31  # the polynomial 1 (reflected: bit 31 holds the coefficient of x^0)
_ZLIB_FILL_LIMIT = 64 << 10  # fills up to this size are simply hashed with zlib


def _gf2_mul(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial, both in the reflected representation."""
    product = 0
    while a:
        if a & _X0:
            product ^= b
        a = (a << 1) & _U32_MAX
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return product


def _x8_powers(count: int) -> list[int]:
    """x^(8 * 2^j) mod P for j < count: the operator 'append 2^j zero bytes'."""
    powers = [1 << 23]  # x^8
    while len(powers) < count:
        powers.append(_gf2_mul(powers[-1], powers[-1]))
    return powers


_X8_POWERS = _x8_powers(70)


def _shift(nbytes: int) -> int:
    """x^(8 * nbytes) mod P."""
    result, j = _X0, 0
    while nbytes:
        if nbytes & 1:
            result = _gf2_mul(_X8_POWERS[j], result)
        nbytes >>= 1
        j += 1
    return result


def _crc_append(crc: int, part_crc: int, part_len: int) -> int:
    """CRC32 of A+B from crc(A), crc(B) and len(B) (zlib's crc32_combine, by the math)."""
    return _gf2_mul(_shift(part_len), crc) ^ part_crc


def _repeat_crc(unit: bytes, count: int) -> int:
    """CRC32 of ``unit * count`` by binary doubling (most significant bit first)."""
    unit_crc, unit_shift = zlib.crc32(unit), _shift(len(unit))
    crc, shift = 0, _X0
    for bit in bin(count)[2:]:
        crc = _gf2_mul(shift, crc) ^ crc
        shift = _gf2_mul(shift, shift)
        if bit == "1":
            crc = _gf2_mul(unit_shift, crc) ^ unit_crc
            shift = _gf2_mul(unit_shift, shift)
    return crc


def _crc_fill(crc: int, pattern: bytes, nbytes: int) -> int:
    """Extend a running CRC32 by ``pattern`` repeated over ``nbytes`` (a multiple of 4)."""
    if nbytes <= _ZLIB_FILL_LIMIT:
        return zlib.crc32(pattern * (nbytes // 4), crc)
    unit = pattern * (_ZLIB_FILL_LIMIT // 4)
    count, rest = divmod(nbytes, len(unit))
    body = _crc_append(_repeat_crc(unit, count), zlib.crc32(unit[:rest]), rest)
    return _crc_append(crc, body, nbytes)


# --- reading ----------------------------------------------------------------------------------

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
        self._reader._crc = zlib.crc32(data, self._reader._crc)
        return data

    def iter_data(self, piece: int = PIECE) -> Iterator[bytes]:
        """The rest of the RAW data in pieces of at most ``piece`` bytes."""
        while data := self.read(piece):
            yield data

    def _drain(self) -> None:
        while self.read(PIECE):
            pass

    def __repr__(self) -> str:
        return (f"SparseChunk({self.type.name}, start_block={self.start_block}, "
                f"block_count={self.block_count})")


def _check_file_header(magic: int, major: int, file_hdr_sz: int, chunk_hdr_sz: int,
                       blk_sz: int, total_blks: int, total_chunks: int) -> None:
    """Reject headers that libsparse would reject, or that cannot describe any output."""
    if magic != MAGIC:
        raise _malformed(f"bad magic 0x{magic:08X}: not an Android sparse image")
    if major != MAJOR_VERSION:
        raise _malformed(f"unsupported sparse major version {major} (only 1 exists)")
    if file_hdr_sz < FILE_HEADER_SIZE:
        raise _malformed(f"file header size {file_hdr_sz} is below {FILE_HEADER_SIZE}")
    if chunk_hdr_sz < CHUNK_HEADER_SIZE:
        raise _malformed(f"chunk header size {chunk_hdr_sz} is below {CHUNK_HEADER_SIZE}")
    if blk_sz == 0 or blk_sz % 4:
        raise _malformed(f"block size {blk_sz} is not a nonzero multiple of 4")
    if total_blks and not total_chunks:
        raise _malformed(f"header declares {total_blks} blocks but no chunks")


def _chunk_payload(kind: ChunkType, blocks: int, blk_sz: int) -> int:
    """Bytes that follow the chunk header for this type."""
    if kind is ChunkType.RAW:
        return blocks * blk_sz
    return 0 if kind is ChunkType.DONT_CARE else 4


class SparseReader:
    """Streaming parser of a sparse image from a binary file object, seekable or not.

    The header is parsed and checked on construction; :meth:`iter_chunks` then walks the
    chunks once, checking each against the header and verifying CRC32s where present.
    Any malformation raises ``ZflashError(Code.MALFORMED_IMAGE)``.
    """

    def __init__(self, fileobj: BinaryIO) -> None:
        self._file = fileobj
        raw = _read_exact(fileobj, FILE_HEADER_SIZE, "the file header")
        (magic, major, self.minor_version, file_hdr_sz, chunk_hdr_sz, self.block_size,
         self.total_blocks, self.total_chunks, self.image_checksum) = _FILE_HEADER.unpack(raw)
        _check_file_header(magic, major, file_hdr_sz, chunk_hdr_sz, self.block_size,
                           self.total_blocks, self.total_chunks)
        self.chunk_header_size = chunk_hdr_sz
        _read_exact(fileobj, file_hdr_sz - FILE_HEADER_SIZE, "the extra file header bytes")
        left = _bytes_left(fileobj)
        if left is not None and left < self.total_chunks * chunk_hdr_sz:
            raise _malformed(f"file truncated: {self.total_chunks} chunk headers need "
                             f"{self.total_chunks * chunk_hdr_sz} bytes, {left} left")
        self._crc = 0
        self._started = False

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
        if self.image_checksum and self._crc != self.image_checksum:
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
            self._crc = _crc_fill(self._crc, fill, nbytes)
            return SparseChunk(self, index, kind, block, blocks, fill=fill)
        if kind is ChunkType.DONT_CARE:
            self._crc = _crc_fill(self._crc, _ZERO4, nbytes)
        elif kind is ChunkType.CRC32:
            (value,) = _U32.unpack(_read_exact(self._file, 4, f"the CRC of chunk {index}"))
            if value != self._crc:
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


# --- writing ----------------------------------------------------------------------------------

@dataclass
class SparseStats:
    """What :func:`write_sparse` produced."""

    block_size: int
    total_blocks: int = 0
    chunks: int = 0
    raw_blocks: int = 0
    fill_blocks: int = 0
    dont_care_blocks: int = 0
    input_size: int = 0
    output_size: int = 0


@dataclass
class _Run:
    """A run of output blocks headed for one chunk; RAW runs carry a reader of their data."""

    kind: ChunkType
    blocks: int
    fill: bytes | None = None
    read: Callable[[int], bytes] | None = None


class _ChunkWriter:
    """Writes chunks to a seekable file, merging neighbours of the same kind.

    RAW data is streamed straight to the file, so a RAW chunk's header is written as a
    placeholder and patched when the chunk closes; FILL and DONT_CARE headers are written on
    close. ``size`` always counts the open chunk's header, so callers can budget exactly.
    """

    def __init__(self, out: BinaryIO, block_size: int) -> None:
        self._out = out
        self._bs = block_size
        self._base = out.tell()
        out.write(bytes(FILE_HEADER_SIZE))
        self.size = FILE_HEADER_SIZE
        self.chunks = 0
        self.blocks = 0
        self.per_kind = {ChunkType.RAW: 0, ChunkType.FILL: 0, ChunkType.DONT_CARE: 0}
        self.open_kind: ChunkType | None = None
        self._open_fill: bytes | None = None
        self._open_blocks = 0
        self._open_at = 0
        self.raw_cap = (_U32_MAX - CHUNK_HEADER_SIZE) // block_size  # total_sz is a u32

    def _cap(self, kind: ChunkType) -> int:
        return self.raw_cap if kind is ChunkType.RAW else _U32_MAX

    def room_in_open(self, kind: ChunkType, fill: bytes | None = None) -> int:
        """How many blocks of this kind still merge into the open chunk (0: a new chunk)."""
        if self.open_kind is not kind or self._open_fill != fill:
            return 0
        return self._cap(kind) - self._open_blocks

    def cost(self, kind: ChunkType, blocks: int, fill: bytes | None = None) -> int:
        """Bytes that adding these blocks would add to the file."""
        data = blocks * self._bs if kind is ChunkType.RAW else 0
        if blocks <= self.room_in_open(kind, fill):
            return data
        return CHUNK_HEADER_SIZE + data + (4 if kind is ChunkType.FILL else 0)

    def add(self, run: _Run) -> None:
        """Append a run (at most one chunk's worth: callers keep runs under the caps)."""
        if run.blocks > self.room_in_open(run.kind, run.fill):
            self._close()
            self._open(run.kind, run.fill)
        self._open_blocks += run.blocks
        self.blocks += run.blocks
        self.per_kind[run.kind] += run.blocks
        if run.kind is ChunkType.RAW:
            assert run.read is not None
            self._copy(run.read, run.blocks * self._bs)

    def _open(self, kind: ChunkType, fill: bytes | None) -> None:
        self.open_kind, self._open_fill, self._open_blocks = kind, fill, 0
        self._open_at = self._base + self.size
        self.chunks += 1
        if kind is ChunkType.RAW:
            self._out.write(bytes(CHUNK_HEADER_SIZE))
        self.size += CHUNK_HEADER_SIZE + (4 if kind is ChunkType.FILL else 0)

    def _copy(self, read: Callable[[int], bytes], nbytes: int) -> None:
        while nbytes:
            data = read(min(PIECE, nbytes))
            if not data:
                raise _malformed("RAW data ended early")
            self._out.write(data)
            self.size += len(data)
            nbytes -= len(data)

    def _close(self) -> None:
        kind = self.open_kind
        if kind is None:
            return
        total = CHUNK_HEADER_SIZE + _chunk_payload(kind, self._open_blocks, self._bs)
        header = _CHUNK_HEADER.pack(kind, 0, self._open_blocks, total)
        if kind is ChunkType.RAW:
            self._out.seek(self._open_at)
            self._out.write(header)
            self._out.seek(self._base + self.size)
        else:
            self._out.write(header + (self._open_fill or b""))
        self.open_kind = None

    def finish(self, total_blocks: int) -> int:
        """Close the last chunk and write the file header; return the file's size."""
        self._close()
        if total_blocks > _U32_MAX or self.chunks > _U32_MAX:
            raise _malformed(f"image too large for the sparse format: {total_blocks} blocks "
                             f"of {self._bs} bytes in {self.chunks} chunks")
        header = _FILE_HEADER.pack(MAGIC, MAJOR_VERSION, 0, FILE_HEADER_SIZE, CHUNK_HEADER_SIZE,
                                   self._bs, total_blocks, self.chunks, 0)
        self._out.seek(self._base)
        self._out.write(header)
        self._out.seek(self._base + self.size)
        return self.size


def _spool() -> BinaryIO:
    """A temporary file kept in memory up to SPOOL_LIMIT bytes, then moved to disk."""
    return cast(BinaryIO, tempfile.SpooledTemporaryFile(SPOOL_LIMIT))


def _check_size(size: int | None) -> None:
    if size is not None and (not isinstance(size, int) or size < 0):
        raise ZflashError(Code.USAGE, f"image size must be a non-negative integer, not {size!r}")


def _check_block_size(block_size: int) -> None:
    if not isinstance(block_size, int) or block_size < 4 or block_size % 4 \
            or block_size > MAX_WRITE_BLOCK_SIZE:
        raise ZflashError(Code.USAGE, f"block size must be a multiple of 4 between 4 and "
                                      f"{MAX_WRITE_BLOCK_SIZE}, not {block_size!r}")


class _RawBlocks:
    """A raw image read block by block in bounded batches; the last block is zero-padded."""

    def __init__(self, fileobj: BinaryIO, block_size: int, size: int | None) -> None:
        self._file = fileobj
        self._bs = block_size
        self._size = size
        self.consumed = 0

    def __iter__(self) -> Iterator[bytes]:
        batch = max(1, PIECE // self._bs) * self._bs
        while True:
            want = batch if self._size is None else min(batch, self._size - self.consumed)
            data = _read_upto(self._file, want)
            self.consumed += len(data)
            if len(data) < want and self._size is not None:
                raise _malformed(f"raw image ended after {self.consumed} bytes; "
                                 f"{self._size} were expected")
            yield from self._split(data)
            if len(data) < batch:
                return

    def _split(self, data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), self._bs):
            block = data[start:start + self._bs]
            yield block if len(block) == self._bs else block + bytes(self._bs - len(block))


def _block_pattern(block: bytes) -> bytes | None:
    """The 4-byte pattern a block repeats, or None for data (cheap rejects first)."""
    head = block[:4]
    if block[-4:] != head:
        return None
    return head if block == head * (len(block) // 4) else None


def _raw_runs(blocks: Iterator[bytes], block_size: int,
              zero_as_dont_care: bool) -> Iterator[_Run]:
    """Group blocks into runs: FILL (DONT_CARE for zeros, when asked) and bounded RAW runs."""
    raw: list[bytes] = []
    fill: bytes | None = None
    fill_blocks = 0
    raw_limit = max(1, PIECE // block_size)

    def flush_raw() -> Iterator[_Run]:
        if raw:
            data = b"".join(raw)
            raw.clear()
            yield _Run(ChunkType.RAW, len(data) // block_size, read=_bytes_reader(data))

    def flush_fill() -> Iterator[_Run]:
        if fill_blocks:
            if zero_as_dont_care and fill == _ZERO4:
                yield _Run(ChunkType.DONT_CARE, fill_blocks)
            else:
                yield _Run(ChunkType.FILL, fill_blocks, fill=fill)

    for block in blocks:
        pattern = _block_pattern(block)
        if pattern is None:
            yield from flush_fill()
            fill_blocks = 0
            raw.append(block)
            if len(raw) >= raw_limit:
                yield from flush_raw()
            continue
        yield from flush_raw()
        if fill_blocks and (pattern != fill or fill_blocks == _U32_MAX):
            yield from flush_fill()
            fill_blocks = 0
        fill = pattern
        fill_blocks += 1
    yield from flush_raw()
    yield from flush_fill()


def _bytes_reader(data: bytes) -> Callable[[int], bytes]:
    """A read(n) over bytes already in memory."""
    view = memoryview(data)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        part = bytes(view[pos:pos + n])
        pos += len(part)
        return part

    return read


def _write_to(raw: BinaryIO, out: BinaryIO, block_size: int, size: int | None,
              zero_as_dont_care: bool) -> SparseStats:
    source = _RawBlocks(raw, block_size, size)
    writer = _ChunkWriter(out, block_size)
    for run in _raw_runs(iter(source), block_size, zero_as_dont_care):
        writer.add(run)
    output_size = writer.finish(writer.blocks)
    return SparseStats(block_size, writer.blocks, writer.chunks,
                       writer.per_kind[ChunkType.RAW], writer.per_kind[ChunkType.FILL],
                       writer.per_kind[ChunkType.DONT_CARE], source.consumed, output_size)


def write_sparse(raw_fileobj: BinaryIO, out_fileobj: BinaryIO, block_size: int = 4096,
                 size: int | None = None, *, zero_as_dont_care: bool = False) -> SparseStats:
    """Convert a raw image to a sparse image (like ``img2simg``), streaming.

    Reads ``size`` bytes (default: to EOF; fewer -> MALFORMED_IMAGE). Blocks that repeat one
    4-byte pattern become FILL chunks (all-zero runs become DONT_CARE with
    ``zero_as_dont_care``: only right when the target is known to be erased); the rest RAW.
    Neighbouring blocks of one kind share a chunk. A short last block is padded with zeros,
    so the expanded image is rounded up to whole blocks. image_checksum is 0.

    Memory: one input batch (max(1 MiB, block_size)). A seekable ``out_fileobj`` (not in
    append mode) is written in place and its headers patched; otherwise the image is built
    in a temporary file (spilled to disk past 8 MiB) and then copied.
    """
    _check_block_size(block_size)
    _check_size(size)
    if _seekable(out_fileobj):
        return _write_to(raw_fileobj, out_fileobj, block_size, size, zero_as_dont_care)
    with _spool() as tmp:
        stats = _write_to(raw_fileobj, tmp, block_size, size, zero_as_dont_care)
        tmp.seek(0)
        while data := tmp.read(PIECE):
            out_fileobj.write(data)
    return stats


# --- splitting --------------------------------------------------------------------------------

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
                 max_size: int) -> None:
        self.index = index
        self.start_block = start_block
        self._bs = block_size
        self._total = total_blocks
        self._max = max_size
        self.has_data = False
        self.end_block = start_block
        self.file = _spool()
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
        return _PieceBuilder(self.index + 1, self.end_block, self._bs, self._total, self._max)


def _emit(builder: _PieceBuilder) -> Iterator[SparsePiece]:
    try:
        yield builder.finish()
    finally:
        builder.file.close()


def _pack(runs: Iterator[_Run], block_size: int, total_blocks: int,
          max_size: int) -> Iterator[SparsePiece]:
    """Greedy packing: fill each piece until the next run (or RAW block) does not fit."""
    builder = _PieceBuilder(0, 0, block_size, total_blocks, max_size)
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
                    builder.add(_Run(ChunkType.RAW, take, read=run.read))
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


def _sparse_runs(reader: SparseReader) -> Iterator[_Run]:
    """Chunks of a sparse source as runs; CRC32 chunks are checked by the reader and dropped."""
    for chunk in reader.iter_chunks():
        if chunk.block_count == 0:
            continue
        if chunk.type is ChunkType.RAW:
            yield _Run(ChunkType.RAW, chunk.block_count, read=chunk.read)
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
    try:
        fileobj = open(source, "rb")
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{source}: {exc.strerror}") from None
    with fileobj:
        yield fileobj


def _check_split_size(max_size: int, block_size: int) -> None:
    need = min_split_size(block_size)
    if not isinstance(max_size, int) or max_size < need:
        raise ZflashError(Code.USAGE, f"download size limit {max_size!r} is too small for one "
                                      f"{block_size}-byte block with headers (need {need})")


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
        _check_block_size(block_size)
        _check_split_size(max_size, block_size)
        raw_size = _raw_size(fileobj, size)
        total = -(-raw_size // block_size)
        if total > _U32_MAX:
            raise _malformed(f"raw image of {raw_size} bytes has more than 2^32-1 blocks")
        blocks = _RawBlocks(fileobj, block_size, raw_size)
        yield from _pack(_raw_runs(iter(blocks), block_size, False), block_size, total, max_size)
