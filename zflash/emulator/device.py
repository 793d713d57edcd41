"""The emulated device's rules: what a real bootloader in download mode enforces.

Whatever the host did or skipped, the device checks the signature against its own trusted
keys, the rollback index, compatibility and storage before it accepts an update, checks each
block's hash before writing it, never writes the running slot, and switches slots and raises
rollback indexes only as A/B and AVB prescribe (REFERENCE.md). Transport and protocol live
elsewhere: this class is called with decoded requests and raises coded errors.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from zflash.checks import Failure, check_device
from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts, PartitionInfo, SlotInfo
from zflash.package.format import (KIND_RAW, KIND_ZERO, KIND_ZLIB, KIND_ZSTD, PartitionEntry,
                                   block_length)
from zflash.package.keys import TrustStore
from zflash.package.reader import PackageHead, decode_block, zero_digest
from zflash.emulator import image_write
from zflash.package import blockmap
from zflash.emulator.blocks import (BlockHashCache, DigestRecords, copy_data, has_no_data,
                                    is_zero,
                                    is_zero_bytes)
from zflash.emulator.storage import (SLOTS, Storage, read_head, read_json, write_head,
                                     write_json)

PROTOCOL_VERSION = 1
SET_ACTIVE_TRIES = 6
SYNC_EVERY_BLOCKS = 256
READ_CHUNK = 256 << 10
ALIVE_EVERY_BLOCKS = 1024  # long operations report progress this often (keep-alive)
#: seconds a new host session waits for one whose link is gone (see try_enter)
SESSION_GRACE = 2.0
#: seconds a new host session waits for a live one, which may be just ending
HANDOVER = 0.5


class DeviceRefusal(ZflashError):
    """The device refused an update; ``failures`` lists every reason."""

    def __init__(self, failures: list[Failure]) -> None:
        self.failures = failures
        super().__init__(failures[0].code, "; ".join(f.message for f in failures))


class PowerLoss(Exception):
    """Raised by the fault hook to simulate pulling the power at a named step."""


@dataclass
class _Partition:
    entry: PartitionEntry
    fd: int
    path: Path
    verified: bytearray  # one byte per block: 1 = written, synced and hash-checked
    committed: bool = False
    touched: bool = False  # written in this session (what the device remembered is void)


class UpdateSession:
    """One update in progress, journaled in staging/DIGEST so it survives a disconnect."""

    def __init__(self, storage: Storage, head: PackageHead, head_bytes: bytes,
                 target: str | None, journal: dict[str, Any] | None,
                 digests: dict[str, bytes] | None = None) -> None:
        self.storage, self.head, self.target = storage, head, target
        self.head_bytes = head_bytes
        self.digest = head.digest  # hashed once: it names the staging dir and the journal
        self.dir = storage.staging_dir(self.digest)
        self.resumed = journal is not None
        self.started = False
        #: the target slot already holds this very build, every block proven by its commit
        #: record (see EmulatedDevice._holds_package): nothing is written before SET_ACTIVE
        self.unchanged = False
        self._digests = {} if digests is None else digests  # name -> table digests
        self.failure: ZflashError | None = None  # a refused block ends the update
        self.parts: list[_Partition] = []
        done = set(journal.get("committed", [])) if journal else set()
        for entry in head.manifest.partitions:
            bits = bytearray(entry.block_count)
            path = self._target_path(entry)
            committed = entry.name in done
            if journal and entry.name in journal.get("verified", {}):
                saved = bytes.fromhex(journal["verified"][entry.name])
                # a staged file that is gone was moved into place by a commit the journal
                # did not record (power lost in between): its blocks are no longer staged,
                # so they are not claimed; the delta finds them in the live partition
                if len(saved) == entry.block_count and (committed or path.exists()):
                    bits[:] = saved
            self.parts.append(_Partition(entry, -1, path, bits, committed))
        self._unsynced = 0

    def start(self) -> None:
        """Touch the disk only now, when the first verified data is about to be written, so
        that a refusal up to here leaves the device byte-identical."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for part in self.parts:
            if part.committed and not part.entry.slotted:
                continue  # already moved into place: staging holds no file for it
            if not part.path.exists():
                with open(part.path, "wb") as handle:
                    handle.truncate(self.storage.spec(part.entry.name).size)
            part.fd = os.open(part.path, os.O_RDWR)
        write_head(self.dir / "head.bin", self.head_bytes)
        self.started = True
        self.sync()

    def _target_path(self, entry: PartitionEntry) -> Path:
        if entry.slotted:
            return self.storage.partition_path(entry.name, self.target)
        return self.dir / f"{entry.name}.img"

    def digests(self, name: str) -> bytes:
        """The signed table's block digests of partition ``name``, joined once per head."""
        digests = self._digests.get(name)
        if digests is None:
            digests = self._digests[name] = self.head.tables[name].digests()
        return digests

    def end_unchanged(self) -> None:
        """A file of the target slot is about to change under an unchanged update: what the
        commit records proved no longer holds, so nothing granted on that proof stands (the
        host is told at SET_ACTIVE that partitions are not committed; a rerun starts over)."""
        self.unchanged = False
        for part in self.parts:
            part.verified[:] = bytes(len(part.verified))
            part.committed = False

    def have_ranges(self) -> list[dict[str, Any]]:
        """Blocks the host need not send: verified ones and zero blocks (filled locally)."""
        result = []
        for index, part in enumerate(self.parts):
            zeros = blockmap.of_kind(self.head.tables[part.entry.name].kinds(), KIND_ZERO)
            have = [list(run) for run in blockmap.runs(blockmap.union(part.verified, zeros))]
            if have:
                result.append({"index": index, "have": have})
        return result

    def sync(self) -> None:
        """fsync written data, then record it as verified: the order makes resume safe."""
        if not self.started:
            return
        for part in self.parts:
            if part.fd >= 0:
                os.fsync(part.fd)
        write_json(self.dir / "journal.json", {
            "digest": self.digest, "target_slot": self.target,
            "verified": {p.entry.name: bytes(p.verified).hex() for p in self.parts},
            "committed": [p.entry.name for p in self.parts if p.committed]})
        self._unsynced = 0

    def close(self) -> None:
        for part in self.parts:
            if part.fd >= 0:
                os.close(part.fd)
                part.fd = -1
        self.started = False


class EmulatedDevice:
    """A device in download mode over a state directory."""

    def __init__(self, storage: Storage,
                 power_loss_at: str | None = None,
                 on_power_loss: Callable[[], None] | None = None) -> None:
        self.storage = storage
        #: one host session at a time, whatever the protocol or link (a real device is in one
        #: mode, talking to one host); servers hold it for a whole session, taken with
        #: `try_enter` so that a second host is told "busy" rather than left waiting
        self.lock = threading.RLock()
        self.holder: str | None = None
        self._holder_alive: Callable[[], bool] | None = None
        self.session: UpdateSession | None = None
        self.fail_next_boot = False
        self.power_loss_at = power_loss_at
        self._on_power_loss = on_power_loss or (lambda: os._exit(137))
        self._step_counts: dict[str, int] = {}
        self._hashes = BlockHashCache()
        self._records = DigestRecords(storage.root / "digests")
        self._last_head: PackageHead | None = None  # the head BEGIN_UPDATE decoded last
        self._last_digests: dict[str, bytes] = {}  # its tables' digests, once joined
        #: called now and then during long operations (hashing, KEEP, commit), so that a
        #: server can tell its host the device is busy, not dead
        self.on_alive: Callable[[], None] = lambda: None
        self.trust = TrustStore()
        from cryptography.hazmat.primitives import serialization
        for pem in storage.profile.trusted_keys:
            self.trust.add(serialization.load_pem_public_key(pem.encode()))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ faults
    def _step(self, name: str) -> None:
        """Power-loss hook: ``name`` or ``name:N`` (the N-th time the step is reached)."""
        if not self.power_loss_at:
            return
        count = self._step_counts[name] = self._step_counts.get(name, 0) + 1
        wanted, _, nth = self.power_loss_at.partition(":")
        if wanted == name and (not nth or int(nth) == count):
            self._on_power_loss()
            raise PowerLoss(name)

    def _alive(self) -> None:
        self.on_alive()

    def _changing(self, path: Path) -> None:
        """About to write ``path``: what the device remembered of its blocks is void."""
        self._hashes.forget(path)
        self._records.drop(path)
        session = self.session
        if session is not None and session.unchanged and \
                any(part.path == path for part in session.parts):
            session.end_unchanged()

    # ------------------------------------------------------------------ facts
    @property
    def meta(self) -> dict[str, Any]:
        return self.storage.meta

    def facts(self, exclude_staging: str | None = None) -> DeviceFacts:
        profile = self.storage.profile
        used = self.storage.staging_used()
        if exclude_staging and self.storage.staging_dir(exclude_staging).exists():
            used -= sum(p.stat().st_size for p in self.storage.staging_dir(exclude_staging)
                        .rglob("*") if p.is_file())
        slots = []
        active = self._active_slot()
        builds = self.meta.get("builds", {})
        for name in SLOTS:
            state = self.meta["slots"][name]
            build = builds.get(name) or {}
            slots.append(SlotInfo(name=name, active=name == active,
                                  bootable=_bootable(state), successful=state["successful"],
                                  tries_left=state["tries_left"], priority=state["priority"],
                                  version=build.get("version"), package=build.get("package")))
        return DeviceFacts(
            product=profile.product, hardware_revision=profile.hardware_revision,
            baseband=profile.baseband, serial=profile.serial,
            protocol_version=PROTOCOL_VERSION, flash_size=profile.flash_size,
            cache_size=profile.cache_size, cache_free=max(0, profile.cache_size - used),
            partitions=tuple(PartitionInfo(p.name, p.size, p.slotted)
                             for p in profile.partitions),
            slots=tuple(slots), current_slot=self.meta["current_slot"],
            rollback_indexes={int(k): v for k, v in self.meta["rollback"].items()})

    def _active_slot(self) -> str:
        return max(SLOTS, key=lambda s: self.meta["slots"][s]["priority"])

    # ------------------------------------------------------------------ update
    def begin_update(self, head_bytes: bytes) -> dict[str, Any]:
        """Check a package head; on success open (or resume) its update session."""
        head = self._decode_head(head_bytes)
        failures = []
        try:
            head.verify_signature(self.trust)
        except ZflashError as exc:
            failures.append(Failure(exc.code, "signature", exc.detail, cause=exc.cause))
        facts = self.facts(exclude_staging=head.digest)
        failures += check_device(head.manifest, facts)
        if failures:
            raise DeviceRefusal(failures)
        self._step("begin")
        journal_path = self.storage.staging_dir(head.digest) / "journal.json"
        journal = read_json(journal_path) if journal_path.exists() else None
        target = facts.inactive_slot
        if journal and journal.get("target_slot") != target:
            journal = None  # the slots moved since: start over
        if self.session and self.session.digest != head.digest:
            self.session.close()
            self.session = None
        if self.session is None:
            session = UpdateSession(self.storage, head, bytes(head_bytes), target, journal,
                                    self._last_digests)
            session.unchanged = not session.resumed and self._holds_package(session)
            self.session = session
        return {"session": self.session.digest, "slot": target,
                "partitions": self.session.have_ranges()}

    def begin_update_by_digest(self, digest: str) -> dict[str, Any] | None:
        """BEGIN_UPDATE naming the package by its digest: the same checks, from a head the
        device holds; None when it holds none with that digest (the host sends the head)."""
        head = self._held_head(digest)
        return None if head is None else self.begin_update(head)

    def _held_head(self, digest: str) -> bytes | None:
        """The bytes of a head with this package digest the device still holds: the open
        update's, the one decoded last, a staged update's, or a slot build's; each stored one
        is used only if its bytes are as stored and decode to that very digest."""
        session, last = self.session, self._last_head
        if session is not None and session.digest == digest:
            return session.head_bytes
        if last is not None and last.digest == digest:
            return last.raw
        for path in (self.storage.staging_dir(digest) / "head.bin",
                     self.storage.head_path(digest)):
            head = read_head(path)
            if head is not None:
                try:
                    if self._decode_head(head).digest == digest:
                        return head
                except ZflashError:
                    pass
        return None

    def _decode_head(self, head_bytes: bytes) -> PackageHead:
        """Decode and structurally check a head. The same bytes always decode to the same
        head, so the head of the update decoded last is kept: a rerun or a re-flash of one
        package does not walk its block tables again (~3 ms at 512 MiB)."""
        last = self._last_head
        if last is not None and last.raw == head_bytes:
            return last
        head = self._last_head = PackageHead.decode(head_bytes)
        self._last_digests = {}
        return head

    def _holds_package(self, session: UpdateSession) -> bool:
        """The target slot already holds this package's build, proven without reading it.

        True when the slot's committed records are exactly the package's, for every slotted
        partition of the device (so set-active has nothing to copy in), and each file's
        digest record (valid only while the file is as the device committed it, D182)
        equals the signed table. Such an update changes no byte of the slot: there is
        nothing to invalidate, stage or journal, and the slot stays bootable throughout."""
        target, manifest = session.target, session.head.manifest
        if target is None or target == self.meta["current_slot"]:
            return False
        wanted = {p.name: {"sha256": p.sha256, "size": p.size} for p in manifest.partitions}
        slotted = {spec.name for spec in self.storage.profile.partitions if spec.slotted}
        if not all(p.slotted for p in manifest.partitions) or set(wanted) != slotted or \
                self.meta["committed"].get(target) != wanted:
            return False
        return all(self._recorded_digests(part.path, part.entry) ==
                   session.digests(part.entry.name) for part in session.parts)

    def _invalidate_slot(self, target: str | None, head: PackageHead) -> None:
        """Before writing a slot, mark it unbootable: a half-written slot must never boot."""
        if target is None or not any(p.slotted for p in head.manifest.partitions):
            return
        self.meta["slots"][target] = {"priority": 0, "tries_left": 0, "successful": False}
        self.meta["committed"][target] = {}
        self.meta.setdefault("builds", {}).pop(target, None)
        self.meta["pending_rollback"][target] = {}
        self.storage.save_meta()

    def _session(self) -> UpdateSession:
        """The open update, started on disk (first write): old staging cleared, the target
        slot marked unbootable before a byte of it changes."""
        session = self.session
        if session is None:
            raise ZflashError(Code.PROTOCOL, "no update in progress: send BEGIN_UPDATE first")
        if not session.started:
            self.storage.clear_staging(keep=session.digest)
            if not session.resumed:
                self._invalidate_slot(session.target, session.head)
            session.start()
        return session

    def _part(self, index: int, start: bool = True) -> _Partition:
        session = self._session() if start else self.session
        if session is None:
            raise ZflashError(Code.PROTOCOL, "no update in progress: send BEGIN_UPDATE first")
        if not 0 <= index < len(session.parts):
            raise ZflashError(Code.PROTOCOL, f"partition index {index} out of range")
        return session.parts[index]

    def write_block(self, part_index: int, block_index: int, stored: bytes | memoryview,
                    kind: int) -> None:
        """Check one block against the signed table, then write it (nothing before).

        ``kind`` is the form ``stored`` arrived in, as a package block kind (raw, zlib,
        zstd): the wire codec need not be the package's, the hash is of the raw bytes.
        """
        if kind not in (KIND_RAW, KIND_ZLIB, KIND_ZSTD):
            raise ZflashError(Code.PROTOCOL, f"block form {kind} cannot be written")
        part = self._part(part_index, start=False)
        entry = part.entry
        if self.session.failure is not None:  # type: ignore[union-attr]
            raise self.session.failure  # type: ignore[union-attr]
        if not 0 <= block_index < entry.block_count:
            raise ZflashError(Code.PROTOCOL, f"{entry.name}: block {block_index} out of range")
        if part.committed:
            raise ZflashError(Code.PROTOCOL, f"{entry.name} is already committed")
        table_entry = self.session.head.tables[entry.name][block_index]  # type: ignore[union-attr]
        kind_entry = replace(table_entry, kind=kind, stored_size=len(stored))
        try:
            raw = decode_block(entry, block_index, kind_entry, stored)
        except ZflashError as exc:
            failure = ZflashError(Code.SIGNATURE, f"{exc.detail}; update abandoned, nothing "
                                                  "more is written until a new BEGIN_UPDATE")
            self.session.failure = failure  # type: ignore[union-attr]
            raise failure from None
        if self.session.unchanged:  # type: ignore[union-attr]
            # checked against the signed table, which the slot's commit record equals: the
            # flash holds these very bytes, and writing them would only void that record
            part.verified[block_index] = 1
            self._step("write-block")
            return
        session = self._session()
        if not part.touched:
            self._changing(part.path)
            part.touched = True
        os.pwrite(part.fd, raw, block_index * entry.block_size)
        part.verified[block_index] = 1
        session._unsynced += 1
        self._step("write-block")
        if session._unsynced >= SYNC_EVERY_BLOCKS:
            session.sync()

    def keep_blocks(self, part_index: int, ranges: list[list[int]]) -> list[list[int]]:
        """Accept blocks the host believes are already on flash, after checking each one.

        Each block is checked against the signed table by the hash the device computed for
        the delta probe moments ago (when the file has not changed since), else by reading
        and hashing it now, one block at a time: memory stays one block whatever the image
        size. The update starts on disk only when a block is accepted, so a probe that finds
        nothing leaves the device untouched."""
        part = self._part(part_index, start=False)
        entry = part.entry
        session = self.session
        assert session is not None
        if session.unchanged:
            return self._keep_unchanged(part, ranges)
        table = session.head.tables[entry.name]
        source = (self.storage.partition_path(entry.name, session.target) if entry.slotted
                  else self.storage.partition_path(entry.name, None))
        known = self._hashes.get(source, entry.block_size)
        probed = self._whole_block_record(source, entry.block_size)  # what the probe said
        in_place = source == part.path
        # The digests the device recorded when it committed this very file (valid while
        # the file is unchanged since): whole runs are checked against the signed table
        # with one compare each, and nothing is read (D182).
        recorded = self._recorded_digests(source, entry) if in_place else b""
        signed = session.digests(entry.name) if recorded else b""
        accepted = bytearray(entry.block_count)
        started = False
        fd = os.open(source, os.O_RDONLY)
        try:
            for first, count in ranges:
                start, end = max(0, first), min(first + count, entry.block_count)
                if start >= end:
                    continue
                bulk = min(end, len(recorded) // 32)
                if start < bulk and \
                        recorded[start * 32:bulk * 32] == signed[start * 32:bulk * 32]:
                    if not started:
                        self._session()  # clears old staging, marks the slot unbootable
                        started = True
                    part.verified[start:bulk] = accepted[start:bulk] = b"\x01" * (bulk - start)
                    start = bulk
                for index in range(start, end):
                    offset, length = index * entry.block_size, block_length(entry, index)
                    digest = None
                    if length == entry.block_size:
                        digest = known.get(index) or (probed[index * 32:index * 32 + 32]
                                                      or None)
                    data = None
                    if digest is None or not in_place:
                        data = os.pread(fd, length, offset)
                        if digest is None:
                            digest = hashlib.sha256(data).digest()
                    if digest != table[index].sha256:
                        continue
                    if not started:
                        self._session()  # clears old staging, marks the slot unbootable
                        started = True
                    if data is not None and not in_place:
                        os.pwrite(part.fd, data, offset)
                    part.verified[index] = 1
                    accepted[index] = 1
                self._alive()
        finally:
            os.close(fd)
        if started:
            session.sync()
        return [list(run) for run in blockmap.runs(accepted)]

    def _keep_unchanged(self, part: _Partition, ranges: list[list[int]]) -> list[list[int]]:
        """KEEP in an unchanged update: every block of the partition was proven at
        BEGIN_UPDATE (the commit record equals the signed table, D182), so each requested
        block is accepted as it stands: no read, no compare, no write, no journal."""
        accepted = blockmap.from_runs(part.entry.block_count, ranges)
        part.verified[:] = blockmap.union(part.verified, accepted)
        self._alive()
        return [list(run) for run in blockmap.runs(accepted)]

    def _whole_block_record(self, path: Path, block_size: int) -> bytes:
        """The digests of whole blocks of ``path`` that its commit record vouches for, of
        whatever image: the prefix a probe answers from the record. A short last block of
        the recorded image is left out (the probe hashes a whole block of flash there)."""
        record = self._records.load(path, block_size)
        if record is None:
            return b""
        image, digests = record
        return digests[:-32] if image % block_size else digests

    def _recorded_digests(self, path: Path, entry: PartitionEntry) -> bytes:
        """The digests the device recorded at its last commit of ``path``, when that was an
        image of ``entry``'s size and block size and the file is unchanged since; else b""."""
        record = self._records.load(path, entry.block_size)
        if record is None or record[0] != entry.size or \
                len(record[1]) != 32 * entry.block_count:
            return b""
        return record[1]

    def commit_partition(self, part_index: int) -> str:
        """All blocks present -> zero blocks filled where flash is not already zero, sync,
        commit. Nothing is re-read: every block was checked against the signed table when it
        arrived (or when it was kept), and the table binds the image (zpk.md), so the image
        hash is the manifest's."""
        part = self._part(part_index, start=False)
        if self.session is not None and self.session.unchanged:
            return self._commit_unchanged(self.session, part)
        session = self._session()
        entry = part.entry
        name = entry.name
        if part.committed:
            # committed before a power loss or a lost link: the commit stands (the staged
            # file of an unslotted partition is already live); doing it again would replace
            # the live data with an empty staging file
            return entry.sha256
        table = session.head.tables[name]
        # a zero block the device's own record of this file says is zero is not read again
        recorded = self._recorded_digests(part.path, entry) if entry.slotted else b""
        self._changing(part.path)  # zero blocks may be written; the record is saved anew
        to_fill = blockmap.without(blockmap.of_kind(table.kinds(), KIND_ZERO), part.verified)
        for done, index in enumerate(blockmap.members(to_fill)):
            offset, length = index * entry.block_size, block_length(entry, index)
            if recorded[index * 32:index * 32 + 32] != zero_digest(length) and \
                    not is_zero(part.fd, offset, length):
                os.pwrite(part.fd, bytes(length), offset)
            part.verified[index] = 1
            if done % ALIVE_EVERY_BLOCKS == 0:
                self._alive()
        missing = part.verified.count(0)
        if missing:
            raise ZflashError(Code.PROTOCOL, f"{name}: {missing} blocks not written yet")
        session.sync()
        self._hashes.forget(part.path)
        self._step("commit")
        record = {"sha256": entry.sha256, "size": entry.size}
        if entry.slotted:
            self._records.save(part.path, entry.block_size, entry.size,
                               session.digests(name))
            self.meta["committed"][session.target][name] = record
        else:
            live = self.storage.partition_path(name, None)
            os.fsync(part.fd)
            os.replace(part.path, live)
            self._hashes.forget(live)
            self.meta["committed"][""][name] = record
        part.committed = True
        self.storage.save_meta()
        session.sync()
        return entry.sha256

    def _commit_unchanged(self, session: UpdateSession, part: _Partition) -> str:
        """COMMIT in an unchanged update: the zero blocks are zero on flash (the record
        equals the table), and the device's meta already records this very commit for the
        target slot, so nothing is written; the power-loss step is where it always is."""
        entry = part.entry
        if part.committed:
            return entry.sha256
        zeros = blockmap.of_kind(session.head.tables[entry.name].kinds(), KIND_ZERO)
        part.verified[:] = blockmap.union(part.verified, zeros)
        missing = part.verified.count(0)
        if missing:
            raise ZflashError(Code.PROTOCOL, f"{entry.name}: {missing} blocks not written yet")
        self._step("commit")
        part.committed = True
        return entry.sha256

    # ------------------------------------------------------------------ slots and boot
    def set_active(self, slot: str) -> None:
        if slot not in SLOTS:
            raise ZflashError(Code.SLOT, f"no slot {slot!r}; slots are {', '.join(SLOTS)}")
        session = self.session
        if session is not None and session.target == slot:
            pending = [p.entry.name for p in session.parts if not p.committed]
            if pending:
                raise ZflashError(Code.SLOT, f"slot {slot}: partitions not committed: "
                                             f"{', '.join(pending)}")
            manifest = session.head.manifest
            if not session.unchanged:  # unchanged: every slotted partition is carried
                self._complete_slot(session)
            # kept before the meta names it, so a named build's head is never missing
            self.storage.store_head(session.digest, session.head_bytes)
            self.meta["pending_rollback"][slot] = {str(manifest.rollback_location):
                                                   manifest.rollback_index}
            self.meta.setdefault("builds", {})[slot] = {"version": manifest.version,
                                                        "package": session.head.digest}
        elif not self.meta["slots"][slot]["successful"] and not self.meta["committed"][slot]:
            raise ZflashError(Code.SLOT, f"slot {slot} holds no complete build")
        self._step("set-active")
        for other in SLOTS:
            if other != slot:
                state = self.meta["slots"][other]
                state["priority"] = min(state["priority"], 14)
        state = self.meta["slots"][slot]
        state["priority"] = 15
        if slot != self.meta["current_slot"]:  # boot_control: a newly active slot must prove itself
            state["successful"] = False
            state["tries_left"] = SET_ACTIVE_TRIES
        self.storage.save_meta()
        if session is not None and session.target == slot:
            session.close()
            self.session = None
            self.storage.clear_staging()
            self.storage.prune_heads({build.get("package") for build in
                                      self.meta.get("builds", {}).values()})

    def _complete_slot(self, session: UpdateSession) -> None:
        """Copy every slotted partition the package does not carry from the running slot
        into the target (update_engine's rule for partial updates), so the new slot holds
        one consistent build, never this package's boot beside an older build's vendor.

        Streamed one chunk at a time, holes skipped, with keep-alives; each copy is
        recorded as committed with the running slot's record (or, when the running slot has
        none, the hash of what was copied). Idempotent: a power loss mid-copy leaves the
        target unbootable, and the rerun copies again."""
        target = session.target
        running = self.meta["current_slot"]
        carried = {p.entry.name for p in session.parts}
        if target is None or target == running:
            return
        copied = False
        for spec in self.storage.profile.partitions:
            if not spec.slotted or spec.name in carried:
                continue
            if spec.name in self.meta["committed"][target] and \
                    self.meta["committed"][target][spec.name].get("copied_from") == running:
                continue  # copied before an interruption, recorded after its fsync
            source = self.storage.partition_path(spec.name, running)
            dest = self.storage.partition_path(spec.name, target)
            self._changing(dest)
            src_fd = os.open(source, os.O_RDONLY)
            try:
                dst_fd = os.open(dest, os.O_RDWR | os.O_TRUNC)
                try:
                    os.ftruncate(dst_fd, spec.size)
                    copy_data(src_fd, dst_fd, spec.size, READ_CHUNK, self._alive)
                    os.fsync(dst_fd)
                finally:
                    os.close(dst_fd)
            finally:
                os.close(src_fd)
            record = dict(self.meta["committed"][running].get(spec.name) or
                          {"sha256": file_sha256(dest, spec.size), "size": spec.size})
            record["copied_from"] = running
            self.meta["committed"][target][spec.name] = record
            copied = True
        if copied:
            self.storage.save_meta()

    def try_enter(self, who: str, alive: Callable[[], bool] | None = None) -> bool:
        """Start a host session if no other host is in one (``who`` names it, ``alive``
        says whether its link still works). A holder whose link is gone (a replug before its
        server noticed) is waited for, up to SESSION_GRACE s; a live one is refused at once."""
        if not self.lock.acquire(blocking=False):
            holder_alive = self._holder_alive
            live = holder_alive is None or holder_alive()
            # a live holder may be a host that has just closed its link (its server has not
            # read the EOF yet): a short hand-over wait, so `zflash info && zflash fastboot
            # ...` in a script does not meet "busy"
            if not self.lock.acquire(timeout=HANDOVER if live else SESSION_GRACE):
                return False
        self.holder, self._holder_alive = who, alive
        return True

    def leave(self) -> None:
        """End the session `try_enter` started."""
        self.holder, self._holder_alive = None, None
        self.lock.release()

    def busy_reason(self) -> str:
        """What a refused host is told."""
        return (f"device busy: another host ({self.holder or 'unknown link'}) is in a session "
                "with it; retry when that session ends")

    def host_left(self) -> None:
        """The host disconnected: make the journal durable; the session resumes later."""
        if self.session is not None:
            self.session.sync()
            self.session.close()
            self.session = None

    def reboot(self, force_boot_failure: bool = False) -> dict[str, Any]:
        """Simulate the bootloader: boot the best slot, retry, fall back (A/B rules)."""
        self.host_left()
        fail_slot: str | None = None
        if force_boot_failure or self.fail_next_boot:
            fail_slot = self._active_slot()
            self.fail_next_boot = False
        attempts: list[dict[str, Any]] = []
        for _ in range(2 * (SET_ACTIVE_TRIES + 1)):
            candidates = [s for s in SLOTS if _bootable(self.meta["slots"][s])]
            if not candidates:
                break
            slot = max(candidates, key=lambda s: self.meta["slots"][s]["priority"])
            state = self.meta["slots"][slot]
            if not state["successful"]:
                state["tries_left"] -= 1
            problem = "forced boot failure" if slot == fail_slot else self._verify_slot(slot)
            attempts.append({"slot": slot, "ok": problem is None, "problem": problem})
            if problem is None:
                self._boot_succeeded(slot)  # saved below, with last_boot: one meta write
                break
            if not state["successful"] and state["tries_left"] <= 0:
                state["priority"] = 0
            self.storage.save_meta()
        booted = self.meta["current_slot"] if attempts and attempts[-1]["ok"] else None
        wanted = attempts[0]["slot"] if attempts else None
        result = {"booted_slot": booted, "attempts": attempts,
                  "fell_back": booted is not None and booted != wanted,
                  "rollback_indexes": dict(self.meta["rollback"])}
        self.meta["last_boot"] = result
        self.storage.save_meta()
        return result

    def _verify_slot(self, slot: str) -> str | None:
        for name, record in self.meta["committed"][slot].items():
            path = self.storage.partition_path(name, slot)
            if record.get("copied_from") is None and self._records.holds(path, record["size"]):
                continue  # committed block by block and untouched since (D27)
            if record.get("sha256") is None:
                # written by fastboot: nothing to hold it to, so the first boot records what
                # it found, and later boots check that it has not changed
                record["sha256"] = file_sha256(path, record["size"])
                continue
            if file_sha256(path, record["size"]) != record["sha256"]:
                return f"{name}_{slot} does not match the hash recorded at commit"
        return None

    def _boot_succeeded(self, slot: str) -> None:
        """The OS marks the slot successful; only now may rollback indexes rise (AVB).
        The caller saves the meta (one write with the boot's outcome)."""
        state = self.meta["slots"][slot]
        state["successful"] = True
        state["tries_left"] = 0
        self.meta["current_slot"] = slot
        for location, index in self.meta["pending_rollback"][slot].items():
            stored = self.meta["rollback"].get(location, 0)
            self.meta["rollback"][location] = max(stored, index)
        self.meta["pending_rollback"][slot] = {}

    # ------------------------------------------------------------------ raw access
    def block_hashes(self, name: str, slot: str | None, first: int, count: int,
                     block_size: int) -> list[bytes]:
        """SHA-256 of each block on flash; holes and all-zero blocks get the zero digest
        without hashing. Remembered for KEEP_BLOCKS while the file is unchanged."""
        spec = self.storage.spec(name)
        blocks = -(-spec.size // block_size) if block_size > 0 else 0
        if block_size <= 0 or block_size > (1 << 24) or count < 1 or first + count > blocks:
            raise ZflashError(Code.PROTOCOL, f"block hash request {first}+{count} outside "
                                             f"{name} ({blocks} blocks of {block_size})")
        path = self.storage.partition_path(name, slot)
        known = self._hashes.get(path, block_size)
        # the recorded prefix in bulk: slices of the record, no per-block work but the slice
        # (and not copied into ``known``: KEEP_BLOCKS reads the same record)
        digests = self._whole_block_record(path, block_size)
        upto = max(first, min(first + count, len(digests) // 32))
        hashes = [digests[i:i + 32] for i in range(first * 32, upto * 32, 32)]
        fd = os.open(path, os.O_RDONLY)
        try:
            for index in range(upto, first + count):
                offset = index * block_size
                if has_no_data(fd, offset, block_size):
                    digest = zero_digest(block_size)
                else:
                    data = os.pread(fd, block_size, offset)
                    digest = zero_digest(block_size) if is_zero_bytes(data) and \
                        len(data) == block_size else hashlib.sha256(data).digest()
                known[index] = digest
                hashes.append(digest)
                if index % ALIVE_EVERY_BLOCKS == 0:
                    self._alive()
        finally:
            os.close(fd)
        return hashes

    def read(self, name: str, slot: str | None, offset: int, length: int) -> Iterator[bytes]:
        spec = self.storage.spec(name)
        if offset < 0 or length < 0 or offset + length > spec.size:
            raise ZflashError(Code.PROTOCOL, f"read of {name} outside 0..{spec.size}")
        with open(self.storage.partition_path(name, slot), "rb") as handle:
            handle.seek(offset)
            remaining = length
            while remaining:
                chunk = handle.read(min(READ_CHUNK, remaining))
                remaining -= len(chunk)
                yield chunk

    def erase(self, name: str, slot: str | None, allow_userdata: bool = False) -> None:
        spec = self.storage.spec(name)
        if name == "userdata" and not allow_userdata:
            raise ZflashError(Code.DEVICE_REFUSED, "user data is erased only when asked for "
                                                   "by name (--wipe-userdata)")
        if spec.slotted and slot == self.meta["current_slot"]:
            raise ZflashError(Code.SLOT, f"refusing to erase {name} on the running slot")
        path = self.storage.partition_path(name, slot)
        self._changing(path)
        with open(path, "r+b") as handle:
            handle.truncate(0)
            handle.truncate(spec.size)
            os.fsync(handle.fileno())

    # ------------------------------------------------------------------ fastboot (issue 5)
    # Used by emulator/fastboot_server.py. A device in fastboot mode runs no slot, so these
    # write whichever slot the host names (the stock client flashes the current slot).
    def write_image(self, name: str, slot: str | None, source: BinaryIO, size: int,
                    sparse: bool) -> None:
        """fastboot flash: a raw or sparse image into a partition (slot), zeros after it.

        Sparse DONT_CARE blocks keep what is on flash, so split pieces add up to the image;
        larger than the partition -> 9023 before writing. Then call ``record_image_hash``.
        """
        spec = self.storage.spec(name)
        path = self.storage.partition_path(name, slot)
        self._changing(path)
        image_write.write_image(path, spec.size, source, size, sparse)

    def erase_image(self, name: str, slot: str | None) -> None:
        """fastboot erase: zeros (the host named the partition, userdata included)."""
        spec = self.storage.spec(name)
        self._changing(self.storage.partition_path(name, slot))
        image_write.erase(self.storage.partition_path(name, slot), spec.size)

    def record_image_hash(self, name: str, slot: str | None) -> None:
        """Record fastboot-written content as committed, so the boot simulation accepts it.

        Fastboot carries no expected hash, so there is nothing to check the content
        against: the record says so (``sha256`` None) instead of hashing the whole partition
        after every piece; the first boot records the hash of what it boots."""
        spec = self.storage.spec(name)
        self.meta["committed"][slot if spec.slotted else ""][name] = {
            "sha256": None, "size": spec.size, "by": "fastboot"}
        if spec.slotted:
            self.meta.setdefault("builds", {}).pop(slot, None)  # no package names it now
        self.storage.save_meta()


def _bootable(state: dict[str, Any]) -> bool:
    return state["priority"] > 0 and (state["successful"] or state["tries_left"] > 0)


def file_sha256(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        remaining = size
        while remaining:
            chunk = handle.read(min(1 << 20, remaining))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()
