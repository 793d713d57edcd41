"""The emulated EDL device's storage: one sector-addressed file per LUN, with a real GPT.

``LunFiles`` implements the Firehose programmer's ``Storage`` protocol over ``lun<N>.img``
files (erased sectors read as zeros). ``EdlProfile`` is the device's identity and layout;
``create_state`` makes a new state directory: the LUN files with both GPT copies, factory
images in slot a (active, successful) and slot b, vbmeta partitions with a rollback index.
The default profile is the zx-demo EDL layout the samples are built for.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zflash.disk import avb
from zflash.disk.gpt import SLOT_BYTE_SHIFT, Gpt, encode, new_gpt, parse_disk, write_into
from zflash.errors import Code, ZflashError

KIB = 1024
TYPE_GUID = uuid.UUID("97d7b011-54da-4835-b3c4-917ad6e73d74")  # Qualcomm "system" type
SLOT_A_BYTE = 0x7F  # priority 3, active, 7 tries, successful
SLOT_B_BYTE = 0x7A  # priority 2, 7 tries, successful (a bootable fallback)
#: zx-demo EDL layout: LUN 0 holds the A/B pairs, LUN 1 the unslotted modem (bytes)
ZX_DEMO_LUNS: tuple[tuple[tuple[str, int], ...], ...] = (
    (("boot_a", 128 * KIB), ("boot_b", 128 * KIB), ("system_a", 512 * KIB),
     ("system_b", 512 * KIB), ("vendor_a", 256 * KIB), ("vendor_b", 256 * KIB),
     ("vbmeta_a", 16 * KIB), ("vbmeta_b", 16 * KIB), ("userdata", 0)),
    (("modem", 256 * KIB), ("misc", 16 * KIB)),
)
LUN_BYTES = (4 << 20, 1 << 20)
BASEBAND_OFFSET = 0x200  # where the modem image keeps its baseband id
BASEBAND_LENGTH = 32


def test_programmer(variant: str = "zx-demo") -> bytes:
    """The TEST-ONLY programmer image: an ELF-looking header whose u32 at 0x30 is the image
    size, then seeded filler. The emulated boot ROM trusts one such image by SHA-256."""
    body = hashlib.sha256(variant.encode()).digest() * 256  # 8 KiB
    text = f"zflash TEST-ONLY Firehose programmer ({variant}); never load on hardware".encode()
    size = 0x34 + len(text) + len(body)
    header = bytearray(0x34)
    header[:4] = b"\x7fELF"
    header[4:8] = bytes([1, 1, 1, 0])  # 32-bit, little-endian, version 1
    header[0x30:0x34] = size.to_bytes(4, "little")
    return bytes(header) + text + body


@dataclass
class EdlProfile:
    """Identity (what Sahara reports, the trusted programmer) and layout of a new device."""

    serial: int = 0x5A1EE025
    hw_id: str = "000a50e100514985"  # msm_id 0x000a50e1, OEM 0x0051, model 0x4985
    oem_key_hash: str = hashlib.sha256(b"zx-demo TEST-ONLY OEM root key").hexdigest()
    programmer_sha256: str = hashlib.sha256(test_programmer()).hexdigest()
    sector_size: int = 4096
    luns: list[list[list[object]]] = field(
        default_factory=lambda: [[list(p) for p in lun] for lun in ZX_DEMO_LUNS])
    lun_bytes: list[int] = field(default_factory=lambda: list(LUN_BYTES))
    rollback_index: int = 2  # in both vbmeta partitions, and stored by the device
    baseband: str = "ZXB-100"

    @property
    def memory_name(self) -> str:
        return "ufs" if self.sector_size == 4096 else "emmc"

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> "EdlProfile":
        try:
            return cls(**data)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ZflashError(Code.USAGE, f"EDL profile: {exc}") from None


class LunFiles:
    """Sector storage over ``lun<N>.img`` (the Firehose ``Storage`` protocol)."""

    def __init__(self, root: Path, sector_size: int) -> None:
        self.root, self._sector_size = Path(root), sector_size
        self.paths = sorted(self.root.glob("lun*.img"), key=lambda p: int(p.stem[3:]))
        if not self.paths:
            raise ZflashError(Code.USAGE, f"{root}: no lun*.img files")
        self._fds = [os.open(p, os.O_RDWR) for p in self.paths]
        self._sizes = [p.stat().st_size // sector_size for p in self.paths]

    @property
    def sector_size(self) -> int:
        return self._sector_size

    @property
    def lun_count(self) -> int:
        return len(self._fds)

    def num_sectors(self, lun: int) -> int:
        return self._sizes[lun]

    def read(self, lun: int, start: int, count: int) -> bytes:
        return os.pread(self._fds[lun], count * self._sector_size, start * self._sector_size)

    def write(self, lun: int, start: int, data: bytes | bytearray | memoryview) -> None:
        os.pwrite(self._fds[lun], data, start * self._sector_size)

    def erase(self, lun: int, start: int, count: int) -> None:
        step = 256
        for first in range(start, start + count, step):
            n = min(step, start + count - first)
            os.pwrite(self._fds[lun], bytes(n * self._sector_size), first * self._sector_size)

    def gpt(self, lun: int) -> Gpt:
        return parse_disk(self.read(lun, 0, self._sizes[lun]), self._sector_size)

    def write_gpt(self, lun: int, gpt: Gpt) -> None:
        """Both copies (primary after the MBR, backup at the end), fresh CRCs."""
        head, tail = encode(gpt)
        self.write(lun, 1, head[self._sector_size:])
        self.write(lun, gpt.backup_entries_lba, tail)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def factory_image(name: str, size: int, profile: EdlProfile) -> bytes:
    """What a partition holds from the factory (slot a and b alike)."""
    if name.startswith("vbmeta"):
        return avb.build_vbmeta(profile.rollback_index, release="zx-demo factory")
    if name == "modem":
        image = bytearray("zx-demo factory modem".encode().ljust(BASEBAND_OFFSET, b"\0"))
        image += profile.baseband.encode().ljust(BASEBAND_LENGTH, b"\0")
        return bytes(image)
    if name.startswith(("boot", "system", "vendor")):
        return (f"zx-demo factory {name[:-2]} ".encode() * 64)[:min(size, 4096)]
    return b""


def create_state(root: Path, profile: EdlProfile) -> None:
    """A new device: ``edl.json`` and the LUN files with their GPTs and factory images."""
    root.mkdir(parents=True, exist_ok=True)
    ss = profile.sector_size
    for lun, (layout, total) in enumerate(zip(profile.luns, profile.lun_bytes)):
        parts = [(str(name), -(-int(size) // ss) if int(size) else 0)  # type: ignore[call-overload]
                 for name, size in layout]
        gpt = new_gpt(total // ss, ss, parts, type_guid=TYPE_GUID, seed=f"zx-demo-lun{lun}")
        marked = []
        for part in gpt.partitions:
            value = SLOT_A_BYTE if part.name.endswith("_a") else \
                SLOT_B_BYTE if part.name.endswith("_b") else 0
            marked.append(part.with_slot_byte(value) if value else part)
        gpt = Gpt(gpt.sector_size, gpt.num_sectors, gpt.disk_guid, gpt.first_usable,
                  gpt.last_usable, tuple(marked), gpt.num_entries)
        image = bytearray(total)
        write_into(image, gpt)
        for part in gpt.partitions:
            data = factory_image(part.name, part.sectors * ss, profile)
            image[part.first_lba * ss:part.first_lba * ss + len(data)] = data
        (root / f"lun{lun}.img").write_bytes(bytes(image))
    state = {"profile": profile.to_json(), "stored_rollback": {"0": profile.rollback_index},
             "boots": []}
    (root / "edl.json").write_text(json.dumps(state, indent=1, sort_keys=True))


__all__ = ["EdlProfile", "LunFiles", "SLOT_BYTE_SHIFT", "create_state", "factory_image",
           "test_programmer"]
