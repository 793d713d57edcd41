"""GUID partition tables: parse, build, and switch A/B slots the way Qualcomm's bootctrl does.

Layout (UEFI; REFERENCE-EDL 4-5): LBA 0 protective MBR, LBA 1 header, entries from LBA 2; the
backup entries end just before the backup header on the last LBA. Header and entry-array
CRC32s are checked on read and recomputed on every build, in both copies. Works for any
sector size (512 and 4096 in practice). The A/B state lives in byte 6 of each entry's
attribute word (bits 48..55): priority 0-3, active, tries 0-7, successful, unbootable.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Iterable

from zflash.errors import Code, ZflashError

SIGNATURE = b"EFI PART"
REVISION = 0x00010000
HEADER_SIZE = 92
ENTRY_SIZE = 128
DEFAULT_ENTRIES = 128
MAX_ENTRIES = 1024  # a header claiming more is refused, not read
MAX_ENTRY_SIZE = 1024  # likewise (UEFI: 128 * 2^n; every real table uses 128): <= 1 MiB read

_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")

# Byte 6 of the attributes (bits 48..55).
PRIORITY_MASK = 0x03
ACTIVE = 0x04
TRIES_SHIFT = 3
TRIES_MASK = 0x38
SUCCESSFUL = 0x40
UNBOOTABLE = 0x80
AB_SLOT_ACTIVE_VAL = 0x3F  # AOSP Qualcomm bootctrl: priority 3, active, 7 tries
SLOT_BYTE_SHIFT = 48
UFS_BOOT_LUN_PARTITIONS = ("xbl", "xbl_config")  # slot chosen by bBootLunEn, not by GPT
SLOTS = ("a", "b")


def _bad(why: str) -> ZflashError:
    return ZflashError(Code.BAD_GPT, why)


@dataclass(frozen=True)
class Partition:
    """One used entry. ``last_lba`` is inclusive; ``index`` is its slot in the entry array."""

    name: str
    first_lba: int
    last_lba: int
    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    attributes: int = 0
    index: int = 0

    @property
    def sectors(self) -> int:
        return self.last_lba - self.first_lba + 1

    @property
    def slot_byte(self) -> int:
        return (self.attributes >> SLOT_BYTE_SHIFT) & 0xFF

    def with_slot_byte(self, value: int) -> Partition:
        mask = 0xFF << SLOT_BYTE_SHIFT
        return replace(self, attributes=(self.attributes & ~mask) | (value << SLOT_BYTE_SHIFT))


@dataclass(frozen=True)
class Gpt:
    """A whole table: disk geometry, header fields, and the used entries in array order."""

    sector_size: int
    num_sectors: int  # of the disk (LUN)
    disk_guid: uuid.UUID
    first_usable: int
    last_usable: int
    partitions: tuple[Partition, ...]
    num_entries: int = DEFAULT_ENTRIES
    damaged: tuple[str, ...] = field(default=(), compare=False)  # copies that failed checks

    @property
    def entry_sectors(self) -> int:
        return -(-self.num_entries * ENTRY_SIZE // self.sector_size)

    @property
    def backup_entries_lba(self) -> int:
        return self.num_sectors - 1 - self.entry_sectors

    def find(self, name: str) -> Partition:
        """The partition called ``name``; NO_SUCH_PARTITION otherwise."""
        for part in self.partitions:
            if part.name == name:
                return part
        raise ZflashError(Code.NO_SUCH_PARTITION, f"no partition {name!r} in the GPT")

    def get(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)


# --- reading -------------------------------------------------------------------------------
Reader = Callable[[int, int], bytes]  # (first LBA, sector count) -> bytes


def read_gpt(read: Reader, num_sectors: int, sector_size: int) -> Gpt:
    """The table via ``read``: the primary copy, or the backup when the primary is damaged.

    ``damaged`` names a copy that failed its checks, or a valid backup that disagrees with
    the valid primary (a rewrite interrupted between the two copies: the primary, which the
    boot loader reads, wins), so a caller can repair it. Neither copy valid is BAD_GPT (9047).
    """
    damaged: list[str] = []
    copies: list[Gpt] = []
    errors = []
    for name, lba in (("primary", 1), ("backup", num_sectors - 1)):
        try:
            copies.append(_read_copy(read, lba, num_sectors, sector_size))
        except ZflashError as err:
            damaged.append(name)
            errors.append(f"{name}: {err.detail}")
    if not copies:
        raise _bad("no valid GPT: " + "; ".join(errors))
    if len(copies) == 2 and copies[0] != copies[1]:
        damaged.append("backup")
    return replace(copies[0], damaged=tuple(damaged))


def parse_disk(image: bytes | bytearray | memoryview, sector_size: int) -> Gpt:
    """``read_gpt`` over a whole disk image held in memory."""
    if len(image) % sector_size or len(image) < 4 * sector_size:
        raise _bad(f"a disk image of {len(image)} bytes is not whole {sector_size}-byte sectors")
    view = memoryview(image)
    return read_gpt(lambda lba, n: bytes(view[lba * sector_size:(lba + n) * sector_size]),
                    len(image) // sector_size, sector_size)


def _read_copy(read: Reader, lba: int, num_sectors: int, sector_size: int) -> Gpt:
    sector = read(lba, 1)
    if len(sector) != sector_size:
        raise _bad(f"short read of LBA {lba}")
    (sig, revision, size, crc, _reserved, current, backup, first_usable, last_usable, disk_guid,
     entries_lba, num_entries, entry_size, entries_crc) = _HEADER.unpack_from(sector)
    if sig != SIGNATURE:
        raise _bad(f"no 'EFI PART' signature at LBA {lba}")
    if not HEADER_SIZE <= size <= sector_size:
        raise _bad(f"header size {size}")
    header = bytearray(sector[:size])
    header[16:20] = bytes(4)
    if zlib.crc32(header) != crc:
        raise _bad(f"header CRC mismatch at LBA {lba}")
    if current != lba:
        raise _bad(f"header at LBA {lba} says it is at {current}")
    if not ENTRY_SIZE <= entry_size <= MAX_ENTRY_SIZE or entry_size % 8 or \
            not 0 < num_entries <= MAX_ENTRIES:
        raise _bad(f"entry array of {num_entries} x {entry_size} bytes")
    array_sectors = -(-num_entries * entry_size // sector_size)
    if not (first_usable <= last_usable < num_sectors and
            0 < entries_lba and entries_lba + array_sectors <= num_sectors):
        raise _bad("header fields point outside the disk")
    array = read(entries_lba, array_sectors)[:num_entries * entry_size]
    if len(array) != num_entries * entry_size or zlib.crc32(array) != entries_crc:
        raise _bad(f"entry array CRC mismatch (copy at LBA {lba})")
    parts = []
    for index in range(num_entries):
        type_b, unique_b, first, last, attrs, name_b = _ENTRY.unpack_from(array,
                                                                           index * entry_size)
        if type_b == bytes(16):
            continue
        if not first_usable <= first <= last <= last_usable:
            raise _bad(f"entry {index + 1} spans LBA {first}..{last}, outside the usable area")
        name = name_b.decode("utf-16-le", "replace").split("\0", 1)[0]
        parts.append(Partition(name, first, last, uuid.UUID(bytes_le=type_b),
                               uuid.UUID(bytes_le=unique_b), attrs, index))
    return Gpt(sector_size, num_sectors, uuid.UUID(bytes_le=disk_guid), first_usable,
               last_usable, tuple(parts), num_entries)


# --- building ------------------------------------------------------------------------------
def new_gpt(num_sectors: int, sector_size: int, layout: Iterable[tuple[str, int]],
            *, type_guid: uuid.UUID | None = None, align: int = 1,
            num_entries: int = DEFAULT_ENTRIES, seed: str = "zflash") -> Gpt:
    """A table with partitions ``(name, sectors)`` in order from the first usable LBA
    (``sectors`` 0 = the rest of the disk). GUIDs derive from ``seed``, so builds repeat."""
    entry_sectors = -(-num_entries * ENTRY_SIZE // sector_size)
    first_usable = 2 + entry_sectors
    last_usable = num_sectors - 2 - entry_sectors
    kind = type_guid or uuid.UUID("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7")
    parts = []
    lba = first_usable
    for index, (name, sectors) in enumerate(layout):
        lba = -(-lba // align) * align
        last = last_usable if sectors == 0 else lba + sectors - 1
        if last > last_usable or sectors < 0:
            raise ZflashError(Code.STORAGE, f"partition {name!r} does not fit the disk")
        parts.append(Partition(name, lba, last, kind, uuid.uuid5(uuid.NAMESPACE_OID,
                                                                 f"{seed}/{name}"), 0, index))
        lba = last + 1
    return Gpt(sector_size, num_sectors, uuid.uuid5(uuid.NAMESPACE_OID, seed), first_usable,
               last_usable, tuple(parts), num_entries)


def protective_mbr(gpt: Gpt) -> bytes:
    """LBA 0: one partition of type 0xEE covering the disk (capped at 32 bits)."""
    mbr = bytearray(gpt.sector_size)
    struct.pack_into("<B3sB3sII", mbr, 446, 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1,
                     min(gpt.num_sectors - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def entry_array(gpt: Gpt) -> bytes:
    """The entry array, padded to whole sectors."""
    out = bytearray(gpt.entry_sectors * gpt.sector_size)
    for part in gpt.partitions:
        if not 0 <= part.index < gpt.num_entries:
            raise ZflashError(Code.INTERNAL, f"entry index {part.index} out of range")
        name = part.name.encode("utf-16-le")
        if len(name) > 72:
            raise ZflashError(Code.USAGE, f"partition name {part.name!r} is over 36 characters")
        _ENTRY.pack_into(out, part.index * ENTRY_SIZE, part.type_guid.bytes_le,
                         part.unique_guid.bytes_le, part.first_lba, part.last_lba,
                         part.attributes, name)
    return bytes(out)


def header(gpt: Gpt, backup: bool, array: bytes) -> bytes:
    """One header sector (primary at LBA 1, or backup on the last LBA), CRCs filled in."""
    last = gpt.num_sectors - 1
    current, other = (last, 1) if backup else (1, last)
    entries_lba = gpt.backup_entries_lba if backup else 2
    crc = zlib.crc32(array[:gpt.num_entries * ENTRY_SIZE])
    fields = [SIGNATURE, REVISION, HEADER_SIZE, 0, 0, current, other, gpt.first_usable,
              gpt.last_usable, gpt.disk_guid.bytes_le, entries_lba, gpt.num_entries,
              ENTRY_SIZE, crc]
    fields[3] = zlib.crc32(_HEADER.pack(*fields))
    return _HEADER.pack(*fields).ljust(gpt.sector_size, b"\0")


def encode(gpt: Gpt) -> tuple[bytes, bytes]:
    """``(head, tail)``: write head at LBA 0 (MBR, header, entries) and tail at
    ``gpt.backup_entries_lba`` (entries, backup header)."""
    array = entry_array(gpt)
    if gpt.first_usable < 2 + gpt.entry_sectors or \
            gpt.last_usable >= gpt.backup_entries_lba:
        raise ZflashError(Code.INTERNAL, "usable area overlaps the partition arrays")
    head = protective_mbr(gpt) + header(gpt, False, array) + array
    tail = array + header(gpt, True, array)
    return head, tail


def write_into(image: bytearray, gpt: Gpt) -> None:
    """Both copies into a whole-disk image in memory (the emulator's and tests' helper)."""
    if len(image) != gpt.num_sectors * gpt.sector_size:
        raise ZflashError(Code.INTERNAL, "image size does not match the GPT's disk size")
    head, tail = encode(gpt)
    image[:len(head)] = head
    start = gpt.backup_entries_lba * gpt.sector_size
    image[start:start + len(tail)] = tail


# --- A/B slots -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SlotBits:
    """The A/B fields of byte 6 of a partition's attributes."""

    priority: int
    active: bool
    tries: int
    successful: bool
    unbootable: bool

    @classmethod
    def from_byte(cls, value: int) -> SlotBits:
        return cls(value & PRIORITY_MASK, bool(value & ACTIVE),
                   (value & TRIES_MASK) >> TRIES_SHIFT, bool(value & SUCCESSFUL),
                   bool(value & UNBOOTABLE))

    def to_byte(self) -> int:
        if not 0 <= self.priority <= 3 or not 0 <= self.tries <= 7:
            raise ZflashError(Code.INTERNAL, "slot priority or tries out of range")
        return (self.priority | (ACTIVE if self.active else 0) | (self.tries << TRIES_SHIFT)
                | (SUCCESSFUL if self.successful else 0) | (UNBOOTABLE if self.unbootable else 0))


def slot_pairs(gpt: Gpt, skip: Collection[str] = ()) -> list[tuple[Partition, Partition]]:
    """Every ``<p>_a`` with a ``<p>_b`` twin, except base names in ``skip``."""
    pairs = []
    for part in gpt.partitions:
        if part.name.endswith("_a") and part.name[:-2] not in skip:
            twin = gpt.get(part.name[:-2] + "_b")
            if twin is not None:
                pairs.append((part, twin))
    return pairs


def slot_state(gpt: Gpt, probe: str = "boot") -> dict[str, SlotBits]:
    """Slot state as bootctrl reads it: from ``boot_a``/``boot_b``. {} without A/B."""
    a, b = gpt.get(f"{probe}_a"), gpt.get(f"{probe}_b")
    if a is None or b is None:
        return {}
    return {"a": SlotBits.from_byte(a.slot_byte), "b": SlotBits.from_byte(b.slot_byte)}


def active_slot(gpt: Gpt, probe: str = "boot") -> str | None:
    """The slot whose ``boot`` entry has the active bit (the higher priority if both do)."""
    state = slot_state(gpt, probe)
    active = [s for s in SLOTS if state.get(s) and state[s].active]
    if not active:
        return None
    return max(active, key=lambda s: state[s].priority)


def _check_slot(slot: str) -> str:
    slot = slot.lstrip("_")
    if slot not in SLOTS:
        raise ZflashError(Code.SLOT, f"no slot {slot!r} (a or b)")
    return slot


def switch_slot(gpt: Gpt, slot: str, skip: Collection[str] = ()) -> Gpt:
    """The table after making ``slot`` active, as AOSP's Qualcomm bootctrl does.

    For every A/B pair: the target entry takes the type GUID of the currently active entry
    and byte 6 = 0x3F (priority 3, active, 7 tries, not successful, not unbootable); the other
    takes the inactive type GUID and loses only its active bit. Encode the result to write
    both copies with fresh CRCs. ``skip`` is UFS_BOOT_LUN_PARTITIONS on UFS.
    """
    target = _check_slot(slot)
    pairs = slot_pairs(gpt, skip)
    if not pairs:
        raise ZflashError(Code.SLOT, "the GPT has no A/B partition pairs")
    changed: dict[int, Partition] = {}
    for a, b in pairs:
        new, old = (a, b) if target == "a" else (b, a)
        if old.slot_byte & ACTIVE and not new.slot_byte & ACTIVE:
            new, old = replace(new, type_guid=old.type_guid), replace(old, type_guid=new.type_guid)
        changed[new.index] = new.with_slot_byte(AB_SLOT_ACTIVE_VAL)
        changed[old.index] = old.with_slot_byte(old.slot_byte & ~ACTIVE)
    return replace(gpt, partitions=tuple(changed.get(p.index, p) for p in gpt.partitions),
                   damaged=())


def mark_slot(gpt: Gpt, slot: str, *, successful: bool = False, unbootable: bool = False,
              skip: Collection[str] = ()) -> Gpt:
    """OR the successful (0x40) or unbootable (0x80) bit into every A/B entry of ``slot``."""
    target = _check_slot(slot)
    bits = (SUCCESSFUL if successful else 0) | (UNBOOTABLE if unbootable else 0)
    changed = {}
    for a, b in slot_pairs(gpt, skip):
        part = a if target == "a" else b
        changed[part.index] = part.with_slot_byte(part.slot_byte | bits)
    return replace(gpt, partitions=tuple(changed.get(p.index, p) for p in gpt.partitions),
                   damaged=())
