"""A partition's image as Android sparse pieces, straight from the package's verified blocks.

Constant blocks become FILL chunks, zeros included: the device writes them, so the slot ends
up equal to the image whatever it held. Pieces fit ``max-download-size``.
"""

from __future__ import annotations

import tempfile
from typing import Iterator

from zflash.targets.blocks import PartitionBlocks
from zflash.package.sparse import SparsePiece, is_sparse, split_sparse, write_sparse

SPARSE_BLOCK_SIZES = (4096, 512)  # the first whose padding still fits the partition


def sparse_block_size(size: int, capacity: int | None) -> int | None:
    """The sparse block size for an image: a sparse image is whole blocks, so the padded
    image must still fit the partition (any size fits an unknown capacity)."""
    for block_size in SPARSE_BLOCK_SIZES:
        if capacity is None or -(-size // block_size) * block_size <= capacity:
            return block_size
    return None


class _ImageStream:
    """A partition's raw image as a read-only stream, expanded from the package's blocks
    (each checked against the signed table as it is read); memory: one block."""

    def __init__(self, blocks: PartitionBlocks) -> None:
        self._blocks = blocks.raw(set())
        self._buf = memoryview(b"")

    def _fill(self) -> bool:
        while not len(self._buf):
            item = next(self._blocks, None)
            if item is None:
                return False
            self._buf = memoryview(item[1])
        return True

    def peek(self, n: int) -> bytes:
        return bytes(self._buf[:n]) if self._fill() else b""

    def read(self, n: int = -1) -> bytes:
        if not self._fill():
            return b""
        n = len(self._buf) if n < 0 else n
        data, self._buf = bytes(self._buf[:n]), self._buf[n:]
        return data


def image_pieces(blocks: PartitionBlocks, limit: int,
                 block_size: int) -> Iterator[SparsePiece]:
    """The image of ``part`` as complete sparse pieces of at most ``limit`` bytes.

    Constant blocks become FILL chunks, zeros included: the device writes them, so the slot
    ends up equal to the image whatever it held. A raw image that itself begins with the
    sparse magic is converted through a temporary sparse file, so that it is sent as the
    bytes it is, never reinterpreted as a sparse image.
    """
    part = blocks.part
    stream = _ImageStream(blocks)
    if not is_sparse(stream.peek(4)):
        yield from split_sparse(stream, limit, block_size=block_size,  # type: ignore[arg-type]
                                size=part.size)
        return
    with tempfile.TemporaryFile() as tmp:
        write_sparse(stream, tmp, block_size, size=part.size)  # type: ignore[arg-type]
        tmp.seek(0)
        yield from split_sparse(tmp, limit)
