"""Qualcomm EDL end to end: the real pipeline and EDL back-end against the emulated device,
over the emulated USB bus (real pyusb core) and over a pty as the QDLoader COM variant."""

from __future__ import annotations

import json

import hashlib
import subprocess
from pathlib import Path

import pytest

from conftest import SAMPLES, SIGNING_PUB
from zflash.disk.gpt import active_slot, slot_state
from zflash.emulator.edl_server import EdlDevice, EdlOptions, usb_device
from zflash.emulator.link import FaultyLink, PtyLink
from zflash.emulator.usb_backend import EmulatedUsbBackend
from zflash.errors import Code, ZflashError
from zflash.flash import FlashOptions, PreflightRefused, flash
from zflash.package import keys as keymod
from zflash.targets.base import LinkOptions

EDL = SAMPLES / "edl"
GOOD = EDL / "zx-demo-edl-1.1.0.zpk"
IMAGES = SAMPLES / "images" / "edl-1.1.0"
USB_URL = "usb://05c6:9008"
_BUS: EmulatedUsbBackend | None = None


def backend() -> EmulatedUsbBackend:
    """The ZFLASH_USB_BACKEND hook: the bus the fixture set up."""
    assert _BUS is not None
    return _BUS


def trust() -> keymod.TrustStore:
    store = keymod.TrustStore()
    store.add(keymod.load_public_key(SIGNING_PUB))
    return store


@pytest.fixture
def edl_usb(tmp_path, monkeypatch):
    global _BUS
    device = EdlDevice(tmp_path / "edl")
    usb = usb_device(device)
    _BUS = EmulatedUsbBackend([usb])
    monkeypatch.setenv("ZFLASH_USB_BACKEND", f"{__name__}:backend")
    yield device, usb
    _BUS.shutdown()
    _BUS = None


def lun_bytes(device: EdlDevice) -> list[bytes]:
    return [p.read_bytes() for p in device.lun_paths()]


def partition_sha(device: EdlDevice, name: str, size: int) -> str:
    from zflash.emulator.edl_disk import LunFiles
    storage = LunFiles(device.root, device.profile.sector_size)
    try:
        for lun in range(storage.lun_count):
            part = storage.gpt(lun).get(name)
            if part is not None:
                data = storage.read(lun, part.first_lba, part.sectors)[:size]
                return hashlib.sha256(data).hexdigest()
    finally:
        storage.close()
    raise AssertionError(f"no {name}")


def assert_flashed_and_booted(device: EdlDevice, sessions: int = 1) -> None:
    assert device.wait_sessions(sessions)
    for name in ("boot", "system", "vendor", "vbmeta"):
        image = (IMAGES / f"{name}.img").read_bytes()
        assert partition_sha(device, f"{name}_b", len(image)) == hashlib.sha256(image).hexdigest()
    modem = (IMAGES / "modem.img").read_bytes()
    assert partition_sha(device, "modem", len(modem)) == hashlib.sha256(modem).hexdigest()
    assert device.boots[-1] == {"booted_slot": "b", "fell_back": False}
    assert device.stored_rollback[0] == 3  # raised only after the successful boot


def sgdisk_verify(path: Path, sector_size: int) -> str:
    """A stock tool nobody here wrote on a LUN file, both GPT copies and CRCs: `sgdisk -v`
    for 512-byte sectors; `fdisk -b 4096 -l` for 4096 (sgdisk assumes 512 on image files
    and never read those tables)."""
    from test_edl_power_loss import fdisk_clean, sgdisk_clean
    return fdisk_clean(path, sector_size) if sector_size == 4096 else sgdisk_clean(path)


def test_good_package_flashes_over_usb_switches_slot_boots_and_raises_index(edl_usb):
    device, usb = edl_usb
    events: list[dict] = []
    summary = flash(USB_URL, GOOD, trust(), FlashOptions(), events.append)
    assert summary.protocol == "edl" and summary.slot == "b" and summary.rebooted
    assert_flashed_and_booted(device)
    # The slot switch rewrote both copies with valid CRCs, in the GPT the device boots from.
    from zflash.emulator.edl_disk import LunFiles
    storage = LunFiles(device.root, 4096)
    gpt = storage.gpt(0)
    storage.close()
    assert gpt.damaged == () and active_slot(gpt) == "b"
    assert slot_state(gpt)["b"].successful
    for path in device.lun_paths():
        sgdisk_verify(path, 4096)
    facts = next(e for e in events if e["event"] == "device")
    assert facts["msm_hw_id"] == device.profile.hw_id
    assert facts["facts"]["baseband"] == "ZXB-100"  # read where the manifest says
    assert facts["facts"]["rollback_indexes"] == {"0": 2}  # the running slot's vbmeta
    assert usb.stats.out_bytes >= summary.sent_bytes and not usb.server_errors


@pytest.mark.parametrize("sample, code", [
    ("zx-demo-edl-1.0.0-rollback.zpk", Code.ROLLBACK),
    ("zx-demo-edl-1.1.0-other-hwid.zpk", Code.COMPATIBILITY),
    ("zx-demo-edl-1.1.0-too-large.zpk", Code.IMAGE_TOO_LARGE),  # too large for its partition
    ("zx-demo-edl-1.1.0-corrupt-block.zpk", Code.SIGNATURE),
])
def test_bad_samples_refused_before_a_sector_is_written(edl_usb, sample, code):
    device, usb = edl_usb
    before = lun_bytes(device)
    with pytest.raises(PreflightRefused) as err:
        flash(USB_URL, EDL / sample, trust(), FlashOptions(), lambda e: None)
    assert err.value.code == code
    assert lun_bytes(device) == before


def test_wrong_programmer_is_refused_by_the_boot_rom(edl_usb):
    device, usb = edl_usb
    before = lun_bytes(device)
    options = FlashOptions(link=LinkOptions(
        programmer=str(EDL / "prog_firehose_other-TEST-ONLY.elf")))
    with pytest.raises(ZflashError) as err:
        flash(USB_URL, GOOD, trust(), options, lambda e: None)
    assert err.value.code == Code.PROGRAMMER_REJECTED
    assert lun_bytes(device) == before and device.programmer_loads == 0


def test_pulled_cable_resumes_from_what_the_device_holds(edl_usb):
    device, usb = edl_usb
    usb.unplug_after("out", 300_000)
    with pytest.raises(ZflashError) as err:
        flash(USB_URL, GOOD, trust(), FlashOptions(), lambda e: None)
    assert err.value.code == Code.LINK_LOST
    usb.plug()
    summary = flash(USB_URL, GOOD, trust(), FlashOptions(), lambda e: None)
    assert summary.kept_blocks > 0 and summary.sent_bytes < summary.image_bytes
    assert_flashed_and_booted(device, sessions=2)


def test_quirks_late_logs_and_pending_done(tmp_path, monkeypatch):
    global _BUS
    device = EdlDevice(tmp_path / "edl", options=EdlOptions(logs_after_response=True,
                                                            pending_done=True))
    _BUS = EmulatedUsbBackend([usb_device(device)])
    monkeypatch.setenv("ZFLASH_USB_BACKEND", f"{__name__}:backend")
    try:
        flash(USB_URL, GOOD, trust(), FlashOptions(), lambda e: None)
        assert_flashed_and_booted(device)
    finally:
        _BUS.shutdown()
        _BUS = None


def test_failed_boot_falls_back_and_keeps_the_stored_index(edl_usb):
    device, usb = edl_usb
    device.options.fail_next_boot = True
    flash(USB_URL, GOOD, trust(), FlashOptions(), lambda e: None)
    assert device.wait_sessions(1)
    assert device.boots[-1] == {"booted_slot": "a", "fell_back": True}
    assert device.stored_rollback[0] == 2


@pytest.fixture
def edl_pty(tmp_path):
    """The COM variant: a pty, HELLO swallowed, a byte stream; a FaultyLink around it."""
    device = EdlDevice(tmp_path / "edl", options=EdlOptions(com_variant=True))
    pty = PtyLink(str(tmp_path / "ttyEDL"))  # a stable name across hang-ups
    faults: dict[str, FaultyLink] = {}
    import threading
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            conn = pty.accept(0.1)
            if conn is None:
                continue
            link = faults.get("link")
            if link is not None:
                link.attach(conn)
            device.serve(link or conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"edl+serial://{tmp_path / 'ttyEDL'}"
    yield device, url, faults
    stop.set()
    pty.close()
    thread.join(timeout=5)


def test_good_package_flashes_over_a_pty_com_port(edl_pty):
    device, url, _ = edl_pty
    summary = flash(url, GOOD, trust(), FlashOptions(), lambda e: None)
    assert summary.slot == "b"
    assert_flashed_and_booted(device)
    for path in device.lun_paths():
        sgdisk_verify(path, 4096)


def test_bad_sample_refused_over_a_pty(edl_pty):
    device, url, _ = edl_pty
    before = lun_bytes(device)
    with pytest.raises(PreflightRefused) as err:
        flash(url, EDL / "zx-demo-edl-1.0.0-rollback.zpk", trust(), FlashOptions(),
              lambda e: None)
    assert err.value.code == Code.ROLLBACK and lun_bytes(device) == before


def test_dropped_pty_link_resumes(edl_pty):
    device, url, faults = edl_pty
    faults["link"] = FaultyLink(_Null(), drop_after_bytes=250_000)
    with pytest.raises(ZflashError) as err:
        flash(url, GOOD, trust(), FlashOptions(), lambda e: None)
    assert err.value.code in (Code.LINK_LOST, Code.TIMEOUT)
    summary = flash(url, GOOD, trust(), FlashOptions(), lambda e: None)
    assert summary.kept_blocks > 0
    assert_flashed_and_booted(device, sessions=2)


class _Null:
    """Placeholder inner link for a FaultyLink until the first host attaches."""

    alive = False

    def close(self) -> None:
        pass


def test_512_byte_sector_emmc_device(tmp_path, monkeypatch):
    global _BUS
    from zflash.emulator.edl_disk import EdlProfile
    device = EdlDevice(tmp_path / "edl", profile=EdlProfile(sector_size=512))
    _BUS = EmulatedUsbBackend([usb_device(device)])
    monkeypatch.setenv("ZFLASH_USB_BACKEND", f"{__name__}:backend")
    try:
        flash(USB_URL, GOOD, trust(), FlashOptions(), lambda e: None)
        assert_flashed_and_booted(device)
        for path in device.lun_paths():
            sgdisk_verify(path, 512)
    finally:
        _BUS.shutdown()
        _BUS = None


def test_cli_emulate_edl_and_flash_over_the_com_pty(tmp_path):
    """The real CLI both sides: `zflash emulate --edl` on a pty, `zflash flash` with the
    programmer file given by --programmer."""
    import os
    import sys
    import time
    link = tmp_path / "ttyEDL"
    urls = tmp_path / "urls"
    zflash = [sys.executable, "-m", "zflash"]
    emulator = subprocess.Popen([*zflash, "emulate", "--edl", "--state", str(tmp_path / "edl"),
                                 "--pty-link", str(link), "--url-file", str(urls)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if urls.exists() and urls.read_text().strip():
                break
            time.sleep(0.05)
        url = urls.read_text().strip()
        assert url == f"edl+serial://{link}"
        shown = subprocess.run([*zflash, "info", "-d", url, "--programmer",
                                str(EDL / "prog_firehose_zx-demo-TEST-ONLY.elf"), "--json"],
                               capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        facts = json.loads(shown.stdout)
        assert facts["protocol"] == "edl" and facts["current_slot"] == "a"
        assert {"boot", "system"} <= {p["name"] for p in facts["partitions"]}
        done = subprocess.run([*zflash, "flash", str(GOOD), "-d", url, "--trust",
                               str(SIGNING_PUB), "--programmer",
                               str(EDL / "prog_firehose_zx-demo-TEST-ONLY.elf"), "--json"],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "ZFLASH_DEVICE": ""})
        assert done.returncode == 0, done.stderr
        assert '"event": "slot_switched"' in done.stdout or '"slot_switched"' in done.stdout
        # the device resets after the flash: wait until it is back in EDL (its boot ROM
        # answers again), as a technician waits for the port, before the next command
        for _ in range(20):
            back = subprocess.run([*zflash, "info", "-d", url, "--programmer",
                                   str(EDL / "prog_firehose_zx-demo-TEST-ONLY.elf"), "--json"],
                                  capture_output=True, text=True, timeout=120)
            if back.returncode == 0:
                break
            assert back.returncode == Code.LINK_LOST - 9000, back.stderr  # still resetting
            time.sleep(0.2)
        assert back.returncode == 0, back.stderr
        assert json.loads(back.stdout)["current_slot"] == "b"
        bad = subprocess.run([*zflash, "flash", str(EDL / "zx-demo-edl-1.1.0-other-hwid.zpk"),
                              "-d", url, "--trust", str(SIGNING_PUB)],
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == Code.COMPATIBILITY - 9000, bad.stderr
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
