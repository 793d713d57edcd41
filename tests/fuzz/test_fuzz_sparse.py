"""Fuzz the sparse image validator: what `zflash fastboot flash` and the device parse."""

from __future__ import annotations

import io
import struct

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, coded_or_ok, mutate
from zflash.errors import Code
from zflash.package.sparse import validate_sparse, write_sparse

CHUNK_TYPES = st.sampled_from([0xCAC1, 0xCAC2, 0xCAC3, 0xCAC4]) | st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF) | st.integers(0, 40)


def valid_image() -> bytes:
    raw = bytes(range(256)) * 64 + bytes(40000) + b"\x07" * 12288
    out = io.BytesIO()
    write_sparse(io.BytesIO(raw), out, 4096)  # type: ignore[arg-type]
    return out.getvalue()


VALID = valid_image()


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(blob: bytes) -> None:
    head = struct.pack("<I", 0xED26FF3A)
    for data in (blob, head + blob):
        coded_or_ok(lambda: validate_sparse(io.BytesIO(data)), allowed={Code.MALFORMED_IMAGE})


@FUZZ
@given(st.data())
def test_structured_headers_and_chunks(data: st.DataObject) -> None:
    """Plausible headers with hostile sizes: huge DONT_CARE/FILL claims, bad total_sz."""
    chunks = data.draw(st.lists(st.tuples(CHUNK_TYPES, U32, U32, st.binary(max_size=64)),
                                max_size=12))
    blk = data.draw(st.sampled_from([4, 64, 4096, 0, 6]) | st.integers(0, 0xFFFFFFFF))
    head = struct.pack("<IHHHHIIII", 0xED26FF3A, 1, data.draw(st.integers(0, 3)),
                       data.draw(st.sampled_from([28, 32, 27])),
                       data.draw(st.sampled_from([12, 16, 11])), blk,
                       data.draw(U32), data.draw(st.integers(0, 14)), data.draw(U32))
    body = b"".join(struct.pack("<HHII", kind, 0, blocks, total) + payload
                    for kind, blocks, total, payload in chunks)
    blob = head + body
    coded_or_ok(lambda: validate_sparse(io.BytesIO(blob)), allowed={Code.MALFORMED_IMAGE})


@FUZZ
@given(st.data())
def test_mutated_valid_image(data: st.DataObject) -> None:
    blob = mutate(VALID, data.draw, st)
    coded_or_ok(lambda: validate_sparse(io.BytesIO(blob)), allowed={Code.MALFORMED_IMAGE})
