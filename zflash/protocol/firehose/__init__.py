"""Qualcomm Firehose (the EDL programmer's XML protocol), sans-IO: host and device sides.

``HostEngine`` builds commands and turns the programmer's logs, responses and read data into
events, with qdl's payload negotiation and the 100 ms quiet rule (``settle()``). The device
side is ``DeviceEngine`` (wire) under ``Programmer`` (commands against a ``Storage``), which
the emulator drives. Facts: REFERENCE-EDL section 3; wire notes: protocols/edl.md.
"""

from zflash.protocol.firehose.constants import (
    DEFAULT_PAYLOAD,
    DEVICE_MAX_XML,
    MAX_DOCUMENT,
    QUIET_PERIOD,
    TIMEOUTS,
    ZLP_SPELLINGS,
)
from zflash.protocol.firehose.device import DeviceEngine, DeviceState
from zflash.protocol.firehose.events import (
    NEED_DATA,
    Command,
    Log,
    Malformed,
    NeedData,
    ProgramData,
    ProgramDone,
    ReadData,
    Response,
    Result,
)
from zflash.protocol.firehose.expressions import patch_value, sector_value
from zflash.protocol.firehose.host import HostEngine, HostState, pad_to_sector, storage_info
from zflash.protocol.firehose.programmer import SUPPORTED, Programmer, WriteStep
from zflash.protocol.firehose.storage import MemoryStorage, Storage
from zflash.protocol.firehose.xmlwire import Element, XmlSplitter, encode_document, parse_document

__all__ = [
    "DEFAULT_PAYLOAD", "DEVICE_MAX_XML", "MAX_DOCUMENT", "NEED_DATA", "QUIET_PERIOD",
    "SUPPORTED", "TIMEOUTS", "ZLP_SPELLINGS",
    "Command", "DeviceEngine", "DeviceState", "Element", "HostEngine", "HostState", "Log",
    "Malformed", "MemoryStorage", "NeedData", "ProgramData", "ProgramDone", "Programmer",
    "ReadData", "Response", "Result", "Storage", "WriteStep", "XmlSplitter",
    "encode_document", "pad_to_sector", "parse_document", "patch_value", "sector_value",
    "storage_info",
]
