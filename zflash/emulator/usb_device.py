"""An emulated USB device in download mode: descriptors, bulk endpoints, faults, firmware.

Seen from the host through `usb_backend.EmulatedUsbBackend` (pyusb's backend interface).
Each device has one vendor-specific interface (ZDL's or fastboot's class triple) with a bulk
OUT (0x01) and a bulk IN (0x81) endpoint. The device firmware is a *server*: a function called,
in its own thread, with a `UsbDeviceLink` (`read(max_bytes, timeout) -> bytes`, `write(data)`)
every time the device is plugged in, like a bootloader that starts its download loop on
enumeration. The link's reads return >= 1 byte or raise coded TIMEOUT / LINK_LOST.

Bulk data is packetised as on a real bus: a read completes on a short packet, a zero-length
packet, or a full buffer; a transfer whose length is a multiple of wMaxPacketSize does not end
until a ZLP arrives, so a sender that forgets the ZLP rule is caught (its data waits). A host
read buffer that is not a multiple of wMaxPacketSize and cannot hold the next packet overflows.
Device writes add the ZLP themselves, as a device's USB stack would.

Faults: `unplug()` (now, even with transfers blocked), `unplug_after(direction, nbytes)` (in
the middle of the transfer that crosses the mark), `stall(direction)` (halted until
clear_halt), `inject_timeouts(direction, count)` (the next transfers time out at once), and
`deny_access()` (open fails with EACCES, as without udev rules).
"""

from __future__ import annotations

import errno
import itertools
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

from zflash.emulator.link import HostDisconnected
from zflash.errors import Code, ZflashError
from zflash.usb.ids import (EDL_INTERFACE, EMULATED_PID, EMULATED_VID, FASTBOOT_INTERFACE,
                            ZDL_INTERFACE)

EP_OUT, EP_IN = 0x01, 0x81
# libusb error codes, as pyusb's libusb1 backend reports them
(ERR_IO, ERR_INVALID, ERR_ACCESS, ERR_NO_DEVICE, ERR_NOT_FOUND, ERR_BUSY, ERR_TIMEOUT,
 ERR_OVERFLOW, ERR_PIPE) = (-1, -2, -3, -4, -5, -6, -7, -8, -9)
_ERRORS = {ERR_IO: (errno.EIO, "Input/output error"),
           ERR_INVALID: (errno.EINVAL, "Invalid parameter"),
           ERR_ACCESS: (errno.EACCES, "Access denied (insufficient permissions)"),
           ERR_NO_DEVICE: (errno.ENODEV, "No such device (it may have been disconnected)"),
           ERR_NOT_FOUND: (errno.ENOENT, "Entity not found"),
           ERR_BUSY: (errno.EBUSY, "Resource busy"),
           ERR_OVERFLOW: (errno.EOVERFLOW, "Overflow"),
           ERR_PIPE: (errno.EPIPE, "Pipe error")}
# speed name -> (libusb speed, wMaxPacketSize of a bulk endpoint, bcdUSB, bMaxPacketSize0)
SPEEDS = {"full": (2, 64, 0x0200, 64), "high": (3, 512, 0x0200, 64),
          "super": (4, 1024, 0x0300, 9)}
INTERFACES = {"zdl": ZDL_INTERFACE, "fastboot": FASTBOOT_INTERFACE, "edl": EDL_INTERFACE}
PIPE_CAPACITY = 16 << 20

Server = Callable[["UsbDeviceLink"], object]


def usb_error(code: int) -> usb.core.USBError:
    """The USBError pyusb's libusb1 backend would raise for libusb error ``code``."""
    err, text = _ERRORS[code]
    return usb.core.USBError(text, code, err)


def usb_timeout() -> usb.core.USBTimeoutError:
    return usb.core.USBTimeoutError("Operation timed out", ERR_TIMEOUT, errno.ETIMEDOUT)


class Gone(Exception):
    """The session ended (unplugged) while a transfer waited."""


class Expired(Exception):
    """The transfer's deadline passed with no data."""


def deadline_after(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else time.monotonic() + timeout_s


class _Pipe:
    """One bulk endpoint's traffic: whole transfers queued as segments, packetised on read."""

    def __init__(self, session: Session, mps: int) -> None:
        self.session, self.mps = session, mps
        self.segments: deque[list[Any]] = deque()  # [data, offset]
        self.queued = 0

    def _wait(self, deadline: float | None) -> None:
        cond = self.session.cond
        if self.session.dead:
            raise Gone
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise Expired
        cond.wait(remaining)
        if self.session.dead:
            raise Gone

    def put(self, data: bytes, deadline: float | None) -> None:
        """Queue one transfer (caller holds the lock); waits while the far side is behind."""
        while self.queued and self.queued + len(data) > PIPE_CAPACITY:
            self._wait(deadline)
        self.segments.append([data, 0])
        self.queued += len(data)
        self.session.cond.notify_all()

    def take(self, space: int, deadline: float | None, host: bool) -> list[memoryview]:
        """The pieces one bulk read of ``space`` bytes gets (none: a lone ZLP), uncopied."""
        parts: list[memoryview] = []
        n, mps = 0, self.mps
        while True:
            if not self.segments:
                try:
                    self._wait(deadline)
                except Expired:
                    if n:
                        return parts  # libusb: timed out with a partial transfer
                    raise
                continue
            seg = self.segments[0]
            data, off = seg
            rest = len(data) - off
            if rest == 0:
                self.segments.popleft()
                self.session.cond.notify_all()
                return parts  # a ZLP ends the transfer
            if rest <= space - n:
                parts.append(memoryview(data)[off:])
                n += rest
                self.segments.popleft()
                self.queued -= rest
                self.session.cond.notify_all()
                if len(data) % mps or n == space:
                    return parts  # short packet, or buffer full
                continue
            k = ((space - n) // mps) * mps if host else space - n
            if k == 0:
                raise usb_error(ERR_OVERFLOW)
            parts.append(memoryview(data)[off:off + k])
            seg[1] += k
            self.queued -= k
            self.session.cond.notify_all()
            return parts


class Session:
    """One plug-in of a device: its address, pipes, halts, claims. Unplug ends it for good."""

    def __init__(self, device: EmulatedUsbDevice, address: int) -> None:
        self.device, self.address = device, address
        self.cond = threading.Condition()
        self.dead = False
        self.configuration = 1  # Linux configures a device on enumeration
        self.halted: set[int] = set()
        self.claimed: dict[int, Handle] = {}
        self.out = _Pipe(self, device.max_packet)
        self.inp = _Pipe(self, device.max_packet)
        self.link = UsbDeviceLink(self)
        self.served = False  # a server thread was started for this session

    def end(self) -> None:
        with self.cond:
            self.dead = True
            self.cond.notify_all()


@dataclass
class Handle:
    session: Session
    closed: bool = False


@dataclass
class UsbStats:
    """What crossed the bus, so tests can check the ZLP rule, retries and halts."""

    out_transfers: int = 0
    out_bytes: int = 0
    out_zlps: int = 0
    in_transfers: int = 0
    in_bytes: int = 0
    in_zlps: int = 0
    clear_halts: int = 0
    stalls_hit: int = 0
    timeouts_injected: int = 0
    opens: int = 0
    opens_denied: int = 0


@dataclass
class _Faults:
    deny_open: bool = False
    timeouts: dict[str, int] = field(default_factory=lambda: {"in": 0, "out": 0})
    unplug_after: dict[str, int | None] = field(default_factory=lambda: {"in": None, "out": None})


class UsbDeviceLink:
    """The device side of the bulk endpoints: what the device's server loop reads and writes."""

    def __init__(self, session: Session) -> None:
        self._s = session

    @property
    def alive(self) -> bool:
        return not self._s.dead

    @property
    def description(self) -> str:
        device = self._s.device
        return f"emulated usb {device.serial} at {device.port_path}"

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Data of one host transfer (>= 1 byte, at most ``max_bytes``); ZLPs are skipped."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        deadline = deadline_after(timeout)
        with self._s.cond:
            while True:
                try:
                    parts = self._s.out.take(max_bytes, deadline, host=False)
                except Gone:
                    raise HostDisconnected("USB device unplugged") from None
                except Expired:
                    raise ZflashError(Code.TIMEOUT, "no data from the host") from None
                if len(parts) == 1 and len(parts[0]) == len(parts[0].obj):
                    return parts[0].obj  # a whole transfer: handed over without a copy
                if parts:
                    return b"".join(parts)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue one IN transfer, with the ZLP the USB rule asks for."""
        payload = bytes(data)
        with self._s.cond:
            try:
                self._s.inp.put(payload, None)
                if payload and len(payload) % self._s.device.max_packet == 0:
                    self._s.inp.put(b"", None)
            except Gone:
                raise HostDisconnected("USB device unplugged") from None

    def close(self) -> None:
        """The firmware leaves download mode: the device drops off the bus."""
        self._s.device.unplug()


class EmulatedUsbDevice:
    """One emulated device in download mode: descriptors, one bulk interface, faults, server."""

    def __init__(self, serial: str, port_path: str = "1-1", *, protocol: str = "zdl",
                 speed: str = "high", vid: int = EMULATED_VID, pid: int = EMULATED_PID,
                 manufacturer: str = "zflash", product: str = "zflash emulated device",
                 server: Server | None = None, plugged: bool = True) -> None:
        if protocol not in INTERFACES or speed not in SPEEDS:
            raise ValueError(f"protocol {protocol!r} / speed {speed!r} not emulated")
        bus, _, ports = port_path.partition("-")
        self.bus, self.ports = int(bus), tuple(int(p) for p in ports.split(".") if p)
        self.serial, self.port_path, self.protocol, self.speed = serial, port_path, protocol, speed
        self.vid, self.pid = vid, pid
        self.strings = {1: manufacturer, 2: product, 3: serial,
                        4: "ZDL" if protocol == "zdl" else "fastboot"}
        self.max_packet = SPEEDS[speed][1]
        self.stats = UsbStats()
        self.faults = _Faults()
        self.server_errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self._server = server
        self._lock = threading.Lock()
        self._addresses = itertools.count(2)
        self._session: Session | None = None
        if plugged:
            self.plug()

    # -- presence and the firmware ------------------------------------------------------------
    @property
    def present(self) -> bool:
        return self._session is not None and not self._session.dead

    @property
    def link(self) -> UsbDeviceLink:
        """The current session's device-side link (for a server run by hand)."""
        if not self.present:
            raise ZflashError(Code.LINK_LOST, "USB device not plugged in")
        assert self._session is not None
        return self._session.link

    def attach(self, server: Server) -> None:
        """Run ``server(link)`` on every plug-in, and now if plugged with no server running.

        A server that returns (or raises) ends this session's firmware; the device stays on
        the bus, silent, until unplugged, like a bootloader that crashed.
        """
        self._server = server
        session = self._session
        if session is not None and not session.dead and not session.served:
            self._start(session)

    def plug(self) -> None:
        """Connect: a new address, empty endpoints, and a fresh server thread."""
        with self._lock:
            if self.present:
                return
            self._session = Session(self, next(self._addresses))
            session = self._session
        if self._server is not None:
            self._start(session)

    def unplug(self) -> None:
        """Vanish from the bus now: every transfer, waiting or future, fails with ENODEV."""
        with self._lock:
            session = self._session
        if session is not None:
            session.end()

    def replug(self) -> None:
        self.unplug()
        self.plug()

    def _start(self, session: Session) -> None:
        session.served = True
        thread = threading.Thread(target=self._run, args=(session.link,), daemon=True,
                                  name=f"usb-emu-{self.serial}")
        self.threads.append(thread)
        thread.start()

    def _run(self, link: UsbDeviceLink) -> None:
        assert self._server is not None
        try:
            self._server(link)
        except ZflashError as exc:
            if exc.code not in (Code.LINK_LOST, Code.TIMEOUT) or link.alive:
                self.server_errors.append(exc)
        except BaseException as exc:  # noqa: BLE001 - kept for the test to inspect
            self.server_errors.append(exc)

    # -- faults ------------------------------------------------------------------------------
    def stall(self, direction: str) -> None:
        """Halt the endpoint (``"in"`` or ``"out"``) until the host clears the halt."""
        session = self._session
        if session is not None:
            with session.cond:
                session.halted.add(EP_IN if direction == "in" else EP_OUT)

    def inject_timeouts(self, direction: str, count: int) -> None:
        """The next ``count`` transfers on ``direction`` time out (at once, moving no data)."""
        self.faults.timeouts[direction] = count

    def unplug_after(self, direction: str, nbytes: int) -> None:
        """Vanish in the transfer that carries the byte ``nbytes`` (counted from now)."""
        done = self.stats.out_bytes if direction == "out" else self.stats.in_bytes
        self.faults.unplug_after[direction] = done + nbytes

    def deny_access(self, deny: bool = True) -> None:
        """Opening fails with EACCES, as on a Linux box without the udev rules."""
        self.faults.deny_open = deny

    # -- descriptors -------------------------------------------------------------------------
    def device_descriptor(self, session: Session) -> SimpleNamespace:
        speed, _, bcd, mps0 = SPEEDS[self.speed]
        return SimpleNamespace(
            bLength=18, bDescriptorType=1, bcdUSB=bcd, bDeviceClass=0, bDeviceSubClass=0,
            bDeviceProtocol=0, bMaxPacketSize0=mps0, idVendor=self.vid, idProduct=self.pid,
            bcdDevice=0x0100, iManufacturer=1, iProduct=2, iSerialNumber=3,
            bNumConfigurations=1, address=session.address, bus=self.bus,
            port_number=self.ports[-1] if self.ports else None,
            port_numbers=self.ports or None, speed=speed)

    def descriptor_bytes(self, kind: int, index: int, session: Session) -> bytes | None:
        """Raw descriptors for GET_DESCRIPTOR (device, configuration, strings)."""
        if kind == 1:
            d = self.device_descriptor(session)
            return struct.pack("<BBHBBBBHHHBBBB", 18, 1, d.bcdUSB, 0, 0, 0, d.bMaxPacketSize0,
                               self.vid, self.pid, 0x0100, 1, 2, 3, 1)
        if kind == 2 and index == 0:
            iface = INTERFACES[self.protocol]
            return (struct.pack("<BBHBBBBB", 9, 2, 32, 1, 1, 0, 0x80, 250)
                    + bytes([9, 4, 0, 0, 2, iface.cls, iface.subclass, iface.protocol, 4])
                    + struct.pack("<BBBHB", 7, 5, EP_OUT, 2, self.max_packet, 0)
                    + struct.pack("<BBBHB", 7, 5, EP_IN, 2, self.max_packet, 0))
        if kind == 3:
            if index == 0:
                return bytes([4, 3, 0x09, 0x04])
            text = self.strings.get(index)
            if text is not None:
                raw = text.encode("utf-16-le")
                return bytes([2 + len(raw), 3]) + raw
        return None


# --- trivial device servers: tests, the throughput measurement, and the demo bus -----------

def echo_server(link: UsbDeviceLink) -> None:
    """Sends every host transfer straight back (one IN transfer per OUT transfer)."""
    while True:
        link.write(link.read(1 << 21, None))


def sink_server(link: UsbDeviceLink) -> None:
    """Counts what the host sends; on a transfer ``b"?"`` answers the count as 8 bytes."""
    total = 0
    while True:
        data = link.read(1 << 21, None)
        if data == b"?":
            link.write(total.to_bytes(8, "little"))
        else:
            total += len(data)
