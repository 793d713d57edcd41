"""Opening a transport by device URL: the scheme picks the class.

Kept apart from ``base`` because it imports every concrete transport (lazily, so a command
pays only for the one it uses), and each of those imports ``base``.
"""

from __future__ import annotations

from zflash.errors import Code, ZflashError
from zflash.transport.base import DEFAULT_OPEN_TIMEOUT, DEFAULT_WRITE_TIMEOUT, Transport
from zflash.transport.url import DeviceUrl, parse_device_url


def open_transport(url: str | DeviceUrl, timeout: float = DEFAULT_OPEN_TIMEOUT, *,
                   write_timeout: float = DEFAULT_WRITE_TIMEOUT) -> Transport:
    """Open the transport that ``url``'s scheme names.

    ``timeout`` bounds opening/connecting; ``write_timeout`` bounds how long a write may make
    no progress. ``fastboot+tcp://`` opens a plain TCP byte stream: fastboot's TCP framing
    belongs to the fastboot layer above.
    """
    parsed = url if isinstance(url, DeviceUrl) else parse_device_url(url)
    if parsed.scheme == "rfc2217":  # zflash's own client: pyserial's moves 0.3 MiB/s
        from zflash.transport.rfc2217 import Rfc2217Transport
        return Rfc2217Transport.open(parsed, timeout=timeout, write_timeout=write_timeout)
    if parsed.scheme in ("serial", "edl+serial") or parsed.is_passthrough:
        from zflash.transport.serial import SerialTransport
        return SerialTransport.open(parsed, timeout=timeout, write_timeout=write_timeout)
    if parsed.scheme in ("tcp", "fastboot+tcp"):
        from zflash.transport.tcp import TcpTransport
        return TcpTransport.open(parsed, timeout=timeout, write_timeout=write_timeout)
    if parsed.scheme == "usb":
        from zflash.transport.usb import UsbTransport
        return UsbTransport.open(parsed, timeout=timeout, write_timeout=write_timeout)
    raise ZflashError(Code.BAD_DEVICE_URL, f"no transport for {parsed.scheme}://")
