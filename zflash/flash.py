"""The one flash pipeline: connect -> identify -> checks -> plan -> write -> verify ->
switch -> reboot -> summary, for every download mode.

The pipeline talks to a :class:`~zflash.targets.base.Target` only and asks its declared
:class:`~zflash.targets.base.Capabilities` instead of knowing protocols: a back-end without
block hashes gets no delta, one that cannot report a fact gets that check unverifiable, one
that verifies nothing on the device gets ``verified`` events that say the host checked.
It renders nothing: progress goes out as events (plain dicts with an ``event`` key), the same
whatever the back-end, and every failure is a coded ``ZflashError``; a refusal before
anything was written lists every failed check.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from zflash.checks import Failure, check_all
from zflash.errors import Code, ZflashError
from zflash.events import stamping
from zflash.facts import DeviceFacts
from zflash.package import blockmap
from zflash.package.format import KIND_ZERO, BlockTable, PartitionEntry, block_length
from zflash.package.reader import Package
from zflash.targets.base import Emit, Identity, LinkOptions, Target
from zflash.targets.blocks import BlockCheck, BlockSet, PartitionBlocks
from zflash.targets.registry import open_target

if TYPE_CHECKING:
    from zflash.package.keys import TrustStore

HASH_BATCH = 65536  # blocks per block-hash request (ZDL's maximum)
CHECKS = ("signature", "blocks", "compatibility", "rollback", "storage")
#: which of CHECKS a failure's check name belongs to
_CATEGORY = {"product": "compatibility", "hardware_revision": "compatibility",
             "baseband": "compatibility", "partition": "storage", "layout": "storage",
             "slots": "storage"}
USERDATA = "userdata"


class PreflightRefused(ZflashError):
    """The host's checks failed; nothing was sent to the device. ``failures`` lists all."""

    def __init__(self, failures: list[Failure]) -> None:
        self.failures = failures
        super().__init__(failures[0].code, "; ".join(f.message for f in failures))


@dataclass
class FlashOptions:
    skip_host_checks: bool = False
    reboot: bool = True
    wipe_userdata: bool = False
    delta: bool = True
    force_boot_failure: bool = False  # test devices only: the new slot fails to boot
    accept_unverifiable: bool = False  # flash although a check cannot be made
    #: fastboot: flash a package that lacks some slotted partition (the new slot keeps
    #: them from an older build); ZDL devices and EDL complete the slot instead
    allow_partial: bool = False
    link: LinkOptions = field(default_factory=LinkOptions)


@dataclass
class FlashSummary:
    protocol: str = ""
    image_bytes: int = 0
    sent_bytes: int = 0
    skipped_bytes: int = 0
    resumed_blocks: int = 0
    kept_blocks: int = 0
    zero_blocks: int = 0
    wire_bytes: int = 0
    retransmissions: int = 0
    seconds: float = 0.0
    slot: str | None = None
    rebooted: bool = False
    booted_slot: str | None = None
    fell_back: bool = False
    #: the checks that could not be made and were accepted (--accept-unverifiable)
    unverified: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Image bytes per second (what the user waited for)."""
        return self.image_bytes / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**self.__dict__, "rate": round(self.rate, 1), "seconds": round(self.seconds, 3)}


def read_device_facts(url: str, options: LinkOptions | None = None) -> DeviceFacts:
    """The device's facts, whatever its download mode (for catalog selection)."""
    with open_target(url, options) as target:
        return target.identify().facts


def host_failures(package: Package, target: Target, identity: Identity,
                  trust: TrustStore) -> list[Failure]:
    """Every check but the blocks' hashes, for every back-end, from one function."""
    failures = check_all(package.head, identity.facts, trust, identity.unreported,
                         target.capabilities.staging_cache)
    return failures + target.constraints(package.manifest, identity)


def decide(failures: list[Failure], accept_unverifiable: bool, emit: Emit,
           skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> list[str]:
    """Refuse with every failure at once, before a byte is written.

    Mismatches come first (their code is the exit status); unverifiable checks refuse
    unless accepted, and accepted ones are reported (``check_unverified``) and returned.
    ``skip``: checks still running, reported later; ``only``: report just these.
    """
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
        if check not in touched and check not in skip and (only is None or check in only):
            emit({"event": "check_passed", "check": check})
    return [f.message for f in open_]


def _block_failure(error: ZflashError | None) -> list[Failure]:
    return [] if error is None else [Failure(error.code, "blocks", error.detail,
                                             cause="blocks")]


def flash(url: str, package_path: Path, trust: TrustStore, options: FlashOptions,
          emit: Emit) -> FlashSummary:
    """Flash one package into one device; safe to run again after any interruption."""
    with stamping(emit, url) as emit:  # every event: elapsed, device; progress cadence
        started = time.monotonic()
        with Package(package_path) as package, open_target(url, options.link, emit) as target:
            summary = _run(target, package, trust, options, emit)
        summary.seconds = time.monotonic() - started
        emit({"event": "done", **summary.to_dict()})
    if summary.fell_back:
        raise ZflashError(Code.BOOT_FAILED, f"slot {summary.slot} did not boot; the device "
                                            f"runs slot {summary.booted_slot} again")
    return summary


def _run(target: Target, package: Package, trust: TrustStore, options: FlashOptions,
         emit: Emit) -> FlashSummary:
    caps = target.capabilities
    manifest = package.manifest
    summary = FlashSummary(protocol=target.protocol, image_bytes=manifest.image_size)
    if options.skip_host_checks and not caps.enforces_checks:
        raise ZflashError(Code.USAGE, f"--skip-host-checks cannot be used with a "
                                      f"{target.protocol} device: it checks nothing itself, "
                                      "so zflash's checks are the only ones")
    _refuse_unasked_userdata(package, options)
    if options.wipe_userdata and not caps.erase:
        raise target.unsupported("erasing userdata")
    identity = target.identify(manifest)
    emit({"event": "device", "protocol": target.protocol, "facts": identity.facts.to_dict(),
          "unreported": dict(identity.unreported), **identity.extra})
    # The device hashes what it holds (delta) while the host checks the package: each block
    # the device will be sent is hashed once, on a worker thread (targets/blocks.py).
    probe = _DeltaProbe(target, package, identity.facts) \
        if options.delta and caps.block_hashes else None
    if probe:
        probe.start()
    check = None if options.skip_host_checks else BlockCheck(package)
    # A back-end that stages what it is sent (fastboot) streams while the blocks are still
    # being hashed; its first write waits for the last hash (the gate, D183).
    gate = _BlockGate(check, options, emit) if check and target.stages_downloads else None
    if gate:
        check.keep_expanded()  # type: ignore[union-attr]
    try:
        on_device = _check(target, package, identity, trust, options, probe, check,
                           summary, emit, deferred=gate is not None)
        _write(target, package, identity, options, check, gate, on_device, summary, emit)
    finally:
        if check:
            check.stop()  # nothing may read the package after the job
    return summary


def _write(target: Target, package: Package, identity: Identity, options: FlashOptions,
           check: BlockCheck | None, gate: "_BlockGate | None", on_device: dict[int, set[int]],
           summary: FlashSummary, emit: Emit) -> None:
    """Everything after the checks: begin, each partition, switch, reboot."""
    manifest = package.manifest
    start = target.begin(package, identity)
    slotted = any(p.slotted for p in manifest.partitions)
    if slotted and start.slot is not None and start.slot == identity.facts.current_slot:
        raise ZflashError(Code.PROTOCOL, f"the device offered its running slot "
                                         f"{start.slot} as the target; refusing to write it")
    summary.slot = start.slot
    emit({"event": "update_ready", "slot": start.slot, "session": start.session})
    emit({"event": "plan", "image_bytes": manifest.image_size,
          "partitions": [p.name for p in manifest.partitions]})
    for index, part in enumerate(manifest.partitions):
        have = BlockSet.from_ranges(part.block_count, start.resumed.get(index, ()))
        candidates = set(on_device.get(index, ())) - set(have) \
            if start.slot == identity.facts.inactive_slot else set()
        # gated: the sender shares the check with the workers still running (D187), and
        # the gate holds every write until all of it is done
        checked = None if check is None else check.checked[part.name]
        blocks = PartitionBlocks(package, part, checked, gate, check if gate else None)
        _write_partition(target, blocks, index, have, candidates, start.slot, summary, emit)
    if gate:
        gate()  # nothing more is written before every block checked out
    if options.wipe_userdata:
        target.erase(USERDATA, None)
        emit({"event": "userdata_wiped"})
    if slotted and start.slot:
        target.set_active(start.slot)  # only now: every partition verified
        emit({"event": "slot_switched", "slot": start.slot})
    stats = target.stats()
    summary.wire_bytes = stats["bytes_sent"]
    summary.retransmissions = stats["retransmissions"]
    if options.reboot:
        boot = target.reboot(options.force_boot_failure)
        summary.rebooted = boot.rebooted
        summary.booted_slot = boot.booted_slot
        summary.fell_back = boot.fell_back
        emit({"event": "rebooted", "protocol": target.protocol, "slot": start.slot,
              "reported": boot.reported, **boot.details,
              "booted_slot": boot.booted_slot, "fell_back": boot.fell_back})


class _BlockGate:
    """Waits (once) for the block check still running while a staging back-end sends;
    refuses with the corrupt block exactly as a check before the transfer would have."""

    def __init__(self, check: BlockCheck, options: FlashOptions, emit: Emit) -> None:
        self.check, self.options, self.emit = check, options, emit
        self.passed = False

    def __call__(self) -> None:
        if self.passed:
            return
        failures = _block_failure(self.check.wait())
        decide(failures, self.options.accept_unverifiable, self.emit,
               only=("blocks",))  # raises PreflightRefused on a corrupt block
        self.passed = True


def _check(target: Target, package: Package, identity: Identity, trust: TrustStore,
           options: FlashOptions, probe: "_DeltaProbe | None", check: BlockCheck | None,
           summary: FlashSummary, emit: Emit, deferred: bool = False) -> dict[int, set[int]]:
    """Every check, blocks included (each block to be sent hashed once, while the device
    answers the probe); returns the probe's matches. Raises with every refusal.

    ``deferred``: the block check is started, not awaited; the gate reports it."""
    manifest = package.manifest
    if check:
        probed = probe.partitions if probe else set()
        check.start((part, _data_blocks(package, part)) for i, part in
                    enumerate(manifest.partitions) if i not in probed)
    if options.skip_host_checks:
        emit({"event": "checks_skipped"})
        failures: list[Failure] = []
    else:
        failures = host_failures(package, target, identity, trust)
        if options.allow_partial:
            for failure in [f for f in failures if f.check == "partial"]:
                emit({"event": "check_overridden", "option": "--allow-partial",
                      **failure.to_dict()})
            failures = [f for f in failures if f.check != "partial"]
    signature_bad = any(f.check == "signature" for f in failures)
    on_device = probe.finish() if probe and not signature_bad else {}
    if check:
        if not signature_bad:
            if probe is not None:
                check.start((part, [b for b in _data_blocks(package, part)
                                    if b not in probe.matched.get(i, set())])
                            for i, part in enumerate(manifest.partitions)
                            if i in probe.partitions)
            if not deferred:
                failures = _block_failure(check.wait()) + failures
        summary.unverified = decide(failures, options.accept_unverifiable, emit,
                                    skip=("blocks",) if deferred and not signature_bad else ())
    return on_device


def _refuse_unasked_userdata(package: Package, options: FlashOptions) -> None:
    """DESIGN.md: user data is never touched unless the user asks for it by name."""
    if any(p.name == USERDATA for p in package.manifest.partitions) and \
            not options.wipe_userdata:
        raise ZflashError(Code.USAGE, "the package writes userdata, which would replace the "
                                      "user's data; pass --wipe-userdata to allow it")


def _data_blocks(package: Package, part: PartitionEntry) -> list[int]:
    kinds = package.head.tables[part.name].kinds()
    return [i for i, kind in enumerate(kinds) if kind != KIND_ZERO]


def _write_partition(target: Target, blocks: PartitionBlocks, index: int,
                     have: BlockSet, candidates: set[int], slot: str | None,
                     summary: FlashSummary, emit: Emit) -> None:
    part = blocks.part
    kinds = blocks.table.kinds()
    zeros = blockmap.of_kind(kinds, KIND_ZERO)
    summary.resumed_blocks += len(have) - blockmap.intersection(have.bits(), zeros).count(1)
    summary.zero_blocks += kinds.count(KIND_ZERO)
    if candidates:
        kept = blockmap.from_runs(part.block_count, _runs_of(target.keep(
            index, part, sorted(candidates))))
        summary.kept_blocks += blockmap.without(kept, have.bits()).count(1)
        have.merge(kept)
    skipped = _bytes_in(part, have.bits())
    # not the same claim: data blocks the device already holds (resumed, kept after its
    # hash matched) versus zero blocks it writes itself where its flash is not zero
    zero = _bytes_in(part, blockmap.intersection(have.bits(), zeros))
    summary.skipped_bytes += skipped
    emit({"event": "partition_started", "partition": part.name, "size": part.size,
          "skipped_bytes": skipped, "kept_bytes": skipped - zero, "zero_bytes": zero,
          "slot": slot if part.slotted else None,
          "target": f"{part.name}_{slot}" if part.slotted and slot else part.name})

    def progress(image_bytes: int, wire_bytes: int) -> None:
        emit({"event": "bytes_sent", "partition": part.name, "bytes": image_bytes,
              "wire_bytes": wire_bytes})

    started = time.monotonic()
    written = target.write_partition(blocks, index, slot, have, progress)
    summary.sent_bytes += written.sent
    emit({"event": "transferred", "partition": part.name, "bytes": written.sent,
          "pieces": written.pieces, "seconds": round(time.monotonic() - started, 4)})
    check = target.verify_partition(index, part, slot)
    emit({"event": "verified", "partition": part.name, "by": check.by,
          "readback": check.by == "device",
          "sha256": check.sha256 if check.by == "device" else None,
          "expected_sha256": part.sha256})


def _bytes_in(part: PartitionEntry, flags: bytes) -> int:
    """Image bytes of the blocks in a block map of ``part`` (the last block may be short)."""
    whole = flags.count(1) * part.block_size
    last = part.block_count - 1
    if last >= 0 and flags[last]:
        whole -= part.block_size - block_length(part, last)
    return whole


def _runs_of(blocks: set[int]) -> Iterator[tuple[int, int]]:
    """(first, count) runs of a set of block indexes."""
    first = previous = None
    for block in sorted(blocks):
        if previous is not None and block == previous + 1:
            previous = block
            continue
        if first is not None and previous is not None:
            yield first, previous - first + 1
        first = previous = block
    if first is not None and previous is not None:
        yield first, previous - first + 1


class _DeltaProbe:
    """Hashes of the blocks already on the device (its inactive slot, or the live copy of an
    unslotted partition), asked for early.

    The first request goes out before the host's own checks and is collected after them, so
    the device hashes its flash while the host hashes the package. Only read-only requests
    are sent before the checks pass; nothing is written. Zero blocks of the package are not
    asked about: the device fills them itself, and only where its flash is not zero already.
    """

    def __init__(self, target: Target, package: Package, facts: DeviceFacts) -> None:
        self.target, self.package, self.slot = target, package, facts.inactive_slot
        self.requests: list[tuple[int, PartitionEntry, int, int]] = []
        #: partition indexes the probe asks about
        self.partitions: set[int] = set()
        for index, part in enumerate(package.manifest.partitions):
            on_device = facts.partition(part.name)
            if on_device is None or on_device.slotted != part.slotted or \
                    (part.slotted and not self.slot):
                continue
            blocks = min(part.block_count, -(-on_device.size // part.block_size))
            self.partitions.add(index)
            for first, count in _data_runs(package.head.tables[part.name].kinds()[:blocks]):
                self.requests.append((index, part, first, count))
        #: blocks worth offering for KEEP, per partition index
        self.found: dict[int, set[int]] = {}
        #: of those, the ones whose hash the device reported equal to the signed table's
        #: (the host need not hash them: the device checks them when it keeps them)
        self.matched: dict[int, set[int]] = {}

    def _ask(self) -> None:
        index, part, first, count = self.requests[0]
        slot = self.slot if part.slotted else None  # unslotted: the live partition
        self.target.start_block_hashes(part, slot, first, count)

    def start(self) -> None:
        if self.requests:
            self._ask()

    def finish(self) -> dict[int, set[int]]:
        """Matching blocks per partition index. A device that cannot answer costs only the
        delta (everything is sent), never the flash; a lost link still ends it."""
        while self.requests:
            index, part, first, _ = self.requests.pop(0)
            try:
                digests = self.target.finish_block_hashes()
            except ZflashError as exc:
                if exc.code in (Code.LINK_LOST, Code.TIMEOUT):
                    raise
                self.requests.clear()
                break
            table = self.package.head.tables[part.name]
            found = self.found.setdefault(index, set())
            matched = self.matched.setdefault(index, set())
            for block in _matching(table, first, digests[:part.block_count - first]):
                found.add(block)
                matched.add(block)
            last = part.block_count - 1
            if first <= last < first + len(digests) and part.size % part.block_size \
                    and table[last].stored_size:
                # A short last block is hashed on the device over a whole block of flash,
                # so it never matches here: offer it anyway; the device checks it exactly
                # (not "matched": the host still hashes it, in case it must be sent).
                found.add(last)
            if self.requests:
                self._ask()
        return self.found


def _matching(table: BlockTable, first: int, digests: list[bytes]) -> Iterator[int]:
    """The data blocks from ``first`` on whose reported digest equals the signed table's.

    One compare of all but the last digest first (a re-flash: they all match; a short last
    block is hashed over a whole block of flash, so it is looked at alone), else block by
    block on slices of two byte strings; a zero block never matches (it carries no data)."""
    stop = first + len(digests)
    reported, expected = b"".join(digests), table.digests(first, stop)
    data = blockmap.without(b"\x01" * len(digests),
                            blockmap.of_kind(table.kinds()[first:stop], KIND_ZERO))
    bulk = max(0, len(digests) - 1)
    if reported[:bulk * 32] == expected[:bulk * 32]:
        for start, count in blockmap.runs(data[:bulk]):
            yield from range(first + start, first + start + count)
        alone = blockmap.members(data[bulk:])
        base = bulk
    else:
        alone, base = blockmap.members(data), 0
    for offset in alone:
        offset += base
        if reported[offset * 32:offset * 32 + 32] == expected[offset * 32:offset * 32 + 32]:
            yield first + offset


def _data_runs(kinds: bytes, gap: int = 16) -> Iterator[tuple[int, int]]:
    """(first, count) runs covering the blocks that carry data (``kinds``: one block kind
    byte per block), at most HASH_BATCH long; zero runs shorter than ``gap`` are bridged
    (one request beats many tiny ones)."""
    start = end = None
    for index, kind in enumerate(kinds):
        if kind == KIND_ZERO:
            continue
        if start is None:
            start = end = index
        elif index - end > gap or index - start >= HASH_BATCH:
            yield start, end - start + 1
            start = index
        end = index
    if start is not None and end is not None:
        yield start, end - start + 1


def backup(url: str, partition: str, slot: str | None, out: Path, emit: Emit,
           options: LinkOptions | None = None) -> tuple[int, str]:
    """Read a partition back to ``out``; returns (bytes, SHA-256)."""
    with stamping(emit, url) as emit:  # every event: elapsed, device; progress cadence
        digest = hashlib.sha256()
        with open_target(url, options, emit) as target:
            if not target.capabilities.read:
                raise target.unsupported("reading partitions back (backup)")
            facts = target.identify().facts
            info = facts.partition(partition)
            if info is None:
                raise ZflashError(Code.NO_SUCH_PARTITION,
                                  f"device has no partition {partition!r}")
            if info.slotted and slot is None:
                slot = facts.current_slot
            tmp = out.with_name(f".{out.name}.part")
            try:
                handle = open(tmp, "wb")
            except OSError as exc:
                raise ZflashError(Code.FILE_UNWRITABLE, f"{out}: {exc.strerror}") from None
            emit({"event": "backup_started", "partition": partition, "slot": slot,
                  "size": info.size})
            with handle:
                def sink(data: bytes) -> None:
                    handle.write(data)
                    digest.update(data)
                    emit({"event": "bytes_received", "bytes": len(data)})
                target.read(partition, slot if info.slotted else None, 0, info.size, sink)
            tmp.replace(out)
        return info.size, digest.hexdigest()
