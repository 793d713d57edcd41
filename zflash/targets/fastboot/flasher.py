"""``zflash flash PKG`` onto a fastboot device: the package's checks against getvar values.

Why a flasher of its own: a fastboot bootloader checks nothing about a package (it writes
whatever image it is given), so every rule the ZDL device enforces must be checked here, on
the host, from what the bootloader reports through ``getvar``. What it cannot report cannot
be checked; such a check is *unverifiable* (9045, naming the variable) and flashing then
needs ``--accept-unverifiable``. A mismatch the device does report is always refused.

Variables read (all leniently, see ``zflash.protocol.fastboot.values``):

============================  ===============================================================
``product``                   the package's product
``hw-revision``               hardware revision; ``hardware-revision`` and ``variant`` are
                              tried when a bootloader does not know ``hw-revision`` (the
                              zflash emulator reports ``hw-revision``)
``version-baseband``          baseband id
``rollback-index:N``          stored anti-rollback index of AVB location N. No AOSP variable
                              carries it; the zflash emulator reports this vendor variable.
                              Absent: the rollback check is unverifiable
``slot-count``,               which slot is running; the package goes into the other one
``current-slot``
``has-slot:P``,               layout (A/B or not) and size of each partition, the slotted
``partition-size:P_x``        size asked for the target slot (``P`` as fallback)
``max-download-size``         download limit; images are sent as sparse pieces within it
                              (no limit when not reported)
``serialno``, ``slot-*:S``    shown in the ``device`` event only
============================  ===============================================================

Flow: read facts -> checks (signature, every block, compatibility, rollback, storage) ->
for each partition, the raw image is expanded from the package's verified blocks straight
into Android sparse pieces (constant blocks, zeros included, as FILL chunks: zeros are
written, never left to whatever the slot held; split by ``max-download-size``) ->
``download`` + ``flash:P_b`` per piece -> ``set_active:b`` only after every partition
answered OKAY -> ``reboot``. Events are the ZDL flasher's (plus ``check_unverified`` for an
accepted unverifiable check). Fastboot has no read-back: ``verified`` means each block
matched the signed table as it was sent and the device accepted every piece.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from zflash.checks import Failure, check_compatibility, check_rollback, check_signature
from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts, PartitionInfo, SlotInfo
from zflash.targets.fastboot.client import FastbootClient
from zflash.flash import Emit, FlashOptions, FlashSummary, PreflightRefused
from zflash.package.format import KIND_ZERO, Manifest, PartitionEntry
from zflash.package.keys import TrustStore
from zflash.package.reader import Package
from zflash.package.sparse import (
    SparsePiece,
    is_sparse,
    min_split_size,
    split_sparse,
    write_sparse,
)
from zflash.protocol.fastboot.constants import RESPONSE_TIMEOUT
from zflash.protocol.fastboot.values import parse_bool, parse_size, parse_slot

HW_REVISION_VARS = ("hw-revision", "hardware-revision", "variant")
SPARSE_BLOCK_SIZES = (4096, 512)  # the first whose padding still fits the partition
NO_LIMIT = 1 << 62  # max-download-size not reported: one piece per image
CHECKS = ("signature", "blocks", "compatibility", "rollback", "storage")
_CATEGORY = {"product": "compatibility", "hardware_revision": "compatibility",
             "baseband": "compatibility", "partition": "storage", "layout": "storage",
             "slots": "storage"}


def speaks_fastboot(url: str) -> bool:
    """True for ``fastboot+tcp://`` and for a ``usb://`` device whose download interface is
    fastboot's. Looks without claiming; when the device cannot be seen (absent, no access)
    the answer is False and the ZDL path reports the problem with its own wait and hints."""
    from zflash.transport.url import parse_device_url
    try:
        parsed = parse_device_url(url)
    except ZflashError:
        return False
    if parsed.scheme == "fastboot+tcp":
        return True
    if parsed.scheme != "usb":
        return False
    from zflash.transport.usb import target_from_url
    from zflash.transport.usb_find import enumerate_devices, select
    try:
        return select(enumerate_devices(), target_from_url(parsed)).info.protocol == "fastboot"
    except ZflashError:
        return False


@dataclass(frozen=True)
class Unverifiable(Failure):
    """A check the device cannot answer: it does not report ``variable``."""

    variable: str = ""

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "variable": self.variable}


def _unverifiable(check: str, variable: str, what: str) -> Unverifiable:
    return Unverifiable(Code.UNVERIFIABLE, check,
                        f"the device does not report getvar {variable}: {what}", variable)


# ------------------------------------------------------------------------------ facts
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
        value = self.get("current-slot")
        return parse_slot(value) if value else None

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

    def device_facts(self, manifest: Manifest) -> DeviceFacts:
        """The ZDL view of the same device ("" or 0 for what was not reported), for the
        shared check functions and the ``device`` event."""
        parts = []
        for part in manifest.partitions:
            size = self.partition_size(part)[0]
            slotted = self.has_slot(part.name)
            parts.append(PartitionInfo(part.name, size or 0,
                                       part.slotted if slotted is None else slotted))
        slots = []
        for letter in self.slots:
            retries = self.get(f"slot-retry-count:{letter}") or "0"
            slots.append(SlotInfo(
                name=letter, active=letter == self.current_slot,
                bootable=parse_bool(self.get(f"slot-unbootable:{letter}") or "") is not True,
                successful=parse_bool(self.get(f"slot-successful:{letter}") or "") is True,
                tries_left=int(retries) if retries.isdigit() else 0))
        location = manifest.rollback_location
        stored = self.rollback_index(location)
        return DeviceFacts(
            product=self.get("product") or "", hardware_revision=self.get(
                self.hw_revision_var) or "", baseband=self.get("version-baseband") or "",
            serial=self.get("serialno") or "", protocol_version=0, flash_size=0,
            cache_size=0, cache_free=0, partitions=tuple(parts), slots=tuple(slots),
            current_slot=self.current_slot,
            rollback_indexes={} if stored is None else {location: stored})


def read_facts(client: FastbootClient, manifest: Manifest) -> FastbootFacts:
    """Ask the bootloader every variable the checks and the plan need (one getvar each:
    ``getvar all`` is missing or partial on many bootloaders)."""
    facts = FastbootFacts()

    def ask(name: str) -> None:
        facts.values[name] = client.getvar(name, cached=True)

    for name in ("product", "serialno", "version-baseband", "version-bootloader",
                 "slot-count", "current-slot", "max-download-size",
                 f"rollback-index:{manifest.rollback_location}"):
        ask(name)
    for name in HW_REVISION_VARS:
        ask(name)
        if facts.get(name) is not None:
            break
    for letter in facts.slots:
        for base in ("slot-successful", "slot-unbootable", "slot-retry-count"):
            ask(f"{base}:{letter}")
    for part in manifest.partitions:
        ask(f"has-slot:{part.name}")
        for name in facts.size_vars(part):
            ask(name)
            if facts.get(name):
                break
    return facts


CATALOG_ROLLBACK_LOCATIONS = 4  # rollback-index:0..3 are asked for catalog selection


def read_device_facts(url: str, timeout: float = 5.0) -> DeviceFacts:
    """The facts a catalog selection needs, from a fastboot bootloader's getvar answers.

    Rollback indexes come only from the vendor variable ``rollback-index:N`` (locations
    0..3); a location the bootloader does not report counts as 0 for selection, and the
    flash itself then reports the rollback check as unverifiable."""
    with connect(url, timeout) as client:
        facts = FastbootFacts()
        names = ["product", "serialno", "version-baseband", "slot-count", "current-slot",
                 *(f"rollback-index:{i}" for i in range(CATALOG_ROLLBACK_LOCATIONS))]
        for name in names:
            facts.values[name] = client.getvar(name, cached=True)
        for name in HW_REVISION_VARS:
            facts.values[name] = client.getvar(name, cached=True)
            if facts.get(name) is not None:
                break
    rollback = {i: index for i in range(CATALOG_ROLLBACK_LOCATIONS)
                if (index := facts.rollback_index(i)) is not None}
    return DeviceFacts(product=facts.get("product") or "",
                       hardware_revision=facts.get(facts.hw_revision_var) or "",
                       baseband=facts.get("version-baseband") or "",
                       serial=facts.get("serialno") or "", protocol_version=0, flash_size=0,
                       cache_size=0, cache_free=0, current_slot=facts.current_slot,
                       rollback_indexes=rollback)


# ------------------------------------------------------------------------------ checks
def fastboot_checks(package: Package, facts: FastbootFacts,
                    trust: TrustStore) -> list[Failure]:
    """Every check, as failures: mismatches with their own codes, what the device does not
    report as :class:`Unverifiable` (9045). Signature and blocks never depend on the device."""
    failures = check_signature(package.head, trust)
    if not failures:
        try:
            package.verify(trust)
        except ZflashError as exc:
            failures.append(Failure(exc.code, "blocks", exc.detail))
    manifest = package.manifest
    device = facts.device_facts(manifest)
    reported = {"product": "product", "hardware_revision": facts.hw_revision_var,
                "baseband": "version-baseband"}
    failures += [f for f in check_compatibility(manifest, device)
                 if facts.get(reported[f.check]) is not None]
    for check, variable in reported.items():
        if facts.get(variable) is None:
            failures.append(_unverifiable(check, variable, f"cannot check the package's "
                                                           f"{check.replace('_', ' ')}"))
    if facts.rollback_index(manifest.rollback_location) is None:
        failures.append(_unverifiable(
            "rollback", f"rollback-index:{manifest.rollback_location}",
            f"cannot compare the package's rollback index {manifest.rollback_index} with the "
            f"device's stored index"))
    else:
        failures += check_rollback(manifest, device)
    return failures + _storage(manifest, facts)


def _storage(manifest: Manifest, facts: FastbootFacts) -> list[Failure]:
    """Layout and size per partition, and a slot to write into; fastboot writes unslotted
    partitions in place (no staging cache to check)."""
    failures: list[Failure] = []
    if any(p.slotted for p in manifest.partitions) and facts.inactive_slot is None:
        failures.append(Failure(Code.SLOT, "slots", (
            f"package has A/B partitions but the device reports no inactive slot "
            f"(slot-count {facts.get('slot-count')!r}, current-slot "
            f"{facts.get('current-slot')!r})")))
    for part in manifest.partitions:
        has = facts.has_slot(part.name)
        if has is not None and has != part.slotted:
            kind = "slotted" if part.slotted else "unslotted"
            failures.append(Failure(Code.COMPATIBILITY, "layout", (
                f"package has {part.name} {kind}, the device does not "
                f"(has-slot:{part.name} is {facts.get(f'has-slot:{part.name}')!r})")))
            continue
        capacity, variable = facts.partition_size(part)
        if capacity is None:
            what = (f"cannot check that the {part.size}-byte image {part.name} fits"
                    if has is not None else f"it may have no partition {part.name}")
            failures.append(_unverifiable("storage" if has is not None else "partition",
                                          variable, what))
        elif part.size > capacity:
            failures.append(Failure(Code.STORAGE, "storage", (
                f"image {part.name} is {part.size} bytes, the partition holds {capacity} "
                f"({variable})")))
        elif sparse_block_size(part.size, capacity) is None:
            failures.append(Failure(Code.STORAGE, "storage", (
                f"image {part.name} ({part.size} bytes) cannot be padded to whole sparse "
                f"blocks within its {capacity}-byte partition")))
    return failures


def sparse_block_size(size: int, capacity: int | None) -> int | None:
    """The sparse block size for an image: a sparse image is whole blocks, so the padded
    image must still fit the partition (any size fits an unknown capacity)."""
    for block_size in SPARSE_BLOCK_SIZES:
        if capacity is None or -(-size // block_size) * block_size <= capacity:
            return block_size
    return None


def preflight(package: Package, facts: FastbootFacts, trust: TrustStore,
              accept_unverifiable: bool, emit: Emit) -> list[str]:
    """Run every check before a byte is written; raise with every refusal at once.

    Mismatches come first (their code is the exit status); unverifiable checks refuse
    unless accepted, and accepted ones are reported (``check_unverified``) and returned.
    """
    failures = fastboot_checks(package, facts, trust)
    hard = [f for f in failures if f.code != Code.UNVERIFIABLE]
    open_ = [f for f in failures if f.code == Code.UNVERIFIABLE]
    refused = hard + ([] if accept_unverifiable else open_)
    for failure in refused:
        emit({"event": "check_failed", **failure.to_dict()})
    if refused:
        raise PreflightRefused(refused)
    for failure in open_:
        emit({"event": "check_unverified", "accepted": True, **failure.to_dict()})
    touched = {_CATEGORY.get(f.check, f.check) for f in failures}
    for check in CHECKS:
        if check not in touched:
            emit({"event": "check_passed", "check": check})
    return [f.message for f in open_]


# ------------------------------------------------------------------------------ images
class _ImageStream:
    """A partition's raw image as a read-only stream, expanded from the package's blocks
    (each checked against the signed table as it is read); memory: one block."""

    def __init__(self, package: Package, part: PartitionEntry) -> None:
        self._blocks = package.iter_blocks(part)
        self._buf = memoryview(b"")

    def _fill(self) -> bool:
        while not len(self._buf):
            item = next(self._blocks, None)
            if item is None:
                return False
            self._buf = memoryview(item[1])
        return True

    def peek(self, n: int) -> bytes:
        return bytes(self._buf[:n]) if self._fill() else b""

    def read(self, n: int = -1) -> bytes:
        if not self._fill():
            return b""
        n = len(self._buf) if n < 0 else n
        data, self._buf = bytes(self._buf[:n]), self._buf[n:]
        return data


def image_pieces(package: Package, part: PartitionEntry, limit: int,
                 block_size: int) -> Iterator[SparsePiece]:
    """The image of ``part`` as complete sparse pieces of at most ``limit`` bytes.

    Constant blocks become FILL chunks, zeros included: the device writes them, so the slot
    ends up equal to the image whatever it held. A raw image that itself begins with the
    sparse magic is converted through a temporary sparse file, so that it is sent as the
    bytes it is, never reinterpreted as a sparse image.
    """
    stream = _ImageStream(package, part)
    if not is_sparse(stream.peek(4)):
        yield from split_sparse(stream, limit, block_size=block_size,  # type: ignore[arg-type]
                                size=part.size)
        return
    with tempfile.TemporaryFile() as tmp:
        write_sparse(stream, tmp, block_size, size=part.size)  # type: ignore[arg-type]
        tmp.seek(0)
        yield from split_sparse(tmp, limit)


# ------------------------------------------------------------------------------ flashing
@dataclass
class FastbootFlashSummary(FlashSummary):
    """FlashSummary plus what only a fastboot flash has."""

    protocol: str = "fastboot"
    rebooted: bool = False
    unverified: list[str] = field(default_factory=list)


@contextmanager
def connect(url: str, timeout: float) -> Iterator[FastbootClient]:
    """A fastboot client on ``url``; a USB device must offer the fastboot interface."""
    client = FastbootClient.connect(url, timeout=max(timeout, RESPONSE_TIMEOUT),
                                    open_timeout=timeout)
    try:
        protocol = getattr(client.link.transport, "protocol", "fastboot")
        if protocol != "fastboot":
            raise ZflashError(Code.UNSUPPORTED_PROTOCOL, f"{url} offers {protocol}, not "
                                                         "fastboot")
        yield client
    finally:
        client.close()


def flash_fastboot(url: str, package_path: Path, trust: TrustStore, options: FlashOptions,
                   emit: Emit) -> FastbootFlashSummary:
    """Flash one package into a fastboot device's inactive slot, then switch and reboot."""
    if options.skip_host_checks:
        raise ZflashError(Code.USAGE, "--skip-host-checks cannot be used with a fastboot "
                                      "device: its bootloader checks nothing, so zflash's "
                                      "checks are the only ones")
    started = time.monotonic()
    summary = FastbootFlashSummary()
    with Package(package_path) as package, connect(url, options.timeout) as client:
        manifest = package.manifest
        facts = read_facts(client, manifest)
        limit = facts.max_download_size or NO_LIMIT
        emit({"event": "connected", "url": url, "protocol": "fastboot",
              "max_data": limit if limit != NO_LIMIT else None, "window": 1, "codecs": [],
              "baud": None})
        emit({"event": "device", "protocol": "fastboot",
              "facts": facts.device_facts(manifest).to_dict(), "getvar": dict(facts.values)})
        summary.unverified = preflight(package, facts, trust, options.accept_unverifiable,
                                       emit)
        if limit < min_split_size(max(SPARSE_BLOCK_SIZES)):
            raise ZflashError(Code.DEVICE_REFUSED, f"the device's max-download-size ({limit}) "
                                                   "is too small for one sparse block; "
                                                   "nothing was written")
        slotted = any(p.slotted for p in manifest.partitions)
        slot = facts.inactive_slot if slotted else None
        summary.slot = slot
        summary.image_bytes = manifest.image_size
        summary.zero_blocks = sum(e.kind == KIND_ZERO for p in manifest.partitions
                                  for e in package.head.tables[p.name])
        emit({"event": "plan", "image_bytes": manifest.image_size,
              "partitions": [p.name for p in manifest.partitions]})
        for part in manifest.partitions:
            _flash_partition(client, package, part, facts, slot, limit, summary, emit)
        if options.wipe_userdata:
            client.command("erase:userdata")
            emit({"event": "userdata_wiped"})
        if slot is not None:
            client.command(f"set_active:{slot}")  # only now: every partition said OKAY
            emit({"event": "slot_switched", "slot": slot})
        summary.wire_bytes = summary.sent_bytes
        if options.reboot:
            if options.force_boot_failure:
                client.oem("fail-next-boot")  # test devices only (the zflash emulator)
            client.reboot()
            summary.rebooted = True
            emit({"event": "rebooted", "protocol": "fastboot", "booted_slot": None,
                  "slot": slot})
    summary.seconds = time.monotonic() - started
    emit({"event": "done", **summary.to_dict()})
    return summary


class _Progress:
    """Turns the client's per-download progress into image bytes (``bytes_sent``)."""

    def __init__(self, partition: str, emit: Emit) -> None:
        self.partition, self.emit = partition, emit
        self.base = self.reported = self.covered = 0

    def piece(self, covered: int) -> None:
        self.base, self.covered = self.reported, covered

    def advance(self, done: int) -> None:
        if done > self.reported:
            self.emit({"event": "bytes_sent", "partition": self.partition,
                       "bytes": done - self.reported})
            self.reported = done

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress" and event.get("total"):
            self.advance(self.base + self.covered * int(event["sent"]) // int(event["total"]))
        elif kind in ("info", "text", "warning"):
            self.emit({"event": "device_message", "kind": kind,
                       "message": event.get("message")})


def _flash_partition(client: FastbootClient, package: Package, part: PartitionEntry,
                     facts: FastbootFacts, slot: str | None, limit: int,
                     summary: FastbootFlashSummary, emit: Emit) -> None:
    name = f"{part.name}_{slot}" if part.slotted else part.name
    block_size = sparse_block_size(part.size, facts.partition_size(part)[0]) or 4096
    emit({"event": "partition_started", "partition": part.name, "size": part.size,
          "skipped_bytes": 0, "slot": slot if part.slotted else None, "target": name})
    progress = _Progress(part.name, emit)
    previous, client.on_event = client.on_event, progress
    started, before, pieces = time.monotonic(), summary.sent_bytes, 0
    try:
        for piece in image_pieces(package, part, limit, block_size):
            start = min(piece.start_block * block_size, part.size)
            progress.piece(min(piece.end_block * block_size, part.size) - start)
            client.download(piece.file, piece.size, f"{name} piece {piece.index + 1}")
            client.command(f"flash:{name}")
            summary.sent_bytes += piece.size
            pieces += 1
            progress.advance(progress.base + progress.covered)
    finally:
        client.on_event = previous
    emit({"event": "transferred", "partition": part.name,
          "bytes": summary.sent_bytes - before, "pieces": pieces,
          "seconds": round(time.monotonic() - started, 4)})
    emit({"event": "verified", "partition": part.name, "sha256": part.sha256,
          "readback": False})

