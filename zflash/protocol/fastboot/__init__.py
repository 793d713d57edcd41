"""Android fastboot, sans-IO: host and device engines, lenient value parsing, TCP framing.

Facts come from AOSP's fastboot README (see ../../../REFERENCE.md). The engines follow the
h11 model: the caller feeds received packets in and gets events out, and asks the engine for
the bytes to send; no sockets, threads, sleeps or clocks here, so the same code runs over
USB, TCP or an in-memory pipe in tests. Timeouts belong to the I/O driver.
"""

from zflash.protocol.fastboot.constants import (
    DEFAULT_TCP_PORT,
    MAX_COMMAND,
    MAX_RESPONSE,
    RESPONSE_TIMEOUT,
    SHORT_COMMAND,
)
from zflash.protocol.fastboot.device import DeviceEngine, DeviceState
from zflash.protocol.fastboot.events import (
    Command,
    DataRequest,
    DownloadData,
    DownloadDone,
    Fail,
    Info,
    Malformed,
    Okay,
    Text,
    UploadData,
)
from zflash.protocol.fastboot.host import HostEngine, HostState
from zflash.protocol.fastboot.tcp import TcpFraming, message_header

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
