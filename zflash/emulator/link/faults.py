"""Fault injection: drop, stall or corrupt a connection, deterministically.

Why this exists: the host's recovery paths (LINK_LOST, TIMEOUT, bad checksums, resuming after
a reconnect) must be exercised repeatably; `FaultyLink` wraps any `DeviceConnection` and fires
each fault at an exact byte count or from a seeded RNG, knowing no protocol.
"""

from __future__ import annotations

import random
import time
from typing import Literal

from zflash.emulator.link.base import (
    Buffer,
    DeviceConnection,
    HostDisconnected,
    _deadline,
    _expired,
    _timeout,
)
from zflash.errors import Code, ZflashError

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
