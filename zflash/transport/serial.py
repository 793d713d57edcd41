"""Serial transport over pyserial, for local ports and pyserial's own URL schemes.

Everything goes through ``serial.serial_for_url`` so that ``socket://``, ``spy://`` and
``loop://`` work unchanged (a port shared by ser2net's raw mode or socat). ``rfc2217://`` has
zflash's own client (``transport.rfc2217``): pyserial's moves about 0.3 MiB/s.

Reads are large on every handler, because a ZDL backup streams megabytes and a Python call
per byte caps the link at a few KiB/s. Where the port has a file descriptor (a local POSIX
port, ``spy://``, and ``socket://``, whose ``in_waiting`` only says 0 or 1) zflash waits on
the descriptor itself and reads whatever is there with a zero pyserial timeout; changing
pyserial's ``timeout`` per read would reconfigure the port (a ``tcsetattr``). Handlers
without one (``loop://``) buffer in a queue whose ``in_waiting`` is exact: zflash blocks for
the first byte with a short fixed pyserial timeout, then takes everything queued in one call.

Writes go out in chunks small enough to drain within ``write_timeout`` at the current baud
rate, so the timeout means "no progress", not "the whole image in N seconds".
"""

from __future__ import annotations

import errno
import os
import queue
import time

import serial
from serial.urlhandler.protocol_socket import Serial as _SocketSerial

from zflash.errors import Code, ZflashError
from zflash.transport.base import (
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Buffer,
    Transport,
    check_baud,
    check_read_args,
    wait_fd,
)
from zflash.transport.url import DeviceUrl

#: pyserial read timeout for handlers without a file descriptor (loop://, socket://, ...).
_SLICE = 0.05
_MAX_CHUNK = 64 * 1024
_MIN_CHUNK = 256

PERMISSION_HINT = ("add your user to the 'dialout' group (`sudo usermod -aG dialout $USER`, "
                   "then log in again) or install zflash's udev rules "
                   "(`zflash udev-rules --install`) and replug")

_NOT_FOUND_ERRNOS = {errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.ENOTDIR}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM}
_BUSY_ERRNOS = {errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK}


def classify_open_error(exc: BaseException, where: str) -> ZflashError:
    """Turn whatever opening a port raised into the error the user can act on."""
    if isinstance(exc, ValueError) or "expected a string in the form" in str(exc):
        return ZflashError(Code.BAD_DEVICE_URL, f"{where}: {exc}")
    number = getattr(exc, "errno", None)
    text = str(exc)
    lowered = text.lower()
    windows_busy = "access is denied" in lowered  # Windows' answer for a port in use
    if number in _DENIED_ERRNOS or ("permissionerror" in lowered and not windows_busy):
        return ZflashError(Code.PERMISSION_DENIED,
                           f"permission denied opening {where}: {PERMISSION_HINT}")
    if number in _BUSY_ERRNOS or windows_busy or "exclusively lock" in lowered:
        return ZflashError(Code.PORT_BUSY,
                           f"{where} is in use by another program (a terminal, ModemManager, "
                           "another zflash); close it and retry")
    if number in _NOT_FOUND_ERRNOS or "filenotfounderror" in lowered or "refused" in lowered:
        return ZflashError(Code.DEVICE_NOT_FOUND,
                           f"no device at {where} (is it plugged in and in download mode?)")
    return ZflashError(Code.DEVICE_NOT_FOUND, f"cannot open {where}: {text}")


#: Pass-through schemes that reach a server over the network (ser2net, socat, a board farm).
_NETWORK_SCHEMES = frozenset({"socket"})


def pyserial_target(url: DeviceUrl) -> str:
    """The string handed to ``serial_for_url``: the local port, or the pass-through URL."""
    return url.raw if url.is_passthrough else url.path


def _has_fd(port: serial.SerialBase) -> bool:
    """True when zflash can wait on the port's descriptor: a local POSIX port (spy:// is
    one too) or pyserial's socket:// handler (select works on sockets everywhere)."""
    if isinstance(port, _SocketSerial):
        return True
    return os.name == "posix" and isinstance(port, serial.Serial)


def classify_network_error(exc: BaseException, url: DeviceUrl) -> ZflashError:
    """What opening a socket:// URL raised, said as what went wrong with the server:
    nothing listening, no answer, or a bad URL."""
    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, ValueError) or "expected a string in the form" in lowered:
        return ZflashError(Code.BAD_DEVICE_URL, f"{url}: {text}")
    if "refused" in lowered:
        return ZflashError(Code.SERIAL_SERVER,
                           f"{url}: nothing accepts connections there (connection refused); "
                           "is the serial server (ser2net, socat) running on that port?")
    if "timed out" in lowered:
        return ZflashError(Code.SERIAL_SERVER, f"{url}: no answer from the server ({text})")
    return ZflashError(Code.SERIAL_SERVER, f"{url}: cannot connect: {text}")


def _chunk_size(baud: int, write_timeout: float) -> int:
    """Bytes that drain in half the write timeout at ``baud`` (10 bits a byte on the wire)."""
    size = int(baud / 10 * write_timeout / 2)
    return max(_MIN_CHUNK, min(_MAX_CHUNK, size))


class SerialTransport(Transport):
    """A pyserial port. Exclusive on local POSIX ports (flock), as pyserial allows."""

    has_baudrate = True

    def __init__(self, port: serial.SerialBase, url: DeviceUrl, write_timeout: float) -> None:
        self._port = port
        self._url = url
        self._write_timeout = write_timeout
        self._fd: int | None = port.fileno() if _has_fd(port) else None
        self._closed = False

    @classmethod
    def open(cls, url: DeviceUrl, timeout: float = DEFAULT_OPEN_TIMEOUT,
             write_timeout: float = DEFAULT_WRITE_TIMEOUT) -> SerialTransport:
        """Open ``url`` (scheme serial or a pyserial pass-through); baud from the URL."""
        where = str(url)
        kwargs: dict[str, object] = {"baudrate": url.baud, "do_not_open": True}
        try:
            port = serial.serial_for_url(pyserial_target(url), **kwargs)
            port.timeout = 0 if _has_fd(port) else _SLICE
            port.write_timeout = write_timeout
            if url.scheme in ("serial", "edl+serial"):
                port.exclusive = True
            port.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            if url.scheme in _NETWORK_SCHEMES:
                raise classify_network_error(exc, url) from None
            raise classify_open_error(exc, where) from None
        except (KeyError, IndexError, TypeError) as exc:
            # pyserial 3.5's URL handlers crash while formatting their own "bad URL" message
            raise ZflashError(Code.BAD_DEVICE_URL,
                              f"{where}: pyserial rejected the URL ({exc!r})") from None
        if url.scheme in ("serial", "edl+serial"):
            try:  # bytes left over from an earlier session would confuse the protocol
                port.reset_input_buffer()
            except (serial.SerialException, OSError):
                pass
        return cls(port, url, write_timeout)

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"serial {self._url} @ {self.baudrate}"

    @property
    def baudrate(self) -> int:
        """The line rate the port is set to now."""
        return int(self._port.baudrate)

    def set_baudrate(self, baud: int) -> None:
        """Reprogram the open port's rate (the device must have agreed to it first)."""
        check_baud(baud)
        self._check_open()
        try:
            self._port.baudrate = baud
        except ValueError as exc:
            raise ZflashError(Code.USAGE, f"baud rate {baud} not supported: {exc}") from None
        except (serial.SerialException, OSError) as exc:
            raise self._lost(exc) from None

    def write(self, data: Buffer) -> None:
        """Write everything, chunked so each chunk can drain within the write timeout."""
        self._check_open()
        view = memoryview(data).cast("B")
        chunk = _chunk_size(self.baudrate, self._write_timeout)
        try:
            for start in range(0, len(view), chunk):
                self._port.write(view[start:start + chunk])
        except (serial.SerialTimeoutException, queue.Full):  # loop:// raises queue.Full
            raise ZflashError(Code.TIMEOUT, f"{self._url}: device stopped reading for "
                                            f"{self._write_timeout:g} s") from None
        except (serial.SerialException, OSError) as exc:
            raise self._lost(exc) from None

    def read(self, max_bytes: int, timeout: float) -> bytes:
        """1..max_bytes bytes, TIMEOUT after ``timeout`` s, LINK_LOST if the port vanished."""
        check_read_args(max_bytes, timeout)
        self._check_open()
        deadline = time.monotonic() + timeout
        try:
            while True:
                data = self._read_once(max_bytes, deadline)
                if data:
                    return data
                if time.monotonic() >= deadline:
                    raise ZflashError(Code.TIMEOUT,
                                      f"{self._url}: no data within {timeout:g} s")
        except (serial.SerialException, OSError) as exc:
            raise self._lost(exc) from None

    def _read_once(self, max_bytes: int, deadline: float) -> bytes:
        """One wait-then-read step; b"" when nothing came in this step.

        Both branches return everything already received (up to ``max_bytes``) in one
        pyserial call: with a descriptor, a zero-timeout read is one ``read``/``recv``; a
        queue-backed handler reports exactly what it holds in ``in_waiting``.
        """
        if self._fd is not None:
            if not wait_fd(self._fd, False, deadline - time.monotonic()):
                return b""
            return bytes(self._port.read(max_bytes))
        first = bytes(self._port.read(1))  # returns as soon as a byte arrives, or after _SLICE
        if not first or max_bytes == 1:
            return first
        waiting = self._port.in_waiting
        if not waiting:
            return first
        return first + bytes(self._port.read(min(waiting, max_bytes - 1)))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._port.close()
        except (serial.SerialException, OSError):
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise ZflashError(Code.LINK_LOST, f"{self._url}: transport is closed")

    def _lost(self, exc: BaseException) -> ZflashError:
        return ZflashError(Code.LINK_LOST, f"{self._url}: {exc}")
