"""The emulated device's persistent storage: a state directory that survives kill -9.

Layout::

    STATE/profile.json                identity and layout (written once)
    STATE/partitions/NAME_a.img ...   slotted partitions, one file per slot
    STATE/partitions/NAME.img         unslotted partitions
    STATE/meta.json                   slot state, stored rollback indexes, committed hashes
    STATE/staging/DIGEST/             an update in progress (journal, head, staged images)
    STATE/heads/DIGEST.bin            the head of the build a slot holds (meta "builds")

Metadata is only ever replaced whole (temp file, fsync, rename, fsync of the directory), so a
crash leaves either the old or the new version. Partition data is written in place only into
slots that are not running and into staging files; the journal records a block as verified
only after its data was fsynced, so a crash costs at most the blocks since the last sync.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zflash.errors import Code, ZflashError
from zflash.package.format import canonical_json


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_head(path: Path, head: bytes) -> None:
    """A package head as the device keeps it: the bytes, then their SHA-256, so a head that
    rotted on flash is told from one that no longer verifies (read_head)."""
    atomic_write(path, head + hashlib.sha256(head).digest())


def read_head(path: Path) -> bytes | None:
    """The head ``write_head`` stored, or None when it is missing or its bytes changed."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head, check = data[:-32], data[-32:]
    if len(data) <= 32 or hashlib.sha256(head).digest() != check:
        return None
    return head


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, canonical_json(obj))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ZflashError(Code.INTERNAL, f"emulator state {path} unreadable: {exc}") from None


@dataclass
class PartitionSpec:
    name: str
    size: int
    slotted: bool


@dataclass
class Profile:
    """Identity and layout of an emulated device."""

    product: str = "zx-demo"
    hardware_revision: str = "A01"
    baseband: str = "ZXB-100"
    serial: str = "ZXEMU0001"
    partitions: list[PartitionSpec] = field(default_factory=lambda: [
        PartitionSpec("boot", 256 << 10, True), PartitionSpec("system", 1 << 20, True),
        PartitionSpec("vendor", 512 << 10, True), PartitionSpec("logo", 128 << 10, False),
        PartitionSpec("userdata", 1 << 20, False)])
    cache_size: int = 512 << 10
    rollback_indexes: dict[int, int] = field(default_factory=lambda: {0: 2})
    trusted_keys: list[str] = field(default_factory=list)  # PEM texts
    max_download_size: int = 256 << 20
    #: ZDL block codecs the device offers ("none" always); None = all the emulator can decode
    zdl_codecs: tuple[str, ...] | None = None

    @property
    def flash_size(self) -> int:
        return self.cache_size + sum(p.size * (2 if p.slotted else 1) for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        return {"product": self.product, "hardware_revision": self.hardware_revision,
                "baseband": self.baseband, "serial": self.serial,
                "partitions": [{"name": p.name, "size": p.size, "slotted": p.slotted}
                               for p in self.partitions],
                "cache_size": self.cache_size,
                "rollback_indexes": {str(k): v for k, v in self.rollback_indexes.items()},
                "trusted_keys": self.trusted_keys, "max_download_size": self.max_download_size,
                "zdl_codecs": list(self.zdl_codecs) if self.zdl_codecs is not None else None}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Profile":
        try:
            defaults = cls()
            parts = [PartitionSpec(str(p["name"]), int(p["size"]), bool(p["slotted"]))
                     for p in obj.get("partitions", [])] or defaults.partitions
            return cls(product=str(obj.get("product", defaults.product)),
                       hardware_revision=str(obj.get("hardware_revision",
                                                     defaults.hardware_revision)),
                       baseband=str(obj.get("baseband", defaults.baseband)),
                       serial=str(obj.get("serial", defaults.serial)), partitions=parts,
                       cache_size=int(obj.get("cache_size", defaults.cache_size)),
                       rollback_indexes={int(k): int(v) for k, v in
                                         obj.get("rollback_indexes",
                                                 defaults.rollback_indexes).items()},
                       trusted_keys=[str(k) for k in obj.get("trusted_keys", [])],
                       max_download_size=int(obj.get("max_download_size",
                                                     defaults.max_download_size)),
                       zdl_codecs=_codec_names(obj.get("zdl_codecs")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ZflashError(Code.USAGE, f"bad device profile: {exc}") from None


def _codec_names(value: Any) -> tuple[str, ...] | None:
    """A profile's ``zdl_codecs``: known names, "none" among them (a device must take raw)."""
    if value is None:
        return None
    names = tuple(str(v) for v in value)
    known = {"none", "zlib", "zstd"}
    if "none" not in names or not set(names) <= known or len(set(names)) != len(names):
        raise ValueError(f"zdl_codecs must name distinct codecs of {sorted(known)}, "
                         "\"none\" included")
    return names


SLOTS = ("a", "b")


def initial_meta(profile: Profile) -> dict[str, Any]:
    """A factory-fresh device: slot a running and successful, slot b bootable as fallback."""
    return {"current_slot": "a",
            "slots": {"a": {"priority": 15, "tries_left": 0, "successful": True},
                      "b": {"priority": 14, "tries_left": 0, "successful": True}},
            "rollback": {str(k): v for k, v in profile.rollback_indexes.items()},
            "committed": {"a": {}, "b": {}, "": {}},
            "pending_rollback": {"a": {}, "b": {}},
            "last_boot": None}


class Storage:
    """Files of one emulated device; every method leaves the directory consistent."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.profile = Profile.from_json(read_json(self.root / "profile.json"))
        self.meta: dict[str, Any] = read_json(self.root / "meta.json")

    @classmethod
    def create(cls, root: Path, profile: Profile) -> "Storage":
        """Create a state directory, or open it if it already holds a device."""
        root = Path(root)
        if (root / "profile.json").exists():
            return cls(root)
        try:
            return cls._create(root, profile)
        except OSError as exc:
            raise ZflashError(Code.FILE_UNWRITABLE, f"cannot create the device's state in "
                                                    f"{root}: {exc.strerror}") from None

    @classmethod
    def _create(cls, root: Path, profile: Profile) -> "Storage":
        (root / "partitions").mkdir(parents=True, exist_ok=True)
        (root / "staging").mkdir(exist_ok=True)
        for spec in profile.partitions:
            for suffix in (("_a", "_b") if spec.slotted else ("",)):
                path = root / "partitions" / f"{spec.name}{suffix}.img"
                with open(path, "wb") as handle:
                    handle.truncate(spec.size)
        meta = initial_meta(profile)
        write_json(root / "meta.json", meta)
        write_json(root / "profile.json", profile.to_json())  # last: marks the device complete
        return cls(root)

    def save_meta(self) -> None:
        write_json(self.root / "meta.json", self.meta)

    def partition_path(self, name: str, slot: str | None) -> Path:
        spec = self.spec(name)
        if spec.slotted:
            if slot not in SLOTS:
                raise ZflashError(Code.SLOT, f"partition {name} needs a slot (a or b)")
            return self.root / "partitions" / f"{name}_{slot}.img"
        return self.root / "partitions" / f"{name}.img"

    def spec(self, name: str) -> PartitionSpec:
        for spec in self.profile.partitions:
            if spec.name == name:
                return spec
        raise ZflashError(Code.NO_SUCH_PARTITION, f"no partition {name!r}")

    def staging_dir(self, digest: str) -> Path:
        return self.root / "staging" / digest

    def head_path(self, digest: str) -> Path:
        return self.root / "heads" / f"{digest}.bin"

    def store_head(self, digest: str, head: bytes) -> None:
        """Keep the head of a build a slot is about to hold (before the meta names it)."""
        path = self.head_path(digest)
        if read_head(path) == head:
            return  # a re-flash of the build the other slot holds: already kept
        path.parent.mkdir(exist_ok=True)
        write_head(path, head)

    def prune_heads(self, keep: set[str]) -> None:
        """Drop the heads of builds no slot holds any more: at most a few stay."""
        folder = self.root / "heads"
        if folder.is_dir():
            for path in folder.iterdir():
                if path.stem not in keep or path.suffix != ".bin":
                    path.unlink(missing_ok=True)

    def staging_used(self) -> int:
        total = 0
        for path in (self.root / "staging").rglob("*"):
            if path.is_file():
                total += path.stat().st_size
        return total

    def clear_staging(self, keep: str | None = None) -> None:
        for entry in (self.root / "staging").iterdir():
            if entry.name != keep:
                shutil.rmtree(entry, ignore_errors=True)
