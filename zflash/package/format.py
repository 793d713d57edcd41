"""The .zpk container: fixed header, canonical JSON manifest, signatures, block tables, payload.

Everything here is pure encoding and decoding with bounds; no file I/O. The layout is
specified in protocols/zpk.md. Every byte of a package is constrained: a header field must
equal the value derived from the rest, reserved bytes must be zero, the manifest must be in
canonical form and table entries must be laid out contiguously. So any single changed byte is
either a structural error (MALFORMED_PACKAGE) or breaks a signature or hash (SIGNATURE).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from zflash.errors import Code, ZflashError
from zflash.fields import Fields
from zflash.package.names import DEFAULT_BLOCK_SIZE  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # the EDL part is imported when a manifest has one (start-up, D181)
    from zflash.package.edlspec import EdlSpec

MAGIC = b"ZPKG\r\n\x1a\n"
FORMAT_VERSION = 1
FORMAT_NAME = "zpk/1"
HEADER = struct.Struct("<8sHHIIIQ32s")
HEADER_SIZE = HEADER.size  # 64
ENTRY = struct.Struct("<32sB3sIQ")
ENTRY_SIZE = ENTRY.size  # 48
_DIGEST_OF_ENTRY = struct.Struct("<32s16x")  # an entry's digest, the rest skipped

# Fixed limits, checked before anything is allocated or read.
MAX_MANIFEST_SIZE = 1 << 20
MAX_SIGNATURES_SIZE = 64 << 10
MAX_TABLES_SIZE = 64 << 20
MAX_PARTITIONS = 64
MAX_SIGNATURES = 16
MIN_BLOCK_SIZE = 8 << 10  # 48-byte entries stay under 1% of the image
MAX_BLOCK_SIZE = 64 << 10
MAX_IMAGE_SIZE = 1 << 40
MAX_ROLLBACK_LOCATION = 31

# Block kinds in the table.
KIND_ZERO = 0
KIND_RAW = 1
KIND_ZLIB = 2
KIND_ZSTD = 3
KIND_NAMES = {KIND_ZERO: "zero", KIND_RAW: "raw", KIND_ZLIB: "zlib", KIND_ZSTD: "zstd"}
COMPRESSED_KINDS = frozenset({KIND_ZLIB, KIND_ZSTD})

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")  # fullmatch: no trailing newline


def valid_partition_name(name: object) -> bool:
    """A partition name a manifest may carry: 1..32 of [a-z0-9_.-], not starting with _.-."""
    return isinstance(name, str) and _NAME_RE.match(name) is not None


def malformed(detail: str) -> ZflashError:
    return ZflashError(Code.MALFORMED_PACKAGE, detail)


@dataclass(frozen=True)
class Header:
    manifest_size: int
    signatures_size: int
    tables_size: int
    payload_size: int

    @property
    def manifest_offset(self) -> int:
        return HEADER_SIZE

    @property
    def signatures_offset(self) -> int:
        return HEADER_SIZE + self.manifest_size

    @property
    def tables_offset(self) -> int:
        return self.signatures_offset + self.signatures_size

    @property
    def payload_offset(self) -> int:
        return self.tables_offset + self.tables_size

    @property
    def total_size(self) -> int:
        return self.payload_offset + self.payload_size

    def encode(self) -> bytes:
        return HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, self.manifest_size,
                           self.signatures_size, self.tables_size, self.payload_size,
                           bytes(32))

    @classmethod
    def decode(cls, data: bytes, file_size: int | None = None) -> "Header":
        if len(data) < HEADER_SIZE:
            raise malformed(f"file is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
        magic, version, hsize, msize, ssize, tsize, psize, reserved = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise malformed("not a .zpk package (bad magic)")
        if version != FORMAT_VERSION:
            raise malformed(f"unsupported package format version {version}")
        if hsize != HEADER_SIZE:
            raise malformed(f"header size {hsize}, expected {HEADER_SIZE}")
        if any(reserved):
            raise malformed("reserved header bytes are not zero")
        if not 0 < msize <= MAX_MANIFEST_SIZE:
            raise malformed(f"manifest size {msize} outside 1..{MAX_MANIFEST_SIZE}")
        if not 0 < ssize <= MAX_SIGNATURES_SIZE:
            raise malformed(f"signature block size {ssize} outside 1..{MAX_SIGNATURES_SIZE}")
        if tsize > MAX_TABLES_SIZE or tsize % ENTRY_SIZE:
            raise malformed(f"block table size {tsize} is not a multiple of {ENTRY_SIZE} "
                            f"or exceeds {MAX_TABLES_SIZE}")
        header = cls(msize, ssize, tsize, psize)
        if file_size is not None and header.total_size != file_size:
            raise malformed(f"header describes {header.total_size} bytes, file has {file_size}"
                            " (truncated or extended)")
        return header


@dataclass(frozen=True)
class PartitionEntry:
    """One partition as the signed manifest describes it."""

    name: str
    slotted: bool
    size: int
    sha256: str
    block_size: int
    block_count: int
    table_sha256: str
    stored_size: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "slotted": self.slotted, "size": self.size,
                "sha256": self.sha256, "block_size": self.block_size,
                "block_count": self.block_count, "table_sha256": self.table_sha256,
                "stored_size": self.stored_size}


@dataclass(frozen=True)
class Manifest:
    """The signed statement: what the package is for and exactly what it contains."""

    product: str
    hardware_revisions: tuple[str, ...]
    baseband_ids: tuple[str, ...]
    version: str
    rollback_index: int
    rollback_location: int
    build_time: int
    partitions: tuple[PartitionEntry, ...]
    #: Qualcomm EDL: the hardware it is for, its programmer (protocols/zpk.md 3.1)
    edl: EdlSpec | None = None

    def partition(self, name: str) -> PartitionEntry | None:
        return next((p for p in self.partitions if p.name == name), None)

    @property
    def image_size(self) -> int:
        return sum(p.size for p in self.partitions)

    @property
    def stored_size(self) -> int:
        return sum(p.stored_size for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        out = {"format": FORMAT_NAME, "product": self.product,
               "hardware_revisions": list(self.hardware_revisions),
               "baseband_ids": list(self.baseband_ids), "version": self.version,
               "rollback_index": self.rollback_index,
               "rollback_location": self.rollback_location, "build_time": self.build_time,
               "partitions": [p.to_json() for p in self.partitions]}
        if self.edl is not None:
            out["edl"] = self.edl.to_json()
        return out

    def encode(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def decode(cls, data: bytes) -> "Manifest":
        try:
            obj = json.loads(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise malformed(f"manifest is not valid JSON: {exc}") from None
        manifest = _manifest_from_json(obj)
        if manifest.encode() != bytes(data):
            raise malformed("manifest is not in canonical form")
        return manifest


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII: one byte string per value, for signing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _manifest_from_json(obj: Any) -> Manifest:
    if not isinstance(obj, dict):
        raise malformed("manifest is not a JSON object")
    expected = {"format", "product", "hardware_revisions", "baseband_ids", "version",
                "rollback_index", "rollback_location", "build_time", "partitions"}
    if set(obj) - {"edl"} != expected:
        raise malformed(f"manifest fields differ from {sorted(expected)} (+ optional edl)")
    if obj["format"] != FORMAT_NAME:
        raise malformed(f"manifest format {obj['format']!r}, expected {FORMAT_NAME!r}")
    parts_json = obj["partitions"]
    if not isinstance(parts_json, list) or not 0 < len(parts_json) <= MAX_PARTITIONS:
        raise malformed(f"manifest needs 1..{MAX_PARTITIONS} partitions")
    partitions = tuple(_partition_from_json(p) for p in parts_json)
    if len({p.name for p in partitions}) != len(partitions):
        raise malformed("duplicate partition name in manifest")
    location = _uint(obj["rollback_location"], "rollback_location", MAX_ROLLBACK_LOCATION)
    return Manifest(product=_text(obj["product"], "product"),
                    hardware_revisions=_text_list(obj["hardware_revisions"], "hardware_revisions"),
                    baseband_ids=_text_list(obj["baseband_ids"], "baseband_ids"),
                    version=_text(obj["version"], "version"),
                    rollback_index=_uint(obj["rollback_index"], "rollback_index", 2**63 - 1),
                    rollback_location=location,
                    build_time=_uint(obj["build_time"], "build_time", 2**63 - 1),
                    partitions=partitions,
                    edl=_edl(obj["edl"]) if "edl" in obj else None)


def _partition_from_json(obj: Any) -> PartitionEntry:
    fields = {"name", "slotted", "size", "sha256", "block_size", "block_count",
              "table_sha256", "stored_size"}
    if not isinstance(obj, dict) or set(obj) != fields:
        raise malformed(f"partition entry fields differ from {sorted(fields)}")
    name = obj["name"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise malformed(f"bad partition name {name!r}")
    if not isinstance(obj["slotted"], bool):
        raise malformed(f"{name}: 'slotted' must be true or false")
    size = _uint(obj["size"], f"{name}.size", MAX_IMAGE_SIZE)
    block_size = _uint(obj["block_size"], f"{name}.block_size", MAX_BLOCK_SIZE)
    if block_size < MIN_BLOCK_SIZE or block_size & (block_size - 1):
        raise malformed(f"{name}: block size {block_size} is not a power of two in "
                        f"{MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}")
    count = _uint(obj["block_count"], f"{name}.block_count", MAX_TABLES_SIZE // ENTRY_SIZE)
    if count != -(-size // block_size):
        raise malformed(f"{name}: block count {count} does not match size {size}")
    return PartitionEntry(name=name, slotted=obj["slotted"], size=size,
                          sha256=_hex64(obj["sha256"], f"{name}.sha256"),
                          block_size=block_size, block_count=count,
                          table_sha256=_hex64(obj["table_sha256"], f"{name}.table_sha256"),
                          stored_size=_uint(obj["stored_size"], f"{name}.stored_size",
                                            2 * MAX_IMAGE_SIZE))


_FIELDS = Fields(malformed)
_uint, _text, _text_list, _hex64 = _FIELDS.uint, _FIELDS.text, _FIELDS.texts, _FIELDS.hex64


@dataclass(frozen=True)
class BlockEntry:
    """One block: its SHA-256 (of the raw bytes) and where its stored form lies."""

    sha256: bytes
    kind: int
    stored_size: int
    stored_offset: int

    def encode(self) -> bytes:
        return ENTRY.pack(self.sha256, self.kind, b"\0\0\0", self.stored_size,
                          self.stored_offset)


class BlockTable(Sequence[BlockEntry]):
    """One partition's checked table, kept as its 48-byte entries.

    Why not a list of BlockEntry: a 64 GiB image has a million entries, and a million small
    objects cost about 300 MiB; here an entry object exists only while a caller holds it, so
    memory is the table's own size (and no copy of it: ``data`` is a view of the head).
    """

    def __init__(self, data: memoryview) -> None:
        self._data = data

    def __len__(self) -> int:
        return len(self._data) // ENTRY_SIZE

    @overload
    def __getitem__(self, index: int) -> BlockEntry: ...

    @overload
    def __getitem__(self, index: slice) -> list[BlockEntry]: ...

    def __getitem__(self, index: int | slice) -> BlockEntry | list[BlockEntry]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError("block index out of range")
        digest, kind, _reserved, stored, where = ENTRY.unpack_from(self._data,
                                                                   index * ENTRY_SIZE)
        return BlockEntry(digest, kind, stored, where)

    def __iter__(self) -> Iterator[BlockEntry]:
        for digest, kind, _reserved, stored, where in ENTRY.iter_unpack(self._data):
            yield BlockEntry(digest, kind, stored, where)

    def kinds(self) -> bytes:
        """The kind byte of every block, in order (one C-level slice, no objects)."""
        return bytes(self._data[32::ENTRY_SIZE])

    def digests(self, start: int = 0, stop: int | None = None) -> bytes:
        """The 32-byte SHA-256 of blocks ``start..stop``, back to back (no entry objects).

        Why: a re-flash compares every block's signed hash with what the device reports;
        comparing two byte strings is one C-level compare where an entry object per block
        costs ~1 us each (D182)."""
        count = len(self)
        stop = count if stop is None else max(0, min(stop, count))
        start = max(0, min(start, stop))
        if start == stop:
            return b""
        view = self._data[start * ENTRY_SIZE:stop * ENTRY_SIZE]
        return b"".join([digest for (digest,) in _DIGEST_OF_ENTRY.iter_unpack(view)])


def decode_table(data: bytes | memoryview, part: PartitionEntry, start_offset: int
                 ) -> BlockTable:
    """Decode and structurally check one partition's table.

    ``start_offset`` is where this partition's stored blocks begin in the payload; entries
    must follow each other without gaps, so the table fully determines the payload layout.
    The check streams over the entries; nothing per entry is kept.
    """
    data = memoryview(data)
    if len(data) != part.block_count * ENTRY_SIZE:
        raise malformed(f"{part.name}: table is {len(data)} bytes, expected "
                        f"{part.block_count * ENTRY_SIZE}")
    if hashlib.sha256(data).hexdigest() != part.table_sha256:
        raise ZflashError(Code.SIGNATURE, f"{part.name}: block table hash does not match the "
                                          "signed manifest")
    offset = start_offset
    last = part.block_count - 1
    full = part.block_size
    for index, (_digest, kind, reserved, stored, where) in enumerate(ENTRY.iter_unpack(data)):
        if kind == KIND_ZERO:
            if stored or where or reserved != b"\0\0\0":
                raise malformed(f"{part.name}[{index}]: zero block with stored data"
                                if stored or where else
                                f"{part.name}[{index}]: reserved bytes not zero")
            continue
        if reserved != b"\0\0\0":
            raise malformed(f"{part.name}[{index}]: reserved bytes not zero")
        raw_len = full if index < last else block_length(part, index)
        if kind == KIND_RAW:
            if stored != raw_len or where != offset:
                raise malformed(f"{part.name}[{index}]: raw block size/offset out of place")
        elif kind in COMPRESSED_KINDS:
            if not 0 < stored < raw_len or where != offset:
                raise malformed(f"{part.name}[{index}]: compressed block size/offset out of place")
        else:
            raise malformed(f"{part.name}[{index}]: unknown block kind {kind}")
        offset += stored
    if offset - start_offset != part.stored_size:
        raise malformed(f"{part.name}: stored size {offset - start_offset} does not match "
                        f"the manifest's {part.stored_size}")
    return BlockTable(data)


def _edl(obj: object) -> "EdlSpec":
    from zflash.package.edlspec import edl_from_json
    return edl_from_json(obj)


def block_length(part: PartitionEntry, index: int) -> int:
    """Raw length of block ``index``: the last block may be short."""
    return min(part.block_size, part.size - index * part.block_size)
