"""The AVB vbmeta header (big-endian, 256 bytes): the fields anti-rollback needs.

zflash reads the rollback index a device's running slot enforces from its vbmeta partition,
and tests build minimal vbmeta images to put there. Signatures are not checked here: the
package's own signature covers what zflash writes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from zflash.errors import Code, ZflashError

MAGIC = b"AVB0"
HEADER_SIZE = 256
ROLLBACK_INDEX_OFFSET = 112
FLAGS_OFFSET = 120
LOCATION_OFFSET = 124
MAX_LOCATIONS = 32  # AVB_MAX_NUMBER_OF_ROLLBACK_INDEX_LOCATIONS
FLAG_HASHTREE_DISABLED = 1
FLAG_VERIFICATION_DISABLED = 2

_VERSIONS = struct.Struct(">4sII")
_SIZES = struct.Struct(">QQI")


@dataclass(frozen=True)
class VbmetaHeader:
    """What zflash uses of a vbmeta header."""

    version_major: int
    version_minor: int
    auth_size: int
    aux_size: int
    algorithm: int
    rollback_index: int
    flags: int
    rollback_index_location: int
    release: str


def parse_vbmeta(data: bytes | bytearray | memoryview) -> VbmetaHeader:
    """The header at the start of ``data``; MALFORMED_IMAGE when it is not vbmeta."""
    if len(data) < HEADER_SIZE:
        raise ZflashError(Code.MALFORMED_IMAGE, f"vbmeta of {len(data)} bytes (header is 256)")
    magic, major, minor = _VERSIONS.unpack_from(data, 0)
    if magic != MAGIC:
        raise ZflashError(Code.MALFORMED_IMAGE, f"no AVB0 magic in vbmeta ({bytes(magic)!r})")
    auth, aux, algorithm = _SIZES.unpack_from(data, 12)
    if auth % 64 or aux % 64:
        raise ZflashError(Code.MALFORMED_IMAGE, "vbmeta block sizes are not multiples of 64")
    rollback, = struct.unpack_from(">Q", data, ROLLBACK_INDEX_OFFSET)
    flags, location = struct.unpack_from(">II", data, FLAGS_OFFSET)
    if location >= MAX_LOCATIONS:
        raise ZflashError(Code.MALFORMED_IMAGE, f"vbmeta rollback_index_location {location}")
    release = bytes(data[128:176]).split(b"\0", 1)[0].decode("ascii", "replace")
    return VbmetaHeader(major, minor, auth, aux, algorithm, rollback, flags, location, release)


def build_vbmeta(rollback_index: int, location: int = 0, *, flags: int = 0,
                 release: str = "zflash test vbmeta") -> bytes:
    """A minimal unsigned vbmeta (algorithm NONE, empty blocks) for tests and the emulator."""
    if not 0 <= location < MAX_LOCATIONS or not 0 <= rollback_index < 1 << 64:
        raise ZflashError(Code.INTERNAL, "rollback index or location out of range")
    out = bytearray(HEADER_SIZE)
    _VERSIONS.pack_into(out, 0, MAGIC, 1, 0)
    _SIZES.pack_into(out, 12, 0, 0, 0)
    struct.pack_into(">Q", out, ROLLBACK_INDEX_OFFSET, rollback_index)
    struct.pack_into(">II", out, FLAGS_OFFSET, flags, location)
    name = release.encode("ascii")[:47]
    out[128:128 + len(name)] = name
    return bytes(out)
