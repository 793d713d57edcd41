"""Block codecs (zdl.md 3.3): zlib and zstd, each with a hard output bound, so a hostile
block costs at most one block of memory (the same rule as zpk.md section 6)."""

from __future__ import annotations

import zlib

from zflash import zstd
from zflash.errors import Code, ZflashError
from zflash.protocol.zdl.constants import CODEC_NAMES, CODEC_NONE, CODEC_ZLIB, CODEC_ZSTD

Buffer = bytes | bytearray | memoryview


def codec_id(name: str) -> int:
    for number, codec in CODEC_NAMES.items():
        if codec == name:
            return number
    raise ZflashError(Code.INTERNAL, f"unknown codec {name!r}")


def local_codecs() -> tuple[str, ...]:
    """What this process can decode, best first: what an engine offers by default."""
    return ("zstd", "zlib", "none") if zstd.available() else ("zlib", "none")


def compress(data: Buffer, level: int = 1, codec: int = CODEC_ZLIB) -> bytes:
    if codec == CODEC_ZSTD:
        return zstd.compress(data, level)
    if codec != CODEC_ZLIB:
        raise ZflashError(Code.INTERNAL, f"cannot compress with codec {codec}")
    return zlib.compress(data, level)


def decode_block(codec: int, data: Buffer, raw_size: int) -> Buffer:
    """The raw block: decoded with an output bound of ``raw_size`` bytes, exactly.

    Anything else (corrupt stream, more or less output, trailing bytes) is a protocol error;
    the device logic turns it into its own refusal.
    """
    if raw_size < 1:
        raise ZflashError(Code.PROTOCOL, "empty block")
    if codec == CODEC_NONE:
        if len(data) != raw_size:
            raise ZflashError(Code.PROTOCOL, f"raw block of {len(data)} bytes, want {raw_size}")
        return data
    if codec == CODEC_ZSTD:
        try:
            return zstd.decompress(data, raw_size)
        except zstd.ZstdError as exc:
            raise ZflashError(Code.PROTOCOL, f"zstd block refused: {exc}") from None
    if codec != CODEC_ZLIB:
        raise ZflashError(Code.PROTOCOL, f"unknown codec {codec}")
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, raw_size)
    except zlib.error as exc:
        raise ZflashError(Code.PROTOCOL, f"corrupt zlib block: {exc}") from None
    if len(out) != raw_size or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise ZflashError(Code.PROTOCOL, "zlib block does not inflate to exactly its size")
    return out
