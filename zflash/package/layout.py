"""A device's partition layout, to check a package's images when it is packed.

``zflash pack --profile DEVICE.json`` reads the layout from a device-profile JSON (the
emulator's format, see firmware-samples/demo-profile.json: ``partitions`` as name, size,
slotted, and ``cache_size``) and refuses, before anything is written, an image named for no
partition (`sytem`), an A/B mismatch, an image larger than its partition and unslotted images
that cannot be staged together: the errors a flash would meet, found by the builder.
Only the layout is read; the rest of a profile (identity, keys) is ignored here.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zflash.errors import Code, ErrorInfo, ZflashError, lookup
from zflash.fields import MAX_UINT
from zflash.package.format import MAX_PARTITIONS, valid_partition_name
from zflash.package.images import open_image
from zflash.package.writer import PartitionSource

MAX_PROFILE_SIZE = 1 << 20


@dataclass(frozen=True)
class LayoutPartition:
    name: str
    size: int
    slotted: bool


@dataclass(frozen=True)
class DeviceLayout:
    partitions: dict[str, LayoutPartition]
    cache_size: int | None = None  # staging cache for unslotted images; None: not checked

    @classmethod
    def load(cls, path: Path) -> "DeviceLayout":
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_PROFILE_SIZE + 1)
        except OSError as exc:
            raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None
        if len(data) > MAX_PROFILE_SIZE:
            raise _bad(path, f"larger than {MAX_PROFILE_SIZE} bytes")
        try:
            obj = json.loads(data, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise _bad(path, f"not valid JSON ({type(exc).__name__}: {exc})") from None
        return cls.from_json(obj, path)

    @classmethod
    def from_json(cls, obj: Any, path: Path | str = "profile") -> "DeviceLayout":
        if not isinstance(obj, dict):
            raise _bad(path, "not a JSON object")
        parts = obj.get("partitions")
        if not isinstance(parts, list) or not 0 < len(parts) <= MAX_PARTITIONS:
            raise _bad(path, f"partitions must be a list of 1..{MAX_PARTITIONS} objects")
        layout: dict[str, LayoutPartition] = {}
        for index, item in enumerate(parts):
            where = f"partitions[{index}]"
            if not isinstance(item, dict):
                raise _bad(path, f"{where} must be an object")
            name, size, slotted = item.get("name"), item.get("size"), item.get("slotted")
            if not valid_partition_name(name):
                raise _bad(path, f"{where}.name is not a partition name")
            if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_UINT:
                raise _bad(path, f"{where}.size must be a positive whole number of bytes")
            if not isinstance(slotted, bool):
                raise _bad(path, f"{where}.slotted must be true or false")
            if name in layout:
                raise _bad(path, f"{where}: partition {name!r} is listed twice")
            layout[name] = LayoutPartition(name, size, slotted)
        cache = obj.get("cache_size")
        if cache is not None and (isinstance(cache, bool) or not isinstance(cache, int)
                                  or not 0 <= cache <= MAX_UINT):
            raise _bad(path, "cache_size must be a whole number of bytes")
        return cls(layout, cache)


@dataclass(frozen=True)
class LayoutProblem:
    """One image that does not fit the layout; ``check`` names the cause (as in checks)."""

    code: int
    check: str
    message: str

    @property
    def info(self) -> ErrorInfo:
        return lookup(self.code, self.check)


class LayoutRefused(ZflashError):
    """The images do not fit the device's layout; ``failures`` lists every problem."""

    def __init__(self, failures: list[LayoutProblem]) -> None:
        self.failures = failures
        super().__init__(failures[0].code, "; ".join(f.message for f in failures),
                         cause=failures[0].check)


def check_images(layout: DeviceLayout, sources: list[PartitionSource]) -> None:
    """Raise LayoutRefused with every problem at once, before any image is packed."""
    problems: list[LayoutProblem] = []
    staged = 0
    for source in sources:
        target = layout.partitions.get(source.name)
        if target is None:
            close = difflib.get_close_matches(source.name, list(layout.partitions), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(LayoutProblem(
                Code.NO_SUCH_PARTITION, "partition",
                f"the device has no partition {source.name!r}{hint} (it has "
                f"{', '.join(layout.partitions)})"))
            continue
        if target.slotted != source.slotted:
            want = "with A/B slots" if target.slotted else "without slots (--unslotted)"
            problems.append(LayoutProblem(Code.COMPATIBILITY, "layout",
                                          f"{source.name} is {want} on the device"))
        with open_image(source.path) as image:
            size = image.size
        if size > target.size:
            problems.append(LayoutProblem(Code.IMAGE_TOO_LARGE, "storage",
                                          f"image {source.name} is {size} bytes, the "
                                          f"partition holds {target.size}"))
        if not target.slotted:
            staged += size
    if layout.cache_size is not None and staged > layout.cache_size:
        problems.append(LayoutProblem(Code.STORAGE, "storage",
                                      f"unslotted images need {staged} bytes of staging "
                                      f"cache, the device has {layout.cache_size}"))
    if problems:
        raise LayoutRefused(problems)


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a number")


def _bad(path: Path | str, why: str) -> ZflashError:
    return ZflashError(Code.USAGE, f"device profile {path}: {why}")
