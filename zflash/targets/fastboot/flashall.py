"""``flashall DIR``: check ``android-info.txt`` against the device, then flash every image.

Why checks first: an image set built for another board, baseband or bootloader can brick a
device, so, like the stock client, every requirement is checked against getvar values before
the first byte is written, and so is every image's partition and size. A mismatch is 9040
(the product's compatibility code); a variable the device does not report is 9045
(unverifiable) unless the user accepts it.

android-info.txt lines (AOSP ``fastboot flashall``/``update``)::

    require board=zx-demo|zx-demo2        board is getvar product
    require version-baseband=ZXB-100       alternatives with |, a trailing * matches a prefix
    require version-bootloader=ZXBL-1.*
    require-for-product:zx-demo version-baseband=ZXB-100   only for that product
    reject version-bootloader=ZXBL-0.9     the device must NOT report this
    require partition-exists=vendor

Images: every ``NAME.img`` in DIR for which the device has a partition NAME. By default
they go to the inactive slot, which is then made active (DESIGN.md: the running slot is never
touched), and the device reboots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from zflash.errors import Code, ZflashError
from zflash.targets.fastboot.client import FastbootClient, image_sizes

INFO_FILE = "android-info.txt"
ALIASES = {"board": "product", "baseband": "version-baseband",
           "bootloader": "version-bootloader", "hardware": "hw-revision"}


@dataclass(frozen=True)
class Requirement:
    """One line of android-info.txt."""

    variable: str  # the getvar name (board already mapped to product)
    values: tuple[str, ...]
    reject: bool = False
    product: str | None = None  # require-for-product:PRODUCT
    line: int = 0


@dataclass(frozen=True)
class Problem:
    """One requirement the device does not meet (code 9040) or cannot answer (9045)."""

    code: int
    message: str


def parse_android_info(text: str) -> list[Requirement]:
    """Parse android-info.txt; blank and ``#`` lines are skipped, anything else malformed."""
    result = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        name, eq, values = rest.strip().partition("=")
        product = None
        if keyword.startswith("require-for-product:"):
            product = keyword.partition(":")[2]
        elif keyword not in ("require", "reject"):
            raise ZflashError(Code.MALFORMED_PACKAGE, f"{INFO_FILE} line {number}: expected "
                                                      f"require/reject, got {line[:60]!r}")
        if not eq or not name.strip() or not values.strip():
            raise ZflashError(Code.MALFORMED_PACKAGE, f"{INFO_FILE} line {number}: expected "
                                                      f"NAME=VALUE[|VALUE...], got {line[:60]!r}")
        name = name.strip()
        result.append(Requirement(ALIASES.get(name, name),
                                  tuple(v.strip() for v in values.split("|") if v.strip()),
                                  reject=keyword == "reject", product=product, line=number))
    return result


def _matches(value: str, wanted: str) -> bool:
    value, wanted = value.strip().lower(), wanted.strip().lower()
    if wanted.endswith("*"):
        return value.startswith(wanted[:-1])
    return value == wanted


def check_requirements(requirements: list[Requirement],
                       getvar: Callable[[str], str | None]) -> list[Problem]:
    """Every requirement the device fails (9040) or cannot answer (9045); pure policy."""
    problems = []
    product = getvar("product")
    for req in requirements:
        if req.product is not None and (product is None or not _matches(product, req.product)):
            continue
        if req.variable == "partition-exists":
            for name in req.values:
                if getvar(f"has-slot:{name}") not in ("yes", "no"):
                    problems.append(Problem(Code.COMPATIBILITY, f"device has no partition "
                                                                f"{name} ({INFO_FILE} line "
                                                                f"{req.line})"))
            continue
        value = product if req.variable == "product" else getvar(req.variable)
        if value is None:
            problems.append(Problem(Code.UNVERIFIABLE, f"device does not report "
                                                       f"{req.variable} ({INFO_FILE} line "
                                                       f"{req.line})"))
            continue
        hit = any(_matches(value, wanted) for wanted in req.values)
        if hit == req.reject:
            verb = "must not be" if req.reject else "must be"
            problems.append(Problem(Code.COMPATIBILITY, f"{req.variable} is {value!r}; "
                                                        f"{INFO_FILE} says it {verb} "
                                                        f"{' or '.join(req.values)}"))
    return problems


def find_images(directory: Path) -> list[tuple[str, Path]]:
    """(partition, path) for every NAME.img in ``directory``, sorted by name."""
    if not directory.is_dir():
        raise ZflashError(Code.FILE_UNREADABLE, f"{directory} is not a directory")
    images = sorted((p.stem, p) for p in directory.glob("*.img") if p.is_file())
    if not images:
        raise ZflashError(Code.USAGE, f"no *.img files in {directory}")
    return images


def flashall(client: FastbootClient, directory: Path, slot: str | None = "other",
             accept_unverifiable: bool = False, reboot: bool = True,
             size_limit: int | None = None) -> dict[str, Any]:
    """Check, then flash every image of ``directory``; the slot is switched after all OKAY."""
    directory = Path(directory)
    images = find_images(directory)
    info = directory / INFO_FILE
    requirements = parse_android_info(_read_text(info)) if info.exists() else []
    problems = check_requirements(requirements, client.getvar)
    refused = [p for p in problems if p.code != Code.UNVERIFIABLE or not accept_unverifiable]
    for problem in problems:
        if problem not in refused:
            client.on_event({"event": "warning", "message": f"unverified: {problem.message}"})
    if refused:
        first = refused[0]
        raise ZflashError(first.code, "; ".join(p.message for p in refused) +
                          "; nothing was written")
    slotted = [name for name, _ in images if client.has_slot(name)]
    target = client.resolve_slot(slot) if slotted and slot != "all" else None
    plan = _plan(client, images, target, slot == "all")
    flashed = []
    for name, path in plan:
        client.flash_image(name, path, size_limit)
        flashed.append(name)
    if slotted and target is not None:
        client.set_active(target)
        client.on_event({"event": "slot", "active": target})
    if reboot:
        client.reboot()
    return {"flashed": flashed, "slot": target, "rebooted": reboot,
            "unverified": [p.message for p in problems if p not in refused]}


def _plan(client: FastbootClient, images: list[tuple[str, Path]], target: str | None,
          all_slots: bool) -> list[tuple[str, Path]]:
    """Partition names to write, each checked (exists, fits) before anything is written."""
    plan = []
    for name, path in images:
        if client.has_slot(name):
            letters = client.slots() if all_slots else [target]
            names = [f"{name}_{letter}" for letter in letters]
        else:
            names = [name]
        for full in names:
            capacity = client.partition_size(full)
            if capacity is None and client.getvar(f"has-slot:{name}", cached=True) is None:
                raise ZflashError(Code.NO_SUCH_PARTITION, f"{path.name}: the device has no "
                                                          f"partition {name}; nothing written")
            expanded = image_sizes(path)[1]
            if capacity is not None and expanded > capacity:
                raise ZflashError(Code.IMAGE_TOO_LARGE, f"{path.name} expands to {expanded} bytes; "
                                                f"{full} holds {capacity}; nothing written")
            plan.append((full, path))
    return plan


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None
