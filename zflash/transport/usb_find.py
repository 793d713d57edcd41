"""Finding USB devices in download mode: the libusb library, enumeration, and choosing one.

Split from `usb.py` so that `zflash devices` and `zflash doctor` can list devices without
opening a transport. Nothing here knows a protocol beyond the id table's names for interface
class triples.

libusb-1.0 is looked for in this order: the file named by `ZFLASH_LIBUSB` (a user's override,
also how a test simulates a machine without libusb), the system's library (the distribution
keeps it patched and built with udev support), then the copy bundled in the `libusb-package`
wheel (a fresh machine with nothing installed still works, as in pyOCD). pyusb keeps the first
library it loads for the life of the process, so the choice is made once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import usb.backend
import usb.backend.libusb1
import usb.core
import usb.util

from zflash.errors import Code, ZflashError
from zflash.usb.ids import (IdTable, InterfaceClass, UsbId, VendorInterface,
                            load_id_table)

BACKEND_HOOK_ENV = "ZFLASH_USB_BACKEND"
LIBUSB_ENV = "ZFLASH_LIBUSB"
UDEV_HINT = ("install the udev rules: `zflash udev-rules --install`, then "
             "`sudo udevadm control --reload-rules && sudo udevadm trigger` and replug "
             "(`zflash doctor` checks the set-up)")
SPEEDS = {1: ("low", "1.5 Mbit/s"), 2: ("full", "12 Mbit/s"), 3: ("high", "480 Mbit/s"),
          4: ("super", "5 Gbit/s"), 5: ("super+", "10 Gbit/s")}
CLASS_VENDOR = 0xFF
SERIAL_MARK = "_SN:"  # Qualcomm EDL puts the serial number in iProduct after this


# --- libusb ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LibusbInfo:
    """Which libusb-1.0 was loaded (or why none was), for errors and `zflash doctor`."""

    path: str | None
    source: str
    version: str | None
    problem: str | None = None


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint16), ("minor", ctypes.c_uint16),
                ("micro", ctypes.c_uint16), ("nano", ctypes.c_uint16),
                ("rc", ctypes.c_char_p), ("describe", ctypes.c_char_p)]


def _candidates() -> Iterator[tuple[str, str | None]]:
    override = os.environ.get(LIBUSB_ENV)
    if override:
        yield f"{LIBUSB_ENV}={override}", override
        return
    yield "system", ctypes.util.find_library("usb-1.0")
    try:
        import libusb_package  # type: ignore[import-not-found]
    except ImportError:
        yield "libusb-package (not installed)", None
        return
    path = libusb_package.get_library_path()
    yield "libusb-package", str(path) if path else None


def _probe(path: str) -> str | None:
    """The library's version when ``path`` loads and is libusb-1.0; None otherwise."""
    try:
        lib = ctypes.CDLL(path)
        lib.libusb_init  # noqa: B018 - the symbol pyusb checks for
    except (OSError, AttributeError):
        return None
    try:
        lib.libusb_get_version.restype = ctypes.POINTER(_Version)
        ver = lib.libusb_get_version().contents
        return f"{ver.major}.{ver.minor}.{ver.micro}.{ver.nano}"
    except (AttributeError, ValueError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def find_libusb() -> tuple[Any, LibusbInfo]:
    """pyusb's libusb-1.0 backend and where it came from; (None, info) when there is none."""
    looked = []
    for source, path in _candidates():
        looked.append(f"{source}: {path or 'not found'}")
        if not path:
            continue
        version = _probe(path)
        if version is None:
            looked[-1] += " (not loadable)"
            continue
        backend = usb.backend.libusb1.get_backend(find_library=lambda _name, p=path: p)
        if backend is not None:
            return backend, LibusbInfo(path, source, version)
        looked[-1] += " (pyusb could not use it)"
    return None, LibusbInfo(None, "none", None, "; ".join(looked))


def resolve_backend(backend: Any = None) -> Any:
    """The pyusb backend to use: the caller's, the `ZFLASH_USB_BACKEND` hook's, or libusb.

    The hook (``module:function``, called with no arguments) lets a test or a demo put an
    emulated bus under a whole `zflash` process. It is called on every open and every
    enumeration, so the function should return the same backend object each time.
    """
    if backend is not None:
        return backend
    hook = os.environ.get(BACKEND_HOOK_ENV)
    if hook:
        module, _, name = hook.partition(":")
        try:
            return getattr(importlib.import_module(module), name or "backend")()
        except Exception as exc:  # noqa: BLE001 - a bad hook is a usage error, not a crash
            raise ZflashError(Code.USAGE, f"{BACKEND_HOOK_ENV}={hook}: {exc}") from None
    found, info = find_libusb()
    if found is None:
        raise ZflashError(Code.LIBUSB_MISSING, f"looked for libusb-1.0 in: {info.problem}")
    return found


# --- enumeration ------------------------------------------------------------------------------

@dataclass
class UsbDeviceInfo:
    """One USB device in download mode, as `zflash devices` shows it."""

    vid: int
    pid: int
    protocol: str
    interface: int
    configuration: int
    port_path: str | None
    bus: int | None
    address: int | None
    speed: str | None
    serial: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    accessible: bool = True
    problem: str | None = None

    @property
    def url(self) -> str:
        """The URL that names exactly this device (by serial when known, else by port)."""
        if self.serial:
            return f"usb://{self.vid:04x}:{self.pid:04x}?serial={self.serial}"
        if self.port_path:
            return f"usb://{self.port_path}"
        return f"usb://{self.vid:04x}:{self.pid:04x}"

    @property
    def node(self) -> str | None:
        """The Linux device node (what the udev rules grant access to)."""
        if self.bus is None or self.address is None:
            return None
        return f"/dev/bus/usb/{self.bus:03d}/{self.address:03d}"

    def summary(self) -> str:
        parts = [f"{self.vid:04x}:{self.pid:04x}", f"serial={self.serial or '?'}",
                 f"port={self.port_path or '?'}", self.protocol, self.speed or "unknown speed"]
        if not self.accessible:
            parts.append("(permission denied)")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"transport": "usb", "vid": f"{self.vid:04x}", "pid": f"{self.pid:04x}",
                "serial": self.serial, "port_path": self.port_path, "protocol": self.protocol,
                "speed": self.speed, "bus": self.bus, "address": self.address,
                "interface": self.interface, "manufacturer": self.manufacturer,
                "product": self.product, "accessible": self.accessible,
                "problem": self.problem, "url": self.url, "node": self.node}


@dataclass
class Candidate:
    """A matched device: what is shown, and pyusb's handle on it for opening."""

    info: UsbDeviceInfo
    device: Any


def _speed(dev: Any) -> str | None:
    name = SPEEDS.get(getattr(dev, "speed", None) or 0)
    return f"{name[0]} ({name[1]})" if name else None


def _port_path(dev: Any) -> str | None:
    ports = getattr(dev, "port_numbers", None)
    if dev.bus is None or not ports:
        return None
    return f"{dev.bus}-{'.'.join(str(p) for p in ports)}"


def _has_bulk_pair(intf: Any) -> bool:
    kinds = {(usb.util.endpoint_direction(ep.bEndpointAddress),
              usb.util.endpoint_type(ep.bmAttributes)) for ep in intf}
    return {(usb.util.ENDPOINT_IN, usb.util.ENDPOINT_TYPE_BULK),
            (usb.util.ENDPOINT_OUT, usb.util.ENDPOINT_TYPE_BULK)} <= kinds


def _pick_interface(dev: Any, table: IdTable,
                    listed: UsbId | None) -> tuple[str, int, int] | None:
    """(protocol, interface number, configuration value) of the interface to claim."""
    fallback = None
    for cfg in dev:
        for intf in cfg:
            if intf.bAlternateSetting != 0:
                continue
            triple = (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol)
            known: InterfaceClass | VendorInterface | None = table.interface(*triple) \
                or table.vendor_interface(dev.idVendor, *triple)
            if known and (listed is None or listed.protocol in (None, known.name)):
                return known.name, intf.bInterfaceNumber, cfg.bConfigurationValue
            if listed and fallback is None and _has_bulk_pair(intf) \
                    and intf.bInterfaceClass == CLASS_VENDOR:
                fallback = (listed.protocol or "zdl", intf.bInterfaceNumber,
                            cfg.bConfigurationValue)
    return fallback


def _read_strings(info: UsbDeviceInfo, dev: Any) -> None:
    """Serial, manufacturer and product: reading them opens the device, which may be denied."""
    try:
        langids = usb.util.get_langids(dev)  # raises on EACCES (pyusb's property would not)
        if langids:
            def text(index: int) -> str | None:
                return usb.util.get_string(dev, index, langids[0]) if index else None
            info.serial = text(dev.iSerialNumber)
            info.manufacturer = text(dev.iManufacturer)
            info.product = text(dev.iProduct)
            if not info.serial and info.product and SERIAL_MARK in info.product:
                # EDL (REFERENCE-EDL 1): no serial string; iProduct ends "_SN:5A1EE025"
                info.serial = info.product.split(SERIAL_MARK, 1)[1].split("_", 1)[0] or None
    except usb.core.USBError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            info.accessible = False
            info.problem = f"permission denied on {info.node or 'the device node'}"
        else:
            info.problem = f"cannot read strings: {exc.strerror or exc}"
    except (ValueError, NotImplementedError) as exc:
        info.problem = f"cannot read strings: {exc}"
    finally:
        try:
            usb.util.dispose_resources(dev)
        except usb.core.USBError:
            pass


def enumerate_devices(backend: Any = None, table: IdTable | None = None) -> list[Candidate]:
    """Every USB device that matches the id table or offers a known interface class."""
    backend = resolve_backend(backend)
    table = table or load_id_table()
    found: list[Candidate] = []
    try:
        devices = list(usb.core.find(find_all=True, backend=backend))
    except usb.core.USBError as exc:
        raise ZflashError(Code.LINK_LOST, f"cannot enumerate USB devices: {exc}") from None
    for dev in devices:
        try:
            listed = table.usb_id(dev.idVendor, dev.idProduct)
            picked = _pick_interface(dev, table, listed)
        except usb.core.USBError:
            continue  # vanished while being looked at, or unreadable descriptors
        if picked is None:
            continue
        protocol, number, config = picked
        info = UsbDeviceInfo(dev.idVendor, dev.idProduct, protocol, number, config,
                             _port_path(dev), dev.bus, dev.address, _speed(dev))
        _read_strings(info, dev)
        found.append(Candidate(info, dev))
    return found


# --- choosing one -----------------------------------------------------------------------------

@dataclass(frozen=True)
class UsbTarget:
    """What a `usb://` URL asks for; every field None means "the only device there is"."""

    vid: int | None = None
    pid: int | None = None
    serial: str | None = None
    port_path: str | None = None

    def describe(self) -> str:
        parts = []
        if self.vid is not None:
            parts.append(f"{self.vid:04x}:{self.pid:04x}" if self.pid is not None
                         else f"vendor {self.vid:04x}")
        if self.serial:
            parts.append(f"serial {self.serial}")
        if self.port_path:
            parts.append(f"port {self.port_path}")
        return ", ".join(parts) or "any device"


def _listing(cands: list[Candidate]) -> str:
    return "; ".join(f"{c.info.summary()} -> {c.info.url}" for c in cands)


def select(cands: list[Candidate], target: UsbTarget) -> Candidate:
    """The one candidate ``target`` names; coded errors for none, several, or no permission."""
    def wanted(c: UsbDeviceInfo, check_serial: bool) -> bool:
        return ((target.vid is None or c.vid == target.vid)
                and (target.pid is None or c.pid == target.pid)
                and (target.port_path is None or c.port_path == target.port_path)
                and (not check_serial or target.serial is None or c.serial == target.serial))

    matches = [c for c in cands if wanted(c.info, True)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ZflashError(Code.SEVERAL_DEVICES,
                          f"{len(matches)} USB devices match {target.describe()}: "
                          f"{_listing(matches)}")
    hidden = [c for c in cands if wanted(c.info, False) and not c.info.accessible]
    if hidden:
        raise ZflashError(Code.PERMISSION_DENIED,
                          f"{len(hidden)} matching USB device(s) cannot be opened "
                          f"({_listing(hidden)}); {UDEV_HINT}")
    others = f"; present: {_listing(cands)}" if cands else ""
    raise ZflashError(Code.DEVICE_NOT_FOUND,
                      f"no USB device in download mode matches {target.describe()}{others}")
