"""What the station operator sees: one line per device redrawn in place on a terminal, plain
lines prefixed by the device on a pipe, NDJSON only with --json.

Called from every job's thread; one lock serialises the output.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

from zflash.station.job import Job

REDRAW = 0.25  # at most 4 redraws per second
PIPE_STEPS = 25  # on a pipe, a progress line each 25 %


def label(job: Job) -> str:
    """The device as the operator names it: port (or URL), then serial when known."""
    serial = job.serial
    return f"{job.sighting.label} {serial}" if serial and serial != job.sighting.label \
        else job.sighting.label


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def outcome(job: Job) -> str:
    r = job.result
    if r.ok:
        boot = f"booted slot {r.booted_slot}" if r.booted_slot else f"slot {r.slot} active"
        return (f"ok: {boot}; {r.seconds:.1f} s, {_size(r.sent_bytes)} sent, "
                f"{_size(r.skipped_bytes)} skipped"
                + (f", {r.retries} retries" if r.retries else ""))
    return f"{r.result} {r.code} {r.meaning}" + (f": {r.detail}" if r.detail else "")


class StationRenderer:
    def __init__(self, mode: str, err: TextIO | None = None, out: TextIO | None = None) -> None:
        if mode not in ("json", "terminal", "pipe"):
            raise ValueError(mode)
        self.mode = mode
        self.err, self.out = err or sys.stderr, out or sys.stdout
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}  # device key -> its latest job
        self._drawn = 0
        self._last_draw = 0.0
        self._steps: dict[int, int] = {}

    def __call__(self, job: Job | None, event: dict[str, Any]) -> None:
        with self._lock:
            if job is not None:
                self._jobs[job.sighting.key] = job
            if self.mode == "json":
                self.out.write(json.dumps(event, sort_keys=True, default=str) + "\n")
                self.out.flush()
            elif self.mode == "pipe":
                self._pipe(job, event)
            else:
                self._terminal(job, event)

    # ------------------------------------------------------------------ pipe
    def _pipe(self, job: Job | None, event: dict[str, Any]) -> None:
        text = self._describe(job, event)
        if text:
            prefix = f"[{label(job)}] " if job is not None else ""
            self.err.write(f"{prefix}{text}\n")
            self.err.flush()

    def _describe(self, job: Job | None, e: dict[str, Any]) -> str | None:
        kind = e["event"]
        if job is None:
            if kind == "station_started":
                return (f"station: {e['mode']}, package {e['package']} "
                        f"(version {e['package_version']}, sha256 {e['package_sha256'][:16]})")
            if kind == "station_finished":
                return f"station: ok {e['ok']}  failed {e['failed']}  " \
                       f"interrupted {e['interrupted']}"
            if kind in ("device_ignored", "device_left"):
                return f"{e.get('url', e['key'])}: {kind.replace('_', ' ')} " \
                       f"{e.get('reason', '')}".rstrip()
            if kind == "scan_failed":
                return f"station: scan failed: {e['code']} {e['detail']}"
            return None
        if kind == "device_arrived":
            return f"arrived ({e['source']}{', ' + e['kind'] if e.get('kind') else ''})"
        if kind == "device_left":
            return "left"
        if kind == "connected":
            return f"connected ({e.get('protocol')})"
        if kind == "device":
            f = e.get("facts", {})
            return f"{f.get('product')} rev {f.get('hardware_revision')}, baseband " \
                   f"{f.get('baseband')}, running slot {f.get('current_slot')}"
        if kind == "check_failed":
            return f"check failed: {e['code']} {e['message']}"
        if kind == "partition_started":
            return f"writing {e.get('target') or e.get('partition')}"
        if kind == "bytes_sent" and job.percent is not None:
            step = int(job.percent // PIPE_STEPS)
            if step > self._steps.get(id(job), 0):
                self._steps[id(job)] = step
                return f"{job.percent:.0f}%" + (f" {_size(job.rate)}/s" if job.rate else "")
            return None
        if kind == "retrying":
            return f"link lost ({e['code']}): retrying with resume (attempt {e['attempt']})"
        if kind == "rebooted":
            return "the new slot failed to boot" if e.get("fell_back") else \
                f"rebooted into slot {e.get('booted_slot') or e.get('slot')}"
        if kind == "job_finished":
            return outcome(job)
        return None

    # ------------------------------------------------------------------ terminal
    def _terminal(self, job: Job | None, event: dict[str, Any]) -> None:
        kind = event["event"]
        note = None
        if kind in ("job_finished", "check_failed", "retrying", "scan_failed"):
            note = self._describe(job, event)
            if note and job is not None:
                note = f"{label(job)}: {note}"
        now = time.monotonic()
        if note is None and kind == "bytes_sent" and now - self._last_draw < REDRAW:
            return
        self._redraw(note)
        self._last_draw = now

    def _line(self, job: Job) -> str:
        pct = f"{job.percent:3.0f}%" if job.percent is not None else "   -"
        rate = f"{_size(job.rate)}/s" if job.rate else "-"
        eta = f"ETA {job.eta:4.0f} s" if job.eta is not None and not job.finished else ""
        return (f"{job.sighting.label:<22.22} {job.serial or '?':<14.14} {job.state:<13.13} "
                f"{pct} {rate:>11} {eta}").rstrip()

    def header(self) -> str:
        jobs = list(self._jobs.values())
        ok = sum(j.result.ok for j in jobs)
        failed = sum(j.finished and not j.result.ok for j in jobs)
        return f"ok {ok}  failed {failed}  running {len(jobs) - ok - failed}"

    def _redraw(self, note: str | None) -> None:
        parts = []
        if self._drawn:
            parts.append(f"\x1b[{self._drawn}F")  # back to the header's line
        if note:
            parts.append(f"\x1b[2K{note}\n")
        lines = [self.header()] + [self._line(j) for j in self._jobs.values()]
        parts += [f"\x1b[2K{line}\n" for line in lines]
        parts.append("\x1b[J")
        self.err.write("".join(parts))
        self.err.flush()
        self._drawn = len(lines)
