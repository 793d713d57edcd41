"""Sparse format constants, chunk types and header checks: the one definition of the format.

The reader, the writer and the splitter all encode or check the same headers (the facts are in
the package docstring, from AOSP libsparse ``sparse_format.h``); they take them from here so
the three cannot disagree. PIECE, MAX_WRITE_BLOCK_SIZE and SPOOL_LIMIT are this
implementation's memory bounds, not format facts.
"""

from __future__ import annotations

import struct
from enum import IntEnum

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


def file_header(block_size: int, total_blocks: int, total_chunks: int) -> bytes:
    """A sparse file header (image_checksum 0: none, as img2simg writes it)."""
    return _FILE_HEADER.pack(MAGIC, MAJOR_VERSION, 0, FILE_HEADER_SIZE, CHUNK_HEADER_SIZE,
                             block_size, total_blocks, total_chunks, 0)


def chunk_header(kind: ChunkType, blocks: int, data_bytes: int) -> bytes:
    """A chunk header; ``data_bytes`` is what follows it (RAW data, FILL's 4 bytes)."""
    return _CHUNK_HEADER.pack(kind, 0, blocks, CHUNK_HEADER_SIZE + data_bytes)
