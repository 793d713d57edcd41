"""The device side of ZDL as a state machine (zdl.md 5-7): bytes in, requests out.

The engine answers HELLO and PING itself, keeps the sequence, drops duplicates, NAKs gaps and
damage, ACKs cumulatively, reassembles chunked requests and re-sends a lost answer. The device
logic (the emulator, or firmware) only sees requests and blocks, each exactly once and in
order, and answers with ``respond``. No I/O, no clock: the device loop calls ``ping_timeout``
when its baud-switch timer expires and ``keepalive`` while it is busy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Callable
from zflash.errors import Code, ZflashError
from zflash.protocol.zdl import chunks
from zflash.protocol.zdl.codecs import local_codecs
from zflash.protocol.zdl.constants import (
    CHUNKABLE_TYPES,
    CODEC_NAMES,
    DEVICE_TYPES,
    FLAG_CHUNK,
    MAX_MAX_DATA,
    MAX_WINDOW,
    MIN_MAX_DATA,
    PRE_MAX,
    SUPPORTED_VERSIONS,
    MsgType,
)
from zflash.protocol.zdl.events import Session, SessionStarted, SwitchBaud
from zflash.protocol.zdl.frames import Damage, Frame, FrameDecoder, encode_frame, encode_frame_parts
from zflash.protocol.zdl.messages import (
    RESPONSES,
    Data,
    Error,
    Hello,
    Message,
    Welcome,
    WriteBlock,
    decode_message,
    max_payload,
)
from zflash.protocol.zdl.stats import LinkStats

Buffer = bytes | bytearray | memoryview
DeviceEvent = Message | SessionStarted | SwitchBaud

_ANSWER_TYPES = frozenset({MsgType.OK, MsgType.ERROR, MsgType.FACTS, MsgType.UPDATE_READY,
                           MsgType.HASHES, MsgType.KEPT, MsgType.DATA, MsgType.DONE})


class DeviceState(Enum):
    NO_SESSION = "no-session"
    SWITCHING = "switching"      # WELCOME sent with a baud rate; waiting for PING at the new rate
    CONFIRMING = "confirming"    # PONG sent at the new rate; waiting for the host's next frame
    READY = "ready"


@dataclass(slots=True)
class _Pending:
    seq: int
    type: MsgType


def _misuse(why: str) -> ZflashError:
    return ZflashError(Code.INTERNAL, f"ZDL device engine misuse: {why}")


class DeviceEngine:
    """One device-side ZDL connection. ``bauds``: rates this link may switch to (serial)."""

    def __init__(self, *, max_data: int = MAX_MAX_DATA, window: int = MAX_WINDOW,
                 codecs: tuple[str, ...] | None = None,
                 versions: tuple[int, ...] = SUPPORTED_VERSIONS,
                 bauds: tuple[int, ...] = (),
                 admit: Callable[[], tuple[int, str] | None] | None = None) -> None:
        if not MIN_MAX_DATA <= max_data <= MAX_MAX_DATA or not 1 <= window <= MAX_WINDOW:
            raise _misuse("max_data or window out of range")
        codecs = local_codecs() if codecs is None else codecs  # default: all we can decode
        if "none" not in codecs or not set(codecs) <= set(CODEC_NAMES.values()):
            raise _misuse("codecs must be known and include 'none'")
        self.max_data = max_data
        self.window = window
        self.codecs = tuple(codecs)
        self.versions = tuple(versions)
        self.bauds = tuple(bauds)
        #: asked on each acceptable HELLO; a (code, why) refuses the session with ERROR
        #: (a device busy with another host), None lets it start
        self._admit = admit
        self.state = DeviceState.NO_SESSION
        self.session: Session | None = None
        self.stats = LinkStats()
        self._decoder = FrameDecoder()
        self._outbox: list[bytes] = []
        self._reset_link()

    # -- public API -------------------------------------------------------------------------

    def receive_data(self, data: Buffer) -> list[DeviceEvent]:
        """Feed received bytes; returns requests, blocks and session events, in order.

        Never raises on bad input: garbage is skipped, malformed requests are answered with
        ERROR 9026 by the engine itself.
        """
        events: list[DeviceEvent] = []
        decoder = self._decoder
        decoder.push(data)
        while (item := decoder.next()) is not None:
            if isinstance(item, Damage):
                if self.state is DeviceState.READY:
                    self._nak(force=False)
            else:
                self.stats.frames_received += 1
                self._on_frame(item, events)
        self.stats.crc_errors = decoder.crc_errors
        self.stats.skipped_bytes = decoder.skipped_bytes
        return events

    def respond(self, message: Message) -> list[bytes]:
        """Answer the pending request (zdl.md 3.2); returns every frame due now, in order.

        A READ is answered by any number of Data (split to fit a frame here) and then Done or
        Error. Answers to a request dropped by a new session are discarded.
        """
        if message.TYPE not in _ANSWER_TYPES:
            raise _misuse(f"{type(message).__name__} is not an answer")
        pending = self._pending
        if pending is None:
            self.stats.ignored += 1
            return self.data_to_send()
        if message.TYPE != MsgType.ERROR and message.TYPE not in RESPONSES[pending.type]:
            raise _misuse(f"{pending.type.name} cannot be answered with {message.TYPE.name}")
        if isinstance(message, Data):
            step = self._max_data
            view = memoryview(message.data)
            for start in range(0, len(view), step):
                piece = Data(message.offset + start, view[start:start + step])
                self._queue(encode_frame_parts(MsgType.DATA, pending.seq, piece.parts()))
            return self.data_to_send()
        frames = self._encode_answer(pending.seq, message)
        self._pending = None
        if pending.type != MsgType.READ:
            self._cache = (pending.seq, frames)
        for frame in frames:
            self._queue(frame)
        return self.data_to_send()

    def reject_block(self, block: WriteBlock, code: int, message: str) -> list[bytes]:
        """Refuse one delivered block with a 90xx code (e.g. 9012 hash mismatch)."""
        error = Error(int(code), message[:1024], block.partition, block.block)
        for frame in self._encode_answer(block.seq, error):
            self._queue(frame)
        return self.data_to_send()

    def data_to_send(self) -> list[bytes]:
        """Everything the engine has to send (ACK, NAK, PONG, WELCOME, re-sent answers).

        Call it after handling each ``receive_data`` batch: that is when the idle ACK goes out.
        """
        if self._accepted_since_ack or self._ack_needed:
            self._ack()
        out, self._outbox = self._outbox, []
        return out

    def line_idle(self) -> list[DeviceEvent]:
        """The line has been quiet for a while (the loop's choice, e.g. 0.5 s): a frame cut
        short by a damaged length is given up and its bytes rescanned (zdl.md 2.3), so the
        NAK goes out now instead of after the host has sent ``MAX_DATA`` more bytes. Returns
        what the rescan found, like ``receive_data``; ``data_to_send`` has the NAK."""
        if not self._decoder.abandon_partial():
            return []
        return self.receive_data(b"")

    def keepalive(self) -> list[bytes]:
        """An ACK to send every 0.5 s during a long operation, so the host does not give up."""
        self._ack_needed = True
        return self.data_to_send()

    def ping_timeout(self) -> bool:
        """The baud-switch timer expired. True: go back to the previous rate now."""
        if self.state in (DeviceState.SWITCHING, DeviceState.CONFIRMING):
            assert self.session is not None
            self.session = replace(self.session, baud=None)
            self.state = DeviceState.READY
            self._decoder.reset()
            return True
        return False

    # -- link -------------------------------------------------------------------------------

    def _reset_link(self) -> None:
        self._expected = 0
        self._accepted_since_ack = 0
        self._ack_needed = False
        self._nak_for: int | None = None
        self._ooo_high = -1
        self._pending: _Pending | None = None
        self._cache: tuple[int, list[bytes]] | None = None
        self._assembler: chunks.Assembler | None = None

    @property
    def _max_data(self) -> int:
        return self.session.max_data if self.session is not None else PRE_MAX

    def _queue(self, frame: bytes) -> None:
        self._outbox.append(frame)
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(frame)

    def _ack(self) -> None:
        self._accepted_since_ack = 0
        self._ack_needed = False
        if self.session is not None and self._expected > 0:
            self.stats.acks += 1
            self._queue(encode_frame(MsgType.ACK, self._expected - 1))

    def _nak(self, force: bool, seen: int = -1) -> None:
        """NAK(expected) once per gap; again only when the host went back and lost it again."""
        if self._nak_for == self._expected and not force:
            self._ooo_high = max(self._ooo_high, seen)
            return
        self._nak_for = self._expected
        self._ooo_high = seen
        self.stats.naks += 1
        self._queue(encode_frame(MsgType.NAK, self._expected))

    def _encode_answer(self, tag: int, message: Message) -> list[bytes]:
        payload = message.payload()
        if message.TYPE not in CHUNKABLE_TYPES:
            return [encode_frame(message.TYPE, tag, payload)]
        return [encode_frame_parts(message.TYPE, tag, parts, flags)
                for flags, parts in chunks.split(payload, self._max_data)]

    def _refuse(self, tag: int, code: int, why: str) -> None:
        frames = self._encode_answer(tag, Error(int(code), why[:1024]))
        self._cache = (tag, frames)
        for frame in frames:
            self._queue(frame)

    # -- receiving --------------------------------------------------------------------------

    def _on_frame(self, frame: Frame, events: list[DeviceEvent]) -> None:
        kind = frame.type
        if kind in DEVICE_TYPES:
            self.stats.ignored += 1  # our own echo on a half-duplex line
        elif kind == MsgType.HELLO:
            self._on_hello(frame, events)
        elif kind == MsgType.PING:
            self._queue(encode_frame(MsgType.PONG, frame.seq, frame.payload))
            if self.state is DeviceState.SWITCHING:
                self.state = DeviceState.CONFIRMING
            elif self.state is DeviceState.CONFIRMING:
                self.state = DeviceState.READY
            elif self.state is DeviceState.READY and self._expected > 0:
                self._ack_needed = True
        elif self.state is DeviceState.NO_SESSION:
            self.stats.ignored += 1
        else:
            self.state = DeviceState.READY
            self._on_sequenced(frame, events)

    def _on_hello(self, frame: Frame, events: list[DeviceEvent]) -> None:
        token = frame.seq
        self.state = DeviceState.NO_SESSION
        self.session = None
        self._reset_link()
        try:
            hello = Hello.decode(frame.payload)
        except ZflashError as exc:
            self._refuse(token, Code.PROTOCOL, exc.detail)
            return
        assert isinstance(hello, Hello)
        common = set(hello.versions) & set(self.versions)
        if not common:
            self._refuse(token, Code.UNSUPPORTED_PROTOCOL,
                         f"device speaks ZDL versions {list(self.versions)}")
            return
        refusal = self._admit() if self._admit is not None else None
        if refusal is not None:
            self._refuse(token, *refusal)
            return
        baud = hello.baud if hello.baud in self.bauds else None
        self.session = Session(max(common), min(hello.max_data, self.max_data),
                               min(hello.window, self.window),
                               tuple(c for c in hello.codecs if c in self.codecs), baud)
        self._decoder.max_data = self.session.max_data
        session = self.session
        self._queue(encode_frame(MsgType.WELCOME, token, Welcome(
            session.version, session.max_data, session.window, session.codecs, baud).payload()))
        self.state = DeviceState.SWITCHING if baud is not None else DeviceState.READY
        events.append(SessionStarted(session))
        if baud is not None:
            events.append(SwitchBaud(baud))

    def _on_sequenced(self, frame: Frame, events: list[DeviceEvent]) -> None:
        seq = frame.seq
        if seq < self._expected:
            self.stats.duplicates += 1
            self._ack_needed = True
            if self._cache is not None and self._cache[0] == seq:
                self.stats.retransmissions += len(self._cache[1])
                for cached in self._cache[1]:
                    self._queue(cached)
            return
        if seq > self._expected:
            self.stats.out_of_order += 1
            self._nak(force=seq <= self._ooo_high, seen=seq)
            return
        self._expected += 1
        self._accepted_since_ack += 1
        self._nak_for = None
        self._ooo_high = -1
        try:
            self._deliver(frame, events)
        except ZflashError as exc:
            self._assembler = None
            self._refuse(seq, Code.PROTOCOL, exc.detail)
        assert self.session is not None
        if self._accepted_since_ack >= max(1, self.session.window // 2):
            self._ack()

    def _deliver(self, frame: Frame, events: list[DeviceEvent]) -> None:
        kind = MsgType(frame.type)
        assert self.session is not None
        if kind == MsgType.WRITE_BLOCK:
            if self._assembler is not None:
                raise ZflashError(Code.PROTOCOL, "block inside a chunked request")
            block = WriteBlock.decode(frame.payload)
            assert isinstance(block, WriteBlock)
            if CODEC_NAMES[block.codec] not in self.session.codecs:
                raise ZflashError(Code.PROTOCOL, f"codec {block.codec} was not agreed")
            if len(block.data) > self.session.max_data:
                raise ZflashError(Code.PROTOCOL, "block larger than the agreed max_data")
            events.append(WriteBlock(block.partition, block.block, block.codec, block.data,
                                     frame.seq))
            return
        payload = frame.payload
        if frame.flags & FLAG_CHUNK:
            if self._assembler is None:
                self._assembler = chunks.Assembler(kind.name, True, self.session.max_data,
                                                   max_payload(kind))
            elif self._assembler.what != kind.name:
                raise ZflashError(Code.PROTOCOL, "pieces of two requests mixed")
            whole = self._assembler.add(payload)
            if whole is None:
                return
            self._assembler = None
            payload = memoryview(whole)
        elif self._assembler is not None:
            raise ZflashError(Code.PROTOCOL, "request inside a chunked request")
        if self._pending is not None:
            raise ZflashError(Code.PROTOCOL, "a request arrived before the previous was answered")
        request = decode_message(kind, payload)
        self._pending = _Pending(frame.seq, kind)
        events.append(request)
