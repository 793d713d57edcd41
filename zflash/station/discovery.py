"""What is attached now: one scan of USB, serial ports and explicit URLs, by stable key.

The scheduler calls :meth:`Discovery.scan` every ``POLL`` seconds (200 ms, as uuu polls) and
compares keys: a key that appears is a device that arrived, one that disappears left. A USB
device is keyed by its port path (the hub position the operator plugs into), a serial port
by its path, an explicit URL by itself (always present: a URL cannot be watched without
opening a session on it).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from typing import Any, Callable

from zflash.station.selectors import Selectors

POLL = 0.2


@dataclass(frozen=True)
class Sighting:
    """One attached device as discovery sees it, before any session is opened."""

    key: str
    url: str  #: what the job opens
    source: str  #: usb | tty | url
    port: str | None = None  #: USB port path or serial port path
    serial: str | None = None  #: USB serial number (strings descriptor), when readable
    kind: str | None = None  #: USB download interface (zdl, fastboot)

    def identity(self) -> dict[str, str]:
        out = {"url": self.url}
        if self.port:
            out["port"] = self.port
        if self.serial:
            out["serial"] = self.serial
        return out

    @property
    def label(self) -> str:
        """How the operator names it: the port (or URL), then the serial when known."""
        return self.port or self.url


UsbEnumerator = Callable[[], list[Any]]


def _usb_enumerator() -> list[Any]:
    from zflash.transport.usb_find import enumerate_devices
    return enumerate_devices()


class Discovery:
    """Scans the selected sources; holds no state between scans but the enumerator."""

    def __init__(self, selectors: Selectors, usb: UsbEnumerator | None = None) -> None:
        self.selectors = selectors
        self._usb = usb or _usb_enumerator

    def scan(self) -> dict[str, Sighting]:
        found: dict[str, Sighting] = {}
        sel = self.selectors
        if sel.scans_usb:
            for cand in self._usb():
                info = cand.info
                if not sel.usb_matches(info.vid, info.pid, info.protocol, info.port_path,
                                       info.serial):
                    continue
                key = f"usb:{info.port_path or info.serial or info.url}"
                found[key] = Sighting(key, info.url, "usb", info.port_path, info.serial,
                                      info.protocol)
        for pattern in sel.ttys:
            for path in sorted(glob.glob(pattern)):
                key = f"tty:{path}"
                found.setdefault(key, Sighting(key, f"serial://{path}", "tty", path))
        for url in sel.urls:
            found.setdefault(f"url:{url}", Sighting(f"url:{url}", url, "url"))
        return found
