"""ZDL v1 (protocols/zdl.md): vectors, framing, and host and device engines wired in memory.

The engines are sans-IO, so every test here is a pure function of bytes: a tiny fake device
logic sits on the device engine, and a ``Wire`` moves frames between the two, optionally
dropping, corrupting, cutting into random chunks or garbling them at the wrong baud rate.
"""

from __future__ import annotations

import hashlib
import json
import random
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts, PartitionInfo, SlotInfo
from zflash.protocol.zdl import (
    CODEC_NONE,
    CODEC_ZLIB,
    NEED_DATA,
    BaudSwitched,
    BeginUpdate,
    BlockHashes,
    BlockRejected,
    CommitPartition,
    Damage,
    Data,
    DeviceEngine,
    DeviceState,
    Done,
    Erase,
    Error,
    Facts,
    FrameDecoder,
    Hashes,
    Hello,
    HostEngine,
    HostState,
    Identify,
    KeepBlocks,
    Kept,
    MsgType,
    Ok,
    Ping,
    Pong,
    Read,
    ReadDone,
    Reboot,
    Retransmitted,
    SessionStarted,
    SetActive,
    SwitchBaud,
    UpdateReady,
    Welcome,
    WriteBlock,
    decode_block,
    decode_message,
    encode_frame,
)
from zflash.protocol.zdl.constants import CHUNK_HEADER, FLAG_CHUNK, HEADER, SYNC
from zflash.protocol.zdl.frames import encode_frame_parts

VECTORS = Path(__file__).resolve().parent.parent / "protocols" / "zdl-vectors.json"

FACTS = DeviceFacts(product="zx-demo", hardware_revision="A01", baseband="ZXB-100",
                    serial="ZX0001", protocol_version=1, flash_size=1 << 30,
                    cache_size=64 << 20, cache_free=60 << 20,
                    partitions=(PartitionInfo("boot", 8 << 20, True),),
                    slots=(SlotInfo("a", True, True, True, 0, 15),
                           SlotInfo("b", False, True, False, 6, 14)),
                    current_slot="a", rollback_indexes={0: 2})


# -- vectors ---------------------------------------------------------------------------------

def _vectors() -> list[dict[str, Any]]:
    return json.loads(VECTORS.read_text())["vectors"]


def _build(cls_name: str, fields: dict[str, Any]) -> Any:
    """The message object a vector's decoded meaning describes."""
    f = dict(fields)
    for key in [k for k in f if k.endswith("_hex")]:
        value = f.pop(key)
        name = key[:-4]
        f[name] = (tuple(bytes.fromhex(v) for v in value) if isinstance(value, list)
                   else bytes.fromhex(value))
    for key in ("versions", "codecs"):
        if key in f:
            f[key] = tuple(f[key])
    if "ranges" in f:
        f["ranges"] = tuple(tuple(r) for r in f["ranges"])
    if "have" in f:
        f["have"] = {int(k): tuple(tuple(r) for r in v) for k, v in f["have"].items()}
    if "facts" in f:
        f["facts"] = DeviceFacts.from_dict(f["facts"])
    classes = {c.__name__: c for c in (Hello, Welcome, Ping, Pong, Identify, Facts, BeginUpdate,
                                       UpdateReady, KeepBlocks, Kept, WriteBlock, Error,
                                       CommitPartition, Ok, BlockHashes, Hashes, Read, Data,
                                       Done, Erase, SetActive, Reboot)}
    return classes[cls_name](**f)


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: v["name"])
def test_vector_encode(vector: dict[str, Any]) -> None:
    kind = MsgType[vector["type"]]
    if vector["message"] is not None:
        message = _build(vector["message"]["class"], vector["message"]["fields"])
        assert message.TYPE == kind
        assert message.payload().hex() == vector["payload_hex"]
        assert encode_frame_parts(kind, vector["seq"], message.parts()).hex() == vector["hex"]
    assert encode_frame(kind, vector["seq"], bytes.fromhex(vector["payload_hex"]),
                        vector["flags"]).hex() == vector["hex"]


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: v["name"])
def test_vector_decode(vector: dict[str, Any]) -> None:
    items = FrameDecoder(max_data=4096).feed(bytes.fromhex(vector["hex"]))
    assert len(items) == 1
    frame = items[0]
    assert (frame.type, frame.flags, frame.seq) == (MsgType[vector["type"]], vector["flags"],
                                                    vector["seq"])
    assert bytes(frame.payload).hex() == vector["payload_hex"]
    if vector["message"] is not None:
        expected = _build(vector["message"]["class"], vector["message"]["fields"])
        assert decode_message(frame.type, frame.payload) == expected
    if "chunk" in vector:
        total, offset = CHUNK_HEADER.unpack_from(frame.payload)
        assert (total, offset) == (vector["chunk"]["total"], vector["chunk"]["offset"])
        assert bytes(frame.payload[8:]).hex() == vector["chunk"]["data_hex"]


def test_vector_frame_layout_is_little_endian() -> None:
    ack = next(v for v in _vectors() if v["name"] == "ack")
    raw = bytes.fromhex(ack["hex"])
    assert raw[:2] == SYNC == b"\xa5\x5a"
    assert HEADER.unpack(raw[2:12]) == (MsgType.ACK, 0, 41, 0)
    assert raw[12:] == zlib.crc32(raw[2:12]).to_bytes(4, "little")


# -- framing ---------------------------------------------------------------------------------

def _stream() -> tuple[bytes, list[tuple[int, int, int, bytes]]]:
    frames = [bytes.fromhex(v["hex"]) for v in _vectors()]
    decoded = []
    for raw in frames:
        (item,) = FrameDecoder(4096).feed(raw)
        decoded.append((item.type, item.flags, item.seq, bytes(item.payload)))
    return b"".join(frames), decoded


def _frames_of(items: list[Any]) -> list[tuple[int, int, int, bytes]]:
    return [(i.type, i.flags, i.seq, bytes(i.payload)) for i in items if not isinstance(i, Damage)]


def _chunked(data: bytes, rng: random.Random) -> list[bytes]:
    pieces, pos = [], 0
    while pos < len(data):
        size = rng.choice((0, 1, 1, 2, 3, 7, 12, 13, 100, 4000))
        pieces.append(data[pos:pos + size])
        pos += size
    return pieces


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("as_bytearray", [False, True])
def test_decoder_any_fragmentation_gives_the_same_frames(seed: int, as_bytearray: bool) -> None:
    stream, expected = _stream()
    decoder = FrameDecoder(4096)
    items: list[Any] = []
    for piece in _chunked(stream, random.Random(seed)):
        items += decoder.feed(bytearray(piece) if as_bytearray else piece)
    assert _frames_of(items) == expected
    assert decoder.skipped_bytes == decoder.crc_errors == 0


def test_decoder_payload_survives_reuse_of_a_callers_buffer() -> None:
    raw = bytes.fromhex(_vectors()[0]["hex"])
    buf = bytearray(raw)
    (frame,) = FrameDecoder(4096).feed(buf)
    before = bytes(frame.payload)
    buf[:] = bytes(len(buf))
    assert bytes(frame.payload) == before


def test_decoder_resyncs_after_garbage_lost_byte_and_bad_crc() -> None:
    _, expected = _stream()
    frames = [bytes.fromhex(v["hex"]) for v in _vectors()]
    damaged = bytearray()
    damaged += b"\xa5\x5a\xa5boot log garbage\xa5"  # garbage with sync look-alikes first
    damaged += frames[0]
    damaged += frames[1][:20] + frames[1][21:]      # one byte lost: frame 1 is gone
    damaged += frames[2][:-1] + bytes([frames[2][-1] ^ 1])  # bad CRC: frame 2 is gone
    damaged += b"".join(frames[3:])
    decoder = FrameDecoder(4096)
    items = []
    for piece in _chunked(bytes(damaged), random.Random(7)):
        items += decoder.feed(piece)
    assert _frames_of(items) == [expected[0]] + expected[3:]
    assert decoder.crc_errors >= 1 and decoder.skipped_bytes > 0
    assert any(isinstance(i, Damage) for i in items)


def test_decoder_finds_frames_behind_a_corrupted_length() -> None:
    frames = [bytes.fromhex(v["hex"]) for v in _vectors()]
    bad = bytearray(frames[4])          # IDENTIFY; inflate its length (still within the limit)
    bad[8:12] = (3000).to_bytes(4, "little")
    stream = bytes(bad) + b"".join(frames[5:]) + bytes(4000)
    decoder = FrameDecoder(4096)
    items = []
    for piece in _chunked(stream, random.Random(3)):
        items += decoder.feed(piece)
    assert len(_frames_of(items)) == len(frames) - 5
    assert decoder.crc_errors == 1


def test_decoder_rejects_oversized_length_before_buffering() -> None:
    decoder = FrameDecoder(None)
    header = SYNC + HEADER.pack(MsgType.IDENTIFY, 0, 0, 4097)  # over the pre-handshake limit
    good = encode_frame(MsgType.IDENTIFY, 1, b"{}")
    items = decoder.feed(header + good)  # no wait for 4097 bytes: the next frame is found now
    assert [i.seq for i in items if not isinstance(i, Damage)] == [1]
    decoder.max_data = 1 << 20
    assert decoder.feed(SYNC + HEADER.pack(MsgType.WRITE_BLOCK, 0, 0, (1 << 20) + 17)) != []
    for bad in (HEADER.pack(0x7F, 0, 0, 0), HEADER.pack(MsgType.ACK, 0, 0, 1),
                HEADER.pack(MsgType.WRITE_BLOCK, FLAG_CHUNK, 0, 10),
                HEADER.pack(MsgType.IDENTIFY, 0x80, 0, 2)):
        assert _frames_of(FrameDecoder(4096).feed(SYNC + bad + bytes(20))) == []


def test_decoder_ignores_empty_chunks_like_usb_zlps() -> None:
    decoder = FrameDecoder(4096)
    raw = bytes.fromhex(_vectors()[0]["hex"])
    items: list[Any] = []
    for i in range(len(raw)):
        items += decoder.feed(b"")
        items += decoder.feed(raw[i:i + 1])
    assert len(_frames_of(items)) == 1


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 64), max_size=40))
def test_decoder_random_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(4096)
    pos = 0
    for cut in cuts:
        decoder.feed(data[pos:pos + cut])
        pos += cut
    decoder.feed(data[pos:])


@settings(max_examples=100, deadline=None, database=None)
@given(st.binary(max_size=200), st.binary(max_size=200), st.integers(1, 50))
def test_decoder_finds_a_frame_after_any_garbage(before: bytes, after: bytes, step: int) -> None:
    frame = bytes.fromhex(_vectors()[0]["hex"])
    decoder = FrameDecoder(4096)
    data = before + frame + frame + after
    items = []
    for i in range(0, len(data), step):
        items += decoder.feed(data[i:i + step])
    # garbage may swallow at most the first copy (a false header claiming a long payload)
    assert (MsgType.HELLO, 0, 1) in [(f[0], f[1], f[2]) for f in _frames_of(items)]


# -- in-memory wiring ------------------------------------------------------------------------

def _block(part: int, index: int, size: int = 4096) -> bytes:
    return random.Random(part * 100_000 + index).randbytes(size)


class FakeDevice:
    """The smallest device logic that exercises every request."""

    def __init__(self, engine: DeviceEngine) -> None:
        self.dev = engine
        self.blocks: list[tuple[int, int, bytes]] = []
        self.reject: set[tuple[int, int]] = set()
        self.heads: list[bytes] = []
        self.flash = random.Random(9).randbytes(300_000)
        self.rate = 115200
        self.switchable = True
        self.sent_at_old_rate: list[tuple[bytes, int]] = []
        self.requests: list[Any] = []

    def handle(self, events: list[Any]) -> list[bytes]:
        out: list[bytes] = []
        dev = self.dev
        for ev in events:
            if isinstance(ev, SwitchBaud):  # drain at the old rate, then switch
                self.sent_at_old_rate += [(f, self.rate) for f in out + dev.data_to_send()]
                out = []
                if self.switchable:
                    self.rate = ev.baud
                continue
            if isinstance(ev, SessionStarted):
                continue
            if isinstance(ev, WriteBlock):
                if (ev.partition, ev.block) in self.reject:
                    out += dev.reject_block(ev, Code.SIGNATURE, "block hash mismatch")
                else:
                    raw = decode_block(ev.codec, ev.data, 4096) if ev.codec else bytes(ev.data)
                    self.blocks.append((ev.partition, ev.block, bytes(raw)))
                continue
            self.requests.append(ev)
            if isinstance(ev, Identify):
                out += dev.respond(Facts(FACTS))
            elif isinstance(ev, BeginUpdate):
                self.heads.append(bytes(ev.head))
                if bytes(ev.head).startswith(b"bad"):
                    out += dev.respond(Error(Code.SIGNATURE, "signature verification failed"))
                else:
                    out += dev.respond(UpdateReady("ab" * 32, "b", {0: ((0, 2), (5, 1))}))
            elif isinstance(ev, BlockHashes):
                out += dev.respond(Hashes(tuple(
                    hashlib.sha256(self._flash_block(ev.first + i, ev.block_size)).digest()
                    for i in range(ev.count))))
            elif isinstance(ev, KeepBlocks):
                out += dev.respond(Kept(ev.partition, ev.ranges[:1]))
            elif isinstance(ev, CommitPartition):
                out += dev.respond(Ok({"blocks": len(self.blocks)}))
            elif isinstance(ev, SetActive):
                out += dev.respond(Ok() if ev.slot in "ab" else Error(Code.SLOT, "no such slot"))
            elif isinstance(ev, (Reboot, Erase)):
                out += dev.respond(Ok())
            elif isinstance(ev, Read):
                data = self.flash[ev.offset:ev.offset + ev.length]
                for start in range(0, len(data), 10_000):
                    out += dev.respond(Data(ev.offset + start, data[start:start + 10_000]))
                out += dev.respond(Done(len(data), hashlib.sha256(data).hexdigest()))
        out += dev.data_to_send()
        return out

    def _flash_block(self, index: int, size: int) -> bytes:
        return self.flash[index * size:(index + 1) * size]


class Wire:
    """Moves frames both ways; may drop, corrupt, cut or garble them (wrong baud rate)."""

    def __init__(self, host: HostEngine, fake: FakeDevice, seed: int = 0, drop: float = 0.0,
                 corrupt: float = 0.0, chunky: bool = False) -> None:
        self.host, self.fake = host, fake
        self.rng = random.Random(seed)
        self.drop, self.corrupt, self.chunky = drop, corrupt, chunky
        self.to_dev: list[tuple[bytes, int]] = []
        self.to_host: list[tuple[bytes, int]] = []
        self.events: list[Any] = []
        self.host_rate = 115200
        self.lossy_dev_to_host = True

    def send(self, frames: list[bytes]) -> None:
        self.to_dev += [(f, self.host_rate) for f in frames]

    def _mangle(self, frames: list[tuple[bytes, int]], rate: int, lossy: bool) -> bytes:
        out = bytearray()
        for frame, sent_rate in frames:
            if sent_rate != rate:
                out += bytes(b ^ 0x55 for b in frame)  # sent at another baud rate: garbage
                continue
            if lossy and self.rng.random() < self.drop:
                continue
            if lossy and self.rng.random() < self.corrupt:
                frame = bytearray(frame)
                if self.rng.random() < 0.5:
                    frame[self.rng.randrange(len(frame))] ^= 0xFF
                else:
                    del frame[self.rng.randrange(len(frame))]
            out += frame
        return bytes(out)

    def _pieces(self, data: bytes) -> list[bytes]:
        return _chunked(data, self.rng) if self.chunky else [data]

    def step(self) -> bool:
        """One round trip; returns whether anything moved."""
        moved = bool(self.to_dev or self.to_host)
        fake = self.fake
        data = self._mangle(self.to_dev, fake.rate, True)
        self.to_dev = []
        for piece in self._pieces(data):
            out = fake.handle(fake.dev.receive_data(piece))
            self.to_host += fake.sent_at_old_rate + [(f, fake.rate) for f in out]
            fake.sent_at_old_rate = []
        self.to_host += [(f, fake.rate) for f in fake.dev.data_to_send()]
        data = self._mangle(self.to_host, self.host_rate, self.lossy_dev_to_host)
        self.to_host = []
        for piece in self._pieces(data):
            self.host.receive_data(piece)
        while (ev := self.host.next_event()) is not NEED_DATA:
            self.events.append(ev)
        self.send(self.host.data_to_send())
        return moved

    def run_until(self, done: Callable[[], bool], rounds: int = 5000) -> None:
        for _ in range(rounds):
            if done():
                return
            if not self.step() and not done():
                self.send(self.host.timeout())
        raise AssertionError("link made no progress")

    def request(self, message: Any) -> Any:
        """Send one request and return its answer (ReadDone for a READ)."""
        self.send(self.host.send(message))
        self.run_until(lambda: not self.host.request_pending)
        answer = [e for e in self.events if not isinstance(e, (Retransmitted, Data))][-1]
        return answer

    def write_blocks(self, blocks: list[tuple[int, int, bytes]], codec: int = CODEC_NONE) -> None:
        todo = list(blocks)

        def done() -> bool:
            while todo and self.host.can_send_block():
                part, index, data = todo.pop(0)
                payload = zlib.compress(data) if codec == CODEC_ZLIB else data
                self.send(self.host.send_block(part, index, codec, payload))
            return not todo and self.host.idle

        self.run_until(done, rounds=20000)


def _connect(seed: int = 0, drop: float = 0.0, corrupt: float = 0.0, chunky: bool = False,
             host_kw: dict[str, Any] | None = None,
             dev_kw: dict[str, Any] | None = None) -> Wire:
    host = HostEngine(**(host_kw or {}))
    wire = Wire(host, FakeDevice(DeviceEngine(**(dev_kw or {}))), seed, drop, corrupt, chunky)
    wire.send(host.hello())
    wire.run_until(lambda: host.state is HostState.READY)
    return wire


# -- handshake -------------------------------------------------------------------------------

def test_handshake_negotiates_the_smaller_limits_and_common_codecs() -> None:
    wire = _connect(host_kw={"max_data": 1 << 20, "window": 64},
                    dev_kw={"max_data": 64 << 10, "window": 8, "codecs": ("none",)})
    started = [e for e in wire.events if isinstance(e, SessionStarted)]
    assert len(started) == 1
    session = started[0].session
    assert (session.version, session.max_data, session.window, session.codecs, session.baud) == \
        (1, 64 << 10, 8, ("none",), None)
    assert wire.fake.dev.session == session
    with pytest.raises(ZflashError) as info:
        wire.host.send_block(0, 0, CODEC_ZLIB, b"x")
    assert info.value.code == Code.INTERNAL


def test_handshake_version_mismatch_is_unsupported_protocol() -> None:
    host = HostEngine(versions=(2, 3))
    wire = Wire(host, FakeDevice(DeviceEngine()))
    wire.send(host.hello())
    with pytest.raises(ZflashError) as info:
        wire.step()
    assert info.value.code == Code.UNSUPPORTED_PROTOCOL
    assert wire.fake.dev.state is DeviceState.NO_SESSION


def test_handshake_rejects_a_welcome_outside_the_offer() -> None:
    host = HostEngine(max_data=64 << 10)
    (hello,) = host.hello()
    token = HEADER.unpack(hello[2:12])[2]
    host.receive_data(encode_frame(MsgType.WELCOME, token,
                                   Welcome(1, 1 << 20, 8, ("none",)).payload()))
    with pytest.raises(ZflashError) as info:
        host.next_event()
    assert info.value.code == Code.PROTOCOL


def test_hello_is_repeated_until_answered_and_ignores_stale_welcomes() -> None:
    host = HostEngine()
    dev = DeviceEngine()
    first = host.hello()
    assert dev.receive_data(b"noise before the device listens" + first[0][6:]) == []
    assert host.timeout() == first                       # same HELLO, same token
    assert isinstance(host.next_event(), Retransmitted)
    dev.receive_data(b"".join(first))
    stale = dev.data_to_send()                           # WELCOME for token 1 ...
    second = host.hello()                                # ... but the host restarted meanwhile
    dev.receive_data(b"".join(second))
    host.receive_data(b"".join(stale))
    assert host.next_event() is NEED_DATA and host.stats.ignored == 1
    host.receive_data(b"".join(dev.data_to_send()))
    assert isinstance(host.next_event(), SessionStarted)
    assert host.state is HostState.READY


# -- requests --------------------------------------------------------------------------------

def test_identify_returns_the_device_facts() -> None:
    wire = _connect()
    answer = wire.request(Identify())
    assert answer == Facts(FACTS)


def test_begin_update_with_a_head_spanning_many_frames() -> None:
    wire = _connect(host_kw={"max_data": 4096, "window": 4})
    head = random.Random(1).randbytes(300_000)  # 74 pieces through a window of 4
    answer = wire.request(BeginUpdate(head))
    assert answer == UpdateReady("ab" * 32, "b", {0: ((0, 2), (5, 1))})
    assert wire.fake.heads == [head]
    assert wire.host.stats.frames_sent > 70
    assert wire.request(BeginUpdate(b"bad head")) == Error(Code.SIGNATURE,
                                                           "signature verification failed")
    assert wire.events[-1].to_exception().code == Code.SIGNATURE


def test_block_hashes_keep_blocks_commit_set_active_reboot_erase() -> None:
    wire = _connect()
    fake = wire.fake
    hashes = wire.request(BlockHashes("boot", "b", 2, 3, 4096))
    assert hashes.digests == tuple(hashlib.sha256(fake.flash[i * 4096:(i + 1) * 4096]).digest()
                                   for i in range(2, 5))
    assert wire.request(KeepBlocks(0, ((0, 10), (20, 5)))) == Kept(0, ((0, 10),))
    assert wire.request(CommitPartition(0)) == Ok({"blocks": 0})
    assert wire.request(SetActive("b")) == Ok()
    assert wire.request(SetActive("c")).code == Code.SLOT
    assert wire.request(Erase("misc", None)) == Ok()
    assert wire.request(Reboot({"force_boot_failure": False})) == Ok()
    assert [type(r).__name__ for r in fake.requests] == [
        "BlockHashes", "KeepBlocks", "CommitPartition", "SetActive", "SetActive", "Erase",
        "Reboot"]


def test_large_hashes_answer_is_chunked_and_reassembled() -> None:
    wire = _connect(host_kw={"max_data": 4096})
    answer = wire.request(BlockHashes("boot", "b", 0, 600, 512))  # 19200 bytes > 4096
    assert len(answer.digests) == 600
    assert answer.digests[599] == hashlib.sha256(wire.fake.flash[599 * 512:600 * 512]).digest()


def test_read_streams_data_in_order_and_verifies_the_hash() -> None:
    wire = _connect(host_kw={"max_data": 4096})
    done = wire.request(Read("boot", "b", 1000, 50_000))
    data = b"".join(bytes(e.data) for e in wire.events if isinstance(e, Data))
    assert data == wire.fake.flash[1000:51_000]
    assert isinstance(done, ReadDone) and done.ok and done.received == 50_000


def test_read_with_a_lost_data_frame_is_incomplete_and_can_be_resumed() -> None:
    wire = _connect(host_kw={"max_data": 4096})
    host, fake = wire.host, wire.fake
    out = fake.handle(fake.dev.receive_data(b"".join(host.send(Read("boot", None, 0, 40_000)))))
    data_frames = [f for f in out if f[2] == MsgType.DATA]
    kept = [f for f in out if f is not data_frames[3]]  # lose one DATA frame
    host.receive_data(b"".join(kept))
    events = []
    while (ev := host.next_event()) is not NEED_DATA:
        events.append(ev)
    done = events[-1]
    assert isinstance(done, ReadDone) and not done.complete and not done.ok
    got = b"".join(bytes(e.data) for e in events if isinstance(e, Data))
    assert len(got) == done.received and got == fake.flash[:done.received]
    wire.request(Read("boot", None, done.received, 40_000 - done.received))
    rest = b"".join(bytes(e.data) for e in wire.events if isinstance(e, Data))
    assert got + rest == fake.flash[:40_000]
    assert wire.events[-1].ok


def test_answers_are_checked_against_their_request() -> None:
    for request, answer in ((BlockHashes("boot", "b", 0, 2, 4096), Hashes((bytes(32),))),
                            (KeepBlocks(0, ((0, 4),)), Kept(0, ((0, 5),))),
                            (Identify(), Ok())):
        wire = _connect()
        host = wire.host
        (frame,) = host.send(request)
        seq = HEADER.unpack(frame[2:12])[2]
        host.receive_data(encode_frame_parts(answer.TYPE, seq, answer.parts()))
        with pytest.raises(ZflashError) as info:
            host.next_event()
        assert info.value.code == Code.PROTOCOL


# -- windowed writes -------------------------------------------------------------------------

def test_blocks_flow_with_many_in_flight_and_few_acks() -> None:
    wire = _connect(host_kw={"window": 16})
    blocks = [(0, i, _block(0, i)) for i in range(200)]
    in_flight = []
    todo = list(blocks)
    while todo or not wire.host.idle:
        while todo and wire.host.can_send_block():
            part, index, data = todo.pop(0)
            wire.send(wire.host.send_block(part, index, CODEC_NONE, data))
        in_flight.append(wire.host.in_flight)
        wire.step()
    assert max(in_flight) == 16
    assert wire.fake.blocks == blocks
    assert wire.fake.dev.stats.acks <= 200 // 8 + 2
    assert wire.host.blocks_acked == 200 and wire.host.bytes_acked == 200 * 4096


@pytest.mark.parametrize("seed", range(4))
def test_lossy_link_delivers_every_block_once_in_order(seed: int) -> None:
    wire = _connect(seed=seed, drop=0.05, corrupt=0.05, chunky=True,
                    host_kw={"window": 8, "max_data": 8192})
    blocks = [(p, i, _block(p, i)) for p in (0, 1) for i in range(150)]
    wire.write_blocks(blocks, codec=CODEC_ZLIB if seed % 2 else CODEC_NONE)
    assert wire.fake.blocks == blocks
    stats = wire.host.stats
    assert stats.retransmissions > 0
    assert any(isinstance(e, Retransmitted) for e in wire.events)
    dev_stats = wire.fake.dev.stats
    assert dev_stats.naks > 0 and dev_stats.out_of_order + dev_stats.crc_errors > 0
    # control traffic survives the same line
    assert wire.request(CommitPartition(1)) == Ok({"blocks": 300})
    assert wire.request(Identify()) == Facts(FACTS)


def test_lost_answer_is_recovered_from_the_device_cache_exactly_once() -> None:
    wire = _connect()
    host, fake = wire.host, wire.fake
    fake.handle(fake.dev.receive_data(b"".join(host.send(CommitPartition(0)))))  # answer lost
    assert host.request_pending
    retry = host.timeout()
    assert retry and host.stats.retransmissions == 1
    wire.send(retry)
    wire.run_until(lambda: not host.request_pending)
    assert [type(r).__name__ for r in fake.requests] == ["CommitPartition"]  # not re-run
    assert fake.dev.stats.duplicates == 1 and fake.dev.stats.retransmissions == 1
    assert wire.events[-1] == Ok({"blocks": 0})


def test_lost_piece_of_a_chunked_answer_is_refilled() -> None:
    wire = _connect(host_kw={"max_data": 4096})
    host, fake = wire.host, wire.fake
    out = fake.handle(fake.dev.receive_data(b"".join(
        host.send(BlockHashes("boot", "b", 0, 500, 512)))))
    pieces = [f for f in out if f[2] == MsgType.HASHES]
    assert len(pieces) == 4
    host.receive_data(b"".join(f for f in out if f is not pieces[1]))  # piece 2 of 4 lost
    assert host.next_event() == Retransmitted(1, "gap")
    assert host.next_event() is NEED_DATA
    retry = host.data_to_send()
    assert len(retry) == 1 and host.stats.retransmissions == 1
    wire.send(retry)
    wire.run_until(lambda: not host.request_pending)
    assert len(wire.events[-1].digests) == 500


def test_rejected_block_reaches_the_host_with_its_code() -> None:
    wire = _connect()
    wire.fake.reject.add((0, 3))
    wire.send(wire.host.send(BeginUpdate(b"head")))
    wire.run_until(lambda: not wire.host.request_pending)
    wire.write_blocks([(0, i, _block(0, i)) for i in range(6)])
    rejected = [e for e in wire.events if isinstance(e, BlockRejected)]
    assert rejected == [BlockRejected(0, 3, Code.SIGNATURE, "block hash mismatch")]
    assert [b[1] for b in wire.fake.blocks] == [0, 1, 2, 4, 5]


def test_request_can_follow_blocks_still_in_flight() -> None:
    wire = _connect(host_kw={"window": 32})
    for i in range(10):
        wire.send(wire.host.send_block(0, i, CODEC_NONE, _block(0, i)))
    wire.send(wire.host.send(CommitPartition(0)))
    wire.run_until(lambda: not wire.host.request_pending and wire.host.idle)
    assert wire.events[-1] == Ok({"blocks": 10})


# -- baud switch -----------------------------------------------------------------------------

def _switching(seed: int = 0) -> tuple[Wire, HostEngine]:
    host = HostEngine()
    wire = Wire(host, FakeDevice(DeviceEngine(bauds=(921600,))), seed)
    wire.send(host.hello(baud=921600))
    wire.run_until(lambda: host.state is HostState.SWITCHING)
    assert wire.events[-1].session.baud == 921600
    assert wire.fake.dev.state is DeviceState.SWITCHING
    wire.host_rate = 921600
    return wire, host


def test_baud_switch_succeeds_with_ping_at_the_new_rate() -> None:
    wire, host = _switching()
    wire.send(host.ping(b"new rate"))
    wire.run_until(lambda: host.state is HostState.READY)
    assert wire.events[-1] == BaudSwitched(921600)
    assert wire.fake.dev.state is DeviceState.CONFIRMING
    assert wire.request(Identify()) == Facts(FACTS)
    assert wire.fake.dev.state is DeviceState.READY
    assert wire.fake.dev.ping_timeout() is False


def test_baud_switch_retries_a_lost_pong() -> None:
    wire, host = _switching()
    fake = wire.fake
    fake.handle(fake.dev.receive_data(b"".join(host.ping())))  # PONG lost
    assert fake.dev.state is DeviceState.CONFIRMING
    wire.send(host.timeout())                                   # PING again
    wire.run_until(lambda: host.state is HostState.READY)
    assert isinstance(wire.events[-1], BaudSwitched)


def test_baud_switch_falls_back_when_the_new_rate_does_not_work() -> None:
    wire, host = _switching()
    wire.fake.rate = 115200  # the device's UART could not do it: pings arrive as garbage
    wire.send(host.ping())
    wire.step()
    wire.send(host.timeout())
    wire.step()
    assert host.state is HostState.SWITCHING
    assert wire.fake.dev.stats.naks == 0  # no NAKs while switching
    host.baud_switch_failed()
    assert wire.fake.dev.ping_timeout() is True
    wire.host_rate = 115200
    assert host.session is not None and host.session.baud is None
    assert wire.fake.dev.session is not None and wire.fake.dev.session.baud is None
    assert wire.request(Identify()) == Facts(FACTS)


def test_pong_echoes_and_device_answers_ping_in_any_state() -> None:
    dev = DeviceEngine()
    dev.receive_data(encode_frame(MsgType.PING, 77, b"abc"))
    (pong,) = dev.data_to_send()
    assert decode_message(MsgType.PONG, memoryview(pong)[12:-4]) == Pong(b"abc")
    assert HEADER.unpack(pong[2:12])[2] == 77
    wire = _connect()
    wire.send(wire.host.ping(b"hi"))
    wire.run_until(lambda: any(isinstance(e, Pong) for e in wire.events))


# -- device-side rules -----------------------------------------------------------------------

def _device_ready() -> tuple[DeviceEngine, int]:
    dev = DeviceEngine()
    dev.receive_data(encode_frame(MsgType.HELLO, 1, Hello().payload()))
    dev.data_to_send()
    return dev, 0


def _answers(dev: DeviceEngine) -> list[tuple[int, int, Any]]:
    out = []
    for item in FrameDecoder(1 << 20).feed(b"".join(dev.data_to_send())):
        message = None if item.type in (MsgType.ACK, MsgType.NAK) else \
            decode_message(item.type, item.payload)
        out.append((item.type, item.seq, message))
    return out


def test_device_drops_duplicates_naks_gaps_and_acks_cumulatively() -> None:
    dev, _ = _device_ready()
    frames = [encode_frame_parts(MsgType.WRITE_BLOCK, s, WriteBlock(0, s, 0, b"x" * 10).parts())
              for s in range(6)]
    events = dev.receive_data(frames[0] + frames[1] + frames[3] + frames[4])
    assert [e.block for e in events] == [0, 1]
    assert _answers(dev) == [(MsgType.NAK, 2, None), (MsgType.ACK, 1, None)]
    events = dev.receive_data(b"".join(frames[1:]))  # go-back with a duplicate in front
    assert [e.block for e in events] == [2, 3, 4, 5]
    assert dev.stats.duplicates == 1
    assert _answers(dev) == [(MsgType.ACK, 5, None)]
    assert dev.receive_data(frames[3]) == []
    assert _answers(dev) == [(MsgType.ACK, 5, None)]


def test_device_renaks_when_the_retransmission_is_lost_again() -> None:
    dev, _ = _device_ready()
    frames = [encode_frame_parts(MsgType.WRITE_BLOCK, s, WriteBlock(0, s, 0, b"y").parts())
              for s in range(5)]
    dev.receive_data(frames[2] + frames[3] + frames[4])  # 0 and 1 lost
    dev.receive_data(frames[1] + frames[2])              # host went back; 0 lost again
    naks = [a for a in _answers(dev) if a[0] == MsgType.NAK]
    assert naks == [(MsgType.NAK, 0, None), (MsgType.NAK, 0, None)]


def test_device_answers_malformed_or_overlapping_requests_with_9026() -> None:
    dev, _ = _device_ready()
    assert dev.receive_data(encode_frame(MsgType.READ, 0, b'{"partition": 5}')) == []
    ((kind, tag, error),) = [a for a in _answers(dev) if a[0] != MsgType.ACK]
    assert (kind, tag, error.code) == (MsgType.ERROR, 0, Code.PROTOCOL)
    events = dev.receive_data(encode_frame(MsgType.IDENTIFY, 1, b"{}") +
                              encode_frame(MsgType.IDENTIFY, 2, b"{}"))
    assert events == [Identify()]
    ((kind, tag, error),) = [a for a in _answers(dev) if a[0] != MsgType.ACK]
    assert (tag, error.code) == (2, Code.PROTOCOL)
    assert dev.receive_data(encode_frame(MsgType.WRITE_BLOCK, 3,
                                         WriteBlock(0, 0, 7, b"z").payload()[:6] + b"\x07z")) \
        == []


def test_device_ignores_echo_and_frames_before_hello() -> None:
    dev = DeviceEngine()
    assert dev.receive_data(encode_frame(MsgType.IDENTIFY, 0, b"{}")) == []
    assert dev.receive_data(encode_frame(MsgType.ACK, 3)) == []
    assert dev.data_to_send() == [] and dev.stats.ignored == 2
    host = HostEngine()
    frames = host.hello()
    host.receive_data(b"".join(frames))  # a half-duplex line echoes our own HELLO
    assert host.next_event() is NEED_DATA and host.stats.ignored == 1


def test_api_misuse_is_an_internal_error() -> None:
    host = HostEngine()
    with pytest.raises(ZflashError) as info:
        host.send(Identify())
    assert info.value.code == Code.INTERNAL
    wire = _connect()
    wire.host.send(Identify())
    with pytest.raises(ZflashError):
        wire.host.send(Identify())
    with pytest.raises(ZflashError):
        wire.host.send(Ok())
    with pytest.raises(ZflashError):
        HostEngine(window=65)
    dev, _ = _device_ready()
    assert dev.respond(Ok()) == []  # nothing pending: dropped, not sent
    dev.receive_data(encode_frame(MsgType.IDENTIFY, 0, b"{}"))
    with pytest.raises(ZflashError):
        dev.respond(UpdateReady("ab", None))


def test_decode_block_is_bounded() -> None:
    raw = b"a" * 4096
    assert decode_block(CODEC_ZLIB, zlib.compress(raw), 4096) == raw
    for bad in (zlib.compress(raw + b"a"), zlib.compress(raw)[:-3], zlib.compress(raw) + b"x",
                b"not zlib"):
        with pytest.raises(ZflashError):
            decode_block(CODEC_ZLIB, bad, 4096)
    with pytest.raises(ZflashError):
        decode_block(CODEC_NONE, raw[:-1], 4096)


# -- fragmentation and fuzzing of the engines ------------------------------------------------

def _session_bytes() -> tuple[bytes, list[bytes]]:
    """A whole host->device session as bytes (one request: the host waits for each answer,
    so two requests never share a batch), and the device's answers to it."""
    wire = _connect(host_kw={"max_data": 4096})
    host, fake = wire.host, wire.fake
    sent: list[bytes] = []
    answers: list[bytes] = []

    def go(frames: list[bytes]) -> None:
        sent.extend(frames)
        answers.extend(fake.handle(fake.dev.receive_data(b"".join(frames))))

    go(host.send(BeginUpdate(random.Random(2).randbytes(20_000))))
    for i in range(6):
        host.receive_data(b"".join(answers))
        while host.next_event() is not NEED_DATA:
            pass
        go(host.data_to_send())
    for i in range(8):
        go(host.send_block(0, i, CODEC_NONE, _block(0, i)))
    hello = encode_frame(MsgType.HELLO, 1, Hello(max_data=4096).payload())
    return hello + b"".join(sent), answers


def _device_events(stream: bytes, pieces: list[bytes]) -> list[str]:
    fake = FakeDevice(DeviceEngine())
    out: list[str] = []
    for piece in pieces:
        for ev in fake.dev.receive_data(piece):
            if isinstance(ev, (WriteBlock, BeginUpdate)):
                body = ev.data if isinstance(ev, WriteBlock) else ev.head
                out.append(f"{type(ev).__name__}:{hashlib.sha256(body).hexdigest()}")
            else:
                out.append(repr(ev))
            fake.handle([ev])
    assert b"".join(pieces) == stream
    return out


def test_fragmentation_gives_the_same_device_events() -> None:
    stream, _ = _session_bytes()
    whole = _device_events(stream, [stream])
    assert len(whole) == 1 + 1 + 8  # session, begin_update (5 pieces), 8 blocks
    rng = random.Random(5)
    for _ in range(3):
        assert _device_events(stream, _chunked(stream, rng)) == whole
    assert _device_events(stream, [stream[i:i + 1] for i in range(len(stream))]) == whole


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.integers(0, 3))
def test_engines_survive_random_bytes(data: bytes, state: int) -> None:
    dev = DeviceEngine()
    host = HostEngine()
    if state:
        dev.receive_data(b"".join(host.hello()))
        host.receive_data(b"".join(dev.data_to_send()))
        while host.next_event() is not NEED_DATA:
            pass
    if state >= 2:
        host.send(Read("boot", None, 0, 100) if state == 2 else BlockHashes("b", None, 0, 2, 512))
    for engine_feed in (dev.receive_data, host.receive_data):
        try:
            engine_feed(data)
            dev.data_to_send()
            while host.next_event() is not NEED_DATA:
                pass
        except ZflashError as exc:
            assert exc.code in (Code.PROTOCOL, Code.UNSUPPORTED_PROTOCOL)


_KNOWN = [int(t) for t in MsgType]


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_KNOWN), st.booleans(), st.integers(0, 12),
                          st.binary(max_size=120)), max_size=12), st.integers(1, 3))
def test_engines_survive_well_framed_nonsense(frames: list[tuple[int, bool, int, bytes]],
                                              state: int) -> None:
    """Frames with a valid CRC but random content: only coded errors, never a traceback."""
    wire = _connect()
    host, dev = wire.host, wire.fake.dev
    if state >= 2:
        host.send(Read("boot", None, 0, 100) if state == 2 else BlockHashes("b", None, 0, 2, 512))
    for kind, chunk, seq, payload in frames:
        flags = FLAG_CHUNK if chunk else 0
        raw = encode_frame(kind, seq, payload, flags)
        events = dev.receive_data(raw)
        for ev in events:
            if isinstance(ev, (Identify, BeginUpdate, Read, Erase, Reboot, SetActive,
                               CommitPartition, KeepBlocks, BlockHashes)):
                dev.respond(Error(Code.DEVICE_REFUSED, "fuzz"))
        dev.data_to_send()
        try:
            host.receive_data(raw)
            while host.next_event() is not NEED_DATA:
                pass
        except ZflashError as exc:
            assert exc.code in (Code.PROTOCOL, Code.UNSUPPORTED_PROTOCOL)
            return
