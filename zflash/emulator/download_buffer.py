"""The emulated bootloader's download buffer: where fastboot's ``download`` data waits for
``flash``, kept for as long as the device serves, as a real bootloader keeps its RAM buffer.

Why a buffer that outlives a connection: a fresh temp file per connection freed up to
max-download-size of page cache when the connection ended and allocated as much again at the
next download. On the bench machine (a 2-vCPU VM) the first touch of those pages cost 0.3-1.4 s
in random rounds, whichever client was flashing, and more while the host's other core was
busy, which made the stock-vs-zflash comparison mostly noise (D204). Overwriting the same file
in place costs only the copy.

Each download is cut to its own size when it ends, so a reader meets the end of the file
exactly where the download ended, never bytes of an earlier, longer one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import BinaryIO


class DownloadBuffer:
    """One device's staging file (created at the first download, in the device's storage
    directory, deleted when closed); one download at a time."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._file: BinaryIO | None = None

    def begin(self) -> None:
        """A new download starts at offset 0; the previous one is overwritten in place."""
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self._directory)
        self._file.seek(0)

    def write(self, data: bytes | memoryview) -> None:
        assert self._file is not None, "write before begin"
        self._file.write(data)

    def end(self) -> int:
        """The download is complete: its size, with the file cut there."""
        assert self._file is not None, "end before begin"
        self._file.flush()
        size = self._file.tell()
        self._file.truncate(size)
        return size

    def reader(self) -> BinaryIO:
        """The staged bytes, positioned at their start (for flash and upload)."""
        assert self._file is not None, "nothing was downloaded"
        self._file.seek(0)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
