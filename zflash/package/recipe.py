"""Pack recipes: a small JSON file naming a package's metadata, images and signing keys.

The format is specified in protocols/recipe.md. A recipe is input from a person, so every
field is checked before anything is read or written, and a bad one is refused with a coded
error (9002, cause ``recipe``) that names the field: no KeyError, no traceback on deep
nesting, ``1e400`` or ``Infinity``, and a string where a list belongs is refused rather than
split into characters. Paths are relative to the recipe file, so a recipe and its images can
move together. Any metadata field may be left out when the command line gives it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zflash.errors import Code, ZflashError
from zflash.fields import MAX_UINT, Fields
from zflash.package.format import MAX_PARTITIONS, MAX_ROLLBACK_LOCATION, valid_partition_name
from zflash.package.writer import PackageInfo, PartitionSource

MAX_RECIPE_SIZE = 1 << 20
MAX_KEYS = 16
METADATA = ("product", "hardware_revisions", "baseband_ids", "version", "rollback_index",
            "rollback_location", "build_time")
TOP_LEVEL = frozenset(METADATA) | {"keys", "partitions"}
PARTITION_FIELDS = frozenset({"name", "image", "slotted"})


def recipe_error(message: str) -> ZflashError:
    return ZflashError(Code.USAGE, message, cause="recipe")


_FIELDS = Fields(recipe_error)


@dataclass(frozen=True)
class Recipe:
    """A checked recipe. ``metadata`` holds only the fields the recipe gave."""

    metadata: dict[str, Any]
    sources: list[PartitionSource]
    keys: list[Path]


def load_recipe(path: Path) -> Recipe:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_RECIPE_SIZE + 1)
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None
    if len(data) > MAX_RECIPE_SIZE:
        raise recipe_error(f"{path}: recipe larger than {MAX_RECIPE_SIZE} bytes")
    try:
        return parse_recipe(data, Path(path).parent)
    except ZflashError as exc:
        raise ZflashError(exc.code, f"{path}: {exc.detail}", cause=exc.cause) from None


def parse_recipe(data: bytes, base: Path) -> Recipe:
    """Check and decode a recipe's bytes; paths are taken relative to ``base``."""
    obj = _decode(data)
    if not isinstance(obj, dict):
        raise recipe_error("a recipe is a JSON object")
    unknown = sorted(set(obj) - TOP_LEVEL)
    if unknown:
        raise recipe_error(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(TOP_LEVEL))})")
    metadata = {name: _metadata_field(name, obj[name]) for name in METADATA if name in obj}
    sources = _partitions(obj["partitions"], base) if "partitions" in obj else []
    keys = _keys(obj.get("keys", []), base)
    return Recipe(metadata, sources, keys)


def package_info(values: dict[str, Any]) -> PackageInfo:
    """PackageInfo from merged recipe and command-line values, each checked as a recipe
    field; a missing rollback location is 0 and a missing build time is
    $SOURCE_DATE_EPOCH or now. Names every field still missing."""
    values = {k: v for k, v in values.items() if v is not None}
    values.setdefault("rollback_location", 0)
    if "build_time" not in values:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        if epoch is not None and not epoch.isdigit():
            raise ZflashError(Code.USAGE, f"SOURCE_DATE_EPOCH={epoch!r} is not a Unix time")
        values["build_time"] = int(epoch) if epoch is not None else int(time.time())
    missing = [name for name in METADATA if name not in values]
    if missing:
        raise ZflashError(Code.USAGE, f"missing package metadata: {', '.join(missing)} "
                                      "(give options or --recipe)")
    checked = {name: _metadata_field(name, values[name]) for name in METADATA}
    return PackageInfo(**checked)


# ---------------------------------------------------------------------- decoding
def _reject_number(text: str) -> Any:
    raise recipe_error(f"number {text[:20]} is not allowed: recipe numbers are whole "
                       f"numbers in 0..{MAX_UINT}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise recipe_error(f"field {key!r} is given twice")
        result[key] = value
    return result


def _decode(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise recipe_error(f"not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text, parse_float=_reject_number, parse_constant=_reject_number,
                          object_pairs_hook=_unique_keys)
    except RecursionError:
        raise recipe_error("nested too deeply (a recipe is at most 3 levels deep)") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of thousands of digits
        raise recipe_error(f"not valid JSON: {exc}") from None


# ---------------------------------------------------------------------- fields
def _metadata_field(name: str, value: Any) -> Any:
    if name in ("product", "version"):
        return _FIELDS.text(value, name)
    if name in ("hardware_revisions", "baseband_ids"):
        if isinstance(value, (list, tuple)):
            return _FIELDS.texts(list(value), name)
        raise recipe_error(f"{name} must be a list of strings, e.g. [{json.dumps(value)}]"
                           if isinstance(value, str) else f"{name} must be a list of strings")
    limit = MAX_ROLLBACK_LOCATION if name == "rollback_location" else MAX_UINT
    return _FIELDS.uint(value, name, limit)


def _path(value: Any, what: str, base: Path) -> Path:
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > 4096:
        raise recipe_error(f"{what} must be a file path (a non-empty string)")
    return base / value


def _partitions(value: Any, base: Path) -> list[PartitionSource]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_PARTITIONS:
        raise recipe_error(f"partitions must be a list of 1..{MAX_PARTITIONS} objects")
    sources: list[PartitionSource] = []
    for index, item in enumerate(value):
        where = f"partitions[{index}]"
        if not isinstance(item, dict):
            raise recipe_error(f"{where} must be an object with name and image")
        unknown = sorted(set(item) - PARTITION_FIELDS)
        if unknown:
            raise recipe_error(f"{where}: unknown field {unknown[0]!r} "
                               f"(known: {', '.join(sorted(PARTITION_FIELDS))})")
        for required in ("name", "image"):
            if required not in item:
                raise recipe_error(f"{where}: missing field {required!r}")
        name = item["name"]
        if not valid_partition_name(name):
            raise recipe_error(f"{where}.name must be 1..32 of a-z 0-9 _ . - "
                               f"(got {json.dumps(name)[:40]})")
        slotted = item.get("slotted", True)
        if not isinstance(slotted, bool):
            raise recipe_error(f"{where}.slotted must be true or false")
        if any(s.name == name for s in sources):
            raise recipe_error(f"{where}: partition {name!r} is listed twice")
        sources.append(PartitionSource(name, _path(item["image"], f"{where}.image", base),
                                       slotted))
    return sources


def _keys(value: Any, base: Path) -> list[Path]:
    if not isinstance(value, list) or len(value) > MAX_KEYS:
        raise recipe_error(f"keys must be a list of up to {MAX_KEYS} private key paths")
    return [_path(item, f"keys[{index}]", base) for index, item in enumerate(value)]
