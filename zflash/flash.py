"""One flash job: connect -> identify -> preflight -> plan -> transfer -> verify -> switch -> reboot.

The job renders nothing: it reports progress as events (plain dicts with an ``event`` key)
to a callback, and the CLI turns them into bars, lines or JSON. Every failure is a coded
``ZflashError``; a refusal before anything was written lists every failed check.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from zflash.checks import Failure, check_all
from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.package.format import KIND_ZERO, KIND_ZLIB, PartitionEntry, block_length
from zflash.package.keys import TrustStore
from zflash.package.reader import Package
from zflash.protocol.zdl import (CODEC_NONE, CODEC_ZLIB, BeginUpdate, BlockHashes,
                                 CommitPartition, Erase, Hashes, KeepBlocks, Kept, Ok, Reboot,
                                 SetActive, UpdateReady)
from zflash.transport.base import open_transport
from zflash.targets.zdl.session import SessionOptions, ZdlSession

Emit = Callable[[dict[str, object]], None]
HASH_BATCH = 65536  # blocks per BLOCK_HASHES request (the protocol's maximum)


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
    accept_unverifiable: bool = False  # fastboot: flash although a check cannot be made
    session: SessionOptions = field(default_factory=SessionOptions)
    timeout: float = 5.0


@dataclass
class FlashSummary:
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
    booted_slot: str | None = None
    fell_back: bool = False

    @property
    def rate(self) -> float:
        """Image bytes per second (what the user waited for)."""
        return self.image_bytes / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**self.__dict__, "rate": round(self.rate, 1), "seconds": round(self.seconds, 3)}


@contextmanager
def open_session(url: str, options: SessionOptions | None = None, emit: Emit | None = None,
                 timeout: float = 5.0) -> Iterator[ZdlSession]:
    """Open the transport named by ``url`` and complete the ZDL handshake."""
    transport = open_transport(url, timeout=timeout)
    try:
        session = ZdlSession(transport, options, emit)
        info = session.connect()
        (emit or (lambda e: None))({"event": "connected", "url": url,
                                    "max_data": info.max_data, "window": info.window,
                                    "codecs": list(info.codecs), "baud": info.baud})
        yield session
    finally:
        transport.close()


def read_device_facts(url: str, timeout: float = 5.0) -> DeviceFacts:
    """The device's facts over ZDL, or from getvar answers on a fastboot device."""
    from zflash.targets.fastboot.flasher import read_device_facts as read_fastboot_facts
    from zflash.targets.fastboot.flasher import speaks_fastboot
    if speaks_fastboot(url):
        return read_fastboot_facts(url, timeout)
    with open_session(url, timeout=timeout) as session:
        return session.identify()


def preflight(package: Package, facts: DeviceFacts, trust: TrustStore, emit: Emit) -> None:
    """Every host check against the device's facts, and every block against its hash;
    raise with all failures at once, before a byte goes to the device."""
    failures = check_all(package.head, facts, trust)
    if not any(f.check == "signature" for f in failures):
        try:
            package.verify(trust)
        except ZflashError as exc:
            failures.insert(0, Failure(exc.code, "blocks", exc.detail))
    for failure in failures:
        emit({"event": "check_failed", **failure.to_dict()})
    if failures:
        raise PreflightRefused(failures)
    for check in ("signature", "blocks", "compatibility", "rollback", "storage"):
        emit({"event": "check_passed", "check": check})


def flash(url: str, package_path: Path, trust: TrustStore, options: FlashOptions,
          emit: Emit) -> FlashSummary:
    """Flash one package into one device; safe to run again after any interruption."""
    from zflash.targets.fastboot.flasher import flash_fastboot, speaks_fastboot
    if speaks_fastboot(url):  # fastboot+tcp://, or a USB device with fastboot's interface
        return flash_fastboot(url, package_path, trust, options, emit)
    started = time.monotonic()
    summary = FlashSummary()
    with Package(package_path) as package, \
            open_session(url, options.session, emit, options.timeout) as session:
        facts = session.identify()
        emit({"event": "device", "facts": facts.to_dict()})
        manifest = package.manifest
        # The device hashes its inactive slot (for delta) while the host checks the package.
        on_flash = _DeltaProbe(session, package, facts) if options.delta else None
        if on_flash:
            on_flash.start()
        if options.skip_host_checks:
            emit({"event": "checks_skipped"})
        else:
            preflight(package, facts, trust, emit)
        on_device = on_flash.finish() if on_flash else {}
        summary.image_bytes = manifest.image_size
        ready = session.request(BeginUpdate(package.head.head_bytes()), UpdateReady)
        assert isinstance(ready, UpdateReady)
        summary.slot = ready.slot
        emit({"event": "update_ready", "slot": ready.slot, "session": ready.session})
        emit({"event": "plan", "image_bytes": manifest.image_size,
              "partitions": [p.name for p in manifest.partitions]})
        for index, part in enumerate(manifest.partitions):
            have = _expand(ready.have.get(index, ()))
            candidates = on_device.get(index, set()) - have if ready.slot == facts.inactive_slot \
                else set()
            _flash_partition(session, package, index, part, have, candidates, ready.slot,
                             summary, emit)
        if options.wipe_userdata:
            session.request(Erase("userdata", None), Ok)
            emit({"event": "userdata_wiped"})
        if any(p.slotted for p in manifest.partitions) and ready.slot:
            session.request(SetActive(ready.slot), Ok)
            emit({"event": "slot_switched", "slot": ready.slot})
        stats = session.stats
        summary.wire_bytes = stats["bytes_sent"]
        summary.retransmissions = stats["retransmissions"]
        if options.reboot:
            boot = reboot(session, options.force_boot_failure, emit)
            summary.booted_slot = boot.get("booted_slot")  # type: ignore[assignment]
            summary.fell_back = bool(boot.get("fell_back"))
    summary.seconds = time.monotonic() - started
    emit({"event": "done", **summary.to_dict()})
    if summary.fell_back:
        raise ZflashError(Code.BOOT_FAILED, f"slot {summary.slot} did not boot; the device "
                                            f"runs slot {summary.booted_slot} again")
    return summary


def reboot(session: ZdlSession, force_boot_failure: bool, emit: Emit) -> dict[str, object]:
    options = {"force_boot_failure": True} if force_boot_failure else {}
    answer = session.request(Reboot(options), Ok)
    boot = dict(answer.info.get("boot") or {})  # type: ignore[attr-defined]
    emit({"event": "rebooted", **boot})
    return boot


def _expand(ranges: tuple[tuple[int, int], ...]) -> set[int]:
    return {block for first, count in ranges for block in range(first, first + count)}


def _flash_partition(session: ZdlSession, package: Package, index: int, part: PartitionEntry,
                     have: set[int], candidates: set[int], slot: str | None,
                     summary: FlashSummary, emit: Emit) -> None:
    table = package.head.tables[part.name]
    zero = {i for i, e in enumerate(table) if e.kind == KIND_ZERO}
    summary.resumed_blocks += len(have - zero)
    summary.zero_blocks += len(zero)
    if candidates:
        kept = session.request(KeepBlocks(index, _ranges(sorted(candidates))), Kept)
        kept_blocks = _expand(kept.ranges)  # type: ignore[attr-defined]
        summary.kept_blocks += len(kept_blocks - have)
        have |= kept_blocks
    skipped = sum(block_length(part, i) for i in have)
    summary.skipped_bytes += skipped
    emit({"event": "partition_started", "partition": part.name, "size": part.size,
          "skipped_bytes": skipped, "slot": slot if part.slotted else None})
    codec_zlib = "zlib" in (session.session.codecs if session.session else ())

    raw_lengths: deque[int] = deque()  # image bytes of each block in flight, in send order
    acked_blocks = session.engine.blocks_acked

    def blocks() -> Iterator[tuple[int, int, int, bytes]]:
        for block, entry, stored in package.iter_stored(part):
            if block in have:
                continue
            raw_lengths.append(block_length(part, block))
            if entry.kind == KIND_ZLIB:
                if codec_zlib:
                    yield index, block, CODEC_ZLIB, stored
                    summary.sent_bytes += len(stored)
                    continue
                stored = zlib.decompress(stored)
            yield index, block, CODEC_NONE, stored
            summary.sent_bytes += len(stored)

    def on_acked(wire_bytes: int) -> None:
        """Progress in image bytes (what the bars count), from the blocks now acknowledged."""
        nonlocal acked_blocks
        now = session.engine.blocks_acked
        done = sum(raw_lengths.popleft() for _ in range(now - acked_blocks))
        acked_blocks = now
        emit({"event": "bytes_sent", "partition": part.name, "bytes": done,
              "wire_bytes": wire_bytes})

    started = time.monotonic()
    before = summary.sent_bytes
    session.write_blocks(blocks(), on_acked)
    emit({"event": "transferred", "partition": part.name,
          "bytes": summary.sent_bytes - before,
          "seconds": round(time.monotonic() - started, 4)})
    answer = session.request(CommitPartition(index), Ok)
    emit({"event": "verified", "partition": part.name,
          "sha256": answer.info.get("sha256")})  # type: ignore[attr-defined]


class _DeltaProbe:
    """Hashes of the blocks already on the device (its inactive slot, or the live copy of an
    unslotted partition), asked for early.

    The first BLOCK_HASHES request goes out before the host's own checks and is collected
    after them, so the device hashes its flash while the host hashes the package. Only
    BLOCK_HASHES (read-only) is sent before the checks pass; nothing is written.
    """

    def __init__(self, session: ZdlSession, package: Package, facts: DeviceFacts) -> None:
        self.session, self.package, self.slot = session, package, facts.inactive_slot
        self.requests: list[tuple[int, PartitionEntry, int, int]] = []
        for index, part in enumerate(package.manifest.partitions):
            on_device = facts.partition(part.name)
            if on_device is None or on_device.slotted != part.slotted or \
                    (part.slotted and not self.slot):
                continue
            blocks = min(part.block_count, -(-on_device.size // part.block_size))
            for first in range(0, blocks, HASH_BATCH):
                self.requests.append((index, part, first, min(HASH_BATCH, blocks - first)))
        self.found: dict[int, set[int]] = {}

    def _ask(self) -> None:
        index, part, first, count = self.requests[0]
        slot = self.slot if part.slotted else None  # unslotted: the live partition
        self.session.start_request(BlockHashes(part.name, slot, first, count, part.block_size))

    def start(self) -> None:
        if self.requests:
            self._ask()

    def finish(self) -> dict[int, set[int]]:
        """Matching blocks per partition index. A device that cannot answer costs only the
        delta (everything is sent), never the flash; a lost link still ends it."""
        while self.requests:
            index, part, first, _ = self.requests.pop(0)
            try:
                answer = self.session.finish_request(Hashes)
            except ZflashError as exc:
                if exc.code in (Code.LINK_LOST, Code.TIMEOUT):
                    raise
                self.requests.clear()
                break
            table = self.package.head.tables[part.name]
            found = self.found.setdefault(index, set())
            for offset, digest in enumerate(answer.digests):  # type: ignore[attr-defined]
                block = first + offset
                if digest == table[block].sha256 and table[block].stored_size:
                    found.add(block)
            last = part.block_count - 1
            if first <= last < first + len(answer.digests) and part.size % part.block_size \
                    and table[last].stored_size:
                # A short last block is hashed on the device over a whole block of flash,
                # so it never matches here: offer it anyway; KEEP_BLOCKS checks it exactly.
                found.add(last)
            if self.requests:
                self._ask()
        return self.found


def _ranges(blocks: list[int]) -> tuple[tuple[int, int], ...]:
    ranges: list[list[int]] = []
    for block in sorted(blocks):
        if ranges and sum(ranges[-1]) == block:
            ranges[-1][1] += 1
        else:
            ranges.append([block, 1])
    return tuple((f, c) for f, c in ranges)


def backup(url: str, partition: str, slot: str | None, out: Path, emit: Emit,
           options: SessionOptions | None = None) -> tuple[int, str]:
    """Read a partition back to ``out``; returns (bytes, SHA-256)."""
    digest = hashlib.sha256()
    with open_session(url, options, emit) as session:
        facts = session.identify()
        info = facts.partition(partition)
        if info is None:
            raise ZflashError(Code.NO_SUCH_PARTITION, f"device has no partition {partition!r}")
        if info.slotted and slot is None:
            slot = facts.current_slot
        tmp = out.with_name(f".{out.name}.part")
        try:
            handle = open(tmp, "wb")
        except OSError as exc:
            raise ZflashError(Code.FILE_UNWRITABLE, f"{out}: {exc.strerror}") from None
        with handle:
            def sink(data: bytes) -> None:
                handle.write(data)
                digest.update(data)
                emit({"event": "bytes_received", "bytes": len(data)})
            session.read(partition, slot if info.slotted else None, 0, info.size, sink)
        tmp.replace(out)
    return info.size, digest.hexdigest()
