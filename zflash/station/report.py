"""The run report: one record per device (JSON), and the same as JUnit XML.

A device is one serial number (its port or URL when the serial never became known). It may
have had several jobs in a watch run (it failed, was replugged, was flashed again); its
record is its last job, and ``jobs`` keeps every one. JUnit: one test case per device, a
``failure`` carrying the code when its last job did not end ``ok``, which is what CI and
test-station software already read.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from zflash import __version__
from zflash.errors import Code, ZflashError
from zflash.station.job import FlashPlan, JobResult


def device_id(result: JobResult) -> str:
    return result.serial or result.port or result.url


@dataclass
class RunReport:
    plan: FlashPlan
    started_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    jobs: list[JobResult] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by: str | None = None  #: signal name when the run was stopped

    def add(self, result: JobResult) -> None:
        self.jobs.append(result)

    def devices(self) -> list[JobResult]:
        """The last job of each device, in the order devices were first seen."""
        last: dict[str, JobResult] = {}
        for job in self.jobs:
            last.pop(device_id(job), None)
            last[device_id(job)] = job
        order = list(dict.fromkeys(device_id(j) for j in self.jobs))
        return [last[d] for d in order]

    def counts(self) -> dict[str, int]:
        devices = self.devices()
        ok = sum(d.ok for d in devices)
        interrupted = sum(d.result == "interrupted" for d in devices)
        return {"devices": len(devices), "ok": ok, "failed": len(devices) - ok - interrupted,
                "interrupted": interrupted}

    @property
    def all_ok(self) -> bool:
        return all(d.ok for d in self.devices())

    @property
    def exit_code(self) -> int:
        """0 when every device flashed and booted, else 9060."""
        return 0 if self.all_ok else int(Code.STATION_FAILURES)

    def to_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {"zflash": __version__, "started_at": self.started_at,
                "seconds": round(self.seconds, 3), "stopped_by": self.stopped_by,
                "package": {"name": plan.package.name, "sha256": plan.sha256,
                            "version": plan.version, "product": plan.product},
                "summary": {**self.counts(), "exit_code": self.exit_code},
                "devices": [d.to_dict() for d in self.devices()],
                "jobs": [j.to_dict() for j in self.jobs]}

    def junit(self) -> ET.Element:
        counts = self.counts()
        suites = ET.Element("testsuites", name="zflash station")
        suite = ET.SubElement(suites, "testsuite", {
            "name": f"zflash station {self.plan.product} {self.plan.version}",
            "tests": str(counts["devices"]), "failures": str(counts["failed"]),
            "errors": str(counts["interrupted"]), "skipped": "0",
            "time": f"{self.seconds:.3f}", "timestamp": self.started_at})
        for device in self.devices():
            case = ET.SubElement(suite, "testcase", {
                "classname": f"zflash.station.{self.plan.product}", "name": device_id(device),
                "time": f"{device.seconds:.3f}"})
            props = ET.SubElement(case, "properties")
            for name in ("url", "port", "serial", "protocol", "package_sha256",
                         "package_version", "sent_bytes", "skipped_bytes", "retries",
                         "booted_slot", "code"):
                value = getattr(device, name)
                if value is not None:
                    ET.SubElement(props, "property", name=name, value=str(value))
            if not device.ok:
                tag = "error" if device.result == "interrupted" else "failure"
                node = ET.SubElement(case, tag, message=f"{device.code} {device.meaning}",
                                     type=str(device.code))
                node.text = device.detail
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join(f"attempt {a['attempt']}: "
                                 f"{'ok' if not a['code'] else a['code']} {a['detail']}".rstrip()
                                 for a in device.attempts)
        return suites

    # ------------------------------------------------------------------ writing
    def write_json(self, path: Path) -> None:
        _write(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def write_junit(self, path: Path) -> None:
        tree = self.junit()
        ET.indent(tree)
        _write(path, '<?xml version="1.0" encoding="UTF-8"?>\n'
               + ET.tostring(tree, encoding="unicode") + "\n")


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a report cut by a crash would be worse than none."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ZflashError(Code.FILE_UNWRITABLE, f"{path}: {exc.strerror}") from None
