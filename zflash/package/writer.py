"""Building .zpk packages from raw or Android sparse partition images.

The writer streams: each image is read once in blocks, blocks are hashed and (optionally)
compressed, and stored blocks go to a temporary payload file; only the block tables (48 bytes
per block) stay in memory. The head is written once the tables are known, then the payload is
copied after it, and the result is renamed into place. Sparse input is expanded on the fly,
with don't-care regions read as zeros, so the same content gives the same package whichever
form it came in.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO, Iterator

from zflash import zstd
from zflash.errors import Code, ZflashError
from zflash.package.format import (DEFAULT_BLOCK_SIZE, ENTRY_SIZE, KIND_RAW, KIND_ZERO,
                                   KIND_ZLIB, KIND_ZSTD, MAX_BLOCK_SIZE, MAX_IMAGE_SIZE,
                                   MAX_TABLES_SIZE, MIN_BLOCK_SIZE, BlockEntry, Header, Manifest,
                                   PartitionEntry)
from zflash.package.edlspec import EdlSpec
from zflash.package.images import open_image
from zflash.package.keys import PrivateKey
from zflash.package.names import CODECS, DEFAULT_CODEC
from zflash.package.signing import encode_signatures, sign

DEFAULT_ZLIB_LEVEL = 6
_BATCH_BLOCKS = 64


@dataclass(frozen=True)
class PartitionSource:
    name: str
    path: Path
    slotted: bool


@dataclass(frozen=True)
class PackageInfo:
    """The signed metadata a package is built with (everything but the partitions)."""

    product: str
    hardware_revisions: tuple[str, ...]
    baseband_ids: tuple[str, ...]
    version: str
    rollback_index: int
    rollback_location: int
    build_time: int
    #: Qualcomm EDL packages only: hardware ids, programmer, baseband location
    edl: EdlSpec | None = None


@dataclass
class _BuiltPartition:
    entry: PartitionEntry
    table: bytes


def build_package(info: PackageInfo, sources: list[PartitionSource], keys: list[PrivateKey],
                  out_path: Path, codec: str = DEFAULT_CODEC, level: int = DEFAULT_ZLIB_LEVEL,
                  block_size: int = DEFAULT_BLOCK_SIZE,
                  zstd_level: int = zstd.DEFAULT_LEVEL) -> Manifest:
    """Write a signed package to ``out_path`` atomically and return its manifest.

    ``level`` is zlib's (0..9), ``zstd_level`` zstd's (1..22).
    """
    if codec not in CODECS:
        raise ZflashError(Code.USAGE, f"unknown codec {codec!r}; choose from {CODECS}")
    if not 0 <= level <= 9 or not 1 <= zstd_level <= 22:
        raise ZflashError(Code.USAGE, "zlib level must be 0..9 and zstd level 1..22")
    if codec in ("auto", "zstd") and not zstd.available():
        raise ZflashError(Code.USAGE, f"codec {codec!r} needs zstd support "
                                      "(pip install zstandard); use --codec zlib")
    if block_size < MIN_BLOCK_SIZE or block_size > MAX_BLOCK_SIZE or block_size & (block_size - 1):
        raise ZflashError(Code.USAGE, f"block size must be a power of two in "
                                      f"{MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}")
    if not sources:
        raise ZflashError(Code.USAGE, "a package needs at least one partition image")
    if not keys:
        raise ZflashError(Code.USAGE, "a package needs at least one signing key")
    out_path = Path(out_path)
    try:
        return _build(info, sources, keys, out_path, _Codec(codec, level, zstd_level),
                      block_size)
    except OSError as exc:  # reading inputs reports its own code; this is the output side
        raise ZflashError(Code.FILE_UNWRITABLE, f"{out_path}: {exc.strerror}") from None


def _build(info: PackageInfo, sources: list[PartitionSource], keys: list[PrivateKey],
           out_path: Path, codec: "_Codec", block_size: int) -> Manifest:
    out_dir = out_path.parent if str(out_path.parent) else Path(".")
    with tempfile.TemporaryFile(dir=out_dir) as payload, ThreadPoolExecutor(2) as pool:
        _check_sizes(sources, block_size)
        built = [_build_partition(src, payload, codec, block_size, pool)
                 for src in sources]
        manifest = Manifest(**{f.name: getattr(info, f.name) for f in fields(info)},
                            partitions=tuple(b.entry for b in built))
        # Round-trip through the parser so a bad field fails here, not on the device.
        manifest_bytes = manifest.encode()
        Manifest.decode(manifest_bytes)
        signatures = encode_signatures([sign(manifest_bytes, key) for key in keys])
        tables = b"".join(b.table for b in built)
        header = Header(len(manifest_bytes), len(signatures), len(tables), payload.tell())
        _write_atomically(out_path, [header.encode(), manifest_bytes, signatures, tables],
                          payload)
    return manifest


def _check_sizes(sources: list[PartitionSource], block_size: int) -> None:
    """Refuse, before reading any data, images the package format cannot hold.

    A sparse header may claim terabytes of DONT_CARE; expanding that to count blocks would
    run for hours, so the bound comes from the headers: every image within MAX_IMAGE_SIZE and
    all block tables together within MAX_TABLES_SIZE (48 bytes per block).
    """
    table_bytes = 0
    for src in sources:
        with open_image(src.path) as image:
            size = image.size
        if size > MAX_IMAGE_SIZE:
            raise ZflashError(Code.MALFORMED_IMAGE, f"{src.path}: image of {size} bytes is "
                                                    f"larger than the {MAX_IMAGE_SIZE} a "
                                                    "package holds")
        table_bytes += -(-size // block_size) * ENTRY_SIZE
        if table_bytes > MAX_TABLES_SIZE:
            raise ZflashError(Code.MALFORMED_IMAGE, f"{src.path}: the images need "
                                                    f"{table_bytes} bytes of block tables, "
                                                    f"more than {MAX_TABLES_SIZE}; use a "
                                                    "larger --block-size or fewer images")


def _build_partition(src: PartitionSource, payload: BinaryIO, codec: "_Codec",
                     block_size: int, pool: ThreadPoolExecutor) -> _BuiltPartition:
    image_hash = hashlib.sha256()
    table: list[bytes] = []
    start = payload.tell()
    size = 0
    for batch in _batches(_blocks(src.path, block_size)):
        encoded = pool.map(codec.encode, batch)
        for raw, (kind, stored) in zip(batch, encoded):
            image_hash.update(raw)
            size += len(raw)
            offset = payload.tell() if stored else 0
            payload.write(stored)
            table.append(BlockEntry(hashlib.sha256(raw).digest(), kind, len(stored),
                                    offset).encode())
    table_bytes = b"".join(table)
    entry = PartitionEntry(name=src.name, slotted=src.slotted, size=size,
                           sha256=image_hash.hexdigest(), block_size=block_size,
                           block_count=len(table),
                           table_sha256=hashlib.sha256(table_bytes).hexdigest(),
                           stored_size=payload.tell() - start)
    if size == 0:
        raise ZflashError(Code.MALFORMED_IMAGE, f"{src.path}: image is empty")
    return _BuiltPartition(entry, table_bytes)


@dataclass(frozen=True)
class _Codec:
    name: str
    zlib_level: int
    zstd_level: int

    def encode(self, raw: bytes) -> tuple[int, bytes]:
        """Zero blocks are not stored; otherwise the smallest form, raw when nothing saves.

        On a tie zlib wins over zstd (more devices decode it) and raw over both.
        """
        if raw.count(0) == len(raw):
            return KIND_ZERO, b""
        best: tuple[int, bytes] = (KIND_RAW, raw)
        if self.name in ("auto", "zlib"):
            packed = zlib.compress(raw, self.zlib_level)
            if len(packed) < len(best[1]):
                best = (KIND_ZLIB, packed)
        if self.name in ("auto", "zstd"):
            packed = zstd.compress(raw, self.zstd_level)
            if len(packed) < len(best[1]):
                best = (KIND_ZSTD, packed)
        return best


def _blocks(path: Path, block_size: int) -> Iterator[bytes]:
    with open_image(path) as image:
        yield from image.iter_blocks(block_size)


def _batches(blocks: Iterator[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for block in blocks:
        batch.append(block)
        if len(batch) == _BATCH_BLOCKS:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_atomically(out_path: Path, head: list[bytes], payload: BinaryIO) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in head:
                out.write(part)
            payload.seek(0)
            shutil.copyfileobj(payload, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
