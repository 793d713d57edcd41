"""One GET request over a pinned connection, with the response classified for the caller.

http.client does the HTTP/1.1 framing (content-length, chunked, close-delimited); this module
turns its many exception types into coded errors, refuses framing http.client would guess at
(several or invalid Content-Length headers, Content-Length with Transfer-Encoding), holds
every exchange to a minimum-progress rule (:mod:`zflash.fetch.watchdog`) and parses the one
header resuming depends on, Content-Range.
"""

from __future__ import annotations

import http.client
import re
import ssl
from dataclasses import dataclass
from email.message import Message
from importlib import metadata

from zflash.errors import Code, ZflashError
from zflash.fetch.events import EventSink, ignore
from zflash.fetch.tls import HttpsUrl, PinnedConnection, TlsPolicy
from zflash.fetch.watchdog import MIN_PROGRESS, Watchdog


def _user_agent() -> str:
    """``zflash/VERSION`` from the installed metadata (a bare source tree says "dev")."""
    try:
        return f"zflash/{metadata.version('zflash')}"
    except metadata.PackageNotFoundError:
        return "zflash/dev"


USER_AGENT = _user_agent()
# Errors that mean "the transfer broke" rather than "the server said no".
TRANSFER_ERRORS = (http.client.HTTPException, ssl.SSLError, OSError)
_CONTENT_RANGE = re.compile(r"bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/([0-9]+)")
_LENGTH = re.compile(r"[0-9]{1,19}")
READ_PIECE = 64 << 10


@dataclass(frozen=True)
class ContentRange:
    first: int
    last: int
    total: int | None


def parse_content_range(value: str | None) -> ContentRange | None:
    """``bytes FIRST-LAST/TOTAL`` from a 206 answer; None when absent or malformed."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not match:
        return None
    first, last = int(match[1]), int(match[2])
    total = None if match[3] == "*" else int(match[3])
    if last < first or (total is not None and last >= total):
        return None
    return ContentRange(first, last, total)


def parse_unsatisfied_range(value: str | None) -> int | None:
    """The complete length from a 416 answer's ``bytes */TOTAL``."""
    match = _UNSATISFIED_RANGE.fullmatch((value or "").strip())
    return int(match[1]) if match else None


def body_length(headers: Message, where: str) -> int | None:
    """The body length from a single, valid Content-Length, or None when there is none.

    Several Content-Length headers (even equal ones), a value that is not plain digits, or
    Content-Length next to Transfer-Encoding are refused: http.client would take the first
    or read until close, and a length that is ambiguous cannot bound a download.
    """
    lengths = headers.get_all("Content-Length") or []
    if not lengths:
        return None
    why = None
    if len(lengths) > 1:
        why = f"{len(lengths)} Content-Length headers"
    elif headers.get_all("Transfer-Encoding"):
        why = "both Content-Length and Transfer-Encoding"
    elif not _LENGTH.fullmatch(value := str(lengths[0]).strip(" \t")):
        why = f"invalid Content-Length {value[:40]!r}"
    if why:
        raise ZflashError(Code.DOWNLOAD, f"{where}: server sent {why}; the body's length is "
                                         "ambiguous, so it is not read")
    return int(lengths[0])


class Exchange:
    """An open request: the pinned connection and its response, closed together."""

    def __init__(self, url: HttpsUrl, policy: TlsPolicy, headers: dict[str, str],
                 on_event: EventSink = ignore, min_progress: int = MIN_PROGRESS) -> None:
        self.url = url
        self.conn = PinnedConnection(url, policy, on_event)
        self.watchdog: Watchdog | None = None
        self._length: int | None = None
        try:
            self.conn.connect()  # its own timeouts; the watchdog covers what follows
            # Held here: http.client drops conn.sock once a "Connection: close" answer starts.
            sock = self.conn.sock
            self.watchdog = Watchdog(lambda: sock, policy.timeout, min_progress)
            self.conn.request("GET", url.target, headers={
                "User-Agent": USER_AGENT, "Accept-Encoding": "identity",
                "Connection": "close", **headers})
            self.response = self.conn.getresponse()
            self._check_stall()
            self.watchdog.body_started()
            self._length = body_length(self.response.headers, url.text)
        except ZflashError:
            self.close()
            raise
        except TRANSFER_ERRORS as exc:
            self.close()
            self._check_stall()
            raise ZflashError(Code.DOWNLOAD, f"{url.text}: request failed ({_describe(exc)})"
                              ) from None

    def _check_stall(self) -> None:
        if self.watchdog is not None and self.watchdog.fired:
            raise ZflashError(Code.DOWNLOAD, f"{self.url.text}: {self.watchdog.describe()}; "
                                             "run the same command again to resume")

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def length(self) -> int | None:
        """Content-Length, or None for a chunked or close-delimited body."""
        return None if self.response.chunked else self._length

    def readinto(self, buffer: memoryview) -> int:
        """Like the response's readinto; a stalled server is a coded error, not a short read."""
        assert self.watchdog is not None
        try:
            count = self.response.readinto(buffer)
        except TRANSFER_ERRORS:
            self._check_stall()
            raise
        self._check_stall()
        self.watchdog.progress(count)
        return count

    def read_limited(self, limit: int) -> bytes:
        """The whole body, refused if it exceeds ``limit`` bytes."""
        declared = self.length()
        if declared is not None and declared > limit:
            raise ZflashError(Code.DOWNLOAD, f"{self.url.text}: {declared} bytes is more than "
                                             f"the {limit} allowed")
        data = bytearray()
        buffer = bytearray(min(READ_PIECE, limit + 1))
        view = memoryview(buffer)
        try:
            while len(data) <= limit and (count := self.readinto(view[:limit + 1 - len(data)])):
                data += view[:count]
        except TRANSFER_ERRORS as exc:
            raise ZflashError(Code.DOWNLOAD, f"{self.url.text}: transfer broke off "
                                             f"({_describe(exc)})") from None
        if len(data) > limit:
            raise ZflashError(Code.DOWNLOAD, f"{self.url.text}: more than {limit} bytes")
        if declared is not None and len(data) != declared:
            raise ZflashError(Code.DOWNLOAD, f"{self.url.text}: got {len(data)} of "
                                             f"{declared} bytes")
        return bytes(data)

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        self.conn.close()

    def __enter__(self) -> "Exchange":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe_status(exchange: Exchange) -> ZflashError:
    """A coded error for an HTTP status the caller did not expect."""
    return ZflashError(Code.DOWNLOAD, f"{exchange.url.text}: server answered "
                                      f"{exchange.status} {exchange.response.reason}")


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
