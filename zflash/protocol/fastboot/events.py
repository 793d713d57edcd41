"""Events the engines hand to their callers: what the other side said, already parsed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


# --- host side: what the device answered ---------------------------------------------------
@dataclass(frozen=True)
class Okay:
    """The command succeeded; ``message`` is its value (e.g. a getvar answer, may be empty)."""

    message: str


@dataclass(frozen=True)
class Fail:
    """The device refused or failed the command; ``message`` says why."""

    message: str


@dataclass(frozen=True)
class Info:
    """Progress or a getvar-all line; the command is still running."""

    message: str


@dataclass(frozen=True)
class Text:
    """Free text for the user (fastbootd); the command is still running."""

    message: str


@dataclass(frozen=True)
class DataRequest:
    """DATA: the host now sends ``size`` bytes (download) or receives them (upload)."""

    size: int


@dataclass(frozen=True)
class UploadData:
    """Bytes of an upload; valid only until the next call into the engine."""

    data: memoryview


HostEvent = Union[Okay, Fail, Info, Text, DataRequest, UploadData]


# --- device side: what the host asked ----------------------------------------------------
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
