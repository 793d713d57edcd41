"""Byte transports chosen by device URL (serial, TCP, USB bulk). No protocol knowledge.

Importing this package stays cheap: pyserial and pyusb are imported only when a port or device
is opened, so a command pays only for the transport it uses.
"""

from zflash.transport.base import (
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Transport,
)
from zflash.transport.open import open_transport
from zflash.transport.url import DEFAULT_BAUD, DeviceUrl, parse_device_url

__all__ = ["DEFAULT_BAUD", "DEFAULT_OPEN_TIMEOUT", "DEFAULT_WRITE_TIMEOUT", "DeviceUrl",
           "Transport", "open_transport", "parse_device_url"]
