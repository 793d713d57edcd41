"""The contract every device-side link keeps, and the waiting helpers the links share.

Why this exists: the pty and TCP links and the shaping/fault wrappers all promise the same
`DeviceConnection` interface (see the package docstring) and raise the same
`HostDisconnected`; they also all wait the same way, in short slices against a deadline, so
that a close() from another thread is noticed promptly. Those shared pieces live here, once.
"""

from __future__ import annotations

import math
import select
import time
from typing import Protocol, TypeVar

from zflash.errors import Code, ZflashError

Buffer = bytes | bytearray | memoryview
_L = TypeVar("_L")

#: Longest single wait, so that close() from another thread is noticed promptly.
_SLICE = 0.1
DEFAULT_WRITE_TIMEOUT = 30.0


class HostDisconnected(ZflashError):
    """The host went away (closed the port, reset the connection); wait for the next one."""

    def __init__(self, detail: str = "the host disconnected") -> None:
        super().__init__(Code.LINK_LOST, detail)


class DeviceConnection(Protocol):
    """What a device server loop talks to (see the package docstring for the contract)."""

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
