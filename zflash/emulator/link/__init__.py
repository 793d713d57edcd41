"""The device side of the emulator's links: a pty, a TCP listener, and link shaping/faults.

Every device-side connection has the interface the emulated USB bus already gives its
firmware (``usb_backend.UsbDeviceLink``), so one server loop serves all three links:

    read(max_bytes, timeout=None) -> bytes   # >= 1 byte; ZflashError(TIMEOUT) when none came;
                                             # HostDisconnected (a LINK_LOST) when the host left
    write(data) -> None                      # all of it; HostDisconnected when the host left
    close() -> None                          # the device drops the link (a pulled cable)
    alive -> bool

Listeners (`PtyLink`, `TcpListener`) hand out one connection per host session through
``accept(timeout) -> connection | None``. `ShapedLink` and `FaultyLink` wrap a connection and
are generic: they move bytes and know no protocol.

This package imports nothing from ``zflash.transport`` (the emulator is the other end of the
wire, and the import direction is emulator -> protocol only).

Modules, one job each: ``base`` (the contract, `HostDisconnected`, the shared deadline and poll
helpers), ``pty`` (`PtyLink`, `PtyConnection`), ``tcp`` (`TcpListener`, `TcpConnection`),
``shaping`` (`ShapedLink`) and ``faults`` (`FaultyLink`).
"""

from zflash.emulator.link.base import (
    DEFAULT_WRITE_TIMEOUT,
    Buffer,
    DeviceConnection,
    HostDisconnected,
)
from zflash.emulator.link.faults import Direction, FaultyLink
from zflash.emulator.link.pty import PtyConnection, PtyLink
from zflash.emulator.link.shaping import ShapedLink
from zflash.emulator.link.tcp import TcpConnection, TcpListener

__all__ = [
    "DEFAULT_WRITE_TIMEOUT",
    "Buffer",
    "DeviceConnection",
    "Direction",
    "FaultyLink",
    "HostDisconnected",
    "PtyConnection",
    "PtyLink",
    "ShapedLink",
    "TcpConnection",
    "TcpListener",
]
