"""The Telnet layer of RFC 2217 (a serial port shared over the network), sans-IO.

``TelnetStream`` takes what the socket delivered and gives back the serial payload and the
negotiation replies due; ``escape`` makes payload safe to send (a 0xFF data byte goes as
IAC IAC). Runs of plain data are copied whole (a search for IAC, then a slice), so a
megabyte costs a few C calls, not a Python step per byte: pyserial's own rfc2217 client
passes every byte through a thread-safe queue and tops out near 0.3 MiB/s.

Only what a serial client needs is implemented (RFC 854 commands and option negotiation,
RFC 856 BINARY, RFC 858 SGA, RFC 2217 COM-PORT-OPTION); the server's subnegotiations
(acknowledged settings, line and modem state notifications) are parsed and dropped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

Buffer = bytes | bytearray | memoryview

IAC, SB, SE = 255, 250, 240
WILL, WONT, DO, DONT = 251, 252, 253, 254
BINARY, SGA, COM_PORT_OPTION = 0, 3, 44
# RFC 2217 client -> server commands (the server answers each with the code + 100)
SET_BAUDRATE, SET_DATASIZE, SET_PARITY, SET_STOPSIZE = 1, 2, 3, 4
PARITY_NONE, STOPSIZE_1 = 1, 1
#: options zflash agrees to on both sides; everything else is refused once
_OURS = frozenset({BINARY, SGA, COM_PORT_OPTION})
#: a subnegotiation longer than this is a hostile or broken server: its rest is dropped
MAX_SUBNEGOTIATION = 4096

_DATA, _IAC, _OPTION, _SB, _SB_IAC = range(5)


def escape(data: Buffer) -> bytes:
    """Payload as it goes on the wire: each 0xFF doubled (RFC 854)."""
    return bytes(data).replace(b"\xff", b"\xff\xff")


def command(verb: int, option: int) -> bytes:
    return bytes((IAC, verb, option))


def com_port(code: int, value: bytes) -> bytes:
    """One RFC 2217 subnegotiation: IAC SB COM-PORT-OPTION code value IAC SE."""
    return bytes((IAC, SB, COM_PORT_OPTION, code)) + escape(value) + bytes((IAC, SE))


def set_baudrate(baud: int) -> bytes:
    return com_port(SET_BAUDRATE, struct.pack(">I", baud))


def opening(baud: int) -> bytes:
    """What a client sends at once: the options it wants, then 8N1 at ``baud``. No flow
    control request (SET-CONTROL): ser2net on a port without modem lines never answers it,
    and ZDL needs none."""
    return (command(WILL, BINARY) + command(DO, BINARY) + command(DO, SGA)
            + command(WILL, COM_PORT_OPTION) + set_baudrate(baud)
            + com_port(SET_DATASIZE, b"\x08") + com_port(SET_PARITY, bytes((PARITY_NONE,)))
            + com_port(SET_STOPSIZE, bytes((STOPSIZE_1,))))


@dataclass
class TelnetStream:
    """The receive side of one Telnet connection: bytes in, payload and replies out."""

    #: what we already said about an option (verb per (WILL/WONT side, option)), so each
    #: request is answered once and two peers never loop on each other
    said: dict[tuple[str, int], int] = field(default_factory=lambda: {
        ("us", BINARY): WILL, ("us", COM_PORT_OPTION): WILL,
        ("them", BINARY): DO, ("them", SGA): DO})
    #: the server agreed to RFC 2217 (DO COM-PORT-OPTION), or refused it (DONT)
    com_port: bool | None = None
    _state: int = _DATA
    _verb: int = 0
    _sub: bytearray = field(default_factory=bytearray)

    def feed(self, data: Buffer) -> tuple[bytes, bytes]:
        """(serial payload, negotiation replies to send) for the bytes received."""
        raw = data if type(data) is bytes else bytes(data)
        if self._state == _DATA and raw.find(b"\xff") < 0:
            return raw, b""  # the common case: plain payload, passed through as it is
        out = bytearray()
        replies = bytearray()
        pos, end = 0, len(raw)
        while pos < end:
            state = self._state
            if state == _DATA:
                at = raw.find(b"\xff", pos)
                if at < 0:
                    out += raw[pos:]
                    break
                out += raw[pos:at]
                self._state = _IAC
                pos = at + 1
                continue
            byte = raw[pos]
            pos += 1
            if state == _IAC:
                self._on_iac(byte, out)
            elif state == _OPTION:
                replies += self._negotiate(self._verb, byte)
                self._state = _DATA
            elif state == _SB:
                if byte == IAC:
                    self._state = _SB_IAC
                elif len(self._sub) < MAX_SUBNEGOTIATION:
                    self._sub.append(byte)
            else:  # _SB_IAC
                if byte == SE:
                    self._sub.clear()  # a server report (acks, line/modem state): dropped
                    self._state = _DATA
                else:  # IAC IAC inside: a 0xFF value byte
                    if byte == IAC and len(self._sub) < MAX_SUBNEGOTIATION:
                        self._sub.append(IAC)
                    self._state = _SB
        return bytes(out), bytes(replies)

    def _on_iac(self, byte: int, out: bytearray) -> None:
        if byte == IAC:
            out.append(IAC)  # an escaped 0xFF data byte
            self._state = _DATA
        elif byte in (WILL, WONT, DO, DONT):
            self._verb = byte
            self._state = _OPTION
        elif byte == SB:
            self._sub.clear()
            self._state = _SB
        else:
            self._state = _DATA  # NOP, GA, AYT, ...: nothing for a serial client

    def _negotiate(self, verb: int, option: int) -> bytes:
        """The reply to the server's WILL/WONT/DO/DONT ``option``, or nothing."""
        if option == COM_PORT_OPTION and verb in (DO, DONT):
            self.com_port = verb == DO
        if verb in (DO, DONT):  # about our side
            key, answer = ("us", option), (WILL if verb == DO and option in _OURS else WONT)
        else:  # about theirs
            key, answer = ("them", option), (DO if verb == WILL and option in _OURS else DONT)
        if self.said.get(key) == answer:
            return b""  # already said so: this is the answer to our own request
        self.said[key] = answer
        return command(answer, option)
