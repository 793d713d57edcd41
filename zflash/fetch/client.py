"""One GET request over a pinned connection, with the response classified for the caller.

http.client does the HTTP/1.1 framing (content-length, chunked, close-delimited); this module
only turns its many exception types into coded errors and parses the one header resuming
depends on, Content-Range.
"""

from __future__ import annotations

import http.client
import re
import ssl
from dataclasses import dataclass
from importlib import metadata

from zflash.errors import Code, ZflashError
from zflash.fetch.events import EventSink, ignore
from zflash.fetch.tls import HttpsUrl, PinnedConnection, TlsPolicy



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


class Exchange:
    """An open request: the pinned connection and its response, closed together."""

    def __init__(self, url: HttpsUrl, policy: TlsPolicy, headers: dict[str, str],
                 on_event: EventSink = ignore) -> None:
        self.url = url
        self.conn = PinnedConnection(url, policy, on_event)
        try:
            self.conn.request("GET", url.target, headers={
                "User-Agent": USER_AGENT, "Accept-Encoding": "identity",
                "Connection": "close", **headers})
            self.response = self.conn.getresponse()
        except ZflashError:
            self.conn.close()
            raise
        except TRANSFER_ERRORS as exc:
            self.conn.close()
            raise ZflashError(Code.DOWNLOAD, f"{url.text}: request failed ({_describe(exc)})"
                              ) from None

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def length(self) -> int | None:
        """Content-Length, or None for a chunked or close-delimited body."""
        if self.response.chunked:
            return None
        value = self.header("Content-Length")
        return int(value) if value and value.strip().isdigit() else None

    def readinto(self, buffer: memoryview) -> int:
        return self.response.readinto(buffer)

    def read_limited(self, limit: int) -> bytes:
        """The whole body, refused if it exceeds ``limit`` bytes."""
        declared = self.length()
        if declared is not None and declared > limit:
            raise ZflashError(Code.DOWNLOAD, f"{self.url.text}: {declared} bytes is more than "
                                             f"the {limit} allowed")
        try:
            data = self.response.read(limit + 1)
            while len(data) <= limit and (more := self.response.read(limit + 1 - len(data))):
                data += more
        except TRANSFER_ERRORS as exc:
            raise ZflashError(Code.DOWNLOAD, f"{self.url.text}: transfer broke off "
                                             f"({_describe(exc)})") from None
        if len(data) > limit:
            raise ZflashError(Code.DOWNLOAD, f"{self.url.text}: more than {limit} bytes")
        if declared is not None and len(data) != declared:
            raise ZflashError(Code.DOWNLOAD, f"{self.url.text}: got {len(data)} of "
                                             f"{declared} bytes")
        return data

    def close(self) -> None:
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
