"""The I/O driver of the Firehose host engine: one command at a time, its data phase, its
result.

The quiet rule (REFERENCE-EDL 3.1: logs may follow the response, so qdl waits for 100 ms of
silence) costs 100 ms per command. It is applied only where the answer may still be coming:
a NAK (its reason is a log), getsha256digest without its digest yet, getstorageinfo without
its JSON yet, and the start-up logs. An ACK whose answer is complete is settled at once; a
log arriving later is harmless (the engine takes logs while idle, D112).
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from zflash.errors import Code, ZflashError
from zflash.protocol.firehose import (NEED_DATA, QUIET_PERIOD, TIMEOUTS, HostEngine, Log,
                                      ReadData, Response, Result, storage_info)
from zflash.protocol.firehose.constants import (MAX_LOGS, PROGRAM_FINAL_BASE,
                                                PROGRAM_FINAL_RATE, SETTLE_LIMIT)
from zflash.transport.base import Buffer, Transport

READ_SIZE = (1 << 20) + 4096
_NEEDS_LOG = {"getsha256digest": lambda r: r.digest() is not None,
              "getstorageinfo": lambda r: "total_blocks" in storage_info(r)}


class FirehoseSession:
    """Commands over one transport after the programmer started."""

    def __init__(self, transport: Transport, timeout: float, early: bytes = b"",
                 max_payload: int = 1 << 20) -> None:
        self.transport, self.timeout = transport, timeout
        self.engine = HostEngine(max_payload)
        self.logs: list[str] = []  # logs that arrived outside any command (start-up)
        self.sent = 0
        if early:
            self.engine.receive_data(early)

    # -- plumbing -----------------------------------------------------------------------------
    def _write(self, data: Buffer) -> None:
        self.transport.write(data)
        self.sent += len(data)

    def _feed(self, timeout: float) -> bool:
        """Read once; False when ``timeout`` passed in silence."""
        try:
            data = self.transport.read(READ_SIZE, timeout)
        except ZflashError as exc:
            if exc.code == Code.TIMEOUT:
                return False
            raise
        self.engine.receive_data(data)
        return True

    def _next(self, deadline: float, timeout: float) -> object:
        """The next event before ``deadline`` (``timeout`` is for the message). A log is an
        event but not progress: the caller keeps the deadline across logs (D162)."""
        while True:
            event = self.engine.next_event()
            if event is not NEED_DATA:
                return event
            if not self._feed(max(0.0, deadline - time.monotonic())):
                raise ZflashError(Code.TIMEOUT, f"the programmer did not answer "
                                                f"<{self.engine.tag}> within {timeout:g} s")

    def drain(self, quiet: float = QUIET_PERIOD, limit: float = 2.0) -> None:
        """Collect start-up logs until ``quiet`` seconds of silence (at most ``limit``)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            while (event := self.engine.next_event()) is not NEED_DATA:
                if isinstance(event, Log):
                    if len(self.logs) >= MAX_LOGS:
                        raise ZflashError(Code.PROTOCOL, f"Firehose: more than {MAX_LOGS} "
                                                         "start-up <log> lines")
                    self.logs.append(event.text)
            if not self._feed(quiet):
                return

    def _settle(self, timeout: float) -> Result:
        """After the final response: wait out the quiet rule only when the answer may be
        incomplete, then settle."""
        tag = self.engine.tag or ""
        end = time.monotonic() + SETTLE_LIMIT  # late logs that never stop do not hold us
        while True:
            probe = self.engine.provisional()
            if probe is not None and probe.ack and _NEEDS_LOG.get(tag, lambda r: True)(probe):
                return self.engine.settle()
            if time.monotonic() >= end or not self._feed(QUIET_PERIOD):
                return self.engine.settle()
            while (event := self.engine.next_event()) is not NEED_DATA:
                if isinstance(event, Response):
                    raise ZflashError(Code.PROTOCOL, f"Firehose: a second response to <{tag}>")

    # -- commands -----------------------------------------------------------------------------
    def run(self, document: bytes, timeout: float | None = None,
            data: Iterable[Buffer] | None = None,
            sink: Callable[[bytes], None] | None = None) -> Result:
        """Send one command; ``data`` feeds a program's data phase (chunks of at most
        payload_to_target), ``sink`` takes a read's data. Returns the settled Result."""
        tag = self.engine.tag or ""
        limit = timeout or TIMEOUTS.get(tag, 10.0)
        self._write(document)
        deadline = time.monotonic() + limit
        while True:
            event = self._next(deadline, limit)
            if isinstance(event, ReadData):
                if sink is None:
                    raise ZflashError(Code.PROTOCOL, f"Firehose: data for <{tag}>")
                sink(bytes(event.data))
            elif isinstance(event, Response):
                if event.rawmode:
                    if tag == "program":
                        sent = 0
                        for chunk in data or ():
                            self._write(self.engine.program_data(chunk))
                            sent += len(chunk)
                        if self.engine.data_left:
                            raise ZflashError(Code.INTERNAL, f"program data phase short by "
                                                             f"{self.engine.data_left} bytes")
                        limit = program_final_timeout(sent)
                    deadline = time.monotonic() + limit
                    continue
                return self._settle(limit)
            else:
                continue  # a log: not progress, the deadline stands
            deadline = time.monotonic() + limit  # data or a response: progress

    def command(self, tag: str, attrs: dict[str, object] | None = None) -> Result:
        return self.run(self.engine.command(tag, attrs))


def program_final_timeout(data_bytes: int) -> float:
    """How long the final ACK of a ``<program>`` of ``data_bytes`` may take (D162)."""
    return min(TIMEOUTS["program_final"], PROGRAM_FINAL_BASE + data_bytes / PROGRAM_FINAL_RATE)
