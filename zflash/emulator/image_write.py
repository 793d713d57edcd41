"""Write a raw or Android sparse image into a partition file, as a fastboot bootloader does.

Why a module of its own: fastboot hands the device whole images (raw, or sparse in libsparse's
format), while the ZDL path writes hash-checked blocks; the emulated device needs both, and
this one job (bounded, streaming, sparse-aware writing) is easier to test apart.

Rules (what the stock fastboot client relies on):
* RAW and FILL chunks are written; DONT_CARE blocks keep what is on flash. The pieces of a
  split image are DONT_CARE outside their range, so flashing them in order gives the image.
* After the image's end the partition reads as zeros (the emulator's choice: a flashed
  partition then equals its source image padded with zeros, whatever was there before).
* An image larger than the partition is refused before anything is written (9023).
* A sparse image is validated whole (every header, chunk size, CRC, truncation) before the
  first byte is written: a malformed download is 9005 and the partition stays byte-identical.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from zflash.errors import Code, ZflashError
from zflash.package.sparse import ChunkType, SparseReader, validate_sparse

COPY_PIECE = 8 << 20
FILL_PIECE = 1 << 20


def write_image(path: os.PathLike[str] | str, capacity: int, source: BinaryIO, size: int,
                sparse: bool) -> int:
    """Write ``size`` bytes of ``source`` (raw or sparse) into ``path``; returns image size.

    ``source`` must be seekable (the device's download buffer): a sparse image is read twice,
    once to validate it and once to write it.
    """
    if sparse:
        _check_fits(validate_sparse(source).expanded_size, capacity)
    with open(path, "r+b") as out:
        if sparse:
            end = _write_sparse(out, capacity, source)
        else:
            _check_fits(size, capacity)
            _copy_raw(out, source, size)
            end = size
        if end < capacity:
            out.truncate(end)  # zeros after the image, without writing them
            out.truncate(capacity)
        out.flush()
        os.fsync(out.fileno())
    return end


def erase(path: os.PathLike[str] | str, capacity: int) -> None:
    """All zeros (fastboot ``erase``)."""
    with open(path, "r+b") as out:
        out.truncate(0)
        out.truncate(capacity)
        os.fsync(out.fileno())


def _check_fits(size: int, capacity: int) -> None:
    if size > capacity:
        raise ZflashError(Code.IMAGE_TOO_LARGE, f"image of {size} bytes does not fit the "
                                        f"{capacity}-byte partition")


def _copy_raw(out: BinaryIO, source: BinaryIO, size: int) -> None:
    """Kernel-side copy when both are files (copy_file_range), else a bounded loop."""
    start = source.tell()
    done = _kernel_copy(out, source, start, size)
    if done == size:
        return
    source.seek(start + done)
    out.seek(done)
    left = size - done
    buf = bytearray(min(COPY_PIECE, left))
    view = memoryview(buf)
    while left:
        n = source.readinto(view[:min(len(buf), left)])  # type: ignore[attr-defined]
        if not n:
            raise ZflashError(Code.MALFORMED_IMAGE, f"image ended {left} bytes early")
        out.write(view[:n])
        left -= n


def _kernel_copy(out: BinaryIO, source: BinaryIO, start: int, size: int) -> int:
    """Bytes copied with copy_file_range (explicit offsets: file positions do not move)."""
    done = 0
    try:
        src_fd, dst_fd = source.fileno(), out.fileno()
        while done < size:
            n = os.copy_file_range(src_fd, dst_fd, min(size - done, 1 << 30), start + done,
                                   done)
            if n <= 0:
                break
            done += n
    except (AttributeError, OSError, ValueError):
        pass  # not real files, or the filesystem cannot: the caller copies the rest
    return done


def _write_sparse(out: BinaryIO, capacity: int, source: BinaryIO) -> int:
    reader = SparseReader(source, check_crc=False)  # validated by write_image
    _check_fits(reader.total_size, capacity)
    fd = out.fileno()
    for chunk in reader.iter_chunks():
        if chunk.type is ChunkType.RAW:
            offset = chunk.offset
            while data := chunk.read(COPY_PIECE):
                os.pwrite(fd, data, offset)
                offset += len(data)
        elif chunk.type is ChunkType.FILL:
            assert chunk.fill is not None
            _fill(fd, chunk.offset, chunk.size, chunk.fill)
    return reader.total_size


def _fill(fd: int, offset: int, length: int, pattern: bytes) -> None:
    piece = pattern * (FILL_PIECE // 4)
    while length:
        n = min(length, len(piece))
        os.pwrite(fd, piece[:n] if n < len(piece) else piece, offset)
        offset += n
        length -= n
