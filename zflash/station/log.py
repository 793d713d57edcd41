"""One JSONL log per device, named by its serial number (its port until that is known).

Each line is one stamped event (it carries the device identity itself). The file is opened
for each line, in append mode, so a log survives a crash line by line and a device seen
again (a retry, a later run) extends its own record. When the serial becomes known, the
lines written under the port's name move into the serial's file.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from zflash.errors import Code, ZflashError


def safe_name(text: str) -> str:
    """A file name from a serial, a port path or a URL (no separators, no leading dot)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")
    return name or "device"


class DeviceLog:
    def __init__(self, directory: Path, port_or_url: str, serial: str | None = None) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self.path = directory / (f"{safe_name(serial)}.jsonl" if serial
                                 else f"port-{safe_name(port_or_url)}.jsonl")
        self.serial = serial

    def write(self, event: dict[str, Any]) -> None:
        with self._lock:
            serial = (event.get("device") or {}).get("serial")
            if serial and serial != self.serial:
                self._rename(serial)
            line = json.dumps(event, sort_keys=True, default=str) + "\n"
            try:
                with open(self.path, "a", encoding="utf-8") as handle:
                    handle.write(line)
            except OSError as exc:
                raise ZflashError(Code.FILE_UNWRITABLE, f"{self.path}: {exc.strerror}") from None

    def _rename(self, serial: str) -> None:
        target = self.directory / f"{safe_name(serial)}.jsonl"
        if self.path.exists() and self.path != target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(self.path.read_text(encoding="utf-8"))
            self.path.unlink()
        self.path, self.serial = target, serial
