"""The package's blocks as a back-end receives them: each checked against the signed table
exactly once before it leaves the host.

Why: the host promises that a corrupt package is refused before anything is written, and it
should pay for that promise once. :class:`BlockCheck` hashes, on a worker thread, the blocks
that will be sent (while the device hashes its flash for the delta probe); a back-end then
reads them through :class:`PartitionBlocks`, which re-checks only a block that was not checked
before (a block the device was expected to keep but did not), and never hashes one twice.
"""

from __future__ import annotations

import bisect
import itertools
import os
import threading
from typing import Callable, Container, Iterable, Iterator

from zflash.errors import ZflashError
from zflash.package import blockmap
from zflash.package.format import KIND_RAW, KIND_ZERO, BlockEntry, PartitionEntry, block_length
from zflash.package.reader import Package, decode_block, expand_block


def read_stored(package: Package, part: PartitionEntry, index: int) -> bytes:
    """One block's stored bytes by position (os.pread: safe beside another reader)."""
    entry = package.head.tables[part.name][index]
    if entry.kind == KIND_ZERO:
        return b""
    return package.read_stored_at(entry, part, index)


#: threads that hash a package's blocks beside the sender
WORKERS = max(1, min(2, os.cpu_count() or 1))
#: expanded blocks the workers may keep for the sender (bounded: memory stays flat)
KEEP_BYTES = 32 << 20


class _Queue:
    """The blocks one ``start`` asked for, in order, shared by its workers: the front is
    taken next (the blocks the sender reaches soonest), the back is the farthest. Positions
    count across the partitions' lists (no object per block)."""

    def __init__(self, items: list[tuple[PartitionEntry, list[int]]]) -> None:
        self.items = items
        self.starts = list(itertools.accumulate((len(i) for _, i in items), initial=0))
        self.front, self.back = 0, self.starts[-1]
        self._first_after: int | None = None

    def trim(self, claimed: Callable[[tuple[PartitionEntry, int]], bool]) -> bool:
        """Move both ends past claimed blocks; whether any block is left between them."""
        while self.front < self.back and claimed(self.at(self.front)):
            self.front += 1
        while self.back > self.front and claimed(self.at(self.back - 1)):
            self.back -= 1
        return self.front < self.back

    def first_after(self, before_gate: dict[str, int]) -> int:
        """The position of the first block sent after the gate (blocks are queued in the
        order they are sent); computed once."""
        if self._first_after is None:
            self._first_after = 0
            for item, (part, indexes) in enumerate(self.items):
                if part.name in before_gate:
                    self._first_after = self.starts[item] + bisect.bisect_left(
                        indexes, before_gate[part.name])
        return self._first_after

    def at(self, position: int) -> tuple[PartitionEntry, int]:
        """(partition, block index) at a position."""
        item = bisect.bisect_right(self.starts, position) - 1
        part, indexes = self.items[item]
        return part, indexes[position - self.starts[item]]


class BlockCheck:
    """Checks named blocks of a package against the signed table on worker threads."""

    def __init__(self, package: Package) -> None:
        self.package = package
        self.checked: dict[str, set[int]] = {p.name: set() for p in package.manifest.partitions}
        self.failure: ZflashError | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        #: expanded compressed blocks the workers checked, kept for a sender that streams
        #: while they work (D187): (partition, index) -> raw bytes; with the room reserved
        #: for blocks being expanded, at most KEEP_BYTES (D190)
        self._kept: dict[tuple[str, int], bytes | memoryview] = {}
        self._kept_bytes = 0
        self._keep = False
        self._lock = threading.Lock()
        #: blocks a worker or the sender has started on: each is hashed by one of them
        self._claimed: dict[str, set[int]] = {p.name: set() for p in package.manifest.partitions}
        self._settled = threading.Condition(self._lock)
        #: a kept block was taken, or the gate is waiting: a worker waiting for room goes on
        self._room = threading.Condition(self._lock)
        #: the blocks the sender sends before it waits for the gate (partition -> stop
        #: index; every other partition: none of its blocks); None while not told
        self._before_gate: dict[str, int] | None = None
        #: the gate waits for every block: no more waiting for room
        self._draining = False
        self._kinds = {p.name: package.head.tables[p.name].kinds()
                       for p in package.manifest.partitions}

    def claim(self, partition: str, index: int) -> bool:
        """True for the first caller only: that one checks the block."""
        with self._lock:
            return self._claim(partition, index)

    def _claim(self, partition: str, index: int) -> bool:
        claimed = self._claimed[partition]
        if index in claimed:
            return False
        claimed.add(index)
        return True

    def settle(self, partition: str, index: int) -> None:
        """The claimed block checked out."""
        with self._settled:
            self.checked[partition].add(index)
            self._settled.notify_all()

    def wait_for(self, partition: str, index: int) -> None:
        """Until another's claimed block is checked (or a corrupt block was found)."""
        with self._settled:
            while index not in self.checked[partition] and self.failure is None:
                self._settled.wait(0.5)

    def keep_expanded(self) -> None:
        """Keep what the workers expand (up to KEEP_BYTES) for ``take``: a sender that runs
        beside them then expands each compressed block once, not twice."""
        self._keep = True

    def sends_before_gate(self, partition: str, stop: int) -> None:
        """The sender sends blocks ``0..stop`` of ``partition`` (and no block of another)
        before it waits for the gate. Only the first word counts: it is the first piece.

        Why: with the cache full, a worker then checks blocks the sender reaches only
        after the gate (the gate needs them anyway) instead of waiting for room, and never
        expands a block of the first piece only to throw its bytes away (D190)."""
        with self._room:
            if self._before_gate is None:
                self._before_gate = {partition: stop}
                self._room.notify_all()

    def take(self, partition: str, index: int) -> bytes | memoryview | None:
        """A checked block's raw bytes if a worker kept them (each is handed out once)."""
        with self._lock:
            raw = self._kept.pop((partition, index), None)
            if raw is not None:
                self._kept_bytes -= len(raw)
                self._room.notify_all()
            return raw

    def fail(self, error: ZflashError) -> None:
        """A corrupt block (found by a worker or the sender): reported by ``wait``."""
        with self._settled:
            if self.failure is None:
                self.failure = error
            self._settled.notify_all()
            self._room.notify_all()

    def start(self, work: Iterable[tuple[PartitionEntry, list[int]]]) -> None:
        """Begin checking ``work`` (partition, block indexes); returns at once.

        WORKERS threads share the blocks: hashlib, zstd and the reads release the GIL, so
        a host with two cores hashes twice as fast while the link waits for the check
        (D185). Each takes the next unclaimed block in order (D190: see ``_next``)."""
        queue = _Queue([(part, indexes) for part, indexes in work if indexes])
        if not queue.back:
            return
        for worker in range(min(WORKERS, queue.back)):
            thread = threading.Thread(target=self._run, args=(queue,), daemon=True,
                                      name=f"zflash-block-check-{worker}")
            self._threads.append(thread)
            thread.start()

    def _run(self, queue: _Queue) -> None:
        while True:
            job = self._next(queue)
            if job is None:
                return
            part, index, reserved = job
            entry = self.package.head.tables[part.name][index]
            try:
                raw = decode_block(part, index, entry,
                                   read_stored(self.package, part, index))
            except ZflashError as exc:
                self.fail(exc)  # the other worker may have found one too
                return
            if self._keep and entry.kind != KIND_RAW:
                self._store(part.name, index, raw, reserved)
            self.settle(part.name, index)

    def _next(self, queue: _Queue) -> tuple[PartitionEntry, int, int] | None:
        """Claim the next block for a worker: (partition, index, bytes of room reserved to
        keep it), or None when none is left (or the check stopped).

        The front block, unless it is one to keep and the cache is full: then the
        farthest block, if the sender sends it only after the gate and more than a
        cacheful of those are left (it is checked now, for the gate, and expanded again
        when sent); else wait for room, until the gate waits. So a block the sender sends
        before the gate is expanded once, by a worker that keeps it or by the sender, and
        a later one at most twice (D190)."""
        with self._room:
            while not self._stop.is_set() and self.failure is None:
                if not queue.trim(self._is_claimed):
                    return None
                job = self._from_front(queue) or self._from_back(queue)
                if job is not None:
                    return job
                self._room.wait(0.5)
            return None

    def _from_front(self, queue: _Queue) -> tuple[PartitionEntry, int, int] | None:
        """The front block, with room reserved if it is one to keep and there is room;
        None if it is to be kept and cannot be (unless the gate waits: no more waiting)."""
        part, index = queue.at(queue.front)
        size = self._size_to_keep(part, index)
        room = self._kept_bytes + size <= KEEP_BYTES
        if size and not room and not self._draining:
            return None
        queue.front += 1
        self._claim(part.name, index)
        reserved = size if room else 0
        self._kept_bytes += reserved
        return part, index, reserved

    def _from_back(self, queue: _Queue) -> tuple[PartitionEntry, int, int] | None:
        """The farthest block, if the sender sends it only after the gate, and more of
        those are left than the cache holds: the last cacheful is left to the front,
        whose workers keep it while the sender finishes the first piece."""
        part, index = queue.at(queue.back - 1)
        if not self._after_gate(part.name, index):
            return None
        assert self._before_gate is not None
        left = queue.back - max(queue.front, queue.first_after(self._before_gate))
        if left * part.block_size <= KEEP_BYTES:
            return None
        queue.back -= 1
        self._claim(part.name, index)
        return part, index, 0

    def _is_claimed(self, block: tuple[PartitionEntry, int]) -> bool:
        return block[1] in self._claimed[block[0].name]

    def _size_to_keep(self, part: PartitionEntry, index: int) -> int:
        """The room a block takes in the cache: none for a raw one (the sender sends the
        mapped package, not a copy) or when nothing is kept."""
        if not self._keep or self._kinds[part.name][index] == KIND_RAW:
            return 0
        return block_length(part, index)

    def _after_gate(self, partition: str, index: int) -> bool:
        """Whether the sender sends the block only after the gate (False while unknown)."""
        before = self._before_gate
        return before is not None and index >= before.get(partition, 0)

    def _store(self, partition: str, index: int, raw: bytes | memoryview,
               reserved: int) -> None:
        """Keep a checked block for the sender: in the room reserved for it, or in room
        left over; else its bytes are dropped (the sender expands it again)."""
        with self._lock:
            self._kept_bytes -= reserved
            if self._kept_bytes + len(raw) <= KEEP_BYTES:
                self._kept[(partition, index)] = raw
                self._kept_bytes += len(raw)

    def wait(self) -> ZflashError | None:
        """Wait for every started check; the first corrupt block found, or None."""
        with self._room:
            self._draining = True  # every block is needed now: none waits for room
            self._room.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        return self.failure

    def stop(self) -> None:
        """Abandon what is left (the job ended early) and wait for the worker to let go of
        the package file."""
        self._stop.set()
        self.wait()


class PartitionBlocks:
    """One partition's blocks for a back-end. ``checked`` holds the indexes already checked
    against the table (None: trust every block, for a device that checks each itself)."""

    def __init__(self, package: Package, part: PartitionEntry,
                 checked: set[int] | None, gate: Callable[[], None] | None = None,
                 check: BlockCheck | None = None) -> None:
        """``check``: the BlockCheck still running beside the sender (gated, D183/D187):
        blocks it kept expanded are taken from it, blocks it has not reached are checked
        here (and it skips them), and a corrupt one is handed to it for the gate to
        refuse, instead of raising in the middle of a download."""
        self.package, self.part, self.checked = package, part, checked
        self.table: list[BlockEntry] = package.head.tables[part.name]
        self._gate = gate
        self._check = check
        #: the last compressed block expanded here: a piece that ends inside a block and
        #: the next that starts there share it, so it is expanded once for both
        self._last: tuple[int, bytes | memoryview] | None = None

    def sends_before_ready(self, stop: int) -> None:
        """The sender sends blocks ``0..stop`` of this partition, and no other block,
        before it calls ``ready``: the check beside it then leaves those to the sender when
        it cannot keep what it expands (D190). A no-op without such a check."""
        if self._check is not None:
            self._check.sends_before_gate(self.part.name, stop)

    def ready(self) -> None:
        """Return only when every block of the package has checked out against the signed
        table (else raise the refusal). A back-end whose sends are staged, not written
        (``Capabilities.stages_downloads``), calls it before its first write command; for
        every other back-end the blocks were checked before it was called.

        Either way it also refuses if the package file changed since it was opened: what
        was downloaded was read from the file again, after its blocks were checked (D211)."""
        if self._gate is not None:
            self._gate()
        self.ensure_unchanged()

    def ensure_unchanged(self) -> None:
        """Raise (9012, cause ``changed``) if the package file changed since it was opened.
        A back-end that writes as it streams, to a device that checks nothing, calls it
        after reading each chunk and before sending it: the chunk is then as checked."""
        self.package.ensure_unchanged()

    def _needs_check(self, index: int) -> bool:
        return self.checked is not None and index not in self.checked

    def stored(self, skip: Container[int]) -> Iterator[tuple[int, BlockEntry, bytes]]:
        """(index, table entry, stored bytes) of every block not in ``skip``, in order; a
        skipped block is not even read from the package."""
        wanted = skip.absent() if isinstance(skip, BlockSet) else \
            (i for i in range(len(self.table)) if i not in skip)
        for index in wanted:
            entry = self.table[index]
            data = read_stored(self.package, self.part, index)
            if self._needs_check(index):
                decode_block(self.part, index, entry, data)
                self.checked.add(index)  # type: ignore[union-attr]
            yield index, entry, data

    def raw_views(self, first: int, stop: int, limit: int = 4 << 20
                  ) -> Iterator[bytes | memoryview]:
        """The raw bytes of blocks ``first..stop`` in order, in pieces of at most ``limit``.

        Blocks stored raw lie back to back in the payload (the table says so), so a run of
        them is one view of the mapped package: no read into Python and no copy (D184).
        A compressed block is expanded; a block not yet checked is checked first (only
        when this partition's blocks are checked here at all)."""
        table = self.table
        kinds = table.kinds()
        index = first
        while index < stop:
            if kinds[index] != KIND_RAW:
                yield self.raw_at(index)
                index += 1
                continue
            end = index + 1
            while end < stop and kinds[end] == KIND_RAW and \
                    (end - index + 1) * self.part.block_size <= limit:
                end += 1
            start = table[index].stored_offset
            last = table[end - 1]
            length = last.stored_offset + last.stored_size - start
            view = self.package.stored_view(start, length)
            for block in range(index, end):
                if self._needs_check(block) and self._claims(block):  # hashed on the view
                    entry = table[block]
                    offset = entry.stored_offset - start
                    self._decode(block, entry, view[offset:offset + entry.stored_size])
            yield view
            self.package.release_view(start, length)  # sent: out of the resident set
            index = end

    def raw_at(self, index: int) -> bytes | memoryview:
        """One block's raw bytes by position, hashed only if not checked before."""
        last = self._last
        if last is not None and last[0] == index:
            return last[1]
        raw = self._raw_at(index)
        if self.table[index].kind != KIND_RAW:
            self._last = (index, raw)
        return raw

    def _raw_at(self, index: int) -> bytes | memoryview:
        if self._check is not None:
            kept = self._check.take(self.part.name, index)
            if kept is not None:
                return kept
        entry = self.table[index]
        if self._needs_check(index) and self._mine(index):
            return self._decode(index, entry, read_stored(self.package, self.part, index))
        if self._check is not None:  # a worker checked it meanwhile, and may have kept it
            if self._needs_check(index):  # no: it found a corrupt block; the gate refuses
                return bytes(block_length(self.part, index))
            kept = self._check.take(self.part.name, index)
            if kept is not None:
                return kept
        return expand_block(self.part, index, entry,
                            read_stored(self.package, self.part, index))

    def _claims(self, index: int) -> bool:
        """Whether this sender hashes a raw block it sends from the map: yes, unless a
        worker claimed it first. Then the sender does not wait for the worker's verdict
        (D209): it sends the same mapped bytes either way, the download only stages them,
        and the gate waits for every verdict before the first write (D183)."""
        return self._check is None or self._check.claim(self.part.name, index)

    def _mine(self, index: int) -> bool:
        """Whether this sender checks the block: always, unless a BlockCheck runs beside it
        and a worker claimed it first (then wait for the worker: hashed once either way)."""
        if self._check is None or self._check.claim(self.part.name, index):
            return True
        self._check.wait_for(self.part.name, index)
        return False

    def _decode(self, index: int, entry: BlockEntry, stored: bytes | memoryview
                ) -> bytes | memoryview:
        """Check one block and mark it checked; beside a running BlockCheck a corrupt block
        is handed to it (the gate refuses before any write) and zeros stand in for it."""
        try:
            raw = decode_block(self.part, index, entry, stored)
        except ZflashError as exc:
            if self._check is None:
                raise
            self._check.fail(exc)
            return bytes(block_length(self.part, index))
        if self._check is not None:
            self._check.settle(self.part.name, index)
        else:
            self.checked.add(index)  # type: ignore[union-attr]
        return raw


class BlockSet:
    """A set of block indexes of one partition as one byte per block: bounded by the
    partition's block count whatever a device claims (a range list naming 2^40 blocks
    costs nothing more than the partition's own size)."""

    def __init__(self, count: int) -> None:
        self._bits = bytearray(count)

    @classmethod
    def from_ranges(cls, count: int, ranges: Iterable[tuple[int, int]]) -> "BlockSet":
        """(first, count) ranges, clipped to the partition."""
        result = cls(count)
        for first, length in ranges:
            start, end = max(0, first), min(count, first + length)
            if start < end:
                result._bits[start:end] = b"\x01" * (end - start)
        return result

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and 0 <= index < len(self._bits) and \
            bool(self._bits[index])

    def add(self, index: int) -> None:
        if 0 <= index < len(self._bits):
            self._bits[index] = 1

    def update(self, indexes: Iterable[int]) -> None:
        for index in indexes:
            self.add(index)

    def __len__(self) -> int:
        return self._bits.count(1)

    def bits(self) -> bytes:
        """The set as a block map (zflash.package.blockmap): one 0/1 byte per block."""
        return bytes(self._bits)

    def merge(self, flags: bytes | bytearray) -> None:
        """Add every block set in ``flags``, a block map of the same partition."""
        count = len(self._bits)
        self._bits[:] = blockmap.union(self._bits, bytes(flags[:count]).ljust(count, b"\0"))

    def absent(self) -> Iterator[int]:
        """The partition's blocks not in the set, in order (one C-level find per block)."""
        index = self._bits.find(0)
        while index >= 0:
            yield index
            index = self._bits.find(0, index + 1)

    def __iter__(self) -> Iterator[int]:
        index = self._bits.find(1)
        while index >= 0:
            yield index
            index = self._bits.find(1, index + 1)
