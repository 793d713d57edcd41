"""``rfc2217://HOST:PORT``: a serial port shared by ser2net (or a board farm) over Telnet.

zflash's own client rather than pyserial's: pyserial's reader thread hands every received
byte through a queue, one lock round trip per byte, so a backup through ser2net moved about
0.3 MiB/s however fast the line (DECISIONS D173). Here the socket is read in large pieces
on the caller's thread and the Telnet layer (``telnet.TelnetStream``) strips its commands
with a search and a slice. The connection is plain TCP (``tcp.connect``: non-blocking,
TCP_NODELAY, large buffers); a baud change is an RFC 2217 SET-BAUDRATE in the same stream,
so ser2net applies it exactly between the bytes before and after it.

pyserial's URL options are accepted so that existing URLs keep working: ``timeout=S`` (how
long the server may take to agree to RFC 2217, default 3 s), ``ign_set_control`` (always
so here: no SET-CONTROL is sent), ``poll_modem`` and ``logging=LEVEL`` (ignored).
"""

from __future__ import annotations

import math
import time
from urllib.parse import parse_qsl, urlsplit

from zflash.errors import Code, ZflashError
from zflash.transport import telnet
from zflash.transport.base import (
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Buffer,
    Transport,
    check_baud,
    check_read_args,
)
from zflash.transport.tcp import TcpTransport, connect
from zflash.transport.url import DeviceUrl

#: how long a server may take to agree to RFC 2217 (pyserial's default network timeout)
NEGOTIATION_TIMEOUT = 3.0
READ_PIECE = 1 << 20
_OPTIONS = frozenset({"timeout", "ign_set_control", "poll_modem", "logging"})


def parse_rfc2217(url: DeviceUrl) -> tuple[str, int, float]:
    """(host, port, negotiation timeout) of an ``rfc2217://`` URL; a malformed one is 9028."""
    parts = urlsplit(url.raw)
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ZflashError(Code.BAD_DEVICE_URL, f"{url}: {exc}") from None
    if not host or port is None:
        raise ZflashError(Code.BAD_DEVICE_URL, f"{url}: expected rfc2217://HOST:PORT")
    wait = NEGOTIATION_TIMEOUT
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _OPTIONS:
            raise ZflashError(Code.BAD_DEVICE_URL, f"{url}: unknown option {name!r} (known: "
                                                   f"{', '.join(sorted(_OPTIONS))})")
        if name == "timeout":
            try:
                wait = float(value)
            except ValueError:
                wait = -1.0
            if not math.isfinite(wait) or not 0 < wait <= 600:
                raise ZflashError(Code.BAD_DEVICE_URL,
                                  f"{url}: timeout must be 0..600 seconds, not {value!r}")
    return host, port, wait


class Rfc2217Transport(Transport):
    """A serial port behind an RFC 2217 server: TCP with Telnet framing and a line rate."""

    has_baudrate = True

    def __init__(self, tcp: TcpTransport, url: DeviceUrl, baud: int) -> None:
        self._tcp = tcp
        self._url = url
        self._baud = baud
        self._telnet = telnet.TelnetStream()
        self._pending = b""  # payload received beyond what a read could return

    @classmethod
    def open(cls, url: DeviceUrl, timeout: float = DEFAULT_OPEN_TIMEOUT,
             write_timeout: float = DEFAULT_WRITE_TIMEOUT) -> Rfc2217Transport:
        """Connect, ask for binary mode, RFC 2217 and 8N1 at the URL's baud, and wait until
        the server agreed to RFC 2217 (a raw TCP port never does)."""
        host, port, wait = parse_rfc2217(url)
        try:
            sock = connect(host, port, timeout)
        except ZflashError as exc:
            raise ZflashError(Code.SERIAL_SERVER, f"{url}: {exc.detail}; is the serial server "
                                                  "(ser2net, a board farm) running there?"
                              ) from None
        transport = cls(TcpTransport(sock, url, write_timeout), url, url.baud)
        try:
            transport._negotiate(wait)
        except BaseException:
            transport.close()
            raise
        return transport

    def _negotiate(self, wait: float) -> None:
        self._tcp.write(telnet.opening(self._baud))
        deadline = time.monotonic() + wait
        while self._telnet.com_port is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ZflashError(Code.SERIAL_SERVER,
                                  f"{self._url}: the server accepted the connection but did "
                                  f"not complete the RFC 2217 negotiation within {wait:g} s; "
                                  "it is probably a raw TCP port: open it as socket:// instead")
            try:
                self._take(self._tcp.read(READ_PIECE, left))
            except ZflashError as exc:
                if exc.code != Code.TIMEOUT:
                    raise ZflashError(Code.SERIAL_SERVER, f"{self._url}: the server closed the "
                                                          "connection during the RFC 2217 "
                                                          "negotiation") from None
        if not self._telnet.com_port:
            raise ZflashError(Code.SERIAL_SERVER, f"{self._url}: the server refuses RFC 2217 "
                                                  "(DONT COM-PORT-OPTION); open it as "
                                                  "socket:// if it is a raw serial port")

    def _take(self, data: bytes) -> None:
        payload, replies = self._telnet.feed(data)
        if replies:
            self._tcp.write(replies)
        if payload:
            self._pending += payload

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"rfc2217 {self._url} @ {self._baud}"

    @property
    def baudrate(self) -> int:
        """The line rate last asked of the server."""
        return self._baud

    def set_baudrate(self, baud: int) -> None:
        """SET-BAUDRATE, in band: bytes written after it go out at the new rate."""
        check_baud(baud)
        self._tcp.write(telnet.set_baudrate(baud))
        self._baud = baud

    def write(self, data: Buffer) -> None:
        self._tcp.write(telnet.escape(data))

    def read(self, max_bytes: int, timeout: float) -> bytes:
        """1..max_bytes payload bytes; TIMEOUT after ``timeout`` s; LINK_LOST on EOF."""
        check_read_args(max_bytes, timeout)
        deadline = time.monotonic() + timeout
        while not self._pending:
            # Telnet commands alone are no payload: keep reading until the deadline
            self._take(self._tcp.read(READ_PIECE, max(0.0, deadline - time.monotonic())))
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    def close(self) -> None:
        self._tcp.close()
