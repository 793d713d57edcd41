"""A package file written to while it is being flashed (D211): the blocks were checked from
one read of the file and are sent from another, so a back-end whose device checks nothing
(fastboot, EDL) refuses once the file changed, before the bytes read after the change are
written, and the device keeps the slot it runs."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import SIGNING_KEY, SIGNING_PUB
from emulator_helpers import demo_profile
from test_edl_e2e import GOOD as EDL_GOOD
from test_edl_e2e import IMAGES as EDL_IMAGES
from test_edl_e2e import USB_URL, assert_flashed_and_booted, edl_usb, partition_sha  # noqa: F401
from zflash.emulator.fastboot_server import FastbootOptions
from zflash.emulator.runner import EmulatorRunner
from zflash.emulator.storage import PartitionSpec
from zflash.errors import Code, ZflashError
from zflash.flash import FlashOptions, flash
from zflash.package import keys as keymod
from zflash.package.format import KIND_RAW
from zflash.package.reader import Package
from zflash.package.writer import PackageInfo, PartitionSource, build_package

INFO = PackageInfo(product="zx-demo", hardware_revisions=("A01",), baseband_ids=("ZXB-100",),
                   version="9.9.9", rollback_index=5, rollback_location=0, build_time=0)
#: an old modification time, so that a write is seen even where timestamps are coarse
LONG_AGO_NS = 1_000_000_000 * 1_000_000_000


def trust() -> keymod.TrustStore:
    return keymod.TrustStore.load([SIGNING_PUB], use_default_dir=False)


def raw_package(tmp_path: Path, name: str = "system", size: int = 384 << 10) -> Path:
    """A signed package of one slotted partition of random, uncompressed blocks."""
    image = tmp_path / f"{name}.img"
    image.write_bytes(os.urandom(size))
    package = tmp_path / "raw.zpk"
    build_package(INFO, [PartitionSource(name, image, True)],
                  [keymod.load_private_key(SIGNING_KEY)], package, codec="none")
    os.utime(package, ns=(LONG_AGO_NS, LONG_AGO_NS))
    return package


def flip_last_block(package: Path, partition: str = "system") -> None:
    """Change one byte of the partition's last stored block in place, as a second writer
    would (same size, through its own file descriptor). The block is stored raw: the bytes
    read after the change still decode, only the signed hash no longer matches them."""
    with Package(package) as pkg:
        table = pkg.head.tables[partition]
        entry = table[len(table) - 1]
        assert entry.kind == KIND_RAW
        offset = pkg.head.header.payload_offset + entry.stored_offset + entry.stored_size // 2
    with open(package, "r+b") as out:
        out.seek(offset)
        byte = out.read(1)
        out.seek(offset)
        out.write(bytes([byte[0] ^ 0xFF]))


def changing_on(when: Callable[[dict[str, Any]], bool], change: Callable[[], None],
                events: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    """An emit callback that records every event and calls ``change`` on the first event
    ``when`` picks."""
    done = []

    def emit(event: dict[str, Any]) -> None:
        events.append(event)
        if not done and when(event):
            done.append(event)
            change()

    return emit


# --- the package ---------------------------------------------------------------------------

def test_an_untouched_package_is_unchanged_and_a_written_one_is_refused(tmp_path: Path) -> None:
    package = raw_package(tmp_path)
    with Package(package) as pkg:
        pkg.ensure_unchanged()
        pkg.read_stored(pkg.manifest.partitions[0], 0)  # reading changes nothing
        pkg.ensure_unchanged()
        flip_last_block(package)
        with pytest.raises(ZflashError) as refused:
            pkg.ensure_unchanged()
    assert refused.value.code == Code.SIGNATURE and refused.value.cause == "changed"
    assert "changed while it was being flashed" in refused.value.detail
    assert refused.value.info.fix.startswith("Let whatever writes the file")


def test_a_package_grown_is_refused_and_one_in_memory_never_is(
        tmp_path: Path) -> None:
    package = raw_package(tmp_path)
    with Package(package) as pkg:
        with open(package, "ab") as out:
            out.write(b"\0")
        with pytest.raises(ZflashError):
            pkg.ensure_unchanged()
    with Package(io.BytesIO(package.read_bytes()[:-1])) as pkg:
        pkg.ensure_unchanged()  # no file behind it: nothing can change it


# --- fastboot: every download is staged, then flashed ---------------------------------------

def test_fastboot_refuses_a_package_changed_after_its_blocks_checked_out(
        tmp_path: Path) -> None:
    """The change comes when the last block's verdict is in (the `blocks` check passes,
    with the first piece downloaded): before this decision, the other pieces were read from
    the changed file and flashed, and the slot switched to bytes nobody signed."""
    package = raw_package(tmp_path)
    profile = demo_profile(partitions=[PartitionSpec("system", 1 << 20, True)])
    with EmulatorRunner(tmp_path / "dev", profile) as runner:
        url = runner.start_fastboot_tcp(0, FastbootOptions(max_download_size=64 << 10))
        slot_b = runner.storage.partition_path("system", "b").read_bytes()
        events: list[dict[str, Any]] = []
        emit = changing_on(lambda e: e.get("check") == "blocks",
                           lambda: flip_last_block(package), events)
        with pytest.raises(ZflashError) as refused:
            flash(url, package, trust(), FlashOptions(), emit)
        assert refused.value.code == Code.SIGNATURE and refused.value.cause == "changed"
        kinds = [e["event"] for e in events]
        assert "verified" not in kinds and "slot_switched" not in kinds
        assert runner.storage.partition_path("system", "b").read_bytes() == slot_b
        assert runner.device.meta["current_slot"] == "a"


# --- EDL: the programmer writes as it is sent ----------------------------------------------

def test_edl_sends_no_chunk_read_after_the_package_changed(tmp_path: Path, edl_usb) -> None:
    """The EDL sample's partitions are written one after the other (boot, system, vendor,
    vbmeta, then modem, which has no second slot), each read from the package again after
    the check. The modem's block changes once boot is written: before this decision the
    changed modem was written in place, and only the read-back after it said so."""
    device, usb = edl_usb
    package = tmp_path / "edl.zpk"
    package.write_bytes(EDL_GOOD.read_bytes())
    os.utime(package, ns=(LONG_AGO_NS, LONG_AGO_NS))
    with Package(package) as pkg:
        names = [p.name for p in pkg.manifest.partitions]
    assert names[0] == "boot" and names[-1] == "modem"
    modem_size = (EDL_IMAGES / "modem.img").stat().st_size
    modem = partition_sha(device, "modem", modem_size)
    events: list[dict[str, Any]] = []
    emit = changing_on(lambda e: e.get("event") == "verified",
                       lambda: flip_last_block(package, "modem"), events)
    with pytest.raises(ZflashError) as refused:
        flash(USB_URL, package, trust(), FlashOptions(), emit)
    assert refused.value.code == Code.SIGNATURE and refused.value.cause == "changed"
    started = [e["partition"] for e in events if e["event"] == "partition_started"]
    assert started == names[:2]  # the second partition's first chunk was refused
    assert [e["partition"] for e in events if e["event"] == "verified"] == names[:1]
    assert "slot_switched" not in [e["event"] for e in events]
    assert partition_sha(device, "modem", modem_size) == modem and device.boots == []
    # the programmer was left idle between commands: the next host resets it to EDL
    # (D212), and the unchanged package flashes and boots
    summary = flash(USB_URL, EDL_GOOD, trust(), FlashOptions(), lambda e: None)
    assert summary.slot == "b" and summary.rebooted
    assert_flashed_and_booted(device, sessions=2)
