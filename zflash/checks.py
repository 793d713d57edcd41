"""The compatibility policy: pure functions from (manifest, device facts) to failures.

The same functions run in two places: on the host as a preflight (to fail fast and explain
every problem at once) and in the emulated device, which enforces them whatever the host did.
Each function returns every failure it finds, never only the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from zflash.errors import Code, ErrorInfo, ZflashError, lookup
from zflash.facts import DeviceFacts
from zflash.package.format import Manifest
from zflash.package.reader import PackageHead

if TYPE_CHECKING:
    from zflash.package.keys import TrustStore  # cryptography: only where it verifies


@dataclass(frozen=True)
class Failure:
    """One failed check. ``cause`` picks the fix in the error table (default: the check's
    name), so a product mismatch and a baseband mismatch share 9040 but not the fix."""

    code: int
    check: str
    message: str
    cause: str = field(default="", kw_only=True)  # keyword-only: subclasses add fields

    @property
    def info(self) -> ErrorInfo:
        return lookup(self.code, self.cause or self.check)

    def to_dict(self) -> dict[str, object]:
        info = self.info
        return {"code": self.code, "check": self.check, "cause": info.cause,
                "message": self.message, "meaning": info.meaning, "what": info.what,
                "fix": info.fix}


def check_signature(head: PackageHead, trust: TrustStore) -> list[Failure]:
    try:
        head.verify_signature(trust)
    except ZflashError as exc:
        return [Failure(exc.code, "signature", exc.detail, cause=exc.cause)]
    return []


@dataclass(frozen=True)
class Unverifiable(Failure):
    """A check the device cannot answer: it does not report ``variable``."""

    variable: str = ""

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "variable": self.variable}


#: fact key -> what would have reported it, its last word the variable's name
#: (e.g. "getvar rollback-index:0"); see targets.base.Identity
Unreported = Mapping[str, str]


def _unverifiable(check: str, source: str, what: str) -> Unverifiable:
    return Unverifiable(Code.UNVERIFIABLE, check, f"the device does not report {source}: "
                                                  f"{what}", source.split()[-1])


def check_compatibility(manifest: Manifest, facts: DeviceFacts,
                        unreported: Unreported | None = None) -> list[Failure]:
    """Product, hardware revision and baseband; a fact the device does not report makes
    its check unverifiable, never passed."""
    unreported = unreported or {}
    failures: list[Failure] = []
    rules = (("product", manifest.product == facts.product,
              f"package is for product {manifest.product!r}, device is {facts.product!r}"),
             ("hardware_revision", facts.hardware_revision in manifest.hardware_revisions,
              f"device hardware revision {facts.hardware_revision!r} is not among "
              f"{list(manifest.hardware_revisions)}"),
             ("baseband", facts.baseband in manifest.baseband_ids,
              f"device baseband {facts.baseband!r} is not among "
              f"{list(manifest.baseband_ids)}"))
    for check, ok, message in rules:
        if check in unreported:
            failures.append(_unverifiable(check, unreported[check], f"cannot check the "
                                          f"package's {check.replace('_', ' ')}"))
        elif not ok:
            failures.append(Failure(Code.COMPATIBILITY, check, message))
    return failures


def check_rollback(manifest: Manifest, facts: DeviceFacts,
                   unreported: Unreported | None = None) -> list[Failure]:
    key = f"rollback_index:{manifest.rollback_location}"
    if unreported and key in unreported:
        return [_unverifiable("rollback", unreported[key], (
            f"cannot compare the package's rollback index {manifest.rollback_index} with the "
            f"device's stored index"))]
    stored = facts.rollback_indexes.get(manifest.rollback_location, 0)
    if manifest.rollback_index < stored:
        return [Failure(Code.ROLLBACK, "rollback",
                        f"package rollback index {manifest.rollback_index} is below the "
                        f"device's stored index {stored} (location "
                        f"{manifest.rollback_location})")]
    return []


def check_storage(manifest: Manifest, facts: DeviceFacts, unreported: Unreported | None = None,
                  staging_cache: bool = True) -> list[Failure]:
    """Each image fits its partition; with a staging cache, unslotted images fit it
    together. A partition or size the device does not report is unverifiable."""
    unreported = unreported or {}
    failures: list[Failure] = []
    staged = 0
    for part in manifest.partitions:
        target = facts.partition(part.name)
        if target is None:
            key = f"partition:{part.name}"
            if key in unreported:
                failures.append(_unverifiable("partition", unreported[key],
                                              f"it may have no partition {part.name}"))
            else:
                failures.append(Failure(Code.NO_SUCH_PARTITION, "partition",
                                        f"device has no partition {part.name!r}"))
            continue
        if target.slotted != part.slotted:
            kind = "slotted" if part.slotted else "unslotted"
            failures.append(Failure(Code.COMPATIBILITY, "layout",
                                    f"package has {part.name} {kind}, the device does not"))
            continue
        size_key = f"size:{part.name}"
        if size_key in unreported:
            failures.append(_unverifiable("storage", unreported[size_key], (
                f"cannot check that the {part.size}-byte image {part.name} fits")))
        elif part.size > target.size:
            failures.append(Failure(Code.IMAGE_TOO_LARGE, "storage",
                                    f"image {part.name} is {part.size} bytes, the partition "
                                    f"holds {target.size}"))
        if not part.slotted:
            staged += part.size
    if staging_cache and staged > facts.cache_free:
        failures.append(Failure(Code.STORAGE, "storage",
                                f"unslotted images need {staged} bytes of staging cache, "
                                f"the device has {facts.cache_free} free"))
    if any(p.slotted for p in manifest.partitions) and facts.inactive_slot is None:
        failures.append(Failure(Code.SLOT, "slots",
                                "package has A/B partitions but the device reports no "
                                "inactive slot" + (f" ({unreported['slots']})"
                                                   if "slots" in unreported else "")))
    return failures


def check_device(manifest: Manifest, facts: DeviceFacts, unreported: Unreported | None = None,
                 staging_cache: bool = True) -> list[Failure]:
    """Every check that needs the device's facts."""
    return (check_compatibility(manifest, facts, unreported)
            + check_rollback(manifest, facts, unreported)
            + check_storage(manifest, facts, unreported, staging_cache))


def check_complete_slot(manifest: Manifest, facts: DeviceFacts,
                        unreported: Unreported | None = None) -> list[Failure]:
    """For a download mode that cannot copy partitions from the running slot (fastboot,
    EDL): the slotted partitions the device has and the package does not carry. Flashed
    as is, the new slot would hold them from whatever build was there before (9039); a
    device that lists no partitions makes the check unverifiable (9045)."""
    carried = {p.name for p in manifest.partitions if p.slotted}
    if not carried:
        return []
    if unreported and "partitions" in unreported:
        return [Unverifiable(Code.UNVERIFIABLE, "partial", (
            "cannot tell whether the package carries every slotted partition: the device "
            f"does not list its partitions ({unreported['partitions']})"),
            variable=unreported["partitions"].split()[-1])]
    missing = sorted(p.name for p in facts.partitions if p.slotted and p.name not in carried)
    if not missing:
        return []
    return [Failure(Code.PARTIAL_PACKAGE, "partial", (
        f"the package does not carry {', '.join(missing)}: the new slot would keep "
        f"{'it' if len(missing) == 1 else 'them'} from an older build (this download mode "
        "cannot copy them from the running slot); pass --allow-partial to flash anyway"))]


def check_all(head: PackageHead, facts: DeviceFacts, trust: TrustStore,
              unreported: Unreported | None = None,
              staging_cache: bool = True) -> list[Failure]:
    return check_signature(head, trust) + check_device(head.manifest, facts, unreported,
                                                       staging_cache)
