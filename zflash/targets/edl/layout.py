"""What the GPTs of an EDL device's LUNs say: partitions, A/B pairs, slot state, boot LUN.

Pure: built from the tables the back-end read over Firehose. Names are found across every
LUN (the first LUN holding a name wins, as bootctrl walks them in order); ``boot_a``/``boot_b``
carry the slot state (REFERENCE-EDL 5).
"""

from __future__ import annotations

from dataclasses import dataclass

from zflash.disk.gpt import SLOTS, Gpt, SlotBits, active_slot, slot_state
from zflash.facts import PartitionInfo, SlotInfo

BOOT_LOADERS = ("xbl", "sbl1")  # the label that says which LUN boots (qdl, UFS bBootLunEn)


@dataclass(frozen=True)
class Place:
    """Where one GPT partition lies: LUN, first sector, sector count."""

    lun: int
    first_lba: int
    sectors: int


@dataclass(frozen=True)
class DiskLayout:
    sector_size: int
    tables: tuple[Gpt | None, ...]  # per LUN; None: no valid GPT there

    def place(self, name: str) -> Place | None:
        for lun, gpt in enumerate(self.tables):
            part = gpt.get(name) if gpt else None
            if part is not None:
                return Place(lun, part.first_lba, part.sectors)
        return None

    def target(self, name: str, slot: str | None) -> Place | None:
        return self.place(f"{name}_{slot}" if slot else name)

    def partitions(self) -> tuple[PartitionInfo, ...]:
        """Every partition once: ``<p>_a`` + ``<p>_b`` as slotted ``p`` (the smaller size)."""
        seen: dict[str, PartitionInfo] = {}
        for gpt in self.tables:
            if gpt is None:
                continue
            for part in gpt.partitions:
                name, size = part.name, part.sectors * self.sector_size
                base = name[:-2]
                if name[-2:] in ("_a", "_b") and self.place(
                        base + ("_b" if name.endswith("_a") else "_a")) is not None:
                    old = seen.get(base)
                    seen[base] = PartitionInfo(base, min(size, old.size) if old else size, True)
                elif name and name not in seen:
                    seen[name] = PartitionInfo(name, size, False)
        return tuple(seen.values())

    def slot_table(self) -> Gpt | None:
        """The LUN table that holds boot_a/boot_b."""
        return next((g for g in self.tables if g is not None and slot_state(g)), None)

    def slots(self) -> tuple[tuple[SlotInfo, ...], str | None]:
        """Slot infos and the running slot (see ``running_slot``)."""
        gpt = self.slot_table()
        if gpt is None:
            return (), None
        state = slot_state(gpt)
        infos = tuple(_slot_info(s, state[s]) for s in SLOTS)
        return infos, running_slot(gpt)

    def boot_lun(self, slot: str) -> int | None:
        """The LUN to mark bootable for ``slot``: where ``xbl_<slot>`` lives when the two
        slots' boot loaders are on different LUNs (the UFS boot-LUN layout); else None."""
        for loader in BOOT_LOADERS:
            mine, other = self.place(f"{loader}_{slot}"), self.place(
                f"{loader}_{'b' if slot == 'a' else 'a'}")
            if mine and other and mine.lun != other.lun:
                return mine.lun
        return None


def running_slot(gpt: Gpt) -> str | None:
    """The slot to keep: the active one if it has booted successfully; otherwise (a switch
    the device never booted, e.g. power lost between the switch and the reset) the slot
    that last booted successfully, so a rerun writes into the unproven slot again and never
    over the known-good one (DECISIONS.md D160). Without a successful slot: the active one."""
    state = slot_state(gpt)
    active = active_slot(gpt)
    if active is not None and state[active].successful and not state[active].unbootable:
        return active
    good = [s for s in SLOTS if state[s].successful and not state[s].unbootable]
    if good:
        return max(good, key=lambda s: (state[s].active, state[s].priority))
    return active


def _slot_info(name: str, bits: SlotBits) -> SlotInfo:
    return SlotInfo(name, bits.active, not bits.unbootable, bits.successful, bits.tries,
                    bits.priority)
