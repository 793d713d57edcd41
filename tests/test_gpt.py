"""GPT and vbmeta: our reader and writer against each other and against the stock sgdisk."""

from __future__ import annotations

import re
import struct
import subprocess
import uuid
import zlib
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import require_tool
from zflash.disk import avb, gpt
from zflash.errors import Code, ZflashError
from zflash.protocol import firehose as fh

LAYOUT = [("boot_a", 256), ("boot_b", 256), ("vbmeta_a", 8), ("vbmeta_b", 8), ("modem", 64),
          ("xbl_a", 16), ("xbl_b", 16), ("userdata", 0)]


def sgdisk(*args: str) -> str:
    tool = require_tool("sgdisk")
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def verify_ok(path: Path) -> None:
    out = sgdisk("-v", str(path))
    assert "No problems found" in out, out


def attributes(path: Path, number: int) -> int:
    match = re.search(r"Attribute flags: ([0-9a-fA-F]{16})", sgdisk("-i", str(number), str(path)))
    assert match
    return int(match.group(1), 16)


def image_of(table: gpt.Gpt) -> bytearray:
    image = bytearray(table.num_sectors * table.sector_size)
    gpt.write_into(image, table)
    return image


@pytest.mark.parametrize("sector_size, sectors", [(512, 16384), (4096, 2048)])
def test_build_and_parse_roundtrip(sector_size: int, sectors: int) -> None:
    table = gpt.new_gpt(sectors, sector_size, LAYOUT)
    image = image_of(table)
    parsed = gpt.parse_disk(image, sector_size)
    assert parsed == table and parsed.damaged == ()
    assert table.entry_sectors == 16384 // sector_size
    last = sectors - 1
    assert image[last * sector_size:last * sector_size + 8] == b"EFI PART"
    assert image[510:512] == b"\x55\xaa" and image[450] == 0xEE
    assert parsed.find("userdata").last_lba == table.last_usable
    assert table.last_usable == sectors - 2 - table.entry_sectors


def test_damaged_primary_falls_back_to_backup() -> None:
    table = gpt.new_gpt(2048, 4096, LAYOUT)
    image = image_of(table)
    image[4096 + 30] ^= 0xFF  # inside the primary header
    parsed = gpt.parse_disk(image, 4096)
    assert parsed == table and parsed.damaged == ("primary",)
    image[3 * 4096] ^= 0xFF  # primary entries too; then the backup header
    image[-4096 + 40] ^= 0xFF
    with pytest.raises(ZflashError) as err:
        gpt.parse_disk(image, 4096)
    assert err.value.code == Code.BAD_GPT and "primary" in err.value.detail


@pytest.mark.parametrize("offset, value", [(80, 0xFFFFFFFF), (84, 7), (72, 10**6)])
def test_hostile_header_fields_are_refused(offset: int, value: int) -> None:
    """A header with a huge entry count (or another impossible field) is refused, not read."""
    table = gpt.new_gpt(16384, 512, LAYOUT)
    image = image_of(table)
    for lba in (1, 16383):
        base = lba * 512
        struct.pack_into("<I", image, base + offset, value & 0xFFFFFFFF)
        struct.pack_into("<I", image, base + 16, 0)
        struct.pack_into("<I", image, base + 16, zlib.crc32(image[base:base + 92]))
    with pytest.raises(ZflashError) as err:
        gpt.parse_disk(image, 512)
    assert err.value.code == Code.BAD_GPT


def test_find_missing_partition_is_coded() -> None:
    with pytest.raises(ZflashError) as err:
        gpt.new_gpt(16384, 512, LAYOUT).find("system_a")
    assert err.value.code == Code.NO_SUCH_PARTITION


def test_slot_bits_encode_every_field() -> None:
    bits = gpt.SlotBits.from_byte(0x3F)
    assert bits == gpt.SlotBits(priority=3, active=True, tries=7, successful=False,
                                unbootable=False)
    assert gpt.SlotBits(2, False, 5, True, True).to_byte() == 0x02 | 0x28 | 0x40 | 0x80


def test_switch_slot_bootctrl_semantics() -> None:
    inactive = uuid.UUID("77036cd4-03d5-42bb-8ed1-37e5a88baa34")
    boot = uuid.UUID("20117f86-e985-4357-b9ee-374bc1d8487d")
    table = gpt.new_gpt(16384, 512, LAYOUT)
    parts = [p.with_slot_byte(0x6F) if p.name.endswith("_a") else
             p.with_slot_byte(0x3A) if p.name.endswith("_b") else p for p in table.partitions]
    parts = [replace(p, type_guid=boot if p.name == "boot_a" else inactive)
             if p.name.startswith("boot_") else p for p in parts]
    table = replace(table, partitions=tuple(parts))
    assert gpt.active_slot(table) == "a"
    switched = gpt.switch_slot(table, "b", skip=gpt.UFS_BOOT_LUN_PARTITIONS)
    assert gpt.active_slot(switched) == "b"
    state = gpt.slot_state(switched)
    assert state["b"] == gpt.SlotBits(3, True, 7, False, False)
    assert state["a"] == gpt.SlotBits(3, False, 5, True, False)  # only the active bit cleared
    assert switched.find("boot_b").type_guid == boot
    assert switched.find("boot_a").type_guid == inactive
    assert switched.find("xbl_b").slot_byte == 0x3A  # UFS: the boot LUN decides xbl
    assert switched.find("modem").attributes == 0
    marked = gpt.mark_slot(switched, "b", successful=True)
    assert all(marked.find(f"{n}_b").slot_byte & gpt.SUCCESSFUL for n in ("boot", "vbmeta"))
    assert marked.find("boot_a") == switched.find("boot_a")  # the other slot is untouched
    with pytest.raises(ZflashError) as err:
        gpt.switch_slot(table, "c")
    assert err.value.code == Code.SLOT


# --- interop with the stock sgdisk -------------------------------------------------------------
def sgdisk_image(tmp_path: Path) -> Path:
    path = tmp_path / "lun0.img"
    path.write_bytes(bytes(16384 * 512))
    sgdisk("-o", "-n", "1:2048:+1M", "-c", "1:boot_a", "-n", "2:0:+1M", "-c", "2:boot_b",
           "-n", "3:0:+64K", "-c", "3:vbmeta_a", "-n", "4:0:+64K", "-c", "4:vbmeta_b",
           "-n", "5:0:0", "-c", "5:userdata",
           "-A", "1:set:48", "-A", "1:set:49", "-A", "1:set:50", "-A", "1:set:54",
           "-A", "3:set:50", "-A", "2:set:49", "-A", "2:set:51", str(path))
    return path


def test_sgdisk_made_table_parses(tmp_path: Path) -> None:
    path = sgdisk_image(tmp_path)
    table = gpt.parse_disk(path.read_bytes(), 512)
    assert [p.name for p in table.partitions] == ["boot_a", "boot_b", "vbmeta_a", "vbmeta_b",
                                                  "userdata"]
    boot_a = table.find("boot_a")
    assert boot_a.first_lba == 2048 and boot_a.sectors == 2048
    assert gpt.slot_state(table)["a"] == gpt.SlotBits(3, True, 0, True, False)
    assert gpt.slot_state(table)["b"] == gpt.SlotBits(2, False, 1, False, False)
    assert gpt.active_slot(table) == "a"
    info = sgdisk("-i", "1", str(path))
    assert table.find("boot_a").unique_guid == uuid.UUID(
        re.search(r"Partition unique GUID: (\S+)", info).group(1))


def test_slot_switch_passes_sgdisk_verify(tmp_path: Path) -> None:
    path = sgdisk_image(tmp_path)
    image = bytearray(path.read_bytes())
    switched = gpt.switch_slot(gpt.parse_disk(image, 512), "b")
    gpt.write_into(image, switched)
    path.write_bytes(image)
    verify_ok(path)
    assert attributes(path, 2) == 0x3F << 48  # boot_b: priority 3, active, 7 tries
    assert attributes(path, 1) == (0x43 << 48)  # boot_a: active bit cleared, rest kept
    assert attributes(path, 3) == 0  # vbmeta_a had only the active bit
    assert attributes(path, 4) == 0x3F << 48
    backup = bytearray(image)
    backup[512:1024] = bytes(512)  # wipe the primary header: sgdisk reads the backup
    assert gpt.parse_disk(backup, 512).find("boot_b").slot_byte == 0x3F


def test_our_table_passes_sgdisk_verify(tmp_path: Path) -> None:
    table = gpt.new_gpt(16384, 512, LAYOUT, align=8)
    table = gpt.switch_slot(replace(table, partitions=tuple(
        p.with_slot_byte(0x6F) if p.name.endswith("_a") else p for p in table.partitions)), "b")
    path = tmp_path / "ours.img"
    path.write_bytes(image_of(table))
    verify_ok(path)
    out = sgdisk("-p", str(path))
    for name, _ in LAYOUT:
        assert name in out
    assert attributes(path, 2) == 0x3F << 48 and attributes(path, 1) == 0x6B << 48


def test_slot_switch_through_firehose_patches_matches_the_encoder() -> None:
    """The back-end rewrites the GPT with <program> of both copies; the device's disk then
    equals what encode() produced (4096-byte sectors, the emulator's layout)."""
    table = gpt.new_gpt(2048, 4096, LAYOUT)
    storage = fh.MemoryStorage([2048], 4096)
    gpt.write_into(storage.luns[0], table)
    switched = gpt.switch_slot(table, "b")
    head, tail = gpt.encode(switched)
    storage.write(0, 0, head)
    storage.write(0, switched.backup_entries_lba, tail)
    reread = gpt.read_gpt(lambda lba, n: storage.read(0, lba, n), 2048, 4096)
    assert reread == switched and gpt.active_slot(reread) == "b"


# --- vbmeta ----------------------------------------------------------------------------------
def test_vbmeta_roundtrip_and_offsets() -> None:
    image = avb.build_vbmeta(0x0102030405060708, location=3, release="zx-demo 1.1")
    assert image[:4] == b"AVB0" and image[112:120] == bytes(range(1, 9))
    assert image[124:128] == b"\x00\x00\x00\x03"
    header = avb.parse_vbmeta(image + bytes(3840))
    assert header.rollback_index == 0x0102030405060708
    assert header.rollback_index_location == 3 and header.release == "zx-demo 1.1"


@pytest.mark.parametrize("mutate", [
    lambda b: b[:100],
    lambda b: b"XXXX" + b[4:],
    lambda b: b[:12] + (65).to_bytes(8, "big") + b[20:],
    lambda b: b[:124] + (40).to_bytes(4, "big") + b[128:],
])
def test_bad_vbmeta_is_coded(mutate) -> None:
    with pytest.raises(ZflashError) as err:
        avb.parse_vbmeta(mutate(avb.build_vbmeta(5)))
    assert err.value.code == Code.MALFORMED_IMAGE
