"""ZDL framing (zdl.md section 2): encode one frame, and find frames again in any byte stream.

The decoder is the only place that looks at raw bytes. It accepts data in chunks of any size
(empty ones included, as USB zero-length packets arrive), rejects a candidate header before it
buffers the payload, rescans after a bad CRC so no frame hidden behind a corrupted length is
lost, and copies a payload at most once when fed ``bytes`` (zero times when a whole frame sits
in one chunk). It raises nothing on bad input: garbage only shows up as ``Damage`` and counters.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from zflash.errors import Code, ZflashError
from zflash.protocol.zdl.constants import (
    CHUNKABLE_TYPES,
    CRC_SIZE,
    FLAG_CHUNK,
    HEADER,
    HEADER_SIZE,
    KNOWN_TYPES,
    MAX_SEQ,
    SYNC,
    payload_limit,
)

Buffer = bytes | bytearray | memoryview

_SYNC0 = SYNC[0]
_crc32 = zlib.crc32


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame that passed its CRC. ``payload`` is a read-only view nobody else reuses."""

    type: int
    flags: int
    seq: int
    payload: memoryview

    @property
    def wire_size(self) -> int:
        return HEADER_SIZE + len(self.payload) + CRC_SIZE


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes that were not part of any valid frame: ``skipped`` garbage bytes, or one bad CRC."""

    skipped: int = 0
    crc_error: bool = False


def encode_frame(msg_type: int, seq: int, payload: Buffer = b"", flags: int = 0) -> bytes:
    """One frame as bytes (sync, header, payload, CRC)."""
    return encode_frame_parts(msg_type, seq, (payload,), flags)


def encode_frame_parts(msg_type: int, seq: int, parts: Sequence[Buffer], flags: int = 0) -> bytes:
    """One frame whose payload is the concatenation of ``parts``, built with a single copy.

    Lets a WRITE_BLOCK carry a large block without first joining sub-header and data.
    """
    if not 0 <= seq <= MAX_SEQ or not 0 <= flags <= 0xFF or msg_type not in KNOWN_TYPES:
        raise ZflashError(Code.INTERNAL, f"bad frame fields type={msg_type} seq={seq}")
    length = sum(len(p) for p in parts)
    header = HEADER.pack(msg_type, flags, seq, length)
    crc = _crc32(header)
    for part in parts:
        crc = _crc32(part, crc)
    return b"".join((SYNC, header, *parts, crc.to_bytes(4, "little")))


class FrameDecoder:
    """Bytes in, ``Frame`` and ``Damage`` out, in stream order (zdl.md 2.3).

    ``push`` stores data (by reference when it is ``bytes``); ``next`` decodes one item at a
    time, so a limit raised by the frame just returned (the WELCOME) already applies to the
    next one. ``feed`` does both for callers that want a list. ``max_data`` is the negotiated
    limit (None before the handshake). Counters: ``frames``, ``crc_errors``, ``skipped_bytes``,
    ``abandoned`` (candidates given up by ``abandon_partial``), ``candidate_bytes`` (bytes
    collected into frames whose header passed its checks, complete or not: a large frame on a
    slow line shows it is still arriving long before its CRC can be checked).
    """

    def __init__(self, max_data: int | None = None) -> None:
        self.max_data = max_data
        self.frames = 0
        self.crc_errors = 0
        self.skipped_bytes = 0
        self._work: list[tuple[bytes, int]] = []  # stack of (buffer, position) still to scan
        self._ready: deque[Frame | Damage] = deque()
        self._pending = bytearray()          # start of a candidate header (< HEADER_SIZE bytes)
        self._head = b""                     # header bytes (after sync) of the frame in progress
        self._body: bytearray | None = None  # payload + CRC being collected
        self._have = 0
        self._skip_run = 0
        self.abandoned = 0
        self.candidate_bytes = 0

    def reset(self) -> None:
        """Forget any partial frame and unread input (e.g. after a baud-rate change)."""
        self._work.clear()
        self._pending.clear()
        self._body = None
        self._have = 0

    @property
    def partial(self) -> bool:
        """Whether a candidate frame is waiting for more bytes (all input scanned)."""
        return not self._work and (self._body is not None or bool(self._pending))

    @property
    def in_frame(self) -> bool:
        """Whether a frame whose header passed its checks is still arriving (its payload or
        CRC incomplete): the one state in which a peer may take long without a new frame."""
        return self._body is not None

    def abandon_partial(self) -> bool:
        """The line went quiet inside a candidate frame: give it up and rescan its bytes.

        A sender writes each frame back to back, so a frame that stops half way is a damaged
        length field (or a lost tail). Waiting for the rest would wait for bytes that may never
        come: a lone request is far shorter than a bogus length of up to ``MAX_DATA``. The
        caller decides what "quiet" means (zdl.md 2.3); True when a candidate was dropped.
        """
        if not self.partial:
            return False
        if self._body is not None:
            rest = SYNC[1:] + self._head + bytes(self._body[:self._have])
            self._body, self._have = None, 0
        else:
            rest = bytes(self._pending[1:])
            self._pending.clear()
        self.abandoned += 1
        self._skip(1)
        if rest:
            self._work.append((rest, 0))
        return True

    def push(self, data: Buffer) -> None:
        """Queue received bytes (any size; empty is ignored, as USB zero-length packets are)."""
        if data:
            # A bytes object cannot change under us, so frames may be views of it; a caller's
            # bytearray or memoryview may be reused, so it is copied once here.
            self._work.insert(0, (data if type(data) is bytes else bytes(data), 0))

    def next(self) -> Frame | Damage | None:
        """The next frame or damage report, or None when more bytes are needed."""
        while not self._ready and self._work:
            buf, pos = self._work.pop()
            self._scan(buf, pos)
        if not self._ready:
            self._flush_skips()
        return self._ready.popleft() if self._ready else None

    def feed(self, data: Buffer) -> list[Frame | Damage]:
        """``push`` then every item ``next`` can give."""
        self.push(data)
        out: list[Frame | Damage] = []
        while (item := self.next()) is not None:
            out.append(item)
        return out

    # -- internals --------------------------------------------------------------------------

    def _skip(self, count: int) -> None:
        self.skipped_bytes += count
        self._skip_run += count

    def _flush_skips(self) -> None:
        if self._skip_run:
            self._ready.append(Damage(skipped=self._skip_run))
            self._skip_run = 0

    def _parse_header(self, head: Buffer) -> tuple[int, int, int, int] | None:
        """The header fields, or None when the candidate cannot start a valid frame."""
        msg_type, flags, seq, length = HEADER.unpack(head)
        if msg_type not in KNOWN_TYPES or flags & ~FLAG_CHUNK:
            return None
        if flags & FLAG_CHUNK and msg_type not in CHUNKABLE_TYPES:
            return None
        if length > payload_limit(msg_type, self.max_data):
            return None
        return msg_type, flags, seq, length

    def _emit(self, fields: tuple[int, int, int, int], payload: memoryview) -> None:
        self._flush_skips()
        self.frames += 1
        self._ready.append(Frame(fields[0], fields[1], fields[2], payload.toreadonly()))

    def _bad_crc(self) -> None:
        self._flush_skips()
        self.crc_errors += 1
        self._ready.append(Damage(crc_error=True))
        self._skip(1)  # the first sync byte; everything after it is scanned again

    def _scan(self, buf: bytes, pos: int) -> None:
        """Scan ``buf`` from ``pos`` until one item is ready; push back what is left."""
        view = memoryview(buf)
        end = len(buf)
        while pos < end:
            if self._ready:
                self._work.append((buf, pos))
                return
            if self._body is not None:
                body = self._body
                take = min(len(body) - self._have, end - pos)
                body[self._have:self._have + take] = view[pos:pos + take]
                self._have += take
                self.candidate_bytes += take
                pos += take
                if self._have < len(body):
                    return
                self._body = None
                head = self._head
                fields = HEADER.unpack(head)
                length = fields[3]
                body_view = memoryview(body)
                payload = body_view[:length]
                if _crc32(payload, _crc32(head)) == int.from_bytes(body_view[length:], "little"):
                    self._emit(fields, payload)
                    continue
                self._bad_crc()
                self._work.append((buf, pos))
                self._work.append((SYNC[1:] + head + bytes(body), 0))
                return
            if self._pending:
                pending = self._pending
                take = min(HEADER_SIZE - len(pending), end - pos)
                pending += view[pos:pos + take]
                pos += take
                if len(pending) < HEADER_SIZE:
                    return
                candidate = bytes(pending)
                pending.clear()
                fields = self._parse_header(candidate[2:]) if candidate[:2] == SYNC else None
                if fields is None:
                    self._skip(1)
                    self._work.append((buf, pos))
                    self._work.append((candidate[1:], 0))
                    return
                self._start_body(candidate[2:], fields[3])
                continue
            found = buf.find(SYNC, pos)
            if found < 0:
                keep = 1 if buf[end - 1] == _SYNC0 else 0
                self._skip(end - pos - keep)
                if keep:
                    self._pending += view[end - 1:end]
                return
            if found > pos:
                self._skip(found - pos)
                pos = found
            if end - pos < HEADER_SIZE:
                self._pending += view[pos:end]
                return
            fields = self._parse_header(view[pos + 2:pos + HEADER_SIZE])
            if fields is None:
                self._skip(1)
                pos += 1
                continue
            length = fields[3]
            start = pos + HEADER_SIZE
            if end - start >= length + CRC_SIZE:
                payload = view[start:start + length]
                stored = int.from_bytes(view[start + length:start + length + CRC_SIZE], "little")
                if _crc32(payload, _crc32(view[pos + 2:start])) != stored:
                    self._bad_crc()
                    pos += 1
                    continue
                self._emit(fields, payload)
                pos = start + length + CRC_SIZE
                continue
            self._start_body(bytes(view[pos + 2:start]), length)
            pos = start

    def _start_body(self, head: bytes, length: int) -> None:
        self.candidate_bytes += HEADER_SIZE
        self._head = head
        self._body = bytearray(length + CRC_SIZE)
        self._have = 0
