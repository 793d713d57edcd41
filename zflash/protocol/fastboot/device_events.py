"""Events the device engine hands to its caller: what the host asked, already parsed.

Apart from ``events`` (the host's) so that a host does not pay for defining these classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Command:
    """One command packet (ASCII, e.g. ``getvar:product``)."""

    text: str

    @property
    def verb(self) -> str:
        """``getvar`` for ``getvar:x``, ``oem`` for ``oem unlock``, the whole text otherwise."""
        return self.split()[0]

    @property
    def argument(self) -> str:
        return self.split()[1]

    def split(self) -> tuple[str, str]:
        """``oem``/``flashing`` take space-separated arguments; everything else uses ``:``."""
        verb, sep, arg = self.text.partition(" ")
        if sep and verb in _SPACE_VERBS:
            return verb, arg
        verb, sep, arg = self.text.partition(":")
        return (verb, arg) if sep else (self.text, "")


_SPACE_VERBS = frozenset({"oem", "flashing"})


@dataclass(frozen=True)
class DownloadData:
    """Bytes of a download; valid only until the next call into the engine."""

    data: memoryview


@dataclass(frozen=True)
class DownloadDone:
    """All ``size`` bytes announced by DATA arrived; the device must now answer."""

    size: int


@dataclass(frozen=True)
class Malformed:
    """A command packet that could not be read (too long, not ASCII); answer it with FAIL."""

    reason: str


DeviceEvent = Union[Command, DownloadData, DownloadDone, Malformed]
