"""zflash flash onto fastboot: sparse pieces planned from the block table and streamed
(issue 10): zero blocks become DONT_CARE after an erase (FILL when the erase is refused),
the slot always equals the image whatever it held, and each block is hashed once."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from conftest import SIGNING_KEY, SIGNING_PUB, require_tool
from emulator_helpers import count_host_hashes, demo_profile
from zflash.emulator.fastboot_server import FastbootOptions
from zflash.emulator.runner import EmulatorRunner
from zflash.flash import FlashOptions, flash
from zflash.package import keys as keymod
from zflash.package.reader import Package
from zflash.package.sparse import ChunkType
from zflash.package.writer import PackageInfo, PartitionSource, build_package
from zflash.targets.blocks import PartitionBlocks
from zflash.targets.fastboot.stream import PieceStream, plan_pieces

INFO = PackageInfo(product="zx-demo", hardware_revisions=("A01",), baseband_ids=("ZXB-100",),
                   version="9.9.9", rollback_index=5, rollback_location=0, build_time=0)
BLOCK = 8192


def sparse_image(path: Path, size: int) -> Path:
    """Data, a zero gap, data, zeros to a short end: every case of the planner."""
    data = bytearray(size)
    data[:3 * BLOCK] = os.urandom(3 * BLOCK)
    data[6 * BLOCK:7 * BLOCK + 100] = os.urandom(BLOCK + 100)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """boot and system only: a partial package (allowed with allow_partial on fastboot)."""
    boot = sparse_image(tmp_path / "boot.img", 200 << 10)  # not a multiple of 4096
    system = sparse_image(tmp_path / "system.img", 1 << 20)
    out = tmp_path / "zero-heavy.zpk"
    build_package(INFO, [PartitionSource("boot", boot, True),
                         PartitionSource("system", system, True)],
                  [keymod.load_private_key(SIGNING_KEY)], out, block_size=BLOCK)
    return out


def trust() -> keymod.TrustStore:
    return keymod.TrustStore.load([SIGNING_PUB], use_default_dir=False)


def dirty(runner: EmulatorRunner, name: str) -> None:
    """The target slot holds something else entirely (0xFF), as an old build would."""
    path = runner.storage.partition_path(name, "b")
    path.write_bytes(b"\xff" * path.stat().st_size)


def slot_equals_image(runner: EmulatorRunner, name: str, image: Path) -> bool:
    content = runner.storage.partition_path(name, "b").read_bytes()
    raw = image.read_bytes()
    return content == raw + bytes(len(content) - len(raw))


@pytest.mark.parametrize("erase_allowed", [True, False])
def test_slot_equals_the_image_whatever_it_held(tmp_path: Path, package: Path,
                                                erase_allowed: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        url = runner.start_fastboot_tcp(0, FastbootOptions(max_download_size=64 << 10))
        for name in ("boot", "system"):
            dirty(runner, name)
        if not erase_allowed:
            def refuse(name: str, slot: str | None) -> None:
                from zflash.errors import Code, ZflashError
                raise ZflashError(Code.DEVICE_REFUSED, "erase not allowed")
            monkeypatch.setattr(runner.device, "erase_image", refuse)
        events: list[dict] = []
        flash(url, package, trust(), FlashOptions(reboot=False, allow_partial=True), events.append)
        assert slot_equals_image(runner, "boot", tmp_path / "boot.img")
        assert slot_equals_image(runner, "system", tmp_path / "system.img")
    warned = [e for e in events if e["event"] == "device_message" and "FILL" in
              str(e.get("message"))]
    assert bool(warned) == (not erase_allowed)


def test_zero_blocks_are_not_sent(tmp_path: Path, package: Path) -> None:
    """DONT_CARE for zeros: what goes on the wire is the data blocks plus headers."""
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        url = runner.start_fastboot_tcp(0, FastbootOptions(max_download_size=64 << 10))
        summary = flash(url, package, trust(), FlashOptions(reboot=False, allow_partial=True), lambda e: None)
    data = 2 * 5 * BLOCK  # per image: blocks 0-2, 6 and 7 carry data (7 only 100 bytes)
    assert data <= summary.sent_bytes < data + 1024  # + sparse headers, no zeros


def test_each_block_is_hashed_once_on_the_host(tmp_path: Path, package: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    hashed = count_host_hashes(monkeypatch)
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        url = runner.start_fastboot_tcp(0, FastbootOptions(max_download_size=64 << 10))
        flash(url, package, trust(), FlashOptions(reboot=False, allow_partial=True), lambda e: None)
    assert len(hashed) == len(set(hashed)), "a block was hashed twice"
    with Package(package) as pkg:
        data_blocks = {(p.name, i) for p in pkg.manifest.partitions
                       for i, e in enumerate(pkg.head.tables[p.name]) if e.kind != 0}
    assert set(hashed) == data_blocks


def test_a_single_piece_is_a_sparse_image_the_stock_tool_reads(tmp_path: Path,
                                                               package: Path) -> None:
    simg2img = require_tool("simg2img")
    with Package(package) as pkg:
        part = pkg.manifest.partitions[1]
        blocks = PartitionBlocks(pkg, part, None)
        plans = plan_pieces(blocks, 4096, 1 << 30, ChunkType.FILL)
        assert len(plans) == 1
        stream = PieceStream(blocks, plans[0], 4096)
        (tmp_path / "piece.simg").write_bytes(stream.read())
    subprocess.run([simg2img, str(tmp_path / "piece.simg"), str(tmp_path / "out.img")],
                   check=True, timeout=30)
    raw = (tmp_path / "system.img").read_bytes()
    assert hashlib.sha256((tmp_path / "out.img").read_bytes()).digest() == \
        hashlib.sha256(raw).digest()


def test_pieces_respect_the_download_limit(package: Path) -> None:
    with Package(package) as pkg:
        part = pkg.manifest.partitions[1]
        blocks = PartitionBlocks(pkg, part, None)
        for limit in (16 << 10, 64 << 10):
            plans = plan_pieces(blocks, 4096, limit, ChunkType.DONT_CARE)
            assert all(p.size(4096) <= limit for p in plans)
            covered = [(p.start, p.end) for p in plans]
            assert covered[0][0] == 0 and all(a[1] == b[0] for a, b in zip(covered, covered[1:]))
            total = sum(len(PieceStream(blocks, p, 4096).read()) for p in plans)
            assert total == sum(p.size(4096) for p in plans)
