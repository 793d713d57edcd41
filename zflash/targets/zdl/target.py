"""The ZDL back-end: a :class:`~zflash.targets.base.Target` over one :class:`ZdlSession`.

ZDL is zflash's own download mode, so it can do everything the interface names: the device
reports every fact, hashes what it holds (delta), resumes, re-hashes each committed
partition, enforces every package rule itself and reports which slot booted.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterator

from zflash.errors import Code, ZflashError
from zflash.package import blockmap
from zflash.package.format import KIND_ZERO, Manifest, PartitionEntry, block_length
from zflash.package.reader import Package, wire_form
from zflash.protocol.zdl import (CODEC_NONE, CODEC_ZLIB, CODEC_ZSTD, BeginUpdate, BlockHashes,
                                 CommitPartition, Erase, Hashes, KeepBlocks, Kept, Ok, Reboot,
                                 SetActive, UpdateReady)
from zflash.protocol.zdl.constants import FEATURE_BEGIN_BY_DIGEST
from zflash.targets.base import (BootReport, Capabilities, Emit, Identity, Progress, Target,
                                 UpdateStart, Verification, Written)
from zflash.targets.blocks import PartitionBlocks
from zflash.targets.zdl.session import SessionOptions, ZdlSession
from zflash.transport.base import Transport


#: wire codec name (as offered in HELLO/WELCOME) -> its ZDL id
WIRE_CODECS = {"none": CODEC_NONE, "zlib": CODEC_ZLIB, "zstd": CODEC_ZSTD}


def to_ranges(blocks: list[int]) -> tuple[tuple[int, int], ...]:
    """(first, count) runs of block indexes (a repeated index is one block)."""
    ranges: list[tuple[int, int]] = []
    first = previous = -2
    for block in sorted(set(blocks)):
        if block != previous + 1:
            if previous >= 0:
                ranges.append((first, previous - first + 1))
            first = block
        previous = block
    if previous >= 0:
        ranges.append((first, previous - first + 1))
    return tuple(ranges)


class ZdlTarget(Target):
    protocol = "zdl"
    capabilities = Capabilities(block_hashes=True, resume=True, verifies_on_device=True,
                                enforces_checks=True, staging_cache=True, read=True,
                                erase=True, set_active=True, reboot=True, reports_boot=True)

    def __init__(self, url: str, transport: Transport, options: SessionOptions | None = None,
                 emit: Emit | None = None) -> None:
        super().__init__(url, emit)
        self.transport = transport
        self.session = ZdlSession(transport, options, self.emit)

    def connect(self) -> None:
        info = self.session.connect()
        self.emit({"event": "connected", "url": self.url, "protocol": self.protocol,
                   "max_data": info.max_data, "window": info.window,
                   "codecs": list(info.codecs), "baud": info.baud})

    def close(self) -> None:
        self.transport.close()

    def identify(self, manifest: Manifest | None = None) -> Identity:
        return Identity(self.session.identify())

    # ------------------------------------------------------------ delta
    def start_block_hashes(self, part: PartitionEntry, slot: str | None, first: int,
                           count: int) -> None:
        self.session.start_request(BlockHashes(part.name, slot, first, count, part.block_size))

    def finish_block_hashes(self) -> list[bytes]:
        answer = self.session.finish_request(Hashes)
        return list(answer.digests)  # type: ignore[attr-defined]

    def keep(self, index: int, part: PartitionEntry, blocks: list[int]) -> set[int]:
        kept = self.session.request(KeepBlocks(index, to_ranges(blocks)), Kept,
                                    work=2 * len(blocks) * part.block_size)  # check, copy
        taken = blockmap.from_runs(part.block_count, kept.ranges)  # type: ignore[attr-defined]
        return set(blocks).intersection(blockmap.members(taken))

    # ------------------------------------------------------------ update
    def begin(self, package: Package, identity: Identity) -> UpdateStart:
        # the device checks the head and re-verifies what an interrupted attempt staged
        staged = sum(part.size for part in package.manifest.partitions)
        ready = None
        if self.session.options.begin_by_digest and \
                FEATURE_BEGIN_BY_DIGEST in identity.facts.features:
            # a device that still holds this head (a re-flash, a resume) checks it as if
            # sent; one that does not says so, and gets it whole: a miss is no failure
            ready = self.session.request(BeginUpdate(bytes.fromhex(package.head.digest)),
                                         UpdateReady, work=staged)
        if ready is None or ready.need_head:  # type: ignore[attr-defined]
            ready = self.session.request(BeginUpdate(package.head.head_bytes()), UpdateReady,
                                         work=staged)
        assert isinstance(ready, UpdateReady)
        if ready.need_head:
            raise ZflashError(Code.PROTOCOL, "the device asked for the head it was just sent")
        return UpdateStart(ready.slot, ready.session, dict(ready.have))

    def write_partition(self, blocks: PartitionBlocks, index: int, slot: str | None,
                        skip: set[int], progress: Progress) -> Written:
        """Stream the stored blocks with a window in flight; a compressed block goes as it
        is stored when the device offers its codec, else expanded (``wire_form``)."""
        session, part = self.session, blocks.part
        accepted = tuple(session.session.codecs) if session.session else ()
        raw_lengths: deque[int] = deque()  # image bytes of each block in flight, in order
        acked_blocks = session.engine.blocks_acked
        sent = pieces = 0

        def frames() -> Iterator[tuple[int, int, int, bytes]]:
            nonlocal sent, pieces
            for block, entry, stored in blocks.stored(skip):
                if entry.kind == KIND_ZERO:
                    continue  # never sent: the device fills zero blocks at commit
                raw_lengths.append(block_length(part, block))
                name, data = wire_form(part, block, entry, stored, accepted)
                codec = WIRE_CODECS[name]
                sent += len(data)
                pieces += 1
                yield index, block, codec, data

        def on_acked(wire_bytes: int) -> None:
            nonlocal acked_blocks
            now = session.engine.blocks_acked
            done = sum(raw_lengths.popleft() for _ in range(now - acked_blocks))
            acked_blocks = now
            progress(done, wire_bytes)

        session.write_blocks(frames(), on_acked)
        return Written(sent, pieces)

    def verify_partition(self, index: int, part: PartitionEntry,
                         slot: str | None) -> Verification:
        # zero-fill, hash the whole image, move it into place
        answer = self.session.request(CommitPartition(index), Ok, work=2 * part.size)
        digest = answer.info.get("sha256")  # type: ignore[attr-defined]
        if not isinstance(digest, str) or len(digest) != 64:
            raise ZflashError(Code.PROTOCOL, f"{part.name}: the device committed without "
                                             f"reporting the image's sha256 ({digest!r:.80})")
        if digest != part.sha256:
            raise ZflashError(Code.READBACK_MISMATCH, f"{part.name}: the device reports sha256 "
                                                      f"{digest[:16]}..., the package's image "
                                                      f"is {part.sha256[:16]}...")
        return Verification("device", digest)

    def set_active(self, slot: str) -> None:
        self.session.request(SetActive(slot), Ok)

    def reboot(self, force_boot_failure: bool = False) -> BootReport:
        options = {"force_boot_failure": True} if force_boot_failure else {}
        answer = self.session.request(Reboot(options), Ok)
        boot = dict(answer.info.get("boot") or {})  # type: ignore[attr-defined]
        booted = boot.get("booted_slot")
        if booted is not None and not isinstance(booted, str):
            raise ZflashError(Code.PROTOCOL, f"device reported booted slot {booted!r}")
        return BootReport(True, booted, bool(boot.get("fell_back")), reported=True,
                          details=boot)

    def read(self, partition: str, slot: str | None, offset: int, length: int,
             sink: Callable[[bytes], None]) -> None:
        self.session.read(partition, slot, offset, length, sink)

    def erase(self, partition: str, slot: str | None) -> None:
        self.session.request(Erase(partition, slot), Ok)

    def stats(self) -> dict[str, int]:
        stats = self.session.stats
        return {"bytes_sent": stats["bytes_sent"], "retransmissions": stats["retransmissions"]}
