"""Partition images as input: raw files or Android sparse images, read as one block stream.

Callers see only the expanded content, so raw and sparse forms of the same image are
indistinguishable downstream (and give byte-identical packages). Only regular files are
images: a device node or a pipe (``/dev/zero``) has no size to sign and may never end.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from zflash.errors import Code, ZflashError
from zflash.package import sparse


class ImageSource:
    """An opened image; ``size`` is the expanded size in bytes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer before we can refuse it.
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise ZflashError(Code.FILE_UNREADABLE, f"{path} is not a regular file (a device or "
                                                    "pipe has no fixed size to sign)")
        os.set_blocking(fd, True)
        self._file: BinaryIO = os.fdopen(fd, "rb")
        try:
            self.is_sparse = sparse.is_sparse(self._file.read(4))
            self._file.seek(0)
            if self.is_sparse:
                self._sparse = sparse.SparseReader(self._file)
                self.size = self._sparse.total_size
            else:
                self.size = info.st_size
        except BaseException:
            self._file.close()
            raise

    def iter_blocks(self, block_size: int) -> Iterator[bytes]:
        """The expanded content in ``block_size`` pieces (the last may be short)."""
        if not self.is_sparse:
            self._file.seek(0)
            left = self.size  # the size seen at open: a file that grows is not read on
            while left and (block := self._file.read(min(block_size, left))):
                left -= len(block)
                yield block
            return
        pending = bytearray()
        for piece in sparse.iter_expanded(self._sparse):
            pending += piece
            if len(pending) >= block_size:
                view = memoryview(pending)
                whole = len(pending) - len(pending) % block_size
                for start in range(0, whole, block_size):
                    yield bytes(view[start:start + block_size])
                view.release()
                del pending[:whole]
        if pending:
            yield bytes(pending)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_image(path: Path) -> ImageSource:
    return ImageSource(path)
