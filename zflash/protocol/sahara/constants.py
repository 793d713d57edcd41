"""Sahara command ids, modes, client commands and status codes (REFERENCE-EDL 2.1-2.4).

Every integer on the wire is little-endian. Lengths are whole-packet lengths, header included.
"""

from __future__ import annotations

from enum import IntEnum


class Cmd(IntEnum):
    """Packet ids (the first u32 of every packet)."""

    HELLO = 0x01
    HELLO_RESP = 0x02
    READ_DATA = 0x03
    END_OF_IMAGE = 0x04
    DONE = 0x05
    DONE_RESP = 0x06
    RESET = 0x07
    RESET_RESP = 0x08
    MEMORY_DEBUG = 0x09
    MEMORY_READ = 0x0A
    CMD_READY = 0x0B
    SWITCH_MODE = 0x0C
    EXECUTE = 0x0D
    EXECUTE_RESP = 0x0E
    EXECUTE_DATA = 0x0F
    MEMORY_DEBUG_64 = 0x10
    MEMORY_READ_64 = 0x11
    READ_DATA_64 = 0x12
    RESET_STATE_MACHINE = 0x13


class Mode(IntEnum):
    """The ``mode`` word of HELLO, HELLO_RESP and SWITCH_MODE."""

    IMAGE_TX_PENDING = 0
    IMAGE_TX_COMPLETE = 1
    MEMORY_DEBUG = 2
    COMMAND = 3


class ExecCmd(IntEnum):
    """Client commands of command mode (EXECUTE.client_cmd)."""

    NOP = 0x00
    SERIAL_NUM_READ = 0x01
    MSM_HW_ID_READ = 0x02
    OEM_PK_HASH_READ = 0x03
    SWITCH_TO_DMSS_DLOAD = 0x04
    SWITCH_TO_STREAM_DLOAD = 0x05
    READ_DEBUG_DATA = 0x06
    GET_SOFTWARE_VERSION_SBL = 0x07
    GET_COMMAND_ID_LIST = 0x08
    GET_TRAINING_DATA = 0x09
    READ_CHIP_ID_V3 = 0x0A


HEADER_SIZE = 8

# Exact whole-packet length of every packet zflash parses (REFERENCE-EDL 2.1). A packet whose
# length word differs is refused before any of its body is buffered.
PACKET_LENGTH: dict[Cmd, int] = {
    Cmd.HELLO: 0x30, Cmd.HELLO_RESP: 0x30, Cmd.READ_DATA: 0x14, Cmd.END_OF_IMAGE: 0x10,
    Cmd.DONE: 0x08, Cmd.DONE_RESP: 0x0C, Cmd.RESET: 0x08, Cmd.RESET_RESP: 0x08,
    Cmd.MEMORY_DEBUG: 0x10, Cmd.MEMORY_READ: 0x10, Cmd.CMD_READY: 0x08, Cmd.SWITCH_MODE: 0x0C,
    Cmd.EXECUTE: 0x0C, Cmd.EXECUTE_RESP: 0x10, Cmd.EXECUTE_DATA: 0x0C,
    Cmd.MEMORY_DEBUG_64: 0x18, Cmd.MEMORY_READ_64: 0x18, Cmd.READ_DATA_64: 0x20,
    Cmd.RESET_STATE_MACHINE: 0x08,
}

# Direction: what a host may receive and what a device may receive.
DEVICE_TO_HOST = frozenset({Cmd.HELLO, Cmd.READ_DATA, Cmd.END_OF_IMAGE, Cmd.DONE_RESP,
                            Cmd.RESET_RESP, Cmd.MEMORY_DEBUG, Cmd.CMD_READY, Cmd.EXECUTE_RESP,
                            Cmd.MEMORY_DEBUG_64, Cmd.READ_DATA_64})
HOST_TO_DEVICE = frozenset({Cmd.HELLO_RESP, Cmd.DONE, Cmd.RESET, Cmd.MEMORY_READ,
                            Cmd.SWITCH_MODE, Cmd.EXECUTE, Cmd.EXECUTE_DATA, Cmd.MEMORY_READ_64,
                            Cmd.RESET_STATE_MACHINE})

# The protocol versions zflash speaks: HELLO v2 (the usual one), v3 on newer parts.
HOST_VERSION = 2
HOST_COMPATIBLE = 1
DEVICE_VERSION = 2
DEVICE_COMPATIBLE = 1
DEVICE_MAX_CMD = 1024  # max_cmd_packet_len a device announces in HELLO
MIN_READ_DATA_64_VERSION = 2  # zflash accepts READ_DATA_64 from any version-2+ device

# Upper bound of the raw reply to one EXECUTE (the largest real one is 0x60 bytes).
MAX_EXEC_DATA = 4096

PROGRAMMER_IMAGE_ID = 0x0D  # "EHOSTDL", qdl's default image id

STATUS_NAMES: dict[int, str] = {code: name for code, name in enumerate((
    "SUCCESS", "INVALID_CMD", "PROTOCOL_MISMATCH", "INVALID_TARGET_PROTOCOL",
    "INVALID_HOST_PROTOCOL", "INVALID_PACKET_SIZE", "UNEXPECTED_IMAGE_ID",
    "INVALID_HEADER_SIZE", "INVALID_DATA_SIZE", "INVALID_IMAGE_TYPE", "INVALID_TX_LENGTH",
    "INVALID_RX_LENGTH", "GENERAL_TX_RX_ERROR", "READ_DATA_ERROR", "UNSUPPORTED_NUM_PHDRS",
    "INVALID_PHDR_SIZE", "MULTIPLE_SHARED_SEG", "UNINIT_PHDR_LOC", "INVALID_DEST_ADDR",
    "INVALID_IMG_HDR_DATA_SIZE", "INVALID_ELF_HDR", "UNKNOWN_HOST_ERROR", "TIMEOUT_RX",
    "TIMEOUT_TX", "INVALID_HOST_MODE", "INVALID_MEMORY_READ", "INVALID_DATA_SIZE_REQUEST",
    "MEMORY_DEBUG_NOT_SUPPORTED", "INVALID_MODE_SWITCH", "CMD_EXEC_FAILURE",
    "EXEC_CMD_INVALID_PARAM", "EXEC_CMD_UNSUPPORTED", "EXEC_DATA_INVALID_CLIENT_CMD",
    "HASH_TABLE_AUTH_FAILURE", "HASH_VERIFICATION_FAILURE", "HASH_TABLE_NOT_FOUND",
    "TARGET_INIT_FAILURE", "IMAGE_AUTH_FAILURE", "INVALID_IMG_HASH_TABLE_SIZE",
    "ENUMERATION_FAILURE", "HW_BULK_TRANSFER_ERROR"))}

STATUS_SUCCESS = 0x00
STATUS_EXEC_CMD_UNSUPPORTED = 0x1F
# Statuses that mean "the boot ROM refused this programmer" (signature / hash checks).
AUTH_FAILURES = frozenset({0x21, 0x22, 0x23, 0x25, 0x26})


def status_name(status: int) -> str:
    """``IMAGE_AUTH_FAILURE`` for 0x25; ``0x...`` for codes outside the table."""
    return STATUS_NAMES.get(status, f"0x{status:x}")
