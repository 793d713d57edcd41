"""ZDL wire constants (protocols/zdl.md sections 1-3): one place for every number on the wire."""

from __future__ import annotations

import struct
from enum import IntEnum

from zflash.errors import Code, ZflashError

VERSION = 1
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

SYNC = b"\xa5\x5a"
HEADER = struct.Struct("<BBII")          # type, flags, seq, length (after the sync marker)
HEADER_SIZE = len(SYNC) + HEADER.size    # 12
CRC_SIZE = 4
OVERHEAD = HEADER_SIZE + CRC_SIZE        # 16 bytes per frame

PRE_MAX = 4096                           # payload limit before the WELCOME
MIN_MAX_DATA = 4096
MAX_MAX_DATA = 1 << 20
DEFAULT_MAX_DATA = 256 << 10
HEADROOM = 16                            # payload may exceed max_data by this (sub-headers)
MAX_WINDOW = 64
DEFAULT_WINDOW = 32
MAX_MESSAGE = 80 << 20                   # largest reassembled chunked message
#: a BEGIN_UPDATE of exactly this many bytes carries a package digest, not a head
HEAD_DIGEST_SIZE = 32
#: the FACTS feature of a device that takes BEGIN_UPDATE by digest
FEATURE_BEGIN_BY_DIGEST = "begin_by_digest"
MAX_TOKEN = 64                           # PING / PONG payload
MAX_SEQ = 0xFFFFFFFF
MAX_HASH_COUNT = 65536

FLAG_CHUNK = 0x01
CHUNK_HEADER = struct.Struct("<II")      # total, offset
BLOCK_HEADER = struct.Struct("<HIB")     # partition, block, codec
DATA_HEADER = struct.Struct("<Q")        # offset

#: line rates a ZDL device may be asked to switch to (zdl.md 6.1): the standard UART rates
#: (Linux termios B9600 .. B4000000). A device offers a subset on each serial link (the
#: emulator: 230400, 460800, 921600, 2000000); anything else cannot be set on a real UART.
SWITCH_BAUDS: tuple[int, ...] = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000,
                                 576000, 921600, 1000000, 1152000, 1500000, 2000000, 2500000,
                                 3000000, 3500000, 4000000)

CODEC_NONE = 0
CODEC_ZLIB = 1
CODEC_ZSTD = 2
CODEC_NAMES: dict[int, str] = {CODEC_NONE: "none", CODEC_ZLIB: "zlib", CODEC_ZSTD: "zstd"}


class MsgType(IntEnum):
    """Frame type codes (zdl.md section 3)."""

    ACK = 0x01
    NAK = 0x02
    HELLO = 0x03
    WELCOME = 0x04
    PING = 0x05
    PONG = 0x06
    IDENTIFY = 0x10
    BEGIN_UPDATE = 0x11
    WRITE_BLOCK = 0x12
    BLOCK_HASHES = 0x13
    KEEP_BLOCKS = 0x14
    COMMIT_PARTITION = 0x15
    SET_ACTIVE = 0x16
    REBOOT = 0x17
    READ = 0x18
    ERASE = 0x19
    OK = 0x20
    ERROR = 0x21
    FACTS = 0x22
    UPDATE_READY = 0x23
    HASHES = 0x24
    KEPT = 0x25
    DATA = 0x26
    DONE = 0x27


KNOWN_TYPES = frozenset(int(t) for t in MsgType)
LINK_TYPES = frozenset({MsgType.ACK, MsgType.NAK, MsgType.HELLO, MsgType.WELCOME,
                        MsgType.PING, MsgType.PONG})
HOST_TYPES = frozenset({MsgType.HELLO, MsgType.PING, MsgType.IDENTIFY, MsgType.BEGIN_UPDATE,
                        MsgType.WRITE_BLOCK, MsgType.BLOCK_HASHES, MsgType.KEEP_BLOCKS,
                        MsgType.COMMIT_PARTITION, MsgType.SET_ACTIVE, MsgType.REBOOT,
                        MsgType.READ, MsgType.ERASE})
DEVICE_TYPES = frozenset(MsgType) - HOST_TYPES
SEQUENCED_TYPES = HOST_TYPES - {MsgType.HELLO, MsgType.PING}
REQUEST_TYPES = SEQUENCED_TYPES - {MsgType.WRITE_BLOCK}
CHUNKABLE_TYPES = frozenset(MsgType) - LINK_TYPES - {MsgType.WRITE_BLOCK, MsgType.DATA}


def check_baud(baud: int) -> int:
    """``baud`` if a device can be asked to switch to it, else 9002 naming the rates."""
    if baud not in SWITCH_BAUDS:
        raise ZflashError(Code.USAGE, f"unsupported baud rate {baud}; supported: "
                                      + ", ".join(str(b) for b in SWITCH_BAUDS))
    return baud


def payload_limit(msg_type: int, max_data: int | None) -> int:
    """Largest payload a frame of ``msg_type`` may carry; ``max_data`` None = pre-handshake.

    Checked on the header, before any payload is buffered (zdl.md 2.1).
    """
    if msg_type in (MsgType.ACK, MsgType.NAK):
        return 0
    if msg_type in (MsgType.PING, MsgType.PONG):
        return MAX_TOKEN
    if msg_type in (MsgType.HELLO, MsgType.WELCOME) or max_data is None:
        return PRE_MAX
    return max_data + HEADROOM
