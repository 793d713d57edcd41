"""zflash flash onto fastboot: sparse pieces planned from the block table and streamed
(issue 10): zero blocks become DONT_CARE after an erase (FILL when the erase is refused),
the slot always equals the image whatever it held, and each block is hashed once."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from conftest import SIGNING_KEY, SIGNING_PUB, require_tool
from emulator_helpers import count_host_hashes, demo_profile
from zflash.emulator.fastboot_server import FastbootOptions
from zflash.emulator.runner import EmulatorRunner
from zflash.flash import FlashOptions, PreflightRefused, flash
from zflash.package import keys as keymod
from zflash.package.reader import Package
from zflash.package.sparse import ChunkType
from zflash.package.writer import PackageInfo, PartitionSource, build_package
from zflash.targets.blocks import BlockCheck, PartitionBlocks
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


def test_a_corrupt_last_block_is_refused_before_any_write(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The blocks are hashed while the first piece downloads (D183). A block corrupted after
    signing, last in the package so the hashing reaches it only after pieces were sent:
    refused with 9012, no `flash:` or `erase:` ever reached the device, slot b unchanged."""
    image = tmp_path / "system.img"
    image.write_bytes(os.urandom(1 << 20))
    out = tmp_path / "late-corruption.zpk"
    build_package(INFO, [PartitionSource("system", image, True)],
                  [keymod.load_private_key(SIGNING_KEY)], out, block_size=BLOCK, codec="none")
    data = bytearray(out.read_bytes())
    data[-1] ^= 0xFF  # the last stored byte: the last block of system
    out.write_bytes(bytes(data))
    from zflash.emulator import fastboot_server
    writes: list[str] = []
    for command in ("_flash", "_erase"):
        real = getattr(fastboot_server.FastbootSession, command)
        monkeypatch.setattr(fastboot_server.FastbootSession, command,
                            lambda self, arg, real=real, command=command:
                            (writes.append(f"{command}:{arg}"), real(self, arg))[1])
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        url = runner.start_fastboot_tcp(0, FastbootOptions(max_download_size=64 << 10))
        dirty(runner, "system")
        before = runner.storage.partition_path("system", "b").read_bytes()
        events: list[dict] = []
        with pytest.raises(PreflightRefused) as refused:
            flash(url, out, trust(), FlashOptions(reboot=False, allow_partial=True),
                  events.append)
        after = runner.storage.partition_path("system", "b").read_bytes()
    assert refused.value.code == 9012
    assert writes == []
    assert after == before
    assert [e["check"] for e in events if e["event"] == "check_failed"] == ["blocks"]
    assert "blocks" not in [e["check"] for e in events if e["event"] == "check_passed"]


def test_blocks_check_while_the_first_piece_downloads(tmp_path: Path, package: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism of D183: the first `download:` starts before the last block is hashed,
    and the first `flash:` comes only after it."""
    from zflash.package import reader
    from zflash.targets.fastboot.client import FastbootClient
    order: list[str] = []
    real_decode = reader.decode_block
    real_download, real_command = FastbootClient.download, FastbootClient.command

    def decode(*args, **kwargs):
        order.append("hash")
        return real_decode(*args, **kwargs)

    def download(self, *args, **kwargs):
        order.append("download")
        return real_download(self, *args, **kwargs)

    def command(self, text, *args, **kwargs):
        order.append(text.split(":")[0])
        return real_command(self, text, *args, **kwargs)

    import zflash.targets.blocks as blocks_module
    monkeypatch.setattr(blocks_module, "decode_block", decode)
    monkeypatch.setattr(FastbootClient, "download", download)
    monkeypatch.setattr(FastbootClient, "command", command)
    real_check_run = blocks_module.BlockCheck._run

    def late_start(self, items):  # the checker starts after the first download began
        while "download" not in order:
            time.sleep(0.001)
        return real_check_run(self, items)

    monkeypatch.setattr(blocks_module.BlockCheck, "_run", late_start)
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        url = runner.start_fastboot_tcp(0, FastbootOptions(max_download_size=64 << 10))
        flash(url, package, trust(), FlashOptions(reboot=False, allow_partial=True),
              lambda e: None)
        assert slot_equals_image(runner, "system", tmp_path / "system.img")
    first_write = min(order.index(c) for c in ("flash", "erase") if c in order)
    assert order.index("download") < order.index("hash")
    assert "hash" not in order[first_write:]


def test_an_image_without_zero_blocks_that_fits_goes_raw_in_one_download(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D184: no zero block and within max-download-size: the raw image in one download (as
    the stock client sends it), from views of the package; the slot equals the image."""
    image = tmp_path / "system.img"
    image.write_bytes(os.urandom(5 * BLOCK + 300))  # a short last block too
    out = tmp_path / "dense.zpk"
    build_package(INFO, [PartitionSource("system", image, True)],
                  [keymod.load_private_key(SIGNING_KEY)], out, block_size=BLOCK)
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        forms: list[bool] = []
        real = runner.device.write_image

        def record(name, slot, source, size, sparse):
            forms.append(sparse)
            return real(name, slot, source, size, sparse)

        monkeypatch.setattr(runner.device, "write_image", record)
        url = runner.start_fastboot_tcp(0, FastbootOptions(max_download_size=1 << 20))
        dirty(runner, "system")
        summary = flash(url, out, trust(), FlashOptions(reboot=False, allow_partial=True),
                        lambda e: None)
        assert slot_equals_image(runner, "system", image)
    assert forms == [False]
    assert summary.sent_bytes == image.stat().st_size


def compressible_package(tmp_path: Path, data_blocks: int, zero_blocks: int) -> Path:
    """zlib blocks (each different, each compressible), then zeros: a sparse image."""
    image = tmp_path / "system.img"
    image.write_bytes(b"".join(os.urandom(BLOCK // 8) * 8 for _ in range(data_blocks)) +
                      bytes(zero_blocks * BLOCK))
    out = tmp_path / "compressed.zpk"
    build_package(INFO, [PartitionSource("system", image, True)],
                  [keymod.load_private_key(SIGNING_KEY)], out, block_size=BLOCK, codec="zlib")
    return out


def count_expansions(monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    """Every inflate of a block (to check it, or to send it), per block index."""
    from zflash.package import reader
    counts: dict[int, int] = {}
    real = reader.inflate_bounded

    def counting(stored, length, part, index):  # type: ignore[no-untyped-def]
        counts[index] = counts.get(index, 0) + 1
        return real(stored, length, part, index)

    monkeypatch.setattr(reader, "inflate_bounded", counting)
    return counts


def test_first_piece_blocks_are_expanded_once_beside_a_slow_sender(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D190: the check workers keep what they expand for the sender, in a bounded cache;
    when it is full they check blocks the sender sends only after the gate (or wait), never
    expanding a first-piece block only to drop it. A slow sender and a two-block cache make
    the workers run ahead: each first-piece block is still expanded once, no block more than
    twice (once for the gate, once to send), each hashed once, and the slot is the image."""
    import zflash.targets.blocks as blocks_module
    out = compressible_package(tmp_path, 40, 8)
    limit = 128 << 10
    with Package(out) as pkg:
        part = pkg.manifest.partitions[0]
        plans = plan_pieces(PartitionBlocks(pkg, part, None), 4096, limit, ChunkType.DONT_CARE)
    assert len(plans) >= 3
    first_piece = range(-(-plans[0].end * 4096 // BLOCK))
    monkeypatch.setattr(blocks_module, "KEEP_BYTES", 2 * BLOCK)
    expanded = count_expansions(monkeypatch)
    hashed = count_host_hashes(monkeypatch)
    real_raw_at = PartitionBlocks.raw_at

    def slow_raw_at(self, index):  # type: ignore[no-untyped-def]
        time.sleep(0.005)  # a slow link: the workers get far ahead of the sender
        return real_raw_at(self, index)

    monkeypatch.setattr(PartitionBlocks, "raw_at", slow_raw_at)
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        url = runner.start_fastboot_tcp(0, FastbootOptions(max_download_size=limit))
        dirty(runner, "system")
        flash(url, out, trust(), FlashOptions(reboot=False, allow_partial=True),
              lambda e: None)
        assert slot_equals_image(runner, "system", tmp_path / "system.img")
    assert {i: expanded.get(i) for i in first_piece} == {i: 1 for i in first_piece}
    assert set(expanded) == set(range(40)) and max(expanded.values()) <= 2
    assert sorted(hashed) == [("system", i) for i in range(40)]


@contextmanager
def _check_with_a_two_block_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                  ) -> Iterator[BlockCheck]:
    """A BlockCheck keeping expanded blocks, started on all 24 blocks of a compressible
    package, with room for two expanded blocks: the workers soon wait for room."""
    import zflash.targets.blocks as blocks_module
    out = compressible_package(tmp_path, 24, 0)
    monkeypatch.setattr(blocks_module, "KEEP_BYTES", 2 * BLOCK)
    with Package(out) as pkg:
        check = blocks_module.BlockCheck(pkg)
        check.keep_expanded()
        check.start([(pkg.manifest.partitions[0], list(range(24)))])
        yield check


def test_a_full_cache_does_not_hold_up_the_gate(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers waiting for room in the cache (nobody takes, nobody said where the gate
    is) still check every block once the gate waits: no deadlock, each block hashed once."""
    hashed = count_host_hashes(monkeypatch)
    with _check_with_a_two_block_cache(tmp_path, monkeypatch) as check:
        time.sleep(0.05)  # the cache fills; the workers wait for room
        assert len(hashed) < 24
        assert check.wait() is None
        assert check.checked["system"] == set(range(24))
    assert sorted(hashed) == [("system", i) for i in range(24)]


def test_with_the_cache_full_workers_check_what_is_sent_after_the_gate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D190, nobody taking: the workers keep the first two blocks (the cache holds two),
    then check blocks the sender sends only after the gate, from the farthest, but leave
    the last cacheful of those, and the rest of the first piece, until there is room."""
    hashed = count_host_hashes(monkeypatch)
    with _check_with_a_two_block_cache(tmp_path, monkeypatch) as check:
        check.sends_before_gate("system", 6)  # the first piece: blocks 0-5
        deadline = time.monotonic() + 10
        while len(hashed) < 2 + 16 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # nothing more comes without room
        assert sorted(i for _, i in hashed) == [0, 1] + list(range(8, 24))
        assert check.take("system", 0) is not None and check.take("system", 8) is None
        assert check.wait() is None
    assert sorted(hashed) == [("system", i) for i in range(24)]


def test_the_sender_does_not_wait_for_a_worker_hashing_a_raw_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D209: a raw block a worker claimed is sent from the map without waiting for the
    worker's verdict (the download only stages it; the gate waits for every verdict before
    a write). Workers stuck on their first blocks do not hold up the sender, which hashes
    the rest itself; each block is still hashed once, and the gate then sees all of them."""
    import threading
    import zflash.targets.blocks as blocks_module
    image = tmp_path / "system.img"
    image.write_bytes(os.urandom(16 * BLOCK))
    out = tmp_path / "raw.zpk"
    build_package(INFO, [PartitionSource("system", image, True)],
                  [keymod.load_private_key(SIGNING_KEY)], out, block_size=BLOCK, codec="none")
    hashed = count_host_hashes(monkeypatch)
    counting = blocks_module.decode_block
    release, stuck, resumed = threading.Event(), [], []

    def stuck_in_workers(part, index, entry, stored):  # type: ignore[no-untyped-def]
        if threading.current_thread().name.startswith("zflash-block-check"):
            stuck.append(index)
            release.wait(3)  # a sender that waits for the verdict waits this long
            resumed.append(index)
        return counting(part, index, entry, stored)

    monkeypatch.setattr(blocks_module, "decode_block", stuck_in_workers)
    with Package(out) as pkg:
        part = pkg.manifest.partitions[0]
        check = BlockCheck(pkg)
        check.start([(part, list(range(16)))])
        deadline = time.monotonic() + 10
        while len(stuck) < min(blocks_module.WORKERS, 16) and time.monotonic() < deadline:
            time.sleep(0.001)
        blocks = PartitionBlocks(pkg, part, check.checked[part.name], check.wait, check)
        sent = b"".join(bytes(view) for view in blocks.raw_views(0, 16))
        assert not resumed  # the sender finished while the workers were stuck
        assert sent == image.read_bytes()
        release.set()
        assert check.wait() is None
        assert check.checked["system"] == set(range(16))
    assert sorted(hashed) == [("system", i) for i in range(16)]
