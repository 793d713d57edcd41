"""Cuts a Sahara byte stream into packets and raw runs, for either side.

Works for USB (one packet per transfer) and for the COM variant (a byte stream) alike: the
header's length word frames each packet, and it is checked against the fixed length of its
command before the body is waited for, so a hostile length never makes the reader buffer.
"""

from __future__ import annotations

from zflash.protocol.sahara.constants import HEADER_SIZE, Cmd
from zflash.protocol.sahara.packets import Packet, check_header, decode_body, parse_header

Buffer = bytes | bytearray | memoryview


class PacketReader:
    """Bytes in; ``packet()`` or ``raw(n)`` out, None while incomplete."""

    def __init__(self, allowed: frozenset[Cmd], sender: str) -> None:
        self._allowed = allowed
        self._sender = sender
        self._buf = bytearray()

    def feed(self, data: Buffer) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def startswith(self, prefix: bytes) -> bool | None:
        """Whether the buffer starts with ``prefix``; None while too short to tell."""
        head = bytes(self._buf[:len(prefix)])
        if not prefix.startswith(head) or len(head) == len(prefix):
            return head == prefix
        return None

    def packet(self) -> Packet | None:
        """The next whole packet; raises ZflashError(PROTOCOL) for a bad header or body."""
        if len(self._buf) < HEADER_SIZE:
            return None
        cmd, length = parse_header(bytes(self._buf[:HEADER_SIZE]))
        known = check_header(cmd, length, self._allowed, self._sender)
        if len(self._buf) < length:
            return None
        body = bytes(self._buf[HEADER_SIZE:length])
        del self._buf[:length]
        return decode_body(known, body)

    def raw(self, size: int) -> bytes | None:
        """Exactly ``size`` raw bytes once that many arrived."""
        if len(self._buf) < size:
            return None
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def take(self) -> bytes:
        """Everything buffered (for the protocol that follows Sahara)."""
        out, self._buf = bytes(self._buf), bytearray()
        return out

    def clear(self) -> None:
        self._buf = bytearray()
