"""CRC32 arithmetic over GF(2): the CRC of FILL and DONT_CARE runs without expanding them.

A FILL or DONT_CARE chunk may stand for terabytes; hashing its expansion byte by byte would
hang on a hostile header. CRC32 is linear over GF(2), so the CRC of a repeated pattern and the
effect of appending n bytes are computed with polynomial arithmetic in O(log n) steps instead.
"""

from __future__ import annotations

import zlib

from zflash.package.sparse.format import _U32_MAX

_CRC_POLY = 0xEDB88320  # the IEEE polynomial in zlib's reflected bit order
_X0 = 1 << 31  # the polynomial 1 (reflected: bit 31 holds the coefficient of x^0)
_ZLIB_FILL_LIMIT = 64 << 10  # fills up to this size are simply hashed with zlib


def _gf2_mul(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial, both in the reflected representation."""
    product = 0
    while a:
        if a & _X0:
            product ^= b
        a = (a << 1) & _U32_MAX
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return product


def _x8_powers(count: int) -> list[int]:
    """x^(8 * 2^j) mod P for j < count: the operator 'append 2^j zero bytes'."""
    powers = [1 << 23]  # x^8
    while len(powers) < count:
        powers.append(_gf2_mul(powers[-1], powers[-1]))
    return powers


_X8_POWERS = _x8_powers(70)


def _shift(nbytes: int) -> int:
    """x^(8 * nbytes) mod P."""
    result, j = _X0, 0
    while nbytes:
        if nbytes & 1:
            result = _gf2_mul(_X8_POWERS[j], result)
        nbytes >>= 1
        j += 1
    return result


def _crc_append(crc: int, part_crc: int, part_len: int) -> int:
    """CRC32 of A+B from crc(A), crc(B) and len(B) (zlib's crc32_combine, by the math)."""
    return _gf2_mul(_shift(part_len), crc) ^ part_crc


def _repeat_crc(unit: bytes, count: int) -> int:
    """CRC32 of ``unit * count`` by binary doubling (most significant bit first)."""
    unit_crc, unit_shift = zlib.crc32(unit), _shift(len(unit))
    crc, shift = 0, _X0
    for bit in bin(count)[2:]:
        crc = _gf2_mul(shift, crc) ^ crc
        shift = _gf2_mul(shift, shift)
        if bit == "1":
            crc = _gf2_mul(unit_shift, crc) ^ unit_crc
            shift = _gf2_mul(unit_shift, shift)
    return crc


def _crc_fill(crc: int, pattern: bytes, nbytes: int) -> int:
    """Extend a running CRC32 by ``pattern`` repeated over ``nbytes`` (a multiple of 4)."""
    if nbytes <= _ZLIB_FILL_LIMIT:
        return zlib.crc32(pattern * (nbytes // 4), crc)
    unit = pattern * (_ZLIB_FILL_LIMIT // 4)
    count, rest = divmod(nbytes, len(unit))
    body = _crc_append(_repeat_crc(unit, count), zlib.crc32(unit[:rest]), rest)
    return _crc_append(crc, body, nbytes)
