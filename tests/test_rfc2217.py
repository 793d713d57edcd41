"""zflash's own RFC 2217 client: the Telnet layer (sans-IO) and the transport against a small
RFC 2217 server on loopback. ser2net itself is exercised in test_serial_stacks.py."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zflash.errors import Code, ZflashError
from zflash.transport import open_transport, parse_device_url
from zflash.transport import telnet
from zflash.transport.rfc2217 import Rfc2217Transport, parse_rfc2217
from zflash.transport.telnet import (BINARY, COM_PORT_OPTION, DO, DONT, IAC, SB, SE, SGA, WILL,
                                     WONT, TelnetStream, command, escape)

ECHO = 1


# ------------------------------------------------------------------ the Telnet layer
def test_plain_data_passes_through_whole() -> None:
    data = bytes(range(255)) * 100
    assert TelnetStream().feed(data) == (data, b"")


def test_escaped_iac_is_one_data_byte_and_commands_are_stripped() -> None:
    wire = (b"ab" + bytes((IAC, IAC)) + b"c" + command(WILL, SGA) + b"d"
            + bytes((IAC, SB, COM_PORT_OPTION, 101)) + struct.pack(">I", 115200)
            + bytes((IAC, SE)) + bytes((IAC, 241)) + b"e")  # 241: NOP
    payload, replies = TelnetStream().feed(wire)
    assert payload == b"ab\xffcde"
    assert replies == b""  # WILL SGA answers our own DO SGA: nothing more to say


@pytest.mark.parametrize("verb,option,reply", [
    (DO, SGA, command(WILL, SGA)),         # agreed once
    (DO, ECHO, command(WONT, ECHO)),       # refused
    (WILL, ECHO, command(DONT, ECHO)),     # refused
    (DO, BINARY, b""),                     # the answer to our own WILL BINARY
    (WILL, BINARY, b""),                   # the answer to our own DO BINARY
    (DONT, BINARY, command(WONT, BINARY)),  # acknowledged
])
def test_negotiation_answers_each_request_once(verb: int, option: int, reply: bytes) -> None:
    stream = TelnetStream()
    assert stream.feed(command(verb, option)) == (b"", reply)
    assert stream.feed(command(verb, option)) == (b"", b"")  # never a negotiation loop


def test_the_server_agreeing_or_refusing_rfc2217_is_noted() -> None:
    agreed, refused = TelnetStream(), TelnetStream()
    agreed.feed(command(DO, COM_PORT_OPTION))
    refused.feed(command(DONT, COM_PORT_OPTION))
    assert agreed.com_port is True and refused.com_port is False


def test_a_subnegotiation_that_never_ends_is_bounded() -> None:
    stream = TelnetStream()
    stream.feed(bytes((IAC, SB, COM_PORT_OPTION)) + b"x" * (1 << 20))
    assert len(stream._sub) <= telnet.MAX_SUBNEGOTIATION
    assert stream.feed(bytes((IAC, SE)) + b"ok") == (b"ok", b"")


def test_escape_doubles_every_iac() -> None:
    assert escape(b"\xff\x00\xff\xff") == b"\xff\xff\x00\xff\xff\xff\xff"


_COMMANDS = st.sampled_from([command(WILL, SGA), command(DO, BINARY), bytes((IAC, 241)),
                             bytes((IAC, SB, COM_PORT_OPTION, 107, IAC, IAC, IAC, SE))])


@settings(max_examples=200, deadline=None)
@given(pieces=st.lists(st.tuples(st.binary(max_size=64), _COMMANDS), max_size=8),
       cuts=st.lists(st.integers(0, 2000), max_size=6))
def test_any_split_of_the_wire_gives_the_same_payload(pieces, cuts) -> None:
    wire = b"".join(escape(data) + cmd for data, cmd in pieces)
    expected = b"".join(data for data, _ in pieces)
    stream = TelnetStream()
    got = bytearray()
    start = 0
    for cut in sorted(c for c in cuts if c <= len(wire)) + [len(wire)]:
        got += stream.feed(wire[start:cut])[0]
        start = cut
    assert bytes(got) == expected


# ------------------------------------------------------------------ the transport
class FakeServer:
    """An RFC 2217 server that echoes the serial payload back; ``agree``: its answer to
    WILL COM-PORT-OPTION (DO, DONT, or None for silence)."""

    def __init__(self, agree: int | None = DO) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.agree = agree
        self.bauds: list[int] = []
        self.set_control = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"rfc2217://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        conn, _ = self._listener.accept()
        stream = _ServerSide(self)
        with conn:
            while data := conn.recv(1 << 16):
                payload, replies = stream.feed(data)
                conn.sendall(replies + escape(payload))

    def close(self) -> None:
        self._listener.close()
        self._thread.join(timeout=5)


class _ServerSide(TelnetStream):
    """The server's view: notes SET-BAUDRATE / SET-CONTROL, answers WILL COM-PORT."""

    def __init__(self, server: FakeServer) -> None:
        super().__init__(said={})
        self.server = server

    def _negotiate(self, verb: int, option: int) -> bytes:
        if verb == WILL and option == COM_PORT_OPTION:
            return b"" if self.server.agree is None else command(self.server.agree, option)
        return b""

    def feed(self, data):  # type: ignore[no-untyped-def]
        out = bytearray()
        replies = bytearray()
        for byte in data:  # byte by byte: the server side is a test helper, not a path
            before = bytes(self._sub)
            ending = self._state == telnet._SB_IAC and byte == SE
            got, reply = super().feed(bytes((byte,)))
            out += got
            replies += reply
            if ending and before[:1] == bytes((COM_PORT_OPTION,)):
                if before[1] == 1:
                    self.server.bauds.append(struct.unpack(">I", before[2:6])[0])
                elif before[1] == 5:
                    self.server.set_control = True
        return bytes(out), bytes(replies)


@pytest.fixture
def server():  # type: ignore[no-untyped-def]
    servers: list[FakeServer] = []

    def start(agree: int | None = DO) -> FakeServer:
        servers.append(FakeServer(agree))
        return servers[-1]

    yield start
    for one in servers:
        one.close()


def test_every_byte_value_goes_through_both_ways(server) -> None:
    fake = server()
    with open_transport(fake.url + "?logging=debug&ign_set_control", timeout=2) as link:
        assert isinstance(link, Rfc2217Transport)
        payload = bytes(range(256)) * 64
        link.write(payload)
        got = bytearray()
        while len(got) < len(payload):
            got += link.read(1 << 20, 5)
    assert bytes(got) == payload
    assert fake.bauds == [115200]  # 8N1 at the URL's (default) rate, no SET-CONTROL
    assert not fake.set_control


def test_a_baud_change_goes_in_band(server) -> None:
    fake = server()
    with open_transport(fake.url, timeout=2) as link:
        link.write(b"ping")
        assert link.read(4, 5) == b"ping"
        link.set_baudrate(921600)
        link.write(b"fast")
        assert link.read(4, 5) == b"fast"
        assert link.baudrate == 921600
    assert fake.bauds == [115200, 921600]


def test_reads_are_large(server) -> None:
    fake = server()
    calls = 0
    with open_transport(fake.url, timeout=2) as link:
        assert isinstance(link, Rfc2217Transport)
        inner_feed = link._telnet.feed

        def counted(data):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return inner_feed(data)

        link._telnet.feed = counted  # type: ignore[method-assign]
        payload = bytes(256 << 10)
        link.write(payload)
        got = bytearray()
        while len(got) < len(payload):
            got += link.read(1 << 20, 5)
    assert len(got) == len(payload)
    assert calls < 200, f"{calls} socket reads for 256 KiB"


@pytest.mark.parametrize("agree,words", [(DONT, "refuses RFC 2217"),
                                         (None, "did not complete the RFC 2217 negotiation")])
def test_a_server_without_rfc2217_is_a_serial_server_error(server, agree, words) -> None:
    fake = server(agree)
    with pytest.raises(ZflashError) as info:
        open_transport(fake.url + "?timeout=0.5", timeout=2)
    assert info.value.code == Code.SERIAL_SERVER
    assert words in info.value.detail and "socket://" in info.value.detail


@pytest.mark.parametrize("url", ["rfc2217://h:1?nosuch=1", "rfc2217://h:1?timeout=x",
                                 "rfc2217://h:1?timeout=0", "rfc2217://h", "rfc2217://:1",
                                 "rfc2217://h:99999"])
def test_a_bad_rfc2217_url_is_refused(url: str) -> None:
    with pytest.raises(ZflashError) as info:
        parse_rfc2217(parse_device_url(url))
    assert info.value.code == Code.BAD_DEVICE_URL


def test_pyserial_options_are_accepted() -> None:
    host, port, wait = parse_rfc2217(parse_device_url(
        "rfc2217://lab1:3001?ign_set_control&poll_modem&logging=debug&timeout=9"))
    assert (host, port, wait) == ("lab1", 3001, 9.0)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=10))
def test_whatever_a_server_sends_is_payload_or_dropped_never_an_exception(chunks) -> None:
    stream = TelnetStream()
    for chunk in chunks:
        payload, replies = stream.feed(chunk)
        assert len(payload) <= len(chunk)
        assert len(replies) <= 3 * len(chunk)  # one 3-byte answer per request at most
    assert len(stream._sub) <= telnet.MAX_SUBNEGOTIATION
