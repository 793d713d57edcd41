"""Telnet framing for RFC 2217 (a serial port shared over the network), sans I/O.

What travels between zflash and a serial server such as ser2net is a telnet stream in binary
mode: data bytes, with 0xFF (IAC) doubled, interleaved with option negotiation (IAC WILL/
WONT/DO/DONT x) and subnegotiations (IAC SB ... IAC SE), of which RFC 2217's COM-PORT-OPTION
(44) carries the line settings. ``TelnetCodec`` turns received bytes into data, answers
option requests, and keeps the server's COM-PORT answers; the transport does the I/O.

The data path is the reason this exists: a chunk without 0xFF is returned as it is, and a
chunk with some is split with ``bytes.find`` rather than walked byte by byte, so a flash or a
backup through ser2net runs at the link's speed, not at a Python loop's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zflash.errors import Code, ZflashError

IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
BINARY, ECHO, SGA, COM_PORT_OPTION = 0, 1, 3, 44

#: RFC 2217 client-to-server commands; the server answers each with the command + 100.
SET_BAUDRATE, SET_DATASIZE, SET_PARITY, SET_STOPSIZE, SET_CONTROL = 1, 2, 3, 4, 5
SERVER_OFFSET = 100
PARITY_NONE = 1
STOPSIZE_1 = 1
CONTROL_DTR_ON, CONTROL_RTS_ON = 8, 11

#: Options zflash agrees to perform itself (answers DO with WILL) and to let the server
#: perform (answers WILL with DO). ECHO is refused: a serial line is not a terminal.
LOCAL_OPTIONS = frozenset({BINARY, SGA, COM_PORT_OPTION})
REMOTE_OPTIONS = frozenset({BINARY, SGA})

#: A subnegotiation longer than this is not RFC 2217 (the longest is a 4-byte baud rate or
#: a signature text); refusing it bounds what a hostile server can make zflash hold.
MAX_SUBNEGOTIATION = 4096

_DATA, _IAC, _VERB, _SB, _SB_IAC = range(5)
_VERBS = (WILL, WONT, DO, DONT)


@dataclass
class TelnetCodec:
    """One telnet connection's receive state, option state and pending answers."""

    local_on: set[int] = field(default_factory=set)  #: options zflash performs now
    remote_on: set[int] = field(default_factory=set)  #: options the server performs now
    refused: set[tuple[int, int]] = field(default_factory=set)  #: (verb, option) answered no
    asked: set[tuple[int, int]] = field(default_factory=set)  #: requests awaiting an answer
    declined: set[tuple[int, int]] = field(default_factory=set)  #: requests the server refused
    answers: dict[int, bytes] = field(default_factory=dict)  #: COM-PORT command -> value
    _state: int = _DATA
    _verb: int = 0
    _sub: bytearray = field(default_factory=bytearray)
    _out: bytearray = field(default_factory=bytearray)

    # --- sending ---------------------------------------------------------------------------

    @staticmethod
    def escape(data: bytes | bytearray | memoryview) -> bytes:
        """Data bytes as they go on the wire: every 0xFF doubled."""
        return bytes(data).replace(b"\xff", b"\xff\xff")

    def request(self, verb: int, option: int) -> None:
        """Ask to enable an option (WILL: zflash performs it; DO: the server does)."""
        self.asked.add((verb, option))
        self._out += bytes((IAC, verb, option))

    def com_port(self, command: int, value: bytes) -> None:
        """Queue an RFC 2217 command (IAC SB 44 command value IAC SE, value escaped)."""
        self.answers.pop(command, None)
        self._out += bytes((IAC, SB, COM_PORT_OPTION, command))
        self._out += self.escape(value) + bytes((IAC, SE))

    def pending(self) -> bytes:
        """Telnet bytes to send now (requests and answers), and forget them."""
        out, self._out = bytes(self._out), bytearray()
        return out

    # --- receiving -------------------------------------------------------------------------

    def receive(self, chunk: bytes) -> bytes:
        """The data bytes in ``chunk``; telnet commands in it update state and answers."""
        if self._state == _DATA and IAC not in chunk:
            return chunk
        data = bytearray()
        index, end = 0, len(chunk)
        while index < end:
            if self._state == _DATA:
                found = chunk.find(b"\xff", index)
                if found < 0:
                    data += chunk[index:]
                    break
                data += chunk[index:found]
                self._state, index = _IAC, found + 1
                continue
            byte = chunk[index]
            index += 1
            self._step(byte, data)
        return bytes(data)

    def _step(self, byte: int, data: bytearray) -> None:
        """One byte outside the plain-data fast path."""
        if self._state == _IAC:
            if byte == IAC:
                data.append(IAC)
                self._state = _DATA
            elif byte in _VERBS:
                self._verb, self._state = byte, _VERB
            elif byte == SB:
                self._sub.clear()
                self._state = _SB
            else:  # NOP, GA, a stray SE, ...: nothing for a serial stream
                self._state = _DATA
        elif self._state == _VERB:
            self._negotiate(self._verb, byte)
            self._state = _DATA
        elif self._state == _SB:
            if byte == IAC:
                self._state = _SB_IAC
            else:
                self._collect(byte)
        else:  # _SB_IAC
            if byte == IAC:
                self._collect(IAC)
                self._state = _SB
            else:  # SE, or a malformed end: the subnegotiation is over either way
                self._subnegotiation(bytes(self._sub))
                self._state = _DATA

    def _collect(self, byte: int) -> None:
        if len(self._sub) >= MAX_SUBNEGOTIATION:
            raise ZflashError(Code.SERIAL_SERVER, "the serial server sent a telnet "
                              f"subnegotiation longer than {MAX_SUBNEGOTIATION} bytes")
        self._sub.append(byte)

    def _subnegotiation(self, body: bytes) -> None:
        """Keep the server's COM-PORT answers; other subnegotiations mean nothing here."""
        if len(body) >= 2 and body[0] == COM_PORT_OPTION and body[1] >= SERVER_OFFSET:
            self.answers[body[1] - SERVER_OFFSET] = body[2:]

    def _negotiate(self, verb: int, option: int) -> None:
        """Answer an option request only when it changes state (so no answer loops)."""
        if verb in (DO, DONT):
            wanted, mine, ok, yes, no = verb == DO, self.local_on, LOCAL_OPTIONS, WILL, WONT
        else:
            wanted, mine, ok, yes, no = verb == WILL, self.remote_on, REMOTE_OPTIONS, DO, DONT
        ours = (yes, option) in self.asked
        self.asked.discard((yes, option))
        if wanted and option in ok:
            if option not in mine:
                mine.add(option)
                if not ours:
                    self._out += bytes((IAC, yes, option))
        elif wanted:
            if (no, option) not in self.refused:
                self.refused.add((no, option))
                self._out += bytes((IAC, no, option))
        elif option in mine:
            mine.discard(option)
            self._out += bytes((IAC, no, option))
        elif ours:
            self.declined.add((yes, option))
