"""Fuzz ZDL both ways: frames, every message type, a hostile device and a hostile host."""

from __future__ import annotations

import json
import zlib

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, coded_or_ok
from zflash.errors import Code
from zflash.protocol.zdl import (NEED_DATA, BeginUpdate, DeviceEngine, HostEngine, Identify,
                                 Read, decode_message)
from zflash.protocol.zdl.constants import CHUNK_HEADER, FLAG_CHUNK, HEADER, SYNC, MsgType
from zflash.protocol.zdl.frames import FrameDecoder
from zflash.protocol.zdl.host import HostState

TYPES = st.sampled_from(sorted(int(t) for t in MsgType)) | st.integers(0, 255)
PROTOCOL_CODES = {Code.PROTOCOL, Code.UNSUPPORTED_PROTOCOL}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["code", "message", "partition", "block", "ranges", "have", "index",
                         "session", "slot", "info", "length", "sha256", "partitions",
                         "product", "serial", "flash_size", "slots"]) | st.text(max_size=8),
        inner, max_size=6),
    max_leaves=30)
PAYLOADS = st.binary(max_size=600) | JSON_VALUES.map(lambda v: json.dumps(v).encode())


def raw_frame(kind: int, seq: int, payload: bytes, flags: int = 0) -> bytes:
    """A well-framed (CRC-correct) frame of any type, known or not: what a peer could send."""
    header = HEADER.pack(kind, flags, seq % 2**32, len(payload))
    return SYNC + header + payload + zlib.crc32(payload, zlib.crc32(header)).to_bytes(4, "little")


def connected() -> tuple[HostEngine, DeviceEngine]:
    """A host and a device after the handshake, wired in memory."""
    host, device = HostEngine(), DeviceEngine()
    for frame in host.hello():
        device.receive_data(frame)
    for frame in device.data_to_send():
        host.receive_data(frame)
    while host.next_event() is not NEED_DATA:
        pass
    assert host.state is HostState.READY
    return host, device


def drain(host: HostEngine) -> None:
    for _ in range(1000):
        if host.next_event() is NEED_DATA:
            return
    raise AssertionError("host kept producing events from bounded input")


@FUZZ
@given(st.binary(max_size=4096))
def test_frame_decoder_takes_any_bytes(blob: bytes) -> None:
    decoder = FrameDecoder(max_data=4096)
    coded_or_ok(lambda: decoder.feed(blob), allowed=set())


@FUZZ
@given(TYPES, PAYLOADS)
def test_every_message_type_decodes_or_is_a_protocol_error(kind: int, payload: bytes) -> None:
    coded_or_ok(lambda: decode_message(kind, memoryview(payload)), allowed={Code.PROTOCOL})


@FUZZ
@given(st.data())
def test_hostile_device_answers(data: st.DataObject) -> None:
    """Random frames (right tag or not, chunked or not) in answer to a request."""
    host, _ = connected()
    request = data.draw(st.sampled_from([Identify(), BeginUpdate(b"head"),
                                         Read("boot", "a", 0, 100_000)]))
    (frame,) = host.send(request)
    seq = HEADER.unpack(frame[2:12])[2]
    frames = []
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(TYPES)
        tag = data.draw(st.sampled_from([seq, seq - 1, seq + 1, 0]) | st.integers(0, 2**32 - 1))
        payload = data.draw(PAYLOADS)
        flags = 0
        if data.draw(st.booleans()):
            flags = FLAG_CHUNK
            payload = CHUNK_HEADER.pack(data.draw(st.integers(0, 2**32 - 1)),
                                        data.draw(st.integers(0, 2**32 - 1))) + payload
        frames.append(raw_frame(kind, tag, payload, flags))
    stream = b"".join(frames)

    def feed() -> None:
        host.receive_data(stream)
        drain(host)

    coded_or_ok(feed, allowed=PROTOCOL_CODES)


@FUZZ
@given(st.lists(st.tuples(TYPES, st.integers(0, 2**32 - 1), PAYLOADS, st.booleans()),
                max_size=6), st.binary(max_size=64))
def test_hostile_host_frames(frames: list, junk: bytes) -> None:
    """The device engine never raises on input: bad requests are answered with ERROR."""
    _, device = connected()
    stream = junk + b"".join(raw_frame(kind, seq, payload, FLAG_CHUNK if chunk else 0)
                             for kind, seq, payload, chunk in frames)
    coded_or_ok(lambda: (device.receive_data(stream), device.data_to_send()), allowed=set())
