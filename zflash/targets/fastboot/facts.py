"""A fastboot bootloader's facts, read from ``getvar`` answers.

A fastboot bootloader checks nothing about a package, so every rule must be checked on the
host from what it reports; what it does not report goes into ``Identity.unreported`` and its
check becomes unverifiable (9045, naming the variable). Variables read (all leniently, see
``zflash.protocol.fastboot.values``):

============================  ===============================================================
``product``                   the package's product
``hw-revision``               hardware revision; ``hardware-revision`` and ``variant`` are
                              tried when a bootloader does not know ``hw-revision``
``version-baseband``          baseband id
``rollback-index:N``          stored anti-rollback index of AVB location N. No AOSP variable
                              carries it; the zflash emulator reports this vendor variable
``slot-count``,               which slot is running; a package goes into the other one
``current-slot``
``has-slot:P``,               layout (A/B or not) and size of each partition, the slotted
``partition-size:P_x``        size asked for the target slot (``P`` as fallback)
``max-download-size``         download limit; images are sent as sparse pieces within it
``serialno``, ``slot-*:S``    identity and slot state
============================  ===============================================================

One getvar per variable: ``getvar all`` is missing or partial on many bootloaders (it is
used only to list partitions for ``zflash info``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zflash.errors import ZflashError
from zflash.facts import DeviceFacts, PartitionInfo, SlotInfo
from zflash.package.format import Manifest, PartitionEntry
from zflash.protocol.fastboot.values import parse_bool, parse_size, parse_slot
from zflash.targets.base import Identity
from zflash.targets.fastboot.client import FastbootClient

HW_REVISION_VARS = ("hw-revision", "hardware-revision", "variant")
BASE_VARS = ("product", "serialno", "version-baseband", "version-bootloader", "slot-count",
             "current-slot", "max-download-size")
LISTING_ROLLBACK_LOCATIONS = 4  # rollback-index:0..3 are asked when no package says which


@dataclass
class FastbootFacts:
    """What the bootloader reported: every variable asked, None when it did not answer."""

    values: dict[str, str | None] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    @property
    def hw_revision_var(self) -> str:
        """The hardware-revision variable that answered (``hw-revision`` when none did)."""
        return next((v for v in HW_REVISION_VARS if self.get(v) is not None),
                    HW_REVISION_VARS[0])

    @property
    def slots(self) -> list[str]:
        try:
            count = parse_size(self.get("slot-count") or "0", "slot-count")
        except ZflashError:
            count = 0  # garbled: no usable slots
        return [chr(ord("a") + i) for i in range(min(count, 26))]

    @property
    def current_slot(self) -> str | None:
        """The running slot, only when it is one of the slots the device reports: a garbled
        value must never become a partition suffix."""
        value = self.get("current-slot")
        try:
            slot = parse_slot(value) if value else None
        except ZflashError:
            return None
        return slot if slot in self.slots else None

    @property
    def inactive_slot(self) -> str | None:
        """Where a package goes: the slot after the running one (None if unknown)."""
        slots, current = self.slots, self.current_slot
        if len(slots) < 2 or current not in slots:
            return None
        return slots[(slots.index(current) + 1) % len(slots)]

    @property
    def max_download_size(self) -> int | None:
        value = self.get("max-download-size")
        return parse_size(value, "max-download-size") if value else None

    def has_slot(self, partition: str) -> bool | None:
        value = self.get(f"has-slot:{partition}")
        return parse_bool(value) if value else None

    def size_vars(self, part: PartitionEntry) -> list[str]:
        """``partition-size`` names for ``part``, the target slot's first."""
        names = [f"partition-size:{part.name}"]
        if part.slotted and self.inactive_slot:
            names.insert(0, f"partition-size:{part.name}_{self.inactive_slot}")
        return names

    def partition_size(self, part: PartitionEntry) -> tuple[int | None, str]:
        """(size, variable that gave it) or (None, the variable that should have)."""
        names = self.size_vars(part)
        for name in names:
            value = self.get(name)
            if value:
                return parse_size(value, name), name
        return None, names[0]

    def rollback_index(self, location: int) -> int | None:
        value = self.get(f"rollback-index:{location}")
        return parse_size(value, f"rollback-index:{location}") if value else None

    # ------------------------------------------------------------ the protocol-neutral view
    def _slot_infos(self) -> tuple[SlotInfo, ...]:
        slots = []
        for letter in self.slots:
            retries = self.get(f"slot-retry-count:{letter}") or "0"
            slots.append(SlotInfo(
                name=letter, active=letter == self.current_slot,
                bootable=parse_bool(self.get(f"slot-unbootable:{letter}") or "") is not True,
                successful=parse_bool(self.get(f"slot-successful:{letter}") or "") is True,
                tries_left=int(retries) if retries.isdigit() else 0))
        return tuple(slots)

    def _identity(self, partitions: tuple[PartitionInfo, ...], locations: list[int],
                  unreported: dict[str, str]) -> Identity:
        for key, variable in (("product", "product"),
                              ("hardware_revision", self.hw_revision_var),
                              ("baseband", "version-baseband"), ("serial", "serialno")):
            if self.get(variable) is None:
                unreported[key] = f"getvar {variable}"
        rollback = {}
        for location in locations:
            stored = self.rollback_index(location)
            if stored is None:
                unreported[f"rollback_index:{location}"] = f"getvar rollback-index:{location}"
            else:
                rollback[location] = stored
        if self.slots:
            unreported["slot_priority"] = "fastboot (no variable carries it)"
            unreported["slot_builds"] = "fastboot (no variable carries a slot's build)"
        if self.inactive_slot is None:
            unreported["slots"] = (f"slot-count {self.get('slot-count')!r}, current-slot "
                                   f"{self.get('current-slot')!r}")
        facts = DeviceFacts(
            product=self.get("product") or "",
            hardware_revision=self.get(self.hw_revision_var) or "",
            baseband=self.get("version-baseband") or "", serial=self.get("serialno") or "",
            protocol_version=0, flash_size=0, cache_size=0, cache_free=0,
            partitions=partitions, slots=self._slot_infos(), current_slot=self.current_slot,
            rollback_indexes=rollback)
        return Identity(facts, unreported, {"getvar": dict(self.values)})

    def identity_for(self, manifest: Manifest) -> Identity:
        """The facts a flash of ``manifest`` needs. A partition is listed when the device
        reported its layout or size; a missing size is unreported, never 0."""
        unreported: dict[str, str] = {}
        parts = []
        for part in manifest.partitions:
            size, variable = self.partition_size(part)
            slotted = self.has_slot(part.name)
            if size is None and slotted is None:
                unreported[f"partition:{part.name}"] = f"getvar {variable}"
                continue
            if size is None:
                unreported[f"size:{part.name}"] = f"getvar {variable}"
            parts.append(PartitionInfo(part.name, size or 0,
                                       part.slotted if slotted is None else slotted))
        return self._identity(tuple(parts), [manifest.rollback_location], unreported)

    def identity_listing(self, listing: dict[str, str] | None) -> Identity:
        """Every fact for ``zflash info``; partitions from ``getvar all`` when it answers."""
        unreported: dict[str, str] = {}
        parts: list[PartitionInfo] = []
        if listing is None:
            unreported["partitions"] = "getvar all"
        else:
            parts = _partitions_from_listing(listing, self.slots)
        return self._identity(tuple(parts), list(range(LISTING_ROLLBACK_LOCATIONS)),
                              unreported)


def listed_partitions(listing: dict[str, str], slots: list[str]) -> list[PartitionInfo]:
    """The partitions a ``getvar all`` listing names (the slotted ones once)."""
    return _partitions_from_listing(listing, slots)


def _partitions_from_listing(listing: dict[str, str], slots: list[str]) -> list[PartitionInfo]:
    """Partitions from ``partition-size:NAME`` lines; ``NAME_a`` + ``has-slot:NAME`` = A/B."""
    sizes: dict[str, int] = {}
    for key, value in listing.items():
        if key.startswith("partition-size:"):
            try:
                sizes[key.split(":", 1)[1]] = parse_size(value, key)
            except ZflashError:
                continue
    parts = []
    for name, size in sorted(sizes.items()):
        base = name[:-2] if len(name) > 2 and name[-2] == "_" and name[-1] in slots else None
        if base and parse_bool(listing.get(f"has-slot:{base}", "")) is True:
            if name.endswith(f"_{slots[0]}"):
                parts.append(PartitionInfo(base, size, True))
            continue
        if parse_bool(listing.get(f"has-slot:{name}", "")) is True:
            continue  # listed by its slotted names
        parts.append(PartitionInfo(name, size, False))
    return parts


def _ask(client: FastbootClient, facts: FastbootFacts, name: str) -> None:
    facts.values[name] = client.getvar(name, cached=True)


def _read_common(client: FastbootClient, facts: FastbootFacts) -> None:
    for name in BASE_VARS:
        _ask(client, facts, name)
    for name in HW_REVISION_VARS:
        _ask(client, facts, name)
        if facts.get(name) is not None:
            break
    for letter in facts.slots:
        for base in ("slot-successful", "slot-unbootable", "slot-retry-count"):
            _ask(client, facts, f"{base}:{letter}")


def read_for_manifest(client: FastbootClient, manifest: Manifest) -> FastbootFacts:
    """Every variable the checks and the plan of ``manifest`` need."""
    facts = FastbootFacts()
    _read_common(client, facts)
    _ask(client, facts, f"rollback-index:{manifest.rollback_location}")
    for part in manifest.partitions:
        _ask(client, facts, f"has-slot:{part.name}")
        for name in facts.size_vars(part):
            _ask(client, facts, name)
            if facts.get(name):
                break
    return facts


def read_listing(client: FastbootClient) -> tuple[FastbootFacts, dict[str, str] | None]:
    """Every variable ``zflash info`` shows, and the ``getvar all`` listing (None when the
    bootloader refuses it)."""
    facts = FastbootFacts()
    _read_common(client, facts)
    for location in range(LISTING_ROLLBACK_LOCATIONS):
        _ask(client, facts, f"rollback-index:{location}")
    try:
        listing: dict[str, str] | None = client.getvar_all()
    except ZflashError:
        listing = None
    return facts, listing
