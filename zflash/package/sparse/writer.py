"""Writing sparse images: a raw image to a sparse one (like ``img2simg``), streaming.

Also home of the chunk writer and the raw-image run finder that the splitter reuses.
Choices beyond the format: the writer pads a raw image whose size is not a multiple of the
block size with zeros up to the next block, exactly as ``img2simg`` does; it always writes
image_checksum = 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from zflash.errors import Code, ZflashError
from zflash.package.sparse.format import (
    _CHUNK_HEADER,
    _FILE_HEADER,
    _U32_MAX,
    _ZERO4,
    CHUNK_HEADER_SIZE,
    FILE_HEADER_SIZE,
    MAGIC,
    MAJOR_VERSION,
    MAX_WRITE_BLOCK_SIZE,
    PIECE,
    ChunkType,
    _chunk_payload,
    _malformed,
)
from zflash.package.sparse.streams import _read_upto, _seekable, _spool


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
    """A run of output blocks headed for one chunk. RAW runs carry a reader of their data,
    or ``at``: where the data lies in the source file, for an output that refers to the
    file instead of copying it (zflash.package.sparse.mapped)."""

    kind: ChunkType
    blocks: int
    fill: bytes | None = None
    read: Callable[[int], bytes] | None = None
    at: int | None = None

    def part(self, skipped_bytes: int, blocks: int) -> "_Run":
        """``blocks`` of this RAW run, starting ``skipped_bytes`` into it (a reader
        continues where it is; a file position moves on)."""
        at = None if self.at is None else self.at + skipped_bytes
        return _Run(self.kind, blocks, self.fill, self.read, at)


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
        if run.kind is ChunkType.RAW and run.at is not None:
            self._out.write_ref(run.at, run.blocks * self._bs)  # type: ignore[attr-defined]
            self.size += run.blocks * self._bs
        elif run.kind is ChunkType.RAW:
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
