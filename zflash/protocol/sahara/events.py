"""Sahara engine events that are not packets: results the engines assemble from raw bytes.

The packet dataclasses of ``packets`` are the other events (``Hello``, ``ReadData``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass


class NeedData:
    """``next_event()`` has nothing more until ``receive_data`` is called (compare with ``is``)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@dataclass(frozen=True)
class ExecReply:
    """Host side: the raw reply of client command ``cmd`` (decode with ``commands``)."""

    cmd: int
    data: bytes


@dataclass(frozen=True)
class FirehoseRunning:
    """Host side: the device spoke XML where a Sahara packet was due, so a programmer already
    runs; ``take_unparsed()`` returns the bytes for the Firehose engine."""


@dataclass(frozen=True)
class ImageData:
    """Device side: the bytes the host sent for one READ_DATA request."""

    image_id: int
    offset: int
    data: bytes
