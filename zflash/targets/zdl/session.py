"""One host-side ZDL session: the sans-IO HostEngine driven over a Transport, with timers.

The engine decides what to send; this class does the I/O and the timing the engine leaves to
its caller (zdl.md 5.4): a retransmission timeout that starts short and adapts to the measured
delivery rate, a lost link after ``life_limit`` s without a valid frame (9024), a stuck device
(9025) once it made no progress for as long as what is outstanding allows, however many
keep-alives it sends (``_stuck_limit``: the short answer deadline of a wholly acknowledged
request, the stream deadline once the block stream's rate is known, else the drain bound
``progress_limit``), and the serial baud switch with its confirming PING and fallback. State
lives in the object, so many sessions can run at once, one per device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.protocol.zdl import (NEED_DATA, BaudSwitched, BlockHashes, BlockRejected, Data,
                                 Erase, Error, Facts, HostEngine, Identify, Message, ReadDone,
                                 Retransmitted, Session, SessionStarted)
from zflash.protocol.zdl import Read as ReadRequest
from zflash.protocol.zdl.constants import check_baud
from zflash.transport.base import Transport

READ_SIZE = 1 << 20
MAX_USB_TRANSFER = 1 << 20  # whole frames per bulk transfer (zdl.md 2.4)
HELLO_INTERVAL = 0.5
PONG_WAIT = 0.3
PING_TRIES = 3
DEVICE_FALLBACK = 1.2
#: no valid frame from the device for this long: the link is lost (9024). The device sends a
#: keep-alive at least every 0.5 s while it works or receives (zdl.md 5.2), so silence this
#: long is no slow device; it keeps the report within 15 s of the last sign of life.
LIFE_LIMIT = 10.0
#: frames keep coming but nothing moves forward (no new ACK, answer piece or data) for this
#: long: the device is stuck, or feeds keep-alives forever (9025). Bounds every request and
#: the block stream alike, measured from the last progress, never from the last byte.
PROGRESS_LIMIT = 120.0
#: the first retransmission timeout, before any delivery was measured: well above the 0.5 s
#: keep-alive interval, far below the nominal-baud estimate (a window at 115200 is minutes)
RTO_FLOOR = 1.5
RTO_CEILING = LIFE_LIMIT / 2  # at least one retransmission before the link is given up
#: a request the device acknowledged in full owes only its work and its answer: it must show
#: progress (an answer, a new answer piece, new READ data) within this base plus its work
#: allowance. ``--timeout`` raises the base; it never goes below three RTO floors, so a lost
#: answer can be asked for again twice (zdl.md 5.4) before the device is called stuck.
ANSWER_FLOOR = 3 * RTO_FLOOR
#: the slowest rate (bytes/s) a device is assumed to read, hash, copy or zero its flash at:
#: a long operation gets its size at this rate on top of the base. Keep-alives carry no
#: progress (zdl.md 5.2), so they never extend it.
MIN_WORK_RATE = 20e6
#: the block stream's base (seconds): once the stream's average delivery rate is known, the
#: next ACK is due within this plus three times what is in flight at that rate. Longer than
#: the answer base: a real device's flash may stall writes for seconds (an eMMC collecting
#: garbage) while it keeps sending keep-alives.
STREAM_FLOOR = 15.0
#: a write to a byte stream goes out in pieces this big; between pieces that took a while,
#: what the device sent meanwhile (keep-alives) is read, so a long write on a slow line
#: neither fills the device's output buffer nor hides the device's signs of life
SEND_PIECE = 64 << 10
POLL_DURING_SEND = 0.25

Emit = Callable[[dict[str, object]], None]


@dataclass
class SessionOptions:
    max_data: int = 256 << 10
    window: int = 32
    baud: int | None = None
    #: seconds; None adapts it to the measured delivery rate (zdl.md 5.4)
    rto: float | None = None
    #: seconds the handshake (HELLO until WELCOME) may take: ``--timeout``
    connect_timeout: float = 5.0
    #: seconds of device silence (no valid frame) that mean a lost link
    life_limit: float = LIFE_LIMIT
    #: seconds without progress (frames, but nothing new) while bytes are still on their
    #: way (the host's frames unacknowledged, a device frame arriving): the drain bound
    progress_limit: float = PROGRESS_LIMIT
    #: the answer deadline's base (seconds) for a wholly acknowledged request; None:
    #: ``connect_timeout`` (``--timeout``), at least ``ANSWER_FLOOR``
    answer_limit: float | None = None
    #: the block stream deadline's base (seconds); None: ``STREAM_FLOOR`` or the answer
    #: base, whichever is longer
    stream_limit: float | None = None
    #: name the package by its digest in BEGIN_UPDATE when the device offers it (False:
    #: always send the whole head, as hosts that predate the feature do)
    begin_by_digest: bool = True

    def __post_init__(self) -> None:
        if self.baud is not None:
            check_baud(self.baud)


class ZdlSession:
    """Talk ZDL to one device over an open transport."""

    def __init__(self, transport: Transport, options: SessionOptions | None = None,
                 emit: Emit | None = None) -> None:
        self.transport = transport
        self.options = options or SessionOptions()
        self.engine = HostEngine(max_data=self.options.max_data, window=self.options.window)
        self.emit = emit or (lambda event: None)
        self.session: Session | None = None
        self.rejected: list[BlockRejected] = []
        #: what IDENTIFY reported: partition sizes bound the work of later requests
        self.facts: DeviceFacts | None = None
        #: seconds the outstanding request may take without progress once the device has
        #: acknowledged all of it; None: only the drain bound applies
        self._answer_allowance: float | None = None
        #: the block stream's average delivery rate so far (bytes/s; None: none measured,
        #: or no stream running): an average, not the RTO's moving estimate, so a burst of
        #: ACKs read apart cannot make it look faster than the link
        self._stream_rate: float | None = None
        self._measured_rate: float | None = None
        #: a serial line is never slower than its nominal rate: the floor the progress
        #: allowance for one frame is computed from (never the RTO: a pty is far faster)
        self._line_rate: float | None = (transport.baudrate / 10  # type: ignore[attr-defined]
                                         if transport.has_baudrate else None)
        now = time.monotonic()
        self._last_life = now      # last valid frame from the device
        self._last_progress = now  # last time the engine's progress count moved
        self._last_send = now      # last write (or retransmission)
        self._seen = (0, 0)        # (frames received + bytes arriving, progress) last seen

    # ------------------------------------------------------------------ I/O plumbing
    def _send(self, frames: list[bytes]) -> None:
        """Byte streams take everything at once; a packet transport (USB) gets whole frames
        packed into transfers of up to 1 MiB (zdl.md 2.4), so the bus sees large transfers."""
        if not frames:
            return
        if self.transport.is_stream:
            self._write_stream(b"".join(frames))
        else:
            batch: list[bytes] = []
            size = 0
            for frame in frames:
                if batch and size + len(frame) > MAX_USB_TRANSFER:
                    self.transport.write(b"".join(batch))
                    batch, size = [], 0
                batch.append(frame)
                size += len(frame)
            self.transport.write(b"".join(batch))
        self._last_send = time.monotonic()

    def _write_stream(self, data: bytes) -> None:
        view = memoryview(data)
        polled = time.monotonic()
        for start in range(0, len(view), SEND_PIECE):
            self.transport.write(view[start:start + SEND_PIECE])
            if time.monotonic() - polled >= POLL_DURING_SEND:
                self._take_waiting()
                polled = time.monotonic()

    def _take_waiting(self) -> None:
        """Hand what already arrived to the engine (decoded, and stamped, on the next pump)."""
        try:
            data = self.transport.read(READ_SIZE, 0)
        except ZflashError as exc:
            if exc.code != Code.TIMEOUT:
                raise
            return
        self.engine.receive_data(data)

    @property
    def rto(self) -> float:
        """Retransmission timeout: how long the device may stay silent (zdl.md 5.4).

        Starts at ``RTO_FLOOR``, never at the nominal line rate; once blocks were
        acknowledged, at least twice the time the bytes in flight take at the measured rate,
        so nothing is sent again while it is still draining. A device that is working or
        receiving sends keep-alives, which restart this timer.
        """
        if self.options.rto is not None:
            return self.options.rto
        rto = RTO_FLOOR
        if self._measured_rate:
            rto = max(rto, 2 * self.engine.in_flight_bytes / self._measured_rate)
        return min(rto, RTO_CEILING)

    @property
    def progress_limit(self) -> float:
        """``progress_limit``, or longer when one whole frame takes longer at the slowest rate
        known (nominal baud, measured delivery): at 9600 baud a 256 KiB frame takes 273 s,
        and only its complete arrival is progress."""
        limit = self.options.progress_limit
        rates = [r for r in (self._line_rate, self._measured_rate) if r]
        if rates and self.session is not None:
            limit = max(limit, 3 * (self.session.max_data + 16) / min(rates))
        return limit

    @property
    def answer_base(self) -> float:
        """Seconds a wholly acknowledged request may go without progress, before its work."""
        limit = self.options.answer_limit
        return limit if limit is not None else max(ANSWER_FLOOR, self.options.connect_timeout)

    @property
    def stream_base(self) -> float:
        """Seconds the block stream may go without a freeing ACK, before its drain time."""
        limit = self.options.stream_limit
        return limit if limit is not None else max(STREAM_FLOOR, self.answer_base)

    def device_work(self, message: Message) -> int | None:
        """Bytes of flash the device may read, hash, copy or zero before it answers
        ``message``: from the request itself where it says (BLOCK_HASHES, READ: the
        emulator prepares a READ before its first DATA), else from IDENTIFY's facts (the
        partition; for the rest, one slot's images and the unslotted partitions but
        userdata, which no update or boot check reads); None when nothing bounds it."""
        if isinstance(message, Identify):
            return 0
        if isinstance(message, BlockHashes):
            return message.count * message.block_size
        if isinstance(message, ReadRequest):
            return message.length
        facts = self.facts
        if facts is None:
            return None
        if isinstance(message, Erase) and (part := facts.partition(message.partition)):
            return part.size
        return sum(p.size for p in facts.partitions if p.name != "userdata")

    def _set_allowance(self, message: Message, work: int | None) -> None:
        work = self.device_work(message) if work is None else work
        self._answer_allowance = None if work is None else \
            self.answer_base + work / MIN_WORK_RATE

    @property
    def _stuck_limit(self) -> float:
        """Seconds without progress that end the session now (9025)."""
        return self._stuck_rule()[0]

    def _stuck_rule(self) -> tuple[float, str]:
        """Seconds without progress that mean a stuck device, now (zdl.md 5.4).

        Once the device acknowledged every frame of the outstanding request, nothing of ours
        is draining: the answer deadline (base plus work allowance; a long operation's grows
        with its size, past the drain bound); while a frame of the answer is arriving, at
        least the drain bound. In the block stream, once its rate is known: the stream base
        plus three times the bytes in flight at that rate, capped by the drain bound.
        Otherwise (bytes on their way, nothing known) the drain bound.
        """
        limit = self.progress_limit
        engine = self.engine
        if self._answer_allowance is not None and engine.answer_due:
            if engine.receiving:
                return max(limit, self._answer_allowance), "a frame still arriving"
            return self._answer_allowance, "its answer"
        if engine.receiving:
            return limit, "a frame still arriving"
        if self._stream_rate and not engine.request_pending:
            frame = (self.session.max_data + 16) if self.session else 0
            drain = 3 * max(engine.in_flight_bytes, frame) / self._stream_rate
            return min(limit, self.stream_base + drain), \
                "an ACK of the blocks in flight"
        return limit, "progress"

    def _note_progress(self, acked_bytes: int, seconds: float) -> None:
        if seconds <= 0 or acked_bytes <= 0:
            return
        rate = acked_bytes / seconds
        self._measured_rate = rate if self._measured_rate is None else \
            0.7 * self._measured_rate + 0.3 * rate

    def _exchange(self, timeout: float) -> Iterator[object]:
        """Read once (up to ``timeout``), yield every event it produced; stamps life and
        progress. A TIMEOUT from the transport just yields nothing."""
        try:
            data = self.transport.read(READ_SIZE, max(0.001, timeout))
        except ZflashError as exc:
            if exc.code != Code.TIMEOUT:
                raise
            return
        self.engine.receive_data(data)
        yield from self._drain_events()
        self._send(self.engine.data_to_send())

    def _stamp(self) -> None:
        """Life: a valid frame, or a frame still arriving (a 256 KiB DATA frame takes 22 s at
        115200). Progress: the engine's count moved. Garbage that forms no frame is neither;
        garbage with plausible headers is life at most, so the progress clock still ends it."""
        seen = (self.engine.stats.frames_received + self.engine.arriving, self.engine.progress)
        if seen == self._seen:
            return
        now = time.monotonic()
        if seen[0] != self._seen[0]:
            self._last_life = now
        if seen[1] != self._seen[1]:
            self._last_progress = now
        self._seen = seen

    def _start_clock(self) -> None:
        """A new request (or block stream): its progress deadline starts now."""
        self._stamp()
        self._last_progress = time.monotonic()

    def _pump(self) -> Iterator[object]:
        """Wait for input until the next deadline; yield its events, repair or give up.

        Three clocks (zdl.md 5.4): the RTO since the device's last frame (and our last
        write) re-sends; ``life_limit`` of silence is a lost link (9024); no progress for
        ``_stuck_limit`` is a stuck device (9025), however many keep-alives it sends.
        """
        now = time.monotonic()
        retransmit_at = max(self._last_life, self._last_send) + self.rto
        dead_at = self._last_life + self.options.life_limit
        stuck_at = self._last_progress + self._stuck_limit
        yield from self._exchange(min(retransmit_at, dead_at, stuck_at) - now)
        now = time.monotonic()
        if now >= self._last_life + self.options.life_limit:
            raise ZflashError(Code.LINK_LOST, "no sign of life from the device for "
                              f"{now - self._last_life:.1f} s")
        limit, what = self._stuck_rule()
        if now >= self._last_progress + limit:
            raise ZflashError(Code.TIMEOUT, "the device made no progress for "
                              f"{now - self._last_progress:.1f} s (waiting for {what}; "
                              "keep-alives alone do not count)")
        if now >= max(self._last_life, self._last_send) + self.rto:
            self.engine.abandon_partial()
            yield from self._drain_events()
            self._send(self.engine.timeout())

    def _drain_events(self) -> Iterator[object]:
        """Events the decoder finds without new input (after ``abandon_partial``)."""
        while (event := self.engine.next_event()) is not NEED_DATA:
            self._stamp()
            if isinstance(event, Retransmitted):
                self.emit({"event": "retry", "frames": event.frames, "reason": event.reason})
            elif isinstance(event, BlockRejected):
                self.rejected.append(event)
            yield event
        self._stamp()

    # ------------------------------------------------------------------ handshake
    def connect(self) -> Session:
        """HELLO until WELCOME (repeated every 0.5 s), then the optional baud switch."""
        deadline = time.monotonic() + self.options.connect_timeout
        self._send(self.engine.hello(baud=self.options.baud))
        next_hello = time.monotonic() + HELLO_INTERVAL
        while self.session is None:
            now = time.monotonic()
            if now > deadline:
                raise ZflashError(Code.TIMEOUT, "the device did not answer the ZDL handshake "
                                                f"within {self.options.connect_timeout:g} s")
            if now > next_hello:
                self._send(self.engine.hello(baud=self.options.baud))
                next_hello = now + HELLO_INTERVAL
            for event in self._exchange(min(HELLO_INTERVAL, max(0.01, deadline - now))):
                if isinstance(event, SessionStarted):
                    self.session = event.session
                elif isinstance(event, Error):
                    raise event.to_exception()
        if self.session.baud:
            self._switch_baud(self.session.baud)
        elif self.options.baud is not None and self.transport.has_baudrate:
            self.emit({"event": "baud", "baud": self.options.baud, "switched": False,
                       "kept": getattr(self.transport, "baudrate", None)})
        self._last_life = time.monotonic()
        self._start_clock()
        return self.session

    def _switch_baud(self, baud: int) -> None:
        old = getattr(self.transport, "baudrate", None)
        self.transport.set_baudrate(baud)
        last_ping = time.monotonic()
        for _ in range(PING_TRIES):
            self._send(self.engine.ping(b"baud"))
            last_ping = time.monotonic()
            end = last_ping + PONG_WAIT
            while time.monotonic() < end:
                for event in self._exchange(max(0.01, end - time.monotonic())):
                    if isinstance(event, BaudSwitched):
                        self._line_rate = baud / 10
                        self.emit({"event": "baud", "baud": baud, "switched": True})
                        return
        self.engine.baud_switch_failed()
        if old:
            self.transport.set_baudrate(old)
        time.sleep(max(0.0, last_ping + DEVICE_FALLBACK - time.monotonic()))
        self.emit({"event": "baud", "baud": baud, "switched": False, "kept": old})
        assert self.session is not None
        self.session = Session(self.session.version, self.session.max_data,
                               self.session.window, self.session.codecs, None)

    # ------------------------------------------------------------------ requests
    def request(self, message: Message, expect: type | tuple[type, ...],
                work: int | None = None) -> object:
        """Send one request and wait for its answer; a device ERROR becomes its coded error.
        ``work``: bytes of flash the device may process first (else ``device_work``)."""
        self.start_request(message, work)
        return self.finish_request(expect)

    def start_request(self, message: Message, work: int | None = None) -> None:
        """Send a request without waiting, so the host can work while the device does."""
        self._set_allowance(message, work)
        self._start_clock()
        self._send(self.engine.send(message))

    def finish_request(self, expect: type | tuple[type, ...]) -> object:
        """Wait for the answer to the request in flight."""
        while True:
            for event in self._pump():
                if isinstance(event, Error):
                    raise event.to_exception()
                if isinstance(event, expect):
                    return event

    def identify(self) -> DeviceFacts:
        answer = self.request(Identify(), Facts)
        facts: DeviceFacts = answer.facts  # type: ignore[attr-defined]
        self.facts = facts
        return facts

    def write_blocks(self, blocks: Iterable[tuple[int, int, int, bytes]],
                     on_acked: Callable[[int], None] | None = None) -> None:
        """Stream blocks with a full window in flight; return when all are acknowledged."""
        try:
            self._stream(iter(blocks), on_acked)
        finally:
            self._stream_rate = None  # the stream deadline ends with its stream

    def _stream(self, pending: Iterator[tuple[int, int, int, bytes]],
                on_acked: Callable[[int], None] | None) -> None:
        exhausted = False
        acked = first_acked = self.engine.bytes_acked
        self._start_clock()
        last_progress = started = time.monotonic()
        while True:
            frames: list[bytes] = []  # a window's worth goes out in as few writes as possible
            while not exhausted and self.engine.can_send_block():
                item = next(pending, None)
                if item is None:
                    exhausted = True
                    break
                frames += self.engine.send_block(*item)
            self._send(frames)
            if exhausted and self.engine.in_flight == 0:
                break
            for _ in self._pump():
                pass
            if self.rejected:
                bad = self.rejected[0]
                raise ZflashError(bad.code, f"device refused block {bad.block} of partition "
                                            f"{bad.partition}: {bad.message}")
            if self.engine.bytes_acked != acked:
                now = time.monotonic()
                self._note_progress(self.engine.bytes_acked - acked, now - last_progress)
                if on_acked:
                    on_acked(self.engine.bytes_acked - acked)
                acked, last_progress = self.engine.bytes_acked, now
                if now > started:
                    self._stream_rate = (acked - first_acked) / (now - started)

    def read(self, partition: str, slot: str | None, offset: int, length: int,
             sink: Callable[[bytes], None]) -> None:
        """READ a range, asking again for the rest after an incomplete stream."""
        position, end = offset, offset + length
        while position < end:
            request = ReadRequest(partition, slot, position, end - position)
            self._set_allowance(request, None)
            self._start_clock()
            self._send(self.engine.send(request))
            done: ReadDone | None = None
            while done is None:
                for event in self._pump():
                    if isinstance(event, Error):
                        raise event.to_exception()
                    if isinstance(event, Data):
                        sink(bytes(event.data))
                    elif isinstance(event, ReadDone):
                        done = event
            if done.complete and not done.verified:
                raise ZflashError(Code.READBACK_MISMATCH, "read-back SHA-256 mismatch")
            if done.received == 0 and not done.complete:
                raise ZflashError(Code.LINK_LOST, "read made no progress")
            position += done.received

    @property
    def stats(self) -> dict[str, int]:
        return self.engine.stats.to_dict()

