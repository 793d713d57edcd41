"""Property: a valid frame after any garbage, or after a frame whose length was damaged, is
found once the line goes quiet (``FrameDecoder.abandon_partial``, zdl.md 2.3 step 5)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ
from zflash.protocol.zdl.constants import MsgType
from zflash.protocol.zdl.frames import Frame, FrameDecoder, encode_frame

MAX_DATA = 65536


def found_after_quiet(data: bytes) -> list[Frame]:
    """Every frame in ``data``, abandoning each candidate left open at the end (bounded:
    each abandon skips at least one byte)."""
    decoder = FrameDecoder(max_data=MAX_DATA)
    items = decoder.feed(data)
    for _ in range(len(data) + 1):
        if not decoder.abandon_partial():
            break
        items += decoder.feed(b"")
    assert not decoder.partial
    return [item for item in items if isinstance(item, Frame)]


def same(frame: Frame, msg_type: int, seq: int, payload: bytes) -> bool:
    return frame.type == msg_type and frame.seq == seq and bytes(frame.payload) == payload


@FUZZ
@given(garbage=st.binary(max_size=600), seq=st.integers(0, 2**32 - 1),
       payload=st.binary(max_size=64))
def test_a_frame_after_garbage_is_found(garbage: bytes, seq: int, payload: bytes) -> None:
    frames = found_after_quiet(garbage + encode_frame(MsgType.OK, seq, payload))
    assert any(same(f, MsgType.OK, seq, payload) for f in frames)


@FUZZ
@given(length_byte=st.integers(0, 3), value=st.integers(0, 255), seq=st.integers(0, 1000))
def test_a_frame_after_a_damaged_length_is_found(length_byte: int, value: int, seq: int) -> None:
    damaged = bytearray(encode_frame(MsgType.COMMIT_PARTITION, seq, b'{"partition":3}'))
    damaged[8 + length_byte] = value
    follow = encode_frame(MsgType.SET_ACTIVE, seq + 1, b'{"slot":"b"}')
    frames = found_after_quiet(bytes(damaged) + follow)
    assert any(same(f, MsgType.SET_ACTIVE, seq + 1, b'{"slot":"b"}') for f in frames)
