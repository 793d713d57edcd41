"""The stamping layer between the library's events and whoever renders or logs them.

Every event leaving ``flash()``/``backup()`` (and every station job) passes one
:class:`Stamper`, which adds the two fields the schema (protocols/events.md) promises on every
event: ``elapsed`` (seconds since the operation started) and ``device`` (its identity: url,
and serial/port once known). It also sets the progress cadence: ``bytes_sent`` /
``bytes_received`` are summed and let out at most every ``interval`` seconds (a 4 KiB-block
flash would otherwise emit thousands per second), and while a partition is being written a
``bytes_sent`` tick goes out at least every ``tick`` seconds even when the device confirms
nothing (a slow serial link acknowledges a window every few seconds). Totals are exact: the
pending sum is flushed before any other event.

Nothing here is global: one stamper per device operation, its own lock and clock.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

Event = dict[str, Any]
Emit = Callable[[Event], None]

PROGRESS = ("bytes_sent", "bytes_received")
#: at most ~4 progress events per second
INTERVAL = 0.25
#: at least one progress event per second while a partition is being written
TICK = 1.0
#: a tick thread gives up after this long without any event (the caller has gone)
IDLE_LIMIT = 30.0


class Stamper:
    """Callable event sink that stamps, throttles and forwards to ``sink``.

    Calls into ``sink`` are serialised (the tick thread and the flash thread never overlap),
    so a sink needs no lock of its own for one device.
    """

    def __init__(self, sink: Emit, url: str, *, serial: str | None = None,
                 port: str | None = None, interval: float = INTERVAL, tick: float = TICK,
                 clock: Callable[[], float] = time.monotonic,
                 started: float | None = None) -> None:
        self.sink, self.interval, self.tick, self.clock = sink, interval, tick, clock
        self.device: dict[str, str] = {"url": url}
        if serial:
            self.device["serial"] = serial
        if port:
            self.device["port"] = port
        self.started = clock() if started is None else started  # a job's retries share it
        self._lock = threading.RLock()
        self._pending: Event | None = None
        self._last_progress = self.started
        self._last_event = self.started
        self._writing: str | None = None  # partition being written (ticks on)
        self._done = 0  # image bytes done overall (skipped ones count as done)
        self._total: int | None = None
        self._ticker: threading.Thread | None = None
        self._closed = threading.Event()

    # ------------------------------------------------------------------ identity
    def identify(self, serial: str | None = None, port: str | None = None) -> None:
        """Add what became known about the device (its serial from the ``device`` event)."""
        with self._lock:
            if serial:
                self.device["serial"] = serial
            if port:
                self.device["port"] = port

    # ------------------------------------------------------------------ the sink
    def __call__(self, event: Event) -> None:
        with self._lock:
            now = self.clock()
            self._last_event = now
            kind = event.get("event")
            if kind in PROGRESS:
                self._add_progress(event)
                if now - self._last_progress >= self.interval:
                    self._flush(now)
                return
            self._flush(now)
            self._track(event)
            self._forward(event, now)

    def _add_progress(self, event: Event) -> None:
        if event.get("event") == "bytes_sent":
            self._done += int(event.get("bytes", 0))
        pending = self._pending
        if pending is not None and (pending["event"] != event["event"] or
                                    pending.get("partition") != event.get("partition")):
            self._flush(self.clock())
            pending = None
        if pending is None:
            self._pending = dict(event)
            return
        for key in ("bytes", "wire_bytes"):
            if key in event:
                pending[key] = pending.get(key, 0) + event[key]

    def _flush(self, now: float) -> None:
        if self._pending is not None:
            event, self._pending = self._pending, None
            self._last_progress = now
            self._forward(event, now)

    def _forward(self, event: Event, now: float) -> None:
        stamped = {**event, "elapsed": round(now - self.started, 3), "device": dict(self.device)}
        if event.get("event") == "bytes_sent":
            stamped["done_bytes"] = self._done
            if self._total is not None:
                stamped["total_bytes"] = self._total
        self.sink(stamped)

    def _track(self, event: Event) -> None:
        """Follow the flash: identity, the overall total, when bytes are moving."""
        kind = event.get("event")
        if kind == "device":
            facts = event.get("facts") or {}
            self.identify(serial=facts.get("serial") or None)
        elif kind == "plan":
            self._total = int(event.get("image_bytes", 0))
            self._done = 0
        elif kind == "partition_started":
            self._done += int(event.get("skipped_bytes", 0))
            self._writing = str(event.get("partition"))
            self._last_progress = self.clock()
            self._start_ticker()
        elif kind in ("transferred", "done"):
            self._writing = None
        if kind == "done":
            self._closed.set()

    # ------------------------------------------------------------------ the tick
    def _start_ticker(self) -> None:
        if self._ticker is None and self.tick > 0:
            self._ticker = threading.Thread(target=self._tick_loop, daemon=True,
                                            name=f"zflash-tick-{self.device['url']}")
            self._ticker.start()

    def _tick_loop(self) -> None:
        while not self._closed.wait(self.tick / 4):
            with self._lock:
                now = self.clock()
                if now - self._last_event > IDLE_LIMIT:
                    return
                if self._writing is None or now - self._last_progress < self.tick:
                    continue
                if self._pending is None:
                    self._pending = {"event": "bytes_sent", "partition": self._writing,
                                     "bytes": 0, "wire_bytes": 0}
                try:
                    self._flush(now)
                except Exception:  # noqa: BLE001 - a sink refusing a tick (a stop request)
                    pass           # is seen by the flash thread on its next event

    def idle(self) -> None:
        """No partition is being written any more (an attempt ended): ticks pause."""
        with self._lock:
            self._writing = None
            self._flush(self.clock())

    def close(self) -> None:
        """Flush what is pending and stop the tick (an operation that ended early)."""
        self._closed.set()
        with self._lock:
            self._writing = None
            self._flush(self.clock())


def stamped(emit: Emit, url: str) -> Stamper:
    """``emit`` itself when it already stamps (a station job's), else a new stamper."""
    return emit if isinstance(emit, Stamper) else Stamper(emit, url)


@contextmanager
def stamping(emit: Emit, url: str) -> Iterator[Stamper]:
    """A stamper for one operation, closed (pending flushed, tick stopped) when it ends; a
    stamper passed in by the caller is the caller's to close."""
    stamper = stamped(emit, url)
    try:
        yield stamper
    finally:
        if stamper is not emit:
            stamper.close()
