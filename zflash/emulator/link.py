"""The device side of the emulator's links: a pty, a TCP listener, and link shaping/faults.

Every device-side connection has the interface the emulated USB bus already gives its
firmware (``usb_backend.UsbDeviceLink``), so one server loop serves all three links:

    read(max_bytes, timeout=None) -> bytes   # >= 1 byte; ZflashError(TIMEOUT) when none came;
                                             # HostDisconnected (a LINK_LOST) when the host left
    write(data) -> None                      # all of it; HostDisconnected when the host left
    close() -> None                          # the device drops the link (a pulled cable)
    alive -> bool

Listeners (`PtyLink`, `TcpListener`) hand out one connection per host session through
``accept(timeout) -> connection | None``. `ShapedLink` and `FaultyLink` wrap a connection and
are generic: they move bytes and know no protocol.

This module imports nothing from ``zflash.transport`` (the emulator is the other end of the
wire, and the import direction is emulator -> protocol only).
"""

from __future__ import annotations

import errno
import math
import os
import random
import select
import socket
import threading
import time
from collections import deque
from typing import Literal, Protocol, TypeVar

from zflash.errors import Code, ZflashError

Buffer = bytes | bytearray | memoryview
_L = TypeVar("_L")

#: Longest single wait, so that close() from another thread is noticed promptly.
_SLICE = 0.1
#: How often a pty with no host is checked for a newly attached one.
_HOST_POLL = 0.02
DEFAULT_WRITE_TIMEOUT = 30.0


class HostDisconnected(ZflashError):
    """The host went away (closed the port, reset the connection); wait for the next one."""

    def __init__(self, detail: str = "the host disconnected") -> None:
        super().__init__(Code.LINK_LOST, detail)


class DeviceConnection(Protocol):
    """What a device server loop talks to (see the module docstring for the contract)."""

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes: ...

    def write(self, data: Buffer) -> None: ...

    def close(self) -> None: ...

    @property
    def alive(self) -> bool: ...


def _deadline(timeout: float | None) -> float | None:
    if timeout is not None and (not math.isfinite(timeout) or timeout < 0):
        raise ValueError(f"timeout must be None or a finite number >= 0, got {timeout!r}")
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: float | None) -> float:
    """Time to wait in this slice: never more than _SLICE, never negative."""
    if deadline is None:
        return _SLICE
    return max(0.0, min(_SLICE, deadline - time.monotonic()))


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _poll(fd: int, events: int, timeout: float) -> int:
    """revents for one fd (0 on timeout)."""
    poller = select.poll()
    poller.register(fd, events)
    found = poller.poll(math.ceil(timeout * 1000))
    return found[0][1] if found else 0


def _timeout(what: str) -> ZflashError:
    return ZflashError(Code.TIMEOUT, what)


# --------------------------------------------------------------------------------------- pty

_BAUD_BY_CONSTANT: dict[int, int] = {}


def _baud_table() -> dict[int, int]:
    """termios B-constant -> bits per second, built once from what this platform defines."""
    if not _BAUD_BY_CONSTANT:
        import termios
        for name in dir(termios):
            if name.startswith("B") and name[1:].isdigit():
                _BAUD_BY_CONSTANT[getattr(termios, name)] = int(name[1:])
    return _BAUD_BY_CONSTANT


class PtyLink:
    """A pseudo-terminal the host opens as a serial port (``url``, e.g. serial:///dev/pts/7).

    The device keeps the master; the slave is put in raw mode and then closed here, so that
    the host closing its end is visible (the master reports a hang-up and reads fail with
    EIO). The master stays open across host sessions, so a host can close and reopen the
    same path. A pty has no real line rate: baud changes the host makes are accepted and do
    not pace anything (``host_baudrate`` reports them; wrap with `ShapedLink` for a rate).

    ``link_path``: a symlink kept pointing at the current slave, giving a stable name across
    `hangup` (which must create a new pty, since the host still holds the old one).
    """

    def __init__(self, link_path: str | None = None, *,
                 write_timeout: float = DEFAULT_WRITE_TIMEOUT) -> None:
        self._link_path = link_path
        self._write_timeout = write_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._session = 0
        self._master, self._slave_path = self._new_pty()

    def _new_pty(self) -> tuple[int, str]:
        """A raw pty, its slave closed; the symlink (if any) repointed atomically."""
        import tty
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            path = os.ttyname(slave)
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        if self._link_path:
            temp = f"{self._link_path}.{os.getpid()}.tmp"
            if os.path.lexists(temp):
                os.unlink(temp)
            os.symlink(path, temp)
            os.replace(temp, self._link_path)
        return master, path

    @property
    def slave_path(self) -> str:
        """The current /dev/pts/N."""
        return self._slave_path

    @property
    def url(self) -> str:
        """The device URL a host opens: the stable symlink if one was asked for."""
        return "serial://" + (self._link_path or self._slave_path)

    @property
    def host_attached(self) -> bool:
        """True while some host has the slave open."""
        if self._closed:
            return False
        try:
            return not _poll(self._master, select.POLLIN, 0) & select.POLLHUP
        except (OSError, ValueError):
            return False

    @property
    def host_baudrate(self) -> int | None:
        """The rate the host last set on the port (informational: a pty does not pace)."""
        import termios
        try:
            speed = termios.tcgetattr(self._master)[5]
        except (termios.error, OSError):
            return None
        return _baud_table().get(speed)

    def wait_for_host(self, timeout: float | None = None) -> bool:
        """Poll until a host opens the slave; False on timeout or when the link is closed."""
        deadline = _deadline(timeout)
        while not self._closed:
            if self.host_attached:
                return True
            if _expired(deadline):
                return False
            time.sleep(min(_HOST_POLL, _left(deadline)) or 0.001)
        return False

    def accept(self, timeout: float | None = None) -> PtyConnection | None:
        """The next host session, once a host has the port open; None on timeout."""
        if not self.wait_for_host(timeout):
            return None
        with self._lock:
            self._session += 1
            return PtyConnection(self, self._session)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Bytes from the host (>= 1); TIMEOUT; HostDisconnected when no host has it open."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        deadline = _deadline(timeout)
        master = self._live_master()
        while True:
            self._check_same(master)
            try:
                if _poll(master, select.POLLIN, _left(deadline)):
                    data = os.read(master, max_bytes)
                    if data:
                        return data
                    raise HostDisconnected("the host closed the port")
            except BlockingIOError:
                pass
            except OSError as exc:
                if self._closed or master != self._master:
                    continue  # closed or hung up under us: _check_same reports it
                raise HostDisconnected(_pty_gone(exc)) from None
            if _expired(deadline):
                raise _timeout("no data from the host")

    def write(self, data: Buffer) -> None:
        """Everything to the host; HostDisconnected if none is attached (no stale bytes for
        the next host), TIMEOUT if the host stops reading for ``write_timeout`` s."""
        view = memoryview(data).cast("B")
        stalled = time.monotonic() + self._write_timeout
        master = self._live_master()
        while view:
            self._check_same(master)
            if not self.host_attached:
                raise HostDisconnected("the host closed the port")
            try:
                sent = os.write(master, view)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise HostDisconnected(_pty_gone(exc)) from None
            if sent:
                view = view[sent:]
                stalled = time.monotonic() + self._write_timeout
            elif time.monotonic() >= stalled:
                raise _timeout(f"the host stopped reading for {self._write_timeout:g} s")
            else:
                _poll(master, select.POLLOUT, min(_SLICE, max(0.0, stalled - time.monotonic())))

    def hangup(self) -> None:
        """Pull the cable: the host's port fails (LINK_LOST) and a fresh pty takes its place.

        Without ``link_path`` the new pty has a new name (see ``url``).
        """
        with self._lock:
            if self._closed:
                return
            old = self._master
            self._master, self._slave_path = self._new_pty()  # new fds first: no fd reuse
            self._session += 1
            os.close(old)

    def close(self) -> None:
        """Shut the link down for good (the host sees LINK_LOST); removes the symlink."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._master)
            if self._link_path and os.path.islink(self._link_path):
                os.unlink(self._link_path)

    @property
    def alive(self) -> bool:
        return self.host_attached

    def _live_master(self) -> int:
        if self._closed:
            raise HostDisconnected("the pty link is closed")
        return self._master

    def _check_same(self, master: int) -> None:
        """Fail a call whose pty was closed or hung up while it waited."""
        self._live_master()
        if master != self._master:
            raise HostDisconnected("the link was hung up")

    def __enter__(self: _L) -> _L:  # noqa: PYI019 - typing.Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pty_gone(exc: OSError) -> str:
    if exc.errno == errno.EIO:
        return "the host closed the port"
    return f"pty error: {exc}"


class PtyConnection:
    """One host session on a `PtyLink`. ``close`` while the host is still attached hangs
    up (the host sees LINK_LOST); after the host left it just ends the session."""

    def __init__(self, link: PtyLink, session: int) -> None:
        self._link = link
        self._session = session
        self._ended = False

    @property
    def description(self) -> str:
        return f"pty {self._link.slave_path}"

    @property
    def alive(self) -> bool:
        return not self._ended and self._current() and self._link.host_attached

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._check()
        try:
            return self._link.read(max_bytes, timeout)
        except HostDisconnected:
            self._ended = True
            raise

    def write(self, data: Buffer) -> None:
        self._check()
        try:
            self._link.write(data)
        except HostDisconnected:
            self._ended = True
            raise

    def close(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._current() and self._link.host_attached:
            self._link.hangup()

    def _current(self) -> bool:
        return self._link._session == self._session

    def _check(self) -> None:
        if self._ended or not self._current():
            self._ended = True
            raise HostDisconnected("this host session has ended")


# --------------------------------------------------------------------------------------- tcp

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


# ----------------------------------------------------------------------------- link shaping

class ShapedLink:
    """Paces a connection to ``bytes_per_second`` in both directions and delays host->device
    data by ``latency_s``, like a slow UART or a USB-serial adapter's latency timer.

    Pacing is a token bucket with a small burst allowance, so throughput converges to the
    rate even though sleeps overshoot. Latency applies to arriving data (each byte becomes
    readable ``latency_s`` after it arrived, pipelined); device writes are paced but not
    delayed, so a request/response round trip costs ``latency_s`` plus transfer time.
    Incoming data is buffered only up to a bound: beyond it the host feels back-pressure.
    """

    _TICK = 0.005  # pacing granularity in seconds
    _BURST = 0.01  # credit kept for sleep overshoot, in seconds of traffic

    def __init__(self, inner: DeviceConnection, bytes_per_second: float | None = None,
                 latency_s: float | None = None) -> None:
        if bytes_per_second is not None and not bytes_per_second > 0:
            raise ValueError("bytes_per_second must be > 0")
        if latency_s is not None and not latency_s >= 0:
            raise ValueError("latency_s must be >= 0")
        self.inner = inner
        self._rate = bytes_per_second
        self._latency = latency_s or 0.0
        self._piece = max(1, int(bytes_per_second * self._TICK)) if bytes_per_second else 1 << 20
        self._cap = max(64 * 1024, int((bytes_per_second or 0) * 0.1))
        self._pending: deque[tuple[float, bytes]] = deque()  # (ready_time, piece)
        self._pending_bytes = 0
        self._rx_free = 0.0
        self._tx_free = 0.0
        self._gone: ZflashError | None = None

    @property
    def alive(self) -> bool:
        return self.inner.alive

    def set_rate(self, bytes_per_second: float) -> None:
        """Change the pace (a serial line switching baud rate)."""
        if not bytes_per_second > 0:
            raise ValueError("bytes_per_second must be > 0")
        self._rate = bytes_per_second
        self._piece = max(1, int(bytes_per_second * self._TICK))
        self._cap = max(64 * 1024, int(bytes_per_second * 0.1))

    def write(self, data: Buffer) -> None:
        """Send at the shaped rate, a tick's worth at a time."""
        view = memoryview(data).cast("B")
        if self._rate is None:
            self.inner.write(view)
            return
        for start in range(0, len(view), self._piece):
            piece = view[start:start + self._piece]
            now = time.monotonic()
            done = max(self._tx_free, now - self._BURST) + len(piece) / self._rate
            if done > now:
                time.sleep(done - now)
            self.inner.write(piece)
            self._tx_free = done

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Data whose shaped delivery time has come; TIMEOUT when none is due in time."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        deadline = _deadline(timeout)
        while True:
            now = time.monotonic()
            out = self._take_ready(now, max_bytes)
            if out:
                return out
            if self._gone is not None and not self._pending:
                raise self._gone
            if _expired(deadline):
                raise _timeout("no data from the host")
            wait = math.inf if deadline is None else deadline - now
            if self._pending:
                wait = min(wait, self._pending[0][0] - now)
            if self._gone is not None or self._pending_bytes >= self._cap:
                time.sleep(max(0.0, min(wait, _SLICE)))
                continue
            try:
                data = self.inner.read(1 << 16, None if math.isinf(wait) else max(0.0, wait))
            except ZflashError as exc:
                if exc.code == Code.TIMEOUT:
                    continue
                if exc.code != Code.LINK_LOST:
                    raise
                self._gone = exc
                continue
            self._schedule(data, time.monotonic())

    def _schedule(self, data: bytes, arrived: float) -> None:
        """Give each piece its delivery time: after the latency, and after the one before."""
        for start in range(0, len(data), self._piece):
            piece = data[start:start + self._piece]
            ready = arrived + self._latency
            if self._rate is not None:
                ready = max(ready, self._rx_free) + len(piece) / self._rate
                self._rx_free = ready
            self._pending.append((ready, piece))
            self._pending_bytes += len(piece)

    def _take_ready(self, now: float, max_bytes: int) -> bytes:
        out = bytearray()
        while self._pending and self._pending[0][0] <= now and len(out) < max_bytes:
            ready, piece = self._pending[0]
            room = max_bytes - len(out)
            if len(piece) > room:
                out += piece[:room]
                self._pending[0] = (ready, piece[room:])
                self._pending_bytes -= room
                break
            out += piece
            self._pending.popleft()
            self._pending_bytes -= len(piece)
        return bytes(out)

    def close(self) -> None:
        self.inner.close()


# -------------------------------------------------------------------------- fault injection

Direction = Literal["both", "to_device", "to_host"]


class FaultyLink:
    """Injects faults into a connection, deterministically (counts and a seeded RNG).

    - ``drop_after_bytes``: after exactly N bytes have come from the host, the connection is
      closed (the host sees LINK_LOST); bytes beyond N are never delivered.
    - ``stall_after_bytes``: after N bytes from the host the link goes silent but stays up:
      host data is swallowed, device writes vanish, the host sees TIMEOUT.
    - ``corrupt_fraction``: that fraction of chunks (each read result / each write) gets one
      random bit flipped, in ``corrupt_direction``.

    Counts run across `attach`, so a host that reconnects after the drop continues where it
    left off and the drop does not fire again: each fault fires once per FaultyLink.
    """

    def __init__(self, inner: DeviceConnection, drop_after_bytes: int | None = None,
                 corrupt_fraction: float = 0.0, seed: int = 0,
                 stall_after_bytes: int | None = None,
                 corrupt_direction: Direction = "both") -> None:
        if not 0.0 <= corrupt_fraction <= 1.0:
            raise ValueError("corrupt_fraction must be within 0..1")
        if corrupt_direction not in ("both", "to_device", "to_host"):
            raise ValueError(f"unknown corrupt_direction {corrupt_direction!r}")
        self.inner = inner
        self._drop_at = drop_after_bytes
        self._stall_at = stall_after_bytes
        self._fraction = corrupt_fraction
        self._direction = corrupt_direction
        self._rng_in = random.Random(f"{seed}:to_device")
        self._rng_out = random.Random(f"{seed}:to_host")
        self.bytes_from_host = 0
        self.bytes_to_host = 0
        self.corrupted_chunks = 0
        self.dropped = False  #: the drop has fired
        self.stalled = False  #: the current connection is stalled
        self._stall_fired = False
        self._cut = False  #: the current connection was dropped by us

    @property
    def alive(self) -> bool:
        return not self._cut and self.inner.alive

    def attach(self, inner: DeviceConnection) -> None:
        """Continue on a new connection (after a reconnect), keeping the counts."""
        self.inner = inner
        self._cut = False
        self.stalled = False

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._cut:
            raise HostDisconnected("link dropped (fault injection)")
        if self.stalled:
            return self._swallow(max_bytes, timeout)
        limit = max_bytes
        for mark, fired in ((self._drop_at, self.dropped), (self._stall_at, self._stall_fired)):
            if mark is not None and not fired:
                limit = min(limit, max(1, mark - self.bytes_from_host))
        if self._drop_at is not None and not self.dropped and self.bytes_from_host >= self._drop_at:
            self._drop()
            raise HostDisconnected("link dropped (fault injection)")
        data = self.inner.read(limit, timeout)
        self.bytes_from_host += len(data)
        if self._drop_at is not None and not self.dropped and self.bytes_from_host >= self._drop_at:
            self._drop()
        elif (self._stall_at is not None and not self._stall_fired
              and self.bytes_from_host >= self._stall_at):
            self._stall_fired = self.stalled = True
        return self._maybe_corrupt(data, self._rng_in, "to_device")

    def write(self, data: Buffer) -> None:
        if self._cut:
            raise HostDisconnected("link dropped (fault injection)")
        if self.stalled:
            return
        chunk = self._maybe_corrupt(bytes(data), self._rng_out, "to_host")
        self.inner.write(chunk)
        self.bytes_to_host += len(chunk)

    def close(self) -> None:
        self.inner.close()

    def _drop(self) -> None:
        self.dropped = self._cut = True
        self.inner.close()

    def _swallow(self, max_bytes: int, timeout: float | None) -> bytes:
        """A stalled link: read and discard until the timeout (a host leaving still shows)."""
        deadline = _deadline(timeout)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                self.inner.read(max_bytes, left)
            except ZflashError as exc:
                if exc.code == Code.TIMEOUT:
                    raise _timeout("no data from the host (link stalled)") from None
                raise
            if _expired(deadline):
                raise _timeout("no data from the host (link stalled)")

    def _maybe_corrupt(self, data: bytes, rng: random.Random, direction: str) -> bytes:
        if not data or self._direction not in ("both", direction):
            return data
        if rng.random() >= self._fraction:
            return data
        bit = rng.randrange(len(data) * 8)
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        self.corrupted_chunks += 1
        return bytes(flipped)
