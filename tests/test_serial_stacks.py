"""zflash through the serial stacks labs share boards with: ser2net (RFC 2217 and raw TCP)
and socat, the real Debian tools, in front of the emulator's pty; plus the transport rules
that make them work (large reads on every pyserial URL, rfc2217 defaults, true messages)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import require_tool
from emulator_helpers import GOOD, demo_profile, image_sha256, partition_prefix_sha256
from serial_peers import free_port, ser2net, socat
from test_flash_e2e import TRUST, zflash
from zflash.emulator.link import TcpListener
from zflash.emulator.runner import EmulatorRunner, LinkFaults
from zflash.errors import Code, ZflashError
from zflash.transport import open_transport, parse_device_url
from zflash.transport.serial import pyserial_target

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs ptys")


# ------------------------------------------------------------------ transport rules

def test_socket_url_reads_what_arrived_in_one_call() -> None:
    """socket:// reports in_waiting as 0 or 1: a read must not go byte by byte."""
    payload = bytes(range(256)) * 1024  # 256 KiB
    with TcpListener() as listener, \
            open_transport(f"socket://127.0.0.1:{listener.port}", timeout=2) as host:
        conn = listener.accept(2)
        assert conn is not None
        calls = []
        real_read = host._port.read  # type: ignore[attr-defined]

        def counting_read(size: int = 1) -> bytes:
            calls.append(size)
            return real_read(size)

        host._port.read = counting_read  # type: ignore[attr-defined]
        conn.write(payload)
        got = bytearray()
        while len(got) < len(payload):
            got += host.read(1 << 20, 5)
        conn.close()
    assert bytes(got) == payload
    assert len(calls) < 200, f"{len(calls)} pyserial reads for 256 KiB"


@pytest.mark.parametrize("url,expected", [  # rfc2217:// has its own client: test_rfc2217.py
    ("socket://h:1?logging=debug", "socket://h:1?logging=debug"),
    ("serial:///dev/ttyUSB0?baud=921600", "/dev/ttyUSB0"),
])
def test_pyserial_gets_the_port_or_the_url_as_given(url: str, expected: str) -> None:
    assert pyserial_target(parse_device_url(url)) == expected


@pytest.mark.parametrize("scheme", ["rfc2217", "socket"])
def test_nothing_listening_is_a_serial_server_error(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}"
    with pytest.raises(ZflashError) as info:
        open_transport(url, timeout=2)
    assert info.value.code == Code.SERIAL_SERVER
    assert "connection refused" in info.value.detail
    assert "cable" not in info.value.info.fix


def test_rfc2217_to_a_raw_tcp_port_says_use_socket() -> None:
    """A server that accepts but never negotiates (ser2net's raw accepter, socat)."""
    with TcpListener() as listener:
        with pytest.raises(ZflashError) as info:
            open_transport(f"rfc2217://127.0.0.1:{listener.port}?timeout=0.5", timeout=2)
    assert info.value.code == Code.SERIAL_SERVER
    assert "RFC 2217 negotiation" in info.value.detail
    assert "socket://" in info.value.detail


# ------------------------------------------------------------------ the real stacks

@pytest.fixture
def pty_device(tmp_path: Path):  # type: ignore[no-untyped-def]
    """An emulated device on a pty, flashed with the 1.1.0 sample; yields (runner, path)."""
    runner = EmulatorRunner(tmp_path / "dev", demo_profile())
    url = runner.start_pty()
    try:
        result = zflash("flash", str(GOOD), "-d", url, *TRUST, "--no-reboot")
        assert result.returncode == 0, result.stderr
        yield runner, url.removeprefix("serial://")
    finally:
        runner.stop()


STACKS = ["ser2net-rfc2217", "ser2net-raw", "socat"]


def stack_url(stack: str, device: str, workdir: Path, stack_context: list) -> str:
    """Start ``stack`` in front of ``device``; the URL zflash opens through it."""
    if stack == "socat":
        context = socat(require_tool("socat"), device)
        scheme = "socket"
    else:
        rfc2217 = stack == "ser2net-rfc2217"
        context = ser2net(require_tool("ser2net"), device, workdir, rfc2217=rfc2217)
        scheme = "rfc2217" if rfc2217 else "socket"
    port = context.__enter__()
    stack_context.append(context)
    return f"{scheme}://127.0.0.1:{port}"


@pytest.fixture
def through():  # type: ignore[no-untyped-def]
    """Factory: (stack, device, workdir) -> URL; stops every peer it started."""
    started: list = []
    yield lambda stack, device, workdir: stack_url(stack, device, workdir, started)
    for context in reversed(started):
        context.__exit__(None, None, None)


@posix_only
@pytest.mark.parametrize("stack", STACKS)
def test_backup_through_serial_stack(pty_device, through, tmp_path: Path, stack: str) -> None:
    runner, device = pty_device
    url = through(stack, device, tmp_path)
    out = tmp_path / "boot.bin"
    result = zflash("backup", "boot", "-d", url, "-o", str(out), "--slot", "a", timeout=60)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data == (runner.storage.root / "partitions" / "boot_a.img").read_bytes()
    assert hashlib.sha256(data).hexdigest() in result.stdout


@posix_only
@pytest.mark.parametrize("stack", STACKS)
def test_flash_through_serial_stack(tmp_path: Path, through, stack: str) -> None:
    runner = EmulatorRunner(tmp_path / "dev", demo_profile())
    try:
        device = runner.start_pty().removeprefix("serial://")
        url = through(stack, device, tmp_path)
        result = zflash("flash", str(GOOD), "-d", url, *TRUST, "--no-reboot", timeout=60)
        assert result.returncode == 0, result.stderr
        root = runner.storage.root
        size = (GOOD.parent / "images" / "1.1.0" / "system.img").stat().st_size
        assert partition_prefix_sha256(root, "system_b.img", size) == \
            image_sha256("1.1.0", "system")
    finally:
        runner.stop()


@posix_only
def test_plain_rfc2217_url_to_ser2net_connects(pty_device, through, tmp_path: Path) -> None:
    """The labgrid path: NetworkSerialPort gives a bare rfc2217://HOST:PORT."""
    _, device = pty_device
    url = through("ser2net-rfc2217", device, tmp_path)
    result = zflash("info", "-d", url, "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    assert '"zx-demo"' in result.stdout


# ------------------------------------------------------------------ the pty's name

def wait_for(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@posix_only
def test_pty_keeps_its_name_when_the_device_gives_up_on_a_host(tmp_path: Path) -> None:
    """A host that stops reading (SIGSTOP mid-backup) with the port open: the device ends
    the session after its write timeout; the pty, and so the printed URL, must stay."""
    ended = threading.Event()
    runner = EmulatorRunner(tmp_path / "dev", demo_profile(),
                            faults=LinkFaults(bytes_per_second=200_000),
                            log=lambda message: ended.set() if "session ended" in message
                            else None)
    try:
        url = runner.start_pty(write_timeout=0.5)
        out = tmp_path / "system.bin"
        host = subprocess.Popen([sys.executable, "-m", "zflash", "backup", "system", "-d", url,
                                 "-o", str(out), "--slot", "a"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            part = out.with_name(f".{out.name}.part")
            assert wait_for(lambda: part.exists() and part.stat().st_size > 0)
            host.send_signal(signal.SIGSTOP)
            assert ended.wait(15), "the device never gave up on the stopped host"
        finally:
            host.kill()
            host.wait(10)
        assert runner.urls == [url]
        result = zflash("info", "-d", url, "--json", timeout=30)
        assert result.returncode == 0, result.stderr
        assert '"zx-demo"' in result.stdout
    finally:
        runner.stop()


# ------------------------------------------------------------------ one device, many links

@pytest.fixture
def three_links(tmp_path: Path):  # type: ignore[no-untyped-def]
    """One emulated device on a pty, ZDL over TCP and fastboot over TCP."""
    runner = EmulatorRunner(tmp_path / "dev", demo_profile())
    try:
        pty = runner.start_pty()
        tcp = runner.start_tcp(0)
        fastboot = runner.start_fastboot_tcp(0)
        yield runner, pty, tcp, fastboot
    finally:
        runner.stop()


@posix_only
def test_an_idle_program_on_the_pty_locks_nobody_out(three_links) -> None:
    """A terminal (or an idle ser2net) holding the pty open is not a ZDL session."""
    _, pty, tcp, fastboot = three_links
    idle = os.open(pty.removeprefix("serial://"), os.O_RDWR | os.O_NOCTTY)
    try:
        time.sleep(0.3)  # the device has seen the pty opened
        result = zflash("info", "-d", tcp, "--json", timeout=30)
        assert result.returncode == 0, result.stderr
        binary = require_tool("fastboot")
        port = fastboot.rsplit(":", 1)[1]
        got = subprocess.run([binary, "-s", f"tcp:127.0.0.1:{port}", "getvar", "product"],
                             capture_output=True, text=True, timeout=30)
        assert got.returncode == 0 and "zx-demo" in got.stderr, got.stderr
    finally:
        os.close(idle)


@posix_only
def test_a_second_host_is_told_busy_not_left_waiting(three_links) -> None:
    """While a ZDL host is in a session on the pty, stock fastboot gets FAIL and ZDL over
    TCP gets ERROR 9034, each naming the busy device; neither hangs."""
    from zflash.targets.zdl.session import ZdlSession
    _, pty, tcp, fastboot = three_links
    with open_transport(pty, timeout=2) as transport:
        ZdlSession(transport).connect()
        binary = require_tool("fastboot")
        port = fastboot.rsplit(":", 1)[1]
        try:
            got = subprocess.run([binary, "-s", f"tcp:127.0.0.1:{port}", "getvar", "product"],
                                 capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("stock fastboot hung on a device busy with another host")
        # stock fastboot's getvar prints the FAIL and still exits 0
        assert "FAILED (remote: 'device busy" in got.stderr, got.stderr
        result = zflash("info", "-d", tcp, timeout=30)
        assert result.returncode == 34 and "device busy" in result.stderr, result.stderr
    # the session ended with the port: the others get the device again
    assert zflash("info", "-d", tcp, timeout=30).returncode == 0
