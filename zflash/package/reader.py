"""Reading .zpk packages: the head (header, manifest, signatures, tables) and verified blocks.

The head is parsed from bytes so that the device side can use exactly the same code on what
the host sends it. Every length is checked against fixed limits and the file size before it
is read; stored blocks are decompressed with an output bound, so a crafted package cannot
exhaust memory.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

from zflash import zstd
from zflash.errors import Code, ZflashError
from zflash.package.format import (HEADER_SIZE, KIND_RAW, KIND_ZERO, KIND_ZLIB, KIND_ZSTD,
                                   BlockEntry, BlockTable, Header, Manifest, PartitionEntry,
                                   block_length, decode_table, malformed)
from zflash.package.pages import release_pages
from zflash.package.signing import MANIFEST_DOMAIN, Signature, decode_signatures, verify

if TYPE_CHECKING:
    from zflash.package.keys import TrustStore

_ZERO_DIGESTS: dict[int, bytes] = {}
_ZERO_BLOCKS: dict[int, bytes] = {}


def zero_digest(length: int) -> bytes:
    """SHA-256 of ``length`` zero bytes, cached: zero blocks are common and all alike."""
    digest = _ZERO_DIGESTS.get(length)
    if digest is None:
        digest = _ZERO_DIGESTS[length] = hashlib.sha256(bytes(length)).digest()
    return digest


def zero_block(length: int) -> bytes:
    """``length`` zero bytes, one shared immutable object per length (no per-block buffer)."""
    block = _ZERO_BLOCKS.get(length)
    if block is None:
        block = _ZERO_BLOCKS[length] = bytes(length)
    return block


@dataclass
class PackageHead:
    """Everything before the payload, decoded and structurally checked."""

    header: Header
    manifest_bytes: bytes
    manifest: Manifest
    signatures: list[Signature]
    tables: dict[str, BlockTable] = field(default_factory=dict)
    payload_starts: dict[str, int] = field(default_factory=dict)
    raw: bytes = b""  # the head exactly as read, every byte already checked

    @property
    def digest(self) -> str:
        """Identity of this update: SHA-256 of the signed manifest bytes."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    def verify_signature(self, trust: TrustStore) -> list[bytes]:
        return verify(self.manifest_bytes, self.signatures, trust, MANIFEST_DOMAIN)

    @classmethod
    def decode(cls, data: bytes | memoryview, file_size: int | None = None) -> "PackageHead":
        """Decode a head from ``data`` (which may continue into the payload)."""
        whole = data
        data = memoryview(data)
        header = Header.decode(bytes(data[:HEADER_SIZE]), file_size)
        if len(data) < header.payload_offset:
            raise malformed(f"package head truncated: {len(data)} of "
                            f"{header.payload_offset} bytes")
        manifest_bytes = bytes(data[header.manifest_offset:header.signatures_offset])
        signatures = decode_signatures(bytes(data[header.signatures_offset:header.tables_offset]))
        manifest = Manifest.decode(manifest_bytes)
        expected_tables = sum(p.block_count for p in manifest.partitions) * 48
        if expected_tables != header.tables_size:
            raise malformed(f"block tables are {header.tables_size} bytes, the manifest "
                            f"needs {expected_tables}")
        if manifest.stored_size != header.payload_size:
            raise malformed(f"payload is {header.payload_size} bytes, the manifest says "
                            f"{manifest.stored_size}")
        # The head as read, without a copy when ``data`` is exactly it; tables are views of it.
        raw = (whole if isinstance(whole, bytes) and len(whole) == header.payload_offset
               else bytes(data[:header.payload_offset]))
        data = memoryview(raw)
        head = cls(header, manifest_bytes, manifest, signatures, raw=raw)
        table_pos, payload_pos = header.tables_offset, 0
        for part in manifest.partitions:
            size = part.block_count * 48
            head.tables[part.name] = decode_table(data[table_pos:table_pos + size], part,
                                                  payload_pos)
            head.payload_starts[part.name] = payload_pos
            table_pos += size
            payload_pos += part.stored_size
        return head

    def head_bytes(self) -> bytes:
        """The head as read (what a host sends the device to begin an update)."""
        return self.raw


def decode_block(part: PartitionEntry, index: int, entry: BlockEntry,
                 stored: bytes | memoryview) -> bytes | memoryview:
    """The raw block from its stored form, checked against its SHA-256 from the table.

    Raises SIGNATURE for any mismatch: the block is not what the signer signed.
    """
    length = block_length(part, index)
    if entry.kind == KIND_ZERO:
        if entry.sha256 != zero_digest(length):
            raise _bad_block(part, index, "zero block hash is wrong")
        return zero_block(length)
    if entry.kind == KIND_RAW:
        raw: bytes | memoryview = stored
    elif entry.kind == KIND_ZLIB:
        raw = inflate_bounded(stored, length, part, index)
    elif entry.kind == KIND_ZSTD:
        raw = unzstd_bounded(stored, length, part, index)
    else:
        raise malformed(f"{part.name}[{index}]: unknown block kind {entry.kind}")
    if len(raw) != length or hashlib.sha256(raw).digest() != entry.sha256:
        raise _bad_block(part, index, "block hash does not match the signed table")
    return raw


def expand_block(part: PartitionEntry, index: int, entry: BlockEntry,
                 stored: bytes | memoryview) -> bytes | memoryview:
    """The raw block from its stored form, without hashing: for a block whose hash was
    already checked against the table (``decode_block`` once, never twice)."""
    length = block_length(part, index)
    if entry.kind == KIND_ZERO:
        return bytes(length)
    if entry.kind == KIND_RAW:
        return stored
    if entry.kind == KIND_ZLIB:
        return inflate_bounded(stored, length, part, index)
    if entry.kind == KIND_ZSTD:
        return unzstd_bounded(stored, length, part, index)
    raise malformed(f"{part.name}[{index}]: unknown block kind {entry.kind}")


#: package block kind -> the name of the wire codec that carries it unchanged
WIRE_CODEC_OF_KIND = {KIND_RAW: "none", KIND_ZLIB: "zlib", KIND_ZSTD: "zstd"}


def wire_form(part: PartitionEntry, index: int, entry: BlockEntry, stored: bytes | memoryview,
              accepted: tuple[str, ...] | frozenset[str] | set[str]
              ) -> tuple[str, bytes | memoryview]:
    """How to send a stored block to a device that decodes the ``accepted`` codec names.

    As stored when the device takes that codec (the device checks the hash); otherwise the
    host decodes it (bounded; the caller checked the block against the table once already,
    see ``targets.blocks``) and sends it raw. So a zstd package flashes onto a zlib-only device. Zero blocks
    are not sent at all and are refused here.
    """
    if entry.kind == KIND_ZERO:
        raise ZflashError(Code.INTERNAL, f"{part.name}[{index}]: zero blocks are not sent")
    codec = WIRE_CODEC_OF_KIND.get(entry.kind)
    if codec is None:
        raise malformed(f"{part.name}[{index}]: unknown block kind {entry.kind}")
    if codec in accepted:
        return codec, stored
    return "none", expand_block(part, index, entry, stored)


def inflate_bounded(stored: bytes | memoryview, length: int, part: PartitionEntry,
                    index: int) -> bytes:
    """Decompress at most ``length`` bytes: a decompression bomb stops at the bound."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(stored, length)
    except zlib.error as exc:
        raise _bad_block(part, index, f"compressed data is corrupt ({exc})") from None
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise _bad_block(part, index, "compressed data does not end at the block's end")
    return raw


def unzstd_bounded(stored: bytes | memoryview, length: int, part: PartitionEntry,
                   index: int) -> bytes:
    """Decode one zstd frame to exactly ``length`` bytes; a larger claim is refused unread."""
    if not zstd.available():
        raise malformed(f"{part.name}[{index}]: zstd block, but zstd support is not installed "
                        "(pip install zstandard)")
    try:
        return zstd.decompress(stored, length)
    except zstd.ZstdError as exc:
        raise _bad_block(part, index, str(exc)) from None


def _bad_block(part: PartitionEntry, index: int, why: str) -> ZflashError:
    return ZflashError(Code.SIGNATURE, f"partition {part.name}, block {index}: {why}",
                       cause="blocks")


class Package:
    """A .zpk file opened for random access and streaming."""

    def __init__(self, source: Path | str | BinaryIO) -> None:
        """Open a path, or use an already open binary file object (not closed by us)."""
        if isinstance(source, (str, os.PathLike)):
            self.path = Path(source)
            try:
                self._file: BinaryIO = open(self.path, "rb")
            except OSError as exc:
                raise ZflashError(Code.FILE_UNREADABLE, f"{source}: {exc.strerror}") from None
            self._owns_file = True
        else:
            self.path = Path(getattr(source, "name", "<stream>"))
            self._file, self._owns_file = source, False
        #: what the file was when opened: a sender reads it again after its blocks were
        #: checked, so ``ensure_unchanged`` compares before those bytes go where no one
        #: checks them (D211)
        self._identity = _file_identity(self._file)
        try:
            self._file.seek(0, os.SEEK_END)
            size = self._file.tell()
            self._file.seek(0)
            first = self._file.read(HEADER_SIZE)
            header = Header.decode(first, size)
            self._file.seek(0)
            self.head = PackageHead.decode(self._file.read(header.payload_offset), size)
        except BaseException:
            self.close()
            raise

    @property
    def manifest(self) -> Manifest:
        return self.head.manifest

    def close(self) -> None:
        mapped = getattr(self, "_map", None)
        if mapped is not None:
            self._map = None
            try:
                mapped.close()
            except BufferError:
                pass  # a view of it is still held (a traceback): unmapped by the GC
        if self._owns_file:
            self._file.close()

    def ensure_unchanged(self) -> None:
        """Raise unless the file is as it was opened (same inode, size, mtime and ctime).

        Why: the blocks were checked against the signed table from one read of the file,
        and a sender reads them again (a map or a pread) to send them. A device that checks
        nothing itself (fastboot, EDL) would write whatever a concurrent writer put there.
        Called after such a read and before its bytes are written, it refuses any change
        made before the read (D211)."""
        if self._identity is not None and _file_identity(self._file) != self._identity:
            raise ZflashError(Code.SIGNATURE, f"{self.path}: the package file changed while "
                                              "it was being flashed; nothing read from it "
                                              "after the change was written",
                              cause="changed")

    def stored_view(self, start: int, length: int) -> memoryview:
        """``length`` stored bytes from payload offset ``start``, as a view of a read-only
        map of the file: what a sender hands the kernel without a copy in user space (the
        stock fastboot client sends its image from a map too). Checked to lie in the file."""
        mapped = getattr(self, "_map", None)
        if mapped is None:
            self._map = mapped = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        offset = self.head.header.payload_offset + start
        if start < 0 or length < 0 or offset + length > len(mapped):
            raise malformed(f"stored bytes {start}+{length} lie outside the package")
        return memoryview(mapped)[offset:offset + length]

    def release_view(self, start: int, length: int) -> None:
        """Done with ``stored_view(start, length)``: its pages leave this process's resident
        set (they stay in the page cache), so a streamed package does not grow the host's
        memory with the image size."""
        mapped = getattr(self, "_map", None)
        if mapped is not None:
            offset = self.head.header.payload_offset + start
            release_pages(mapped, offset, offset + length)

    def __enter__(self) -> "Package":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_stored(self, part: PartitionEntry, index: int) -> bytes:
        """The stored bytes of one block (random access)."""
        entry = self.head.tables[part.name][index]
        if entry.kind == KIND_ZERO:
            return b""
        self._file.seek(self.head.header.payload_offset + entry.stored_offset)
        data = self._file.read(entry.stored_size)
        if len(data) != entry.stored_size:
            raise malformed(f"{part.name}[{index}]: payload truncated")
        return data

    def read_stored_at(self, entry: BlockEntry, part: PartitionEntry, index: int) -> bytes:
        """One block's stored bytes by position, with pread: safe from a second thread while
        another streams the file (no shared file position)."""
        fd = self._file.fileno()
        offset = self.head.header.payload_offset + entry.stored_offset
        data = os.pread(fd, entry.stored_size, offset)
        while len(data) < entry.stored_size:
            more = os.pread(fd, entry.stored_size - len(data), offset + len(data))
            if not more:
                raise malformed(f"{part.name}[{index}]: payload truncated")
            data += more
        return data

    def iter_stored(self, part: PartitionEntry) -> Iterator[tuple[int, BlockEntry, bytes]]:
        """Stream one partition's blocks in stored form, in order, one read each."""
        self._file.seek(self.head.header.payload_offset + self.head.payload_starts[part.name])
        for index, entry in enumerate(self.head.tables[part.name]):
            data = self._file.read(entry.stored_size) if entry.stored_size else b""
            if len(data) != entry.stored_size:
                raise malformed(f"{part.name}[{index}]: payload truncated")
            yield index, entry, data

    def iter_blocks(self, part: PartitionEntry) -> Iterator[tuple[int, bytes | memoryview]]:
        """Stream one partition's raw blocks, each checked against the table."""
        for index, entry, stored in self.iter_stored(part):
            yield index, decode_block(part, index, entry, stored)

    def verify(self, trust: TrustStore, check_images: bool = True) -> list[bytes]:
        """Signature, then every block, then each image's SHA-256; returns the signer ids.

        The whole-image hash runs on a second thread (hashlib releases the GIL), so the
        check costs about one hash pass of wall time instead of two.
        """
        signers = self.head.verify_signature(trust)
        for part in self.manifest.partitions:
            hasher = _BackgroundHasher() if check_images else None
            for _, raw in self.iter_blocks(part):
                if hasher:
                    hasher.update(raw)
            if hasher and hasher.hexdigest() != part.sha256:
                raise ZflashError(Code.SIGNATURE, f"partition {part.name}: image SHA-256 does "
                                                  "not match the signed manifest", cause="blocks")
        return signers


def _file_identity(file: BinaryIO) -> tuple[int, ...] | None:
    """(device, inode, size, mtime, ctime) of an open file; None for one without a file
    descriptor (a stream in memory cannot be changed behind the reader's back). Every write
    sets ctime, and no user can set it back."""
    try:
        st = os.fstat(file.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class _BackgroundHasher:
    """SHA-256 on a worker thread, fed in batches of about 4 MiB."""

    _BATCH = 4 << 20

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[list[bytes | memoryview] | None] = queue.Queue(maxsize=4)
        self._batch: list[bytes | memoryview] = []
        self._pending = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not None:
            for piece in batch:
                self._hash.update(piece)

    def update(self, data: bytes | memoryview) -> None:
        self._batch.append(data)
        self._pending += len(data)
        if self._pending >= self._BATCH:
            self._queue.put(self._batch)
            self._batch, self._pending = [], 0

    def hexdigest(self) -> str:
        self._queue.put(self._batch)
        self._queue.put(None)
        self._thread.join()
        return self._hash.hexdigest()
