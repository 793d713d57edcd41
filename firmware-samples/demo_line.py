#!/usr/bin/env python3
"""`make demo-line`: a small factory line. Four emulated devices are plugged in one after
another (`zflash emulate --devices 4` with a schedule; their ptys appear as they are
plugged), one `zflash station --watch` flashes each as it appears, in parallel; device 3 has
another baseband and is refused with 9040; the station prints its summary and ends by itself
after four devices (--max-devices), exiting 60 ("some devices failed; see the report")."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ZFLASH = [sys.executable, "-m", "zflash"]
PUB = str(HERE / "keys" / "zx-demo-TEST-ONLY-signing.pub.pem")
GOOD = HERE / "zx-demo-1.1.0.zpk"
DEVICES = 4
OTHER_BASEBAND = 3
#: device N plugged in at N - 1 seconds, each link at 150 kB/s (a couple of seconds a flash)
SCHEDULE = "".join(f"{i - 1:g} plug {i}\n" for i in range(1, DEVICES + 1)) + "120 stop\n"
RATE = "150000"
SOME_FAILED = 60  # error 9060


def main() -> None:
    if not GOOD.exists():
        subprocess.run([sys.executable, str(HERE / "build.py")], check=True)
    work = Path(tempfile.mkdtemp(prefix="zflash-line-"))
    line = work / "line"
    (work / "schedule.txt").write_text(SCHEDULE)
    emulate = [*ZFLASH, "emulate", "--devices", str(DEVICES), "--state", str(line), "--pty",
               "--rate", RATE, "--trust", PUB, "--schedule", str(work / "schedule.txt"),
               "--device-option", f"{OTHER_BASEBAND}:baseband=ZXB-900"]
    print(f"$ zflash {' '.join(emulate[3:])}\n{SCHEDULE}", flush=True)
    emulator = subprocess.Popen(emulate, stdout=subprocess.PIPE, text=True)
    try:
        urls = [emulator.stdout.readline().strip() for _ in range(DEVICES)] \
            if emulator.stdout else []
        if not all(urls):
            sys.exit("demo-line failed: the emulated line did not start")
        station = ["station", str(GOOD), "--trust", PUB, "--tty", str(line / "dev*.tty"),
                   "--watch", "--max-devices", str(DEVICES),
                   "--report", str(work / "report.json"), "--log-dir", str(work / "logs")]
        print(f"$ zflash {' '.join(station)}", flush=True)
        try:
            result = subprocess.run([*ZFLASH, *station], timeout=180)
        except subprocess.TimeoutExpired:
            sys.exit("demo-line failed: the station did not finish within 180 s")
        report_file = work / "report.json"
        report = json.loads(report_file.read_text()) if report_file.exists() else {}
        print(f"\nstation exit status {result.returncode}; report {report_file}:")
        for row in report_rows(report):
            print("  " + row)
        if result.returncode != SOME_FAILED:
            sys.exit(f"demo-line failed: expected exit {SOME_FAILED} (one device on another "
                     f"baseband), got {result.returncode}")
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ndemo-line finished: {DEVICES - 1} devices flashed, device {OTHER_BASEBAND} "
          "refused with 9040 (another baseband)")


def report_rows(report: object) -> list[str]:
    """One line per device from the run report (whatever else the report holds)."""
    devices = report.get("devices", []) if isinstance(report, dict) else []
    rows = []
    for device in devices if isinstance(devices, list) else []:
        if isinstance(device, dict):
            who = device.get("serial") or device.get("port") or device.get("url") or "?"
            rows.append(f"{who}: {device.get('result', device.get('code', '?'))}")
    return rows or [json.dumps(report)[:400]]


if __name__ == "__main__":
    main()
