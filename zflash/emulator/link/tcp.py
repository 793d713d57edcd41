"""The TCP link: a listener on HOST:PORT and one device-side connection per host.

Why this exists: a network-attached device is emulated by listening on loopback (or any
address) and serving each accepted socket as a `DeviceConnection`; socket tuning, accept and
non-blocking send/recv with the shared deadlines are the TCP-specific part, kept here.
"""

from __future__ import annotations

import os
import select
import socket
import time

from zflash.emulator.link.base import (
    _L,
    _SLICE,
    DEFAULT_WRITE_TIMEOUT,
    Buffer,
    HostDisconnected,
    _deadline,
    _expired,
    _left,
    _poll,
    _timeout,
)


def _tune(sock: socket.socket) -> None:
    """Same tuning as the host side: no Nagle delay, large buffers (kernel clamps them)."""
    for level, option, value in ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
                                 (socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20),
                                 (socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)):
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            pass


class TcpListener:
    """Listens on HOST:PORT (port 0 picks a free one); ``url`` is what the host opens."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", *,
                 write_timeout: float = DEFAULT_WRITE_TIMEOUT) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if os.name == "posix":
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _tune(self._sock)  # accepted sockets inherit the buffer sizes
            self._sock.bind((host, port))
            self._sock.listen(8)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self._host = host
        self._port = self._sock.getsockname()[1]
        self._write_timeout = write_timeout
        self._closed = False

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"tcp://{host}:{self._port}"

    def accept(self, timeout: float | None = None) -> TcpConnection | None:
        """The next host connection; None on timeout or once the listener is closed."""
        deadline = _deadline(timeout)
        while not self._closed:
            try:
                if _poll(self._sock.fileno(), select.POLLIN, _left(deadline)):
                    conn, peer = self._sock.accept()
                    return TcpConnection(conn, peer, self._write_timeout)
            except (BlockingIOError, InterruptedError):
                pass
            except (OSError, ValueError):
                if self._closed:
                    return None
                raise
            if _expired(deadline):
                return None
        return None

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def __enter__(self: _L) -> _L:  # noqa: PYI019 - typing.Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpConnection:
    """One host connection, device side."""

    def __init__(self, sock: socket.socket, peer: object, write_timeout: float) -> None:
        _tune(sock)
        sock.setblocking(False)
        self._sock = sock
        self._peer = peer
        self._write_timeout = write_timeout
        self._closed = False
        self._gone = False

    @property
    def description(self) -> str:
        return f"tcp from {self._peer}"

    @property
    def alive(self) -> bool:
        return not (self._closed or self._gone)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """>= 1 byte from the host; TIMEOUT; HostDisconnected on EOF or reset."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        deadline = _deadline(timeout)
        while True:
            self._check()
            try:
                if _poll(self._sock.fileno(), select.POLLIN, _left(deadline)):
                    data = self._sock.recv(max_bytes)
                    if data:
                        return data
                    self._gone = True
                    raise HostDisconnected("the host closed the connection")
            except (BlockingIOError, InterruptedError):
                pass
            except (OSError, ValueError) as exc:
                self._gone = True
                raise HostDisconnected(f"connection lost: {exc}") from None
            if _expired(deadline):
                raise _timeout("no data from the host")

    def write(self, data: Buffer) -> None:
        """Everything to the host; TIMEOUT if it takes nothing for ``write_timeout`` s."""
        view = memoryview(data).cast("B")
        stalled = time.monotonic() + self._write_timeout
        while view:
            self._check()
            try:
                sent = self._sock.send(view)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except (OSError, ValueError) as exc:
                self._gone = True
                raise HostDisconnected(f"connection lost: {exc}") from None
            if sent:
                view = view[sent:]
                stalled = time.monotonic() + self._write_timeout
            elif time.monotonic() >= stalled:
                raise _timeout(f"the host stopped reading for {self._write_timeout:g} s")
            else:
                _poll(self._sock.fileno(), select.POLLOUT,
                      min(_SLICE, max(0.0, stalled - time.monotonic())))

    def close(self) -> None:
        """Drop the connection; the host's next read fails with LINK_LOST."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _check(self) -> None:
        if self._closed:
            raise HostDisconnected("the connection is closed")

