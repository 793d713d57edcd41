"""The emulated device's own rules, called directly (no link): enforcement, A/B, boot, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator_helpers import (BAD_SAMPLES, GOOD, NEWER, image_sha256, new_device_dir,
                              partition_prefix_sha256, snapshot)
from conftest import SAMPLES
from zflash.emulator.device import DeviceRefusal, EmulatedDevice, PowerLoss
from zflash.emulator.storage import Storage
from zflash.errors import Code, ZflashError
from zflash.package.reader import Package


def open_device(root: Path, **kwargs) -> EmulatedDevice:
    return EmulatedDevice(Storage(root), **kwargs)


def push(device: EmulatedDevice, package: Path, stop_after: int | None = None) -> int:
    """Send what the device lacks, as a host would; returns blocks sent."""
    sent = 0
    with Package(package) as pkg:
        head_bytes = package.read_bytes()[:pkg.head.header.payload_offset]
        ready = device.begin_update(head_bytes)
        have = {p["index"]: p["have"] for p in ready["partitions"]}
        for index, part in enumerate(pkg.manifest.partitions):
            skip = {b for first, count in have.get(index, []) for b in range(first, first + count)}
            for block, entry, stored in pkg.iter_stored(part):
                if block in skip or not entry.stored_size:
                    continue
                if stop_after is not None and sent == stop_after:
                    return sent
                device.write_block(index, block, stored, kind=entry.kind)
                sent += 1
            device.commit_partition(index)
    return sent


def test_good_package_goes_to_inactive_slot_and_boots(tmp_path):
    root = new_device_dir(tmp_path / "dev")
    device = open_device(root)
    running_before = {n: snapshot(root)[f"partitions/{n}_a.img"] for n in ("boot", "system")}
    push(device, GOOD)
    device.set_active("b")
    assert device.facts().rollback_indexes == {0: 2}
    for name in ("boot", "system", "vendor"):
        size = (SAMPLES / "images" / "1.1.0" / f"{name}.img").stat().st_size
        assert partition_prefix_sha256(root, f"{name}_b.img", size) == image_sha256("1.1.0", name)
    result = device.reboot()
    assert result["booted_slot"] == "b" and not result["fell_back"]
    facts = device.facts()
    assert facts.current_slot == "b" and facts.slot("b").successful
    for name in running_before:
        assert snapshot(root)[f"partitions/{name}_a.img"] == running_before[name]


def test_rollback_index_rises_only_after_successful_boot(tmp_path):
    root = new_device_dir(tmp_path / "dev")
    device = open_device(root)
    push(device, NEWER)
    device.set_active("b")
    assert device.facts().rollback_indexes[0] == 2  # flashed, not yet booted
    device.reboot()
    assert device.facts().rollback_indexes[0] == 3


@pytest.mark.parametrize("sample, code", sorted(BAD_SAMPLES.items()))
def test_device_refuses_bad_samples_and_state_is_untouched(tmp_path, sample, code):
    root = new_device_dir(tmp_path / "dev")
    before = snapshot(root)
    device = open_device(root)
    with pytest.raises(ZflashError) as err:
        push(device, SAMPLES / sample)
    assert err.value.code == code
    # Head refusals happen before anything is stored; a bad first block is checked before
    # the device touches its disk. Either way the device is exactly as before.
    assert snapshot(root) == before
    if isinstance(err.value, DeviceRefusal):
        assert all(f.code for f in err.value.failures)
    else:
        assert sample == "zx-demo-1.1.0-corrupt-block.zpk"
    device.reboot()
    assert device.facts().current_slot == "a"


def test_bad_block_mid_stream_never_boots(tmp_path):
    """A block that fails its hash after others were written: the slot stays unbootable."""
    root = new_device_dir(tmp_path / "dev")
    device = open_device(root)
    push(device, GOOD, stop_after=3)
    with Package(GOOD) as pkg:
        part = pkg.manifest.partitions[1]
        block, entry, stored = next(iter(pkg.iter_stored(part)))
    with pytest.raises(ZflashError) as err:
        device.write_block(1, block, bytes(len(stored)), kind=entry.kind)
    assert err.value.code == Code.SIGNATURE
    assert not device.facts().slot("b").bootable
    assert device.reboot()["booted_slot"] == "a"


def test_forced_boot_failure_falls_back(tmp_path):
    root = new_device_dir(tmp_path / "dev")
    device = open_device(root)
    push(device, NEWER)
    device.set_active("b")
    result = device.reboot(force_boot_failure=True)
    assert result["fell_back"] and result["booted_slot"] == "a"
    assert sum(1 for a in result["attempts"] if a["slot"] == "b") == 6
    facts = device.facts()
    assert facts.current_slot == "a" and not facts.slot("b").bootable
    assert facts.rollback_indexes[0] == 2


def test_corrupted_slot_after_commit_is_not_booted(tmp_path):
    root = new_device_dir(tmp_path / "dev")
    device = open_device(root)
    push(device, GOOD)
    device.set_active("b")
    with open(root / "partitions" / "system_b.img", "r+b") as handle:
        handle.write(b"rot")
    result = device.reboot()
    assert result["booted_slot"] == "a" and result["fell_back"]


def test_resume_sends_only_missing_blocks(tmp_path):
    root = new_device_dir(tmp_path / "dev")
    first = open_device(root)
    sent_first = push(first, GOOD, stop_after=5)
    first.session.sync()
    first.session.close()  # the host vanished
    again = open_device(root)
    sent_second = push(again, GOOD)
    with Package(GOOD) as pkg:
        total = sum(1 for p in pkg.manifest.partitions for e in pkg.head.tables[p.name]
                    if e.stored_size)
    assert sent_first == 5 and sent_second == total - 5
    again.set_active("b")
    assert again.reboot()["booted_slot"] == "b"


def test_power_loss_mid_write_leaves_a_consistent_device(tmp_path):
    root = new_device_dir(tmp_path / "dev")
    device = open_device(root, power_loss_at="write-block:3", on_power_loss=lambda: None)
    with pytest.raises(PowerLoss):
        push(device, GOOD)
    restarted = open_device(root)
    assert restarted.facts().current_slot == "a"
    push(restarted, GOOD)
    restarted.set_active("b")
    assert restarted.reboot()["booted_slot"] == "b"


def test_running_slot_is_never_written_and_userdata_needs_consent(tmp_path):
    root = new_device_dir(tmp_path / "dev")
    device = open_device(root)
    with pytest.raises(ZflashError) as err:
        device.erase("boot", "a")
    assert err.value.code == Code.SLOT
    with pytest.raises(ZflashError) as err:
        device.erase("userdata", None)
    assert err.value.code == Code.DEVICE_REFUSED
    device.erase("userdata", None, allow_userdata=True)


def test_set_active_refuses_incomplete_update(tmp_path):
    root = new_device_dir(tmp_path / "dev")
    device = open_device(root)
    push(device, GOOD, stop_after=2)
    with pytest.raises(ZflashError) as err:
        device.set_active("b")
    assert err.value.code == Code.SLOT
