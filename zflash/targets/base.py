"""What a connected device in download mode can do, whatever protocol it speaks.

The pipeline (``zflash.flash``) and the device commands talk to a :class:`Target` only. A
back-end implements the methods its download mode supports and declares the rest in its
:class:`Capabilities`: a method it does not support raises :class:`NotSupported` (9036)
naming the download mode, never a fake answer. Facts a back-end cannot report go into
:attr:`Identity.unreported`, and the checks turn each into an *unverifiable* check (9045) by
one rule for every back-end.

A new download mode writes: ``connect``, ``identify``, ``begin``, ``write_partition``, and
whichever of ``start_block_hashes``/``finish_block_hashes``/``keep``, ``verify_partition``,
``set_active``, ``reboot``, ``read``, ``erase``, ``constraints`` it supports, plus ``close``,
its :class:`Capabilities`, and one line in ``targets/registry.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping

from zflash.checks import Failure
from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.package.format import Manifest, PartitionEntry, block_length
from zflash.package.reader import Package
from zflash.targets.blocks import PartitionBlocks

Emit = Callable[[dict[str, object]], None]
#: Called as blocks are confirmed by the device: (image bytes now done, wire bytes).
Progress = Callable[[int, int], None]

#: Every fact key a back-end may leave unreported (``size:NAME``, ``partition:NAME`` and
#: ``rollback_index:N`` are per partition / location).
FACT_KEYS = ("product", "hardware_revision", "baseband", "serial", "slots", "slot_priority",
             "partitions", "slot_builds",
             "rollback_index:N", "size:NAME", "partition:NAME", "cache")


@dataclass(frozen=True)
class LinkOptions:
    """How to talk to a device, whatever its download mode (each back-end uses what
    applies to it; the opener refuses an option that does not apply)."""

    #: seconds to wait for the device: opening, the handshake, each answer
    timeout: float = 5.0
    #: serial only: ask the device to switch to this rate after connecting
    baud: int | None = None
    #: ZDL: largest frame payload to offer, and frames in flight
    max_data: int = 256 << 10
    window: int = 32
    #: ZDL: a fixed retransmission timeout (None: derived from the link)
    rto: float | None = None
    #: EDL: the Firehose programmer file to upload (None: the one the package carries)
    programmer: str | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a download mode can do; the pipeline asks instead of assuming."""

    #: reports the hashes of blocks it already holds (delta, and accepting them by index)
    block_hashes: bool = False
    #: resumes an interrupted update (tells which blocks already arrived)
    resume: bool = False
    #: re-hashes a written partition itself against the signed table (read-back verify)
    verifies_on_device: bool = False
    #: enforces every package rule itself, so host checks may be skipped
    enforces_checks: bool = False
    #: stages unslotted partitions in a cache (whose free space is then checked)
    staging_cache: bool = False
    #: reads a partition back (backup)
    read: bool = False
    erase: bool = False
    set_active: bool = False
    reboot: bool = False
    #: says which slot booted after a reboot (and whether it fell back)
    reports_boot: bool = False

    def to_dict(self) -> dict[str, bool]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Identity:
    """The device's facts, what it could not report, and its protocol-specific extras."""

    facts: DeviceFacts
    #: fact key (see FACT_KEYS) -> what would have reported it, e.g. "getvar rollback-index:0"
    unreported: Mapping[str, str] = field(default_factory=dict)
    #: protocol-specific values shown in the ``device`` event (e.g. getvar answers)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"facts": self.facts.to_dict(), "unreported": dict(self.unreported)}


@dataclass(frozen=True)
class UpdateStart:
    """Where an update goes, and what of it the device already holds (a resumed attempt)."""

    slot: str | None
    session: int | None = None
    #: partition index -> block ranges (first, count) that already arrived
    resumed: Mapping[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Written:
    """What writing one partition sent: bytes on the link, in how many pieces (ZDL blocks,
    fastboot downloads)."""

    sent: int
    pieces: int


@dataclass(frozen=True)
class Verification:
    """How a written partition was checked. ``by`` is "device" when the device re-hashed
    what it holds, "host" when only the host checked each block as it was sent."""

    by: str
    sha256: str | None = None


@dataclass(frozen=True)
class BootReport:
    rebooted: bool
    booted_slot: str | None = None
    fell_back: bool = False
    #: False when the download mode does not report which slot booted
    reported: bool = False
    #: what the device told about the boot (attempts, stored rollback indexes...)
    details: Mapping[str, Any] = field(default_factory=dict)


class NotSupported(ZflashError):
    """The download mode has no such operation."""

    def __init__(self, protocol: str, what: str) -> None:
        super().__init__(Code.NOT_SUPPORTED, f"{what} is not supported by this download mode "
                                             f"({protocol})")


class Target(ABC):
    """One connected device in download mode. Opened by ``zflash.targets.open_target``."""

    protocol: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    #: what it is sent lands in a RAM buffer and is written only by a later command
    #: (fastboot: download, then flash:), so the host may still be hashing blocks while it
    #: sends, provided the back-end calls ``PartitionBlocks.ready()`` before any write (D183)
    stages_downloads: ClassVar[bool] = False

    def __init__(self, url: str, emit: Emit | None = None) -> None:
        self.url = url
        self.emit: Emit = emit or (lambda event: None)

    # ------------------------------------------------------------ what every mode has
    def connect(self) -> None:
        """Complete the protocol's handshake and emit ``connected``."""

    @abstractmethod
    def identify(self, manifest: Manifest | None = None) -> Identity:
        """The device's facts; ``manifest`` names the partitions and rollback location a
        flash needs (a back-end that must ask per fact asks for those)."""

    def constraints(self, manifest: Manifest, identity: Identity) -> list[Failure]:
        """Refusals only this download mode has (e.g. fastboot's sparse padding)."""
        return []

    @abstractmethod
    def begin(self, package: Package, identity: Identity) -> UpdateStart:
        """Start an update after every check passed; nothing is written before this."""

    @abstractmethod
    def write_partition(self, blocks: PartitionBlocks, index: int, slot: str | None,
                        skip: set[int], progress: Progress) -> Written:
        """Write ``blocks.part`` into ``slot`` from the package's blocks (each checked
        against the signed table once, see ``targets.blocks``), leaving out the blocks in
        ``skip`` (already on the device)."""

    def stats(self) -> dict[str, int]:
        """Link counters: ``bytes_sent`` on the wire and ``retransmissions``."""
        return {"bytes_sent": 0, "retransmissions": 0}

    def close(self) -> None:
        """Release the link."""

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ declared capabilities
    def unsupported(self, what: str) -> NotSupported:
        return NotSupported(self.protocol, what)

    def start_block_hashes(self, part: PartitionEntry, slot: str | None, first: int,
                           count: int) -> None:
        """Ask for the hashes of blocks ``first..first+count`` the device holds (its answer
        is collected by :meth:`finish_block_hashes`, so the host can work meanwhile)."""
        raise self.unsupported("reporting block hashes")

    def finish_block_hashes(self) -> list[bytes]:
        raise self.unsupported("reporting block hashes")

    def keep(self, index: int, part: PartitionEntry, blocks: list[int]) -> set[int]:
        """Ask the device to take ``blocks`` from what it holds; returns those it took
        (never more than were asked, whatever the device answers)."""
        raise self.unsupported("keeping blocks already on the device")

    def verify_partition(self, index: int, part: PartitionEntry,
                         slot: str | None) -> Verification:
        return Verification("host")

    def set_active(self, slot: str) -> None:
        raise self.unsupported("switching the active slot")

    def reboot(self, force_boot_failure: bool = False) -> BootReport:
        raise self.unsupported("rebooting")

    def read(self, partition: str, slot: str | None, offset: int, length: int,
             sink: Callable[[bytes], None]) -> None:
        raise self.unsupported("reading partitions back")

    def erase(self, partition: str, slot: str | None) -> None:
        raise self.unsupported("erasing partitions")


def bytes_of(part: PartitionEntry, blocks: Iterable[int]) -> int:
    """Image bytes covered by ``blocks`` of ``part`` (the last block may be short)."""
    return sum(block_length(part, i) for i in blocks)
