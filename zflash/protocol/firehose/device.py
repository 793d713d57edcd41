"""The device side of Firehose on the wire: host documents in, logs and responses out.

The engine parses commands and counts a program's data phase; what the commands mean lives in
``programmer.Programmer`` (or any other device logic). Every answer method returns one
document (``<?xml version="1.0" encoding="UTF-8" ?><data>...</data>``, under MaxXMLSizeInBytes).
"""

from __future__ import annotations

from enum import Enum

from zflash.errors import Code, ZflashError
from zflash.protocol.latch import breaks_for_good
from zflash.protocol.firehose.constants import DEVICE_MAX_XML
from zflash.protocol.firehose.events import (
    NEED_DATA,
    Command,
    DeviceEvent,
    Malformed,
    NeedData,
    ProgramData,
    ProgramDone,
)
from zflash.protocol.firehose.xmlwire import Buffer, XmlSplitter, encode_document, parse_document

_DECLARATION = '<?xml version="1.0" encoding="UTF-8" ?>'
_LOG_ROOM = 200  # the envelope around a log value


class DeviceState(Enum):
    COMMAND = "command"  # waiting for the next document
    BUSY = "busy"  # a command arrived; the device must answer it
    RECEIVING = "receiving"  # program data phase
    SENDING = "sending"  # read data phase
    BROKEN = "broken"


def _misuse(why: str) -> ZflashError:
    return ZflashError(Code.INTERNAL, f"Firehose device engine misuse: {why}")


class DeviceEngine:
    """One device-side Firehose session."""

    def __init__(self, max_xml: int = DEVICE_MAX_XML) -> None:
        self.max_xml = max_xml
        self.state = DeviceState.COMMAND
        self._splitter = XmlSplitter(max_xml, "host")
        self._pending: list[DeviceEvent] = []
        self._left = 0

    def receive_data(self, data: Buffer) -> None:
        self._splitter.feed(data)

    @breaks_for_good("Firehose", DeviceState.BROKEN)
    def next_event(self) -> DeviceEvent | NeedData:
        """The next command, data chunk or Malformed; PROTOCOL for a broken byte stream."""
        if self._pending:
            return self._pending.pop(0)
        if self.state is DeviceState.RECEIVING:
            data = self._splitter.raw(self._left)
            if not data:
                return NEED_DATA
            self._left -= len(data)
            if not self._left:
                self.state = DeviceState.BUSY
                self._pending.append(ProgramDone())
            return ProgramData(data)
        if self.state is not DeviceState.COMMAND:
            return NEED_DATA
        dropped = self._splitter.drop_garbage()
        if dropped:
            self.state = DeviceState.BUSY
            return Malformed(f"{dropped} bytes that are not an XML document")
        doc = self._splitter.document()
        if doc is None:
            return NEED_DATA
        self.state = DeviceState.BUSY
        try:
            elements = parse_document(doc, "host")
        except ZflashError as err:
            return Malformed(err.detail)
        if len(elements) != 1:
            return Malformed(f"{len(elements)} commands in one document")
        return Command(elements[0].tag, elements[0].attrs)

    # -- answering ----------------------------------------------------------------------------
    def log(self, text: str) -> bytes:
        """A ``<log>`` line, cut to fit MaxXMLSizeInBytes; allowed at any time."""
        room = max(16, self.max_xml - _LOG_ROOM)
        return encode_document("log", {"value": text[:room]}, declaration=_DECLARATION)

    def ack(self, **attrs: object) -> bytes:
        """The final ACK of the current command (``rawmode="false"`` after a data phase)."""
        return self._final("ACK", attrs)

    def nak(self, **attrs: object) -> bytes:
        """The final NAK of the current command."""
        return self._final("NAK", attrs)

    def _final(self, value: str, attrs: dict[str, object]) -> bytes:
        if self.state not in (DeviceState.BUSY, DeviceState.SENDING):
            raise _misuse(f"a response while {self.state.value}")
        if self.state is DeviceState.SENDING and self._left:
            raise _misuse(f"final response with {self._left} read bytes unsent")
        self.state = DeviceState.COMMAND
        return self._response(value, attrs)

    def _response(self, value: str, attrs: dict[str, object]) -> bytes:
        doc = encode_document("response", {"value": value, **attrs}, declaration=_DECLARATION)
        if len(doc) > self.max_xml:
            raise _misuse(f"response of {len(doc)} bytes")
        return doc

    def start_program(self, size: int) -> bytes:
        """``ACK rawmode="true"``: ``size`` data bytes follow from the host."""
        if self.state is not DeviceState.BUSY or size <= 0:
            raise _misuse(f"start_program({size}) while {self.state.value}")
        self._left = size
        self.state = DeviceState.RECEIVING
        return self._response("ACK", {"rawmode": "true"})

    def start_read(self, size: int) -> bytes:
        """``ACK rawmode="true"``: the device sends ``size`` bytes through read_data."""
        if self.state is not DeviceState.BUSY or size <= 0:
            raise _misuse(f"start_read({size}) while {self.state.value}")
        self._left = size
        self.state = DeviceState.SENDING
        return self._response("ACK", {"rawmode": "true"})

    def read_data(self, data: bytes) -> bytes:
        """Account for read bytes and return them; the final ack() follows the last one."""
        if self.state is not DeviceState.SENDING or len(data) > self._left:
            raise _misuse(f"{len(data)} read bytes while {self.state.value}")
        self._left -= len(data)
        return data

    @property
    def data_left(self) -> int:
        return self._left
