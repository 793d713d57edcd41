"""Link shaping: pace a connection to a byte rate and delay host data by a latency.

Why this exists: ptys and loopback TCP are far faster than a real UART or USB-serial adapter;
`ShapedLink` wraps any `DeviceConnection` so the host meets realistic rates and latencies
(and baud switches) without the links or the servers knowing about it.
"""

from __future__ import annotations

import math
import time
from collections import deque

from zflash.emulator.link.base import (
    _SLICE,
    Buffer,
    DeviceConnection,
    _deadline,
    _expired,
    _timeout,
)
from zflash.errors import Code, ZflashError


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

