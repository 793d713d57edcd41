"""The host side of ZDL as a state machine (zdl.md 5-7): bytes in, events out, bytes to send.

The engine owns sequence numbers, the send window, go-back-N retransmission, reassembly of
chunked answers and the READ checks. It does no I/O and reads no clock: the caller writes every
list of frames it gets back, feeds what the transport reads into ``receive_data``, pulls
``next_event`` until ``NEED_DATA``, and calls ``timeout()`` when nothing arrived for the RTO.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from zflash.errors import Code, ZflashError
from zflash.protocol.zdl import chunks
from zflash.protocol.zdl.codecs import local_codecs
from zflash.protocol.zdl.constants import (
    BLOCK_HEADER,
    CODEC_NAMES,
    DEFAULT_MAX_DATA,
    DEFAULT_WINDOW,
    FLAG_CHUNK,
    HOST_TYPES,
    MAX_MAX_DATA,
    MAX_SEQ,
    MAX_TOKEN,
    MAX_WINDOW,
    MIN_MAX_DATA,
    PRE_MAX,
    REQUEST_TYPES,
    SUPPORTED_VERSIONS,
    MsgType,
)
from zflash.protocol.zdl.events import (
    NEED_DATA,
    BaudSwitched,
    BlockRejected,
    NeedData,
    ReadDone,
    Retransmitted,
    Session,
    SessionStarted,
)
from zflash.protocol.zdl.frames import Frame, FrameDecoder, encode_frame, encode_frame_parts
from zflash.protocol.zdl.messages import (
    MAX_BAUD,
    MIN_BAUD,
    RESPONSES,
    Data,
    Done,
    Error,
    Hashes,
    Hello,
    Kept,
    Message,
    Read,
    Welcome,
    decode_message,
    max_payload,
)
from zflash.protocol.zdl.stats import LinkStats
from zflash.protocol.zdl.wirejson import U32, ranges_subset

Buffer = bytes | bytearray | memoryview
HostEvent = Any  # a response Message, Pong, or one of the events in ``events``
#: Codes a device may refuse HELLO with that reach the user as given (zdl.md 6): no common
#: version, and "device busy" (another host is in a session); anything else is 9026.
_HELLO_REFUSALS = frozenset({Code.UNSUPPORTED_PROTOCOL, Code.DEVICE_REFUSED})


class HostState(Enum):
    IDLE = "idle"
    HELLO_SENT = "hello-sent"
    SWITCHING = "switching"
    READY = "ready"


@dataclass(slots=True)
class _Sent:
    seq: int
    frame: bytes
    block_bytes: int  # data bytes of a WRITE_BLOCK, 0 for a request piece


@dataclass
class _Request:
    message: Message
    last_seq: int
    last_frame: bytes
    assembler: chunks.Assembler | None = None
    read_next: int = 0
    read_gap: bool = False
    read_hash: Any = field(default_factory=hashlib.sha256)


def _misuse(why: str) -> ZflashError:
    return ZflashError(Code.INTERNAL, f"ZDL host engine misuse: {why}")


class HostEngine:
    """One host-side ZDL connection. Not thread-safe; one per device."""

    def __init__(self, *, max_data: int = DEFAULT_MAX_DATA, window: int = DEFAULT_WINDOW,
                 codecs: tuple[str, ...] | None = None,
                 versions: tuple[int, ...] = SUPPORTED_VERSIONS) -> None:
        if not MIN_MAX_DATA <= max_data <= MAX_MAX_DATA or not 1 <= window <= MAX_WINDOW:
            raise _misuse("max_data or window out of range")
        codecs = local_codecs() if codecs is None else codecs  # default: all we can decode
        if "none" not in codecs or not set(codecs) <= set(CODEC_NAMES.values()):
            raise _misuse("codecs must be known and include 'none'")
        self.offer = Hello(tuple(versions), max_data, window, tuple(codecs))
        self.state = HostState.IDLE
        self.session: Session | None = None
        self.stats = LinkStats()
        self._decoder = FrameDecoder()
        self._events: deque[HostEvent] = deque()
        self._outbox: list[bytes] = []
        self._token = 0
        self._hello: tuple[int, bytes, int | None] | None = None
        self._last_ping: bytes | None = None
        self._switch_token = 0
        self.blocks_acked = 0
        self.bytes_acked = 0
        #: counts what moved the session forward: frames newly acknowledged, a new piece of
        #: the answer, read data, an answer. Keep-alives (repeated ACKs), stale re-sends and
        #: garbage do not count, so a caller's progress deadline cannot be fed by them.
        self.progress = 0
        self._reset_link()

    # -- public API -------------------------------------------------------------------------

    def hello(self, baud: int | None = None) -> list[bytes]:
        """Start (or restart) a session; ``baud`` asks to switch a serial link afterwards."""
        if baud is not None and not MIN_BAUD <= baud <= MAX_BAUD:
            raise _misuse(f"baud rate {baud} out of range")
        token = self._next_token()
        frame = encode_frame(MsgType.HELLO, token, replace(self.offer, baud=baud).payload())
        self._reset_link()
        self.session = None
        self._decoder.max_data = None
        self._hello = (token, frame, baud)
        self._decoder.reset()
        self._events.clear()
        self.state = HostState.HELLO_SENT
        self._queue_out(frame)
        return self.data_to_send()

    def ping(self, token: bytes = b"") -> list[bytes]:
        """A PING (keepalive, or the baud-switch check at the new rate); answered by a Pong."""
        if self.state is HostState.IDLE or len(token) > MAX_TOKEN:
            raise _misuse("ping before hello, or token over 64 bytes")
        self._last_ping = encode_frame(MsgType.PING, self._next_token(), token)
        self._queue_out(self._last_ping)
        return self.data_to_send()

    def send(self, request: Message) -> list[bytes]:
        """Send one request (IDENTIFY .. ERASE); its answer comes back as an event."""
        self._require_ready()
        if request.TYPE not in REQUEST_TYPES:
            raise _misuse(f"{type(request).__name__} is not a request; use ping/send_block")
        if self._request is not None:
            raise _misuse("a request is already outstanding")
        assert self.session is not None
        pieces = chunks.split(request.payload(), self.session.max_data)
        frame = b""
        for flags, parts in pieces:
            frame = encode_frame_parts(request.TYPE, self._take_seq(), parts, flags)
            self._queued.append(_Sent(self._next_seq - 1, frame, 0))
        self._request = _Request(request, self._next_seq - 1, frame)
        if isinstance(request, Read):
            self._request.read_next = request.offset
        self._fill_window()
        return self.data_to_send()

    def can_send_block(self) -> bool:
        """Whether the window has room for one more WRITE_BLOCK now."""
        return (self.state is HostState.READY and not self._queued
                and len(self._unacked) < self._window)

    def send_block(self, partition: int, block: int, codec: int, data: Buffer) -> list[bytes]:
        """One WRITE_BLOCK frame (after anything already waiting to go). Needs can_send_block()."""
        if not self.can_send_block():
            raise _misuse("send window is full (check can_send_block)")
        assert self.session is not None
        if CODEC_NAMES.get(codec) not in self.session.codecs:
            raise _misuse(f"codec {codec} was not agreed")
        if not 0 <= partition <= 0xFFFF or not 0 <= block <= U32 or \
                not 1 <= len(data) <= self.session.max_data:
            raise _misuse("block index, partition index or block size out of range")
        seq = self._take_seq()
        frame = encode_frame_parts(MsgType.WRITE_BLOCK, seq,
                                   (BLOCK_HEADER.pack(partition, block, codec), data))
        self._unacked.append(_Sent(seq, frame, len(data)))
        self._queue_out(frame)
        return self.data_to_send()

    def receive_data(self, data: Buffer) -> None:
        """Feed bytes read from the transport (any size; empty is ignored, e.g. a USB ZLP)."""
        self._decoder.push(data)

    def next_event(self) -> HostEvent | NeedData:
        """The next event, or NEED_DATA. Raises ZflashError(PROTOCOL/...) on a violation."""
        decoder = self._decoder
        while not self._events:
            item = decoder.next()
            self.stats.crc_errors = decoder.crc_errors
            self.stats.skipped_bytes = decoder.skipped_bytes
            if item is None:
                return NEED_DATA
            if isinstance(item, Frame):
                self.stats.frames_received += 1
                self._on_frame(item)
        return self._events.popleft()

    def data_to_send(self) -> list[bytes]:
        """Frames queued by the engine itself (retransmissions, window refills), in order."""
        out, self._outbox = self._outbox, []
        return out

    def timeout(self) -> list[bytes]:
        """The caller's RTO expired with no progress: repair what can be repaired (zdl.md 5.4)."""
        self.stats.timeouts += 1
        if self.state is HostState.HELLO_SENT and self._hello is not None:
            self._retransmit([self._hello[1]], "timeout")
        elif self.state is HostState.SWITCHING and self._last_ping is not None:
            self._retransmit([self._last_ping], "timeout")
        elif self.state is HostState.READY:
            frames = [s.frame for s in self._unacked]
            request = self._request
            if request is not None and request.last_seq <= self._acked:
                if isinstance(request.message, Read):
                    self._end_read(request, None)
                else:
                    frames.append(request.last_frame)
            self._retransmit(frames, "timeout")
        return self.data_to_send()

    def baud_switch_failed(self) -> None:
        """No PONG at the new rate: go on at the old rate (the caller switches back)."""
        if self.state is HostState.SWITCHING and self.session is not None:
            self.session = replace(self.session, baud=None)
            self.state = HostState.READY
            self._decoder.reset()

    @property
    def in_flight(self) -> int:
        """Seq'd frames sent and not yet acknowledged."""
        return len(self._unacked)

    @property
    def in_flight_bytes(self) -> int:
        """Wire bytes of the frames sent and not yet acknowledged (the drain estimate)."""
        return sum(len(s.frame) for s in self._unacked)

    @property
    def arriving(self) -> int:
        """A counter that moves while a frame is still arriving (zdl.md 5.4: life, not
        progress): bytes taken into candidate frames not yet complete."""
        return self._decoder.candidate_bytes

    @property
    def answer_due(self) -> bool:
        """A request is outstanding and the device acknowledged every frame of it: none of
        the host's bytes are still on their way, so only the device's work and its answer
        stand between now and the next progress (the caller's short answer deadline)."""
        request = self._request
        return request is not None and not self._queued and request.last_seq <= self._acked

    @property
    def receiving(self) -> bool:
        """A device frame whose header checked out is still arriving (a slow line)."""
        return self._decoder.in_frame

    def abandon_partial(self) -> bool:
        """The line went quiet inside a frame: give it up and rescan (zdl.md 2.3)."""
        return self._decoder.abandon_partial()

    @property
    def request_pending(self) -> bool:
        return self._request is not None

    @property
    def idle(self) -> bool:
        """Nothing unacknowledged, queued or awaiting an answer."""
        return not self._unacked and not self._queued and self._request is None

    # -- sending ----------------------------------------------------------------------------

    def _reset_link(self) -> None:
        self._next_seq = 0
        self._acked = -1
        self._unacked: deque[_Sent] = deque()
        self._queued: deque[_Sent] = deque()
        self._request: _Request | None = None

    @property
    def _max_data(self) -> int:
        return self.session.max_data if self.session is not None else PRE_MAX

    @property
    def _window(self) -> int:
        return self.session.window if self.session is not None else 1

    def _require_ready(self) -> None:
        if self.state is not HostState.READY:
            raise _misuse(f"not ready (state {self.state.value})")

    def _next_token(self) -> int:
        self._token = (self._token + 1) & MAX_SEQ
        return self._token

    def _take_seq(self) -> int:
        if self._next_seq > MAX_SEQ:
            raise ZflashError(Code.PROTOCOL, "sequence numbers exhausted; start a new session")
        self._next_seq += 1
        return self._next_seq - 1

    def _queue_out(self, frame: bytes) -> None:
        self._outbox.append(frame)
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(frame)

    def _fill_window(self) -> None:
        while self._queued and len(self._unacked) < self._window:
            sent = self._queued.popleft()
            self._unacked.append(sent)
            self._queue_out(sent.frame)

    def _retransmit(self, frames: list[bytes], reason: str) -> None:
        for frame in frames:
            self._queue_out(frame)
        if frames:
            self.stats.retransmissions += len(frames)
            self._events.append(Retransmitted(len(frames), reason))

    def _release(self, upto: int) -> None:
        """Everything up to ``upto`` is acknowledged."""
        if upto >= self._next_seq:
            raise ZflashError(Code.PROTOCOL, f"device acknowledged frame {upto} never sent")
        if upto > self._acked:
            self.progress += 1
        while self._unacked and self._unacked[0].seq <= upto:
            sent = self._unacked.popleft()
            if sent.block_bytes:
                self.blocks_acked += 1
                self.bytes_acked += sent.block_bytes
        self._acked = max(self._acked, upto)

    # -- receiving --------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        kind = frame.type
        if kind in HOST_TYPES or self.state is HostState.IDLE:
            self.stats.ignored += 1  # our own echo on a half-duplex line, or no session yet
        elif self.state is HostState.HELLO_SENT:
            self._on_handshake(frame)
        elif self.state is HostState.SWITCHING:
            if kind == MsgType.PONG and frame.seq >= self._switch_token:
                assert self.session is not None and self.session.baud is not None
                self.state = HostState.READY
                self.progress += 1
                self._events.append(BaudSwitched(self.session.baud))
            else:
                self.stats.ignored += 1
        elif kind == MsgType.ACK:
            self.stats.acks += 1
            self._release(frame.seq)
            self._fill_window()
        elif kind == MsgType.NAK:
            self.stats.naks += 1
            if frame.seq > self._next_seq:
                raise ZflashError(Code.PROTOCOL, f"device expects frame {frame.seq} never sent")
            self._release(frame.seq - 1)
            self._retransmit([s.frame for s in self._unacked], "nak")
            self._fill_window()
        elif kind == MsgType.PONG:
            self._events.append(decode_message(kind, frame.payload))
        elif kind == MsgType.WELCOME:
            self.stats.ignored += 1
        else:
            self._on_answer(frame)

    def _on_handshake(self, frame: Frame) -> None:
        assert self._hello is not None
        token = self._hello[0]
        if frame.seq != token or frame.type not in (MsgType.WELCOME, MsgType.ERROR):
            self.stats.ignored += 1
            return
        if frame.type == MsgType.ERROR:
            error = Error.decode(frame.payload)
            assert isinstance(error, Error)
            code = error.code if error.code in _HELLO_REFUSALS else Code.PROTOCOL
            raise ZflashError(code, f"device refused HELLO: {error.code} {error.message}")
        welcome = Welcome.decode(frame.payload)
        assert isinstance(welcome, Welcome)
        offer = self.offer
        if welcome.version not in offer.versions:
            raise ZflashError(Code.UNSUPPORTED_PROTOCOL,
                              f"device chose ZDL version {welcome.version}")
        if (welcome.max_data > offer.max_data or welcome.window > offer.window
                or not set(welcome.codecs) <= set(offer.codecs) or "none" not in welcome.codecs
                or welcome.baud not in (None, self._hello[2])):
            raise ZflashError(Code.PROTOCOL, f"device chose values it was not offered: {welcome}")
        self.session = Session(welcome.version, welcome.max_data, welcome.window,
                               welcome.codecs, welcome.baud)
        self._decoder.max_data = welcome.max_data
        if welcome.baud is not None:
            self.state = HostState.SWITCHING
            self._switch_token = self._token + 1
        else:
            self.state = HostState.READY
        self._events.append(SessionStarted(self.session))

    def _on_answer(self, frame: Frame) -> None:
        tag = frame.seq
        request = self._request
        if tag >= self._next_seq:
            raise ZflashError(Code.PROTOCOL, f"device answered frame {tag} never sent")
        if request is None or tag != request.last_seq:
            if frame.type == MsgType.ERROR and not frame.flags & FLAG_CHUNK:
                error = Error.decode(frame.payload)
                assert isinstance(error, Error)
                if error.block is not None and error.partition is not None:
                    self._release(tag)
                    self.progress += 1
                    self._events.append(BlockRejected(error.partition, error.block,
                                                      error.host_code, error.host_message))
                    return
            self.stats.ignored += 1  # a stale or re-sent answer
            return
        req_type = request.message.TYPE
        if frame.type != MsgType.ERROR and frame.type not in RESPONSES[req_type]:
            raise ZflashError(Code.PROTOCOL, f"device answered {req_type.name} with "
                                             f"{MsgType(frame.type).name}")
        self._release(tag)
        self._fill_window()
        payload = frame.payload
        if frame.flags & FLAG_CHUNK:
            assembler = request.assembler
            if assembler is None or assembler.what != MsgType(frame.type).name:
                assembler = request.assembler = chunks.Assembler(
                    MsgType(frame.type).name, False, self._max_data, max_payload(frame.type))
            before = assembler.received
            whole = assembler.add(payload)
            if assembler.received > before:
                self.progress += 1
            if whole is None:
                if assembler.gap and assembler.is_last(payload):
                    assembler.gap = False
                    self._retransmit([request.last_frame], "gap")
                return
            request.assembler = None
            payload = memoryview(whole)
        message = decode_message(frame.type, payload)
        if isinstance(request.message, Read):
            self._on_read(request, message)
            return
        self._check_answer(request.message, message)
        self._request = None
        self.progress += 1
        self._events.append(message)

    def _check_answer(self, request: Message, answer: Message) -> None:
        """Cross-checks an answer against its request (untrusted device)."""
        if isinstance(answer, Hashes) and len(answer.digests) != getattr(request, "count", -1):
            raise ZflashError(Code.PROTOCOL, "device sent the wrong number of block hashes")
        if isinstance(answer, Kept):
            asked = request
            if (answer.partition != getattr(asked, "partition", None)
                    or not ranges_subset(answer.ranges, getattr(asked, "ranges", ()))):
                raise ZflashError(Code.PROTOCOL, "device kept blocks it was not offered")

    def _on_read(self, request: _Request, message: Message) -> None:
        read = request.message
        assert isinstance(read, Read)
        if isinstance(message, Data):
            end = read.offset + read.length
            offset, data = message.offset, message.data
            if offset + len(data) > end or offset < read.offset or len(data) > self._max_data:
                raise ZflashError(Code.PROTOCOL, "device sent data outside the READ range")
            if request.read_gap or offset > request.read_next:
                request.read_gap = True  # a DATA frame was lost; the rest is useless
                return
            if offset < request.read_next:
                if offset + len(data) <= request.read_next:
                    return
                data = data[request.read_next - offset:]
                offset = request.read_next
            request.read_hash.update(data)
            request.read_next = offset + len(data)
            self.progress += 1
            self._events.append(Data(offset, data))
        elif isinstance(message, Done):
            self._end_read(request, message)
        else:
            self._request = None
            self.progress += 1
            self._events.append(message)

    def _end_read(self, request: _Request, done: Done | None) -> None:
        read = request.message
        assert isinstance(read, Read)
        received = request.read_next - read.offset
        complete = received == read.length and done is not None and done.length == read.length
        verified = complete and done is not None and \
            request.read_hash.hexdigest() == done.sha256
        self._request = None
        if done is not None:
            self.progress += 1
        self._events.append(ReadDone(read.offset, read.length, received,
                                     done.sha256 if done is not None else "", complete, verified))

