"""The host side of fastboot as a state machine: commands out, device responses in.

One command at a time (the protocol has no pipelining). The engine knows which commands
may be answered with DATA and in which direction the data then flows, checks that a device
asks for exactly the size it was offered, and counts data bytes both ways, so a device that
answers out of turn, overruns an upload or says OKAY before the data is complete is caught
as a protocol error instead of desynchronising the session.

A device is not trusted to end a command: INFO/TEXT lines per command and empty packets in a
row are bounded (``MAX_INFO_LINES``, ``MAX_EMPTY_PACKETS``), and ``max_packet`` tells a
framing layer how long the device's next message may be, so an oversized one is refused on
its length header, before any of it is buffered.

Input arrives as packets: one USB transfer, or one TCP message (fragments of a message are
passed with ``end=False``). A response is the whole packet, so the packet boundary matters.
"""

from __future__ import annotations

from enum import Enum

from zflash.errors import Code, ZflashError
from zflash.protocol.latch import breaks_for_good
from zflash.protocol.fastboot.constants import MAX_DATA_SIZE, MAX_RESPONSE
from zflash.protocol.fastboot.events import (
    DataRequest,
    Fail,
    HostEvent,
    Info,
    Okay,
    Text,
    UploadData,
)
from zflash.protocol.fastboot.wire import Buffer, download_command, encode_command, parse_response

_UPLOAD_VERBS = ("upload", "fetch:")

#: INFO/TEXT lines one command may produce: ``getvar all`` on a large phone is a few hundred
MAX_INFO_LINES = 10_000
#: empty packets in a row: USB sends one after a transfer; a stream of them is not an answer
MAX_EMPTY_PACKETS = 1_000


class HostState(Enum):
    IDLE = "idle"  # no command outstanding
    WAITING = "waiting"  # a command was sent; a response is due
    SENDING = "sending"  # the device said DATA after download: the host sends bytes
    RECEIVING = "receiving"  # the device said DATA after upload: it sends bytes
    BROKEN = "broken"  # a protocol error happened; the session cannot continue


class HostEngine:
    """Bytes in, events out, for one fastboot host session."""

    def __init__(self) -> None:
        self.state = HostState.IDLE
        self.command: str | None = None
        self._offered: int | None = None  # download size offered in the command
        self._upload = False
        self._data_seen = False
        self._left = 0  # data bytes still to send or receive
        self._buf = bytearray()
        self._lines = 0  # INFO/TEXT lines since the current command was sent
        self._empty = 0  # empty packets in a row

    # --------------------------------------------------------------- sending
    def send_command(self, text: str) -> bytes:
        """The packet for ``text``; only when no other command is outstanding."""
        self._require(HostState.IDLE, "send a command")
        packet = encode_command(text)
        self.command = text
        self._offered = None
        self._upload = text == "upload" or text.startswith(_UPLOAD_VERBS[1])
        if text.startswith("download:"):
            self._offered = _offered_size(text)
        self._data_seen = False
        self._lines = 0
        self._empty = 0
        self.state = HostState.WAITING
        return packet

    def send_download(self, size: int) -> bytes:
        """``download:%08x`` for ``size`` bytes."""
        return self.send_command(download_command(size))

    def send_data(self, data: Buffer) -> Buffer:
        """Account for download bytes and return them unchanged (no copy)."""
        self._require(HostState.SENDING, "send data")
        if len(data) > self._left:
            raise ZflashError(Code.INTERNAL, f"{len(data)} bytes offered, {self._left} due")
        self._left -= len(data)
        if self._left == 0:
            self.state = HostState.WAITING
        return data

    @property
    def data_left(self) -> int:
        """Bytes still due in the current data phase (either direction)."""
        return self._left

    @property
    def max_packet(self) -> int:
        """The longest packet the device may send now: upload bytes still due while it
        uploads, any size while an upload command awaits its DATA (the data may arrive in
        the same read as the DATA line), else one response (``MAX_RESPONSE``)."""
        if self.state is HostState.RECEIVING:
            return max(self._left, MAX_RESPONSE)
        if self.state is HostState.WAITING and self._upload and not self._data_seen:
            return MAX_DATA_SIZE
        return MAX_RESPONSE

    # --------------------------------------------------------------- receiving
    @breaks_for_good("fastboot", HostState.BROKEN)
    def receive(self, data: Buffer, end: bool = True) -> list[HostEvent]:
        """Feed received bytes; ``end`` marks the end of a packet (TCP message, USB transfer)."""
        if self.state is HostState.RECEIVING:
            return self._upload_bytes(data)
        if self.state is HostState.IDLE:
            if len(data):
                raise ZflashError(Code.PROTOCOL, "device sent data while no command was "
                                                 f"outstanding: {bytes(data[:16])!r}")
            return []
        self._buf += data
        if len(self._buf) > MAX_RESPONSE:
            raise ZflashError(Code.PROTOCOL, f"device response longer than {MAX_RESPONSE} "
                                             f"bytes: {bytes(self._buf[:24])!r}...")
        if not end:
            return []
        if not self._buf:
            self._empty += 1  # a zero-length packet: USB uses them to end transfers
            if self._empty > MAX_EMPTY_PACKETS:
                raise ZflashError(Code.PROTOCOL, f"device sent more than {MAX_EMPTY_PACKETS} "
                                                 "empty packets in a row instead of an answer")
            return []
        self._empty = 0
        packet, self._buf = bytes(self._buf), bytearray()
        return [self._on_response(parse_response(packet))]

    def _on_response(self, event: HostEvent) -> HostEvent:
        if isinstance(event, (Info, Text)):
            self._lines += 1
            if self._lines > MAX_INFO_LINES:
                raise ZflashError(Code.PROTOCOL, f"device sent more than {MAX_INFO_LINES} "
                                                 f"INFO/TEXT lines for {self._what()} without "
                                                 "ending it")
            return event
        if isinstance(event, Fail):
            self._finish()
            return event
        if isinstance(event, Okay):
            if self.state is HostState.SENDING:
                raise ZflashError(Code.PROTOCOL, f"device said OKAY with {self._left} bytes of "
                                                 "the download still unsent")
            if self._offered is not None and not self._data_seen:
                raise ZflashError(Code.PROTOCOL, "device said OKAY to download without DATA")
            self._finish()
            return event
        assert isinstance(event, DataRequest)
        return self._on_data(event)

    def _on_data(self, event: DataRequest) -> DataRequest:
        if self.state is not HostState.WAITING or self._data_seen:
            raise ZflashError(Code.PROTOCOL, "device sent DATA twice")
        if self._offered is not None:
            if event.size != self._offered:
                raise ZflashError(Code.PROTOCOL, f"device asked for {event.size} bytes after "
                                                 f"download of {self._offered}")
            self.state = HostState.SENDING
        elif self._upload:
            self.state = HostState.RECEIVING if event.size else HostState.WAITING
        else:
            raise ZflashError(Code.PROTOCOL, f"device answered DATA to {self.command!r}")
        self._data_seen = True
        self._left = event.size
        return event

    def _upload_bytes(self, data: Buffer) -> list[HostEvent]:
        if not len(data):
            return []
        if len(data) > self._left:
            raise ZflashError(Code.PROTOCOL, f"device sent {len(data) - self._left} bytes more "
                                             "than its upload announced")
        self._left -= len(data)
        if self._left == 0:
            self.state = HostState.WAITING
        return [UploadData(memoryview(data))]

    # --------------------------------------------------------------- helpers
    def _finish(self) -> None:
        self.state = HostState.IDLE
        self.command = None
        self._offered = None
        self._left = 0

    def _what(self) -> str:
        return repr((self.command or "")[:64])

    def _require(self, state: HostState, action: str) -> None:
        if self.state is not state:
            raise ZflashError(Code.INTERNAL, f"cannot {action} in state {self.state.value}")


def _offered_size(text: str) -> int:
    try:
        return int(text.partition(":")[2], 16)
    except ValueError:
        raise ZflashError(Code.USAGE, f"bad download command {text!r}") from None
