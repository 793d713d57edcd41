"""`pack` refuses inputs it could never finish: endless files and sparse headers claiming TiB.

Before: a sparse image whose one DONT_CARE chunk claims 16 TiB, or `--image boot=/dev/zero`,
made `zflash pack` run forever (killed after 15 s in the measurement).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import INFO, REPO, SIGNING_KEY
from zflash.errors import Code, ZflashError
from zflash.package import keys as keymod
from zflash.package.writer import PartitionSource, build_package


def huge_dont_care(path: Path, blocks: int = 0xFFFFFFFF, block_size: int = 4096) -> Path:
    header = struct.pack("<IHHHHIIII", 0xED26FF3A, 1, 0, 28, 12, block_size, blocks, 1, 0)
    path.write_bytes(header + struct.pack("<HHII", 0xCAC3, 0, blocks, 12))
    return path


def pack(tmp_path: Path, *images: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "zflash", "pack", "--product", "p", "--hw-rev", "A",
            "--baseband", "B", "--version", "1", "--rollback-index", "1",
            "--key", str(SIGNING_KEY), "-o", str(tmp_path / "out.zpk")]
    for image in images:
        args += ["--image", image]
    # The timeout turns a hang (the old behaviour) into a failure instead of a stuck suite.
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)


def test_pack_refuses_16_tib_dont_care(tmp_path: Path) -> None:
    done = pack(tmp_path, f"boot={huge_dont_care(tmp_path / 'huge.simg')}")
    assert done.returncode == Code.MALFORMED_IMAGE - 9000, done.stderr
    assert "larger than" in done.stderr and not (tmp_path / "out.zpk").exists()


def test_pack_refuses_dev_zero(tmp_path: Path) -> None:
    done = pack(tmp_path, "boot=/dev/zero")
    assert done.returncode == Code.FILE_UNREADABLE - 9000, done.stderr
    assert "not a regular file" in done.stderr


def test_pack_refuses_a_fifo_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.img"
    os.mkfifo(fifo)
    done = pack(tmp_path, f"boot={fifo}")
    assert done.returncode == Code.FILE_UNREADABLE - 9000, done.stderr


def test_tables_of_all_images_together_are_bounded(tmp_path: Path) -> None:
    """Each image alone fits, together their tables exceed MAX_TABLES_SIZE: refused first."""
    key = keymod.load_private_key(SIGNING_KEY)
    blocks = 700_000 * 16  # 700k package blocks of 64 KiB each (33.6 MB of table)
    sources = [PartitionSource(name, huge_dont_care(tmp_path / f"{name}.simg", blocks), True)
               for name in ("a", "b")]
    with pytest.raises(ZflashError) as err:
        build_package(INFO, sources, [key], tmp_path / "out.zpk")
    assert err.value.code == Code.MALFORMED_IMAGE and "block tables" in err.value.detail


def test_a_file_growing_while_packed_is_read_to_its_size_at_open(tmp_path: Path) -> None:
    from zflash.package.images import open_image

    path = tmp_path / "grow.img"
    path.write_bytes(b"x" * 10000)
    with open_image(path) as image:
        with open(path, "ab") as more:
            more.write(b"y" * 5000)
        assert sum(len(b) for b in image.iter_blocks(4096)) == 10000
