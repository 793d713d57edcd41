"""Chunked messages (zdl.md section 4): split a large payload into frames, and put it back.

A package head can be tens of MiB while a frame carries at most ``max_data`` bytes, so control
messages travel as pieces that each say where they belong and how long the whole is.
"""

from __future__ import annotations

from zflash.errors import Code, ZflashError
from zflash.protocol.zdl.constants import CHUNK_HEADER, FLAG_CHUNK, MAX_MESSAGE

Buffer = bytes | bytearray | memoryview


def split(payload: bytes, max_data: int) -> list[tuple[int, tuple[Buffer, ...]]]:
    """(flags, payload parts) for each frame; a payload that fits is one unchunked frame."""
    total = len(payload)
    if total <= max_data:
        return [(0, (payload,))]
    if total > MAX_MESSAGE:
        raise ZflashError(Code.INTERNAL, f"message of {total} bytes exceeds the protocol limit")
    view = memoryview(payload)
    return [(FLAG_CHUNK, (CHUNK_HEADER.pack(total, offset), view[offset:offset + max_data]))
            for offset in range(0, total, max_data)]


class Assembler:
    """Collects the pieces of one chunked message.

    ``strict`` (device side, where sequencing already guarantees order) treats any piece out of
    place as a violation. Otherwise (host side) a piece below the expected offset is a re-sent
    duplicate and is ignored, and one above it marks a ``gap`` to be repaired by a re-send.
    """

    def __init__(self, what: str, strict: bool, max_data: int, limit: int = MAX_MESSAGE) -> None:
        self.what = what
        self.strict = strict
        self.max_data = max_data
        self.limit = min(limit, MAX_MESSAGE)  # the message type's own bound, from its class
        self.total: int | None = None
        self.received = 0
        self.gap = False
        self._parts: list[memoryview] = []

    def add(self, payload: memoryview) -> bytes | None:
        """Take one piece; the whole payload once the last piece is in, else None."""
        if len(payload) <= CHUNK_HEADER.size:
            raise self._fail("piece without data")
        total, offset = CHUNK_HEADER.unpack_from(payload)
        data = payload[CHUNK_HEADER.size:]
        if total > self.limit:
            raise self._fail(f"announces {total} bytes, more than the {self.limit} a "
                             f"{self.what} may have")
        if not 1 <= total or offset + len(data) > total or len(data) > self.max_data:
            raise self._fail("piece outside its message")
        if self.total is None:
            self.total = total
        elif total != self.total:
            raise self._fail("pieces disagree on the message length")
        end = offset + len(data)
        if offset > self.received or (self.strict and offset != self.received):
            if self.strict:
                raise self._fail("piece out of order")
            self.gap = True
            return None
        if end <= self.received:
            return None
        self._parts.append(data[self.received - offset:])
        self.received = end
        if end < total:
            return None
        whole = b"".join(self._parts)
        self._parts = []
        return whole

    @staticmethod
    def is_last(payload: memoryview) -> bool:
        """Whether a (validated) piece is the final one of its message."""
        total, offset = CHUNK_HEADER.unpack_from(payload)
        return offset + len(payload) - CHUNK_HEADER.size == total

    def _fail(self, why: str) -> ZflashError:
        return ZflashError(Code.PROTOCOL, f"{self.what}: chunked message: {why}")
