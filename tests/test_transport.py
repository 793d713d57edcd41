"""Byte transports against real ptys and loopback TCP, plus the emulator's link wrappers."""

from __future__ import annotations

import errno
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

import pytest
import serial

from zflash.emulator.link import (
    DeviceConnection,
    FaultyLink,
    HostDisconnected,
    PtyLink,
    ShapedLink,
    TcpConnection,
    TcpListener,
)
from zflash.errors import Code, ZflashError
from zflash.transport import DeviceUrl, Transport, open_transport, parse_device_url
from zflash.transport.serial import SerialTransport, classify_open_error
from zflash.transport.tcp import TcpTransport, _lookup_name

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs ptys")


# ------------------------------------------------------------------------------ helpers

def host_read_exactly(transport: Transport, count: int, timeout: float = 5.0) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < count:
        out += transport.read(count - len(out), max(0.0, deadline - time.monotonic()))
    return bytes(out)


def device_read_exactly(conn: DeviceConnection, count: int, timeout: float = 5.0) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < count:
        out += conn.read(count - len(out), max(0.0, deadline - time.monotonic()))
    return bytes(out)


def in_thread(target: Callable[[], object]) -> tuple[threading.Thread, dict[str, object]]:
    """Run target in a daemon thread; its result or exception lands in the dict."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = target()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def joined(thread: threading.Thread, box: dict[str, object], timeout: float = 10.0) -> object:
    thread.join(timeout)
    assert not thread.is_alive(), "worker thread hung"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")


def payload(size: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed + (i >> 8)) & 0xFF for i in range(size))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------ URLs

GOOD_URLS = [
    ("serial:///dev/ttyUSB0?baud=921600",
     {"scheme": "serial", "path": "/dev/ttyUSB0", "baud": 921600}),
    ("serial:///dev/ttyUSB0", {"scheme": "serial", "path": "/dev/ttyUSB0", "baud": 115200}),
    ("/dev/ttyACM1", {"scheme": "serial", "path": "/dev/ttyACM1", "baud": 115200}),
    ("/dev/ttyUSB0?baud=9600", {"scheme": "serial", "path": "/dev/ttyUSB0", "baud": 9600}),
    ("COM3", {"scheme": "serial", "path": "COM3"}),
    ("serial://COM12?baud=57600", {"scheme": "serial", "path": "COM12", "baud": 57600}),
    ("serial:///dev/serial/by-path/pci-0000:00:14.0-usb-0:2:1.0-port0",
     {"scheme": "serial", "path": "/dev/serial/by-path/pci-0000:00:14.0-usb-0:2:1.0-port0"}),
    ("tcp://127.0.0.1:5554", {"scheme": "tcp", "host": "127.0.0.1", "port": 5554}),
    ("tcp://[::1]:6000", {"scheme": "tcp", "host": "::1", "port": 6000}),
    ("fastboot+tcp://10.0.0.2", {"scheme": "fastboot+tcp", "host": "10.0.0.2", "port": 5554}),
    ("fastboot+tcp://board7:5555", {"scheme": "fastboot+tcp", "host": "board7", "port": 5555}),
    ("usb://1209:0001?serial=ABC",
     {"scheme": "usb", "vid": 0x1209, "pid": 0x0001, "usb_serial": "ABC"}),
    ("usb://1-2.3", {"scheme": "usb", "path": "1-2.3", "vid": None}),
    ("usb://", {"scheme": "usb", "path": "", "vid": None, "pid": None, "usb_serial": None}),
    ("rfc2217://lab:7000", {"scheme": "rfc2217", "host": "lab", "port": 7000, "baud": 115200,
                            "is_passthrough": False}),
    ("rfc2217://10.0.0.5:3001?ign_set_control&baud=921600&timeout=2.5",
     {"scheme": "rfc2217", "baud": 921600,
      "params": {"ign_set_control": "", "baud": "921600", "timeout": "2.5"}}),
    ("socket://localhost:7777", {"scheme": "socket", "is_passthrough": True}),
    ("spy:///dev/ttyUSB0?file=x.txt", {"scheme": "spy", "is_passthrough": True}),
    ("loop://", {"scheme": "loop", "is_passthrough": True}),
]

BAD_URLS = [
    "", "   ", "ftp://x", "/tmp/not-a-port", "ttyUSB0", "COMx",
    "serial:///dev/ttyUSB0?baud=fast", "serial:///dev/ttyUSB0?baud=0",
    "serial:///dev/ttyUSB0?baud=-5", "serial:///dev/ttyUSB0?baudrate=9600",
    "serial:///dev/ttyUSB0?baud=9600&baud=19200", "serial://", "serial://host/dev/ttyUSB0",
    "tcp://127.0.0.1", "tcp://127.0.0.1:", "tcp://127.0.0.1:0", "tcp://127.0.0.1:65536",
    "tcp://127.0.0.1:55x", "tcp://:5554", "tcp://[::1", "tcp://h:1/path", "tcp://h:1?x=1",
    "fastboot+tcp://h:99999", "usb://1209", "usb://12G9:0001", "usb://12345:1",
    "usb://1-", "usb://1209:0001?sn=ABC", "usb://?serial=",
    "rfc2217://lab", "rfc2217://lab:7000?logging=debug", "rfc2217://lab:7000?timeout=0",
    "rfc2217://lab:7000?timeout=nan", "rfc2217://lab:7000?timeout=1e9",
    "rfc2217://lab:7000?ign_set_control=1", "rfc2217://lab:7000?baud=", "rfc2217://lab:1/x",
]


@pytest.mark.parametrize("url,expected", GOOD_URLS, ids=[u for u, _ in GOOD_URLS])
def test_good_urls(url: str, expected: dict[str, object]) -> None:
    parsed = parse_device_url(url)
    for name, value in expected.items():
        assert getattr(parsed, name) == value, name
    if parsed.is_passthrough:
        assert parsed.raw == url  # handed to pyserial verbatim
    else:
        assert parse_device_url(str(parsed)) == DeviceUrl(**{**parsed.__dict__,
                                                             "raw": str(parsed)})


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ZflashError) as info:
        parse_device_url(url)
    assert info.value.code == Code.BAD_DEVICE_URL
    assert "tcp://HOST:PORT" in info.value.detail  # names the accepted forms


@pytest.mark.parametrize("url", ["edl+usb://", "fastboot+usb://1-2", "EDL+USB://05c6:9008"])
def test_a_mode_in_a_usb_scheme_is_answered_with_the_usb_form(url: str) -> None:
    """A technician who writes the mode into a USB URL learns that USB tells the mode."""
    with pytest.raises(ZflashError) as info:
        parse_device_url(url)
    assert info.value.code == Code.BAD_DEVICE_URL
    assert "usb://05c6:9008" in info.value.detail and "usb://VID:PID" in info.value.detail


# ------------------------------------------------------------------------------ serial: pty

@pytest.fixture
def pty_link(tmp_path):  # type: ignore[no-untyped-def]
    link = PtyLink(str(tmp_path / "ttyEMU0"))
    yield link
    link.close()


@posix_only
def test_pty_exchange_both_ways(pty_link: PtyLink) -> None:
    with open_transport(pty_link.url, timeout=2) as host:
        assert isinstance(host, SerialTransport) and host.is_stream and host.has_baudrate
        assert host.baudrate == 115200
        conn = pty_link.accept(2)
        assert conn is not None and conn.alive
        host.write(b"hello device")
        assert device_read_exactly(conn, 12) == b"hello device"
        conn.write(b"hello host")
        assert host_read_exactly(host, 10) == b"hello host"

        big = payload(300_000)  # far more than a pty buffers: both sides must stream
        worker, box = in_thread(lambda: device_read_exactly(conn, len(big)))
        host.write(memoryview(big))
        assert joined(worker, box) == big
        worker, box = in_thread(lambda: conn.write(big))
        assert host_read_exactly(host, len(big)) == big
        joined(worker, box)


@posix_only
def test_pty_read_timeout(pty_link: PtyLink) -> None:
    with open_transport(pty_link.url, timeout=2) as host:
        start = time.monotonic()
        with pytest.raises(ZflashError) as info:
            host.read(100, 0.2)
        assert info.value.code == Code.TIMEOUT
        assert 0.15 <= time.monotonic() - start < 1.0
        with pytest.raises(ZflashError) as info:
            host.read(100, 0)  # a zero timeout polls once
        assert info.value.code == Code.TIMEOUT
        with pytest.raises(ValueError):
            host.read(100, float("inf"))  # no read may block forever


@posix_only
def test_pty_baud_change(pty_link: PtyLink) -> None:
    with open_transport(pty_link.url + "?baud=57600", timeout=2) as host:
        conn = pty_link.accept(2)
        assert conn is not None
        assert pty_link.host_baudrate == 57600
        host.set_baudrate(921600)
        assert host.baudrate == 921600
        assert pty_link.host_baudrate == 921600
        assert "921600" in host.description
        host.write(b"fast")
        assert device_read_exactly(conn, 4) == b"fast"
        with pytest.raises(ZflashError) as info:
            host.set_baudrate(0)
        assert info.value.code == Code.USAGE


@posix_only
def test_pty_survives_host_reconnect(pty_link: PtyLink) -> None:
    assert pty_link.accept(0.05) is None  # no host yet
    for round_ in range(3):
        host = open_transport(pty_link.url, timeout=2)
        conn = pty_link.accept(2)
        assert conn is not None
        host.write(b"ping%d" % round_)
        assert device_read_exactly(conn, 5) == b"ping%d" % round_
        conn.write(b"pong%d" % round_)
        assert host_read_exactly(host, 5) == b"pong%d" % round_
        host.close()
        with pytest.raises(HostDisconnected) as info:
            conn.read(10, 2)
        assert info.value.code == Code.LINK_LOST
        with pytest.raises(HostDisconnected):
            conn.write(b"nobody listens")  # no stale bytes for the next host
        conn.close()  # host already gone: the pty stays
    assert pty_link.slave_path == os.path.realpath(pty_link.url[len("serial://"):])


@posix_only
def test_pty_device_hangup_and_stable_name(pty_link: PtyLink) -> None:
    old_slave = pty_link.slave_path
    host = open_transport(pty_link.url, timeout=2)
    conn = pty_link.accept(2)
    assert conn is not None
    conn.close()  # the device pulls the cable
    with pytest.raises(ZflashError) as info:
        host.read(10, 2)
    assert info.value.code == Code.LINK_LOST
    host.close()
    assert pty_link.slave_path != old_slave
    with open_transport(pty_link.url, timeout=2) as again:  # same name, new pty
        conn = pty_link.accept(2)
        assert conn is not None
        conn.write(b"back")
        assert host_read_exactly(again, 4) == b"back"


@posix_only
def test_serial_is_exclusive(pty_link: PtyLink) -> None:
    with open_transport(pty_link.url, timeout=2), pytest.raises(ZflashError) as info:
        open_transport(pty_link.url, timeout=2)
    assert info.value.code == Code.PORT_BUSY  # held by another program, not a permission
    assert "in use" in info.value.detail


def test_serial_missing_port() -> None:
    with pytest.raises(ZflashError) as info:
        open_transport("serial:///dev/ttyZFLASH-NO-SUCH-PORT")
    assert info.value.code == Code.DEVICE_NOT_FOUND


@pytest.mark.parametrize("exc,code,needle", [
    (serial.SerialException(errno.EACCES, "could not open port: Permission denied"),
     Code.PERMISSION_DENIED, "dialout"),
    (serial.SerialException(errno.ENOENT, "could not open port: No such file"),
     Code.DEVICE_NOT_FOUND, "download mode"),
    (serial.SerialException(errno.EBUSY, "busy"), Code.PORT_BUSY, "in use"),
    (serial.SerialException("could not open port 'COM3': PermissionError(13, "
                            "'Access is denied.', None, 5)"), Code.PORT_BUSY, "in use"),
    (serial.SerialException("could not open port 'COM9': FileNotFoundError(2, "
                            "'The system cannot find the file specified.', None, 2)"),
     Code.DEVICE_NOT_FOUND, "COM"),
    (ValueError("unknown option"), Code.BAD_DEVICE_URL, "unknown option"),
])
def test_open_error_classification(exc: BaseException, code: Code, needle: str) -> None:
    error = classify_open_error(exc, "serial://COM9")
    assert error.code == code
    assert needle in error.detail


def test_pyserial_passthrough_loop() -> None:
    with open_transport("loop://", timeout=1) as port:
        assert isinstance(port, SerialTransport)
        port.write(payload(4000))  # loop:// buffers 4096 bytes
        assert host_read_exactly(port, 4000) == payload(4000)
        with pytest.raises(ZflashError) as info:
            port.read(10, 0.1)
        assert info.value.code == Code.TIMEOUT
        port.set_baudrate(921600)
    with open_transport("loop://", timeout=1, write_timeout=0.2) as port:
        with pytest.raises(ZflashError) as info:
            port.write(bytes(10_000))  # nobody reads the loop: a stall, not a hang
        assert info.value.code == Code.TIMEOUT
    with pytest.raises(ZflashError) as info:
        open_transport("loop://?bogus=1")
    assert info.value.code == Code.BAD_DEVICE_URL


def test_pyserial_passthrough_socket() -> None:
    with TcpListener() as listener, \
            open_transport(f"socket://127.0.0.1:{listener.port}", timeout=2) as port:
        conn = listener.accept(2)
        assert conn is not None
        conn.write(b"over socket://")
        assert host_read_exactly(port, 14) == b"over socket://"
        port.write(b"back")
        assert device_read_exactly(conn, 4) == b"back"
        conn.close()


# ------------------------------------------------------------------------------ tcp

@pytest.fixture
def tcp_pair():  # type: ignore[no-untyped-def]
    listener = TcpListener()
    host = open_transport(listener.url, timeout=2)
    conn = listener.accept(2)
    assert conn is not None
    yield host, conn
    host.close()
    conn.close()
    listener.close()


def test_tcp_exchange(tcp_pair: tuple[Transport, TcpConnection]) -> None:
    host, conn = tcp_pair
    assert isinstance(host, TcpTransport) and host.is_stream and not host.has_baudrate
    host.set_baudrate(921600)  # no line rate on a socket: documented no-op
    host.write(b"abc")
    assert device_read_exactly(conn, 3) == b"abc"
    conn.write(b"xyz")
    assert host_read_exactly(host, 3) == b"xyz"
    big = payload(2_000_000)
    worker, box = in_thread(lambda: device_read_exactly(conn, len(big)))
    host.write(big)
    assert joined(worker, box) == big
    worker, box = in_thread(lambda: conn.write(big))
    assert host_read_exactly(host, len(big)) == big
    joined(worker, box)
    with pytest.raises(ZflashError) as info:
        host.read(10, 0.1)
    assert info.value.code == Code.TIMEOUT


def test_tcp_peer_close_is_link_lost(tcp_pair: tuple[Transport, TcpConnection]) -> None:
    host, conn = tcp_pair
    conn.write(b"last words")
    conn.close()
    assert host_read_exactly(host, 10) == b"last words"  # data before the close arrives
    with pytest.raises(ZflashError) as info:
        host.read(10, 2)
    assert info.value.code == Code.LINK_LOST


def test_tcp_host_close_seen_by_device(tcp_pair: tuple[Transport, TcpConnection]) -> None:
    host, conn = tcp_pair
    host.close()
    with pytest.raises(HostDisconnected):
        conn.read(10, 2)
    with pytest.raises(ZflashError) as info:
        host.write(b"x")
    assert info.value.code == Code.LINK_LOST


def test_tcp_write_stall_times_out() -> None:
    with TcpListener() as listener:
        host = open_transport(listener.url, timeout=2, write_timeout=0.3)
        conn = listener.accept(2)  # accepted, never read
        start = time.monotonic()
        with pytest.raises(ZflashError) as info:
            host.write(bytes(64 << 20))
        assert info.value.code == Code.TIMEOUT
        assert time.monotonic() - start < 10
        host.close()
        assert conn is not None
        conn.close()


def test_tcp_refused_is_device_not_found() -> None:
    port = free_port()
    for url in (f"tcp://127.0.0.1:{port}", f"fastboot+tcp://127.0.0.1:{port}"):
        with pytest.raises(ZflashError) as info:
            open_transport(url, timeout=2)
        assert info.value.code == Code.DEVICE_NOT_FOUND
        assert "refused" in info.value.detail


def test_fastboot_tcp_is_plain_tcp() -> None:
    with TcpListener() as listener, \
            open_transport(f"fastboot+tcp://127.0.0.1:{listener.port}", timeout=2) as host:
        assert isinstance(host, TcpTransport)


def test_a_host_name_is_looked_up_as_the_idna_codec_would_encode_it() -> None:
    """D205: ASCII names go to getaddrinfo as the bytes the idna codec would give it (so the
    codec is never imported); international names and names the codec refuses stay str,
    so they are IDNA-encoded, or fail, exactly as before."""
    for host in ("127.0.0.1", "::1", "localhost", "Device-7.lab.example", "host.",
                 "a" * 63 + ".b", "x" * 63):
        assert _lookup_name(host) == host.encode("idna")
    for host in ("bücher.example", "a..b", ".a", "a" * 64 + ".b", "x" * 64):
        assert _lookup_name(host) == host
    with TcpListener() as listener, \
            open_transport(f"tcp://localhost:{listener.port}", timeout=2) as host:
        assert isinstance(host, TcpTransport)


# ------------------------------------------------------------------------------ shaping

RATE = 200_000.0


def test_shaped_write_rate(tcp_pair: tuple[Transport, TcpConnection]) -> None:
    host, conn = tcp_pair
    shaped = ShapedLink(conn, bytes_per_second=RATE)
    data = payload(100_000)
    start = time.monotonic()
    worker, box = in_thread(lambda: shaped.write(data))
    assert host_read_exactly(host, len(data)) == data
    elapsed = time.monotonic() - start
    joined(worker, box)
    assert 0.8 * 0.5 <= elapsed <= 2.0 * 0.5, elapsed  # paced, not just slow on a busy box


def test_shaped_read_rate(tcp_pair: tuple[Transport, TcpConnection]) -> None:
    host, conn = tcp_pair
    shaped = ShapedLink(conn, bytes_per_second=RATE)
    data = payload(100_000)
    start = time.monotonic()
    worker, box = in_thread(lambda: device_read_exactly(shaped, len(data)))
    host.write(data)
    assert joined(worker, box) == data
    elapsed = time.monotonic() - start
    assert 0.8 * 0.5 <= elapsed <= 2.0 * 0.5, elapsed  # paced, not just slow on a busy box


def test_shaped_latency(tcp_pair: tuple[Transport, TcpConnection]) -> None:
    host, conn = tcp_pair
    shaped = ShapedLink(conn, latency_s=0.15)
    start = time.monotonic()
    host.write(b"x")
    assert shaped.read(10, 2) == b"x"
    assert 0.14 <= time.monotonic() - start < 0.5
    with pytest.raises(ZflashError) as info:
        shaped.read(10, 0.05)
    assert info.value.code == Code.TIMEOUT
    host.close()
    with pytest.raises(HostDisconnected):
        shaped.read(10, 2)


# ------------------------------------------------------------------------------ faults

class ScriptedConn:
    """An in-memory device connection: fixed chunks from the host, writes recorded."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.written: list[bytes] = []
        self.closed = False

    @property
    def alive(self) -> bool:
        return not self.closed

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self.closed:
            raise HostDisconnected("closed")
        if not self.chunks:
            if timeout:
                time.sleep(min(timeout, 0.01))
            raise ZflashError(Code.TIMEOUT, "nothing")
        head = self.chunks[0]
        self.chunks[0] = head[max_bytes:]
        if not self.chunks[0]:
            self.chunks.pop(0)
        return head[:max_bytes]

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed:
            raise HostDisconnected("closed")
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True


def test_faulty_drop_after_bytes(tcp_pair: tuple[Transport, TcpConnection]) -> None:
    host, conn = tcp_pair
    faulty = FaultyLink(conn, drop_after_bytes=1000)
    host.write(payload(3000))
    got = bytearray()
    with pytest.raises(HostDisconnected):
        while True:
            got += faulty.read(4096, 2)
    assert bytes(got) == payload(3000)[:1000]
    assert faulty.dropped and not faulty.alive
    with pytest.raises(HostDisconnected):
        faulty.write(b"reply")
    with pytest.raises(ZflashError) as info:
        host.read(10, 2)
    assert info.value.code == Code.LINK_LOST


def test_faulty_drop_fires_once_across_attach() -> None:
    faulty = FaultyLink(ScriptedConn([b"a" * 600, b"b" * 600]), drop_after_bytes=1000)
    assert len(faulty.read(4096, 0)) == 600
    assert faulty.read(4096, 0) == b"b" * 400
    with pytest.raises(HostDisconnected):
        faulty.read(4096, 0)
    faulty.attach(ScriptedConn([b"c" * 2000]))  # the host reconnected
    assert faulty.read(4096, 0) == b"c" * 2000
    assert faulty.bytes_from_host == 3000


def test_faulty_corruption_is_deterministic() -> None:
    chunks = [payload(64, seed=i) for i in range(200)]

    def run(seed: int) -> tuple[list[bytes], list[bytes]]:
        faulty = FaultyLink(ScriptedConn(chunks), corrupt_fraction=0.25, seed=seed)
        inbound = [faulty.read(64, 0) for _ in chunks]
        for chunk in chunks:
            faulty.write(chunk)
        return inbound, faulty.inner.written  # type: ignore[attr-defined]

    first, second, other = run(7), run(7), run(8)
    assert first == second
    assert first != other
    for got_list in first:
        changed = [(g, c) for g, c in zip(got_list, chunks) if g != c]
        assert 20 <= len(changed) <= 80  # about a quarter of 200
        for got, want in changed:  # exactly one bit flipped
            assert sum((a ^ b).bit_count() for a, b in zip(got, want)) == 1

    only_up = FaultyLink(ScriptedConn(chunks), corrupt_fraction=1.0, corrupt_direction="to_host")
    assert [only_up.read(64, 0) for _ in chunks] == chunks


def test_faulty_stall() -> None:
    faulty = FaultyLink(ScriptedConn([b"x" * 30]), stall_after_bytes=10)
    assert faulty.read(100, 0) == b"x" * 10
    assert faulty.stalled
    with pytest.raises(ZflashError) as info:
        faulty.read(100, 0.05)
    assert info.value.code == Code.TIMEOUT
    faulty.write(b"lost")
    assert faulty.inner.written == []  # type: ignore[attr-defined]
