"""Every device waiting to be flashed: USB devices in download mode and serial ports.

The library side of `zflash devices`. A machine without libusb, or without a USB bus at all,
is not an error here: the listing is empty and ``notes`` says why, so a factory script can
still poll it. `wait_for_new` blocks until a device appears that was not there before.
"""

from __future__ import annotations

import glob
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from serial.tools import list_ports

from zflash.errors import Code, ZflashError
from zflash.transport.usb_find import UsbDeviceInfo, enumerate_devices
from zflash.usb.ids import IdTable

POLL_SECONDS = 0.5


@dataclass
class SerialPortInfo:
    """A serial port. USB-serial bridges carry their ids and USB serial number (``known``
    names the bridge when the id table lists it); other ports (a pty, an on-board UART)
    have none and are told apart by ``device``, the path as it was found (a stable symlink
    such as /dev/serial/by-path/... stays as given; ``target`` is what it points to)."""

    device: str
    vid: int | None
    pid: int | None
    serial: str | None
    description: str | None
    known: str | None
    target: str | None = None

    @property
    def usb(self) -> bool:
        return self.vid is not None and self.pid is not None

    @property
    def url(self) -> str:
        return f"serial://{self.device}"

    @property
    def id_text(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}" if self.usb else "-"

    def summary(self) -> str:
        if not self.usb:
            return f"{self.device} {self.description or 'serial port (not USB)'}"
        label = self.known or self.description or "USB serial port"
        return f"{self.id_text} serial={self.serial or '?'} {label}"

    def to_dict(self) -> dict[str, Any]:
        return {"transport": "serial", "device": self.device, "target": self.target,
                "usb": self.usb, "vid": f"{self.vid:04x}" if self.usb else None,
                "pid": f"{self.pid:04x}" if self.usb else None, "serial": self.serial,
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
                | {_serial_key(p) for p in self.serial})

    def only(self, keys: set[str]) -> Listing:
        usb = [d for d in self.usb if f"usb:{d.bus}:{d.address}:{d.port_path}:{d.serial}" in keys]
        ser = [p for p in self.serial if _serial_key(p) in keys]
        return Listing(usb, ser, list(self.notes))

    def to_dict(self) -> dict[str, Any]:
        return {"devices": [d.to_dict() for d in self.usb] + [p.to_dict() for p in self.serial],
                "notes": list(self.notes)}


def _serial_key(port: SerialPortInfo) -> str:
    """A pty replugged under the same symlink points elsewhere: a new device."""
    return f"serial:{port.device}:{port.target}:{port.serial}"


def _port_info(port: Any, table: IdTable, device: str | None = None,
               target: str | None = None) -> SerialPortInfo:
    description = None if port.description in (None, "n/a") else port.description
    if port.vid is None or port.pid is None:
        return SerialPortInfo(device or port.device, None, None, None, description, None,
                              target)
    known = table.tty_id(port.vid, port.pid)
    return SerialPortInfo(device or port.device, port.vid, port.pid, port.serial_number,
                          description, known.label if known else None, target)


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def list_serial_ports(table: IdTable, globs: Sequence[str] = ()) -> list[SerialPortInfo]:
    """Serial ports: every USB one, the others pyserial can describe (hwid known; a phantom
    /dev/ttyS* has none), and every character device matching ``globs`` (a pty, a
    /dev/serial/by-path link) under the name it matched, with the USB ids of its bridge when
    the port it resolves to is a USB one."""
    ports = list_ports.comports()
    by_real = {os.path.realpath(p.device): p for p in ports}
    found: dict[str, SerialPortInfo] = {}
    for port in sorted(ports, key=lambda p: p.device):
        if port.vid is not None or port.hwid not in (None, "n/a"):
            found[os.path.realpath(port.device)] = _port_info(port, table)
    for pattern in globs:
        for path in sorted(glob.glob(pattern)):
            real = os.path.realpath(path)
            if not _is_char_device(real):
                continue
            target = real if real != path else None
            port = by_real.get(real)
            if port is None:
                found[real] = SerialPortInfo(path, None, None, None, None, None, target)
            else:
                found[real] = _port_info(port, table, path, target)
    return sorted(found.values(), key=lambda p: p.device)


def list_devices(table: IdTable, backend: Any = None,
                 tty_globs: Sequence[str] = ()) -> Listing:
    """USB devices in download mode and serial ports (see `list_serial_ports`); problems
    become notes."""
    listing = Listing()
    try:
        listing.usb = [c.info for c in enumerate_devices(backend, table)]
    except ZflashError as exc:
        if exc.code not in (Code.LIBUSB_MISSING, Code.LINK_LOST, Code.USAGE):
            raise
        listing.notes.append(f"USB not searched: {exc.info.meaning} ({exc.detail}); "
                             f"fix: {exc.info.fix}")
    try:
        listing.serial = list_serial_ports(table, tty_globs)
    except OSError as exc:
        listing.notes.append(f"serial ports not searched: {exc}")
    return listing


def wait_for_new(table: IdTable, seconds: float | None, backend: Any = None,
                 tty_globs: Sequence[str] = ()) -> Listing:
    """Block until a device not present at the start appears (DEVICE_NOT_FOUND after
    ``seconds``; None waits for ever)."""
    seen = list_devices(table, backend, tty_globs).keys()
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        current = list_devices(table, backend, tty_globs)
        new = current.keys() - seen
        if new:
            return current.only(new)
        seen &= current.keys()  # one unplugged and plugged back in counts as new
        if deadline is not None and time.monotonic() >= deadline:
            raise ZflashError(Code.DEVICE_NOT_FOUND,
                              f"no new device appeared within {seconds:g} s")
        time.sleep(POLL_SECONDS)
