#!/usr/bin/env python3
"""Fastboot over TCP: the stock `fastboot` client against zflash's, on the same emulator.

The emulator runs in its own process (so it never shares a GIL with the zflash client) with
one 256 MiB slotted partition and max-download-size 256 MiB, and the clients flash the same
256 MiB image into it, alternating: the stock client as a process (`fastboot -s tcp:...
flash system IMG`), zflash's client as a library call (`FastbootClient.flash`, timed in
this process from connect to the flash OKAY), and zflash's CLI as a process (`python -m
zflash fastboot ... flash`), which adds the interpreter start and the CLI's imports.
Before each run the partition is erased and an untimed getvar waits until the device has
finished the previous connection; after it the partition is checked against the image.
Not a test: the table goes into the README. Target: zflash client / stock <= 1.1.

    python bench/bench_fastboot.py                 # 256 MiB, 3 rounds each
    python bench/bench_fastboot.py --size-mib 64 --rounds 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MIB = 1 << 20


def serve(state: Path, size: int) -> None:
    """Child process: the emulated device, until stdin closes."""
    from zflash.emulator.device import EmulatedDevice
    from zflash.emulator.fastboot_server import FastbootTcpServer
    from zflash.emulator.storage import PartitionSpec, Profile, Storage
    profile = Profile(partitions=[PartitionSpec("system", size, True)], max_download_size=size)
    device = EmulatedDevice(Storage.create(state, profile))
    with FastbootTcpServer(device) as server:
        print(server.port, flush=True)
        sys.stdin.read()


def make_image(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(size // MIB):
            block = os.urandom(MIB)
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    fastboot = shutil.which("fastboot")
    if not fastboot:
        sys.exit("the stock client is missing: apt install fastboot")
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="zflash-bench-fb-") as tmp:
        work = Path(tmp)
        image = work / "system.img"
        want = make_image(image, size)
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(work / "dev"),
                                  str(size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        try:
            port = int(child.stdout.readline())  # type: ignore[union-attr]
            run_rounds(fastboot, port, image, want, work / "dev", args.rounds, size)
        finally:
            child.stdin.close()  # type: ignore[union-attr]
            child.wait(30)


def run_rounds(fastboot: str, port: int, image: Path, want: str, state: Path, rounds: int,
               size: int) -> None:
    from zflash.targets.fastboot.client import FastbootClient
    serial = f"tcp:127.0.0.1:{port}"

    def library() -> float:
        started = time.perf_counter()
        with FastbootClient.connect(serial) as client:
            client.flash("system", image)
        return time.perf_counter() - started

    clients = {
        "stock fastboot": lambda: timed([fastboot, "-s", serial, "flash", "system",
                                         str(image)]),
        "zflash client": library,
        "zflash CLI": lambda: timed([sys.executable, "-m", "zflash", "fastboot", "-s",
                                     serial, "flash", "system", str(image)]),
    }
    times: dict[str, list[float]] = {name: [] for name in clients}
    partition = state / "partitions" / "system_a.img"
    for round_no in range(rounds):
        for name, run in clients.items():
            with FastbootClient.connect(serial) as client:
                client.command("erase:system_a")
            with FastbootClient.connect(serial) as client:  # the device is idle again
                client.getvar("product")
            times[name].append(run())
            with FastbootClient.connect(serial) as client:
                client.getvar("product")
            if file_sha256(partition) != want:
                sys.exit(f"{name}: partition differs from the image after round {round_no}")
    print(f"fastboot over TCP, {size // MIB} MiB raw image, max-download-size "
          f"{size // MIB} MiB, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"rounds alternate stock / client / CLI")
    print(f"{'client':<16}" + "".join(f"{'run ' + str(i + 1):>9}" for i in range(rounds)) +
          f"{'median':>9}{'MB/s':>8}{'ratio':>7}")
    stock = statistics.median(times["stock fastboot"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<16}" + "".join(f"{v:>8.2f}s" for v in values) +
              f"{median:>8.2f}s{size / median / 1e6:>8.0f}{median / stock:>7.2f}")
    print("ratio = median / stock median (target for the zflash client: <= 1.10). "
          "'zflash client' is the library call (FastbootClient.flash) timed in-process; "
          "'zflash CLI' adds the interpreter start and the CLI's imports.")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
