"""The one interface every byte transport offers, and the scheme -> transport choice.

A transport moves bytes and nothing else: the protocol engines are sans-IO and the flasher
feeds them what ``read`` returns. Every call is bounded in time, so a device that stops
answering, or a cable that is pulled, becomes a ZflashError (TIMEOUT or LINK_LOST) that the
flasher can report or recover from, never a hang.
"""

from __future__ import annotations

import math
import select
from abc import ABC, abstractmethod
from types import TracebackType
from typing import TypeVar

from zflash.errors import Code, ZflashError

#: Default bound on opening / connecting.
DEFAULT_OPEN_TIMEOUT = 5.0
#: Default bound on a write that makes no progress (the device stopped reading).
DEFAULT_WRITE_TIMEOUT = 10.0

Buffer = bytes | bytearray | memoryview
_T = TypeVar("_T", bound="Transport")


class Transport(ABC):
    """A bidirectional byte link to one device; close it (or use ``with``) when done.

    ``is_stream`` is True when bytes arrive as an undelimited stream (serial, TCP), so the
    protocol must find frame boundaries itself; a packet transport (USB bulk) is False.
    ``has_baudrate`` is True only where ``set_baudrate`` changes a real line rate.
    """

    description: str = "transport"
    is_stream: bool = True
    has_baudrate: bool = False

    @abstractmethod
    def write(self, data: Buffer) -> None:
        """Write all of ``data``. TIMEOUT if the device stops taking bytes; LINK_LOST if gone."""

    @abstractmethod
    def read(self, max_bytes: int, timeout: float) -> bytes:
        """Return 1..max_bytes bytes as soon as any arrive.

        Raises ZflashError(TIMEOUT) when nothing arrives within ``timeout`` seconds (0 polls),
        ZflashError(LINK_LOST) when the peer closed or the device vanished.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the device; safe to call twice."""

    def set_baudrate(self, baud: int) -> None:
        """Change the line rate. A no-op on links without one (TCP): nothing to change there,
        so a protocol that negotiated a faster rate can call it unconditionally."""
        check_baud(baud)

    def __enter__(self: _T) -> _T:  # noqa: PYI019 - typing.Self needs 3.11
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


def check_read_args(max_bytes: int, timeout: float) -> None:
    """Reject reads that could block forever or return nothing: those are caller bugs."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    if timeout is None or not math.isfinite(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a finite number >= 0, got {timeout!r}")


def check_baud(baud: int) -> None:
    """A baud rate must be a positive integer; anything else is a usage error."""
    if not isinstance(baud, int) or isinstance(baud, bool) or baud <= 0:
        raise ZflashError(Code.USAGE, f"invalid baud rate {baud!r}")


def wait_fd(fd: int, for_write: bool, timeout: float) -> bool:
    """Wait until ``fd`` is readable (or writable); True if ready or in error, False on timeout.

    Errors and hang-ups count as ready so that the following read/write reports them.
    """
    timeout = max(0.0, timeout)
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLOUT if for_write else select.POLLIN)
        return bool(poller.poll(math.ceil(timeout * 1000)))
    if for_write:  # Windows: select works on sockets only, which is all we pass here
        _, ready, errs = select.select([], [fd], [fd], timeout)
    else:
        ready, _, errs = select.select([fd], [], [fd], timeout)
    return bool(ready or errs)
