"""Choosing a package from a catalog for one device: pure, so it is tested without a network.

The rules are the flash preflight's own (zflash.checks): product, hardware revision and
baseband must match, and the package's rollback index must not be below the index the device
stores at the package's rollback location. Among the packages left, the newest version wins.
"""

from __future__ import annotations

from typing import Any, cast

from zflash.checks import Failure, check_compatibility, check_rollback
from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.fetch.catalog import Catalog, CatalogEntry
from zflash.package.format import Manifest


def version_key(version: str) -> tuple[Any, ...]:
    """Order versions like people do: 1.10 > 1.9, and 1.2.0-rc1 < 1.2.0 (semver-like).

    Numeric dot-separated parts compare as numbers; a non-numeric part sorts below any
    number; build metadata after ``+`` is ignored.
    """
    core, _, pre = version.split("+", 1)[0].partition("-")
    parts = tuple((1, int(p), "") if p.isdigit() else (0, 0, p) for p in core.split("."))
    return (parts, pre == "", pre)


def newest_first(entries: tuple[CatalogEntry, ...] | list[CatalogEntry]) -> list[CatalogEntry]:
    return sorted(entries, key=lambda e: (version_key(e.version), e.build_time,
                                          e.rollback_index), reverse=True)


def failures_for(entry: CatalogEntry, facts: DeviceFacts) -> list[Failure]:
    """Why ``entry`` does not fit the device (empty when it does).

    CatalogEntry carries the manifest's attribute names for exactly these fields, so the
    flash preflight's checks apply unchanged.
    """
    as_manifest = cast(Manifest, entry)
    return check_compatibility(as_manifest, facts) + check_rollback(as_manifest, facts)


def select_package(catalog: Catalog, facts: DeviceFacts) -> CatalogEntry:
    """The newest entry that fits the device; NO_COMPATIBLE_PACKAGE (9055) if none does."""
    reasons = []
    for entry in newest_first(catalog.packages):
        failures = failures_for(entry, facts)
        if not failures:
            return entry
        reasons.append(f"{entry.name}: " + "; ".join(f.message for f in failures))
    detail = (f"catalog version {catalog.version} has no package for {facts.product} "
              f"rev {facts.hardware_revision}, baseband {facts.baseband}")
    if reasons:
        detail += " (" + " | ".join(reasons) + ")"
    raise ZflashError(Code.NO_COMPATIBLE_PACKAGE, detail)
