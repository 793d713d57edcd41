"""Huge block tables stay their own size in memory: no object per block.

Before: a signed 64 GiB all-zero image (48 MiB table) made `verify` peak at 374 MiB and take
61 s here (a list of a million BlockEntry objects, a fresh zero buffer per block, three copies
of the head); see bench/bench_zero_table.py for the figures after.
"""

from __future__ import annotations

import hashlib
import io
import tracemalloc

import pytest

from conftest import SIGNING_KEY, SIGNING_PUB
from zflash.errors import ZflashError
from zflash.package import keys as keymod
from zflash.package.format import (ENTRY_SIZE, KIND_ZERO, BlockEntry, BlockTable, Header,
                                   Manifest, PartitionEntry)
from zflash.package.reader import Package, PackageHead, zero_digest

BLOCK = 8 << 10


def zero_package(blocks: int) -> bytes:
    """A signed package of one all-zero partition (no payload at all)."""
    from zflash.package.signing import encode_signatures, sign

    size = blocks * BLOCK
    table = BlockEntry(zero_digest(BLOCK), KIND_ZERO, 0, 0).encode() * blocks
    image = hashlib.sha256()
    zeros = bytes(1 << 20)
    for _ in range(size // len(zeros)):
        image.update(zeros)
    image.update(bytes(size % len(zeros)))
    part = PartitionEntry("userdata", False, size, image.hexdigest(), BLOCK, blocks,
                          hashlib.sha256(table).hexdigest(), 0)
    manifest = Manifest("zx-demo", ("A01",), ("ZXB-100",), "1.0.0", 1, 0, 1, (part,)).encode()
    signatures = encode_signatures([sign(manifest, keymod.load_private_key(SIGNING_KEY))])
    header = Header(len(manifest), len(signatures), len(table), 0)
    return header.encode() + manifest + signatures + table


def test_decoding_a_huge_table_allocates_about_its_size() -> None:
    data = zero_package(200_000)  # a 9.6 MB table
    table_bytes = 200_000 * ENTRY_SIZE
    tracemalloc.start()
    try:
        head = PackageHead.decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(head.tables["userdata"]) == 200_000
    assert peak < 2 * table_bytes, f"decode peaked at {peak} bytes for a {table_bytes}-byte table"


def test_verify_of_zero_blocks_does_not_grow_with_the_image() -> None:
    data = zero_package(20_000)  # 160 MiB of zeros
    trust = keymod.TrustStore()
    trust.add(keymod.load_public_key(SIGNING_PUB))
    with Package(io.BytesIO(data)) as pkg:
        tracemalloc.start()
        try:
            pkg.verify(trust)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 2 << 20, f"verify peaked at {peak} bytes"


def test_block_table_is_a_sequence_of_entries() -> None:
    entries = [BlockEntry(bytes([i]) * 32, KIND_ZERO, 0, 0) for i in range(5)]
    table = BlockTable(memoryview(b"".join(e.encode() for e in entries)))
    assert len(table) == 5 and list(table) == entries
    assert table[0] == entries[0] and table[-1] == entries[4] and table[1:3] == entries[1:3]
    assert table.kinds() == bytes(5)
    with pytest.raises(IndexError):
        table[5]
    assert [i for i, e in enumerate(table) if e.kind == KIND_ZERO] == list(range(5))


def test_a_bad_entry_in_a_huge_table_is_still_found() -> None:
    data = bytearray(zero_package(1000))
    last = len(data) - ENTRY_SIZE
    data[last + 33] = 1  # reserved byte of the last entry
    with pytest.raises(ZflashError):
        PackageHead.decode(bytes(data))
