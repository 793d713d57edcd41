#!/usr/bin/env python3
"""Issue 14's before/after table: each reported case, what the issue measured on the old
main, and what the test reproducing it measures now (outcome, seconds, and for the cases
run through the CLI against a hostile device, the zflash process's peak RSS and exit status).

Runs the selected tests with pytest (slow ones included, `-m ""`), reading durations from
a JUnit XML file and the CLI cases' exit status and RSS from tests/test_hostile_devices.py's
ZFLASH_HOSTILE_REPORT lines. Not a test: the table goes into the closing note.

    python bench/hardening_report.py            # every case (about 10 minutes)
    python bench/hardening_report.py --fast     # without the slow test cases
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: (issue 14's case, what the issue measured before, pytest selection: file::name-or-k)
CASES: list[tuple[str, str, str]] = [
    ("UPDATE_READY `have` claims every block", "22 GB RSS, hang",
     "tests/test_hostile_devices.py -k huge-have"),
    ("garbage / sync markers / keep-alives / stalled chunk (info, flash, backup)",
     "> 90 s, no end", "tests/test_hostile_devices.py -k 'garbage or sync-flood or "
     "keepalive-flood or chunk-stall or oversized-frame or huge-data'"),
    ("device error code 9000 / 9001 / 9999", "reported as 9001",
     "tests/test_hostile_devices.py -k error-9"),
    ("UPDATE_READY names the running slot", "host writes it",
     "tests/test_hostile_devices.py -k running-slot"),
    ("facts with absurd sizes / an 80 MiB string / 10^6 partitions",
     "accepted and printed; 10^6: 9026 after 410 MB",
     "tests/test_hostile_devices.py -k 'absurd-size or huge-string or million-partitions'"),
    ("COMMIT answer without / with a wrong digest", "taken as verified",
     "tests/test_hostile_devices.py -k commit"),
    ("hostile fastboot device (oversized responses, DATA sizes, INFO floods)",
     "8 of 69 cases not clean", "tests/test_hostile_devices.py -k fastboot"),
    ("power loss at each step, drop, stall, 1-5 % corruption, tcp and pty (fault matrix)",
     "set-active rerun 9030, staging left; pty stall/corruption > 150 s; tcp 1 %: 9024",
     "tests/test_fault_matrix.py"),
    ("power-loss rerun message", "blames the flash memory",
     "tests/test_power_loss.py"),
    ("malformed sparse image to `fastboot flash`", "sent; generic 9034; running slot "
     "half-written (18 of 20)", "tests/test_sparse_validate.py"),
    ("sparse DONT_CARE of 16 TiB; `pack` of /dev/zero", "`pack` hangs / runs forever",
     "tests/test_pack_bounds.py"),
    ("manifest names or sha256 with a trailing newline", "verify OK, device accepts",
     "tests/test_manifest_values.py"),
    ("signed 64 GiB all-zero image", "verify 92 s, 375 MiB",
     "tests/test_package_tables.py"),
    ("recipes: deep nesting, 1e400, Infinity, a string for a list", "9001 tracebacks; "
     "\"A01\" packed as [\"A\",\"0\",\"1\"]", "tests/test_pack_inputs.py"),
    ("package carrying userdata without --wipe-userdata", "user data overwritten",
     "tests/test_flash_e2e.py::test_userdata_is_wiped_only_when_asked "
     "tests/test_emulator_device.py::test_running_slot_is_never_written_and_userdata_needs_"
     "consent"),
    ("HTTP: bad Content-Length, trickle, endless body, two fetches into one cache",
     "accepted; hangs; 4.7 GB written; 9 of 10 rounds 9001", "tests/test_fetch_hostile.py"),
    ("socket:// / ser2net reads, rfc2217 defaults, pty name, idle link, handshake timeout",
     "64 MiB backup > 300 s on socket://; rfc2217 9020; pts moves; fastboot hangs",
     "tests/test_serial_stacks.py tests/test_rfc2217.py tests/test_liveness.py"),
    ("hostile EDL device (Sahara/Firehose misbehaviour)", "a log flood hung at 293 MiB; "
     "a missing final ACK waited 120 s", "tests/test_hostile_edl.py"),
    ("EDL power loss at every Firehose step, then a rerun", "no such fault",
     "tests/test_edl_power_loss.py"),
    ("fuzz suite (every parser a stranger can feed)", "none", "tests/fuzz"),
]


def run(selection: str, fast: bool, workdir: Path, index: int) -> dict[str, object]:
    """Run one selection; its counts, wall seconds and the CLI cases' exit/RSS lines."""
    junit = workdir / f"junit-{index}.xml"
    report = workdir / f"hostile-{index}.jsonl"
    words = selection.split(" -k ", 1)
    args = words[0].split()
    if len(words) > 1:
        args += ["-k", words[1].strip("'")]
    marker = "not slow" if fast else ""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker,
               f"--junitxml={junit}", *args]
    env = dict(os.environ, ZFLASH_HOSTILE_REPORT=str(report))
    subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    counts = {name: int(suite.get(name, "0")) for name in ("tests", "failures", "errors",
                                                             "skipped")}
    lines = [json.loads(line) for line in report.read_text().splitlines()] \
        if report.exists() else []
    return {**counts, "seconds": float(suite.get("time", "0")), "cli": lines}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="leave the slow cases out")
    parser.add_argument("--only", default="", help="only the cases whose text has this")
    options = parser.parse_args()
    print("| issue 14 case | before (issue) | after: tests passed / run | slowest CLI case "
          "(exit, s, peak RSS) | suite s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for index, (case, before, selection) in enumerate(CASES):
            if options.only not in case:
                continue
            result = run(selection, options.fast, Path(tmp), index)
            bad = int(result["failures"]) + int(result["errors"])  # type: ignore[arg-type]
            ran = int(result["tests"]) - int(result["skipped"])  # type: ignore[arg-type]
            passed = f"{ran - bad} / {ran}" + (f", {result['skipped']} xfail or skipped"
                                               if result["skipped"] else "")
            cli = result["cli"]
            worst = max(cli, key=lambda c: c["seconds"], default=None)  # type: ignore[arg-type]
            slowest = (f"{worst['exit']}, {worst['seconds']} s, {worst['peak_rss_mib']} MiB"
                       if worst else "-")
            print(f"| {case} | {before} | {passed} | {slowest} | "
                  f"{result['seconds']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
