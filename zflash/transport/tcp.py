"""TCP transport: a device (or the emulator) listening on HOST:PORT.

The socket is non-blocking and every wait goes through ``wait_fd`` with an explicit bound,
so one thread may read while another writes without the two fighting over a shared socket
timeout. TCP_NODELAY keeps small acknowledgements from waiting on Nagle; large buffers keep
a window of frames in flight on a long fat network (a board farm across a WAN).
"""

from __future__ import annotations

import socket
import time

from zflash.errors import Code, ZflashError
from zflash.transport.base import (
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Buffer,
    Transport,
    check_read_args,
    wait_fd,
)
from zflash.transport.url import DeviceUrl

#: Requested socket buffer size; the kernel clamps it to its own limit (net.core.*mem_max).
BUFFER_BYTES = 4 * 1024 * 1024


def tune_socket(sock: socket.socket) -> None:
    """TCP_NODELAY and large buffers. Set before connect so window scaling is negotiated."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            if sock.getsockopt(socket.SOL_SOCKET, option) < BUFFER_BYTES:
                sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
        except OSError:
            pass  # a smaller buffer is slower, not wrong


def _lookup_name(host: str) -> str | bytes:
    """``host`` as getaddrinfo takes it. A str is encoded with the idna codec, whose import
    (with stringprep and unicodedata) costs ~2 ms; an ASCII name with labels of 1-63
    characters is encoded by it to its own ASCII bytes, so those are passed as bytes. Other
    names stay str: international ones are still IDNA-encoded, bad ones fail as before."""
    if host.isascii():
        *labels, last = host.split(".")
        if all(0 < len(label) < 64 for label in labels) and len(last) < 64:
            return host.encode("ascii")
    return host


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """Connect to HOST:PORT, trying each address; DEVICE_NOT_FOUND when nothing answers."""
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(_lookup_name(host), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ZflashError(Code.DEVICE_NOT_FOUND, f"cannot resolve {host!r}: {exc}") from None
    last = "no address"
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            tune_socket(sock)
            sock.settimeout(timeout)
            sock.connect(address)
        except ConnectionRefusedError:
            sock.close()
            last = "connection refused (nothing listens there)"
        except TimeoutError:
            sock.close()
            last = f"no answer within {timeout:g} s"
        except OSError as exc:
            sock.close()
            last = str(exc)
        else:
            sock.setblocking(False)
            return sock
    raise ZflashError(Code.DEVICE_NOT_FOUND, f"no device at {where}: {last}")


class TcpTransport(Transport):
    """A connected TCP stream. ``set_baudrate`` is a no-op: a socket has no line rate."""

    def __init__(self, sock: socket.socket, url: DeviceUrl, write_timeout: float) -> None:
        self._sock = sock
        self._url = url
        self._write_timeout = write_timeout
        self._closed = False

    @classmethod
    def open(cls, url: DeviceUrl, timeout: float = DEFAULT_OPEN_TIMEOUT,
             write_timeout: float = DEFAULT_WRITE_TIMEOUT) -> TcpTransport:
        """Connect to the URL's host and port."""
        assert url.port is not None, "parse_device_url always sets a tcp port"
        return cls(connect(url.host, url.port, timeout), url, write_timeout)

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"tcp {self._url.host}:{self._url.port}"

    def write(self, data: Buffer) -> None:
        """Send everything; TIMEOUT when the peer takes nothing for ``write_timeout`` s."""
        self._check_open()
        view = memoryview(data).cast("B")
        while view:
            try:
                sent = self._sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                raise self._lost(exc) from None
            if sent:
                view = view[sent:]
            elif not wait_fd(self._sock.fileno(), True, self._write_timeout):
                raise ZflashError(Code.TIMEOUT, f"{self.description}: device stopped reading "
                                                f"for {self._write_timeout:g} s")

    def read(self, max_bytes: int, timeout: float) -> bytes:
        """1..max_bytes bytes; TIMEOUT after ``timeout`` s; LINK_LOST on EOF or reset."""
        check_read_args(max_bytes, timeout)
        self._check_open()
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = self._sock.fileno()
                if fd >= 0 and wait_fd(fd, False, deadline - time.monotonic()):
                    data = self._sock.recv(max_bytes)
                    if not data:
                        raise ZflashError(Code.LINK_LOST,
                                          f"{self.description}: the device closed the link")
                    return data
            except (BlockingIOError, InterruptedError):
                pass  # spurious wake-up
            except OSError as exc:
                raise self._lost(exc) from None
            if self._closed:
                raise ZflashError(Code.LINK_LOST, f"{self.description}: transport is closed")
            if time.monotonic() >= deadline:
                raise ZflashError(Code.TIMEOUT,
                                  f"{self.description}: no data within {timeout:g} s")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise ZflashError(Code.LINK_LOST, f"{self.description}: transport is closed")

    def _lost(self, exc: BaseException) -> ZflashError:
        return ZflashError(Code.LINK_LOST, f"{self.description}: {exc}")
