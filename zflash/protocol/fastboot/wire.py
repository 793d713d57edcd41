"""The bytes of single packets: commands (strict) and responses (parsed leniently).

Strict with what zflash sends: a command is printable ASCII, never longer than 4096 bytes.
Lenient with what devices send: trailing NULs, CR/LF and spaces after a message are dropped,
odd characters are replaced, and a DATA size may carry ``0x`` or spaces. Only what cannot be
understood (no known prefix, shorter than a prefix, longer than 256 bytes, a DATA size that is
not hex) is a protocol error.
"""

from __future__ import annotations

from typing import Union

from zflash.errors import Code, ZflashError
from zflash.protocol.fastboot.constants import (
    DATA,
    FAIL,
    INFO,
    MAX_COMMAND,
    MAX_DATA_SIZE,
    MAX_MESSAGE,
    MAX_RESPONSE,
    OKAY,
    PREFIX_SIZE,
    TEXT,
)
from zflash.protocol.fastboot.events import DataRequest, Fail, HostEvent, Info, Okay, Text

Buffer = Union[bytes, bytearray, memoryview]

_STRIP = "\x00\r\n\t "
_HEX = frozenset("0123456789abcdefABCDEF")


def encode_command(text: str) -> bytes:
    """A command packet; rejects what no device could parse (caller's mistake: USAGE)."""
    if not text:
        raise ZflashError(Code.USAGE, "empty fastboot command")
    if any(not 0x20 <= ord(ch) < 0x7F for ch in text):
        raise ZflashError(Code.USAGE, f"fastboot command {text[:40]!r} is not printable ASCII")
    if len(text) > MAX_COMMAND:
        raise ZflashError(Code.USAGE, f"fastboot command is {len(text)} bytes; the limit is "
                                      f"{MAX_COMMAND}")
    return text.encode("ascii")


def download_command(size: int) -> str:
    """``download:%08x``: eight lowercase hex digits, as every bootloader expects."""
    if not 0 < size <= MAX_DATA_SIZE:
        raise ZflashError(Code.USAGE, f"a download must be 1..{MAX_DATA_SIZE} bytes, not {size}")
    return f"download:{size:08x}"


def clean_text(raw: Buffer) -> str:
    """Device text as a printable str: undecodable or control bytes become '?'."""
    text = bytes(raw).decode("ascii", "replace")
    text = text.rstrip(_STRIP)
    return "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in text)


def parse_response(packet: Buffer) -> HostEvent:
    """One response packet -> event; anything not understood -> ``Code.PROTOCOL``."""
    if len(packet) > MAX_RESPONSE:
        raise ZflashError(Code.PROTOCOL, f"device response of {len(packet)} bytes exceeds the "
                                         f"{MAX_RESPONSE}-byte limit")
    if len(packet) < PREFIX_SIZE:
        raise ZflashError(Code.PROTOCOL, f"truncated device response {bytes(packet)!r}")
    prefix, rest = bytes(packet[:PREFIX_SIZE]), packet[PREFIX_SIZE:]
    if prefix == OKAY:
        return Okay(clean_text(rest))
    if prefix == FAIL:
        return Fail(clean_text(rest))
    if prefix == INFO:
        return Info(clean_text(rest))
    if prefix == TEXT:
        return Text(clean_text(rest))
    if prefix == DATA:
        return DataRequest(parse_data_size(rest))
    raise ZflashError(Code.PROTOCOL, f"unknown device response {clean_text(packet)[:40]!r}")


def parse_data_size(raw: Buffer) -> int:
    """The hex size after DATA (normally 8 digits; ``0x`` and spaces tolerated)."""
    text = bytes(raw).decode("ascii", "replace").strip(_STRIP)
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    if not 0 < len(text) <= 8 or not set(text) <= _HEX:
        raise ZflashError(Code.PROTOCOL, f"DATA response with a bad size {text[:20]!r}")
    return int(text, 16)


def encode_response(prefix: bytes, message: str = "") -> bytes:
    """A device response; the message is made ASCII and cut to fit 256 bytes."""
    text = "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in message)
    return prefix + text[:MAX_MESSAGE].encode("ascii")


def encode_data(size: int) -> bytes:
    """``DATA%08x``: exactly eight hex digits, as AOSP documents."""
    if not 0 <= size <= MAX_DATA_SIZE:
        raise ZflashError(Code.INTERNAL, f"DATA size {size} out of range")
    return DATA + f"{size:08x}".encode("ascii")
