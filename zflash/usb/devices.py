"""Every device waiting to be flashed: USB devices in download mode and USB serial ports.

The library side of `zflash devices`. A machine without libusb, or without a USB bus at all,
is not an error here: the listing is empty and ``notes`` says why, so a factory script can
still poll it. `wait_for_new` blocks until a device appears that was not there before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from serial.tools import list_ports

from zflash.errors import Code, ZflashError
from zflash.transport.usb_find import UsbDeviceInfo, enumerate_devices
from zflash.usb.ids import IdTable

POLL_SECONDS = 0.5


@dataclass
class SerialPortInfo:
    """A USB serial port; ``known`` names the bridge when the id table lists it."""

    device: str
    vid: int
    pid: int
    serial: str | None
    description: str | None
    known: str | None

    @property
    def url(self) -> str:
        return f"serial://{self.device}"

    def summary(self) -> str:
        label = self.known or self.description or "USB serial port"
        return f"{self.vid:04x}:{self.pid:04x} serial={self.serial or '?'} {label}"

    def to_dict(self) -> dict[str, Any]:
        return {"transport": "serial", "device": self.device, "vid": f"{self.vid:04x}",
                "pid": f"{self.pid:04x}", "serial": self.serial,
                "description": self.description, "known": self.known, "url": self.url}


@dataclass
class Listing:
    """What `zflash devices` shows, and why part of it may be missing."""

    usb: list[UsbDeviceInfo] = field(default_factory=list)
    serial: list[SerialPortInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def keys(self) -> set[str]:
        """Identities, to tell a new device from one already seen."""
        return ({f"usb:{d.bus}:{d.address}:{d.port_path}:{d.serial}" for d in self.usb}
                | {f"serial:{p.device}:{p.serial}" for p in self.serial})

    def only(self, keys: set[str]) -> Listing:
        usb = [d for d in self.usb if f"usb:{d.bus}:{d.address}:{d.port_path}:{d.serial}" in keys]
        ser = [p for p in self.serial if f"serial:{p.device}:{p.serial}" in keys]
        return Listing(usb, ser, list(self.notes))

    def to_dict(self) -> dict[str, Any]:
        return {"devices": [d.to_dict() for d in self.usb] + [p.to_dict() for p in self.serial],
                "notes": list(self.notes)}


def list_serial_ports(table: IdTable) -> list[SerialPortInfo]:
    """USB serial ports (ports without a USB vendor id cannot be told apart, so are left out)."""
    ports = []
    for port in sorted(list_ports.comports(), key=lambda p: p.device):
        if port.vid is None or port.pid is None:
            continue
        known = table.tty_id(port.vid, port.pid)
        description = None if port.description in (None, "n/a") else port.description
        ports.append(SerialPortInfo(port.device, port.vid, port.pid, port.serial_number,
                                    description, known.label if known else None))
    return ports


def list_devices(table: IdTable, backend: Any = None) -> Listing:
    """USB devices in download mode and USB serial ports; problems become notes."""
    listing = Listing()
    try:
        listing.usb = [c.info for c in enumerate_devices(backend, table)]
    except ZflashError as exc:
        if exc.code not in (Code.LIBUSB_MISSING, Code.LINK_LOST, Code.USAGE):
            raise
        listing.notes.append(f"USB not searched: {exc.info.meaning} ({exc.detail}); "
                             f"fix: {exc.info.fix}")
    try:
        listing.serial = list_serial_ports(table)
    except OSError as exc:
        listing.notes.append(f"serial ports not searched: {exc}")
    return listing


def wait_for_new(table: IdTable, seconds: float | None, backend: Any = None) -> Listing:
    """Block until a device not present at the start appears (DEVICE_NOT_FOUND after
    ``seconds``; None waits for ever)."""
    seen = list_devices(table, backend).keys()
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        current = list_devices(table, backend)
        new = current.keys() - seen
        if new:
            return current.only(new)
        seen &= current.keys()  # one unplugged and plugged back in counts as new
        if deadline is not None and time.monotonic() >= deadline:
            raise ZflashError(Code.DEVICE_NOT_FOUND,
                              f"no new device appeared within {seconds:g} s")
        time.sleep(POLL_SECONDS)
