"""Pack recipes: a small JSON file naming a package's metadata, images and signing keys.

Paths in a recipe are relative to the recipe file, so a recipe and its images can move
together. Example::

    {"product": "zx-demo", "hardware_revisions": ["A01"], "baseband_ids": ["ZXB-100"],
     "version": "1.0.0", "rollback_index": 1, "rollback_location": 0,
     "build_time": 1700000000, "keys": ["keys/signing.pem"],
     "partitions": [{"name": "boot", "image": "boot.img", "slotted": true}]}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zflash.errors import Code, ZflashError
from zflash.package.writer import PackageInfo, PartitionSource

MAX_RECIPE_SIZE = 1 << 20


@dataclass(frozen=True)
class Recipe:
    info: PackageInfo
    sources: list[PartitionSource]
    keys: list[Path]


def load_recipe(path: Path) -> Recipe:
    try:
        data = Path(path).read_bytes()[:MAX_RECIPE_SIZE + 1]
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None
    if len(data) > MAX_RECIPE_SIZE:
        raise ZflashError(Code.USAGE, f"{path}: recipe larger than {MAX_RECIPE_SIZE} bytes")
    try:
        obj = json.loads(data)
        return _recipe_from_json(obj, Path(path).parent)
    except (ValueError, KeyError, TypeError) as exc:
        raise ZflashError(Code.USAGE, f"{path}: bad recipe ({type(exc).__name__}: {exc})") from None


def _recipe_from_json(obj: Any, base: Path) -> Recipe:
    info = PackageInfo(product=str(obj["product"]),
                       hardware_revisions=tuple(str(v) for v in obj["hardware_revisions"]),
                       baseband_ids=tuple(str(v) for v in obj["baseband_ids"]),
                       version=str(obj["version"]),
                       rollback_index=int(obj["rollback_index"]),
                       rollback_location=int(obj.get("rollback_location", 0)),
                       build_time=int(obj["build_time"]))
    sources = [PartitionSource(str(p["name"]), base / str(p["image"]), bool(p.get("slotted", True)))
               for p in obj["partitions"]]
    keys = [base / str(k) for k in obj.get("keys", [])]
    return Recipe(info, sources, keys)
