"""The values rawprogram/patch XML hands to the device: sector numbers and patch values.

``NUM_DISK_SECTORS-5.`` (the LUN's size minus 5), plain numbers (decimal, with or without
the Trace32 trailing dot; ``0x`` hex), and in patch values ``CRC32(start,len)`` over on-disk
bytes. The grammar accepted here is deliberately small (D46): anything else is refused.
"""

from __future__ import annotations

import re
from typing import Callable

from zflash.errors import Code, ZflashError

_NUMBER = r"(?:0[xX][0-9a-fA-F]+|[0-9]+\.?)"
_SECTOR = re.compile(rf"\s*(?:(NUM_DISK_SECTORS)\s*(?:([-+])\s*({_NUMBER}))?|({_NUMBER}))\s*")
_CRC = re.compile(r"\s*CRC32\s*\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)\s*")


def _number(text: str) -> int:
    text = text.rstrip(".")
    return int(text, 16) if text[:2].lower() == "0x" else int(text)


def _refuse(what: str, text: str) -> ZflashError:
    return ZflashError(Code.PROTOCOL, f"Firehose: {what} {text[:60]!r} is not understood")


def sector_value(text: str, num_disk_sectors: int) -> int:
    """``NUM_DISK_SECTORS[-+]N`` or a number; negative results are refused."""
    found = _SECTOR.fullmatch(text)
    if not found:
        raise _refuse("sector expression", text)
    symbol, sign, offset, plain = found.groups()
    if symbol:
        value = num_disk_sectors
        if offset is not None:
            value = value - _number(offset) if sign == "-" else value + _number(offset)
    else:
        value = _number(plain)
    if value < 0:
        raise _refuse("sector expression (negative)", text)
    return value


def patch_value(text: str, num_disk_sectors: int,
                crc32: Callable[[int, int], int]) -> int:
    """A patch ``value``: ``CRC32(sector_expr, length)`` via ``crc32(sector, length)``,
    otherwise a sector expression."""
    found = _CRC.fullmatch(text)
    if found:
        start = sector_value(found.group(1), num_disk_sectors)
        length = sector_value(found.group(2), num_disk_sectors)
        return crc32(start, length)
    return sector_value(text, num_disk_sectors)
