"""The emulated device's fastboot session, driven in memory (no sockets) by zflash's client.

The loop transport below hands each written packet straight to a FastbootSession, the way
an emulated USB backend would (one bulk transfer = one packet), so these tests also show
the session is transport-agnostic. Helpers here are shared by the other fastboot tests.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections import deque
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zflash.emulator.device import EmulatedDevice
from zflash.emulator.fastboot_server import FastbootOptions, FastbootSession
from zflash.emulator.storage import PartitionSpec, Profile, Storage
from zflash.errors import Code, ZflashError
from zflash.targets.fastboot.client import FastbootClient, PacketLink
from zflash.package.sparse import split_sparse, write_sparse
from zflash.transport import Transport

MAX_DOWNLOAD = 1 << 20


def small_profile() -> Profile:
    """Small partitions and a 1 MiB download limit, so that splitting happens."""
    return Profile(partitions=[PartitionSpec("boot", 1 << 20, True),
                               PartitionSpec("system", 4 << 20, True),
                               PartitionSpec("logo", 256 << 10, False),
                               PartitionSpec("userdata", 1 << 20, False)],
                   max_download_size=MAX_DOWNLOAD)


def make_device(root: Path) -> EmulatedDevice:
    return EmulatedDevice(Storage.create(root, small_profile()))


def make_image(path: Path, size: int, seed: int = 1, noise: int = 1) -> Path:
    """Random, zero and constant runs (``noise`` weights random ones), so raw and fill
    chunks both occur and a noisy image does not shrink much as a sparse image."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        kind, n = rng.randrange(2 + noise), rng.choice((4096, 40960, 204800))
        out += bytes([0, 7][kind]) * n if kind < 2 else rng.randbytes(n)
    path.write_bytes(bytes(out[:size]))
    return path


def padded_sha256(image: Path, size: int) -> str:
    """What a flashed partition must hold: the (expanded) image, then zeros."""
    data = image.read_bytes()
    return hashlib.sha256(data + bytes(size - len(data))).hexdigest()


def partition_sha256(device: EmulatedDevice, name: str, slot: str | None) -> str:
    return hashlib.sha256(device.storage.partition_path(name, slot).read_bytes()).hexdigest()


class LoopTransport(Transport):
    """A packet transport whose far end is a FastbootSession in the same thread."""

    is_stream = False

    def __init__(self, session: FastbootSession) -> None:
        self.session = session
        self.out: deque[bytes] = deque()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.session.closed:
            raise ZflashError(Code.LINK_LOST, "device rebooted")
        self.out.extend(bytes(p) for p in self.session.receive(bytes(data), True))

    def read(self, max_bytes: int, timeout: float) -> bytes:
        if not self.out:
            raise ZflashError(Code.TIMEOUT, "nothing to read")
        return self.out.popleft()

    def close(self) -> None:
        self.session.close()


def loop_client(device: EmulatedDevice, options: FastbootOptions | None = None
                ) -> FastbootClient:
    session = FastbootSession(device, options)
    return FastbootClient(PacketLink(LoopTransport(session)), timeout=1.0)


@pytest.fixture
def device(tmp_path: Path) -> EmulatedDevice:
    return make_device(tmp_path / "dev")


# --- variables ---------------------------------------------------------------------------------

def test_getvar_reports_the_device_model(device: EmulatedDevice) -> None:
    client = loop_client(device)
    values = client.getvar_all()
    assert values["product"] == "zx-demo" and values["serialno"] == "ZXEMU0001"
    assert values["version-baseband"] == "ZXB-100" and values["hw-revision"] == "A01"
    assert values["max-download-size"] == "0x100000"
    assert values["partition-size:system_b"] == "0x400000"
    assert values["has-slot:logo"] == "no" and values["current-slot"] == "a"
    assert client.getvar("partition-size:logo") == "0x40000"
    assert client.getvar("slot-successful:_b") == "yes"
    assert client.getvar("is-userspace") == "no"
    assert client.getvar("no-such-variable") is None
    assert client.getvar("partition-size:nothing") is None
    assert client.max_download_size() == MAX_DOWNLOAD and client.slots() == ["a", "b"]


def test_max_download_size_option_overrides_profile(device: EmulatedDevice) -> None:
    client = loop_client(device, FastbootOptions(max_download_size=64 << 10))
    assert client.max_download_size() == 64 << 10


# --- flashing ----------------------------------------------------------------------------------

def test_flash_raw_small_image_and_boot(device: EmulatedDevice, tmp_path: Path) -> None:
    image = make_image(tmp_path / "boot.img", 300_000)
    client = loop_client(device)
    assert client.flash("boot", image, slot="b") == ["boot_b"]
    assert partition_sha256(device, "boot", "b") == padded_sha256(image, 1 << 20)
    assert client.set_active("b") == "b"
    client.reboot()
    assert device.meta["current_slot"] == "b"
    assert device.meta["last_boot"]["booted_slot"] == "b"
    assert device.meta["committed"]["b"]["boot"]["sha256"] == padded_sha256(image, 1 << 20)


def test_flash_large_raw_image_is_split(device: EmulatedDevice, tmp_path: Path) -> None:
    image = make_image(tmp_path / "system.img", 4 << 20, seed=2, noise=6)
    events: list[dict] = []  # type: ignore[type-arg]
    client = loop_client(device)
    client.on_event = events.append
    assert client.flash("system", image) == ["system_a"]
    pieces = [e for e in events if e["event"] == "piece"]
    assert len(pieces) >= 3 and all(e["bytes"] <= MAX_DOWNLOAD for e in pieces)
    assert partition_sha256(device, "system", "a") == padded_sha256(image, 4 << 20)


def test_flash_sparse_image_and_pieces_keep_dont_care(device: EmulatedDevice,
                                                      tmp_path: Path) -> None:
    raw = make_image(tmp_path / "system.img", 3 << 20, seed=3)
    simg = tmp_path / "system.simg"
    with open(raw, "rb") as src, open(simg, "wb") as out:
        write_sparse(src, out)
    client = loop_client(device)
    client.flash("system", simg, slot="all", size_limit=256 << 10)
    for slot in "ab":
        assert partition_sha256(device, "system", slot) == padded_sha256(raw, 4 << 20)


def test_each_piece_alone_writes_only_its_blocks(device: EmulatedDevice,
                                                 tmp_path: Path) -> None:
    """DONT_CARE outside a piece leaves flash alone: the property split flashing needs."""
    image = make_image(tmp_path / "boot.img", 1 << 20, seed=4, noise=20)
    client = loop_client(device)
    pieces = list(_piece_files(image, 300 << 10, tmp_path))
    client.flash_image("boot_b", pieces[1][0])
    data = device.storage.partition_path("boot", "b").read_bytes()
    start, end = pieces[1][1] * 4096, pieces[1][2] * 4096
    assert data[start:end] == image.read_bytes()[start:end]
    assert data[:start] == bytes(start)  # untouched (fresh device: zeros)


def _piece_files(image: Path, limit: int, tmp_path: Path):  # type: ignore[no-untyped-def]
    for piece in split_sparse(image, limit):
        path = tmp_path / f"piece{piece.index}.simg"
        path.write_bytes(piece.file.read())
        yield path, piece.start_block, piece.end_block


def test_unslotted_partition_and_erase(device: EmulatedDevice, tmp_path: Path) -> None:
    image = make_image(tmp_path / "logo.img", 100_000)
    client = loop_client(device)
    assert client.flash("logo", image, slot="b") == ["logo"]  # no slots: warned, ignored
    assert partition_sha256(device, "logo", None) == padded_sha256(image, 256 << 10)
    assert client.erase("logo") == ["logo"]
    assert device.storage.partition_path("logo", None).read_bytes() == bytes(256 << 10)
    client.erase("userdata")  # asked for by name: allowed


def test_image_larger_than_partition_is_9041_before_writing(device: EmulatedDevice,
                                                           tmp_path: Path) -> None:
    image = make_image(tmp_path / "boot.img", (1 << 20) + 4096)
    client = loop_client(device)
    with pytest.raises(ZflashError) as info:
        client.flash("boot", image)
    assert info.value.code == Code.IMAGE_TOO_LARGE  # issue 11: its own code, not a full cache
    assert device.storage.partition_path("boot", "a").read_bytes() == bytes(1 << 20)


def test_device_refusals_are_coded(device: EmulatedDevice, tmp_path: Path) -> None:
    image = make_image(tmp_path / "x.img", 8192)
    client = loop_client(device)
    for command, code in [("flash:boot_a", Code.DEVICE_REFUSED),  # nothing downloaded
                          ("download:00200000", Code.DEVICE_REFUSED),  # > max-download-size
                          ("flash:nothing", Code.DEVICE_REFUSED),
                          ("set_active:c", Code.DEVICE_REFUSED),
                          ("oem unknown", Code.DEVICE_REFUSED),
                          ("boot", Code.DEVICE_REFUSED), ("upload", Code.DEVICE_REFUSED)]:
        with pytest.raises(ZflashError) as info:
            client.command(command)
        assert info.value.code == code, command
    with open(image, "rb") as src:
        client.download(src, 8192)
    with pytest.raises(ZflashError, match="has slots"):
        client.command("flash:boot")


def test_locked_device_refuses_flash(device: EmulatedDevice, tmp_path: Path) -> None:
    image = make_image(tmp_path / "boot.img", 8192)
    client = loop_client(device)
    client.command("flashing lock")
    assert client.getvar("unlocked") == "no"
    with pytest.raises(ZflashError, match="locked"):
        client.flash("boot", image)
    client.command("flashing unlock")
    client.flash("boot", image)


def test_stage_and_upload_round_trip(device: EmulatedDevice) -> None:
    client = loop_client(device)
    data = random.Random(5).randbytes(300_000)
    client.download(io.BytesIO(data), len(data))
    out = io.BytesIO()
    assert client.upload(out) == len(data) and out.getvalue() == data


def test_oem_fail_next_boot_sets_the_fault(device: EmulatedDevice) -> None:
    client = loop_client(device)
    client.oem("fail-next-boot")
    assert device.fail_next_boot is True
    client.command("reboot-bootloader")  # back to the bootloader: no boot simulation
    assert device.meta["last_boot"] is None


def test_malformed_sparse_image_is_refused(device: EmulatedDevice) -> None:
    client = loop_client(device)
    bad = bytes.fromhex("3aff26ed") + bytes(40)
    client.download(io.BytesIO(bad), len(bad))
    with pytest.raises(ZflashError, match="sparse"):
        client.command("flash:boot_b")


def test_image_writer_without_real_files(tmp_path: Path) -> None:
    """In-memory sources take the copy loop instead of copy_file_range."""
    from zflash.emulator import image_write
    target = tmp_path / "part.img"
    target.write_bytes(b"\xff" * 65536)
    data = random.Random(6).randbytes(10_000)
    assert image_write.write_image(target, 65536, io.BytesIO(data), len(data), False) == 10_000
    assert target.read_bytes() == data + bytes(65536 - 10_000)
    simg = io.BytesIO()
    write_sparse(io.BytesIO(data), simg)
    simg.seek(0)
    target.write_bytes(b"\xff" * 65536)
    image_write.write_image(target, 65536, simg, len(simg.getvalue()), True)
    assert target.read_bytes() == data + bytes(65536 - 10_000)
    with pytest.raises(ZflashError) as info:
        image_write.write_image(target, 4096, io.BytesIO(data), len(data), False)
    assert info.value.code == Code.IMAGE_TOO_LARGE
    with pytest.raises(ZflashError) as info:
        image_write.write_image(target, 65536, io.BytesIO(data[:10]), len(data), False)
    assert info.value.code == Code.MALFORMED_IMAGE


# --- hostile commands: FAIL answers, never an exception ---------------------------------------

@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(commands=st.lists(st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.sampled_from(["getvar:all", "download:00000010", "download:zz", "flash:boot_a",
                     "flash:logo", "erase:boot_b", "set_active:b", "reboot-bootloader",
                     "getvar:partition-size:", "getvar:has-slot:", "getvar:slot-retry-count:q",
                     "oem device-info", "flashing get_unlock_ability", "upload"])),
    max_size=8))
def test_session_answers_random_commands(tmp_path_factory: pytest.TempPathFactory,
                                         commands: list[str]) -> None:
    device = make_device(tmp_path_factory.mktemp("fuzz"))
    session = FastbootSession(device)
    for command in commands:
        if session.closed or not command:
            break
        answers = list(session.receive(command.encode()))
        if answers and answers[-1].startswith(b"DATA") and session.engine.data_left:
            answers = list(session.receive(bytes(session.engine.data_left)))
        assert answers and answers[-1][:4] in (b"OKAY", b"FAIL", b"DATA")
    session.close()
