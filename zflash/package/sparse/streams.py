"""Stream helpers: exact reads over short-reading pipes, peeking, spooled temporary files.

Images come from files, pipes and sockets alike and can be many GiB; these helpers let the
reader, the writer and the splitter treat every source the same way with bounded memory.
"""

from __future__ import annotations

import os
from typing import BinaryIO, cast

from zflash.package.sparse.format import SPOOL_LIMIT, _malformed


def _read_upto(fileobj: BinaryIO, n: int) -> bytes:
    """Read n bytes or up to EOF; pipes and sockets return short reads, so loop."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        part = fileobj.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _read_exact(fileobj: BinaryIO, n: int, what: str) -> bytes:
    """Read exactly n bytes (n is always bounded by the caller); EOF means truncation."""
    data = _read_upto(fileobj, n)
    if len(data) < n:
        raise _malformed(f"file truncated in {what}: needed {n} bytes, found {len(data)}")
    return data


def _seekable(fileobj: object) -> bool:
    try:
        return bool(fileobj.seekable())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _bytes_left(fileobj: BinaryIO) -> int | None:
    """Bytes from the position to EOF, when the stream can tell (for early sanity checks)."""
    if not _seekable(fileobj):
        return None
    try:
        pos = fileobj.tell()
        end = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(pos)
    except (OSError, ValueError):
        return None
    return end - pos


class _Prefixed:
    """A non-seekable stream with some already-read bytes put back in front (a peek)."""

    def __init__(self, prefix: bytes, inner: BinaryIO) -> None:
        self._prefix = prefix
        self._inner = inner

    def read(self, n: int = -1) -> bytes:
        if not self._prefix:
            return self._inner.read(n)
        if n < 0:
            n = len(self._prefix)
        data, self._prefix = self._prefix[:n], self._prefix[n:]
        return data

    def seekable(self) -> bool:
        return False


def _peek(fileobj: BinaryIO, n: int) -> tuple[bytes, BinaryIO]:
    """The first n bytes, and a stream that still starts at them."""
    if _seekable(fileobj):
        pos = fileobj.tell()
        head = _read_upto(fileobj, n)
        fileobj.seek(pos)
        return head, fileobj
    head = _read_upto(fileobj, n)
    return head, cast(BinaryIO, _Prefixed(head, fileobj))


def _spool() -> BinaryIO:
    """A temporary file kept in memory up to SPOOL_LIMIT bytes, then moved to disk."""
    import tempfile  # here, not at the top: ~5 ms of imports a host that only reads skips
    return cast(BinaryIO, tempfile.SpooledTemporaryFile(SPOOL_LIMIT))
