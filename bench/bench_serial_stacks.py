#!/usr/bin/env python3
"""Backup throughput through the serial stacks labs use: tcp://, socat socket://, ser2net.

One emulated device (in this process) with a BIG-MiB partition of random bytes serves a pty
and TCP; `zflash backup` (a subprocess, as a user runs it) reads the partition back over:

  tcp          the emulator's own TCP listener (the reference: no serial stack)
  socket       socat TCP-LISTEN -> the pty, opened as socket://127.0.0.1:PORT
  ser2net-raw  ser2net raw TCP accepter -> the pty, opened as socket://
  ser2net-2217 ser2net telnet(rfc2217) accepter -> the pty, opened as rfc2217://

Each case has a deadline (--limit, default 300 s); a case that does not finish says so.
Not a test: the figures go into the report / README.

    python bench/bench_serial_stacks.py                 # 64 MiB, all cases
    python bench/bench_serial_stacks.py --mib 8 --cases socket,ser2net-2217
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from serial_peers import ser2net, socat  # noqa: E402

from zflash.emulator.runner import EmulatorRunner  # noqa: E402
from zflash.emulator.storage import PartitionSpec, Profile  # noqa: E402

MIB = 1 << 20
CASES = ("tcp", "socket", "ser2net-raw", "ser2net-2217")


@contextlib.contextmanager
def device_url(case: str, runner: EmulatorRunner, pty: str, tcp: str,
               workdir: Path) -> Iterator[str]:
    """The URL `zflash backup` opens for ``case``, with its peer running meanwhile."""
    if case == "tcp":
        yield tcp
    elif case == "socket":
        with socat(_tool("socat"), pty) as port:
            yield f"socket://127.0.0.1:{port}"
    else:
        with ser2net(_tool("ser2net"), pty, workdir, rfc2217=case == "ser2net-2217") as port:
            scheme = "rfc2217" if case == "ser2net-2217" else "socket"
            yield f"{scheme}://127.0.0.1:{port}"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        sys.exit(f"{name} is not installed (Debian: apt-get install {name})")
    return path


def run_case(case: str, runner: EmulatorRunner, pty: str, tcp: str, workdir: Path,
             expected: str, limit: float) -> str:
    out = workdir / f"{case}.img"
    with device_url(case, runner, pty, tcp, workdir) as url:
        start = time.monotonic()
        try:
            result = subprocess.run([sys.executable, "-m", "zflash", "backup", "big", "-d", url,
                                     "-o", str(out), "--timeout", "30"],
                                    capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return f"did not finish in {limit:g} s"
        seconds = time.monotonic() - start
    if result.returncode != 0:
        last = " | ".join(result.stderr.strip().splitlines()[-3:])
        return f"exit {result.returncode} after {seconds:.1f} s: {last[:120]}"
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    ok = "ok" if digest == expected else "WRONG DATA"
    size = runner.storage.spec("big").size
    return f"{seconds:6.2f} s  {size / MIB / seconds:7.1f} MiB/s  {ok}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="partition size in MiB")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--limit", type=float, default=300.0, help="seconds per case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        profile = Profile(partitions=[PartitionSpec("big", args.mib * MIB, False)],
                          cache_size=MIB)
        runner = EmulatorRunner(workdir / "dev", profile)
        image = runner.storage.partition_path("big", None)
        with open(image, "wb") as handle:
            for _ in range(args.mib):
                handle.write(os.urandom(MIB))
        expected = hashlib.sha256(image.read_bytes()).hexdigest()
        with runner:
            pty = runner.start_pty()
            tcp = runner.start_tcp(0)
            pty_path = pty.removeprefix("serial://")
            print(f"backup of a {args.mib} MiB partition (python {sys.version.split()[0]})")
            for case in args.cases.split(","):
                print(f"{case:13s} {run_case(case, runner, pty_path, tcp, workdir, expected, args.limit)}",
                      flush=True)


if __name__ == "__main__":
    main()
