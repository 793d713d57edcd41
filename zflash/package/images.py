"""Partition images as input: raw files or Android sparse images, read as one block stream.

Callers see only the expanded content, so raw and sparse forms of the same image are
indistinguishable downstream (and give byte-identical packages).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Iterator

from zflash.errors import Code, ZflashError
from zflash.package import sparse


class ImageSource:
    """An opened image; ``size`` is the expanded size in bytes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._file: BinaryIO = open(self.path, "rb")
        except OSError as exc:
            raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None
        self.is_sparse = sparse.is_sparse(self._file.read(4))
        self._file.seek(0)
        if self.is_sparse:
            self._sparse = sparse.SparseReader(self._file)
            self.size = self._sparse.total_size
        else:
            self.size = os.fstat(self._file.fileno()).st_size

    def iter_blocks(self, block_size: int) -> Iterator[bytes]:
        """The expanded content in ``block_size`` pieces (the last may be short)."""
        if not self.is_sparse:
            self._file.seek(0)
            while block := self._file.read(block_size):
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
