"""Which devices a station flashes: the selectors and the pure matching rules.

USB filters narrow each other (``--port 1-1.* --serial-prefix ZX`` is ZX devices on hub 1-1);
the sources unite (USB devices matched by the filters, serial ports matched by the tty globs,
and explicit URLs). With no selector at all, every USB device in download mode is taken, as
``uuu -d`` does.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from zflash.errors import Code, ZflashError

KINDS = ("zdl", "fastboot")


@dataclass(frozen=True)
class UsbIdFilter:
    """``VID:PID[:KIND]`` (hex; PID may be ``*``); KIND is the download interface."""

    vid: int
    pid: int | None
    kind: str | None = None

    @classmethod
    def parse(cls, text: str) -> "UsbIdFilter":
        parts = text.strip().split(":")
        if len(parts) not in (2, 3):
            raise ZflashError(Code.USAGE, f"--usb-id {text!r}: use VID:PID or VID:PID:KIND, "
                                          "e.g. 1209:0001:zdl")
        try:
            vid = int(parts[0], 16)
            pid = None if parts[1] == "*" else int(parts[1], 16)
        except ValueError:
            raise ZflashError(Code.USAGE, f"--usb-id {text!r}: VID and PID are hexadecimal "
                                          "(PID may be *)") from None
        if not 0 <= vid <= 0xFFFF or (pid is not None and not 0 <= pid <= 0xFFFF):
            raise ZflashError(Code.USAGE, f"--usb-id {text!r}: VID and PID are 16-bit")
        kind = parts[2].lower() if len(parts) == 3 else None
        if kind is not None and kind not in KINDS:
            raise ZflashError(Code.USAGE, f"--usb-id {text!r}: KIND is one of "
                                          f"{', '.join(KINDS)}")
        return cls(vid, pid, kind)

    def matches(self, vid: int, pid: int, kind: str) -> bool:
        return vid == self.vid and self.pid in (None, pid) and self.kind in (None, kind)


@dataclass(frozen=True)
class Selectors:
    urls: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    serial_prefixes: tuple[str, ...] = ()
    usb_ids: tuple[UsbIdFilter, ...] = field(default_factory=tuple)
    ttys: tuple[str, ...] = ()

    @property
    def any_usb_filter(self) -> bool:
        return bool(self.ports or self.serial_prefixes or self.usb_ids)

    @property
    def scans_usb(self) -> bool:
        """USB is polled when a USB filter is given, or when nothing at all is."""
        return self.any_usb_filter or not (self.urls or self.ttys)

    def usb_matches(self, vid: int, pid: int, kind: str, port_path: str | None,
                    serial: str | None) -> bool:
        if not self.scans_usb:
            return False
        if self.ports and not (port_path and
                               any(fnmatch.fnmatchcase(port_path, p) for p in self.ports)):
            return False
        if self.serial_prefixes and not (serial and
                                         any(serial.startswith(p)
                                             for p in self.serial_prefixes)):
            return False
        if self.usb_ids and not any(f.matches(vid, pid, kind) for f in self.usb_ids):
            return False
        return True

    def tty_matches(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, g) for g in self.ttys)
