#!/usr/bin/env python3
"""EDL link efficiency: Firehose over the emulated USB bus, shaped to 40 MB/s, 1 MiB payload.

Flashes one incompressible (random) image into the emulated EDL device and compares the
time of its data phase (the pipeline's ``transferred`` event) with what the link could
carry in that time. Anchor: qdl on real USB 2 reached 38-44 MB/s with 64 KiB-1 MiB chunks
(qdl#39), i.e. 0.72-0.83 of USB 2's 53.2 MB/s ceiling.

Usage: python bench/bench_edl.py [--mib 32] [--rate 40e6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zflash.emulator.edl_disk import EdlProfile, test_programmer  # noqa: E402
from zflash.emulator.edl_server import EdlDevice, usb_device  # noqa: E402
from zflash.emulator.link import ShapedLink  # noqa: E402
from zflash.emulator.usb_backend import EmulatedUsbBackend  # noqa: E402
from zflash.flash import FlashOptions, flash  # noqa: E402
from zflash.package import keys as keymod  # noqa: E402
from zflash.package.edlspec import EdlSpec, Programmer  # noqa: E402
from zflash.package.writer import PackageInfo, PartitionSource, build_package  # noqa: E402

_BUS: EmulatedUsbBackend | None = None


def backend() -> EmulatedUsbBackend:
    assert _BUS is not None
    return _BUS


def main() -> None:
    global _BUS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--rate", type=float, default=40e6)
    args = parser.parse_args()
    size = args.mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        part = size + (1 << 20)
        profile = EdlProfile(luns=[[["system_a", part], ["system_b", part], ["boot_a", 65536],
                                    ["boot_b", 65536], ["vbmeta_a", 16384],
                                    ["vbmeta_b", 16384]]],
                             lun_bytes=[2 * part + (4 << 20)])
        device = EdlDevice(root / "dev", profile)
        usb = usb_device(device, wrap=lambda link: ShapedLink(link, args.rate))
        _BUS = EmulatedUsbBackend([usb])
        os.environ["ZFLASH_USB_BACKEND"] = f"{__name__}:backend"
        image = root / "system.img"
        image.write_bytes(os.urandom(size))
        key = keymod.generate("ed25519")
        trust = keymod.TrustStore()
        trust.add(key.public_key())
        spec = EdlSpec((profile.hw_id,), (profile.oem_key_hash,),
                       Programmer("prog.elf", test_programmer()))
        info = PackageInfo("bench", ("A01",), ("ZXB-100",), "1", 2, 0, 0, edl=spec)
        package = root / "bench.zpk"
        build_package(info, [PartitionSource("system", image, True)], [key], package)
        events: list[dict] = []
        started = time.monotonic()
        flash("usb://05c6:9008", package, trust, FlashOptions(delta=False, reboot=False,
                                                              accept_unverifiable=True),
              events.append)
        total = time.monotonic() - started
        moved = next(e for e in events if e["event"] == "transferred")
        seconds = float(moved["seconds"])
        rate = size / seconds
        print(f"payload {size >> 20} MiB incompressible, link {args.rate / 1e6:.0f} MB/s, "
              f"Firehose payload 1 MiB")
        print(f"data phase {seconds:.3f} s = {rate / 1e6:.2f} MB/s, efficiency "
              f"{rate / args.rate:.3f} (whole flash incl. upload/verify/switch {total:.2f} s)")
        print("anchor: qdl on real USB 2, 38-44 MB/s of 53.2 MB/s (0.72-0.83), qdl#39")
        _BUS.shutdown()


if __name__ == "__main__":
    main()
