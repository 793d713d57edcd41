"""Whole-image sparse validation: the host refuses before sending, the device before writing.

Before: a malformed sparse image (good chunks first, the fault near the end) was streamed to
the device, which wrote the good chunks and then failed (a half-written running slot) with a
generic 9034 on the host.
"""

from __future__ import annotations

import io
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO
from test_fastboot_emulator import make_device, partition_sha256
from test_sparse import CORRUPTIONS, Stream, chunk, image, sample_image
from zflash.emulator.device import EmulatedDevice
from zflash.emulator.fastboot_server import FastbootTcpServer
from zflash.errors import Code, ZflashError
from zflash.package import sparse
from zflash.package.sparse import validate_sparse, validate_sparse_file
from zflash.targets.fastboot.client import FastbootClient

BS = 4096


def _bad_images() -> Iterator[tuple[str, bytes]]:
    """Images whose first chunks are fine and whose fault comes late."""
    data = random.Random(3).randbytes(4 * BS)
    good = [chunk(0xCAC1, 4, data), chunk(0xCAC2, 2, b"\x07\x07\x07\x07")]
    out = data + b"\x07" * (2 * BS)
    yield "wrong crc at the end", image(good + [chunk(0xCAC4, 0, struct.pack("<I", 1))], BS, 6)
    yield "wrong image checksum", image(good, BS, 6, checksum=zlib.crc32(out) ^ 1)
    yield "truncated last chunk", image(good, BS, 6)[:-2]
    yield "fewer blocks than declared", image(good, BS, 7)
    yield "last chunk past total_blks", image(good + [chunk(0xCAC3, 3)], BS, 8)
    yield "one chunk missing", image(good, BS, 6, total_chunks=3)


BAD = list(_bad_images())


@pytest.mark.parametrize("name,data", CORRUPTIONS + BAD,
                         ids=[n for n, _ in CORRUPTIONS + BAD])
def test_validator_refuses_every_malformation(name: str, data: bytes) -> None:
    with pytest.raises(ZflashError) as err:
        validate_sparse(io.BytesIO(data))
    assert err.value.code == Code.MALFORMED_IMAGE


def test_validator_accepts_a_good_image_and_rewinds() -> None:
    data, out = sample_image()
    source = io.BytesIO(b"xx" + data)
    source.seek(2)
    summary = validate_sparse(source)
    assert source.tell() == 2
    assert summary.expanded_size == len(out) and summary.crc_checked
    assert summary.raw_bytes == 3 * 64 and summary.chunks == 5


def test_validator_on_a_stream_without_checksums() -> None:
    data = image([chunk(0xCAC1, 1, bytes(range(64))), chunk(0xCAC3, 5)], 64, 6)
    assert validate_sparse(Stream(data, 5)).total_blocks == 6  # type: ignore[arg-type]


def test_validator_bounds_the_size_from_the_header() -> None:
    huge = image([chunk(0xCAC3, 0xFFFFFFFF)], 4096, 0xFFFFFFFF)  # 16 TiB of DONT_CARE
    assert validate_sparse(io.BytesIO(huge)).expanded_size == 0xFFFFFFFF * 4096
    with pytest.raises(ZflashError) as err:
        validate_sparse(io.BytesIO(huge), max_size=1 << 40)
    assert err.value.code == Code.MALFORMED_IMAGE and "expands to" in err.value.detail


def test_validator_bounds_crc_work() -> None:
    """Many long FILL runs plus a checksum: refused after the structural pass, quickly."""
    count = sparse.MAX_CHECKED_RUNS + 1
    runs = [chunk(0xCAC2, 17, struct.pack("<I", i)) for i in range(count)]
    data = image(runs, 4096, 17 * count, checksum=1)
    with pytest.raises(ZflashError) as err:
        validate_sparse(io.BytesIO(data))
    assert "long FILL" in err.value.detail


def test_validator_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ZflashError) as err:
        validate_sparse_file(tmp_path / "missing.simg")
    assert err.value.code == Code.FILE_UNREADABLE


# --- the emulated device validates the whole download before writing -------------------------

@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[EmulatedDevice, FastbootTcpServer]]:
    device = make_device(tmp_path / "dev")
    with FastbootTcpServer(device) as server:
        yield device, server


@pytest.mark.parametrize("name,data", BAD, ids=[n for n, _ in BAD])
def test_device_leaves_the_running_slot_identical(served, tmp_path: Path, monkeypatch,
                                                  name: str, data: bytes) -> None:
    device, server = served
    running = device.meta["current_slot"]
    before = partition_sha256(device, "boot", running)
    bad = tmp_path / "bad.simg"
    bad.write_bytes(data)
    # A host that does not validate (like the stock client): the device must refuse alone.
    # (the client imports it from the package when it flashes, so patch it there)
    monkeypatch.setattr(sparse, "validate_sparse_file", lambda path: None)
    with FastbootClient.connect(server.url) as client:
        with pytest.raises(ZflashError) as err:
            client.flash_image(f"boot_{running}", bad)
        assert err.value.code == Code.DEVICE_REFUSED
    assert partition_sha256(device, "boot", running) == before


# --- the host refuses before a byte goes out ----------------------------------------------------

def test_host_refuses_before_download(served, tmp_path: Path, monkeypatch) -> None:
    device, server = served
    bad = tmp_path / "bad.simg"
    bad.write_bytes(BAD[0][1])
    sent: list[object] = []
    monkeypatch.setattr(FastbootClient, "download", lambda self, *a, **k: sent.append(a))
    with FastbootClient.connect(server.url) as client:
        with pytest.raises(ZflashError) as err:
            client.flash_image("boot_a", bad)
    assert err.value.code == Code.MALFORMED_IMAGE and sent == []


@pytest.mark.parametrize("name,data", BAD[:3], ids=[n for n, _ in BAD[:3]])
def test_cli_fastboot_flash_refuses_malformed_sparse(served, tmp_path: Path, name: str,
                                                     data: bytes) -> None:
    device, server = served
    before = {slot: partition_sha256(device, "boot", slot) for slot in "ab"}
    bad = tmp_path / "bad.simg"
    bad.write_bytes(data)
    done = subprocess.run([sys.executable, "-m", "zflash", "fastboot", "-s", server.url,
                           "flash", "boot", str(bad)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == Code.MALFORMED_IMAGE - 9000, done.stderr
    assert "9005" in done.stderr and "Traceback" not in done.stderr
    assert {slot: partition_sha256(device, "boot", slot) for slot in "ab"} == before
