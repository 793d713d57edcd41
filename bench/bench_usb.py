#!/usr/bin/env python3
"""ZDL flash throughput over the emulated USB bus: the cost of pyusb + the engines per byte.

No real bus limits this run (the emulated backend moves bytes in memory), so the figure is
the host's and device's CPU cost, both in this one process. Not a test.

    python bench/bench_usb.py --size-mib 256
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from zflash.emulator.device import EmulatedDevice  # noqa: E402
from zflash.emulator.storage import PartitionSpec, Profile, Storage  # noqa: E402
from zflash.emulator.usb_backend import EmulatedUsbBackend  # noqa: E402
from zflash.emulator.usb_device import EmulatedUsbDevice  # noqa: E402
from zflash.emulator.zdl_server import ZdlServer  # noqa: E402
from zflash.flash import FlashOptions, flash  # noqa: E402
from zflash.package import keys as keymod  # noqa: E402

KEY = REPO / "firmware-samples" / "keys" / "zx-demo-TEST-ONLY-signing.pem"
PUB = REPO / "firmware-samples" / "keys" / "zx-demo-TEST-ONLY-signing.pub.pem"
MIB = 1 << 20
_BACKEND: EmulatedUsbBackend | None = None


def backend() -> EmulatedUsbBackend:
    assert _BACKEND is not None
    return _BACKEND


def main() -> None:
    global _BACKEND
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--max-data", type=int, default=256 << 10)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        image, package = Path(tmp) / "system.img", Path(tmp) / "system.zpk"
        with open(image, "wb") as out:
            for _ in range(args.size_mib):
                out.write(os.urandom(MIB))
        subprocess.run([sys.executable, "-m", "zflash", "pack", "--product", "zx-demo",
                        "--hw-rev", "A01", "--baseband", "ZXB-100", "--version", "1",
                        "--rollback-index", "5", "--build-time", "0", "--image",
                        f"system={image}", "--key", str(KEY), "--codec", "none", "-o",
                        str(package)], check=True, stdout=subprocess.DEVNULL)
        profile = Profile(partitions=[PartitionSpec("system", 1 << 30, True)],
                          trusted_keys=[PUB.read_text()])
        device = EmulatedDevice(Storage.create(Path(tmp) / "dev", profile))
        usb = EmulatedUsbDevice("BENCH1", "1-1", protocol="zdl", speed="high",
                                server=ZdlServer(device).serve)
        _BACKEND = EmulatedUsbBackend([usb])
        os.environ["ZFLASH_USB_BACKEND"] = f"{__name__}:backend"
        trust = keymod.TrustStore()
        trust.add(keymod.load_public_key(PUB))
        events: list[dict] = []
        started = time.perf_counter()
        options = FlashOptions(reboot=False, delta=False)
        options.session.max_data = args.max_data
        summary = flash("usb://1209:0001?serial=BENCH1", package, trust, options,
                        events.append)
        wall = time.perf_counter() - started
        moved = next(e for e in events if e["event"] == "transferred")
        stats = usb.stats
        print(json.dumps({
            "image_MiB": args.size_mib, "max_data": args.max_data,
            "end_to_end_s": round(wall, 2),
            "end_to_end_MBps": round(summary.image_bytes / wall / 1e6, 1),
            "transfer_s": moved["seconds"],
            "transfer_MBps": round(moved["bytes"] / moved["seconds"] / 1e6, 1),
            "out_transfers": stats.out_transfers,
            "avg_out_transfer_KiB": round(stats.out_bytes / max(1, stats.out_transfers) / 1024, 1),
            "in_transfers": stats.in_transfers, "zlps_out": stats.out_zlps,
        }, indent=1))
        usb.unplug()
        _BACKEND.shutdown()


if __name__ == "__main__":
    main()
