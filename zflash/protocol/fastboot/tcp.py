"""Fastboot over TCP, sans-IO: the ``FB01`` handshake and 8-byte big-endian message framing.

Both sides send ``FB`` + two decimal digits of their version and use the smaller one. Every
message afterwards is a u64 big-endian length and the payload. A data-phase message can be
hundreds of MiB, so the decoder never buffers a payload: it hands out fragments (views of the
caller's bytes, no copy) with a flag on the one that ends the message, and the fastboot
engines reassemble what they need (a command or a response is small and bounded).
"""

from __future__ import annotations

import struct
from typing import Union

from zflash.errors import Code, ZflashError
from zflash.protocol.fastboot.constants import TCP_HANDSHAKE_SIZE, TCP_HEADER_SIZE, TCP_VERSION

Buffer = Union[bytes, bytearray, memoryview]
Fragment = tuple[memoryview, bool]  # (payload bytes, this fragment ends the message)

_HEADER = struct.Struct(">Q")


def handshake(version: int = TCP_VERSION) -> bytes:
    """What each side sends first: ``FB01``."""
    return b"FB%02d" % version


def message_header(length: int) -> bytes:
    """The 8-byte prefix of a message of ``length`` payload bytes (for streamed payloads)."""
    return _HEADER.pack(length)


def encode_message(payload: Buffer) -> bytes:
    """A whole small message (a command or a response)."""
    return _HEADER.pack(len(payload)) + bytes(payload)


class TcpFraming:
    """Checks the peer's handshake, then cuts its byte stream into message fragments.

    ``max_message`` (optional) bounds a message's declared length: a larger one is a
    protocol error before any of it is read.
    """

    def __init__(self, max_message: int | None = None) -> None:
        self.max_message = max_message
        self.version: int | None = None  # negotiated, once the peer's handshake arrived
        self._pending = bytearray()  # handshake or header bytes seen so far
        self._left: int | None = None  # payload bytes of the current message still due

    @property
    def handshake_done(self) -> bool:
        return self.version is not None

    @property
    def in_message(self) -> bool:
        """True while a message's payload is still arriving."""
        return self._left is not None

    def receive(self, data: Buffer) -> list[Fragment]:
        """Feed received bytes; fragments are views valid until the caller reuses ``data``."""
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
        out: list[Fragment] = []
        pos = 0
        while pos < len(view):
            if self.version is None:
                pos = self._take(view, pos, TCP_HANDSHAKE_SIZE)
                if len(self._pending) == TCP_HANDSHAKE_SIZE:
                    self._on_handshake(bytes(self._pending))
                    self._pending.clear()
            elif self._left is None:
                pos = self._take(view, pos, TCP_HEADER_SIZE)
                if len(self._pending) == TCP_HEADER_SIZE:
                    self._start_message(_HEADER.unpack(self._pending)[0], out)
                    self._pending.clear()
            else:
                n = min(self._left, len(view) - pos)
                self._left -= n
                done = self._left == 0
                out.append((view[pos:pos + n], done))
                pos += n
                if done:
                    self._left = None
        return out

    def _take(self, view: memoryview, pos: int, want: int) -> int:
        n = min(want - len(self._pending), len(view) - pos)
        self._pending += view[pos:pos + n]
        return pos + n

    def _on_handshake(self, raw: bytes) -> None:
        if raw[:2] != b"FB" or not raw[2:].isdigit():
            raise ZflashError(Code.PROTOCOL, f"peer's fastboot-TCP handshake is {raw!r}, not "
                                             "FB + two digits (is this a fastboot device?)")
        version = int(raw[2:])
        if version < 1:
            raise ZflashError(Code.UNSUPPORTED_PROTOCOL, f"peer offers fastboot-TCP version "
                                                         f"{version}")
        self.version = min(version, TCP_VERSION)

    def _start_message(self, length: int, out: list[Fragment]) -> None:
        if self.max_message is not None and length > self.max_message:
            raise ZflashError(Code.PROTOCOL, f"peer announced a {length}-byte message; the "
                                             f"limit is {self.max_message}")
        if length == 0:
            out.append((memoryview(b""), True))
        else:
            self._left = length
