"""Power loss in the emulated EDL device at every step, then the rerun that completes.

Each cell runs the real CLI (``python -m zflash flash ... -d edl+serial://PTY``) against the
emulated EDL device on a pty (the QDLoader COM variant) whose power dies at one step
(``edl_power``): inside a ``<program>`` data phase (a partial write), between the slot
switch's primary and backup GPT rewrite, after both, at the reset. Afterwards:

- the device still boots a good slot (checked on a copy of the LUN files, with the
  emulator's AVB boot): the old one, unless the switch had reached the primary GPT;
- every partition the package does not own (slot a, userdata, misc) is byte-identical;
- a rerun of the same flash exits 0, the device boots slot b with the new images, both GPT
  copies are valid and agree (``sgdisk -v`` on 512-byte LUNs, ``fdisk -b 4096 -l`` on
  4096-byte ones, plus the raw entry arrays compared byte for byte).

``make test`` runs a few cells (``FAST``); ``make slow`` the whole matrix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SAMPLES, SIGNING_PUB, require_tool
from zflash.disk.gpt import parse_disk, slot_state
from zflash.emulator.edl_disk import EdlProfile, LunFiles
from zflash.emulator.edl_power import PowerCut
from zflash.emulator.edl_runner import EdlPtyServer
from zflash.emulator.edl_server import EdlDevice, EdlOptions

EDL = SAMPLES / "edl"
GOOD = EDL / "zx-demo-edl-1.1.0.zpk"
IMAGES = SAMPLES / "images" / "edl-1.1.0"
TRUST = ["--trust", str(SIGNING_PUB)]
OWNED = ("boot_b", "system_b", "vendor_b", "vbmeta_b", "modem")
#: program sectors of the GOOD package: partitions, then 5 (primary) + 5 (backup) GPT
#: sectors at 4096 bytes; 33 + 33 at 512
DATA_SECTORS = {4096: 177, 512: 1416}
GPT_SECTORS = {4096: 5, 512: 33}
#: primary GPT sectors the switch changes (header, then the entry sectors holding A/B
#: pairs: one 4096-byte sector holds all 8 A/B entries, 512-byte sectors hold 4 each); once
#: these are written the primary is valid and says slot b, whatever follows
PRIMARY_CHANGED = {4096: 2, 512: 3}


def zflash(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent",
                               "ZFLASH_DEVICE": ""})


def partitions(root: Path, sector_size: int) -> dict[str, str]:
    """sha256 of every GPT partition's sectors, by name."""
    storage = LunFiles(root, sector_size)
    try:
        out = {}
        for lun in range(storage.lun_count):
            for part in storage.gpt(lun).partitions:
                data = storage.read(lun, part.first_lba, part.sectors)
                out[part.name] = hashlib.sha256(data).hexdigest()
        return out
    finally:
        storage.close()


def image_matches(root: Path, sector_size: int, name: str, image: str) -> bool:
    data = (IMAGES / f"{image}.img").read_bytes()
    storage = LunFiles(root, sector_size)
    try:
        for lun in range(storage.lun_count):
            part = storage.gpt(lun).get(name)
            if part is not None:
                return storage.read(lun, part.first_lba, part.sectors)[:len(data)] == data
    finally:
        storage.close()
    raise AssertionError(f"no partition {name}")


def fdisk_clean(path: Path, sector_size: int = 4096) -> str:
    """util-linux ``fdisk -b SIZE -l`` (a stock tool that reads the GPT with that sector
    size): the table must list partitions and print no GPT complaint."""
    tool = require_tool("fdisk")
    done = subprocess.run([tool, "-b", str(sector_size), "-l", str(path)], capture_output=True,
                          text=True, timeout=30, env={"LANG": "C", "PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Disklabel type: gpt" in done.stdout, done.stdout
    assert f"Units: sectors of 1 * {sector_size}" in done.stdout, done.stdout
    assert done.stderr.strip() == "", done.stderr  # "The backup GPT table is corrupt..."
    return done.stdout


def sgdisk_clean(path: Path) -> str:
    """``sgdisk -v`` on a 512-byte LUN: "No problems found" and nothing on stderr (it exits 0
    and can even say "No problems found" with a corrupt backup header, warning only there;
    copies that disagree are "Main and backup partition tables differ")."""
    tool = require_tool("sgdisk")
    done = subprocess.run([tool, "-v", str(path)], capture_output=True, text=True, timeout=30,
                          env={"LANG": "C", "PATH": os.environ["PATH"]})
    assert done.returncode == 0 and "No problems found" in done.stdout, done.stdout
    assert done.stderr.strip() == "" and "corrupt" not in done.stdout, \
        done.stdout + done.stderr
    return done.stdout


def copies_agree(path: Path, sector_size: int) -> None:
    """Both GPT copies valid (our reader) and their entry arrays byte-identical (raw)."""
    image = path.read_bytes()
    gpt = parse_disk(image, sector_size)
    assert gpt.damaged == (), f"{path.name}: {gpt.damaged}"
    n = gpt.entry_sectors * sector_size
    primary = image[2 * sector_size:2 * sector_size + n]
    backup = image[gpt.backup_entries_lba * sector_size:gpt.backup_entries_lba * sector_size + n]
    assert primary == backup, f"{path.name}: primary and backup entry arrays differ"


def stock_check(root: Path, sector_size: int) -> None:
    for path in sorted(root.glob("lun*.img")):
        copies_agree(path, sector_size)
        fdisk_clean(path) if sector_size == 4096 else sgdisk_clean(path)


class Device:
    """The emulated EDL device on a pty, its power cut at ``step``; it keeps serving, so
    the next connection meets the boot ROM again over the same LUN files."""

    def __init__(self, root: Path, sector_size: int, step: str | None) -> None:
        self.root = root
        self.power = PowerCut(step, on_power_loss=lambda: None) if step else None
        self.device = EdlDevice(root / "edl", profile=EdlProfile(sector_size=sector_size),
                                options=EdlOptions(com_variant=True), power=self.power)
        self.server = EdlPtyServer(self.device, str(root / "ttyEDL")).start()
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()


def lost_then_rerun(tmp_path: Path, sector_size: int, step: str) -> None:
    device = Device(tmp_path, sector_size, step)
    state = device.device.root
    try:
        before = partitions(state, sector_size)
        first = zflash("flash", str(GOOD), "-d", device.url, *TRUST)
        # link lost / no answer; a loss at the reset looks like the reset itself (D160)
        assert first.returncode in ((0, 24, 25) if step.startswith("reset") else (24, 25)), \
            first.stderr
        assert device.device.power_lost.wait(10)
        assert "Traceback" not in first.stderr
        after = partitions(state, sector_size)
        untouched = [n for n in before if n not in OWNED]
        assert {n: after[n] for n in untouched} == {n: before[n] for n in untouched}
        expect_boot = expected_boot(step, sector_size)
        # the device boots a good slot (checked on a copy: the rerun meets it as it is)
        copy = tmp_path / "copy"
        shutil.copytree(state, copy)
        booted = EdlDevice(copy).boot(LunFiles(copy, sector_size))
        assert booted == {"booted_slot": expect_boot, "fell_back": False}, booted
        if expect_boot == "b":
            for name in ("boot", "system", "vendor", "vbmeta"):
                assert image_matches(state, sector_size, f"{name}_b", name), name

        again = zflash("flash", str(GOOD), "-d", device.url, *TRUST, "--json")
        assert again.returncode == 0, again.stderr
        assert "9030" not in again.stderr
        assert device.device.wait_sessions(2)
        assert device.device.boots[-1] == {"booted_slot": "b", "fell_back": False}
        for name in ("boot", "system", "vendor", "vbmeta"):
            assert image_matches(state, sector_size, f"{name}_b", name), name
        assert image_matches(state, sector_size, "modem", "modem")
        final = partitions(state, sector_size)
        assert {n: final[n] for n in untouched} == {n: before[n] for n in untouched}
        assert slot_state(LunFiles(state, sector_size).gpt(0))["b"].successful
        stock_check(state, sector_size)
    finally:
        device.stop()


def expected_boot(step: str, sector_size: int) -> str:
    """The slot the device boots after the loss: b once the primary GPT holds the switch
    (the boot loader reads the primary), else a."""
    name, _, nth = step.partition(":")
    if name == "program":
        primary_done = DATA_SECTORS[sector_size] + PRIMARY_CHANGED[sector_size]
        return "b" if int(nth) >= primary_done else "a"
    return "b" if name in ("gpt-primary", "gpt-backup", "reset") else "a"


def cells(sector_size: int) -> list[str]:
    data, gpt = DATA_SECTORS[sector_size], GPT_SECTORS[sector_size]
    changed = PRIMARY_CHANGED[sector_size]
    return [f"program:{n}" for n in sorted({1, data // 3, data - 1, data, data + 1,
                                            data + changed - 1, data + changed, data + gpt,
                                            data + gpt + 2, data + 2 * gpt - 1})] + \
        ["gpt-primary:1", "gpt-backup:1", "reset:1"]


FAST = [(4096, "program:60"), (4096, "gpt-primary:1"), (512, "gpt-primary:1")]
SLOW = [(size, step) for size in (4096, 512) for step in cells(size)
        if (size, step) not in FAST]


@pytest.mark.parametrize("sector_size, step", FAST)
def test_power_loss_then_rerun_completes(tmp_path, sector_size, step):
    lost_then_rerun(tmp_path, sector_size, step)


@pytest.mark.slow
@pytest.mark.parametrize("sector_size, step", SLOW)
def test_power_loss_matrix(tmp_path, sector_size, step):
    lost_then_rerun(tmp_path, sector_size, step)


def test_program_sector_counts_match_the_package(tmp_path):
    """The matrix's sector arithmetic holds: a loss after all data sectors leaves the GPT as
    it was, one after the primary GPT sectors leaves the primary switched."""
    device = Device(tmp_path, 4096, f"program:{DATA_SECTORS[4096] + GPT_SECTORS[4096]}")
    try:
        zflash("flash", str(GOOD), "-d", device.url, *TRUST)
        assert device.device.power_lost.wait(10)
        image = (device.device.root / "lun0.img").read_bytes()
        gpt = parse_disk(image, 4096)
        assert gpt.damaged == ("backup",)  # valid, but still the old slot
        assert slot_state(gpt)["b"].active and not slot_state(gpt)["a"].active
    finally:
        device.stop()


def test_cli_emulate_edl_power_loss_exits_137_and_the_rerun_completes(tmp_path):
    """``zflash emulate --edl --power-loss gpt-primary``: the emulator process dies there
    (137); restarted on the same state directory without the fault, the rerun completes."""
    state, link = tmp_path / "edl", tmp_path / "ttyEDL"
    cmd = [sys.executable, "-m", "zflash", "emulate", "--edl", "--state", str(state),
           "--pty-link", str(link)]
    emulator = subprocess.Popen([*cmd, "--power-loss", "gpt-primary"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = emulator.stdout.readline().strip()  # type: ignore[union-attr]
        assert url == f"edl+serial://{link}"
        first = zflash("flash", str(GOOD), "-d", url, *TRUST)
        assert first.returncode in (24, 25), first.stderr
        assert emulator.wait(timeout=30) == 137
    finally:
        if emulator.poll() is None:
            emulator.kill()
        emulator.wait(timeout=10)
    emulator = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert emulator.stdout.readline().strip() == url  # type: ignore[union-attr]
        again = zflash("flash", str(GOOD), "-d", url, *TRUST)
        assert again.returncode == 0, again.stderr
        deadline = time.monotonic() + 10
        while not json.loads((state / "edl.json").read_text())["boots"] and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        boots = json.loads((state / "edl.json").read_text())["boots"]
        assert boots == [{"booted_slot": "b", "fell_back": False}]
        stock_check(state, 4096)
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


def test_power_loss_step_typo_is_a_usage_error(tmp_path):
    result = zflash("emulate", "--edl", "--state", str(tmp_path / "edl"),
                    "--power-loss", "gpt-middle")
    assert result.returncode == 2 and "error 9002" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _xml(tag: str, **attrs: object) -> bytes:
    body = " ".join(f'{k}="{v}"' for k, v in attrs.items())
    return f'<?xml version="1.0" ?><data><{tag} {body} /></data>'.encode()


def test_power_loss_during_a_patch_leaves_the_sector_as_it_was(tmp_path):
    """``patch:2``: the first patch lands, the second dies before its sector is written and
    sends no answer; the next boot of the emulator finds the sector as the first left it."""
    from zflash.emulator.edl_power import PowerLoss
    from zflash.protocol.firehose import Programmer
    device = EdlDevice(tmp_path / "edl")
    storage = LunFiles(device.root, 4096)
    try:
        programmer = Programmer(storage)
        programmer.on_step = PowerCut("patch:2", on_power_loss=lambda: None).observer(storage)
        programmer.receive_data(_xml("configure", MemoryName="ufs"))
        list(programmer.data_to_send())
        patch = {"SECTOR_SIZE_IN_BYTES": 4096, "filename": "DISK",
                 "physical_partition_number": 1, "start_sector": 80, "size_in_bytes": 4}
        programmer.receive_data(_xml("patch", byte_offset=8, value=0x11223344, **patch))
        assert any(b"ACK" in p for p in programmer.data_to_send())
        first = storage.read(1, 80, 1)
        assert first[8:12] == (0x11223344).to_bytes(4, "little")
        programmer.receive_data(_xml("patch", byte_offset=16, value="CRC32(80,12)", **patch))
        sent: list[bytes] = []
        with pytest.raises(PowerLoss):
            sent.extend(programmer.data_to_send())
        assert sent == [] and storage.read(1, 80, 1) == first
    finally:
        storage.close()


@pytest.mark.parametrize("step", ["program:60", "gpt-primary:1", "gpt-backup:1", "reset:1"])
def test_power_loss_over_usb_then_replug_and_rerun(tmp_path, monkeypatch, step):
    """The in-process emulated USB bus: the device drops off the bus at the loss; plugged
    in again it is in EDL, and the rerun (repairing the GPT where needed) completes."""
    import test_edl_e2e as e2e
    from zflash.emulator.usb_backend import EmulatedUsbBackend
    from zflash.errors import Code, ZflashError
    from zflash.flash import FlashOptions, flash
    device = EdlDevice(tmp_path / "edl", power=PowerCut(step, on_power_loss=lambda: None))
    usb = e2e.usb_device(device)
    e2e._BUS = EmulatedUsbBackend([usb])
    monkeypatch.setenv("ZFLASH_USB_BACKEND", "test_edl_e2e:backend")
    try:
        if step.startswith("reset"):  # the host cannot tell this loss from the reset
            flash(e2e.USB_URL, GOOD, e2e.trust(), FlashOptions(), lambda e: None)
        else:
            with pytest.raises(ZflashError) as err:
                flash(e2e.USB_URL, GOOD, e2e.trust(), FlashOptions(), lambda e: None)
            assert err.value.code in (Code.LINK_LOST, Code.TIMEOUT)
        assert device.power_lost.wait(5) and not usb.present and device.boots == []
        gpt = parse_disk((device.root / "lun0.img").read_bytes(), 4096)
        assert gpt.damaged == (("backup",) if step == "gpt-primary:1" else ())
        assert slot_state(gpt)["b"].active == (step != "program:60")
        usb.plug()
        summary = flash(e2e.USB_URL, GOOD, e2e.trust(), FlashOptions(), lambda e: None)
        assert summary.slot == "b" and summary.kept_blocks > 0
        e2e.assert_flashed_and_booted(device, sessions=2)
        stock_check(device.root, 4096)
    finally:
        e2e._BUS.shutdown()
        e2e._BUS = None


def test_running_slot_is_the_proven_one_when_the_active_slot_never_booted():
    from zflash.disk.gpt import mark_slot, new_gpt, switch_slot
    from zflash.targets.edl.layout import running_slot
    gpt = new_gpt(1024, 4096, [("boot_a", 8), ("boot_b", 8)])
    assert running_slot(gpt) is None  # no slot bits at all
    proven_a = mark_slot(switch_slot(gpt, "a"), "a", successful=True)
    assert running_slot(proven_a) == "a"
    pending_b = switch_slot(proven_a, "b")  # switched, never booted
    assert running_slot(pending_b) == "a"
    assert running_slot(mark_slot(pending_b, "b", successful=True)) == "b"
    failed_b = mark_slot(pending_b, "b", unbootable=True)
    assert running_slot(failed_b) == "a"
    assert running_slot(switch_slot(gpt, "b")) == "b"  # nothing proven: the active one
