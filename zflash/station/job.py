"""One device's job: flash it, retrying a lost link with resume, and keep its own record.

A job owns everything about its device: its state for the display, its stamper (every event
carries this device's identity), its log, its result. Nothing is shared between jobs but
the read-only plan (package, keys, options) and the station's stop flag, so a device that is
unplugged, refuses the package or fails to boot never slows or stops another.

Stopping and the per-device timeout work through the event sink: the next event after the
station asks to stop (or the deadline passes) raises a coded error inside the flash, which
unwinds it the way a pulled cable would, so the device is left exactly as resumable as after
a cable pull. Once the slot switch was sent the flash is let finish (reboot is seconds).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from zflash.errors import Code, ZflashError
from zflash.events import Stamper
from zflash.flash import FlashOptions, FlashSummary, flash
from zflash.package.keys import TrustStore
from zflash.station.discovery import Sighting
from zflash.station.log import DeviceLog
from zflash.station.policy import RetryPolicy

Flasher = Callable[[str, Path, TrustStore, FlashOptions, Callable[[dict[str, Any]], None]],
                   FlashSummary]
#: what the flash is doing, from its events (for the one-line-per-device display)
STATES = {"connected": "connected", "device": "identified", "check_passed": "checking",
          "check_failed": "refused", "update_ready": "writing", "partition_started": "writing",
          "verified": "verifying", "slot_switched": "switched", "rebooted": "booted"}
#: after these the flash is let finish: stopping then would save nothing
POINT_OF_NO_RETURN = ("slot_switched", "rebooted", "done")


@dataclass(frozen=True)
class FlashPlan:
    """What every device gets: one package (opened and hashed once), keys, options."""

    package: Path
    trust: TrustStore
    options: FlashOptions
    sha256: str
    version: str
    product: str


@dataclass
class JobResult:
    """One device's record in the run report."""

    key: str
    url: str
    source: str
    port: str | None
    serial: str | None
    package: str
    package_sha256: str
    package_version: str
    result: str = "running"  #: ok | failed | interrupted
    code: int = 0
    meaning: str = ""
    detail: str = ""
    started_at: str = ""
    seconds: float = 0.0
    sent_bytes: int = 0  #: image bytes the device confirmed, over every attempt
    skipped_bytes: int = 0  #: image bytes not sent in the last attempt (delta, resume, holes)
    resumed_blocks: int = 0
    wire_bytes: int = 0
    retries: int = 0
    protocol: str | None = None
    slot: str | None = None
    booted_slot: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Job:
    """Flash one sighted device; ``run`` never raises (every failure is in the result)."""

    def __init__(self, sighting: Sighting, plan: FlashPlan, stop: threading.Event,
                 on_event: Callable[["Job", dict[str, Any]], None], *,
                 policy: RetryPolicy | None = None, log_dir: Path | None = None,
                 device_timeout: float | None = None, flasher: Flasher = flash) -> None:
        self.sighting, self.plan, self.stop = sighting, plan, stop
        self.policy = policy or RetryPolicy()
        self.device_timeout, self.flasher = device_timeout, flasher
        self._on_event = on_event
        self.log = DeviceLog(log_dir, sighting.label, sighting.serial) if log_dir else None
        self.started = time.monotonic()
        self.stamper = Stamper(self._sink, sighting.url, serial=sighting.serial,
                               port=sighting.port, started=self.started)
        self.state = "queued"
        self.percent: float | None = None
        self.rate: float | None = None
        self.eta: float | None = None
        self._rate_mark: tuple[float, int] | None = None
        self._past_return = False
        self._in_flash = False  # stop/timeout act only on the flash's own events
        self._timed_out = False
        self._attempt_sent = 0
        self._attempt_skipped = 0
        self._done: dict[str, Any] = {}
        self.result = JobResult(sighting.key, sighting.url, sighting.source, sighting.port,
                                sighting.serial, plan.package.name, plan.sha256, plan.version)

    @property
    def serial(self) -> str | None:
        return self.stamper.device.get("serial")

    @property
    def finished(self) -> bool:
        return self.result.result != "running"

    def note(self, event: dict[str, Any]) -> None:
        """A station event about this device (arrived, left...), stamped and logged here."""
        self.stamper(event)

    # ------------------------------------------------------------------ running
    def run(self) -> JobResult:
        result = self.result
        result.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        attempt = 0
        code, detail = 0, ""
        while True:
            attempt += 1
            self._attempt_sent = self._attempt_skipped = 0
            self._past_return = False
            self.note({"event": "attempt", "attempt": attempt})
            code, detail = self._attempt()
            result.attempts.append({"attempt": attempt, "code": code, "detail": detail,
                                    "sent_bytes": self._attempt_sent,
                                    "skipped_bytes": self._attempt_skipped})
            if code == 0 or not self.policy.should_retry(
                    code, attempt, stopping=self.stop.is_set(), timed_out=self._timed_out):
                break
            result.retries += 1
            self.state = "retrying"
            self.note({"event": "retrying", "code": code, "detail": detail,
                       "attempt": attempt + 1, "wait": self.policy.wait})
            if self.stop.wait(self.policy.wait):
                code, detail = int(Code.INTERRUPTED), "the station stopped before the retry"
                break
        self._finish(code, detail)
        return result

    def _attempt(self) -> tuple[int, str]:
        if self.stop.is_set():
            return int(Code.INTERRUPTED), "the station stopped before this device started"
        self._in_flash = True
        try:
            self.flasher(self.sighting.url, self.plan.package, self.plan.trust,
                         self.plan.options, self.stamper)
            return 0, ""
        except ZflashError as exc:
            return exc.code, exc.detail
        except Exception as exc:  # noqa: BLE001 - one device's bug must not end the station
            return int(Code.INTERNAL), f"{type(exc).__name__}: {exc}"
        finally:
            self._in_flash = False
            self.stamper.idle()

    def _finish(self, code: int, detail: str) -> None:
        result, done = self.result, self._done
        result.seconds = round(time.monotonic() - self.started, 3)
        result.serial = self.serial
        result.code, result.detail = code, detail
        result.meaning = ZflashError(code).info.meaning if code else ""
        result.result = ("ok" if code == 0 else
                         "interrupted" if code == Code.INTERRUPTED else "failed")
        result.skipped_bytes = self._attempt_skipped
        result.resumed_blocks = int(done.get("resumed_blocks", 0))
        result.wire_bytes = int(done.get("wire_bytes", 0))
        result.slot = done.get("slot", result.slot)
        result.booted_slot = done.get("booted_slot")
        self.state = result.result if code == 0 else f"{result.result} {code}"
        self.stamper.close()
        self.note({"event": "job_finished", **{k: v for k, v in result.to_dict().items()
                                               if k not in ("attempts", "key")}})

    # ------------------------------------------------------------------ the event sink
    def _sink(self, event: dict[str, Any]) -> None:
        """Every stamped event of this device: track it, log it, show it; then stop the
        flash if the station is stopping or the device's time is up."""
        self._track(event)
        if self.log:
            self.log.write(event)
        try:
            self._on_event(self, event)
        except Exception:  # noqa: BLE001 - a display fault must not fail the device's flash
            pass
        kind = event.get("event")
        if kind in POINT_OF_NO_RETURN:
            self._past_return = True
        if self._past_return or not self._in_flash:
            return
        if self.stop.is_set():
            raise ZflashError(Code.INTERRUPTED, "the station is stopping; the device is left "
                                                "resumable")
        if self.device_timeout and time.monotonic() - self.started > self.device_timeout:
            self._timed_out = True
            raise ZflashError(Code.TIMEOUT, f"the device took longer than --device-timeout "
                                            f"{self.device_timeout:g} s")

    def _track(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in STATES and not self.finished:
            self.state = STATES[kind]
        if kind == "connected":
            self.result.protocol = event.get("protocol")
        elif kind == "update_ready":
            self.result.slot = event.get("slot")
        elif kind == "partition_started":
            self._attempt_skipped += int(event.get("skipped_bytes", 0))
        elif kind == "bytes_sent":
            self._attempt_sent += int(event.get("bytes", 0))
            self.result.sent_bytes += int(event.get("bytes", 0))
            self._progress(event)
        elif kind == "done":
            self._done = dict(event)

    def _progress(self, event: dict[str, Any]) -> None:
        done, total = event.get("done_bytes"), event.get("total_bytes")
        elapsed = float(event.get("elapsed", 0.0))
        if done is None or not total:
            return
        self.percent = min(100.0, 100.0 * done / total)
        if self._rate_mark is None:
            self._rate_mark = (elapsed, done)
            return
        seconds, bytes_ = elapsed - self._rate_mark[0], done - self._rate_mark[1]
        if seconds > 0:
            self.rate = bytes_ / seconds
            self.eta = (total - done) / self.rate if self.rate else None
