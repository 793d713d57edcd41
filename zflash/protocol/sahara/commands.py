"""Command-mode reply data (EXECUTE_DATA): decoders for the host, encoders for the device.

Each pair mirrors the layouts in REFERENCE-EDL 2.3. Decoders take the raw bytes the device sent
after EXECUTE_DATA and refuse short or meaningless replies with a PROTOCOL error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from zflash.errors import Code, ZflashError

_DIGEST_SIZES = (32, 48, 64)


@dataclass(frozen=True)
class HwId:
    """The MSM hardware id: which SoC (msm_id), which OEM, which model."""

    msm_id: int
    oem_id: int
    model_id: int

    @property
    def value(self) -> int:
        """The packed u64 (msm_id << 32 | oem_id << 16 | model_id)."""
        return (self.msm_id << 32) | (self.oem_id << 16) | self.model_id

    @property
    def hex(self) -> str:
        """16 hex digits, the spelling edl uses in programmer file names."""
        return f"{self.value:016x}"

    @classmethod
    def from_value(cls, value: int) -> HwId:
        return cls(value >> 32, (value >> 16) & 0xFFFF, value & 0xFFFF)


@dataclass(frozen=True)
class ChipIdV3:
    """READ_CHIP_ID_V3: the chip id word and the same HwId fields as MSM_HW_ID_READ."""

    chip_id: int
    hw_id: HwId


def _short(what: str, got: int, need: int) -> ZflashError:
    return ZflashError(Code.PROTOCOL, f"Sahara: {what} reply has {got} bytes, needs {need}")


def decode_serial(data: bytes) -> int:
    """SERIAL_NUM_READ: a u32."""
    if len(data) < 4:
        raise _short("serial number", len(data), 4)
    return int(struct.unpack_from("<I", data)[0])


def decode_sbl_version(data: bytes) -> int:
    """GET_SOFTWARE_VERSION_SBL: a u32."""
    if len(data) < 4:
        raise _short("SBL version", len(data), 4)
    return int(struct.unpack_from("<I", data)[0])


def decode_hw_id(data: bytes) -> HwId:
    """MSM_HW_ID_READ: a u64, often repeated (the first copy counts)."""
    if len(data) < 8:
        raise _short("MSM HW id", len(data), 8)
    return HwId.from_value(int(struct.unpack_from("<Q", data)[0]))


def decode_pk_hash(data: bytes) -> bytes:
    """OEM_PK_HASH_READ: a 32/48/64-byte digest, maybe repeated or zero-padded.

    Cut at the first repeat, strip trailing zeros, round up to 32/48/64 (qdl's rule). An
    all-zero reply (no key fused) gives 32 zero bytes.
    """
    if len(data) < 32:
        raise _short("OEM public-key hash", len(data), 32)
    digest = bytes(data)
    for size in _DIGEST_SIZES:
        if len(data) >= 2 * size and data[size:2 * size] == data[:size]:
            digest = bytes(data[:size])
            break
    used = len(digest.rstrip(b"\0"))
    for size in _DIGEST_SIZES:
        if used <= size:
            return bytes(data[:size])
    raise ZflashError(Code.PROTOCOL, f"Sahara: OEM public-key hash reply of {len(data)} bytes "
                                     "is longer than any digest")


def decode_chip_id_v3(data: bytes) -> ChipIdV3:
    """READ_CHIP_ID_V3: chip id @0, MSM_ID @36, OEM_ID @40 (or the alternative @44 when 0),
    MODEL_ID @42."""
    if len(data) < 44:
        raise _short("chip id v3", len(data), 44)
    chip_id, = struct.unpack_from("<I", data, 0)
    msm_id, = struct.unpack_from("<I", data, 36)
    oem_id, model_id = struct.unpack_from("<HH", data, 40)
    if oem_id == 0 and len(data) >= 46:
        oem_id, = struct.unpack_from("<H", data, 44)
    return ChipIdV3(chip_id, HwId(msm_id, oem_id, model_id))


# --- device side ------------------------------------------------------------------------
def encode_serial(serial: int) -> bytes:
    return struct.pack("<I", serial)


def encode_sbl_version(version: int) -> bytes:
    return struct.pack("<I", version)


def encode_hw_id(hw_id: HwId, copies: int = 3) -> bytes:
    """The u64, ``copies`` times (a real PBL answers 0x18 bytes: three copies)."""
    return struct.pack("<Q", hw_id.value) * copies


def encode_pk_hash(digest: bytes, copies: int = 3) -> bytes:
    """The digest ``copies`` times (a real PBL answers 0x60 bytes for a SHA-256 hash)."""
    if len(digest) not in _DIGEST_SIZES:
        raise ZflashError(Code.INTERNAL, f"OEM key hash must be 32/48/64 bytes, not {len(digest)}")
    return digest * copies


def encode_chip_id_v3(chip: ChipIdV3, alternative_oem: bool = False) -> bytes:
    """48 bytes; with ``alternative_oem`` the OEM id goes to +44 and +40 stays 0."""
    out = bytearray(48)
    struct.pack_into("<I", out, 0, chip.chip_id)
    struct.pack_into("<I", out, 36, chip.hw_id.msm_id)
    struct.pack_into("<HH", out, 40, 0 if alternative_oem else chip.hw_id.oem_id,
                     chip.hw_id.model_id)
    if alternative_oem:
        struct.pack_into("<H", out, 44, chip.hw_id.oem_id)
    return bytes(out)
