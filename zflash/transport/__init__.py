"""Byte transports chosen by device URL (serial, TCP; USB to come). No protocol knowledge.

Importing this package stays cheap: pyserial is imported only when a serial port is opened,
so listing USB devices does not pay for it.
"""

from zflash.transport.base import (
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Transport,
    open_transport,
)
from zflash.transport.url import DEFAULT_BAUD, DeviceUrl, parse_device_url

__all__ = ["DEFAULT_BAUD", "DEFAULT_OPEN_TIMEOUT", "DEFAULT_WRITE_TIMEOUT", "DeviceUrl",
           "Transport", "open_transport", "parse_device_url"]
