"""The emulated bootloader's download buffer (D204): one staging file per served device,
overwritten in place by each connection's downloads, and never showing a later download the
bytes of an earlier, longer one.

Driven over real TCP by zflash's fastboot client, one connection after another, as the stock
client and `zflash flash` use the device.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from test_fastboot_emulator import make_device, padded_sha256, partition_sha256
from zflash.emulator.download_buffer import DownloadBuffer
from zflash.emulator.fastboot_server import FastbootTcpServer
from zflash.errors import Code, ZflashError
from zflash.package.sparse import write_sparse
from zflash.targets.fastboot.client import FastbootClient


def test_the_buffer_keeps_its_file_and_cuts_each_download_to_its_size(tmp_path: Path) -> None:
    buffer = DownloadBuffer(tmp_path)
    buffer.begin()
    buffer.write(b"L" * 10_000)
    assert buffer.end() == 10_000
    first = buffer.reader()
    buffer.begin()
    buffer.write(b"short")
    assert buffer.end() == 5
    staged = buffer.reader()
    assert staged is first  # the same open file, overwritten: no new allocation
    assert staged.read() == b"short"  # the longer download's tail is gone
    buffer.close()
    assert list(tmp_path.iterdir()) == []  # an unlinked temp file: nothing left behind


def test_a_shorter_download_on_a_later_connection_flashes_only_itself(tmp_path: Path) -> None:
    device = make_device(tmp_path / "dev")
    long_image = random.Random(1).randbytes(900_000)
    short_image = tmp_path / "short.img"
    short_image.write_bytes(random.Random(2).randbytes(100_000))
    with FastbootTcpServer(device) as server:
        with FastbootClient.connect(server.url) as client:
            client.download(io.BytesIO(long_image), len(long_image))
        with FastbootClient.connect(server.url) as client:
            with pytest.raises(ZflashError) as nothing:  # a new connection has nothing staged
                client.upload(io.BytesIO())
            assert nothing.value.code == Code.DEVICE_REFUSED
            client.download(io.BytesIO(short_image.read_bytes()), 100_000)
            client.command("flash:boot_b")
            staged = io.BytesIO()
            assert client.upload(staged) == 100_000
    assert staged.getvalue() == short_image.read_bytes()
    assert partition_sha256(device, "boot", "b") == padded_sha256(short_image, 1 << 20)


def test_a_truncated_sparse_image_after_a_longer_download_is_refused(tmp_path: Path) -> None:
    """The truncated image must meet the end of the staged bytes, not the earlier download's
    tail (which here is the rest of the same image): refused as truncated, the partition
    untouched."""
    device = make_device(tmp_path / "dev")
    sparse = io.BytesIO()
    write_sparse(io.BytesIO(random.Random(3).randbytes(600_000)), sparse)
    whole = sparse.getvalue()
    before = partition_sha256(device, "boot", "b")
    with FastbootTcpServer(device) as server:
        with FastbootClient.connect(server.url) as client:
            client.download(io.BytesIO(whole), len(whole))  # leaves the full image staged
        with FastbootClient.connect(server.url) as client:
            cut = whole[:len(whole) // 2]
            client.download(io.BytesIO(cut), len(cut))
            with pytest.raises(ZflashError) as refused:
                client.command("flash:boot_b")
    assert refused.value.code == Code.DEVICE_REFUSED and "truncated" in refused.value.detail
    assert partition_sha256(device, "boot", "b") == before
