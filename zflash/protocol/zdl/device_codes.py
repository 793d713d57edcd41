"""Which error codes a device may send, and what the host reports for the others.

Why: a device's ERROR response carries a zflash code, and the host used to raise it as is. A
device that sent 9000, 9001 or 9999 made the host print "internal error in zflash" (report a
bug), and one that sent a host-only code (9003 "file unreadable", 9050 "TLS pin") would give
the technician a fix that cannot apply. A device may report only what a device can know; any
other code is a protocol error that names the code it sent.
"""

from __future__ import annotations

from zflash.errors import Code

DEVICE_CODES: frozenset[int] = frozenset(int(c) for c in (
    Code.MALFORMED_PACKAGE, Code.MALFORMED_IMAGE, Code.SIGNATURE, Code.NO_TRUSTED_KEY,
    Code.ROLLBACK, Code.STORAGE, Code.LINK_LOST, Code.TIMEOUT, Code.PROTOCOL,
    Code.UNSUPPORTED_PROTOCOL, Code.READBACK_MISMATCH, Code.BOOT_FAILED, Code.SLOT,
    Code.NO_SUCH_PARTITION, Code.DEVICE_REFUSED, Code.NOT_SUPPORTED, Code.COMPATIBILITY,
    Code.IMAGE_TOO_LARGE, Code.UNVERIFIABLE,
))


def host_code(device_code: int) -> int:
    """The device's code if a device may send it, else PROTOCOL."""
    return device_code if device_code in DEVICE_CODES else int(Code.PROTOCOL)
