#!/usr/bin/env python3
"""Flash throughput against the emulated device: unshaped loopback TCP, and shaped links.

The emulator and the flasher run as separate processes (`zflash emulate`, `zflash flash`),
as a user would run them. For each case the table gives the end-to-end time (connect to
done), the transfer phase alone (blocks on the wire, from the `transferred` event), the
payload efficiency against the shaped rate, and peak resident memory of both processes.
Not a test: figures go into the README.

    python bench/bench_flash.py                   # all cases
    python bench/bench_flash.py --cases tcp       # one case
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MIB, PUB, ZFLASH, make_image, pack, peak_rss_mib  # noqa: E402


def run_case(name: str, image_kind: str, size: int, codec: str, rate: float | None,
             workdir: Path, extra: list[str]) -> dict[str, object]:
    image, package = workdir / f"{name}.img", workdir / f"{name}.zpk"
    make_image(image, size, image_kind)
    pack(image, package, codec)
    profile = workdir / "profile.json"
    profile.write_text(json.dumps({"partitions": [{"name": "system", "size": 1 << 30,
                                                   "slotted": True}], "cache_size": MIB}))
    state = workdir / f"state-{name}"
    emulate = [*ZFLASH, "emulate", "--state", str(state), "--profile", str(profile), "--tcp",
               "0", "--trust", str(PUB)] + (["--rate", str(rate)] if rate else [])
    emulator = subprocess.Popen(emulate, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
    try:
        url = emulator.stdout.readline().strip()  # type: ignore[union-attr]
        started = time.perf_counter()
        child = subprocess.Popen([*ZFLASH, "flash", str(package), "-d", url, "--trust",
                                  str(PUB), "--no-reboot", "--json", *extra],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out = child.stdout.read()  # type: ignore[union-attr]
        err = child.stderr.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if child.returncode:
            raise SystemExit(f"{name}: flash failed ({child.returncode}): {err}")
        emulator_rss = peak_rss_mib(emulator.pid)
    finally:
        emulator.terminate()
        emulator.wait()
    events = [json.loads(line) for line in out.splitlines()]
    done = next(e for e in events if e["event"] == "done")
    moved = next(e for e in events if e["event"] == "transferred")
    transfer_rate = moved["bytes"] / moved["seconds"] if moved["seconds"] else 0.0
    image.unlink()
    package_size = package.stat().st_size
    package.unlink()
    return {"case": name, "image": f"{image_kind} {size / MIB:g} MiB", "codec": codec,
            "link": f"{rate:,.0f} B/s" if rate else "loopback TCP",
            "package_MiB": round(package_size / MIB, 1), "sent_MiB": round(done["sent_bytes"] / MIB, 2),
            "wall_s": round(wall, 2), "flash_s": done["seconds"],
            "transfer_s": moved["seconds"],
            "transfer_MBps": round(transfer_rate / 1e6, 3),
            "image_MBps": round(done["image_bytes"] / done["seconds"] / 1e6, 3),
            "efficiency": round(transfer_rate / rate, 3) if rate else None,
            "host_rss_MiB": round(usage.ru_maxrss / 1024),
            "emulator_rss_MiB": round(emulator_rss)}


CASES = {
    "tcp": ("random", 256 * MIB, "none", None, []),
    "tcp-mixed-zlib": ("mixed", 256 * MIB, "zlib", None, []),
    "usb2": ("random", 64 * MIB, "none", 40e6, []),
    "usb2-mixed-zlib": ("mixed", 64 * MIB, "zlib", 40e6, []),
    "serial": ("random", MIB, "none", 92160, ["--max-data", "65536", "--window", "4"]),
    "serial-mixed-zlib": ("mixed", 4 * MIB, "zlib", 92160,
                          ["--max-data", "65536", "--window", "4"]),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.platform()}")
    columns = ["case", "image", "codec", "link", "package_MiB", "sent_MiB", "flash_s",
               "transfer_MBps", "image_MBps", "efficiency", "host_rss_MiB", "emulator_rss_MiB"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for name in args.cases.split(","):
            row = run_case(name, *CASES[name][:4], Path(tmp), CASES[name][4])
            print("| " + " | ".join(str(row[c]) for c in columns) + " |", flush=True)


if __name__ == "__main__":
    main()
