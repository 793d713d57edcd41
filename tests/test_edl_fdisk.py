"""4096-byte-sector LUNs checked by a stock tool: util-linux ``fdisk -b 4096 -l``.

sgdisk 1.0.9 assumes 512-byte sectors on image files, so it never read the GPT of a UFS-like
LUN; fdisk reads it with the sector size it is given and complains on stderr about a bad CRC
or a damaged copy. After a flash and slot switch over the emulated USB bus, fdisk lists every
partition with the slot bits the switch wrote (its ``Attrs`` column) and no complaint; a
header corrupted on purpose does make it complain, so the check can fail. 512-byte LUNs keep
``sgdisk -v``, which is shown failing on a corrupted copy too.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import require_tool
from test_edl_e2e import GOOD, USB_URL, assert_flashed_and_booted, edl_usb, trust  # noqa: F401
from test_edl_power_loss import copies_agree, fdisk_clean, sgdisk_clean
from zflash.emulator.edl_disk import EdlProfile
from zflash.emulator.edl_server import EdlDevice
from zflash.flash import FlashOptions, flash

ACTIVE_BIT, SUCCESSFUL_BIT = 50, 54  # byte 6 of the attributes: 0x04 and 0x40


def fdisk_with_names(path: Path) -> str:
    tool = require_tool("fdisk")
    done = subprocess.run([tool, "-b", "4096", "-l", "-o", "Device,Name,Attrs", str(path)],
                          capture_output=True, text=True, timeout=30,
                          env={"LANG": "C", "PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_fdisk_reads_4096_byte_luns_after_flash_and_slot_switch(edl_usb):  # noqa: F811
    device, _ = edl_usb
    assert device.profile.sector_size == 4096
    flash(USB_URL, GOOD, trust(), FlashOptions(), lambda e: None)
    assert_flashed_and_booted(device)
    lun0, lun1 = device.lun_paths()
    fdisk_clean(lun1)
    copies_agree(lun0, 4096)
    listing = fdisk_with_names(lun0)
    assert "corrupt" not in listing and "mismatch" not in listing, listing
    rows = {line.split()[1]: line.split()[2:] for line in listing.splitlines()
            if line.startswith(str(lun0))}
    assert set(rows) >= {"boot_a", "boot_b", "system_a", "system_b", "vbmeta_b", "userdata"}
    bits = {name: {int(b) for b in cols[0].removeprefix("GUID:").split(",")} if cols else set()
            for name, cols in rows.items()}
    for name in ("boot", "system", "vendor", "vbmeta"):
        assert {ACTIVE_BIT, SUCCESSFUL_BIT} <= bits[f"{name}_b"], (name, bits)
        assert ACTIVE_BIT not in bits[f"{name}_a"], (name, bits)


@pytest.mark.parametrize("where", ["primary", "backup"])
def test_fdisk_complains_about_a_corrupted_4096_byte_header(tmp_path, where):
    device = EdlDevice(tmp_path / "edl")
    path = device.lun_paths()[0]
    fdisk_clean(path)  # clean as made
    lba = 1 if where == "primary" else path.stat().st_size // 4096 - 1
    with path.open("r+b") as f:
        f.seek(lba * 4096 + 24)  # inside the header, under its CRC
        f.write(b"\xff\xff")
    with pytest.raises(AssertionError, match=f"{where} GPT table is corrupt"):
        fdisk_clean(path)


def test_sgdisk_still_checks_512_byte_luns_and_fails_on_corruption(tmp_path):
    device = EdlDevice(tmp_path / "edl", profile=EdlProfile(sector_size=512))
    path = device.lun_paths()[0]
    sgdisk_clean(path)
    with path.open("r+b") as f:
        f.seek((path.stat().st_size // 512 - 1) * 512 + 24)  # the backup header
        f.write(b"\xff\xff")
    with pytest.raises(AssertionError):
        sgdisk_clean(path)
