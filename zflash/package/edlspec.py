"""The optional ``edl`` object of a manifest: what a Qualcomm EDL device must be to take it.

An EDL device reports no product name: the boot ROM identifies the part by its MSM HW id
(SoC, OEM, model) and the hash of the OEM key its fuses trust. A package for EDL lists the
pairs it is built for, may carry the Firehose programmer (signed with the manifest, so the
programmer a technician loads is the one the builder chose), and may say where the baseband
id is readable on the device. Layout: protocols/zpk.md section 3.1. Absent for other
download modes, so their manifests (and signatures) are unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from zflash.errors import Code, ZflashError
from zflash.fields import Fields

MAX_PROGRAMMER = 640 << 10  # base64 of it (~853 KiB) keeps the manifest under its 1 MiB
MAX_BASEBAND_LENGTH = 64
_HW_ID = re.compile(r"^[0-9a-f]{16}$")
_KEY_HASH = re.compile(r"^(?:[0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{128})$")
_PART = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
MAX_IMPORT_ENTRIES = 512
MAX_IMPORT_TEXT = 200
_SECTOR_EXPR = re.compile(r"^(?:[0-9]{1,20}|NUM_DISK_SECTORS-[0-9]{1,20}\.?)$")


def _malformed(detail: str) -> ZflashError:
    return ZflashError(Code.MALFORMED_PACKAGE, f"manifest edl: {detail}")


_F = Fields(_malformed)


@dataclass(frozen=True)
class Programmer:
    """A Firehose programmer image carried in the manifest."""

    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256,
                "data": base64.b64encode(self.data).decode("ascii")}


@dataclass(frozen=True)
class BasebandSource:
    """Where the device's baseband id can be read: ``length`` bytes (NUL-padded ASCII) at
    ``offset`` of partition ``partition`` (of the running slot when it is slotted)."""

    partition: str
    offset: int
    length: int

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "offset": self.offset, "length": self.length}


@dataclass(frozen=True)
class ImportEntry:
    """One ``<program>``/``<erase>`` entry of an imported flat build and what became of it:
    ``partition`` (+ ``slot``) when its image is a package partition, else ``""`` and
    ``note`` says why not (GPT, no image, second copy of a slot pair...)."""

    file: str
    line: int
    tag: str
    label: str
    filename: str
    lun: int
    start_sector: str
    sectors: int
    partition: str = ""
    slot: str = ""
    note: str = ""

    FIELDS = ("file", "line", "tag", "label", "filename", "lun", "start_sector", "sectors",
              "partition", "slot", "note")

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}


@dataclass(frozen=True)
class ImportPatches:
    """What one patch XML held: ``disk`` device patches, ``host`` patches of the build's
    own GPT files, and ``note``: what zflash did with them (protocols/zpk.md 3.1)."""

    file: str
    disk: int
    host: int
    note: str

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "disk": self.disk, "host": self.host, "note": self.note}


@dataclass(frozen=True)
class FlatBuild:
    """The mapping from a Qualcomm flat build (rawprogram/patch XML) to the package."""

    sector_size: int
    entries: tuple[ImportEntry, ...]
    patches: tuple[ImportPatches, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"sector_size": self.sector_size,
                "entries": [e.to_json() for e in self.entries],
                "patches": [p.to_json() for p in self.patches]}


@dataclass(frozen=True)
class EdlSpec:
    hw_ids: tuple[str, ...]
    oem_key_hashes: tuple[str, ...]
    programmer: Programmer | None = None
    baseband: BasebandSource | None = None
    flat_build: FlatBuild | None = None

    def allows(self, hw_id: str, key_hash: str) -> tuple[bool, bool]:
        """(HW id allowed, key hash allowed)."""
        return hw_id.lower() in self.hw_ids, key_hash.lower() in self.oem_key_hashes

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hw_ids": list(self.hw_ids),
                               "oem_key_hashes": list(self.oem_key_hashes)}
        if self.programmer is not None:
            out["programmer"] = self.programmer.to_json()
        if self.baseband is not None:
            out["baseband"] = self.baseband.to_json()
        if self.flat_build is not None:
            out["flat_build"] = self.flat_build.to_json()
        return out


def _list(value: Any, what: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= 64:
        raise _malformed(f"{what} must be a list of 1..64 entries")
    for item in value:
        if not isinstance(item, str) or not pattern.match(item):
            raise _malformed(f"{what}: {str(item)[:80]!r} is not lowercase hex of the "
                             "right length")
    if len(set(value)) != len(value):
        raise _malformed(f"{what} has duplicates")
    return tuple(value)


def _object(value: Any, what: str, fields: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != fields:
        raise _malformed(f"{what} must have exactly the fields {sorted(fields)}")
    return value


def edl_from_json(obj: Any) -> EdlSpec:
    """Validate untrusted JSON; every bad value is MALFORMED_PACKAGE."""
    if not isinstance(obj, dict) or not {"hw_ids", "oem_key_hashes"} <= set(obj) or \
            not set(obj) <= {"hw_ids", "oem_key_hashes", "programmer", "baseband",
                             "flat_build"}:
        raise _malformed("needs hw_ids and oem_key_hashes, optionally programmer, baseband, "
                         "flat_build")
    programmer = None
    if "programmer" in obj:
        raw = _object(obj["programmer"], "programmer", {"name", "sha256", "data"})
        name = _F.text(raw["name"], "programmer.name")
        text = raw["data"]
        if not isinstance(text, str) or len(text) > 4 * (MAX_PROGRAMMER // 3 + 1):
            raise _malformed(f"programmer.data must be base64 of at most {MAX_PROGRAMMER} "
                             "bytes")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _malformed("programmer.data is not base64") from None
        if not data or base64.b64encode(data).decode("ascii") != text:
            raise _malformed("programmer.data is empty or not in canonical base64")
        programmer = Programmer(name, data)
        if _F.hex64(raw["sha256"], "programmer.sha256") != programmer.sha256:
            raise _malformed("programmer.sha256 does not match its data")
    baseband = None
    if "baseband" in obj:
        raw = _object(obj["baseband"], "baseband", {"partition", "offset", "length"})
        part = raw["partition"]
        if not isinstance(part, str) or not _PART.match(part):
            raise _malformed(f"baseband.partition {str(part)[:40]!r} is not a partition name")
        baseband = BasebandSource(part, _F.uint(raw["offset"], "baseband.offset", 1 << 40),
                                  _F.uint(raw["length"], "baseband.length",
                                          MAX_BASEBAND_LENGTH))
        if baseband.length == 0:
            raise _malformed("baseband.length must be 1..64")
    flat = _flat_build(obj["flat_build"]) if "flat_build" in obj else None
    return EdlSpec(_list(obj["hw_ids"], "hw_ids", _HW_ID),
                   _list(obj["oem_key_hashes"], "oem_key_hashes", _KEY_HASH),
                   programmer, baseband, flat)


def _short(value: Any, what: str, empty: bool = True) -> str:
    if not isinstance(value, str) or len(value) > MAX_IMPORT_TEXT or \
            not all(0x20 <= ord(c) < 0x7F for c in value) or (not empty and not value):
        raise _malformed(f"{what} must be printable ASCII of at most {MAX_IMPORT_TEXT} "
                         "characters")
    return value


def _flat_build(value: Any) -> FlatBuild:
    raw = _object(value, "flat_build", {"sector_size", "entries", "patches"})
    sector = raw["sector_size"]
    if sector not in (512, 4096) or isinstance(sector, bool):
        raise _malformed("flat_build.sector_size must be 512 or 4096")
    items, patches = raw["entries"], raw["patches"]
    if not isinstance(items, list) or not 0 < len(items) <= MAX_IMPORT_ENTRIES:
        raise _malformed(f"flat_build.entries must list 1..{MAX_IMPORT_ENTRIES} entries")
    if not isinstance(patches, list) or len(patches) > 64:
        raise _malformed("flat_build.patches must list at most 64 patch files")
    entries = []
    for index, item in enumerate(items):
        where = f"flat_build.entries[{index}]"
        e = _object(item, where, set(ImportEntry.FIELDS))
        if e["tag"] not in ("program", "erase") or e["slot"] not in ("", "a", "b"):
            raise _malformed(f"{where}: tag must be program or erase, slot a, b or empty")
        start = _short(e["start_sector"], f"{where}.start_sector", empty=False)
        if not _SECTOR_EXPR.match(start):
            raise _malformed(f"{where}.start_sector {start!r} is neither a sector number "
                             "nor NUM_DISK_SECTORS-N.")
        part = _short(e["partition"], f"{where}.partition")
        if part and not _PART.match(part):
            raise _malformed(f"{where}.partition {part!r} is not a partition name")
        if e["slot"] and not part:
            raise _malformed(f"{where}: a slot without a partition")
        entries.append(ImportEntry(
            _short(e["file"], f"{where}.file", empty=False),
            _F.uint(e["line"], f"{where}.line", 1 << 32), e["tag"],
            _short(e["label"], f"{where}.label"), _short(e["filename"], f"{where}.filename"),
            _F.uint(e["lun"], f"{where}.lun", 31), start,
            _F.uint(e["sectors"], f"{where}.sectors", 1 << 40), part, e["slot"],
            _short(e["note"], f"{where}.note")))
    found = []
    for index, item in enumerate(patches):
        where = f"flat_build.patches[{index}]"
        p = _object(item, where, {"file", "disk", "host", "note"})
        found.append(ImportPatches(_short(p["file"], f"{where}.file", empty=False),
                                   _F.uint(p["disk"], f"{where}.disk", 1 << 16),
                                   _F.uint(p["host"], f"{where}.host", 1 << 16),
                                   _short(p["note"], f"{where}.note")))
    return FlatBuild(sector, tuple(entries), tuple(found))
