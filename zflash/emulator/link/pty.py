"""The pty link: a pseudo-terminal the host opens as a serial port.

Why this exists: a serial device is emulated by keeping a pty's master and letting the host
open the slave; detecting the host coming and going, hanging up (a fresh pty under a stable
symlink) and one `PtyConnection` per host session are pty-specific and kept together here.

The device's name is its pty for the link's life: a host session that ends (the host left,
or the device gave up on it) keeps the same master, so the printed URL stays true and no other
program can be handed that /dev/pts/N. Only an explicit `hangup` (the pull-the-cable fault)
makes a new pty; with ``link_path`` the symlink follows it.
"""

from __future__ import annotations

import errno
import os
import select
import threading
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

#: How often a pty with no host is checked for a newly attached one.
_HOST_POLL = 0.02

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

    def discard_pending(self) -> None:
        """Drop bytes queued either way (a session ended mid-stream): the next session must
        not read the old host's requests, nor the host the old session's answers."""
        import termios
        with self._lock:
            if self._closed:
                return
            try:
                termios.tcflush(self._master, termios.TCIOFLUSH)
            except (termios.error, OSError):
                pass

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
    """One host session on a `PtyLink`. ``end`` finishes the session and keeps the pty;
    ``close`` while the host is still attached hangs up (the host sees LINK_LOST: the
    pull-the-cable fault); after the host left, ``close`` just ends the session."""

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

    def end(self) -> None:
        """End this session without pulling the cable: same pty, pending bytes dropped."""
        if self._ended:
            return
        self._ended = True
        if self._current():
            self._link.discard_pending()

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

