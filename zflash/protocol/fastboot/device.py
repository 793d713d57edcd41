"""The device side of fastboot as a state machine: host packets in, responses out.

The engine parses packets into commands and counts download bytes; the device logic (the
emulator) decides what each command means and answers through ``okay``/``fail``/``info``/
``start_download``/``start_upload``. A command longer than 4096 bytes or not ASCII is not
fatal: it becomes a ``Malformed`` event the device answers with FAIL, as bootloaders do. A
host that talks out of turn (data while the device works on a command) is a protocol error.
A device that gives up in the middle of a download (``fail`` while bytes are still due)
discards the rest of the announced bytes, so the session stays in step.
"""

from __future__ import annotations

from enum import Enum

from zflash.errors import Code, ZflashError
from zflash.protocol.fastboot.constants import FAIL, INFO, MAX_COMMAND, OKAY, TEXT
from zflash.protocol.fastboot.device_events import (
    Command,
    DeviceEvent,
    DownloadData,
    DownloadDone,
    Malformed,
)
from zflash.protocol.fastboot.wire import Buffer, encode_data, encode_response


class DeviceState(Enum):
    COMMAND = "command"  # waiting for a command packet
    BUSY = "busy"  # a command arrived; the device must answer it
    DOWNLOADING = "downloading"  # DATA sent; the host sends the bytes
    DRAINING = "draining"  # the device failed a download; the rest is discarded
    UPLOADING = "uploading"  # DATA sent after upload; the device sends the bytes
    BROKEN = "broken"


class DeviceEngine:
    """Bytes in, events out, for one fastboot device session."""

    def __init__(self) -> None:
        self.state = DeviceState.COMMAND
        self._buf = bytearray()
        self._oversize = False
        self._left = 0
        self._size = 0

    # --------------------------------------------------------------- receiving
    def receive(self, data: Buffer, end: bool = True) -> list[DeviceEvent]:
        """Feed host bytes; ``end`` marks the end of a packet (TCP message, USB transfer)."""
        if self.state is DeviceState.BROKEN:
            raise ZflashError(Code.PROTOCOL, "the fastboot session failed earlier")
        if self.state in (DeviceState.DOWNLOADING, DeviceState.DRAINING):
            return self._download_bytes(data)
        if self.state is DeviceState.COMMAND:
            return self._command_bytes(data, end)
        if not len(data):
            return []
        state, self.state = self.state, DeviceState.BROKEN
        raise ZflashError(Code.PROTOCOL, f"host sent {len(data)} bytes while the device was "
                                         f"{state.value}")

    def _command_bytes(self, data: Buffer, end: bool) -> list[DeviceEvent]:
        if self._oversize:
            pass  # keep discarding until the packet ends
        elif len(self._buf) + len(data) > MAX_COMMAND:
            self._oversize, self._buf = True, bytearray()
        else:
            self._buf += data
        if not end or (not self._buf and not self._oversize):
            return []  # more of the packet to come, or a zero-length packet
        packet, self._buf = bytes(self._buf), bytearray()
        self.state = DeviceState.BUSY
        if self._oversize:
            self._oversize = False
            return [Malformed(f"command longer than {MAX_COMMAND} bytes")]
        try:
            text = packet.decode("ascii")
        except UnicodeDecodeError:
            return [Malformed("command is not ASCII")]
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
            return [Malformed("command holds control characters")]
        return [Command(text)]

    def _download_bytes(self, data: Buffer) -> list[DeviceEvent]:
        if not len(data):
            return []
        if len(data) > self._left:
            self.state = DeviceState.BROKEN
            raise ZflashError(Code.PROTOCOL, f"host sent {len(data) - self._left} bytes more "
                                             "than the download announced")
        self._left -= len(data)
        if self.state is DeviceState.DRAINING:
            if self._left == 0:
                self.state = DeviceState.COMMAND
            return []
        events: list[DeviceEvent] = [DownloadData(memoryview(data))]
        if self._left == 0:
            self.state = DeviceState.BUSY
            events.append(DownloadDone(self._size))
        return events

    @property
    def data_left(self) -> int:
        return self._left

    # --------------------------------------------------------------- answering
    def okay(self, message: str = "") -> bytes:
        """Final success answer to the current command."""
        self._require((DeviceState.BUSY,), "answer OKAY")
        self.state = DeviceState.COMMAND
        return encode_response(OKAY, message)

    def fail(self, message: str) -> bytes:
        """Final failure answer; in a data phase it abandons the rest of the data."""
        self._require((DeviceState.BUSY, DeviceState.DOWNLOADING, DeviceState.UPLOADING),
                      "answer FAIL")
        if self.state is DeviceState.DOWNLOADING and self._left:
            self.state = DeviceState.DRAINING
        else:
            self.state, self._left = DeviceState.COMMAND, 0
        return encode_response(FAIL, message)

    def info(self, message: str) -> bytes:
        """An INFO line (progress, getvar all); the command continues."""
        self._require((DeviceState.BUSY, DeviceState.DOWNLOADING), "send INFO")
        return encode_response(INFO, message)

    def text(self, message: str) -> bytes:
        self._require((DeviceState.BUSY, DeviceState.DOWNLOADING), "send TEXT")
        return encode_response(TEXT, message)

    def start_download(self, size: int) -> bytes:
        """Accept a download: DATA, then ``size`` bytes are expected from the host."""
        self._require((DeviceState.BUSY,), "start a download")
        packet = encode_data(size)
        self._left = self._size = size
        self.state = DeviceState.DOWNLOADING if size else DeviceState.BUSY
        return packet

    def start_upload(self, size: int) -> bytes:
        """Start an upload: DATA, then the device sends ``size`` bytes via ``upload_data``."""
        self._require((DeviceState.BUSY,), "start an upload")
        packet = encode_data(size)
        self._left = self._size = size
        self.state = DeviceState.UPLOADING if size else DeviceState.BUSY
        return packet

    def upload_data(self, data: Buffer) -> Buffer:
        """Account for upload bytes and return them unchanged; OKAY follows the last byte."""
        self._require((DeviceState.UPLOADING,), "send upload data")
        if len(data) > self._left:
            raise ZflashError(Code.INTERNAL, f"{len(data)} upload bytes, {self._left} due")
        self._left -= len(data)
        if self._left == 0:
            self.state = DeviceState.BUSY
        return data

    def _require(self, states: tuple[DeviceState, ...], action: str) -> None:
        if self.state not in states:
            raise ZflashError(Code.INTERNAL, f"device cannot {action} while {self.state.value}")
