"""Events the host engine hands to its caller: what the device said, already parsed.

The device engine's events are in ``device_events``; their names can still be imported
from here (PEP 562, imported on first use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from zflash import lazy_getattr

if TYPE_CHECKING:
    from zflash.protocol.fastboot.device_events import (Command, DeviceEvent, DownloadData,
                                                        DownloadDone, Malformed)


@dataclass(frozen=True)
class Okay:
    """The command succeeded; ``message`` is its value (e.g. a getvar answer, may be empty)."""

    message: str


@dataclass(frozen=True)
class Fail:
    """The device refused or failed the command; ``message`` says why."""

    message: str


@dataclass(frozen=True)
class Info:
    """Progress or a getvar-all line; the command is still running."""

    message: str


@dataclass(frozen=True)
class Text:
    """Free text for the user (fastbootd); the command is still running."""

    message: str


@dataclass(frozen=True)
class DataRequest:
    """DATA: the host now sends ``size`` bytes (download) or receives them (upload)."""

    size: int


@dataclass(frozen=True)
class UploadData:
    """Bytes of an upload; valid only until the next call into the engine."""

    data: memoryview


HostEvent = Union[Okay, Fail, Info, Text, DataRequest, UploadData]


#: the device side's names, still importable from here; a host never asks for them
__getattr__ = lazy_getattr(__name__, dict.fromkeys(
    ("Command", "DeviceEvent", "DownloadData", "DownloadDone", "Malformed"),
    "zflash.protocol.fastboot.device_events"))
