"""A partial package still leaves a complete slot (issue 11), and the per-slot build facts.

The device copies every slotted partition the package does not carry from the running slot
into the target before it switches, so the new slot never mixes builds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import SAMPLES, SIGNING_KEY
from emulator_helpers import GOOD, NEWER, image_sha256, new_device_dir, snapshot
from test_emulator_device import open_device, push
from zflash.emulator.blocks import copy_data
from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.package import keys as keymod
from zflash.package.reader import Package
from zflash.package.writer import PackageInfo, PartitionSource, build_package

PARTIAL_INFO = PackageInfo(product="zx-demo", hardware_revisions=("A01",),
                           baseband_ids=("ZXB-100",), version="1.2.0", rollback_index=3,
                           rollback_location=0, build_time=1_700_000_500)


def partial_package(out: Path, names: tuple[str, ...] = ("boot", "system")) -> Path:
    """A signed 1.2.0 package holding only ``names`` (all slotted)."""
    sources = [PartitionSource(n, SAMPLES / "images" / "1.2.0" / f"{n}.img", True)
               for n in names]
    build_package(PARTIAL_INFO, sources, [keymod.load_private_key(SIGNING_KEY)], out)
    return out


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_partial_package_copies_missing_slotted_partitions_from_running_slot(tmp_path):
    root = new_device_dir(tmp_path / "dev")
    device = open_device(root)
    push(device, GOOD)            # 1.1.0 into b
    device.set_active("b")
    device.reboot()               # running b (1.1.0); a still holds the factory zeros
    assert device.facts().current_slot == "b"
    vendor_b = file_sha(root / "partitions" / "vendor_b.img")
    assert file_sha(root / "partitions" / "vendor_a.img") != vendor_b
    running = {k: v for k, v in snapshot(root).items() if k.endswith("_b.img")}
    push(device, partial_package(tmp_path / "partial.zpk"))  # boot + system into a
    device.set_active("a")
    # vendor_a is now the running slot's vendor, byte for byte, not the older content
    assert file_sha(root / "partitions" / "vendor_a.img") == vendor_b
    record = device.meta["committed"]["a"]["vendor"]
    assert record["copied_from"] == "b"
    assert record["sha256"] == device.meta["committed"]["b"]["vendor"]["sha256"]
    # the running slot was only read
    assert {k: v for k, v in snapshot(root).items() if k.endswith("_b.img")} == running
    result = device.reboot()
    assert result["booted_slot"] == "a" and not result["fell_back"]


def test_copy_of_a_never_flashed_partition_is_recorded_by_its_hash(tmp_path):
    root = new_device_dir(tmp_path / "dev")
    device = open_device(root)
    push(device, partial_package(tmp_path / "partial.zpk"))  # running a: factory zeros
    device.set_active("b")
    record = device.meta["committed"]["b"]["vendor"]
    size = device.storage.spec("vendor").size
    assert record == {"sha256": hashlib.sha256(bytes(size)).hexdigest(), "size": size,
                      "copied_from": "a"}
    assert device.reboot()["booted_slot"] == "b"


def test_copy_is_sparse_and_streams(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    size = 8 << 20
    with open(src, "wb") as handle:
        handle.truncate(size)
        handle.seek(3 << 20)
        handle.write(b"x" * 5000)
        handle.seek(size - 10)
        handle.write(b"end")
    with open(dst, "wb") as handle:
        handle.write(b"old" * 100000)
        handle.truncate(0)
        handle.truncate(size)
    calls = []
    s, d = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDWR)
    try:
        copy_data(s, d, size, 1 << 16, lambda: calls.append(1))
    finally:
        os.close(s)
        os.close(d)
    assert dst.read_bytes() == src.read_bytes()
    assert os.stat(dst).st_blocks * 512 < 1 << 20  # holes stayed holes
    assert 1 <= len(calls) <= 4  # only the data regions were read


def test_power_loss_while_completing_the_slot_then_rerun(tmp_path):
    """The copy happens before set-active succeeds: a loss leaves the target unbootable,
    and the rerun copies again."""
    root = new_device_dir(tmp_path / "dev")
    device = open_device(root, power_loss_at="set-active", on_power_loss=lambda: None)
    package = partial_package(tmp_path / "partial.zpk")
    push(device, package)
    from zflash.emulator.device import PowerLoss
    with pytest.raises(PowerLoss):
        device.set_active("b")
    device = open_device(root)
    assert device.facts().slot("b").bootable is False
    assert device.reboot()["booted_slot"] == "a"
    push(device, package)
    device.set_active("b")
    assert device.reboot()["booted_slot"] == "b"
    assert list((root / "staging").iterdir()) == []


def test_slot_facts_carry_version_and_package_digest(tmp_path):
    root = new_device_dir(tmp_path / "dev")
    device = open_device(root)
    assert device.facts().slot("b").version is None
    push(device, NEWER)
    assert device.facts().slot("b").version is None  # not complete before set-active
    device.set_active("b")
    with Package(NEWER) as pkg:
        digest = pkg.head.digest
    slot = device.facts().slot("b")
    assert (slot.version, slot.package) == ("1.2.0", digest)
    again = DeviceFacts.from_dict(json.loads(json.dumps(device.facts().to_dict())))
    assert again.slot("b").version == "1.2.0" and again.slot("a").version is None
    # a new update into a slot forgets what it held
    device.reboot()
    push(device, partial_package(tmp_path / "partial.zpk"), stop_after=1)
    assert open_device(root).facts().slot("a").version is None


@pytest.mark.parametrize("field, value", [("version", 12), ("version", "x\x1b[2J"),
                                          ("version", "v" * 300), ("package", "abc"),
                                          ("package", "G" * 64)])
def test_slot_build_facts_are_validated(tmp_path, field, value):
    facts = json.loads(json.dumps(open_device(new_device_dir(tmp_path / "dev")).facts()
                                  .to_dict()))
    facts["slots"][0][field] = value
    with pytest.raises(ZflashError) as err:
        DeviceFacts.from_dict(facts)
    assert err.value.code == Code.PROTOCOL


def test_images_differ_between_builds():
    """The copy test proves something only if the builds differ."""
    assert image_sha256("1.1.0", "vendor") != image_sha256("1.2.0", "vendor")


# --- fastboot and EDL: the host cannot copy, so a partial package is refused --------------

def fastboot_device(tmp_path: Path):
    from zflash.emulator.fastboot_server import FastbootOptions
    from zflash.emulator.runner import EmulatorRunner
    from emulator_helpers import demo_profile
    runner = EmulatorRunner(tmp_path / "fb", demo_profile())
    return runner, runner.start_fastboot_tcp(0, FastbootOptions(max_download_size=64 << 10))


def trust():
    from conftest import SIGNING_PUB
    return keymod.TrustStore.load([SIGNING_PUB], use_default_dir=False)


def test_fastboot_refuses_a_partial_package_naming_what_it_lacks(tmp_path):
    from zflash.flash import FlashOptions, PreflightRefused, flash
    package = partial_package(tmp_path / "partial.zpk")
    runner, url = fastboot_device(tmp_path)
    try:
        before = snapshot(runner.storage.root)
        events: list[dict] = []
        with pytest.raises(PreflightRefused) as refused:
            flash(url, package, trust(), FlashOptions(), events.append)
        assert refused.value.code == Code.PARTIAL_PACKAGE
        assert "vendor" in refused.value.detail and "--allow-partial" in refused.value.detail
        assert "boot" not in refused.value.detail.split("carry")[1].split(":")[0]
        assert snapshot(runner.storage.root) == before
        events.clear()
        summary = flash(url, package, trust(), FlashOptions(allow_partial=True, reboot=False),
                        events.append)
        assert summary.slot == "b"
        overridden = [e for e in events if e["event"] == "check_overridden"]
        assert [(e["option"], e["code"]) for e in overridden] == [("--allow-partial", 9039)]
        # a full package needs no flag
        flash(url, GOOD, trust(), FlashOptions(reboot=False), lambda e: None)
    finally:
        runner.stop()


def test_fastboot_without_getvar_all_cannot_tell_and_says_so(tmp_path, monkeypatch):
    from zflash.flash import FlashOptions, PreflightRefused, flash
    from zflash.targets.fastboot.client import FastbootClient

    def refuse(self):
        raise ZflashError(Code.DEVICE_REFUSED, "unknown variable all")
    monkeypatch.setattr(FastbootClient, "getvar_all", refuse)
    runner, url = fastboot_device(tmp_path)
    try:
        with pytest.raises(PreflightRefused) as refused:
            flash(url, GOOD, trust(), FlashOptions(), lambda e: None)
        assert refused.value.code == Code.UNVERIFIABLE
        assert "getvar all" in refused.value.detail
        flash(url, GOOD, trust(), FlashOptions(allow_partial=True, reboot=False),
              lambda e: None)
    finally:
        runner.stop()


def edl_partial_package(out: Path) -> Path:
    edl = SAMPLES / "edl" / "zx-demo-edl-1.1.0.zpk"
    with Package(edl) as pkg:
        spec = pkg.manifest.edl
    info = PackageInfo(product="zx-demo", hardware_revisions=("A01",),
                       baseband_ids=("ZXB-100",), version="1.1.0", rollback_index=3,
                       rollback_location=0, build_time=1_700_000_500, edl=spec)
    images = SAMPLES / "images" / "edl-1.1.0"
    sources = [PartitionSource(n, images / f"{n}.img", True) for n in ("boot", "vbmeta")]
    build_package(info, sources, [keymod.load_private_key(SIGNING_KEY)], out)
    return out


def test_edl_host_copies_what_a_partial_package_lacks(tmp_path, monkeypatch):
    """EDL: the host completes the slot itself (Firehose read + program), then switches."""
    import test_edl_e2e as edl_tests
    from zflash.emulator.edl_runner import EdlDevice
    from zflash.emulator.usb_backend import EmulatedUsbBackend
    from zflash.flash import FlashOptions, flash
    package = edl_partial_package(tmp_path / "edl-partial.zpk")
    device = EdlDevice(tmp_path / "edl")
    usb = edl_tests.usb_device(device)
    bus = EmulatedUsbBackend([usb])
    monkeypatch.setattr(edl_tests, "_BUS", bus)
    monkeypatch.setenv("ZFLASH_USB_BACKEND", "test_edl_e2e:backend")
    whole = 1 << 30
    try:
        flash(edl_tests.USB_URL, edl_tests.GOOD, trust(), FlashOptions(), lambda e: None)
        assert device.wait_sessions(1)  # running b: the full 1.1.0 build
        usb.plug()  # back into EDL
        running = {n: edl_tests.partition_sha(device, f"{n}_b", whole)
                   for n in ("system", "vendor")}
        assert {n: edl_tests.partition_sha(device, f"{n}_a", whole)
                for n in ("system", "vendor")} != running
        events: list[dict] = []
        summary = flash(edl_tests.USB_URL, package, trust(), FlashOptions(), events.append)
        assert summary.slot == "a"
        copied = [e for e in events if e["event"] == "partition_copied"]
        assert [(e["partition"], e["from_slot"], e["to_slot"]) for e in copied] == [
            ("system", "b", "a"), ("vendor", "b", "a")]
        kinds = [e["event"] for e in events]
        assert kinds.index("partition_copied") < kinds.index("slot_switched")
        assert {n: edl_tests.partition_sha(device, f"{n}_a", whole)
                for n in ("system", "vendor")} == running
        assert device.wait_sessions(2)
        assert device.boots[-1] == {"booted_slot": "a", "fell_back": False}
    finally:
        bus.shutdown()


# --- ZDL end to end: the CLI, a real link ------------------------------------------------

def test_zdl_partial_flash_completes_the_slot_and_info_shows_each_slots_build(tmp_path):
    from test_flash_e2e import TRUST, zflash
    from zflash.emulator.runner import EmulatorRunner
    from emulator_helpers import demo_profile
    runner = EmulatorRunner(tmp_path / "dev", demo_profile())
    url = runner.start_tcp(0)
    root = runner.storage.root
    try:
        assert zflash("flash", str(GOOD), "-d", url, *TRUST).returncode == 0  # 1.1.0 in b
        result = zflash("flash", str(partial_package(tmp_path / "p.zpk")), "-d", url, *TRUST)
        assert result.returncode == 0, result.stderr
        assert file_sha(root / "partitions" / "vendor_a.img") == \
            file_sha(root / "partitions" / "vendor_b.img")
        text = zflash("info", "-d", url)
        assert text.returncode == 0, text.stderr
        with Package(GOOD) as good:
            digest = good.head.digest
        lines = {line.split(":")[0].strip(): line for line in text.stdout.splitlines()}
        assert "build 1.2.0, package " in lines["a"]
        assert f"build 1.1.0, package {digest[:16]}..." in lines["b"]
        facts = json.loads(zflash("info", "-d", url, "--json").stdout)
        assert [(s["name"], s["version"]) for s in facts["slots"]] == [("a", "1.2.0"),
                                                                         ("b", "1.1.0")]
    finally:
        runner.stop()


def test_info_over_fastboot_says_slot_builds_are_not_reported(tmp_path):
    from test_flash_e2e import zflash
    runner, url = fastboot_device(tmp_path)
    try:
        text = zflash("info", "-d", url)
        assert text.returncode == 0, text.stderr
        slot_lines = [line for line in text.stdout.splitlines() if line.startswith("  a:")]
        assert slot_lines and "build not reported (fastboot" in slot_lines[0]
    finally:
        runner.stop()
