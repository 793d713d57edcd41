#!/usr/bin/env python3
"""Package speed and memory: pack and verify MB/s per codec, against hashlib's own speed.

Each pack and verify runs as a separate `python -m zflash` process so its peak resident
memory (ru_maxrss) can be read on its own. Not a test: figures go into the README.

    python bench/bench_package.py --size-mib 1024            # the 1 GiB verify target
    python bench/bench_package.py --size-mib 2048 --codecs none   # the 2 GiB memory target
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KEY = REPO / "firmware-samples" / "keys" / "zx-demo-TEST-ONLY-signing.pem"
PUB = REPO / "firmware-samples" / "keys" / "zx-demo-TEST-ONLY-signing.pub.pem"
MIB = 1 << 20


def make_image(path: Path, size_mib: int, kind: str) -> None:
    rng = random.Random(7)
    text = b"zflash benchmark compressible text block " * 100
    with open(path, "wb") as out:
        for _ in range(size_mib):
            if kind == "random":
                out.write(os.urandom(MIB))
            else:  # mixed: a quarter random, text, zeros
                choice = rng.randrange(4)
                out.write(os.urandom(MIB) if choice == 0 else
                          bytes(MIB) if choice == 1 else (text * (MIB // len(text) + 1))[:MIB])


def hashlib_speed(size_mib: int) -> float:
    """MB/s of hashlib.sha256 alone over in-memory data (the ceiling for verify)."""
    data = os.urandom(64 * MIB)
    started = time.perf_counter()
    for _ in range(max(1, size_mib // 64)):
        hashlib.sha256(data).digest()
    elapsed = time.perf_counter() - started
    return max(1, size_mib // 64) * 64 * MIB / elapsed / 1e6


def timed(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one child process, from its own rusage (wait4)."""
    started = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{cmd[3]} failed with exit status {child.returncode}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--codecs", default="none,zlib")
    parser.add_argument("--kinds", default="random,mixed")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.platform()}")
    base = hashlib_speed(args.size_mib)
    print(f"hashlib.sha256 alone: {base:.0f} MB/s")
    print("| image | codec | pack MB/s | pack peak RSS MiB | package MiB | verify MB/s | "
          "verify / hashlib | verify peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for kind in args.kinds.split(","):
            image = Path(tmp) / f"{kind}.img"
            make_image(image, args.size_mib, kind)
            size = image.stat().st_size
            for codec in args.codecs.split(","):
                out = Path(tmp) / f"{kind}-{codec}.zpk"
                pack_s, pack_rss = timed([sys.executable, "-m", "zflash", "pack",
                                          "--product", "bench", "--hw-rev", "A", "--baseband",
                                          "B", "--version", "1", "--rollback-index", "0",
                                          "--build-time", "0", "--image", f"system={image}",
                                          "--key", str(KEY), "--codec", codec, "-o", str(out)])
                verify_s, verify_rss = timed([sys.executable, "-m", "zflash", "verify", str(out),
                                              "--trust", str(PUB)])
                verify_rate = size / verify_s / 1e6
                print(f"| {kind} {args.size_mib} MiB | {codec} | {size / pack_s / 1e6:.0f} | "
                      f"{pack_rss:.0f} | {out.stat().st_size / MIB:.0f} | {verify_rate:.0f} | "
                      f"{verify_rate / base:.2f} | {verify_rss:.0f} |", flush=True)
                out.unlink()
            image.unlink()


if __name__ == "__main__":
    main()
