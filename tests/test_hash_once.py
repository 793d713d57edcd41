"""Issue 10's mechanisms over ZDL, asserted (not timed): the host hashes each block it sends
exactly once and none it does not send; a re-flash of an unchanged package sends no block
data and reads no partition data beyond the probe; the device keeps blocks one at a time
(memory does not grow with the image) and commits without re-reading the partition."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

from conftest import SIGNING_KEY, SIGNING_PUB
from emulator_helpers import GOOD, count_host_hashes, demo_profile, snapshot
from zflash.emulator import device as device_module
from zflash.emulator.runner import EmulatorRunner
from zflash.emulator.storage import PartitionSpec
from zflash.flash import FlashOptions, flash
from zflash.package import keys as keymod
from zflash.package.reader import Package
from zflash.package.writer import PackageInfo, PartitionSource, build_package

INFO = PackageInfo(product="zx-demo", hardware_revisions=("A01",), baseband_ids=("ZXB-100",),
                   version="9.9.9", rollback_index=5, rollback_location=0, build_time=0)


def trust() -> keymod.TrustStore:
    return keymod.TrustStore.load([SIGNING_PUB], use_default_dir=False)


def data_blocks(package: Path) -> set[tuple[str, int]]:
    with Package(package) as pkg:
        return {(p.name, i) for p in pkg.manifest.partitions
                for i, kind in enumerate(pkg.head.tables[p.name].kinds()) if kind != 0}


def test_full_flash_hashes_each_sent_block_once_and_reflash_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = count_host_hashes(monkeypatch)
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        url = runner.start_tcp(0)
        first = flash(url, GOOD, trust(), FlashOptions(reboot=False), lambda e: None)
        assert first.sent_bytes > 0
        assert len(hashed) == len(set(hashed)) and set(hashed) == data_blocks(GOOD)
        # the new build is on b and active; flash it again: b is now the running slot, so
        # the inactive slot a gets it; then a third time: the inactive slot holds it already
        flash(url, GOOD, trust(), FlashOptions(reboot=False), lambda e: None)
        runner.device.set_active("a")
        hashed.clear()
        again = flash(url, GOOD, trust(), FlashOptions(reboot=False), lambda e: None)
    assert again.sent_bytes == 0 and again.kept_blocks > 0
    assert again.skipped_bytes == again.image_bytes
    # nothing the device holds is hashed by the host, except an image's short last block:
    # the device hashes a whole block of flash, so that one cannot match by hash and is
    # hashed by the host in case it must be sent
    with Package(GOOD) as pkg:
        last = {(p.name, p.block_count - 1) for p in pkg.manifest.partitions
                if p.size % p.block_size}
    assert set(hashed) <= last and len(hashed) == len(set(hashed))


def test_commit_does_not_reread_the_partition(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_full_hash(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the device re-hashed a whole partition during the flash")

    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        url = runner.start_tcp(0)
        monkeypatch.setattr(device_module, "file_sha256", no_full_hash)
        summary = flash(url, GOOD, trust(), FlashOptions(reboot=False), lambda e: None)
    assert summary.slot == "b"


def test_a_corrupt_block_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.zpk"
    data = bytearray(GOOD.read_bytes())
    data[-100] ^= 0xFF  # inside the last stored block: after signing
    corrupt.write_bytes(bytes(data))
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        url = runner.start_tcp(0)
        before = snapshot(runner.storage.root)
        events: list[dict] = []
        with pytest.raises(Exception) as refused:
            flash(url, corrupt, trust(), FlashOptions(reboot=False), events.append)
        assert getattr(refused.value, "code", None) == 9012
        assert not [e for e in events if e["event"] in ("update_ready", "bytes_sent")]
        assert snapshot(runner.storage.root) == before


def test_keep_blocks_memory_does_not_grow_with_the_image(tmp_path: Path) -> None:
    """KEEP of a 64 MiB partition the device holds: peak Python allocation stays about one
    block, not the image (it used to buffer every block it accepted)."""
    size = 64 << 20
    image = tmp_path / "system.img"
    with open(image, "wb") as handle:
        for _ in range(size // (1 << 20)):
            handle.write(os.urandom(1 << 20))
    package = tmp_path / "big.zpk"
    build_package(INFO, [PartitionSource("logo", image, False)],
                  [keymod.load_private_key(SIGNING_KEY)], package, codec="none")
    profile = demo_profile(partitions=[PartitionSpec("logo", size, False)],
                           cache_size=2 * size)
    with EmulatorRunner(tmp_path / "dev", profile) as runner:
        live = runner.storage.partition_path("logo", None)
        live.write_bytes(image.read_bytes())
        device = runner.device
        with Package(package) as pkg:
            device.begin_update(package.read_bytes()[:pkg.head.header.payload_offset])
            part = pkg.manifest.partitions[0]
            tracemalloc.start()
            kept = device.keep_blocks(0, [[0, part.block_count]])
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    assert kept == [[0, part.block_count]]
    assert peak < 8 * part.block_size + (1 << 20), f"KEEP peaked at {peak} bytes"


@pytest.mark.parametrize("device_codecs", [None, ["zlib", "none"]])
def test_a_zstd_package_flashes_with_and_without_device_zstd(tmp_path: Path,
                                                             device_codecs) -> None:
    """zstd blocks go as stored to a device that offers zstd, expanded to one that does not."""
    image = tmp_path / "system.img"
    image.write_bytes((b"zflash test-only text " * 3000)[:60000] + bytes(4000))
    package = tmp_path / "zstd.zpk"
    build_package(INFO, [PartitionSource("system", image, True)],
                  [keymod.load_private_key(SIGNING_KEY)], package, codec="zstd")
    with Package(package) as pkg:
        assert 3 in pkg.head.tables["system"].kinds()  # zstd blocks in the package
    profile = demo_profile(zdl_codecs=device_codecs)
    with EmulatorRunner(tmp_path / "dev", profile) as runner:
        url = runner.start_tcp(0)
        summary = flash(url, package, trust(), FlashOptions(reboot=False), lambda e: None)
        content = runner.storage.partition_path("system", "b").read_bytes()
    assert content[:len(image.read_bytes())] == image.read_bytes()
    if device_codecs is None:
        assert summary.sent_bytes < 20000  # compressed on the wire
    else:
        assert summary.sent_bytes >= 60000  # expanded by the host
