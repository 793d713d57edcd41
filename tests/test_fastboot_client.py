"""zflash's fastboot client over TCP: against the emulator, and against broken devices.

The emulator scenarios mirror the stock-client interop tests (raw, sparse, split, slots,
reboot) plus flashall with android-info.txt. The fake devices below break the protocol in
one way each; every case must end in a coded error, within the (short) timeout.
"""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import REPO, require_tool
from test_fastboot_emulator import (make_device, make_image, padded_sha256,
                                    partition_sha256)
from zflash.emulator.device import EmulatedDevice
from zflash.emulator.fastboot_server import FastbootOptions, FastbootTcpServer
from zflash.errors import Code, ZflashError
from zflash.targets.fastboot.client import FastbootClient, normalize_url
from zflash.targets.fastboot.flashall import check_requirements, flashall, parse_android_info
from zflash.protocol.fastboot.tcp import encode_message, message_header


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[EmulatedDevice, FastbootTcpServer]]:
    device = make_device(tmp_path / "dev")
    with FastbootTcpServer(device) as server:
        yield device, server


def connect(server: FastbootTcpServer, **kw: object) -> FastbootClient:
    return FastbootClient.connect(server.url, **kw)  # type: ignore[arg-type]


# --- against the emulator ----------------------------------------------------------------------

def test_getvar_and_urls(served: tuple[EmulatedDevice, FastbootTcpServer]) -> None:
    _, server = served
    for url in (server.url, f"tcp:127.0.0.1:{server.port}", f"tcp://127.0.0.1:{server.port}"):
        with FastbootClient.connect(url) as client:
            assert client.getvar("product") == "zx-demo"
    with connect(server) as client:
        values = client.getvar_all()
    assert values["version-bootloader"] == "ZXBL-1.0" and values["slot-count"] == "2"
    assert normalize_url("tcp:h") == "fastboot+tcp://h"
    for bad in ("udp:h", "serial:///dev/ttyUSB0"):
        with pytest.raises(ZflashError) as info:
            FastbootClient.connect(bad)
        assert info.value.code == Code.BAD_DEVICE_URL


def test_flash_raw_sparse_split_slots_and_reboot(served: tuple[EmulatedDevice,
                                                               FastbootTcpServer],
                                                 tmp_path: Path) -> None:
    device, server = served
    boot = make_image(tmp_path / "boot.img", 700_000)
    system = make_image(tmp_path / "system.img", 4 << 20, seed=2, noise=6)
    simg = tmp_path / "system.simg"
    subprocess.run([require_tool("img2simg"), str(system), str(simg)], check=True, timeout=30)
    with connect(server) as client:
        assert client.flash("boot", boot, slot="other") == ["boot_b"]
        assert client.flash("system", system, slot="b") == ["system_b"]  # split: 4 MiB
        assert client.flash("system", simg) == ["system_a"]  # sparse, split too
        client.set_active("b")
        client.reboot()
    with connect(server) as client:  # served after the boot simulation
        assert client.current_slot() == "b"
    assert partition_sha256(device, "boot", "b") == padded_sha256(boot, 1 << 20)
    assert partition_sha256(device, "system", "b") == padded_sha256(system, 4 << 20)
    assert partition_sha256(device, "system", "a") == padded_sha256(system, 4 << 20)
    assert device.meta["last_boot"]["booted_slot"] == "b"


def test_bad_slot_names(served: tuple[EmulatedDevice, FastbootTcpServer],
                        tmp_path: Path) -> None:
    _, server = served
    image = make_image(tmp_path / "boot.img", 4096)
    with connect(server) as client:
        for slot in ("c", "zz"):
            with pytest.raises(ZflashError) as info:
                client.flash("boot", image, slot=slot)
            assert info.value.code == Code.SLOT
        assert client.resolve_slot("_b") == "b" and client.resolve_slot("other") == "b"


def _image_dir(tmp_path: Path, info: str | None) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    make_image(out / "boot.img", 200_000, seed=11)
    make_image(out / "system.img", 3 << 20, seed=12, noise=6)
    make_image(out / "logo.img", 50_000, seed=13)
    if info is not None:
        (out / "android-info.txt").write_text(info)
    return out


def test_flashall_checks_then_writes_inactive_slot(served: tuple[EmulatedDevice,
                                                                 FastbootTcpServer],
                                                   tmp_path: Path) -> None:
    device, server = served
    out = _image_dir(tmp_path, "require board=zx-demo|zx-other\n"
                               "require version-baseband=ZXB-1*\n"
                               "require-for-product:someone-else version-bootloader=never\n"
                               "reject version-bootloader=ZXBL-0.9\n"
                               "require partition-exists=system\n")
    with connect(server) as client:
        result = flashall(client, out)
    assert result["flashed"] == ["boot_b", "logo", "system_b"] and result["slot"] == "b"
    with connect(server) as client:
        assert client.current_slot() == "b"
    assert partition_sha256(device, "system", "b") == padded_sha256(out / "system.img",
                                                                   4 << 20)
    assert partition_sha256(device, "logo", None) == padded_sha256(out / "logo.img", 256 << 10)


@pytest.mark.parametrize("info, code", [
    ("require board=zx-other\n", Code.COMPATIBILITY),
    ("require version-baseband=ZXB-200|ZXB-300\n", Code.COMPATIBILITY),
    ("require hardware=B02\n", Code.COMPATIBILITY),
    ("require version-bootloader=ZXBL-2.0\n", Code.COMPATIBILITY),
    ("reject version-baseband=ZXB-100\n", Code.COMPATIBILITY),
    ("require partition-exists=radio\n", Code.COMPATIBILITY),
    ("require version-secret=1\n", Code.UNVERIFIABLE),
    ("require board\n", Code.MALFORMED_PACKAGE),
    ("frobnicate board=x\n", Code.MALFORMED_PACKAGE),
])
def test_flashall_mismatch_writes_nothing(served: tuple[EmulatedDevice, FastbootTcpServer],
                                          tmp_path: Path, info: str, code: int) -> None:
    device, server = served
    out = _image_dir(tmp_path, info)
    before = device.storage.partition_path("boot", "b").read_bytes()
    with connect(server) as client, pytest.raises(ZflashError) as error:
        flashall(client, out)
    assert error.value.code == code
    assert device.storage.partition_path("boot", "b").read_bytes() == before
    assert device.meta["committed"]["b"] == {}


def test_flashall_unverifiable_can_be_accepted(served: tuple[EmulatedDevice,
                                                             FastbootTcpServer],
                                               tmp_path: Path) -> None:
    _, server = served
    out = _image_dir(tmp_path, "require version-secret=1\n")
    with connect(server) as client:
        result = flashall(client, out, accept_unverifiable=True, reboot=False)
    assert result["unverified"] and result["flashed"]


def test_flashall_refuses_unknown_partition_and_oversize(served: tuple[EmulatedDevice,
                                                                       FastbootTcpServer],
                                                         tmp_path: Path) -> None:
    device, server = served
    out = _image_dir(tmp_path, None)
    make_image(out / "radio.img", 4096)
    with connect(server) as client, pytest.raises(ZflashError) as error:
        flashall(client, out)
    assert error.value.code == Code.NO_SUCH_PARTITION
    (out / "radio.img").unlink()
    make_image(out / "logo.img", 300 << 10)
    with connect(server) as client, pytest.raises(ZflashError) as error:
        flashall(client, out)
    assert error.value.code == Code.IMAGE_TOO_LARGE  # issue 11: not a full cache
    assert device.meta["committed"]["b"] == {}


def test_check_requirements_is_pure() -> None:
    values = {"product": "ZX-Demo", "version-baseband": "ZXB-100"}
    reqs = parse_android_info("# comment\n\nrequire board=zx-demo\n"
                              "require baseband=ZXB-100|ZXB-101\n")
    assert check_requirements(reqs, values.get) == []


def test_cli_flash_getvar_and_errors(served: tuple[EmulatedDevice, FastbootTcpServer],
                                     tmp_path: Path) -> None:
    device, server = served
    image = make_image(tmp_path / "boot.img", 100_000)
    base = [sys.executable, "-m", "zflash", "fastboot", "-s", server.url]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=60,
                              cwd=REPO)

    done = run("--slot", "b", "flash", "boot", str(image), "--set-active")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "flashed boot_b; slot b active"
    assert run("getvar", "product").stdout.strip() == "product: zx-demo"
    assert '"value": "0x100000"' in run("getvar", "max-download-size", "--json").stdout
    missing = run("getvar", "nothing")
    assert missing.returncode == Code.DEVICE_REFUSED - 9000 and "Traceback" not in missing.stderr
    bad = run("flash", "boot", str(tmp_path / "missing.img"))
    assert bad.returncode == Code.FILE_UNREADABLE - 9000
    assert run("-S", "12Q", "flash", "boot", str(image)).returncode == Code.USAGE - 9000
    out = _image_dir(tmp_path, "require version-baseband=ZXB-999\n")
    refused = run("flashall", str(out))
    assert refused.returncode == Code.COMPATIBILITY - 9000, refused.stderr
    assert "error 9040" in refused.stderr and "version-baseband" in refused.stderr
    (out / "android-info.txt").write_text("require board=zx-demo\n")
    flashed = run("flashall", str(out), "--skip-reboot", "--json")
    assert flashed.returncode == 0, flashed.stderr
    assert '"slot": "b"' in flashed.stdout  # still running a (no reboot since set-active)
    assert partition_sha256(device, "boot", "b") == padded_sha256(image, 1 << 20)


def test_the_fastboot_cli_imports_the_host_side_only(served: tuple[EmulatedDevice,
                                                                   FastbootTcpServer],
                                                     tmp_path: Path) -> None:
    """`zflash fastboot` pays for what a host uses (D205): not the device engine or its
    events, not the idna codec for an ASCII host; getvar reads no image, so no sparse code;
    a flash within the download limit spools nothing, so no tempfile; nor does a split
    flash of a regular file, whose pieces are planned over a map of it (D208)."""
    device, server = served
    probe = ("import sys\nfrom zflash.cli import main\ntry:\n    main(sys.argv[1:])\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\nsys.exit(code)\n")

    def loaded(*args: str) -> set[str]:
        result = subprocess.run([sys.executable, "-c", probe, "fastboot", "-s", server.url,
                                 *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return set(result.stderr.split())

    def absent(names: set[str], *banned: str) -> None:
        for name in banned:
            assert not any(m == name or m.startswith(name + ".") for m in names), name

    host_only = ("zflash.protocol.fastboot.device", "zflash.protocol.fastboot.device_events",
                 "zflash.emulator", "encodings.idna", "stringprep")
    got = loaded("getvar", "product")
    assert "zflash.protocol.fastboot.host" in got  # it did talk to the device
    absent(got, *host_only, "zflash.package.sparse", "tempfile")
    image = make_image(tmp_path / "boot.img", 100_000)
    got = loaded("flash", "boot_a", str(image))
    assert "zflash.package.sparse" in got
    absent(got, *host_only, "tempfile")
    assert partition_sha256(device, "boot", "a") == padded_sha256(image, 1 << 20)
    split = make_image(tmp_path / "system.img", 3 << 20, seed=3, noise=6)  # over 1 MiB
    got = loaded("flash", "system_a", str(split))
    assert "zflash.package.sparse.mapped" in got
    absent(got, "tempfile")
    assert partition_sha256(device, "system", "a") == padded_sha256(split, 4 << 20)


def test_a_file_that_cannot_be_mapped_is_split_by_streaming(
        served: tuple[EmulatedDevice, FastbootTcpServer], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that cannot map files (mmap fails with ENODEV): the split falls back to
    the streaming splitter, and the partition still holds the image."""
    import errno
    import mmap
    import types
    import zflash.package.sparse.mapped as mapped_module
    refused = []

    def no_map(*args: object, **kwargs: object) -> mmap.mmap:
        refused.append(args)
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(mapped_module, "mmap", types.SimpleNamespace(
        mmap=no_map, ACCESS_READ=mmap.ACCESS_READ, PAGESIZE=mmap.PAGESIZE))
    device, server = served
    image = make_image(tmp_path / "system.img", 3 << 20, seed=4, noise=6)  # over 1 MiB
    with connect(server) as client:
        assert client.flash("system", str(image)) == ["system_a"]
    assert refused
    assert partition_sha256(device, "system", "a") == padded_sha256(image, 4 << 20)


@pytest.mark.parametrize("limit", [256 << 20, 32 << 20], ids=["one-download", "split"])
def test_a_flash_keeps_the_hosts_memory_flat(tmp_path: Path, limit: int) -> None:
    """An image is sent from a map of the file, within the limit or split (D208): the
    pages sent leave the client's resident set, so a 96 MiB image does not make a 96 MiB
    process (without the release its peak RSS is the image plus the interpreter)."""
    import os
    from zflash.emulator.storage import PartitionSpec, Profile, Storage
    size = 96 << 20
    profile = Profile(partitions=[PartitionSpec("system", size, True)],
                      max_download_size=limit)
    device = EmulatedDevice(Storage.create(tmp_path / "dev", profile))
    image = tmp_path / "system.img"
    image.write_bytes(os.urandom(size))
    # VmHWM, the peak of this process's own memory (ru_maxrss would carry the forking
    # parent's peak across exec)
    probe = ("import sys\nfrom zflash.cli import main\ntry:\n"
             "    main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
             "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
             "print(peak[0].split()[1], file=sys.stderr)\nsys.exit(code)\n")
    with FastbootTcpServer(device) as server:
        result = subprocess.run([sys.executable, "-c", probe, "fastboot", "-s", server.url,
                                 "flash", "system_a", str(image)],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert partition_sha256(device, "system", "a") == padded_sha256(image, size)
    peak_mib = int(result.stderr.split()[-1]) / 1024
    assert peak_mib < 80, f"peak RSS {peak_mib:.0f} MiB for a 96 MiB image"


# --- broken devices ----------------------------------------------------------------------------

Script = Callable[[socket.socket], None]


class FakeDevice:
    """A TCP listener that shakes hands, then runs ``script`` on the connection."""

    def __init__(self, script: Script, greet: bytes = b"FB01") -> None:
        self.script, self.greet = script, greet
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            try:
                conn.sendall(self.greet)
                conn.recv(4)
                self.script(conn)
                time.sleep(0.3)
            except OSError:
                pass

    @property
    def url(self) -> str:
        return f"fastboot+tcp://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.listener.close()


def read_message(conn: socket.socket) -> bytes:
    length = int.from_bytes(_exact(conn, 8), "big")
    return _exact(conn, length)


def _exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = conn.recv(n - len(data))
        if not part:
            raise OSError("closed")
        data += part
    return data


def answer(*responses: bytes) -> Script:
    def script(conn: socket.socket) -> None:
        read_message(conn)
        for response in responses:
            conn.sendall(encode_message(response))
    return script


def failure(script: Script, action: Callable[[FastbootClient], object],
            timeout: float = 0.5, greet: bytes = b"FB01") -> ZflashError:
    fake = FakeDevice(script, greet)
    started = time.monotonic()
    try:
        with pytest.raises(ZflashError) as info:
            with FastbootClient.connect(fake.url, timeout=timeout) as client:
                action(client)
    finally:
        fake.close()
    assert time.monotonic() - started < timeout + 3
    return info.value


@pytest.mark.parametrize("responses", [
    (b"OK",),  # truncated
    (b"OKAY" + b"x" * 300,),  # oversized
    (b"WHAT is this",),  # unknown prefix
    (b"DATA00000010",),  # DATA to a getvar
    (b"INFOworking", b"DATAnothex!"),  # bad DATA size
])
def test_bad_answers_are_protocol_errors(responses: tuple[bytes, ...]) -> None:
    error = failure(answer(*responses), lambda c: c.getvar("product"))
    assert error.code == Code.PROTOCOL


def test_lenient_with_real_bootloader_quirks() -> None:
    """Decimal sizes with spaces, ``_b`` slots, NUL padding, empty OKAY for unknown."""
    replies = {b"getvar:max-download-size": b"OKAY 1048576 ", b"getvar:current-slot": b"OKAY_b",
               b"getvar:slot-count": b"OKAY2", b"getvar:has-slot:boot": b"OKAYyes\x00\x00",
               b"getvar:unknown": b"OKAY", b"getvar:partition-size:boot_b": b"OKAY 0x2000"}

    def device(conn: socket.socket) -> None:
        while True:
            conn.sendall(encode_message(replies[read_message(conn)]))

    fake = FakeDevice(device)
    try:
        with FastbootClient.connect(fake.url, timeout=2) as client:
            assert client.max_download_size() == 1 << 20
            assert client.current_slot() == "b"
            assert client.slots() == ["a", "b"]
            assert client.partition_names("boot", None) == ["boot_b"]
            assert client.getvar("unknown") is None
            assert client.partition_size("boot_b") == 0x2000
    finally:
        fake.close()


def test_device_that_never_answers_times_out() -> None:
    error = failure(lambda conn: time.sleep(2), lambda c: c.getvar("product"), timeout=0.3)
    assert error.code == Code.TIMEOUT and "getvar:product" in error.detail


def test_info_lines_restart_the_timeout() -> None:
    def slow(conn: socket.socket) -> None:
        read_message(conn)
        for _ in range(4):
            time.sleep(0.2)
            conn.sendall(encode_message(b"INFOstill working"))
        conn.sendall(encode_message(b"OKAYdone"))

    fake = FakeDevice(slow)
    try:
        with FastbootClient.connect(fake.url, timeout=0.35) as client:
            assert client.command("oem slow") == "done"
    finally:
        fake.close()


def test_device_closing_mid_answer_is_link_lost() -> None:
    def close_mid(conn: socket.socket) -> None:
        read_message(conn)
        conn.sendall(message_header(10) + b"OKA")
        conn.close()

    assert failure(close_mid, lambda c: c.getvar("product")).code == Code.LINK_LOST


def test_fail_in_the_middle_of_the_data_phase(tmp_path: Path) -> None:
    image = make_image(tmp_path / "boot.img", 8 << 20, noise=50)

    def fail_mid(conn: socket.socket) -> None:
        assert read_message(conn).startswith(b"download:")
        conn.sendall(encode_message(b"DATA00800000"))
        _exact(conn, 8 + 100_000)
        conn.sendall(encode_message(b"FAILflash controller on fire"))
        conn.shutdown(socket.SHUT_RDWR)

    def send(client: FastbootClient) -> None:
        with open(image, "rb") as source:
            client.download(source, 8 << 20)

    error = failure(fail_mid, send)
    assert error.code == Code.DEVICE_REFUSED and "on fire" in error.detail


def test_fail_after_data_phase_and_bad_handshake(tmp_path: Path) -> None:
    def refuse(conn: socket.socket) -> None:
        read_message(conn)
        conn.sendall(encode_message(b"DATA00000004"))
        read_message(conn)
        conn.sendall(encode_message(b"FAILno room"))

    error = failure(refuse, lambda c: c.download(io.BytesIO(b"data"), 4))
    assert error.code == Code.DEVICE_REFUSED and "no room" in error.detail
    error = failure(lambda conn: None, lambda c: c.getvar("x"), greet=b"HTTP")
    assert error.code == Code.PROTOCOL
    error = failure(lambda conn: time.sleep(1), lambda c: c.getvar("x"), greet=b"", timeout=0.3)
    assert error.code == Code.TIMEOUT and "FB01" in error.detail


def test_emulator_drops_garbage_and_keeps_serving(served: tuple[EmulatedDevice,
                                                                FastbootTcpServer]) -> None:
    _, server = served
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        assert _exact(sock, 4) == b"FB01"
        sock.sendall(b"XX99")  # not a handshake: the device hangs up
        assert sock.recv(10) == b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        _exact(sock, 4)
        sock.sendall(b"FB01" + encode_message(b"x" * 5000))  # too long: FAIL, still served
        assert read_message(sock).startswith(b"FAIL")
        sock.sendall(encode_message(b"getvar:product"))
        assert read_message(sock) == b"OKAYzx-demo"


def test_emulator_options(tmp_path: Path) -> None:
    device = make_device(tmp_path / "dev")
    options = FastbootOptions(max_download_size=1 << 16, version_bootloader="BL-9",
                              extra_vars={"off-mode-charge": "0"})
    with FastbootTcpServer(device, options=options) as server, connect(server) as client:
        assert client.max_download_size() == 1 << 16
        assert client.getvar("version-bootloader") == "BL-9"
        assert client.getvar("off-mode-charge") == "0"
