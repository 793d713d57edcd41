"""An emulated USB bus behind pyusb's backend interface, so tests run the real pyusb core.

`EmulatedUsbBackend` implements `usb.backend.IBackend` for one or several `EmulatedUsbDevice`s
(`usb_device.py`). `usb.core.find(backend=...)`, descriptors, string descriptors over control
transfers, set_configuration, claim, bulk read/write, timeouts, halts and errors all go through
pyusb's own code, and failures surface as the same `USBError`s (same libusb codes and errno
values) that pyusb's libusb1 backend raises, so the transport cannot tell the difference.
Several backends (buses) can live side by side; nothing here is global.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import usb.backend

from zflash.emulator.usb_device import (
    EP_IN,
    EP_OUT,
    ERR_ACCESS,
    ERR_BUSY,
    ERR_INVALID,
    ERR_NO_DEVICE,
    ERR_NOT_FOUND,
    ERR_PIPE,
    INTERFACES,
    EmulatedUsbDevice,
    Expired,
    Gone,
    Handle,
    Session,
    UsbDeviceLink,
    deadline_after,
    echo_server,
    sink_server,
    usb_error,
    usb_timeout,
)

__all__ = ["EmulatedUsbBackend", "EmulatedUsbDevice", "UsbDeviceLink", "demo_backend",
           "echo_server", "sink_server"]


class EmulatedUsbBackend(usb.backend.IBackend):
    """pyusb backend presenting emulated devices; pass it as ``backend=`` to pyusb or zflash."""

    def __init__(self, devices: Iterable[EmulatedUsbDevice] = ()) -> None:
        super().__init__()
        self.devices: list[EmulatedUsbDevice] = []
        self._bus_lock = threading.Lock()  # hotplug from another thread while a host scans
        for device in devices:
            self.add(device)

    def add(self, device: EmulatedUsbDevice) -> EmulatedUsbDevice:
        with self._bus_lock:
            if device not in self.devices:
                self.devices.append(device)
        return device

    def remove(self, device: EmulatedUsbDevice) -> None:
        device.unplug()
        with self._bus_lock:
            if device in self.devices:
                self.devices.remove(device)

    # -- hotplug at run time (tests, `zflash emulate --devices N`) ----------------------------
    def plug(self, device: EmulatedUsbDevice) -> EmulatedUsbDevice:
        """Put ``device`` on the bus now (again, after ``unplug``): it enumerates with a new
        address and its firmware starts afresh, as when a cable is plugged into a hub."""
        self.add(device)
        device.plug()
        return device

    def unplug(self, serial_or_port_path: str) -> EmulatedUsbDevice:
        """Pull the device with this serial number or port path off the bus now (transfers in
        progress fail with ENODEV). It stays known to the bus, so ``plug`` brings it back."""
        with self._bus_lock:
            found = [d for d in self.devices
                     if serial_or_port_path in (d.serial, d.port_path) and d.present]
        if not found:
            raise KeyError(f"no plugged-in emulated USB device {serial_or_port_path!r}")
        for device in found:
            device.unplug()
        return found[0]

    def shutdown(self) -> None:
        """Unplug everything, which ends every server thread."""
        with self._bus_lock:
            devices = list(self.devices)
        for device in devices:
            device.unplug()
        for device in devices:
            for thread in device.threads:
                thread.join(timeout=5)

    # -- enumeration and descriptors -------------------------------------------------------
    def enumerate_devices(self) -> list[Session]:
        with self._bus_lock:
            devices = list(self.devices)
        sessions = [d._session for d in devices]
        return [s for s in sessions if s is not None and not s.dead]

    def get_parent(self, dev: Session) -> None:
        return None

    def get_device_descriptor(self, dev: Session) -> SimpleNamespace:
        return dev.device.device_descriptor(dev)

    def get_configuration_descriptor(self, dev: Session, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError("configuration index out of range")
        return SimpleNamespace(bLength=9, bDescriptorType=2, wTotalLength=32, bNumInterfaces=1,
                               bConfigurationValue=1, iConfiguration=0, bmAttributes=0x80,
                               bMaxPower=250, extra_descriptors=[])

    def get_interface_descriptor(self, dev: Session, intf: int, alt: int,
                                 config: int) -> SimpleNamespace:
        if (intf, alt, config) != (0, 0, 0):
            raise IndexError("interface index out of range")
        iface = INTERFACES[dev.device.protocol]
        return SimpleNamespace(bLength=9, bDescriptorType=4, bInterfaceNumber=0,
                               bAlternateSetting=0, bNumEndpoints=2, bInterfaceClass=iface.cls,
                               bInterfaceSubClass=iface.subclass,
                               bInterfaceProtocol=iface.protocol, iInterface=4,
                               extra_descriptors=[])

    def get_endpoint_descriptor(self, dev: Session, ep: int, intf: int, alt: int,
                                config: int) -> SimpleNamespace:
        if (intf, alt, config) != (0, 0, 0) or ep not in (0, 1):
            raise IndexError("endpoint index out of range")
        return SimpleNamespace(bLength=7, bDescriptorType=5,
                               bEndpointAddress=(EP_OUT, EP_IN)[ep], bmAttributes=2,
                               wMaxPacketSize=dev.device.max_packet, bInterval=0, bRefresh=0,
                               bSynchAddress=0, extra_descriptors=[])

    # -- handles ------------------------------------------------------------------------------
    def open_device(self, dev: Session) -> Handle:
        device = dev.device
        if dev.dead:
            raise usb_error(ERR_NO_DEVICE)
        if device.faults.deny_open:
            device.stats.opens_denied += 1
            raise usb_error(ERR_ACCESS)
        device.stats.opens += 1
        return Handle(dev)

    def close_device(self, dev_handle: Handle) -> None:
        session = dev_handle.session
        with session.cond:
            for number in [n for n, h in session.claimed.items() if h is dev_handle]:
                del session.claimed[number]
        dev_handle.closed = True

    def _live(self, handle: Handle) -> Session:
        if handle.session.dead:
            raise usb_error(ERR_NO_DEVICE)
        if handle.closed:
            raise usb_error(ERR_INVALID)
        return handle.session

    def set_configuration(self, dev_handle: Handle, config_value: int) -> None:
        session = self._live(dev_handle)
        if config_value not in (0, 1):
            raise usb_error(ERR_NOT_FOUND)
        with session.cond:
            session.configuration = config_value
            session.halted.clear()

    def get_configuration(self, dev_handle: Handle) -> int:
        return self._live(dev_handle).configuration

    def set_interface_altsetting(self, dev_handle: Handle, intf: int, altsetting: int) -> None:
        self._live(dev_handle)
        if (intf, altsetting) != (0, 0):
            raise usb_error(ERR_NOT_FOUND)

    def claim_interface(self, dev_handle: Handle, intf: int) -> None:
        session = self._live(dev_handle)
        if intf != 0 or session.configuration != 1:
            raise usb_error(ERR_NOT_FOUND)
        with session.cond:
            holder = session.claimed.get(intf)
            if holder is not None and holder is not dev_handle:
                raise usb_error(ERR_BUSY)
            session.claimed[intf] = dev_handle

    def release_interface(self, dev_handle: Handle, intf: int) -> None:
        session = self._live(dev_handle)
        with session.cond:
            if session.claimed.get(intf) is dev_handle:
                del session.claimed[intf]

    def is_kernel_driver_active(self, dev_handle: Handle, intf: int) -> bool:
        self._live(dev_handle)
        return False

    def detach_kernel_driver(self, dev_handle: Handle, intf: int) -> None:
        raise usb_error(ERR_NOT_FOUND)

    def attach_kernel_driver(self, dev_handle: Handle, intf: int) -> None:
        raise usb_error(ERR_NOT_FOUND)

    def reset_device(self, dev_handle: Handle) -> None:
        session = self._live(dev_handle)
        with session.cond:
            session.halted.clear()

    def clear_halt(self, dev_handle: Handle, ep: int) -> None:
        session = self._live(dev_handle)
        with session.cond:
            session.halted.discard(ep)
            session.device.stats.clear_halts += 1

    # -- transfers ----------------------------------------------------------------------------
    def ctrl_transfer(self, dev_handle: Handle, bmRequestType: int, bRequest: int,
                      wValue: int, wIndex: int, data: Any, timeout: int) -> int:
        session = self._live(dev_handle)
        if bmRequestType & 0x80 and bRequest == 0x06:  # GET_DESCRIPTOR
            desc = session.device.descriptor_bytes(wValue >> 8, wValue & 0xFF, session)
            if desc is None:
                raise usb_error(ERR_PIPE)
            count = min(len(desc), len(data))
            memoryview(data).cast("B")[:count] = desc[:count]
            return count
        if bmRequestType & 0x80 and bRequest == 0x08:  # GET_CONFIGURATION
            memoryview(data).cast("B")[:1] = bytes([session.configuration])
            return 1
        if bmRequestType & 0x80 and bRequest == 0x00:  # GET_STATUS
            count = min(2, len(data))
            memoryview(data).cast("B")[:count] = bytes(count)
            return count
        raise usb_error(ERR_PIPE)  # the control endpoint stalls on anything else

    def _check(self, dev_handle: Handle, ep: int, want: int, intf: int,
               direction: str) -> Session:
        session = self._live(dev_handle)
        if ep != want:
            raise usb_error(ERR_INVALID)
        if session.claimed.get(intf) is not dev_handle:
            raise usb_error(ERR_NOT_FOUND)
        if ep in session.halted:
            session.device.stats.stalls_hit += 1
            raise usb_error(ERR_PIPE)
        faults = session.device.faults
        if faults.timeouts[direction] > 0:
            faults.timeouts[direction] -= 1
            session.device.stats.timeouts_injected += 1
            raise usb_timeout()
        return session

    def bulk_write(self, dev_handle: Handle, ep: int, intf: int, data: Any,
                   timeout: int) -> int:
        session = self._live(dev_handle)
        with session.cond:
            session = self._check(dev_handle, ep, EP_OUT, intf, "out")
            device, payload = session.device, memoryview(data).cast("B").tobytes()
            limit = device.faults.unplug_after["out"]
            if limit is not None and device.stats.out_bytes + len(payload) >= limit:
                cut = max(0, limit - device.stats.out_bytes)
                if cut:
                    session.out.put(payload[:cut], None)
                device.stats.out_bytes += cut
                device.faults.unplug_after["out"] = None
                session.dead = True
                session.cond.notify_all()
                raise usb_error(ERR_NO_DEVICE)
            try:
                session.out.put(payload, deadline_after(timeout / 1000 if timeout else None))
            except Gone:
                raise usb_error(ERR_NO_DEVICE) from None
            except Expired:
                raise usb_timeout() from None
            device.stats.out_transfers += 1
            device.stats.out_bytes += len(payload)
            device.stats.out_zlps += not payload
            return len(payload)

    def bulk_read(self, dev_handle: Handle, ep: int, intf: int, buff: Any,
                  timeout: int) -> int:
        session = self._live(dev_handle)
        with session.cond:
            session = self._check(dev_handle, ep, EP_IN, intf, "in")
            device = session.device
            try:
                out = memoryview(buff).cast("B")
                count = 0
                for part in session.inp.take(len(out), deadline_after(
                        timeout / 1000 if timeout else None), True):
                    out[count:count + len(part)] = part
                    count += len(part)
            except Gone:
                raise usb_error(ERR_NO_DEVICE) from None
            except Expired:
                raise usb_timeout() from None
            limit = device.faults.unplug_after["in"]
            if limit is not None and device.stats.in_bytes + count >= limit:
                device.faults.unplug_after["in"] = None
                session.dead = True
                session.cond.notify_all()
                raise usb_error(ERR_NO_DEVICE)
            device.stats.in_transfers += 1
            device.stats.in_bytes += count
            device.stats.in_zlps += not count
            return count


@functools.lru_cache(maxsize=1)
def demo_backend() -> EmulatedUsbBackend:
    """Three echoing devices (two ZDL, one fastboot), for demos and CLI tests:
    ``ZFLASH_USB_BACKEND=zflash.emulator.usb_backend:demo_backend zflash devices``."""
    return EmulatedUsbBackend([
        EmulatedUsbDevice("ZEMU0001", "1-1", server=echo_server),
        EmulatedUsbDevice("ZEMU0002", "1-2.3", speed="super", server=echo_server),
        EmulatedUsbDevice("ZEMU0003", "2-4", protocol="fastboot", server=echo_server),
    ])
