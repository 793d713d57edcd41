"""zflash's RFC 2217 client: the telnet codec (sans I/O) and the transport against a small
scripted server on loopback. The real peer (ser2net) is in test_serial_stacks.py."""

from __future__ import annotations

import os
import socket
import threading
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zflash.errors import Code, ZflashError
from zflash.transport import open_transport
from zflash.transport.telnet import (
    BINARY,
    COM_PORT_OPTION,
    DO,
    DONT,
    ECHO,
    IAC,
    MAX_SUBNEGOTIATION,
    SB,
    SE,
    SET_BAUDRATE,
    SGA,
    WILL,
    WONT,
    TelnetCodec,
)


def receive_in_chunks(codec: TelnetCodec, wire: bytes, cuts: list[int]) -> bytes:
    """Feed ``wire`` to the codec split at ``cuts``; the data it returns."""
    out, start = bytearray(), 0
    for cut in sorted(set(c % (len(wire) + 1) for c in cuts)) + [len(wire)]:
        out += codec.receive(wire[start:cut])
        start = cut
    return bytes(out)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 4000), max_size=12))
def test_escaped_data_comes_back_whole_however_it_is_split(data: bytes, cuts: list[int]) -> None:
    wire = TelnetCodec.escape(data)
    assert wire.count(b"\xff") == 2 * data.count(b"\xff")
    assert receive_in_chunks(TelnetCodec(), wire, cuts) == data


def test_commands_inside_data_are_taken_out_and_answered() -> None:
    codec = TelnetCodec()
    baud_answer = bytes((IAC, SB, COM_PORT_OPTION, SET_BAUDRATE + 100, 0, 1, 0xC2, 0, IAC, SE))
    wire = (b"ab" + bytes((IAC, DO, BINARY)) + b"\xff\xffc" + bytes((IAC, WILL, ECHO))
            + baud_answer + bytes((IAC, DO, 99)) + b"d")
    assert receive_in_chunks(codec, wire, [3, 4, 9, 15]) == b"ab\xffcd"
    assert codec.answers[SET_BAUDRATE] == (115200).to_bytes(4, "big")
    assert BINARY in codec.local_on
    # WILL BINARY for their DO (not asked by us), DONT ECHO, WONT for the unknown option 99
    assert codec.pending() == bytes((IAC, WILL, BINARY, IAC, DONT, ECHO, IAC, WONT, 99))


def test_no_answer_loops() -> None:
    """An answer is sent only when the state changes: a server repeating itself gets
    nothing new, and our own request's answer is not answered again."""
    codec = TelnetCodec()
    codec.request(WILL, SGA)
    codec.pending()
    codec.receive(bytes((IAC, DO, SGA)) * 3 + bytes((IAC, DO, 99)) * 3)
    assert codec.pending() == bytes((IAC, WONT, 99))
    codec.request(DO, BINARY)
    codec.receive(bytes((IAC, WONT, BINARY)))
    assert (DO, BINARY) in codec.declined
    assert codec.pending() == bytes((IAC, DO, BINARY))  # the request itself, nothing after


def test_an_endless_subnegotiation_is_refused() -> None:
    codec = TelnetCodec()
    with pytest.raises(ZflashError) as info:
        codec.receive(bytes((IAC, SB)) + b"x" * (MAX_SUBNEGOTIATION + 1))
    assert info.value.code == Code.SERIAL_SERVER


# --- the transport against a scripted server -------------------------------------------------

Script = Callable[[socket.socket], None]


class Server:
    """One loopback connection served by ``script`` on a thread."""

    def __init__(self, script: Script) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.received = bytearray()
        self._thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self._thread.start()

    def _serve(self, script: Script) -> None:
        conn, _ = self._listener.accept()
        with conn:
            try:
                script(conn)
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()
        self._thread.join(5)


def rfc2217_server(payload: bytes, refuse_com_port: bool = False) -> Script:
    """A minimal honest server: agrees to the options, answers each COM-PORT setting, then
    sends ``payload`` escaped. It reads COM-PORT requests straight from the raw bytes."""
    agree = bytes((IAC, DO, COM_PORT_OPTION, IAC, DO, BINARY, IAC, WILL, BINARY))

    def script(conn: socket.socket) -> None:
        answered: set[int] = set()
        conn.settimeout(5)
        first = True
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            if refuse_com_port:
                conn.sendall(bytes((IAC, DONT, COM_PORT_OPTION)))
                return _drain(conn)
            reply = agree if first else b""
            first = False
            for command in _commands(chunk):
                if command not in answered and command != 5:  # SET_CONTROL: never answered
                    answered.add(command)
                    reply += bytes((IAC, SB, COM_PORT_OPTION, command + 100, 0, IAC, SE))
            conn.sendall(reply)
            if {1, 2, 3, 4} <= answered:
                conn.sendall(TelnetCodec.escape(payload))
                return _drain(conn)

    return script


def _commands(chunk: bytes) -> list[int]:
    marker = bytes((IAC, SB, COM_PORT_OPTION))
    found, at = [], chunk.find(marker)
    while at >= 0:
        found.append(chunk[at + 3])
        at = chunk.find(marker, at + 1)
    return found


def _drain(conn: socket.socket) -> None:
    while conn.recv(65536):
        pass


def test_data_with_every_byte_value_arrives_in_large_reads() -> None:
    payload = os.urandom(1 << 20) + bytes(range(256)) * 64
    server = Server(rfc2217_server(payload))
    try:
        link = open_transport(f"rfc2217://127.0.0.1:{server.port}?ign_set_control", timeout=5)
        got, reads = bytearray(), 0
        while len(got) < len(payload):
            got += link.read(1 << 20, 5)
            reads += 1
        link.close()
    finally:
        server.close()
    assert bytes(got) == payload
    assert reads < 100, f"{reads} reads for {len(payload)} bytes"  # pyserial's client: 1 each


def test_a_server_refusing_com_port_is_named() -> None:
    server = Server(rfc2217_server(b"", refuse_com_port=True))
    try:
        with pytest.raises(ZflashError) as info:
            open_transport(f"rfc2217://127.0.0.1:{server.port}", timeout=3)
    finally:
        server.close()
    assert info.value.code == Code.SERIAL_SERVER
    assert "refuses RFC 2217" in info.value.detail and "socket://" in info.value.detail


def test_a_silent_server_ends_within_the_url_timeout() -> None:
    server = Server(_drain)
    try:
        with pytest.raises(ZflashError) as info:
            open_transport(f"rfc2217://127.0.0.1:{server.port}?timeout=0.5", timeout=30)
    finally:
        server.close()
    assert info.value.code == Code.SERIAL_SERVER
    assert "did not answer the COM-PORT-OPTION" in info.value.detail


def test_a_baud_change_is_sent_in_band_and_awaited() -> None:
    """set_baudrate asks the server to reprogram its port and returns once it confirmed."""
    asked: list[int] = []

    def script(conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.sendall(bytes((IAC, DO, COM_PORT_OPTION, IAC, DO, BINARY, IAC, WILL, BINARY)))
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            marker = bytes((IAC, SB, COM_PORT_OPTION, SET_BAUDRATE))
            at = chunk.find(marker)
            while at >= 0:
                asked.append(int.from_bytes(chunk[at + 4:at + 8], "big"))
                at = chunk.find(marker, at + 1)
            reply = b"".join(bytes((IAC, SB, COM_PORT_OPTION, command + 100, 0, IAC, SE))
                             for command in _commands(chunk) if command != 5)
            conn.sendall(reply)

    server = Server(script)
    try:
        link = open_transport(f"rfc2217://127.0.0.1:{server.port}?baud=9600", timeout=5)
        assert link.baudrate == 9600  # type: ignore[attr-defined]
        link.set_baudrate(921600)
        assert link.baudrate == 921600  # type: ignore[attr-defined]
        link.close()
    finally:
        server.close()
    assert asked == [9600, 921600]
