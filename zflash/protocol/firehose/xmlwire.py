"""Firehose XML on the wire: build one document, parse one safely, split a byte stream.

Every document is ``<?xml ...?><data>`` + elements + ``</data>``. Parsing is bounded (one
document at most ``limit`` bytes) and refuses DOCTYPE and ENTITY declarations before
xml.etree sees the bytes, so no entity expansion can happen; only the five predefined
entities and character references remain.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

from zflash.errors import Code, ZflashError

Buffer = bytes | bytearray | memoryview

_START = b"<?xml"
_END = b"</data>"
_FORBIDDEN = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)
_WHITESPACE = b" \t\r\n\0"


@dataclass(frozen=True)
class Element:
    """One child of ``<data>``: its tag and attributes (all strings, as on the wire)."""

    tag: str
    attrs: dict[str, str] = field(default_factory=dict)

    def get(self, name: str, default: str | None = None) -> str | None:
        """An attribute, looked up case-insensitively (devices and hosts disagree on case)."""
        if name in self.attrs:
            return self.attrs[name]
        lowered = name.lower()
        for key, value in self.attrs.items():
            if key.lower() == lowered:
                return value
        return default


def encode_document(tag: str, attrs: dict[str, object] | None = None, *,
                    declaration: str = '<?xml version="1.0" ?>') -> bytes:
    """``<?xml version="1.0" ?><data><tag a="v" /></data>`` with escaped attribute values."""
    parts = [f"{name}={quoteattr(str(value))}" for name, value in (attrs or {}).items()]
    inner = " ".join([tag, *parts])
    return f"{declaration}<data><{inner} /></data>".encode()


def parse_document(data: bytes, side: str = "device") -> list[Element]:
    """The elements of one document; ZflashError(PROTOCOL) for anything else."""
    if _FORBIDDEN.search(data):
        raise ZflashError(Code.PROTOCOL, f"Firehose: the {side} sent XML with a DOCTYPE or "
                                         "entity declaration")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise ZflashError(Code.PROTOCOL, f"Firehose: malformed XML from the {side}: "
                                         f"{err}") from None
    if root.tag != "data":
        raise ZflashError(Code.PROTOCOL, f"Firehose: XML root <{root.tag}>, not <data>")
    return [Element(child.tag, dict(child.attrib)) for child in root]


class XmlSplitter:
    """Cuts a byte stream into XML documents (``<?xml`` ... ``</data>``) and raw runs.

    Used on both sides and for both transports: over USB a document is one transfer, over the
    COM variant documents and data arrive as one stream; the engines say when raw bytes are due.
    """

    def __init__(self, limit: int, side: str) -> None:
        self.limit = limit
        self.side = side
        self._buf = bytearray()

    def feed(self, data: Buffer) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def document(self) -> bytes | None:
        """The next whole document, or None. Whitespace between documents is skipped;
        anything else before ``<?xml``, or a document over ``limit`` bytes, is refused."""
        buf = self._buf
        skip = 0
        while skip < len(buf) and buf[skip] in _WHITESPACE:
            skip += 1
        if skip:
            del buf[:skip]
        if not buf:
            return None
        head = bytes(buf[:len(_START)])
        if not _START.startswith(head):
            raise ZflashError(Code.PROTOCOL, f"Firehose: the {self.side} sent {head!r}... where "
                                             "an XML document was due")
        end = buf.find(_END)
        if end < 0:
            if len(buf) > self.limit:
                raise ZflashError(Code.PROTOCOL, f"Firehose: an XML document from the "
                                                 f"{self.side} runs past {self.limit} bytes")
            return None
        end += len(_END)
        if end > self.limit:
            raise ZflashError(Code.PROTOCOL, f"Firehose: an XML document of {end} bytes from "
                                             f"the {self.side} (limit {self.limit})")
        doc = bytes(buf[:end])
        del buf[:end]
        return doc

    def drop_garbage(self) -> int:
        """Drop what cannot begin a document (bytes before the next ``<?xml``, keeping a tail
        that may be its start); how many were dropped. The device uses it: a programmer
        answers bytes that are not XML (a Sahara packet sent to it) with a NAK and goes on."""
        buf = self._buf
        at = buf.find(_START)
        if at < 0:  # keep the longest tail that may still become "<?xml"
            at = next(i for i in range(max(0, len(buf) - len(_START) + 1), len(buf) + 1)
                      if _START.startswith(bytes(buf[i:])))
        if not any(b not in _WHITESPACE for b in buf[:at]):
            return 0  # nothing, or whitespace only: document() skips it
        del buf[:at]
        return at

    def raw(self, most: int) -> bytes:
        """Up to ``most`` buffered bytes of a raw data phase (maybe empty)."""
        out = bytes(self._buf[:most])
        del self._buf[:most]
        return out

    def drop_separator(self) -> None:
        """Drop a lone line break left after a document that starts a raw phase (D45)."""
        if 0 < len(self._buf) <= 2 and all(b in b"\r\n" for b in self._buf):
            self._buf.clear()
