"""The fault matrix (issue 14): power loss at every device step x N, a dropped link at spread
offsets, a stalled link, frame corruption, over TCP and the pty, each against the emulated
device through the real CLI. After each fault:

- the device's running slot is bootable, and the old slot's partitions, ``userdata`` and every
  partition the package does not carry are byte-identical to before;
- a rerun of the same ``zflash flash`` completes (exit 0, device booted the new slot);
- the device's staging directory is empty afterwards.

``make test`` runs a representative subset (``FAST``); the whole matrix is marked ``slow``
(``make slow``). Set ZFLASH_FAULT_REPORT=FILE to append one JSON line per cell.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SIGNING_PUB
from emulator_helpers import GOOD, demo_profile, snapshot
from zflash.emulator.runner import EmulatorRunner, LinkFaults
from zflash.package.reader import Package

TRUST = ["--trust", str(SIGNING_PUB)]
FLASH_TIMEOUT = 120.0


def _package_layout() -> tuple[set[str], int, int]:
    """(partitions the package carries, block count, stored bytes) of the GOOD sample."""
    with Package(GOOD) as pkg:
        names = {p.name for p in pkg.manifest.partitions}
        entries = [e for p in pkg.manifest.partitions for e in pkg.head.tables[p.name]
                   if e.stored_size]
    return names, len(entries), sum(e.stored_size for e in entries)


OWNED, BLOCKS, STORED = _package_layout()


@dataclass(frozen=True)
class Cell:
    link: str  # tcp | pty
    power_loss: str | None = None  # STEP[:N]
    drop_after: int | None = None
    stall_after: int | None = None
    corrupt: float = 0.0

    @property
    def name(self) -> str:
        fault = (f"power-loss={self.power_loss}" if self.power_loss else
                 f"drop-after={self.drop_after}" if self.drop_after is not None else
                 f"stall-after={self.stall_after}" if self.stall_after is not None else
                 f"corrupt={self.corrupt:g}")
        return f"{self.link}-{fault}"

    def runner(self, state: Path) -> EmulatorRunner:
        faults = LinkFaults(drop_after_bytes=self.drop_after,
                            stall_after_bytes=self.stall_after,
                            corrupt_fraction=self.corrupt, seed=14)
        runner = EmulatorRunner(state, demo_profile(), faults=faults,
                                power_loss_at=self.power_loss, on_power_loss=lambda: None)
        runner.start_tcp(0) if self.link == "tcp" else runner.start_pty()
        return runner


def _matrix() -> list[Cell]:
    cells: list[Cell] = []
    for link in ("tcp", "pty"):
        cells.append(Cell(link, power_loss="begin:1"))
        cells += [Cell(link, power_loss=f"write-block:{n}") for n in range(1, BLOCKS + 1)]
        cells += [Cell(link, power_loss=f"commit:{n}") for n in range(1, len(OWNED) + 1)]
        cells.append(Cell(link, power_loss="set-active:1"))
        cells += [Cell(link, drop_after=int(STORED * f)) for f in (0.02, 0.25, 0.5, 0.75, 0.98)]
        cells.append(Cell(link, stall_after=STORED // 2))
        cells += [Cell(link, corrupt=f) for f in (0.01, 0.05)]
    return cells


FAST = {"tcp-power-loss=begin:1", f"tcp-power-loss=write-block:{BLOCKS // 2}",
        "pty-power-loss=commit:2", "tcp-power-loss=set-active:1", "pty-power-loss=set-active:1",
        f"pty-drop-after={int(STORED * 0.5)}", f"pty-stall-after={STORED // 2}",
        "tcp-corrupt=0.01", "tcp-corrupt=0.05"}


def _params() -> list:
    return [pytest.param(cell, id=cell.name, marks=[] if cell.name in FAST else [pytest.mark.slow])
            for cell in _matrix()]


def _flash(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zflash", "flash", str(GOOD), "-d", url,
                           *TRUST, "--json"], capture_output=True, text=True,
                          timeout=FLASH_TIMEOUT,
                          env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent"})


def _untouchable(root: Path, target_slot: str) -> dict[str, str]:
    """Digests of every partition file the update may not change: the running slot's, the
    ones the package does not carry, userdata."""
    out = {}
    for name, digest in snapshot(root / "partitions").items():
        stem = name.removesuffix(".img")
        base, _, slot = stem.rpartition("_")
        if slot in ("a", "b") and base:
            if slot != target_slot:
                out[name] = digest
        elif stem not in OWNED:
            out[name] = digest
    return out


def _running_slot_boots(runner: EmulatorRunner) -> str:
    """The slot the device would boot now, asserted bootable (the emulator's own rule)."""
    facts = runner.device.facts()
    slot = next(s for s in facts.slots if s.name == facts.current_slot)
    assert slot.bootable, slot
    return slot.name


def _staging_files(root: Path) -> list[str]:
    staging = root / "staging"
    return sorted(str(p.relative_to(staging)) for p in staging.rglob("*")) \
        if staging.exists() else []


def _done(result: subprocess.CompletedProcess[str]) -> dict:
    return next(json.loads(line) for line in result.stdout.splitlines()
                if line.startswith("{") and json.loads(line)["event"] == "done")


@pytest.mark.parametrize("cell", _params())
def test_fault_then_rerun(cell: Cell, tmp_path) -> None:
    state = tmp_path / "dev"
    started = time.monotonic()
    runner = cell.runner(state)
    root = runner.storage.root
    before = _untouchable(root, "b")
    try:
        first = _flash(runner.urls[0])
    finally:
        runner.stop()
    assert "Traceback" not in first.stderr, first.stderr[-2000:]
    if first.returncode != 0:
        assert first.returncode not in (1, 2), first.stderr[-1000:]
        assert "error 90" in first.stderr and "error 9001" not in first.stderr, first.stderr
    assert _untouchable(root, "b") == before

    again = EmulatorRunner(state, demo_profile())
    again.start_tcp(0) if cell.link == "tcp" else again.start_pty()
    try:
        assert _running_slot_boots(again) in ("a", "b")
        rerun = _flash(again.urls[0])
    finally:
        again.stop()
    assert rerun.returncode == 0, (first.returncode, rerun.stderr[-1500:])
    if first.returncode == 0:
        # the link fault was survived (retransmissions): slot b runs, the rerun went into a
        assert _done(first)["booted_slot"] == "b"
        assert _done(rerun)["booted_slot"] == "a"
    else:
        assert _done(rerun)["booted_slot"] == "b"
        assert _untouchable(root, "b") == before
    assert _staging_files(root) == []
    report = os.environ.get("ZFLASH_FAULT_REPORT")
    if report:
        with open(report, "a") as handle:
            handle.write(json.dumps({"cell": cell.name, "first_exit": first.returncode,
                                     "seconds": round(time.monotonic() - started, 2)}) + "\n")


def test_matrix_covers_every_step_link_and_fault() -> None:
    cells = _matrix()
    steps = {c.power_loss.partition(":")[0] for c in cells if c.power_loss}
    assert steps == {"begin", "write-block", "commit", "set-active"}
    assert {c.link for c in cells} == {"tcp", "pty"}
    assert FAST <= {c.name for c in cells}
    assert sum(1 for c in cells if c.drop_after is not None) == 10
