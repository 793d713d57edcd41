"""Power loss for the emulated EDL device: the power dies at one chosen step of a session.

``--power-loss STEP[:N]`` (the ZDL emulator's form): the N-th time (default the first) the
step is reached over the device's life, whatever was written so far stays on the LUN files,
nothing more is, no answer goes out, and the session ends (``PowerLoss``). The device comes
back in EDL (the boot ROM) on the next connection with the same LUN files. Steps:

- ``program:N``   when N sectors of ``<program>`` data in all have been written; a data
                  chunk that crosses N is written only up to sector N (a partial write)
- ``gpt-primary:N`` right after the N-th ``<program>`` covering LBA 1 (a primary GPT header)
                  is on storage: between a slot switch's primary and backup rewrite
- ``gpt-backup:N``  right after the N-th ``<program>`` covering a LUN's last LBA (a backup
                  GPT header): the switch is written, nothing after it is
- ``patch:N``     the N-th ``<patch>``, before its sector is written
- ``reset:N``     the N-th ``<power value="reset">``, before it is acknowledged or booted
"""

from __future__ import annotations

import os
from typing import Callable

from zflash.emulator.device import PowerLoss
from zflash.errors import Code, ZflashError
from zflash.protocol.firehose import Storage, WriteStep

STEPS = ("program", "gpt-primary", "gpt-backup", "patch", "reset")


def parse_step(spec: str) -> tuple[str, int]:
    """``STEP[:N]`` as (step, N); a typo is a usage error, not a fault that never fires."""
    name, _, nth = spec.partition(":")
    if name not in STEPS:
        raise ZflashError(Code.USAGE, f"--power-loss {spec!r}: the EDL steps are "
                                      f"{', '.join(STEPS)} (STEP[:N])")
    try:
        count = int(nth) if nth else 1
    except ValueError:
        count = 0
    if count < 1:
        raise ZflashError(Code.USAGE, f"--power-loss {spec!r}: N must be a positive number")
    return name, count


class PowerCut:
    """Counts the steps over the device's life (one instance across sessions) and cuts the
    power at the chosen one. ``on_power_loss`` runs first: ``zflash emulate`` exits there
    (status 137, as a device that lost power leaves nothing behind); tests pass a no-op."""

    def __init__(self, spec: str, on_power_loss: Callable[[], None] | None = None) -> None:
        self.step, self.nth = parse_step(spec)
        self.on_power_loss = on_power_loss or (lambda: os._exit(137))
        self.counts: dict[str, int] = {}
        self.fired = False

    def observer(self, storage: Storage) -> Callable[[WriteStep], None]:
        """The programmer's ``on_step`` for one session over ``storage``."""
        return lambda step: self._on_step(storage, step)

    def _cut(self, where: str) -> None:
        self.fired = True
        self.on_power_loss()
        raise PowerLoss(where)

    def _reached(self, name: str) -> bool:
        if self.fired or name != self.step:
            return False
        self.counts[name] = self.counts.get(name, 0) + 1
        return self.counts[name] == self.nth

    def _on_step(self, storage: Storage, step: WriteStep) -> None:
        if self.fired:
            return
        if step.kind == "program" and self.step == "program":
            done = self.counts.get("program", 0)
            if done + step.sectors < self.nth:
                self.counts["program"] = done + step.sectors
                return
            keep = self.nth - done  # sectors of this chunk that reach flash before the cut
            size = storage.sector_size
            storage.write(step.lun, step.first, memoryview(step.data)[:keep * size])
            self.counts["program"] = self.nth
            self._cut(f"program:{self.nth}")
        elif step.kind == "programmed":
            last = storage.num_sectors(step.lun) - 1
            end = step.first + step.sectors
            if step.first <= 1 < end and self._reached("gpt-primary"):
                self._cut(f"gpt-primary:{self.nth}")
            if step.first <= last < end and self._reached("gpt-backup"):
                self._cut(f"gpt-backup:{self.nth}")
        elif step.kind == "patch" and self._reached("patch"):
            self._cut(f"patch:{self.nth}")
        elif step.kind == "power" and step.value == "reset" and self._reached("reset"):
            self._cut(f"reset:{self.nth}")


__all__ = ["PowerCut", "PowerLoss", "STEPS", "parse_step"]
