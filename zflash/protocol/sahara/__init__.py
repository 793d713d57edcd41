"""Qualcomm Sahara (the EDL boot ROM's protocol), sans-IO: host and device engines.

The host uploads a Firehose programmer and reads the device's identity (serial number, MSM
HW id, OEM public-key hash, chip id v3) in command mode; the device engine is what the
emulator's PBL runs. Facts: ../../../../shared/REFERENCE-EDL.md section 2; wire notes:
protocols/edl.md. No I/O, no clock: the caller moves the bytes and owns the timeouts.
"""

from zflash.protocol.sahara.commands import (
    ChipIdV3,
    HwId,
    decode_chip_id_v3,
    decode_hw_id,
    decode_pk_hash,
    decode_sbl_version,
    decode_serial,
    encode_chip_id_v3,
    encode_hw_id,
    encode_pk_hash,
    encode_sbl_version,
    encode_serial,
)
from zflash.protocol.sahara.constants import (
    DEVICE_MAX_CMD,
    MAX_EXEC_DATA,
    PROGRAMMER_IMAGE_ID,
    Cmd,
    ExecCmd,
    Mode,
    status_name,
)
from zflash.protocol.sahara.device import DeviceEngine, DeviceEvent, DeviceState
from zflash.protocol.sahara.events import NEED_DATA, ExecReply, FirehoseRunning, ImageData, NeedData
from zflash.protocol.sahara.host import HostEngine, HostEvent, HostState, end_of_image_error
from zflash.protocol.sahara.packets import (
    CmdReady,
    Done,
    DoneResp,
    EndOfImage,
    Execute,
    ExecuteData,
    ExecuteResp,
    Hello,
    HelloResp,
    MemoryDebug,
    ReadData,
    Reset,
    ResetResp,
    ResetStateMachine,
    SwitchMode,
    encode,
)

__all__ = [
    "DEVICE_MAX_CMD", "MAX_EXEC_DATA", "NEED_DATA", "PROGRAMMER_IMAGE_ID",
    "ChipIdV3", "Cmd", "CmdReady", "DeviceEngine", "DeviceEvent", "DeviceState", "Done",
    "DoneResp", "EndOfImage", "ExecCmd", "ExecReply", "Execute", "ExecuteData", "ExecuteResp",
    "FirehoseRunning", "Hello", "HelloResp", "HostEngine", "HostEvent", "HostState", "HwId",
    "ImageData", "MemoryDebug", "Mode", "NeedData", "ReadData", "Reset", "ResetResp",
    "ResetStateMachine", "SwitchMode",
    "decode_chip_id_v3", "decode_hw_id", "decode_pk_hash", "decode_sbl_version",
    "decode_serial", "encode", "encode_chip_id_v3", "encode_hw_id", "encode_pk_hash",
    "encode_sbl_version", "encode_serial", "end_of_image_error", "status_name",
]
