"""Sahara packets as dataclasses: ``encode()`` gives the wire bytes, ``decode_packet`` the reverse.

The packet classes double as the engines' events, like h11's event classes: what the host
receives from the device (HELLO, READ_DATA, ...) and what the device receives from the host
(HELLO_RESP, DONE, ...). HELLO's and HELLO_RESP's six reserved words are sent as zeros and
ignored on receipt (edl fills them with 1..6).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Union

from zflash.errors import Code, ZflashError
from zflash.protocol.sahara.constants import PACKET_LENGTH, Cmd

_HEADER = struct.Struct("<II")


def _u32(value: int, what: str) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ZflashError(Code.INTERNAL, f"Sahara {what} {value} does not fit 32 bits")
    return value


@dataclass(frozen=True)
class Hello:
    """Device -> host, first packet of every session (and after SWITCH_MODE)."""

    version: int
    compatible: int
    max_cmd: int
    mode: int
    CMD: ClassVar[Cmd] = Cmd.HELLO

    def body(self) -> bytes:
        return struct.pack("<4I24x", self.version, self.compatible, self.max_cmd, self.mode)


@dataclass(frozen=True)
class HelloResp:
    """Host -> device: the host's version and the mode it wants (status 0 = accepted)."""

    version: int
    compatible: int
    status: int
    mode: int
    CMD: ClassVar[Cmd] = Cmd.HELLO_RESP

    def body(self) -> bytes:
        return struct.pack("<4I24x", self.version, self.compatible, self.status, self.mode)


@dataclass(frozen=True)
class ReadData:
    """Device -> host: send ``length`` bytes of image ``image_id`` from ``offset``.

    ``wide`` is READ_DATA_64 (64-bit fields) rather than READ_DATA.
    """

    image_id: int
    offset: int
    length: int
    wide: bool = False

    @property
    def CMD(self) -> Cmd:  # noqa: N802 - mirrors the ClassVar of the other packets
        return Cmd.READ_DATA_64 if self.wide else Cmd.READ_DATA

    def body(self) -> bytes:
        if self.wide:
            return struct.pack("<3Q", self.image_id, self.offset, self.length)
        return struct.pack("<3I", _u32(self.image_id, "image id"), _u32(self.offset, "offset"),
                           _u32(self.length, "length"))


@dataclass(frozen=True)
class EndOfImage:
    """Device -> host: the image is complete (status 0) or refused (a status code)."""

    image_id: int
    status: int
    CMD: ClassVar[Cmd] = Cmd.END_OF_IMAGE

    def body(self) -> bytes:
        return struct.pack("<2I", self.image_id, self.status)


@dataclass(frozen=True)
class DoneResp:
    """Device -> host: ``complete`` False means more images are pending (MSM8916 says so
    even for a single image)."""

    complete: bool
    CMD: ClassVar[Cmd] = Cmd.DONE_RESP

    def body(self) -> bytes:
        return struct.pack("<I", 1 if self.complete else 0)


@dataclass(frozen=True)
class ExecuteResp:
    """Device -> host: the reply to EXECUTE ``cmd`` will be ``length`` raw bytes."""

    cmd: int
    length: int
    CMD: ClassVar[Cmd] = Cmd.EXECUTE_RESP

    def body(self) -> bytes:
        return struct.pack("<2I", self.cmd, self.length)


@dataclass(frozen=True)
class MemoryDebug:
    """Device -> host: a ramdump table is at ``address`` (zflash does not collect ramdumps)."""

    address: int
    length: int
    wide: bool = False

    @property
    def CMD(self) -> Cmd:  # noqa: N802
        return Cmd.MEMORY_DEBUG_64 if self.wide else Cmd.MEMORY_DEBUG

    def body(self) -> bytes:
        return struct.pack("<2Q" if self.wide else "<2I", self.address, self.length)


@dataclass(frozen=True)
class _Command:
    """A packet with one u32 argument."""

    value: int

    def body(self) -> bytes:
        return struct.pack("<I", self.value)


@dataclass(frozen=True)
class SwitchMode(_Command):
    """Host -> device: leave command mode; the device answers with a fresh HELLO."""

    CMD: ClassVar[Cmd] = Cmd.SWITCH_MODE

    @property
    def mode(self) -> int:
        return self.value


@dataclass(frozen=True)
class Execute(_Command):
    """Host -> device: run client command ``cmd`` (an ExecCmd)."""

    CMD: ClassVar[Cmd] = Cmd.EXECUTE

    @property
    def cmd(self) -> int:
        return self.value


@dataclass(frozen=True)
class ExecuteData(_Command):
    """Host -> device: send the reply data of client command ``cmd`` now."""

    CMD: ClassVar[Cmd] = Cmd.EXECUTE_DATA

    @property
    def cmd(self) -> int:
        return self.value


@dataclass(frozen=True)
class _Empty:
    def body(self) -> bytes:
        return b""


@dataclass(frozen=True)
class Done(_Empty):
    """Host -> device: the image transfer is over."""

    CMD: ClassVar[Cmd] = Cmd.DONE


@dataclass(frozen=True)
class Reset(_Empty):
    """Host -> device: abort and reset the Sahara session."""

    CMD: ClassVar[Cmd] = Cmd.RESET


@dataclass(frozen=True)
class ResetResp(_Empty):
    """Device -> host: the reset was done."""

    CMD: ClassVar[Cmd] = Cmd.RESET_RESP


@dataclass(frozen=True)
class CmdReady(_Empty):
    """Device -> host: command mode is ready for EXECUTE."""

    CMD: ClassVar[Cmd] = Cmd.CMD_READY


@dataclass(frozen=True)
class ResetStateMachine(_Empty):
    """Host -> device: restart the Sahara state machine (edl sends it)."""

    CMD: ClassVar[Cmd] = Cmd.RESET_STATE_MACHINE


Packet = Union[Hello, HelloResp, ReadData, EndOfImage, DoneResp, ExecuteResp, MemoryDebug,
               SwitchMode, Execute, ExecuteData, Done, Reset, ResetResp, CmdReady,
               ResetStateMachine]


def encode(packet: Packet) -> bytes:
    """The whole packet: header (cmd, length) then body."""
    body = packet.body()
    return _HEADER.pack(packet.CMD, 8 + len(body)) + body


def parse_header(data: bytes) -> tuple[int, int]:
    """``(cmd, length)`` of the 8 header bytes."""
    cmd, length = _HEADER.unpack_from(data)
    return cmd, length


def check_header(cmd: int, length: int, allowed: frozenset[Cmd], side: str) -> Cmd:
    """The Cmd, after refusing unknown ids, the wrong direction and any length but the exact one.

    Called on the header alone, so a packet claiming 4 GiB is refused before its body is read.
    """
    try:
        known = Cmd(cmd)
    except ValueError:
        raise ZflashError(Code.PROTOCOL, f"Sahara: unknown command id 0x{cmd:x} from the "
                                         f"{side}") from None
    if known not in allowed:
        raise ZflashError(Code.PROTOCOL, f"Sahara: {known.name} cannot come from the {side}")
    if length != PACKET_LENGTH[known]:
        raise ZflashError(Code.PROTOCOL, f"Sahara: {known.name} claims {length} bytes, the "
                                         f"protocol fixes {PACKET_LENGTH[known]}")
    return known


def decode_body(cmd: Cmd, body: bytes) -> Packet:
    """The packet for a checked header and its body (``length - 8`` bytes)."""
    if cmd is Cmd.HELLO:
        return Hello(*struct.unpack_from("<4I", body))
    if cmd is Cmd.HELLO_RESP:
        return HelloResp(*struct.unpack_from("<4I", body))
    if cmd in (Cmd.READ_DATA, Cmd.READ_DATA_64):
        wide = cmd is Cmd.READ_DATA_64
        return ReadData(*struct.unpack("<3Q" if wide else "<3I", body), wide=wide)
    if cmd is Cmd.END_OF_IMAGE:
        return EndOfImage(*struct.unpack("<2I", body))
    if cmd is Cmd.DONE_RESP:
        (status,) = struct.unpack("<I", body)
        if status not in (0, 1):
            raise ZflashError(Code.PROTOCOL, f"Sahara: DONE_RESP status {status} is neither "
                                             "0 (pending) nor 1 (complete)")
        return DoneResp(status == 1)
    if cmd is Cmd.EXECUTE_RESP:
        return ExecuteResp(*struct.unpack("<2I", body))
    if cmd in (Cmd.MEMORY_DEBUG, Cmd.MEMORY_DEBUG_64):
        wide = cmd is Cmd.MEMORY_DEBUG_64
        return MemoryDebug(*struct.unpack("<2Q" if wide else "<2I", body), wide=wide)
    simple: dict[Cmd, type] = {Cmd.SWITCH_MODE: SwitchMode, Cmd.EXECUTE: Execute,
                               Cmd.EXECUTE_DATA: ExecuteData}
    if cmd in simple:
        return simple[cmd](*struct.unpack("<I", body))
    empty: dict[Cmd, type] = {Cmd.DONE: Done, Cmd.RESET: Reset, Cmd.RESET_RESP: ResetResp,
                              Cmd.CMD_READY: CmdReady,
                              Cmd.RESET_STATE_MACHINE: ResetStateMachine}
    if cmd in empty:
        return empty[cmd]()
    raise ZflashError(Code.PROTOCOL, f"Sahara: zflash does not handle {cmd.name}")
