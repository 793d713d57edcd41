"""Android sparse images: round trips, libsparse interop, fastboot splitting, hostile input."""

from __future__ import annotations

import io
import random
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zflash.errors import Code, ZflashError
from conftest import require_tool
from zflash.package import sparse
from zflash.package.sparse import ChunkType, SparseReader

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- helpers ----------------------------------------------------------------------------------

class Stream:
    """A non-seekable stream that returns short reads and records the largest request."""

    def __init__(self, data: bytes, chunk: int = 1 << 30) -> None:
        self._buf = io.BytesIO(data)
        self._chunk = chunk
        self.largest = 0
        self.written = bytearray()

    def read(self, n: int = -1) -> bytes:
        self.largest = max(self.largest, n)
        return self._buf.read(min(n, self._chunk) if n >= 0 else self._chunk)

    def write(self, data: bytes) -> int:
        self.written += data
        return len(data)

    def seekable(self) -> bool:
        return False


def padded(raw: bytes, bs: int) -> bytes:
    return raw + bytes(-len(raw) % bs)


def expand(data: bytes) -> bytes:
    out = io.BytesIO()
    sparse.expand_to(io.BytesIO(data), out)
    return out.getvalue()


def to_sparse(raw: bytes, bs: int = 4096, **kwargs: object) -> bytes:
    out = io.BytesIO()
    sparse.write_sparse(io.BytesIO(raw), out, bs, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


def chunk(kind: int, blocks: int, payload: bytes = b"", total: int | None = None,
          hdr: int = 12) -> bytes:
    total = hdr + len(payload) if total is None else total
    return struct.pack("<HHII", kind, 0, blocks, total) + bytes(hdr - 12) + payload


def image(chunks: list[bytes], bs: int, total_blks: int, total_chunks: int | None = None,
          checksum: int = 0, magic: int = sparse.MAGIC, major: int = 1, fhs: int = 28,
          chs: int = 12) -> bytes:
    count = len(chunks) if total_chunks is None else total_chunks
    head = struct.pack("<IHHHHIIII", magic, major, 0, fhs, chs, bs, total_blks, count, checksum)
    return head + bytes(max(0, fhs - 28)) + b"".join(chunks)


def sample_chunks(bs: int = 64, hdr: int = 12) -> tuple[list[bytes], bytes]:
    """Every chunk type, with a correct CRC32 chunk; returns (chunks, expected output)."""
    data = bytes(range(256))[: 2 * bs]
    out = data + b"wxyz" * (3 * bs // 4) + bytes(bs)
    crc = zlib.crc32(out)
    tail = bytes(reversed(range(bs)))
    chunks = [chunk(0xCAC1, 2, data, hdr=hdr), chunk(0xCAC2, 3, b"wxyz", hdr=hdr),
              chunk(0xCAC3, 1, hdr=hdr), chunk(0xCAC4, 0, struct.pack("<I", crc), hdr=hdr),
              chunk(0xCAC1, 1, tail, hdr=hdr)]
    return chunks, out + tail


def sample_image(**kwargs: object) -> tuple[bytes, bytes]:
    chunks, out = sample_chunks()
    return image(chunks, 64, 7, checksum=zlib.crc32(out), **kwargs), out  # type: ignore[arg-type]


def assert_malformed(data: bytes, seekable: bool = True) -> None:
    with pytest.raises(ZflashError) as info:
        source = io.BytesIO(data) if seekable else Stream(data, 5)
        sparse.expand_to(source, io.BytesIO())  # type: ignore[arg-type]
    assert info.value.code == Code.MALFORMED_IMAGE


@st.composite
def raw_images(draw: st.DrawFn, block_sizes: tuple[int, ...] = (4, 8, 64, 512, 4096),
               max_runs: int = 8) -> tuple[int, bytes]:
    """Block-aligned runs of data, zeros and fill patterns, odd-length runs and an odd tail."""
    bs = draw(st.sampled_from(block_sizes))
    rng = random.Random(draw(st.integers(0, 2**32)))
    parts = []
    for kind, n in draw(st.lists(st.tuples(st.sampled_from("dzfo"), st.integers(1, 6)),
                                 max_size=max_runs)):
        if kind == "d":
            parts.append(rng.randbytes(n * bs))
        elif kind == "z":
            parts.append(bytes(n * bs))
        elif kind == "f":
            parts.append(rng.randbytes(4) * (n * bs // 4))
        else:
            parts.append(rng.choice([bytes(1), rng.randbytes(1)]) * rng.randrange(1, n * bs + 1))
    parts.append(rng.randbytes(draw(st.integers(0, bs - 1))))
    return bs, b"".join(parts)


def tools() -> tuple[str, str]:
    """The stock tools, through conftest's rule (skip locally, fail in CI when missing)."""
    return require_tool("img2simg"), require_tool("simg2img")


def mixed_image(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        kind, length = rng.randrange(4), rng.choice((4096, 8192, 12288, 5000))
        out += [rng.randbytes(length), bytes(length), b"\x5a\xa5\x00\xff" * (length // 4),
                b"text " * (length // 5)][kind]
    return bytes(out[:size])


# --- round trip -------------------------------------------------------------------------------

def test_is_sparse() -> None:
    assert sparse.is_sparse(struct.pack("<I", 0xED26FF3A) + b"rest")
    assert not sparse.is_sparse(b"\x3a\xff\x26")
    assert not sparse.is_sparse(struct.pack(">I", 0xED26FF3A))


@FAST
@given(raw_images(), st.booleans(), st.booleans())
def test_round_trip(sample: tuple[int, bytes], zero_as_dont_care: bool, streams: bool) -> None:
    bs, raw = sample
    src = Stream(raw, 1000) if streams else io.BytesIO(raw)
    out = Stream(b"") if streams else io.BytesIO()
    stats = sparse.write_sparse(src, out, bs,  # type: ignore[arg-type]
                                zero_as_dont_care=zero_as_dont_care)
    data = bytes(out.written) if isinstance(out, Stream) else out.getvalue()
    assert stats.total_blocks == -(-len(raw) // bs)
    assert stats.input_size == len(raw) and stats.output_size == len(data)
    assert stats.raw_blocks + stats.fill_blocks + stats.dont_care_blocks == stats.total_blocks
    assert expand(data) == padded(raw, bs)
    assert to_sparse(raw, bs, zero_as_dont_care=zero_as_dont_care) == data  # deterministic


def test_writer_merges_runs_into_chunks() -> None:
    bs = 4096
    rng = random.Random(5)
    raw = rng.randbytes(3 * bs) + bytes(5 * bs) + b"abcd" * (2 * bs // 4) + rng.randbytes(100)
    for dont_care, zero_type in ((False, ChunkType.FILL), (True, ChunkType.DONT_CARE)):
        reader = SparseReader(io.BytesIO(to_sparse(raw, bs, zero_as_dont_care=dont_care)))
        assert (reader.block_size, reader.total_blocks, reader.image_checksum) == (bs, 11, 0)
        assert reader.total_size == 11 * bs
        found = [(c.type, c.start_block, c.block_count, c.fill) for c in reader.iter_chunks()]
        assert found == [(ChunkType.RAW, 0, 3, None),
                         (zero_type, 3, 5, bytes(4) if not dont_care else None),
                         (ChunkType.FILL, 8, 2, b"abcd"), (ChunkType.RAW, 10, 1, None)]


def test_write_sparse_size_argument() -> None:
    raw = random.Random(1).randbytes(10000)
    assert expand(to_sparse(raw, 4096, size=5000)) == padded(raw[:5000], 4096)
    with pytest.raises(ZflashError) as info:
        to_sparse(raw, 4096, size=20000)
    assert info.value.code == Code.MALFORMED_IMAGE
    for bad in (0, 6, -4):
        with pytest.raises(ZflashError) as info:
            to_sparse(raw, bad)
        assert info.value.code == Code.USAGE


def test_iter_ranges_reports_kinds_and_bounds_pieces() -> None:
    chunks, out = sample_chunks()
    extents = list(sparse.iter_ranges(io.BytesIO(image(chunks, 64, 7)), piece=40))
    assert all(e.data is None or len(e.data) == e.length <= 40 for e in extents)
    assert [e.offset for e in extents] == sorted(e.offset for e in extents)
    dont_care = [e for e in extents if e.data is None]
    assert [(e.offset, e.length) for e in dont_care] == [(5 * 64, 64)]
    assert {e.fill for e in extents if e.fill} == {b"wxyz"}
    assert b"".join(e.data or bytes(e.length) for e in extents) == out


def test_large_chunks_are_read_in_bounded_pieces() -> None:
    raw = random.Random(2).randbytes(5 << 20)
    src = Stream(raw)
    out = io.BytesIO()
    sparse.write_sparse(src, out)  # type: ignore[arg-type]
    assert src.largest <= sparse.PIECE
    assert SparseReader(io.BytesIO(out.getvalue())).total_blocks == 1280
    blob = out.getvalue()
    big = image([chunk(0xCAC1, 1280, raw)], 4096, 1280)
    for source in (blob, big):
        stream = Stream(source)
        sink = io.BytesIO()
        assert sparse.expand_to(stream, sink) == len(raw)  # type: ignore[arg-type]
        assert sink.getvalue() == raw and stream.largest <= sparse.PIECE


def test_crc_of_large_fill_and_dont_care() -> None:
    """FILL/DONT_CARE CRCs are computed arithmetically; check against zlib on the expansion."""
    bs = 4096
    out = b"\x01\x02\x03\x04" * (300 * bs // 4) + bytes(1000 * bs) + b"tail" * (bs // 4)
    chunks = [chunk(0xCAC2, 300, b"\x01\x02\x03\x04"), chunk(0xCAC3, 1000),
              chunk(0xCAC4, 0, struct.pack("<I", zlib.crc32(out[:1300 * bs]))),
              chunk(0xCAC1, 1, b"tail" * (bs // 4))]
    good = image(chunks, bs, 1301, checksum=zlib.crc32(out))
    assert expand(good) == out
    assert_malformed(image(chunks, bs, 1301, checksum=zlib.crc32(out) ^ 1))
    chunks[2] = chunk(0xCAC4, 0, struct.pack("<I", zlib.crc32(out[:1300 * bs]) ^ 1))
    assert_malformed(image(chunks, bs, 1301))


def test_reader_skips_larger_headers() -> None:
    chunks, out = sample_chunks(hdr=20)
    data = image(chunks, 64, 7, fhs=40, chs=20, checksum=zlib.crc32(out))
    assert expand(data) == out
    assert b"".join(sparse.iter_expanded(Stream(data, 3))) == out  # type: ignore[arg-type]


def test_iter_chunks_runs_once() -> None:
    reader = SparseReader(io.BytesIO(sample_image()[0]))
    list(reader.iter_chunks())
    with pytest.raises(RuntimeError):
        reader.iter_chunks()


# --- interop with libsparse's tools -----------------------------------------------------------

INTEROP = [(mixed_image(1, 300_000), 4096), (mixed_image(2, 64 * 4096), 4096),
           (bytes(50_000) + b"x", 4096), (mixed_image(3, 100_000), 1024)]


@pytest.mark.parametrize("raw,bs", INTEROP)
@pytest.mark.parametrize("dont_care", [False, True])
def test_simg2img_expands_our_output(tmp_path: Path, raw: bytes, bs: int, dont_care: bool) -> None:
    _, simg2img = tools()
    (tmp_path / "ours.simg").write_bytes(to_sparse(raw, bs, zero_as_dont_care=dont_care))
    subprocess.run([simg2img, str(tmp_path / "ours.simg"), str(tmp_path / "out.raw")],
                   check=True, capture_output=True)
    assert (tmp_path / "out.raw").read_bytes() == padded(raw, bs)


@pytest.mark.parametrize("raw,bs", INTEROP)
def test_we_expand_img2simg_output(tmp_path: Path, raw: bytes, bs: int) -> None:
    img2simg, _ = tools()
    (tmp_path / "in.raw").write_bytes(raw)
    subprocess.run([img2simg, str(tmp_path / "in.raw"), str(tmp_path / "their.simg"), str(bs)],
                   check=True, capture_output=True)
    theirs = (tmp_path / "their.simg").read_bytes()
    assert sparse.is_sparse(theirs)
    assert expand(theirs) == padded(raw, bs)
    streamed = sparse.iter_expanded(Stream(theirs, 777))  # type: ignore[arg-type]
    assert b"".join(streamed) == padded(raw, bs)


def test_simg2img_applies_our_split_pieces(tmp_path: Path) -> None:
    _, simg2img = tools()
    raw = mixed_image(4, 400_000)
    paths = []
    for piece in sparse.split_sparse(io.BytesIO(raw), 64 * 1024):
        path = tmp_path / f"piece{piece.index}.simg"
        data = piece.read()
        path.write_bytes(data)
        paths.append(path)
        subprocess.run([simg2img, str(path), str(tmp_path / "one.raw")], check=True,
                       capture_output=True)
        assert (tmp_path / "one.raw").read_bytes() == expand(data)
    assert len(paths) > 3
    subprocess.run([simg2img, *map(str, paths), str(tmp_path / "all.raw")], check=True,
                   capture_output=True)
    assert (tmp_path / "all.raw").read_bytes() == padded(raw, 4096)


# --- splitting --------------------------------------------------------------------------------

def apply_pieces(pieces: list[bytes], size: int) -> bytes:
    """Flash pieces in order onto a zeroed device: only RAW and FILL chunks write."""
    device = bytearray(size)
    for data in pieces:
        reader = SparseReader(io.BytesIO(data))
        for c in reader.iter_chunks():
            if c.type is ChunkType.RAW:
                device[c.offset:c.offset + c.size] = b"".join(c.iter_data())
            elif c.type is ChunkType.FILL:
                assert c.fill is not None
                device[c.offset:c.offset + c.size] = c.fill * (c.size // 4)
    return bytes(device)


def check_split(pieces: list[sparse.SparsePiece], blobs: list[bytes], max_size: int, bs: int,
                raw: bytes) -> None:
    total = -(-len(raw) // bs)
    slack = bs + 2 * sparse.CHUNK_HEADER_SIZE
    for i, (piece, blob) in enumerate(zip(pieces, blobs)):
        assert piece.index == i and piece.size == len(blob) <= max_size
        if i < len(blobs) - 1:
            assert len(blob) > max_size - slack
            if max_size >= 8 * slack:
                assert len(blob) * 8 >= max_size * 7
        reader = SparseReader(io.BytesIO(blob))
        assert (reader.block_size, reader.total_blocks) == (bs, total)
        assert len(expand(blob)) == total * bs
    assert apply_pieces(blobs, total * bs) == padded(raw, bs)


def run_split(source: object, max_size: int, **kwargs: object) -> tuple[list, list[bytes]]:
    pieces, blobs = [], []
    for piece in sparse.split_sparse(source, max_size, **kwargs):  # type: ignore[arg-type]
        pieces.append(piece)
        blobs.append(b"".join(piece.iter_bytes(1000)))
    return pieces, blobs


@FAST
@given(raw_images(block_sizes=(64, 512, 4096), max_runs=10), st.data())
def test_split_properties(sample: tuple[int, bytes], data: st.DataObject) -> None:
    bs, raw = sample
    form = data.draw(st.sampled_from(["raw", "stream", "sparse", "sparse-dont-care"]))
    low = sparse.min_split_size(bs)
    max_size = data.draw(st.one_of(st.integers(low, low + 3 * bs),
                                   st.integers(8 * (bs + 24), 8 * (bs + 24) + 8 * bs)))
    if form == "raw":
        source, kwargs = io.BytesIO(raw), {"block_size": bs}
    elif form == "stream":
        source, kwargs = Stream(raw, 999), {"block_size": bs, "size": len(raw)}
    else:
        source = io.BytesIO(to_sparse(raw, bs, zero_as_dont_care=form == "sparse-dont-care"))
        kwargs = {}
    pieces, blobs = run_split(source, max_size, **kwargs)
    assert pieces
    check_split(pieces, blobs, max_size, bs, raw)


def test_split_large_image_from_path(tmp_path: Path) -> None:
    raw = mixed_image(7, 3 << 20)
    path = tmp_path / "big.raw"
    path.write_bytes(raw)
    pieces, blobs = run_split(path, 1 << 20)
    assert len(pieces) >= 3
    check_split(pieces, blobs, 1 << 20, 4096, raw)
    sparse_path = tmp_path / "big.simg"
    sparse_path.write_bytes(to_sparse(raw))
    check_split(*run_split(str(sparse_path), 300_000), 300_000, 4096, raw)


def test_split_bounded_reads_and_closes_pieces() -> None:
    raw = random.Random(3).randbytes(4 << 20)
    stream = Stream(to_sparse(raw))
    seen = []
    for piece in sparse.split_sparse(stream, 3 << 20):  # type: ignore[arg-type]
        seen.append(piece)
        assert not piece.file.closed
    assert len(seen) == 2 and all(p.file.closed for p in seen)
    assert stream.largest <= sparse.PIECE


def test_split_all_dont_care_gives_one_piece() -> None:
    blob = to_sparse(bytes(10 * 4096), zero_as_dont_care=True)
    pieces, blobs = run_split(io.BytesIO(blob), 10_000)
    assert len(pieces) == 1 and expand(blobs[0]) == bytes(10 * 4096)


def test_split_errors() -> None:
    raw = bytes(8192)
    for source in (io.BytesIO(raw), io.BytesIO(to_sparse(raw))):
        with pytest.raises(ZflashError) as info:
            next(sparse.split_sparse(source, sparse.min_split_size(4096) - 1))
        assert info.value.code == Code.USAGE
    with pytest.raises(ZflashError) as info:
        next(sparse.split_sparse(Stream(raw), 1 << 20))  # type: ignore[arg-type]
    assert info.value.code == Code.USAGE
    with pytest.raises(ZflashError) as info:
        next(sparse.split_sparse("/nonexistent/zflash.img", 1 << 20))
    assert info.value.code == Code.FILE_UNREADABLE
    assert len(run_split(io.BytesIO(raw), sparse.min_split_size(4096))[0]) == 1


# --- hostile input ----------------------------------------------------------------------------

def test_sample_image_is_valid() -> None:
    data, out = sample_image()
    assert expand(data) == out
    assert b"".join(sparse.iter_expanded(Stream(data, 7))) == out  # type: ignore[arg-type]


@pytest.mark.parametrize("seekable", [True, False])
def test_truncation_at_every_byte(seekable: bool) -> None:
    data, _ = sample_image()
    for cut in range(len(data)):
        assert_malformed(data[:cut], seekable)


def _corruptions() -> Iterator[tuple[str, bytes]]:
    chunks, out = sample_chunks()
    crc = zlib.crc32(out)
    yield "bad magic", image(chunks, 64, 7, magic=0xED26FF3B)
    yield "major 2", image(chunks, 64, 7, major=2)
    yield "file header 27", image(chunks, 64, 7, fhs=27)
    yield "chunk header 11", image(chunks, 64, 7, chs=11)
    yield "blk_sz 0", image(chunks, 0, 7)
    yield "blk_sz 62", image(chunks, 62, 7)
    yield "blocks short", image(chunks, 64, 8)
    yield "blocks over", image(chunks, 64, 6)
    yield "chunks fewer", image(chunks, 64, 7, total_chunks=4)
    yield "chunks more", image(chunks, 64, 7, total_chunks=6)
    yield "chunks none", image([], 64, 7, total_chunks=0)
    yield "checksum", image(chunks, 64, 7, checksum=crc ^ 0x80)
    for i, kind in enumerate((0xCAC1, 0xCAC2, 0xCAC3, 0xCAC4)):
        bad = list(chunks)
        bad[i] = bad[i][:12 - 4] + struct.pack("<I", len(bad[i]) + 4) + bad[i][12:]
        yield f"total_sz {kind:x}", image(bad, 64, 7)
        bad[i] = struct.pack("<H", 0xCAC5 + i) + chunks[i][2:]
        yield f"unknown type {i}", image(bad, 64, 7)
    yield "huge raw", image([chunk(0xCAC1, 0xFFFFFFFF, bytes(64))], 64, 7)
    yield "huge raw sized", image([chunk(0xCAC1, 0xFFFFFFFF, total=(12 + 0xFFFFFFFF * 4)
                                         & 0xFFFFFFFF)], 4, 0xFFFFFFFF)
    yield "huge dont care", image([chunk(0xCAC3, 0xFFFFFFFF)], 64, 7)
    yield "huge fill", image([chunk(0xCAC2, 0xFFFFFFFF, b"abcd")], 64, 0xFFFFFFFE)
    yield "crc with blocks", image(chunks[:3] + [chunk(0xCAC4, 1, chunks[3][12:])] + chunks[4:],
                                   64, 7)
    yield "crc wrong", image(chunks[:3] + [chunk(0xCAC4, 0, b"\0\0\0\0")] + chunks[4:], 64, 7)
    yield "empty", b""


CORRUPTIONS = list(_corruptions())


@pytest.mark.parametrize("name,data", CORRUPTIONS, ids=[name for name, _ in CORRUPTIONS])
@pytest.mark.parametrize("seekable", [True, False])
def test_corrupted_fields(name: str, data: bytes, seekable: bool) -> None:
    assert_malformed(data, seekable)


def consume(data: bytes, seekable: bool) -> None:
    """Everything a consumer may do with untrusted bytes; only coded errors may escape."""
    try:
        source = io.BytesIO(data) if seekable else Stream(data, 9)
        reader = SparseReader(source)  # type: ignore[arg-type]
        for c in reader.iter_chunks():
            if c.block_count % 2:
                list(c.iter_data(64))
        if reader.total_size <= 1 << 20:
            sparse.expand_to(io.BytesIO(data), io.BytesIO())
            if reader.block_size <= 4096:
                run_split(io.BytesIO(data), sparse.min_split_size(reader.block_size) + 100)
    except ZflashError as exc:
        assert exc.code == Code.MALFORMED_IMAGE, exc


MAGIC = struct.pack("<I", sparse.MAGIC)


@FAST
@given(st.binary(max_size=200), st.booleans())
def test_fuzz_random_bytes(data: bytes, seekable: bool) -> None:
    consume(data, seekable)
    consume(MAGIC + data, seekable)
    consume(MAGIC + b"\x01\x00\x00\x00\x1c\x00\x0c\x00" + data, seekable)


@st.composite
def plausible_images(draw: st.DrawFn) -> bytes:
    """Valid-looking headers and chunk headers with small, slightly wrong numbers."""
    bs = draw(st.sampled_from([4, 8, 64, 4096]))
    small = st.integers(0, 6)
    chunks = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from([0xCAC1, 0xCAC2, 0xCAC3, 0xCAC4, 0xCAC5]))
        blocks = draw(small)
        size = draw(st.one_of(st.just(12 + {0xCAC1: blocks * bs, 0xCAC3: 0}.get(kind, 4)),
                              st.integers(0, 100)))
        chunks.append(struct.pack("<HHII", kind, 0, blocks, size) + draw(st.binary(max_size=40)))
    return image(chunks, bs, draw(small), draw(st.one_of(st.none(), small)),
                 draw(st.sampled_from([0, 1, 0xE3069283])))


@FAST
@given(plausible_images(), st.booleans())
def test_fuzz_plausible_images(data: bytes, seekable: bool) -> None:
    consume(data, seekable)
