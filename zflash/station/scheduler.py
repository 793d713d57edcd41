"""The station loop: watch for devices, start one job (thread) per new device, collect.

Rules (issue 12): each device that arrives is flashed once; a port is not used again until
its device left; a device that comes back after a failure is tried again, one that comes
back after success (same serial) is not; ``jobs`` bounds how many flash at once; ``--once``
takes what the first scan sees and ends when those are done; watch mode ends on ``stop()``
(Ctrl-C, SIGTERM) or after ``max_devices`` jobs. Stopping tells every running job to stop
(each leaves its device resumable), records queued devices as interrupted, and returns the
report.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from zflash.errors import ZflashError
from zflash.flash import flash
from zflash.station.discovery import POLL, Discovery, Sighting
from zflash.station.job import FlashPlan, Flasher, Job
from zflash.station.policy import RetryPolicy
from zflash.station.report import RunReport

#: (the device's job, or None for a station event; the event)
OnEvent = Callable[[Job | None, dict[str, Any]], None]


@dataclass(frozen=True)
class StationOptions:
    watch: bool = False
    jobs: int | None = None  #: at most this many devices flash at once (None: no limit)
    device_timeout: float | None = None
    retries: int = 0
    retry_wait: float = 0.5
    log_dir: Path | None = None
    max_devices: int | None = None  #: watch mode: end after this many jobs
    poll: float = POLL


class Station:
    def __init__(self, discovery: Discovery, plan: FlashPlan, options: StationOptions,
                 on_event: OnEvent, flasher: Flasher = flash) -> None:
        self.discovery, self.plan, self.options = discovery, plan, options
        self.on_event, self.flasher = on_event, flasher
        self.stop_event = threading.Event()
        self.report = RunReport(plan)
        self.jobs: list[Job] = []  #: every job, in the order devices arrived
        self._started = time.monotonic()
        self._stop_reason: str | None = None

    def stop(self, reason: str = "stop") -> None:
        """Ask the run to end (safe from a signal handler or another thread)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self.stop_event.set()

    # ------------------------------------------------------------------ the loop
    def run(self) -> RunReport:
        opts = self.options
        self._emit({"event": "station_started", "mode": "watch" if opts.watch else "once",
                    "jobs": opts.jobs, "package": self.plan.package.name,
                    "package_sha256": self.plan.sha256, "package_version": self.plan.version})
        present: dict[str, Job | None] = {}  # key -> its latest job (None: not flashed)
        flashed: set[str] = set()  # serials flashed ok in this run
        queue: deque[Job] = deque()
        running: list[tuple[Job, threading.Thread]] = []
        first = True
        try:
            while not self.stop_event.is_set():
                seen = self._scan(first) if first or opts.watch else None
                if seen is not None:
                    self._arrivals(seen, present, flashed, queue, first)
                first = False
                self._reap(running, flashed)
                while queue and (opts.jobs is None or len(running) < opts.jobs):
                    job = queue.popleft()
                    thread = threading.Thread(target=job.run, daemon=True,
                                              name=f"zflash-station-{job.sighting.key}")
                    running.append((job, thread))
                    thread.start()
                if not queue and not running and (not opts.watch or self._enough()):
                    break
                self.stop_event.wait(opts.poll)
        except KeyboardInterrupt:
            self.stop("SIGINT")
        finally:
            self._wind_down(queue, running, flashed)
        return self.report

    def _scan(self, first: bool) -> dict[str, Sighting] | None:
        """What is attached. The first scan's failure (no libusb, a bad hook) ends the run
        as a coded error; a later one (a hub resetting) is reported and the next poll tried."""
        try:
            return self.discovery.scan()
        except ZflashError as exc:
            if first:
                raise
            self._emit({"event": "scan_failed", **exc.to_dict()})
            return None  # not "everything left": the devices are still there

    def _enough(self) -> bool:
        limit = self.options.max_devices
        return limit is not None and len(self.jobs) >= limit

    def _arrivals(self, seen: dict[str, Sighting], present: dict[str, Job | None],
                  flashed: set[str], queue: deque[Job], first: bool) -> None:
        for key in [k for k in present if k not in seen]:
            job = present.pop(key)
            event = {"event": "device_left", "key": key}
            job.note(event) if job else self._emit(event)
        for key, sighting in seen.items():
            if key in present:
                continue
            present[key] = None
            if self._enough():
                self._emit({"event": "device_ignored", "key": key, "url": sighting.url,
                            "reason": "--max-devices reached"})
                continue
            if sighting.serial and sighting.serial in flashed:
                self._emit({"event": "device_ignored", "key": key, "url": sighting.url,
                            "reason": f"{sighting.serial} was flashed in this run"})
                continue
            job = Job(sighting, self.plan, self.stop_event, self.on_event,
                      policy=RetryPolicy(self.options.retries, self.options.retry_wait),
                      log_dir=self.options.log_dir, device_timeout=self.options.device_timeout,
                      flasher=self.flasher)
            present[key] = job
            self.jobs.append(job)
            queue.append(job)
            job.note({"event": "device_arrived", "key": key, "source": sighting.source,
                      "kind": sighting.kind, "at_start": first})

    def _reap(self, running: list[tuple[Job, threading.Thread]], flashed: set[str]) -> None:
        for job, thread in list(running):
            if not thread.is_alive():
                running.remove((job, thread))
                self.report.add(job.result)
                if job.result.ok and job.result.serial:
                    flashed.add(job.result.serial)

    def _wind_down(self, queue: deque[Job], running: list[tuple[Job, threading.Thread]],
                   flashed: set[str]) -> None:
        """Stop every job, wait for each (they unwind at their next event), record all."""
        stopping = self.stop_event.is_set()
        self.stop_event.set()
        while running:
            try:
                for _, thread in running:
                    thread.join()
            except KeyboardInterrupt:  # a second Ctrl-C: still wait, the report comes
                continue
            self._reap(running, flashed)
        for job in queue:  # seen, never started: recorded as interrupted
            job.run()
            self.report.add(job.result)
        self.report.seconds = time.monotonic() - self._started
        self.report.stopped_by = self._stop_reason if stopping else None
        self._emit({"event": "station_finished", **self.report.counts(),
                    "exit_code": self.report.exit_code, "stopped_by": self.report.stopped_by})

    def _emit(self, event: dict[str, Any]) -> None:
        self.on_event(None, {**event, "elapsed": round(time.monotonic() - self._started, 3)})

