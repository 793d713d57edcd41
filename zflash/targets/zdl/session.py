"""One host-side ZDL session: the sans-IO HostEngine driven over a Transport, with timers.

The engine decides what to send; this class does the I/O and the timing the engine leaves to
its caller: the retransmission timeout, the give-up rule (zdl.md 5.4: five silent timeouts in
a row is a lost link), and the serial baud switch with its confirming PING and fallback.
State lives in the object, so many sessions can run at once, one per device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.protocol.zdl import (NEED_DATA, BaudSwitched, BlockRejected, Data, Error, Facts,
                                 HostEngine, Identify, Message, ReadDone, Retransmitted, Session,
                                 SessionStarted)
from zflash.protocol.zdl import Read as ReadRequest
from zflash.transport.base import Transport

READ_SIZE = 1 << 20
MAX_USB_TRANSFER = 1 << 20  # whole frames per bulk transfer (zdl.md 2.4)
MAX_SILENT_TIMEOUTS = 5
HELLO_INTERVAL = 0.5
PONG_WAIT = 0.3
PING_TRIES = 3
DEVICE_FALLBACK = 1.2
MIN_RTO = 0.3
MIN_SILENCE = 10.0  # and at least MAX_SILENT_TIMEOUTS timeouts: a busy device may pause
MIN_REQUEST_TIMEOUT = 3.0

Emit = Callable[[dict[str, object]], None]


@dataclass
class SessionOptions:
    max_data: int = 256 << 10
    window: int = 32
    baud: int | None = None
    #: seconds; None derives it from the link rate (zdl.md 5.4)
    rto: float | None = None
    connect_timeout: float = 5.0


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
        self._silent = 0
        self._silent_since = 0.0
        self._measured_rate: float | None = None
        self._line_rate: float | None = (transport.baudrate / 10  # type: ignore[attr-defined]
                                         if transport.has_baudrate else None)

    # ------------------------------------------------------------------ I/O plumbing
    def _send(self, frames: list[bytes]) -> None:
        """Byte streams take everything at once; a packet transport (USB) gets whole frames
        packed into transfers of up to 1 MiB (zdl.md 2.4), so the bus sees large transfers."""
        if not frames:
            return
        if self.transport.is_stream:
            self.transport.write(b"".join(frames))
            return
        batch: list[bytes] = []
        size = 0
        for frame in frames:
            if batch and size + len(frame) > MAX_USB_TRANSFER:
                self.transport.write(b"".join(batch))
                batch, size = [], 0
            batch.append(frame)
            size += len(frame)
        self.transport.write(b"".join(batch))

    @property
    def rto(self) -> float:
        """Retransmission timeout for block writes (zdl.md 5.4).

        Twice the time one window takes at the link's rate: the measured delivery rate once
        blocks have been acknowledged, else the nominal line rate (serial), else 2 s. A
        nominal 115200 baud on a fast pty or USB-serial bridge would otherwise make one lost
        frame cost minutes.
        """
        if self.options.rto is not None:
            return self.options.rto
        rate = self._measured_rate or self._line_rate
        if rate and self.session:
            window_bytes = self.session.window * (self.session.max_data + 16)
            nominal = 2 * window_bytes / self._line_rate if self._line_rate else 2.0
            return max(MIN_RTO, min(2 * window_bytes / rate, max(nominal, MIN_RTO)))
        return 2.0

    @property
    def request_timeout(self) -> float:
        """Requests may make the device work (hash a partition): wait longer than for ACKs."""
        return max(self.rto, MIN_REQUEST_TIMEOUT)

    def _note_progress(self, acked_bytes: int, seconds: float) -> None:
        if seconds <= 0 or acked_bytes <= 0:
            return
        rate = acked_bytes / seconds
        self._measured_rate = rate if self._measured_rate is None else \
            0.7 * self._measured_rate + 0.3 * rate

    def _pump(self, timeout: float) -> Iterator[object]:
        """Wait up to ``timeout`` for input; yield every event it produced."""
        try:
            data = self.transport.read(READ_SIZE, timeout)
        except ZflashError as exc:
            if exc.code != Code.TIMEOUT:
                raise
            self._silent += 1
            now = time.monotonic()
            if self._silent == 1:
                self._silent_since = now - timeout
            if self._silent >= MAX_SILENT_TIMEOUTS and now - self._silent_since >= MIN_SILENCE:
                raise ZflashError(Code.LINK_LOST, f"no answer from the device for "
                                  f"{now - self._silent_since:.1f} s ({self._silent} "
                                  "retransmission timeouts)") from None
            self._send(self.engine.timeout())
            return
        self._silent = 0
        self.engine.receive_data(data)
        while (event := self.engine.next_event()) is not NEED_DATA:
            if isinstance(event, Retransmitted):
                self.emit({"event": "retry", "frames": event.frames, "reason": event.reason})
            elif isinstance(event, BlockRejected):
                self.rejected.append(event)
            yield event
        self._send(self.engine.data_to_send())

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
            self._silent = 0
            for event in self._pump(min(HELLO_INTERVAL, max(0.01, deadline - now))):
                if isinstance(event, SessionStarted):
                    self.session = event.session
                elif isinstance(event, Error):
                    raise event.to_exception()
        if self.session.baud:
            self._switch_baud(self.session.baud)
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
                self._silent = 0
                for event in self._pump(max(0.01, end - time.monotonic())):
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
    def request(self, message: Message, expect: type | tuple[type, ...]) -> object:
        """Send one request and wait for its answer; a device ERROR becomes its coded error."""
        self.start_request(message)
        return self.finish_request(expect)

    def start_request(self, message: Message) -> None:
        """Send a request without waiting, so the host can work while the device does."""
        self._send(self.engine.send(message))

    def finish_request(self, expect: type | tuple[type, ...]) -> object:
        """Wait for the answer to the request in flight."""
        while True:
            for event in self._pump(self.request_timeout):
                if isinstance(event, Error):
                    raise event.to_exception()
                if isinstance(event, expect):
                    return event

    def identify(self) -> DeviceFacts:
        facts = self.request(Identify(), Facts)
        return facts.facts  # type: ignore[attr-defined]

    def write_blocks(self, blocks: Iterable[tuple[int, int, int, bytes]],
                     on_acked: Callable[[int], None] | None = None) -> None:
        """Stream blocks with a full window in flight; return when all are acknowledged."""
        pending = iter(blocks)
        exhausted = False
        acked = self.engine.bytes_acked
        last_progress = time.monotonic()
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
            for _ in self._pump(self.rto):
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

    def read(self, partition: str, slot: str | None, offset: int, length: int,
             sink: Callable[[bytes], None]) -> None:
        """READ a range, asking again for the rest after an incomplete stream."""
        position, end = offset, offset + length
        while position < end:
            self._send(self.engine.send(ReadRequest(partition, slot, position, end - position)))
            done: ReadDone | None = None
            while done is None:
                for event in self._pump(self.request_timeout):
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

