"""USB bulk transport on pyusb over libusb-1.0 (ZDL and fastboot interfaces).

One device is chosen (usb_find.py), its download interface claimed, and its bulk IN/OUT
endpoints used as a packet link (``is_stream`` False): each ``write`` is one logical bulk
transfer, each ``read`` returns data from one transfer. The ZLP rule of protocols/zdl.md 2.4
(the same as fastboot's) is followed both ways: a write whose length is a non-zero multiple of
wMaxPacketSize is followed by a zero-length packet, and ZLPs received are skipped.

Every transfer has a timeout. A write that times out is retried (bounded: ``retries`` more
attempts, the count reset by any progress); the attempts share the write timeout, so a device
that stops reading costs ``write_timeout`` seconds, then TIMEOUT. A read never outlives its
caller's timeout. An endpoint stall (EPIPE) is cleared with CLEAR_FEATURE(ENDPOINT_HALT) and
the transfer retried once. A device that vanishes (ENODEV, or EIO as Linux reports an unplug
mid-transfer) is LINK_LOST, so the flasher can resume later; EACCES is PERMISSION_DENIED with
the udev hint; EBUSY (interface claimed elsewhere) is PORT_BUSY.

Throughput, synchronous vs asynchronous. USB 2.0 high-speed bulk tops out at 53.2 MB/s
(13 x 512-byte packets per 125 us microframe); fastboot users see 30-40 MB/s. USB 3.0 reaches
about 440 MB/s with 256 KiB transfers kept in flight (AOSP fastboot). The bus idles only
between two transfers: while one synchronous transfer runs, libusb and the host controller
keep the bus busy on their own. This transport writes up to 1 MiB per transfer (a ZDL frame is
256 KiB by default, up to 1 MiB) and reads into a 1 MiB buffer, so the per-transfer gap (tens
of microseconds of Python, pyusb and usbfs work) is under 0.3% of a 1 MiB transfer at 40 MB/s
(26 ms) and a few percent of one at 440 MB/s (2.4 ms). Queuing several transfers with the
`libusb1` package's asynchronous API would close that last gap, at the cost of a second USB
stack beside pyusb (its own context, event thread and error mapping) that the emulated backend
cannot exercise: python-libusb1 talks to the C library directly, and this machine has no USB
bus, so the async path could not be tested. It is therefore not used; revisit it with a
measurement on real USB 3 hardware, where at most a few percent is at stake. Transfers are also
bounded by Linux's usbfs memory limit (16 MiB by default for all transfers in flight), which
1 MiB transfers stay far below.
"""

from __future__ import annotations

import errno
import time
from array import array
from collections.abc import Callable
from typing import Any

import usb.core
import usb.util

from zflash.errors import Code, ZflashError
from zflash.transport.base import (
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Buffer,
    Transport,
    check_read_args,
)
from zflash.transport.url import DeviceUrl, parse_device_url
from zflash.transport.usb_find import (
    UDEV_HINT,
    Candidate,
    UsbDeviceInfo,
    UsbTarget,
    enumerate_devices,
    resolve_backend,
    select,
)
from zflash.usb.ids import IdTable

MAX_TRANSFER = 1 << 20            # largest single OUT transfer
READ_SIZE = (1 << 20) + 1024      # IN buffer: a whole 1 MiB ZDL frame plus headroom
WRITE_RETRIES = 2                 # extra attempts after a write timeout without progress
OPEN_POLL = 0.2                   # seconds between looks while waiting for a device
_GONE = {errno.ENODEV, errno.EIO, errno.ESHUTDOWN, errno.ENOENT, errno.EPROTO}
_DENIED = {errno.EACCES, errno.EPERM}


def target_from_url(url: DeviceUrl) -> UsbTarget:
    """What a parsed `usb://` URL selects."""
    return UsbTarget(vid=url.vid, pid=url.pid, serial=url.usb_serial, port_path=url.path or None)


class UsbTransport(Transport):
    """A claimed bulk interface of one USB device in download mode."""

    is_stream = False

    def __init__(self, candidate: Candidate, *, write_timeout: float = DEFAULT_WRITE_TIMEOUT,
                 retries: int = WRITE_RETRIES,
                 on_retry: Callable[[str], None] | None = None) -> None:
        self.info: UsbDeviceInfo = candidate.info
        self.protocol = self.info.protocol
        self.description = f"usb {self.info.summary()}"
        self.write_timeout, self.retries, self.on_retry = write_timeout, retries, on_retry
        self._dev = candidate.device
        self._pending = b""
        self._buf = array("B", bytes(READ_SIZE))
        self._closed = False
        try:
            self._claim()
        except BaseException:
            self._release()
            raise

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str | DeviceUrl | UsbTarget, timeout: float = DEFAULT_OPEN_TIMEOUT, *,
             write_timeout: float = DEFAULT_WRITE_TIMEOUT, backend: Any = None,
             ids: IdTable | None = None, retries: int = WRITE_RETRIES,
             on_retry: Callable[[str], None] | None = None) -> UsbTransport:
        """Find, choose and claim the device ``url`` names.

        ``backend`` is a pyusb backend (an emulated bus in tests; default: libusb, or the
        `ZFLASH_USB_BACKEND` hook). A device that is not there yet, or not yet accessible (udev
        applies permissions a moment after it appears), is waited for up to ``timeout`` s.
        """
        if isinstance(url, UsbTarget):
            target = url
        else:
            parsed = url if isinstance(url, DeviceUrl) else parse_device_url(url)
            if parsed.scheme != "usb":
                raise ZflashError(Code.BAD_DEVICE_URL, f"{parsed} is not a usb:// URL")
            target = target_from_url(parsed)
        backend = resolve_backend(backend)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            try:
                chosen = select(enumerate_devices(backend, ids), target)
                return cls(chosen, write_timeout=write_timeout, retries=retries,
                           on_retry=on_retry)
            except ZflashError as exc:
                waitable = exc.code in (Code.DEVICE_NOT_FOUND, Code.PERMISSION_DENIED,
                                        Code.PORT_BUSY, Code.LINK_LOST)
                if not waitable or time.monotonic() + OPEN_POLL > deadline:
                    raise
            time.sleep(OPEN_POLL)

    def _claim(self) -> None:
        dev, info = self._dev, self.info
        try:
            try:
                if dev.is_kernel_driver_active(info.interface):
                    dev.detach_kernel_driver(info.interface)
            except (NotImplementedError, usb.core.USBError):
                pass  # not on this platform, or nothing to detach
            try:
                active = dev.get_active_configuration().bConfigurationValue
            except usb.core.USBError as exc:
                if exc.errno in _DENIED or exc.errno in _GONE:
                    raise
                active = None  # unconfigured
            if active != info.configuration:
                dev.set_configuration(info.configuration)
            usb.util.claim_interface(dev, info.interface)
            intf = dev.get_active_configuration()[(info.interface, 0)]
        except usb.core.USBError as exc:
            raise self._error(exc, "opening") from None
        self._ep_out = usb.util.find_descriptor(intf, custom_match=lambda e: _bulk(e, False))
        self._ep_in = usb.util.find_descriptor(intf, custom_match=lambda e: _bulk(e, True))
        if self._ep_out is None or self._ep_in is None:
            raise ZflashError(Code.PROTOCOL, f"{self.description}: interface "
                                             f"{info.interface} has no bulk IN/OUT pair")
        self.max_packet = self._ep_out.wMaxPacketSize & 0x7FF
        self.max_packet_in = self._ep_in.wMaxPacketSize & 0x7FF
        if not self.max_packet or not self.max_packet_in:
            raise ZflashError(Code.PROTOCOL, f"{self.description}: wMaxPacketSize is 0")

    # -- errors --------------------------------------------------------------------------------
    def _error(self, exc: usb.core.USBError, doing: str) -> ZflashError:
        """The coded error for a USBError that retrying cannot fix."""
        what = f"{self.description}: {doing}: {exc.strerror or exc}"
        if exc.errno in _DENIED:
            node = f" {self.info.node}" if self.info.node else ""
            return ZflashError(Code.PERMISSION_DENIED,
                               f"cannot open USB device{node} ({self.info.summary()}): "
                               f"permission denied; {UDEV_HINT}")
        if exc.errno == errno.EBUSY:
            return ZflashError(Code.PORT_BUSY,
                               f"{what}: another program (fastboot, adb, ModemManager or "
                               f"another zflash) has claimed the interface; stop it")
        if isinstance(exc, usb.core.USBTimeoutError):
            return ZflashError(Code.TIMEOUT, what)
        return ZflashError(Code.LINK_LOST, what)

    def _retry_note(self, text: str) -> None:
        if self.on_retry is not None:
            self.on_retry(text)

    # -- data ----------------------------------------------------------------------------------
    def write(self, data: Buffer) -> None:
        """Send ``data`` as one bulk transfer (split at packet multiples), ZLP if needed."""
        self._check_open()
        view = memoryview(data).cast("B")
        total, sent = len(view), 0
        while sent < total:
            sent += self._send(view[sent:sent + MAX_TRANSFER])
        if total and total % self.max_packet == 0:
            self._send(view[:0])

    def _send(self, piece: memoryview) -> int:
        buf = array("B")
        buf.frombytes(piece)
        attempt_ms = max(1, int(self.write_timeout * 1000 / (self.retries + 1)))
        timeouts, stalled = 0, False
        while True:
            try:
                return int(self._dev.write(self._ep_out, buf, attempt_ms))
            except usb.core.USBTimeoutError as exc:
                timeouts += 1
                if timeouts > self.retries:
                    raise ZflashError(Code.TIMEOUT, f"{self.description}: the device took no "
                                      f"data in {timeouts} attempts of {attempt_ms} ms "
                                      f"({exc.strerror or exc})") from None
                self._retry_note(f"USB write timed out, retry {timeouts}/{self.retries}")
            except usb.core.USBError as exc:
                if exc.errno != errno.EPIPE or stalled:
                    raise self._error(exc, "writing") from None
                stalled = True
                self._clear_halt(self._ep_out, "OUT")

    def read(self, max_bytes: int, timeout: float) -> bytes:
        """Data of one transfer (up to ``max_bytes``; the rest comes next), ZLPs skipped."""
        check_read_args(max_bytes, timeout)
        self._check_open()
        if self._pending:
            out, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
            return out
        deadline = time.monotonic() + timeout
        stalled = False
        while True:
            left_ms = max(1, int((deadline - time.monotonic()) * 1000))
            try:
                count = int(self._dev.read(self._ep_in, self._buf, left_ms))
            except usb.core.USBTimeoutError:
                if time.monotonic() >= deadline:
                    raise ZflashError(Code.TIMEOUT, f"{self.description}: nothing received "
                                                    f"in {timeout:g} s") from None
                continue  # timed out early (e.g. a cancelled transfer): the deadline rules
            except usb.core.USBError as exc:
                if exc.errno != errno.EPIPE or stalled:
                    raise self._error(exc, "reading") from None
                stalled = True
                self._clear_halt(self._ep_in, "IN")
                continue
            if count == 0:  # a ZLP: receivers ignore them
                if time.monotonic() >= deadline:
                    raise ZflashError(Code.TIMEOUT, f"{self.description}: nothing received "
                                                    f"in {timeout:g} s")
                continue
            data = memoryview(self._buf)[:count].tobytes()
            if count > max_bytes:
                data, self._pending = data[:max_bytes], data[max_bytes:]
            return data

    def _clear_halt(self, ep: Any, name: str) -> None:
        self._retry_note(f"USB {name} endpoint stalled; clearing the halt and retrying")
        try:
            self._dev.clear_halt(ep)
        except usb.core.USBError as exc:
            raise self._error(exc, "clearing an endpoint halt") from None

    # -- closing -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ZflashError(Code.LINK_LOST, f"{self.description}: transport closed")

    def _release(self) -> None:
        try:
            usb.util.release_interface(self._dev, self.info.interface)
        except (usb.core.USBError, ValueError):
            pass  # the device is gone, or was never claimed
        try:
            usb.util.dispose_resources(self._dev)
        except usb.core.USBError:
            pass

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()


def _bulk(ep: Any, want_in: bool) -> bool:
    is_in = usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_IN
    return usb.util.endpoint_type(ep.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK \
        and is_in == want_in
