"""The compatibility policy: pure functions from (manifest, device facts) to failures.

The same functions run in two places: on the host as a preflight (to fail fast and explain
every problem at once) and in the emulated device, which enforces them whatever the host did.
Each function returns every failure it finds, never only the first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zflash.errors import Code, ErrorInfo, ZflashError, lookup
from zflash.facts import DeviceFacts
from zflash.package.format import Manifest
from zflash.package.keys import TrustStore
from zflash.package.reader import PackageHead


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
        return [Failure(exc.code, "signature", exc.detail)]
    return []


def check_compatibility(manifest: Manifest, facts: DeviceFacts) -> list[Failure]:
    failures = []
    if manifest.product != facts.product:
        failures.append(Failure(Code.COMPATIBILITY, "product",
                                f"package is for product {manifest.product!r}, "
                                f"device is {facts.product!r}"))
    if facts.hardware_revision not in manifest.hardware_revisions:
        failures.append(Failure(Code.COMPATIBILITY, "hardware_revision",
                                f"device hardware revision {facts.hardware_revision!r} is not "
                                f"among {list(manifest.hardware_revisions)}"))
    if facts.baseband not in manifest.baseband_ids:
        failures.append(Failure(Code.COMPATIBILITY, "baseband",
                                f"device baseband {facts.baseband!r} is not among "
                                f"{list(manifest.baseband_ids)}"))
    return failures


def check_rollback(manifest: Manifest, facts: DeviceFacts) -> list[Failure]:
    stored = facts.rollback_indexes.get(manifest.rollback_location, 0)
    if manifest.rollback_index < stored:
        return [Failure(Code.ROLLBACK, "rollback",
                        f"package rollback index {manifest.rollback_index} is below the "
                        f"device's stored index {stored} (location "
                        f"{manifest.rollback_location})")]
    return []


def check_storage(manifest: Manifest, facts: DeviceFacts) -> list[Failure]:
    """Each image fits its partition; unslotted images fit the staging cache together."""
    failures = []
    staged = 0
    for part in manifest.partitions:
        target = facts.partition(part.name)
        if target is None:
            failures.append(Failure(Code.NO_SUCH_PARTITION, "partition",
                                    f"device has no partition {part.name!r}"))
            continue
        if target.slotted != part.slotted:
            kind = "slotted" if part.slotted else "unslotted"
            failures.append(Failure(Code.COMPATIBILITY, "layout",
                                    f"package has {part.name} {kind}, the device does not"))
        if part.size > target.size:
            failures.append(Failure(Code.IMAGE_TOO_LARGE, "storage",
                                    f"image {part.name} is {part.size} bytes, the partition "
                                    f"holds {target.size}"))
        if not part.slotted:
            staged += part.size
    if staged > facts.cache_free:
        failures.append(Failure(Code.STORAGE, "storage",
                                f"unslotted images need {staged} bytes of staging cache, "
                                f"the device has {facts.cache_free} free"))
    if any(p.slotted for p in manifest.partitions) and facts.inactive_slot is None:
        failures.append(Failure(Code.SLOT, "slots",
                                "package has A/B partitions but the device reports no "
                                "inactive slot"))
    return failures


def check_device(manifest: Manifest, facts: DeviceFacts) -> list[Failure]:
    """Every check that needs the device's facts."""
    return (check_compatibility(manifest, facts) + check_rollback(manifest, facts)
            + check_storage(manifest, facts))


def check_all(head: PackageHead, facts: DeviceFacts, trust: TrustStore) -> list[Failure]:
    return check_signature(head, trust) + check_device(head.manifest, facts)
