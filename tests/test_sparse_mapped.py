"""Splitting an image file over a map of it (D208): the same pieces as the streaming
splitter, byte for byte, without copying the data into a temporary file."""

from __future__ import annotations

import io
import mmap
import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from test_sparse import (FAST, expand, image, raw_images, sample_chunks, sample_image,
                         to_sparse)
from zflash.errors import Code, ZflashError
from zflash.package import sparse
from zflash.package.sparse.mapped import PieceSegments, fill_blocks, split_mapped
from zflash.package.sparse.writer import _block_pattern


def pieces_of(split: object) -> list[tuple[int, int, int, int, bytes]]:
    return [(p.index, p.start_block, p.end_block, p.size, p.file.read())
            for p in split]  # type: ignore[attr-defined]


@FAST
@given(raw_images(block_sizes=(4, 64, 512, 4096), max_runs=10), st.data())
def test_the_mapped_split_makes_the_streaming_splits_pieces(sample: tuple[int, bytes],
                                                            data: st.DataObject) -> None:
    bs, raw = sample
    form = data.draw(st.sampled_from(["raw", "sparse", "sparse-dont-care"]))
    low = sparse.min_split_size(bs)
    max_size = data.draw(st.one_of(st.integers(low, low + 3 * bs),
                                   st.integers(8 * (bs + 24), 8 * (bs + 24) + 8 * bs),
                                   st.just(64 << 20)))
    blob = raw if form == "raw" else to_sparse(raw, bs,
                                               zero_as_dont_care=form == "sparse-dont-care")
    if not blob:
        return  # an empty file cannot be mapped (test_an_empty_file_is_refused)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image"
        path.write_bytes(blob)
        kwargs = {"block_size": bs} if form == "raw" else {}
        theirs = pieces_of(sparse.split_sparse(io.BytesIO(blob), max_size, **kwargs))
        ours = []
        for piece in split_mapped(path, max_size, **kwargs):
            assert isinstance(piece.file, PieceSegments)
            sent = b"".join(bytes(view) for view in piece.file.views())
            ours.append((piece.index, piece.start_block, piece.end_block, piece.size, sent))
        assert ours == theirs
        assert pieces_of(split_mapped(path, max_size, **kwargs)) == theirs  # read() too


@FAST
@given(raw_images(block_sizes=(4, 8, 64, 4096), max_runs=12))
def test_the_fill_scan_finds_exactly_the_blocks_of_one_word(sample: tuple[int, bytes]) -> None:
    bs, raw = sample
    count = len(raw) // bs
    expected = [(i, raw[i * bs:i * bs + 4]) for i in range(count)
                if _block_pattern(raw[i * bs:(i + 1) * bs]) is not None]
    assert list(fill_blocks(raw, count, bs)) == expected


def test_the_fill_scan_sees_a_block_whose_first_and_last_words_match() -> None:
    """The cheap reject compares first and last words only: a data block whose two words
    match must still be compared whole (and called data)."""
    rng = random.Random(5)
    word = rng.randbytes(4)
    tricky = word + rng.randbytes(4088) + word
    blocks = [rng.randbytes(4096), tricky, word * 1024, bytes(4096)] * 1500  # > a batch
    found = list(fill_blocks(b"".join(blocks), len(blocks), 4096))
    assert found == [(i, blocks[i][:4]) for i in range(len(blocks)) if i % 4 >= 2]


def test_raw_data_is_sent_from_the_map_not_copied(tmp_path: Path) -> None:
    """RAW data leaves as views of the mapped image; only headers are bytes the split made."""
    rng = random.Random(9)
    raw = rng.randbytes(3 << 20) + bytes(1 << 20) + rng.randbytes(2 << 20)
    path = tmp_path / "system.img"
    path.write_bytes(raw)
    made = 0
    pieces = 0
    for piece in split_mapped(path, 2 << 20):
        pieces += 1
        for view in piece.file.views():
            if isinstance(view, memoryview):
                assert isinstance(view.obj, mmap.mmap)
            else:
                made += len(view)
    assert pieces == 3
    assert made < 1024  # file and chunk headers, a fill word


def test_a_sparse_file_cut_short_is_refused_before_a_piece(tmp_path: Path) -> None:
    """The structure walk skips RAW data by seeking: a RAW chunk that runs past the end of
    the file is still found (9005), by validation and by the split alike."""
    rng = random.Random(2)
    blob = to_sparse(rng.randbytes(1 << 20))
    path = tmp_path / "cut.simg"
    path.write_bytes(blob[:-5000])
    with pytest.raises(ZflashError) as info:
        sparse.validate_sparse_file(path)
    assert info.value.code == Code.MALFORMED_IMAGE and "truncated" in str(info.value)
    with pytest.raises(ZflashError) as info:
        list(split_mapped(path, 1 << 30))
    assert info.value.code == Code.MALFORMED_IMAGE


def test_an_image_with_crc_chunks_and_a_wide_chunk_header(tmp_path: Path) -> None:
    """Every chunk type with a CRC32 chunk and an image checksum, and chunk headers wider
    than 12 bytes: the same pieces as the streaming split (which checks the CRCs; the mapped
    split relies on validation for that, and validation still reads such an image whole)."""
    blob, _ = sample_image()
    chunks, _ = sample_chunks(hdr=16)
    wide = image(chunks, 64, 7, chs=16)
    for name, data in (("crc.simg", blob), ("wide.simg", wide)):
        path = tmp_path / name
        path.write_bytes(data)
        assert sparse.validate_sparse_file(path).expanded_size == 7 * 64
        for limit in (sparse.min_split_size(64), 200, 1 << 20):
            theirs = pieces_of(sparse.split_sparse(io.BytesIO(data), limit))
            assert pieces_of(split_mapped(path, limit)) == theirs
    bad = bytearray(blob)
    bad[28 + 12] ^= 1  # a byte of the first RAW chunk's data: the image checksum fails
    path = tmp_path / "bad-crc.simg"
    path.write_bytes(bytes(bad))
    with pytest.raises(ZflashError) as info:
        sparse.validate_sparse_file(path)
    assert info.value.code == Code.MALFORMED_IMAGE


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.img"
    path.write_bytes(b"")
    with pytest.raises(ZflashError) as info:
        next(split_mapped(path, 1 << 20))
    assert info.value.code == Code.MALFORMED_IMAGE


def test_pieces_expand_to_the_image(tmp_path: Path) -> None:
    rng = random.Random(4)
    raw = b"".join(rng.choice([bytes(4096), rng.randbytes(4096), b"\x11\x22\x33\x44" * 1024])
                   for _ in range(700)) + rng.randbytes(777)
    path = tmp_path / "mixed.img"
    path.write_bytes(raw)
    device = bytearray(len(raw) + (-len(raw) % 4096))
    count = 0
    for piece in split_mapped(path, 200_000):
        count += 1
        out = expand(piece.file.read())
        assert len(out) == len(device)
        start, end = piece.start_block * 4096, piece.end_block * 4096
        device[start:end] = out[start:end]
    assert count > 3 and bytes(device[:len(raw)]) == raw
    assert os.path.getsize(path) == len(raw)
