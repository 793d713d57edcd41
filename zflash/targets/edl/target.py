"""The Qualcomm EDL back-end: a :class:`~zflash.targets.base.Target` over Sahara + Firehose.

connect: Sahara command mode reads the serial, MSM HW id and OEM key hash, then waits at
the upload HELLO. identify: uploads the programmer (``--programmer FILE`` or the package's),
configures Firehose, reads storage info, every LUN's GPT and the running slot's vbmeta.
Everything the pipeline checks is read before a sector is written.

What EDL cannot do is declared: the device enforces no package rule (host checks cannot be
skipped), keeps no staging cache (an unslotted partition is written in place), cannot
resume by itself (the delta probe does it: blocks already in the inactive slot hash equal
and are kept), and does not say which slot booted (it leaves EDL on reset).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable, Container, Iterator, Sequence

from zflash.checks import Failure
from zflash.disk import avb
from zflash.disk.gpt import UFS_BOOT_LUN_PARTITIONS, encode, read_gpt, slot_pairs, switch_slot
from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.package.format import KIND_ZERO, Manifest, PartitionEntry, block_length
from zflash.package.reader import Package, decode_block
from zflash.protocol.firehose import QUIET_PERIOD, storage_info
from zflash.targets.base import (BootReport, Capabilities, Emit, Identity, LinkOptions, Progress,
                                 Target, UpdateStart, Verification, Written)
from zflash.targets.blocks import PartitionBlocks
from zflash.targets.edl.firehose_io import FirehoseSession
from zflash.targets.edl.layout import DiskLayout, Place
from zflash.targets.edl.sahara_io import SaharaIds, SaharaSession
from zflash.transport.base import Transport
from zflash.transport.open import open_transport

MEMORIES = ("ufs", "emmc")  # tried in this order; a programmer NAKs the one it does not drive
MAX_LUNS = 8
MAX_LUN_BYTES = 1 << 50  # 1 PiB: a LUN claiming more is a lie (the largest UFS is ~1 TB)
COPY_BYTES = 1 << 20  # one <read> / <program> pair when completing a slot
NOP_WAIT = 2.0  # seconds a running programmer has to answer the <nop/> probe
REENUMERATE_WAIT = 15.0  # seconds a device reset to EDL has to leave and come back
OFF_BUS_POLL = 0.1


class EdlTarget(Target):
    protocol = "edl"
    capabilities = Capabilities(block_hashes=True, verifies_on_device=True, read=True,
                                erase=True, set_active=True, reboot=True)

    def __init__(self, url: str, transport: Transport, options: LinkOptions | None = None,
                 emit: Emit | None = None) -> None:
        super().__init__(url, emit)
        self.transport = transport
        self.options = options or LinkOptions()
        self.sahara = SaharaSession(transport, self.options.timeout)
        self.ids = SaharaIds(None, None, None, None)
        self.firehose: FirehoseSession | None = None
        self.layout: DiskLayout | None = None
        self.lun_sectors: list[int] = []
        self.memory = ""
        self.sector_size = 0
        self._package: Package | None = None
        self._slot: str | None = None
        self._hash_request: tuple[PartitionEntry, str | None, int, int] | None = None
        self.gpt_errors: list[str] = []  # why a LUN's GPT could not be read

    # ------------------------------------------------------------ connecting
    def connect(self) -> None:
        self.ids = self.sahara.read_ids()
        if self.sahara.silent or self.sahara.firehose_running:
            self._restart_in_edl()
        self.emit({"event": "connected", "url": self.url, "protocol": self.protocol,
                   "max_data": 0, "window": 1, "codecs": [], "baud": None})

    def close(self) -> None:
        self.transport.close()

    def _restart_in_edl(self) -> None:
        """A programmer an earlier session loaded still runs (it sends no HELLO): reset the
        device to EDL, so the boot ROM starts over and Sahara reads the fused ids the checks
        need (D212). A device that answers neither Sahara nor Firehose needs a replug."""
        if self.sahara.firehose_running:
            # what it sent unasked (start-up logs, or on a stream its NAK to the HELLO_RESP
            # the host spoke first with) belongs to no command: dropped, until it is quiet
            self.sahara.engine.take_unparsed()
            self._discard_until_quiet()
        fh = FirehoseSession(self.transport, self.options.timeout)
        try:
            fh.run(fh.engine.nop(), timeout=NOP_WAIT)  # an ACK or a NAK: a programmer runs
        except ZflashError as exc:
            if exc.code not in (Code.TIMEOUT, Code.PROTOCOL):
                raise
            raise ZflashError(Code.TIMEOUT, f"{self.url}: the device sends no Sahara HELLO and "
                                            f"no Firehose programmer answers <nop/> ({exc.detail})",
                              cause="edl_silent") from None
        self.emit({"event": "device_message", "kind": "info",
                   "message": "a Firehose programmer from an earlier session is still running: "
                              "resetting the device to EDL to read its fused ids"})
        if not fh.run(fh.engine.power("edl")).ack:
            self.sahara.firehose_running = True  # it will not reset: go on with ids unknown
            return
        self._wait_off_bus()
        self.transport.close()
        self.transport = open_transport(self.url, timeout=max(self.options.timeout,
                                                              REENUMERATE_WAIT))
        self.sahara = SaharaSession(self.transport, self.options.timeout)
        self.ids = self.sahara.read_ids()
        if self.sahara.silent:
            raise ZflashError(Code.TIMEOUT, f"{self.url}: no Sahara HELLO after the reset to "
                                            "EDL", cause="edl_silent")

    def _discard_until_quiet(self) -> None:
        self._drain_until(Code.TIMEOUT, QUIET_PERIOD)

    def _wait_off_bus(self) -> None:
        """Until the device that acknowledged the reset leaves (opening the URL before
        would find it still there, about to vanish); late logs are read and dropped."""
        if not self._drain_until(Code.LINK_LOST, OFF_BUS_POLL):
            raise ZflashError(Code.TIMEOUT, f"{self.url}: the programmer acknowledged the reset "
                                            f"to EDL but the device stayed for "
                                            f"{REENUMERATE_WAIT:g} s", cause="edl_silent")

    def _drain_until(self, until: Code, poll: float) -> bool:
        """Read and drop what arrives until a read fails with ``until`` (True), for at most
        REENUMERATE_WAIT (False); a read timeout while waiting for something else polls on."""
        deadline = time.monotonic() + REENUMERATE_WAIT
        while time.monotonic() < deadline:
            try:
                self.transport.read(1 << 16, poll)
            except ZflashError as exc:
                if exc.code == until:
                    return True
                if exc.code != Code.TIMEOUT:
                    raise
        return False

    def _programmer(self, manifest: Manifest | None) -> bytes:
        if self.options.programmer:
            try:
                return Path(self.options.programmer).read_bytes()
            except OSError as exc:
                raise ZflashError(Code.FILE_UNREADABLE,
                                  f"{self.options.programmer}: {exc.strerror}") from None
        if manifest is not None and manifest.edl and manifest.edl.programmer:
            return manifest.edl.programmer.data
        raise ZflashError(Code.USAGE, "an EDL device needs a Firehose programmer: pass "
                                      "--programmer FILE, or flash a package that carries one")

    def _start_firehose(self, manifest: Manifest | None) -> FirehoseSession:
        if self.firehose is not None:
            return self.firehose
        early = self.sahara.upload(self._programmer(manifest))
        fh = FirehoseSession(self.transport, self.options.timeout, early)
        fh.drain()
        for memory in MEMORIES:
            result = fh.run(fh.engine.configure(memory))
            if result.ack and fh.engine.reconfigure:
                result = fh.run(fh.engine.configure(memory))
            if result.ack:
                self.memory = memory
                break
            if not any("MemoryName" in log for log in result.logs):
                raise result.error()
        else:
            raise ZflashError(Code.DEVICE_REFUSED, "the programmer drives neither UFS nor eMMC")
        self.firehose = fh
        self.emit({"event": "device_message", "kind": "info",
                   "message": f"Firehose: {self.memory}, payload "
                              f"{fh.engine.payload_to_target} bytes"})
        return fh

    # ------------------------------------------------------------ identity
    def _read_layout(self, fh: FirehoseSession) -> DiskLayout:
        info = storage_info(fh.command("getstorageinfo", {"physical_partition_number": 0})
                            .check())
        sector = _int(info, "block_size") or _int(info, "SECTOR_SIZE_IN_BYTES")
        luns = _int(info, "num_physical") or _int(info, "num_physical_partitions") or 1
        if sector not in (512, 4096) or not 0 < luns <= MAX_LUNS:
            raise ZflashError(Code.PROTOCOL, f"getstorageinfo: sector size {sector}, "
                                             f"{luns} LUNs")
        self.sector_size = sector
        self.lun_sectors, tables = [], []
        for lun in range(luns):
            lun_info = info if lun == 0 else storage_info(fh.command(
                "getstorageinfo", {"physical_partition_number": lun}).check())
            total = _int(lun_info, "total_blocks")
            if not total:
                raise ZflashError(Code.PROTOCOL, f"getstorageinfo of LUN {lun}: no total_blocks")
            if total < 0 or total * sector > MAX_LUN_BYTES:
                raise ZflashError(Code.PROTOCOL, f"getstorageinfo of LUN {lun}: {total} blocks "
                                                 f"of {sector} bytes is not a real disk")
            self.lun_sectors.append(total)
            try:
                tables.append(read_gpt(lambda first, n, lun=lun: self._read(lun, first, n),
                                       total, sector))
            except ZflashError as exc:
                if exc.code != Code.BAD_GPT:
                    raise
                self.gpt_errors.append(f"LUN {lun}: {exc.detail}")
                tables.append(None)
        return DiskLayout(sector, tuple(tables))

    def _read(self, lun: int, first: int, count: int) -> bytes:
        fh = self.firehose
        assert fh is not None
        out = bytearray()
        fh.run(fh.engine.read(lun, first, count, self.sector_size), sink=out.extend).check()
        return bytes(out)

    def identify(self, manifest: Manifest | None = None) -> Identity:
        fh = self._start_firehose(manifest)
        if self.layout is None:
            self.layout = self._read_layout(fh)
        layout = self.layout
        if manifest is not None and all(table is None for table in layout.tables):
            # nothing to write into: say so, rather than every partition and fact missing
            raise ZflashError(Code.BAD_GPT, "no LUN has a valid GPT: "
                                            + "; ".join(self.gpt_errors))
        unreported: dict[str, str] = {}
        slots, current = layout.slots()
        edl = manifest.edl if manifest else None
        product = hw_rev = f"msm-{self.ids.hw_id or 'unknown'}"
        if manifest is not None:
            if edl is None:
                unreported["product"] = unreported["hardware_revision"] = \
                    "a manifest edl.hw_ids"
            elif self.ids.hw_id is None or self.ids.oem_key_hash is None:
                unreported["product"] = unreported["hardware_revision"] = \
                    "Sahara (a programmer was already running) MSM_HW_ID_READ"
            else:
                # The fused ids the boot ROM proves are the identity; constraints() refuses
                # a device they do not match (9040).
                product, hw_rev = manifest.product, manifest.hardware_revisions[0]
        baseband = ""
        if edl is not None and edl.baseband is not None:
            baseband = self._baseband(edl.baseband, current)
        elif manifest is not None:
            unreported["baseband"] = "a manifest edl.baseband"
        rollback: dict[int, int] = {}
        location = manifest.rollback_location if manifest else 0
        vbmeta = layout.target("vbmeta", current) if current else layout.place("vbmeta")
        if vbmeta is not None:
            try:
                header = avb.parse_vbmeta(self._read(vbmeta.lun, vbmeta.first_lba,
                                                     -(-avb.HEADER_SIZE // layout.sector_size)))
                rollback[header.rollback_index_location] = header.rollback_index
            except ZflashError as exc:
                if exc.code != Code.MALFORMED_IMAGE:
                    raise
        if location not in rollback:
            unreported[f"rollback_index:{location}"] = "the running slot's vbmeta"
        if slots:
            unreported["slot_builds"] = "EDL (the GPT records no build per slot)"
        facts = DeviceFacts(
            product=product, hardware_revision=hw_rev, baseband=baseband,
            serial=self.ids.serial or "", protocol_version=self.ids.version or 0,
            flash_size=sum(self.lun_sectors) * layout.sector_size, cache_size=0, cache_free=0,
            partitions=layout.partitions(), slots=slots, current_slot=current,
            rollback_indexes=rollback)
        extra = {"msm_hw_id": self.ids.hw_id, "oem_key_hash": self.ids.oem_key_hash,
                 "memory": self.memory, "sector_size": layout.sector_size,
                 "luns": len(self.lun_sectors),
                 "damaged_gpt": [lun for lun, g in enumerate(layout.tables)
                                 if g is None or g.damaged]}
        return Identity(facts, unreported, extra)

    def _baseband(self, where: object, slot: str | None) -> str:
        from zflash.package.edlspec import BasebandSource
        assert isinstance(where, BasebandSource) and self.layout is not None
        place = self.layout.target(where.partition, slot) or self.layout.place(where.partition)
        if place is None:
            return ""
        size = self.layout.sector_size
        first = where.offset // size
        count = -(-(where.offset % size + where.length) // size)
        if first + count > place.sectors:
            return ""
        data = self._read(place.lun, place.first_lba + first, count)
        raw = data[where.offset % size:where.offset % size + where.length]
        return raw.split(b"\0", 1)[0].decode("ascii", "replace")

    def constraints(self, manifest: Manifest, identity: Identity) -> list[Failure]:
        """The hardware match (9040): the fused MSM HW id and OEM key hash must be ones the
        manifest's ``edl`` object allows."""
        edl = manifest.edl
        if edl is None or self.ids.hw_id is None or self.ids.oem_key_hash is None:
            return []
        hw_ok, key_ok = edl.allows(self.ids.hw_id, self.ids.oem_key_hash)
        failures = []
        if not hw_ok:
            failures.append(Failure(Code.COMPATIBILITY, "hardware_revision", (
                f"device MSM HW id {self.ids.hw_id} is not among {list(edl.hw_ids)}")))
        if not key_ok:
            failures.append(Failure(Code.COMPATIBILITY, "hardware_revision", (
                f"device OEM key hash {self.ids.oem_key_hash[:16]}... is not one the package "
                "allows")))
        return failures

    # ------------------------------------------------------------ delta
    def _place(self, part: PartitionEntry, slot: str | None) -> Place:
        assert self.layout is not None
        place = self.layout.target(part.name, slot if part.slotted else None)
        if place is None:
            raise ZflashError(Code.NO_SUCH_PARTITION, f"the GPT has no partition "
                                                      f"{part.name}{'_' + slot if slot else ''}")
        return place

    def _digest(self, lun: int, first: int, count: int) -> bytes:
        fh = self.firehose
        assert fh is not None and self.layout is not None
        result = fh.run(fh.engine.getsha256digest(lun, first, count, self.layout.sector_size))
        digest = result.check().digest()
        if digest is None:
            raise ZflashError(Code.PROTOCOL, "getsha256digest answered without a digest")
        return digest

    def start_block_hashes(self, part: PartitionEntry, slot: str | None, first: int,
                           count: int) -> None:
        self._hash_request = (part, slot, first, count)

    def finish_block_hashes(self) -> list[bytes]:
        """One getsha256digest per block (whole blocks of flash, clipped to the partition)."""
        assert self._hash_request is not None and self.layout is not None
        part, slot, first, count = self._hash_request
        self._hash_request = None
        place = self._place(part, slot)
        per = part.block_size // self.layout.sector_size
        digests = []
        for block in range(first, first + count):
            start = block * per
            if start >= place.sectors:
                break
            digests.append(self._digest(place.lun, place.first_lba + start,
                                        min(per, place.sectors - start)))
        return digests

    def keep(self, index: int, part: PartitionEntry, blocks: list[int]) -> set[int]:
        """Blocks already where they go (partitions are written in place). A whole block
        matched by hash already; a short last block is checked exactly here, over its
        sectors against the package's block padded with zeros."""
        assert self.layout is not None and self._package is not None
        kept = set()
        size = self.layout.sector_size
        for block in blocks:
            length = block_length(part, block)
            if length == part.block_size:
                kept.add(block)
                continue
            place = self._place(part, self._slot)
            entry = self._package.head.tables[part.name][block]
            raw = decode_block(part, block, entry, self._package.read_stored(part, block))
            padded = bytes(raw) + bytes(-length % size)
            first = place.first_lba + block * (part.block_size // size)
            if self._digest(place.lun, first, len(padded) // size) == \
                    hashlib.sha256(padded).digest():
                kept.add(block)
        return kept

    # ------------------------------------------------------------ update
    def begin(self, package: Package, identity: Identity) -> UpdateStart:
        self._package = package
        slotted = any(p.slotted for p in package.manifest.partitions)
        self._slot = identity.facts.inactive_slot if slotted else None
        return UpdateStart(self._slot)

    def write_partition(self, blocks: PartitionBlocks, index: int, slot: str | None,
                        skip: set[int], progress: Progress) -> Written:
        """Runs of blocks go out as one ``<program>`` each; zero runs become ``<erase>``
        when the programmer offers it; blocks in ``skip`` are left alone."""
        fh = self.firehose
        assert fh is not None and self.layout is not None
        part = blocks.part
        place = self._place(part, slot)
        size = self.layout.sector_size
        per = part.block_size // size
        erase = "erase" in " ".join(fh.logs)
        table = blocks.table
        sent = pieces = 0
        for kind, first, count in _runs(table, skip, erase):
            image = sum(block_length(part, b) for b in range(first, first + count))
            sectors = -(-image // size)
            start = place.first_lba + first * per
            before = fh.sent
            if kind == "zero":
                fh.run(fh.engine.erase(place.lun, size, start, sectors)).check()
            else:
                # a change seen here ends the job between commands, with the programmer
                # idle; seen by _chunks, it ends it in the middle of a <program> (D211)
                blocks.ensure_unchanged()
                chunks = _chunks(blocks, first, count, size, fh.engine.payload_to_target)
                fh.run(fh.engine.program(place.lun, start, sectors, size),
                       data=chunks).check()
                sent += sectors * size
            pieces += 1
            progress(image, fh.sent - before)
        return Written(sent, pieces)

    def verify_partition(self, index: int, part: PartitionEntry,
                         slot: str | None) -> Verification:
        assert self.layout is not None
        place = self._place(part, slot)
        size = self.layout.sector_size
        digest = self._digest(place.lun, place.first_lba, -(-part.size // size))
        expected = bytes.fromhex(part.sha256) if part.size % size == 0 else None
        if expected is None:  # the device hashes whole sectors: the image zero-padded
            assert self._package is not None
            hasher = hashlib.sha256()
            for _, raw in self._package.iter_blocks(part):
                hasher.update(raw)
            hasher.update(bytes(-part.size % size))
            expected = hasher.digest()
        if digest != expected:
            raise ZflashError(Code.READBACK_MISMATCH, f"{part.name}: the device holds "
                                                      f"{digest.hex()[:16]}..., expected "
                                                      f"{expected.hex()[:16]}...")
        return Verification("device", part.sha256)

    def _complete_slot(self, slot: str) -> None:
        """Copy every slotted partition the package does not carry from the running slot
        into ``slot`` (update_engine's rule for partial updates), by Firehose ``<read>`` and
        ``<program>`` of COPY_BYTES at a time, then compare both by digest: the new slot
        never mixes this build with an older one (DECISIONS.md D131)."""
        assert self.layout is not None and self._package is not None
        _, running = self.layout.slots()
        if running is None or running == slot:
            return
        fh = self.firehose
        assert fh is not None
        carried = {p.name for p in self._package.manifest.partitions if p.slotted}
        size = self.layout.sector_size
        step = max(1, COPY_BYTES // size)
        for info in self.layout.partitions():
            if not info.slotted or info.name in carried:
                continue
            source = self.layout.target(info.name, running)
            dest = self.layout.target(info.name, slot)
            if source is None or dest is None:
                continue
            count = min(source.sectors, dest.sectors)
            for lba in range(0, count, step):
                n = min(step, count - lba)
                data = self._read(source.lun, source.first_lba + lba, n)
                fh.run(fh.engine.program(dest.lun, dest.first_lba + lba, n, size),
                       data=_split(data, fh.engine.payload_to_target)).check()
            if self._digest(source.lun, source.first_lba, count) != \
                    self._digest(dest.lun, dest.first_lba, count):
                raise ZflashError(Code.READBACK_MISMATCH, f"{info.name}_{slot} did not read "
                                                          f"back as copied from {running}")
            self.emit({"event": "partition_copied", "partition": info.name,
                       "from_slot": running, "to_slot": slot, "bytes": count * size})

    def set_active(self, slot: str) -> None:
        """bootctrl's switch in every LUN with A/B pairs: both GPT copies rewritten with
        fresh CRCs, then read back by digest; then the boot LUN where the layout has one."""
        if self._package is not None:
            self._complete_slot(slot)
        fh = self.firehose
        assert fh is not None and self.layout is not None
        skip = UFS_BOOT_LUN_PARTITIONS if self.memory == "ufs" else ()
        size = self.layout.sector_size
        tables = list(self.layout.tables)
        for lun, gpt in enumerate(tables):
            if gpt is None or not slot_pairs(gpt, skip):
                continue
            new = switch_slot(gpt, slot, skip)
            head, tail = encode(new)
            for first, data in ((1, head[size:]), (new.backup_entries_lba, tail)):
                fh.run(fh.engine.program(lun, first, len(data) // size, size),
                       data=_split(data, fh.engine.payload_to_target)).check()
                if self._digest(lun, first, len(data) // size) != hashlib.sha256(data).digest():
                    raise ZflashError(Code.READBACK_MISMATCH, f"GPT of LUN {lun} did not read "
                                                              "back as written")
            tables[lun] = new
        self.layout = DiskLayout(size, tuple(tables))
        boot = self.layout.boot_lun(slot)
        if boot is not None:
            fh.command("setbootablestoragedrive", {"value": boot}).check()

    def reboot(self, force_boot_failure: bool = False) -> BootReport:
        if force_boot_failure:
            raise self.unsupported("forcing a boot failure")
        fh = self.firehose
        if fh is None:
            raise self.unsupported("rebooting before the programmer runs")
        try:
            fh.run(fh.engine.power("reset")).check()
        except ZflashError as exc:
            if exc.code != Code.LINK_LOST:
                raise  # a device that resets before its ACK arrives has still reset
        return BootReport(True)

    def read(self, partition: str, slot: str | None, offset: int, length: int,
             sink: Callable[[bytes], None]) -> None:
        self.identify()
        assert self.layout is not None
        place = self.layout.target(partition, slot)
        if place is None:
            raise ZflashError(Code.NO_SUCH_PARTITION, f"no partition {partition!r}")
        size = self.layout.sector_size
        first, end = offset // size, -(-(offset + length) // size)
        step = max(1, (1 << 20) // size)
        for lba in range(first, end, step):
            data = self._read(place.lun, place.first_lba + lba, min(step, end - lba))
            lo = max(offset - lba * size, 0)
            hi = min(offset + length - lba * size, len(data))
            sink(data[lo:hi])

    def erase(self, partition: str, slot: str | None) -> None:
        fh = self.firehose
        assert fh is not None and self.layout is not None
        place = self.layout.target(partition, slot)
        if place is None:
            raise ZflashError(Code.NO_SUCH_PARTITION, f"no partition {partition!r}")
        fh.run(fh.engine.erase(place.lun, self.layout.sector_size, place.first_lba,
                               place.sectors)).check()

    def stats(self) -> dict[str, int]:
        sent = self.sahara.sent + (self.firehose.sent if self.firehose else 0)
        return {"bytes_sent": sent, "retransmissions": 0}


def _int(info: dict[str, object], key: str) -> int:
    value = info.get(key)
    try:
        return int(str(value), 0) if value is not None else 0
    except ValueError:
        return 0


def _runs(table: Sequence, skip: Container[int], erase: bool) -> Iterator[tuple[str, int, int]]:
    """(kind, first block, count): "data" runs to program, "zero" runs to erase."""
    run: list = []
    for block, entry in enumerate(table):
        if block in skip:
            kind = None
        elif entry.kind == KIND_ZERO and erase:
            kind = "zero"
        else:
            kind = "data"
        if run and (kind != run[0] or block != run[1] + run[2]):
            yield run[0], run[1], run[2]
            run = []
        if kind is not None:
            if run:
                run[2] += 1
            else:
                run = [kind, block, 1]
    if run:
        yield run[0], run[1], run[2]


def _chunks(blocks: PartitionBlocks, first: int, count: int, sector: int,
            payload: int) -> Iterator[bytes]:
    """The run's raw blocks (each checked against the signed table once, see
    ``targets.blocks``) as payload-sized chunks, the last sector zero-padded. Each chunk is
    read from the package again, after the check, so it goes out only if the package file
    is unchanged since then (the programmer writes whatever it is sent, D211)."""
    buffer = bytearray()
    for block in range(first, first + count):
        buffer += blocks.raw_at(block)
        while len(buffer) >= payload:
            blocks.ensure_unchanged()
            yield bytes(buffer[:payload])
            del buffer[:payload]
    buffer += bytes(-len(buffer) % sector)
    if buffer:
        blocks.ensure_unchanged()
    while buffer:
        yield bytes(buffer[:payload])
        del buffer[:payload]


def _split(data: bytes, payload: int) -> Iterator[bytes]:
    for start in range(0, len(data), payload):
        yield data[start:start + payload]
