"""Events of the Firehose engines, and the settled result of one host command."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from zflash.errors import Code, ZflashError


class NeedData:
    """``next_event()`` has nothing more until ``receive_data`` is called (compare with ``is``)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


# --- host side -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Log:
    """A ``<log value=...>`` line from the programmer."""

    text: str


@dataclass(frozen=True)
class Response:
    """A ``<response>``: ``rawmode`` True opens a data phase; otherwise it ends the command
    provisionally (late logs may follow for QUIET_PERIOD; then call ``settle()``)."""

    ack: bool
    rawmode: bool
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadData:
    """Bytes of a ``<read>`` data phase, in order."""

    data: bytes


_HEX64 = re.compile(r"\b([0-9a-fA-F]{64})\b")

# Log texts worth a hint (REFERENCE-EDL 3.2).
_HINTS = (
    ("Not support configure MemoryName", "the programmer does not drive this storage type"),
    ("Failed to open the SDCC Device", "wrong storage type (eMMC): try ufs"),
    ("Failed to initialize (open whole lun) UFS", "wrong storage type (UFS): try emmc"),
    ("SECTOR_SIZE_IN_BYTES", "the sector size does not match the storage"),
    ("does not match disk sector size", "the sector size does not match the storage"),
    ("Only nop and sig tag", "this programmer wants vendor authentication first"),
)


@dataclass(frozen=True)
class Result:
    """One command, settled: the final response and every log that came with it."""

    tag: str
    ack: bool
    attrs: dict[str, str]
    logs: tuple[str, ...]

    def error(self) -> ZflashError:
        """The coded error for a NAK: DEVICE_REFUSED with the programmer's own words."""
        words = "; ".join(self.logs) or "no reason given"
        hints = [hint for text, hint in _HINTS if any(text in log for log in self.logs)]
        hint = f" ({hints[0]})" if hints else ""
        return ZflashError(Code.DEVICE_REFUSED, f"Firehose {self.tag} NAK: {words}{hint}")

    def check(self) -> Result:
        """Self when ACKed; raises ``error()`` on a NAK."""
        if not self.ack:
            raise self.error()
        return self

    def digest(self) -> bytes | None:
        """getsha256digest's SHA-256: a Digest/SHA256 attribute or 64 hex chars in a log."""
        for name in ("Digest", "SHA256", "sha256"):
            value = self.attrs.get(name)
            if value and _HEX64.fullmatch(value.strip()):
                return bytes.fromhex(value.strip())
        for log in self.logs:
            found = _HEX64.search(log)
            if found:
                return bytes.fromhex(found.group(1))
        return None


HostEvent = Log | Response | ReadData


# --- device side -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One host command: a child element of ``<data>``."""

    tag: str
    attrs: dict[str, str]

    def get(self, name: str) -> str | None:
        """An attribute, case-insensitively (``ZlpAwareHost`` vs ``ZLPAwareHost``)."""
        if name in self.attrs:
            return self.attrs[name]
        lowered = name.lower()
        return next((v for k, v in self.attrs.items() if k.lower() == lowered), None)


@dataclass(frozen=True)
class ProgramData:
    """Bytes of a ``<program>`` data phase (device side), in order."""

    data: bytes


@dataclass(frozen=True)
class ProgramDone:
    """The last byte of the data phase arrived; the device now sends its final response."""


@dataclass(frozen=True)
class Malformed:
    """A host document that did not parse; the device answers NAK and goes on."""

    reason: str


DeviceEvent = Command | ProgramData | ProgramDone | Malformed
