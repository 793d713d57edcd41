"""Android fastboot, sans-IO: host and device engines, lenient value parsing, TCP framing.

Facts come from AOSP's fastboot README (see ../../../REFERENCE.md). The engines follow the
h11 model: the caller feeds received packets in and gets events out, and asks the engine for
the bytes to send; no sockets, threads, sleeps or clocks here, so the same code runs over
USB, TCP or an in-memory pipe in tests. Timeouts belong to the I/O driver.
"""

from typing import TYPE_CHECKING

from zflash import lazy_getattr
from zflash.protocol.fastboot.constants import (
    DEFAULT_TCP_PORT,
    MAX_COMMAND,
    MAX_RESPONSE,
    RESPONSE_TIMEOUT,
    SHORT_COMMAND,
)
from zflash.protocol.fastboot.events import DataRequest, Fail, Info, Okay, Text, UploadData
from zflash.protocol.fastboot.host import HostEngine, HostState
from zflash.protocol.fastboot.tcp import TcpFraming, message_header

if TYPE_CHECKING:
    from zflash.protocol.fastboot.device import DeviceEngine, DeviceState
    from zflash.protocol.fastboot.device_events import (Command, DownloadData, DownloadDone,
                                                        Malformed)

#: names imported on first use: a host (every `zflash fastboot`, which imports ``constants``
#: and so this package) never loads the device engine or its events
__getattr__ = lazy_getattr(__name__, {
    **dict.fromkeys(("DeviceEngine", "DeviceState"), "zflash.protocol.fastboot.device"),
    **dict.fromkeys(("Command", "DownloadData", "DownloadDone", "Malformed"),
                    "zflash.protocol.fastboot.device_events")})

__all__ = [
    "DEFAULT_TCP_PORT",
    "MAX_COMMAND",
    "MAX_RESPONSE",
    "RESPONSE_TIMEOUT",
    "SHORT_COMMAND",
    "Command",
    "DataRequest",
    "DeviceEngine",
    "DeviceState",
    "DownloadData",
    "DownloadDone",
    "Fail",
    "HostEngine",
    "HostState",
    "Info",
    "Malformed",
    "Okay",
    "TcpFraming",
    "Text",
    "UploadData",
    "message_header",
]
