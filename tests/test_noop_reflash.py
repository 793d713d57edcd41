"""A re-flash of the build the target slot already holds (D195): the device proves it from its
commit records and writes only its meta, at SET_ACTIVE and at boot; a cut at any step leaves
the slot bootable, and an update that changes one block still invalidates the slot first."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import SIGNING_KEY, SIGNING_PUB
from emulator_helpers import GOOD, demo_profile, snapshot
from zflash.emulator import storage as storage_module
from zflash.emulator.device import EmulatedDevice
from zflash.emulator.runner import EmulatorRunner
from zflash.emulator.storage import PartitionSpec, Storage
from zflash.errors import Code, ZflashError
from zflash.flash import FlashOptions, FlashSummary, flash
from zflash.package import keys as keymod
from zflash.package.reader import Package
from zflash.package.writer import PackageInfo, PartitionSource, build_package

INFO = PackageInfo(product="zx-demo", hardware_revisions=("A01",), baseband_ids=("ZXB-100",),
                   version="3.0.0", rollback_index=2, rollback_location=0, build_time=0)
BLOCK = 64 << 10
#: the demo profile's slotted partitions; system ends in a short block
SIZES = {"boot": 3 * BLOCK, "system": 9 * BLOCK + 1000, "vendor": 4 * BLOCK}
#: (step, delta): blocks are sent (write-block) only without the delta probe
STEPS = [("begin", True), ("write-block:1", False), ("write-block:9", False),
         ("commit:1", True), ("commit:3", False), ("set-active", True)]


def trust() -> keymod.TrustStore:
    return keymod.TrustStore.load([SIGNING_PUB], use_default_dir=False)


def make_images(root: Path) -> dict[str, Path]:
    """Random data with a zero block in each image (filled by the device, never sent)."""
    root.mkdir(parents=True, exist_ok=True)
    images = {}
    for name, size in SIZES.items():
        data = bytearray(os.urandom(size))
        data[BLOCK:2 * BLOCK] = bytes(BLOCK)
        images[name] = root / f"{name}.img"
        images[name].write_bytes(bytes(data))
    return images


def make_package(images: dict[str, Path], out: Path, names: tuple[str, ...] = tuple(SIZES),
                 ) -> Path:
    build_package(INFO, [PartitionSource(n, images[n], True) for n in names],
                  [keymod.load_private_key(SIGNING_KEY)], out, codec="zlib")
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_images(tmp_path_factory.mktemp("noop") / "images")


@pytest.fixture(scope="module")
def package(images: dict[str, Path]) -> Path:
    return make_package(images, images["system"].parent.parent / "build.zpk")


def run(url: str, package: Path, **options: bool) -> FlashSummary:
    return flash(url, package, trust(), FlashOptions(**options), lambda e: None)


def both_slots_hold(state: Path, package: Path) -> None:
    """Flash twice (b, then a): both slots hold the build, a runs, b is the target."""
    with EmulatorRunner(state, demo_profile()) as runner:
        url = runner.start_tcp(0)
        assert run(url, package).booted_slot == "b"
        assert run(url, package).booted_slot == "a"


def stamps(state: Path) -> dict[str, int]:
    """Modification times of the partition files and the digest records."""
    return {str(p.relative_to(state)): p.stat().st_mtime_ns
            for d in ("partitions", "digests") for p in (state / d).iterdir()}


def boots(state: Path, tmp_path: Path, *, set_active: str | None = None) -> dict:
    """Boot a copy of the device as it was left (the original meets the rerun as is)."""
    copy = tmp_path / f"copy-{set_active}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(state, copy)
    device = EmulatedDevice(Storage(copy))
    if set_active:
        device.set_active(set_active)
    return device.reboot()


def head_of(package: Path) -> bytes:
    with Package(package) as pkg:
        return package.read_bytes()[:pkg.head.header.payload_offset]


def test_unchanged_reflash_writes_the_meta_twice_and_nothing_else(
        package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "dev"
    both_slots_hold(state, package)
    before, before_stamps = snapshot(state), stamps(state)
    written: list[str] = []
    real_write, real_fsync = storage_module.atomic_write, os.fsync
    fsyncs: list[int] = []

    def counting_write(path: Path, data: bytes) -> None:
        written.append(path.name)
        real_write(path, data)

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    with EmulatorRunner(state, demo_profile()) as runner:
        url = runner.start_tcp(0)
        monkeypatch.setattr(storage_module, "atomic_write", counting_write)
        monkeypatch.setattr(os, "fsync", counting_fsync)
        summary = run(url, package)
        monkeypatch.undo()
    assert summary.booted_slot == "b" and not summary.fell_back
    assert summary.kept_blocks > 0
    assert written == ["meta.json", "meta.json"]  # SET_ACTIVE, then the boot
    assert len(fsyncs) == 4  # each: the file, then its directory
    after = snapshot(state)
    assert {k: v for k, v in after.items() if k != "meta.json"} == \
        {k: v for k, v in before.items() if k != "meta.json"}
    assert stamps(state) == before_stamps  # not even rewritten with the same bytes
    assert list((state / "staging").iterdir()) == []
    # sent anyway (no delta probe): each block is checked, and nothing is written
    written.clear()
    with EmulatorRunner(state, demo_profile()) as runner:
        url = runner.start_tcp(0)
        monkeypatch.setattr(storage_module, "atomic_write", counting_write)
        summary = run(url, package, delta=False)
        monkeypatch.undo()
    assert summary.booted_slot == "a" and summary.sent_bytes > 0
    assert written == ["meta.json", "meta.json"]
    assert stamps(state) == before_stamps


@pytest.mark.parametrize("step, delta", STEPS)
def test_power_loss_during_an_unchanged_reflash_leaves_both_slots_bootable(
        package: Path, tmp_path: Path, step: str, delta: bool) -> None:
    state = tmp_path / "dev"
    both_slots_hold(state, package)
    before = snapshot(state)
    with EmulatorRunner(state, demo_profile(), power_loss_at=step,
                        on_power_loss=lambda: None) as runner:
        url = runner.start_tcp(0)
        with pytest.raises(ZflashError):
            run(url, package, delta=delta)
        assert runner.power_lost.wait(5)
    assert snapshot(state) == before  # the cut came before the one write
    running = boots(state, tmp_path)
    assert running["booted_slot"] == "a" and running["attempts"][0]["slot"] == "a"
    target = boots(state, tmp_path, set_active="b")  # the target slot is as consistent
    assert target["booted_slot"] == "b" and not target["fell_back"]
    with EmulatorRunner(state, demo_profile()) as runner:
        summary = run(runner.start_tcp(0), package)
    assert summary.booted_slot == "b" and not summary.fell_back


def test_a_cut_between_set_active_and_the_boot_boots_the_new_slot(package: Path,
                                                                   tmp_path: Path) -> None:
    state = tmp_path / "dev"
    both_slots_hold(state, package)
    with EmulatorRunner(state, demo_profile()) as runner:
        run(runner.start_tcp(0), package, reboot=False)  # SET_ACTIVE answered; then the cut
    assert boots(state, tmp_path)["booted_slot"] == "b"
    with EmulatorRunner(state, demo_profile()) as runner:  # or the user runs it again
        assert run(runner.start_tcp(0), package).booted_slot == "b"


def _other_build(images: dict[str, Path], tmp_path: Path) -> Path:
    """The same build but one block of system, at 2 * BLOCK (data, not the short tail)."""
    other = {name: tmp_path / "other" / path.name for name, path in images.items()}
    other["system"].parent.mkdir()
    for name, path in images.items():
        shutil.copyfile(path, other[name])
    with open(other["system"], "r+b") as handle:
        handle.seek(2 * BLOCK)
        handle.write(os.urandom(BLOCK))
    return make_package(other, tmp_path / "other.zpk")


@pytest.mark.parametrize("change", ["package", "flash"])
def test_one_block_that_differs_invalidates_the_slot_before_it_is_written(
        package: Path, images: dict[str, Path], tmp_path: Path, change: str) -> None:
    state = tmp_path / "dev"
    both_slots_hold(state, package)
    update = package
    if change == "package":
        update = _other_build(images, tmp_path)
    else:  # one block of the target slot changed behind the device's back
        with open(state / "partitions" / "system_b.img", "r+b") as handle:
            handle.seek(2 * BLOCK)
            handle.write(os.urandom(64))
    with EmulatorRunner(state, demo_profile(), power_loss_at="write-block:1",
                        on_power_loss=lambda: None) as runner:
        url = runner.start_tcp(0)
        with pytest.raises(ZflashError):
            run(url, update)
        assert runner.power_lost.wait(5)
    meta = Storage(state).meta
    # invalidated at the first accepted block (boot, kept and committed before system)
    assert meta["slots"]["b"]["priority"] == 0 and "system" not in meta["committed"]["b"]
    booted = boots(state, tmp_path)
    assert booted["booted_slot"] == "a" and [a["slot"] for a in booted["attempts"]] == ["a"]
    with EmulatorRunner(state, demo_profile()) as runner:
        assert run(runner.start_tcp(0), update).booted_slot == "b"


def test_only_a_whole_build_on_the_target_slot_skips_the_journal(package: Path,
                                                                  tmp_path: Path) -> None:
    """A partial package (the device copies the rest in at set-active), a package with an
    unslotted partition (staged, then moved into place) or a slot of another build takes
    the journaled path: slot invalidated at the first accepted block."""
    state = tmp_path / "dev"
    both_slots_hold(state, package)
    device = EmulatedDevice(Storage(state))
    device.begin_update(head_of(package))
    assert device.session is not None and device.session.unchanged
    partial = make_package(make_images(tmp_path / "partial"), tmp_path / "partial.zpk",
                           names=("system",))
    for other in (partial, GOOD):
        device.begin_update(head_of(other))
        assert device.session is not None and not device.session.unchanged
    # a profile with one more slotted partition than the package carries
    grown = tmp_path / "grown"
    shutil.copytree(state, grown)
    storage = Storage(grown)
    storage.profile.partitions.append(PartitionSpec("extra", BLOCK, True))
    device = EmulatedDevice(storage)
    device.begin_update(head_of(package))
    assert device.session is not None and not device.session.unchanged


def test_a_write_under_an_unchanged_update_voids_what_it_granted(package: Path,
                                                                  tmp_path: Path) -> None:
    state = tmp_path / "dev"
    both_slots_hold(state, package)
    device = EmulatedDevice(Storage(state))
    with Package(package) as pkg:
        device.begin_update(head_of(package))
        for index, part in enumerate(pkg.manifest.partitions):
            device.keep_blocks(index, [[0, part.block_count]])
            device.commit_partition(index)
    device.erase("vendor", "b")
    with pytest.raises(ZflashError) as refused:
        device.set_active("b")
    assert refused.value.code == Code.SLOT and "not committed" in refused.value.detail
    with EmulatorRunner(state, demo_profile()) as runner:
        summary = run(runner.start_tcp(0), package)
    assert summary.booted_slot == "b" and summary.sent_bytes > 0


def test_keep_after_a_probe_answered_from_the_record_reads_nothing(
        package: Path, images: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A build whose system image grew: the commit record is of another image size, so
    KEEP checks block by block, with the digests the probe answered from the record (D182)
    and without reading the flash again."""
    state = tmp_path / "dev"
    both_slots_hold(state, package)
    grown = {name: tmp_path / "grown" / path.name for name, path in images.items()}
    grown["system"].parent.mkdir()
    for name, path in images.items():
        shutil.copyfile(path, grown[name])
    with open(grown["system"], "ab") as handle:
        handle.write(os.urandom(BLOCK))
    update = make_package(grown, tmp_path / "grown.zpk")
    device = EmulatedDevice(Storage(state))
    with Package(update) as pkg:
        index = [p.name for p in pkg.manifest.partitions].index("system")
        part = pkg.manifest.partitions[index]
        probe = device.block_hashes("system", "b", 0, 9, part.block_size)
        assert probe[0] == pkg.head.tables["system"][0].sha256
        device.begin_update(head_of(update))
        reads: list[int] = []
        real = os.pread
        monkeypatch.setattr(os, "pread", lambda fd, n, at: reads.append(at) or real(fd, n, at))
        kept = device.keep_blocks(index, [[0, 9]])
        monkeypatch.undo()
    assert kept == [[0, 9]] and reads == []
