#!/usr/bin/env python3
"""inspect and verify of a signed all-zero image with a huge block table: seconds, peak RSS.

The package is built directly (head + all-zero table, no payload), so making it costs one
SHA-256 pass over the zeros instead of a pack; it is cached in the output folder. Each
command runs as its own `python -m zflash` process so its peak RSS is its own. Not a test.

    python bench/bench_zero_table.py --size-gib 64      # the issue 14 case: 48 MiB table
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from zflash.package import keys as keymod  # noqa: E402
from zflash.package.format import (ENTRY_SIZE, KIND_ZERO, BlockEntry, Header,  # noqa: E402
                                   Manifest, PartitionEntry)
from zflash.package.reader import zero_digest  # noqa: E402
from zflash.package.signing import encode_signatures, sign  # noqa: E402

KEY = REPO / "firmware-samples" / "keys" / "zx-demo-TEST-ONLY-signing.pem"
PUB = REPO / "firmware-samples" / "keys" / "zx-demo-TEST-ONLY-signing.pub.pem"
BLOCK = 64 << 10


def zero_sha256(size: int) -> str:
    piece = bytes(16 << 20)
    digest = hashlib.sha256()
    left = size
    while left:
        n = min(left, len(piece))
        digest.update(memoryview(piece)[:n])
        left -= n
    return digest.hexdigest()


def build(path: Path, size: int) -> None:
    count = -(-size // BLOCK)
    entry = BlockEntry(zero_digest(BLOCK), KIND_ZERO, 0, 0).encode()
    table = entry * count  # size is a whole number of blocks here
    part = PartitionEntry("userdata", False, size, zero_sha256(size), BLOCK, count,
                          hashlib.sha256(table).hexdigest(), 0)
    manifest = Manifest("zx-demo", ("A01",), ("ZXB-100",), "9.9.9", 1, 0, 1_700_000_000,
                        (part,)).encode()
    signatures = encode_signatures([sign(manifest, keymod.load_private_key(KEY))])
    header = Header(len(manifest), len(signatures), count * ENTRY_SIZE, 0)
    path.write_bytes(header.encode() + manifest + signatures + table)


def run(*args: str) -> tuple[float, int, int]:
    """(seconds, peak RSS in MiB, exit status) of one zflash command."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                          cwd=REPO)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode:
        print(done.stderr.decode()[-500:], file=sys.stderr)
    return seconds, max(peak, before) // 1024, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    size = args.size_gib << 30
    path = args.out / f"zflash-zero-{args.size_gib}g.zpk"
    if not path.exists():
        print(f"building {path} (one SHA-256 pass over {args.size_gib} GiB of zeros)...")
        build(path, size)
    table_mib = (size // BLOCK) * ENTRY_SIZE / (1 << 20)
    print(f"{args.size_gib} GiB all-zero image, {table_mib:.0f} MiB block table")
    # Each measurement in a fresh process tree: RUSAGE_CHILDREN is a running maximum.
    for command in (["inspect", str(path)], ["verify", "--trust", str(PUB), str(path)]):
        seconds, rss, status = _fresh(command)
        print(f"  zflash {command[0]:<8} {seconds:7.1f} s  peak RSS {rss:5d} MiB  exit {status}")


def _fresh(command: list[str]) -> tuple[float, int, int]:
    code = ("import sys; sys.path.insert(0, %r); import bench_zero_table as b; "
            "print(*b.run(*%r))" % (str(Path(__file__).parent), command))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


if __name__ == "__main__":
    main()
