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

Modules, one job each: ``format`` (constants, chunk types, header checks), ``crc`` (CRC32 of
huge FILL/DONT_CARE runs), ``streams`` (short reads, peeking, spooled temporary files),
``reader`` (parse, check and expand), ``validate`` (a whole image checked before use), ``writer`` (raw image to sparse; the chunk writer) and
``split`` (pieces under a download limit). Choices beyond the format are in their docstrings.
"""

from zflash.package.sparse.format import (
    CHUNK_HEADER_SIZE,
    FILE_HEADER_SIZE,
    MAGIC,
    MAJOR_VERSION,
    MAX_WRITE_BLOCK_SIZE,
    PIECE,
    SPOOL_LIMIT,
    ChunkType,
    is_sparse,
)
from zflash.package.sparse.reader import (
    Extent,
    SparseChunk,
    SparseReader,
    expand_to,
    iter_expanded,
    iter_ranges,
)
from zflash.package.sparse.validate import (
    MAX_CHECKED_RUNS,
    SparseSummary,
    validate_sparse,
    validate_sparse_file,
)
from zflash.package.sparse.split import Source, SparsePiece, min_split_size, split_sparse
from zflash.package.sparse.writer import SparseStats, write_sparse

__all__ = [
    "CHUNK_HEADER_SIZE",
    "FILE_HEADER_SIZE",
    "MAGIC",
    "MAX_CHECKED_RUNS",
    "MAJOR_VERSION",
    "MAX_WRITE_BLOCK_SIZE",
    "PIECE",
    "SPOOL_LIMIT",
    "ChunkType",
    "Extent",
    "Source",
    "SparseChunk",
    "SparsePiece",
    "SparseReader",
    "SparseSummary",
    "SparseStats",
    "expand_to",
    "is_sparse",
    "iter_expanded",
    "iter_ranges",
    "min_split_size",
    "split_sparse",
    "validate_sparse",
    "validate_sparse_file",
    "write_sparse",
]
