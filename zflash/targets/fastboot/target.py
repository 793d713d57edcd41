"""The fastboot back-end: a :class:`~zflash.targets.base.Target` over a FastbootClient.

What fastboot cannot do is declared, not faked: it holds no block hashes (no delta, no
resume), verifies nothing it was sent (a written partition is checked by the host only, block
by block against the signed table as it is sent), enforces no package rule (so host checks
cannot be skipped), cannot read a partition back, and does not say which slot booted.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from zflash.checks import Failure, check_complete_slot
from zflash.errors import Code, ZflashError
from zflash.package.format import KIND_ZERO, Manifest
from zflash.package.reader import Package
from zflash.package.sparse import ChunkType, min_split_size
from zflash.targets.base import (BootReport, Capabilities, Emit, Identity, Progress, Target,
                                 UpdateStart, Written)
from zflash.targets.blocks import PartitionBlocks
from zflash.targets.fastboot.client import FastbootClient
from zflash.targets.fastboot.facts import (FastbootFacts, listed_partitions, read_for_manifest,
                                           read_listing)
from zflash.targets.fastboot.stream import (SPARSE_BLOCK_SIZES, ImageStream, PieceStream,
                                            plan_pieces, sparse_block_size)

NO_LIMIT = 1 << 62  # max-download-size not reported: one piece per image


class FastbootTarget(Target):
    protocol = "fastboot"
    capabilities = Capabilities(erase=True, set_active=True, reboot=True)
    stages_downloads = True  # download: is a RAM buffer; only flash:/erase: write

    def __init__(self, url: str, client: FastbootClient, emit: Emit | None = None) -> None:
        super().__init__(url, emit)
        self.client = client
        self.facts = FastbootFacts()
        self.sent = 0

    def connect(self) -> None:
        protocol = getattr(self.client.link.transport, "protocol", "fastboot")
        if protocol != "fastboot":
            raise ZflashError(Code.UNSUPPORTED_PROTOCOL, f"{self.url} offers {protocol}, not "
                                                         "fastboot")
        limit = FastbootFacts({"max-download-size": self.client.getvar(
            "max-download-size", cached=True)}).max_download_size
        self.emit({"event": "connected", "url": self.url, "protocol": self.protocol,
                   "max_data": limit, "window": 1, "codecs": [], "baud": None})

    def close(self) -> None:
        self.client.close()

    @property
    def limit(self) -> int:
        return self.facts.max_download_size or NO_LIMIT

    def identify(self, manifest: Manifest | None = None) -> Identity:
        if manifest is None:
            self.facts, listing = read_listing(self.client)
            identity = self.facts.identity_listing(listing)
        else:
            self.facts = read_for_manifest(self.client, manifest)
            identity = self.facts.identity_for(manifest)
        return identity

    def constraints(self, manifest: Manifest, identity: Identity) -> list[Failure]:
        """A sparse image is whole blocks: the padded image must fit the partition. And the
        new slot must be complete: fastboot has no command that copies a partition from the
        running slot (and ``fetch`` is rare), so a package lacking some slotted partition
        the device lists (``getvar all``) is refused (9039) unless --allow-partial."""
        failures = self._completeness(manifest, identity)
        for part in manifest.partitions:
            capacity = self.facts.partition_size(part)[0]
            if capacity is not None and part.size <= capacity and \
                    sparse_block_size(part.size, capacity) is None:
                failures.append(Failure(Code.IMAGE_TOO_LARGE, "storage", (
                    f"image {part.name} ({part.size} bytes) cannot be padded to whole sparse "
                    f"blocks within its {capacity}-byte partition")))
        return failures

    def _completeness(self, manifest: Manifest, identity: Identity) -> list[Failure]:
        if not any(p.slotted for p in manifest.partitions):
            return []
        try:
            listing = self.client.getvar_all()
        except ZflashError as exc:
            if exc.code in (Code.LINK_LOST, Code.TIMEOUT):
                raise
            listing = None
        if listing is None:
            return check_complete_slot(manifest, identity.facts, {"partitions": "getvar all"})
        facts = replace(identity.facts, partitions=tuple(listed_partitions(listing,
                                                                           self.facts.slots)))
        return check_complete_slot(manifest, facts)

    def begin(self, package: Package, identity: Identity) -> UpdateStart:
        if self.limit < min_split_size(max(SPARSE_BLOCK_SIZES)):
            raise ZflashError(Code.DEVICE_REFUSED, f"the device's max-download-size "
                                                   f"({self.limit}) is too small for one "
                                                   "sparse block; nothing was written")
        slotted = any(p.slotted for p in package.manifest.partitions)
        return UpdateStart(self.facts.inactive_slot if slotted else None)

    def write_partition(self, blocks: PartitionBlocks, index: int, slot: str | None,
                        skip: set[int], progress: Progress) -> Written:
        """Every block is sent (fastboot has no delta): ``skip`` must be empty."""
        part = blocks.part
        if skip:
            raise ZflashError(Code.INTERNAL, "fastboot cannot leave blocks out")
        name = f"{part.name}_{slot}" if part.slotted else part.name
        block_size = sparse_block_size(part.size, self.facts.partition_size(part)[0]) or 4096
        # Zero blocks go as DONT_CARE once the partition is erased. The erase is a write, so
        # it waits, like flash:, until the first piece is downloaded and every block of the
        # package checked out (blocks.ready(), D183); if the bootloader refuses it, the
        # pieces are planned again with FILL chunks and the first one sent again.
        zero_chunk, erase = ChunkType.DONT_CARE, KIND_ZERO in blocks.table.kinds()
        bar = _PieceProgress(progress, self.emit)
        previous, self.client.on_event = self.client.on_event, bar
        sent = pieces = 0
        try:
            if not erase and part.size <= self.limit:
                # no zero block and it fits: the raw image in one download, as stock sends it
                image = ImageStream(blocks)
                blocks.sends_before_ready(len(blocks.table))
                bar.piece(part.size, image.size)
                self.client.download(image, image.size, f"{name} image")  # type: ignore[arg-type]
                blocks.ready()  # raises, with nothing written, on a corrupt block
                self.client.command(f"flash:{name}")
                bar.finish_piece()
                self.sent += image.size
                return Written(image.size, 1)
            plans = plan_pieces(blocks, block_size, self.limit, zero_chunk)
            while plans:
                plan = plans.pop(0)
                start = min(plan.start * block_size, part.size)
                stream = PieceStream(blocks, plan, block_size)
                blocks.sends_before_ready(-(-min(plan.end * block_size, part.size)
                                            // part.block_size))
                bar.piece(min(plan.end * block_size, part.size) - start, stream.size)
                self.client.download(stream, stream.size,  # type: ignore[arg-type]
                                     f"{name} piece {plan.index + 1}")
                blocks.ready()  # raises, with nothing written, on a corrupt block
                if erase:
                    erase = False
                    if self._erase_for_zeros(name) is ChunkType.FILL:
                        zero_chunk = ChunkType.FILL
                        plans = plan_pieces(blocks, block_size, self.limit, zero_chunk)
                        bar.rewind()
                        continue
                self.client.command(f"flash:{name}")
                sent += stream.size
                pieces += 1
                bar.finish_piece()
        finally:
            self.client.on_event = previous
        self.sent += sent
        return Written(sent, pieces)

    def _erase_for_zeros(self, name: str) -> ChunkType:
        """DONT_CARE for zero blocks once the partition is erased (nothing to send or
        write for them); FILL zeros when the bootloader refuses the erase."""
        try:
            self.client.command(f"erase:{name}")
        except ZflashError as exc:
            if exc.code != Code.DEVICE_REFUSED:
                raise
            self.emit({"event": "device_message", "kind": "warning",
                       "message": f"erase:{name} refused ({exc.detail}); zero blocks are "
                                  "sent as FILL chunks instead"})
            return ChunkType.FILL
        return ChunkType.DONT_CARE

    def set_active(self, slot: str) -> None:
        self.client.command(f"set_active:{slot}")

    def reboot(self, force_boot_failure: bool = False) -> BootReport:
        if force_boot_failure:
            self.client.oem("fail-next-boot")  # test devices only (the zflash emulator)
        self.client.reboot()
        return BootReport(True)

    def erase(self, partition: str, slot: str | None) -> None:
        self.client.command(f"erase:{partition}_{slot}" if slot else f"erase:{partition}")

    def stats(self) -> dict[str, int]:
        return {"bytes_sent": self.sent, "retransmissions": 0}


class _PieceProgress:
    """Turns the client's per-download progress into image bytes for the pipeline."""

    def __init__(self, progress: Progress, emit: Emit) -> None:
        self.progress, self.emit = progress, emit
        self.covered = self.size = self.done = self.wire = 0
        self.base_done = self.base_wire = 0
        self._again = False

    def piece(self, covered: int, size: int) -> None:
        """A new download: ``covered`` image bytes in ``size`` bytes of sparse data."""
        if not self._again:
            self.base_done, self.base_wire = self.done, self.wire
        self._again = False
        self.covered, self.size = covered, size

    def _advance(self, done: int, wire: int) -> None:
        if done > self.done:
            self.progress(done - self.done, wire - self.wire)
            self.done, self.wire = done, wire

    def rewind(self) -> None:
        """The piece just downloaded is sent again (re-planned): it starts from the same
        base, and progress already reported is not reported twice."""
        self._again = True

    def finish_piece(self) -> None:
        self._advance(self.base_done + self.covered, self.base_wire + self.size)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "progress" and event.get("total"):
            sent, total = int(event["sent"]), int(event["total"])
            self._advance(self.base_done + self.covered * sent // total,
                          self.base_wire + sent)
        elif kind in ("info", "text", "warning"):
            self.emit({"event": "device_message", "kind": kind,
                       "message": event.get("message")})


def open_client(url: str, timeout: float) -> FastbootClient:
    from zflash.protocol.fastboot.constants import RESPONSE_TIMEOUT
    return FastbootClient.connect(url, timeout=max(timeout, RESPONSE_TIMEOUT),
                                  open_timeout=timeout)
