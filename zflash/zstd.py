"""zstd for blocks of at most a few hundred KiB: compress, and decompress with a hard bound.

Why a module of its own: the package format (zpk.md 6) and the ZDL wire (zdl.md 3.3) decode
the same kind of block under the same rule, a stored block decodes to exactly its declared
raw length and a larger claim is refused before any output is made, and neither may import
the other. The backend is the ``zstandard`` package (a dependency), else ``compression.zstd``
(Python 3.14+); the import happens on first use, so commands that never see a zstd block do
not pay for it.

Bounds: the frame header must state the content size and it must equal the expected length
(a frame without one, or claiming more, is refused before decoding), and the window may not
exceed ``MAX_WINDOW``. libzstd then refuses a frame whose blocks decode past the stated size,
so a decompression bomb costs at most one block of memory.
"""

from __future__ import annotations

import threading
from typing import Any

Buffer = bytes | bytearray | memoryview

#: Largest window a block frame may ask for: a block is at most 1 MiB (ZDL max_data).
MAX_WINDOW = 1 << 20
DEFAULT_LEVEL = 19


class ZstdError(ValueError):
    """A stored block is not one zstd frame of exactly the expected length (or no backend)."""


_backend: Any = None


def _load() -> Any:
    global _backend
    if _backend is None:
        try:
            import zstandard
            _backend = _ZstandardBackend(zstandard)
        except ImportError:
            try:
                from compression import zstd as stdlib_zstd  # type: ignore[import-not-found]
                _backend = _StdlibBackend(stdlib_zstd)
            except ImportError:
                _backend = False
    if _backend is False:
        raise ZstdError("zstd support is not installed (pip install zstandard)")
    return _backend


def available() -> bool:
    """Whether this process can encode and decode zstd blocks."""
    try:
        _load()
    except ZstdError:
        return False
    return True


def compress(data: Buffer, level: int = DEFAULT_LEVEL) -> bytes:
    """One frame with the content size in its header (which ``decompress`` requires)."""
    return _load().compress(data, level)


def decompress(data: Buffer, length: int) -> bytes:
    """The raw bytes of one frame that decodes to exactly ``length`` bytes, else ZstdError."""
    if length < 1:
        raise ZstdError("empty block")
    return _load().decompress(data, length)


def _check_header(content_size: int | None, window: int | None, length: int) -> None:
    if content_size is None:
        raise ZstdError("zstd frame does not state its content size")
    if content_size != length:
        raise ZstdError(f"zstd frame claims {content_size} bytes, the block has {length}")
    if window is not None and window > MAX_WINDOW:
        raise ZstdError(f"zstd frame asks for a {window}-byte window (limit {MAX_WINDOW})")


class _ZstandardBackend:
    def __init__(self, module: Any) -> None:
        self._z = module
        self._compressors: dict[int, Any] = {}
        self._error: type[Exception] = module.ZstdError
        self._local = threading.local()

    def compress(self, data: Buffer, level: int) -> bytes:
        # One compressor per level and thread would be faster; the writer's pool reuses
        # threads, and a ZstdCompressor must not be shared between threads.
        return self._z.ZstdCompressor(level=level, write_content_size=True).compress(data)

    def decompress(self, data: Buffer, length: int) -> bytes:
        try:
            params = self._z.get_frame_parameters(data)
        except self._error as exc:
            raise ZstdError(f"not a zstd frame ({exc})") from None
        size = params.content_size
        _check_header(None if size == self._z.CONTENTSIZE_UNKNOWN else size,
                      params.window_size, length)
        try:  # one shot into a buffer of the stated (checked) size: longer output fails
            out = self._decompressor().decompress(data, max_output_size=length,
                                                  allow_extra_data=False)
        except self._error as exc:
            raise ZstdError(f"corrupt zstd frame ({exc})") from None
        if len(out) != length:
            raise ZstdError("zstd frame does not decode to exactly the block")
        return out

    def _decompressor(self) -> Any:
        """This thread's decompressor (one must not be shared between threads), made once:
        making one per block was a fifth of the decoding time (D191)."""
        made = getattr(self._local, "decompressor", None)
        if made is None:
            made = self._local.decompressor = self._z.ZstdDecompressor(
                max_window_size=MAX_WINDOW)
        return made


class _StdlibBackend:
    def __init__(self, module: Any) -> None:
        self._z = module

    def compress(self, data: Buffer, level: int) -> bytes:
        return self._z.compress(bytes(data), level=level)

    def decompress(self, data: Buffer, length: int) -> bytes:
        data = bytes(data)
        try:
            info = self._z.get_frame_info(data)
        except self._z.ZstdError as exc:
            raise ZstdError(f"not a zstd frame ({exc})") from None
        _check_header(info.decompressed_size, None, length)
        inflater = self._z.ZstdDecompressor(
            options={self._z.DecompressionParameter.window_log_max: MAX_WINDOW.bit_length() - 1})
        try:
            out = inflater.decompress(data, max_length=length)
        except self._z.ZstdError as exc:
            raise ZstdError(f"corrupt zstd frame ({exc})") from None
        if len(out) != length or not inflater.eof or inflater.unused_data:
            raise ZstdError("zstd frame does not decode to exactly the block")
        return out


