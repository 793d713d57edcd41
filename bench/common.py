"""Helpers the benchmarks share: images, packing, the emulator as a process, timing, memory.

Everything drives zflash through its command line (`zflash pack`, `zflash emulate`,
`zflash flash`) as separate processes, as a user runs it, so a benchmark measures what a
user gets and does not depend on internals that are being refactored.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
KEY = REPO / "firmware-samples" / "keys" / "zx-demo-TEST-ONLY-signing.pem"
PUB = REPO / "firmware-samples" / "keys" / "zx-demo-TEST-ONLY-signing.pub.pem"
MIB = 1 << 20
ZFLASH = [sys.executable, "-m", "zflash"]


def zflash_command() -> list[str]:
    """The installed console script next to this interpreter (what a user types), else -m."""
    script = Path(sys.executable).with_name("zflash")
    return [str(script)] if script.exists() else list(ZFLASH)


def make_image(path: Path, size: int, kind: str) -> None:
    """random: incompressible. mixed: per MiB, a quarter random, a quarter text, half zeros
    (the shape of a real system image: code, text, empty space)."""
    text = b"zflash benchmark compressible text " * 128
    with open(path, "wb") as out:
        for index in range(0, size, MIB):
            piece = min(MIB, size - index)
            if kind == "random":
                out.write(os.urandom(piece))
                continue
            quarter = piece // 4
            out.write(os.urandom(quarter) + (text * (quarter // len(text) + 1))[:quarter]
                      + bytes(piece - 2 * quarter))


def make_ext4_image(path: Path, size: int, source: Path) -> str | None:
    """An ext4 filesystem of ``size`` bytes holding a copy of ``source`` (mkfs.ext4 -d).

    Returns None on success, else why it could not be made (e2fsprogs missing or failing).
    Fixed UUID, hash seed and timestamps keep the image the same from run to run.
    """
    mkfs = shutil.which("mkfs.ext4") or shutil.which("mke2fs")
    if not mkfs:
        return "mkfs.ext4 not installed (Debian: e2fsprogs)"
    with open(path, "wb") as out:
        out.truncate(size)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000")
    result = subprocess.run([mkfs, "-F", "-q", "-t", "ext4", "-d", str(source),
                             "-U", "8b4c4f1e-6a1c-4c59-9a35-1f0e2d3c4b5a",
                             "-E", "hash_seed=0b7c0d2e-1f30-4a51-8c62-7d93e4a5b6c7",
                             str(path)], capture_output=True, text=True, env=env)
    if result.returncode:
        return f"mkfs.ext4 failed: {result.stderr.strip()[:200]}"
    return None


def pack(image: Path, out: Path, codec: str, partition: str = "system") -> None:
    subprocess.run([*ZFLASH, "pack", "--product", "zx-demo", "--hw-rev", "A01", "--baseband",
                    "ZXB-100", "--version", "1", "--rollback-index", "5", "--build-time", "0",
                    "--image", f"{partition}={image}", "--key", str(KEY), "--codec", codec,
                    "-o", str(out)], check=True, stdout=subprocess.DEVNULL)


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a running process (its peak resident set so far), in MiB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Run:
    seconds: float
    rss_mib: float  # the child's peak RSS (ru_maxrss)
    stdout: str
    stderr: str
    returncode: int


#: GNU time, if installed: it reports the peak RSS of a child it forked itself
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def timed(argv: list[str], check: bool = True) -> Run:
    """Run a process: wall time from spawn to exit, and its own peak RSS.

    The peak RSS comes from GNU time when it is installed: Linux carries the forking
    process's high-water mark across exec into the child's ru_maxrss, so os.wait4 alone
    reports at least the bench's own peak (`true` showed 15.7 MiB, and 216 MiB after the
    bench touched 200 MiB). GNU time forks the command from its own small process. Both
    contenders pay its fork and exec (about a millisecond) alike. Without it, ru_maxrss is
    an upper bound.

    Dirty pages are flushed first (os.sync, outside the clock): the emulator writes
    hundreds of MiB per flash, and the kernel's writeback of an earlier run's data would
    otherwise land in whichever contender runs next (it made the same flash take 0.4 s in
    one round and 1.0 s in the next). Then every file named on the command line is read
    once, also outside the clock, so each contender starts with its input in the page
    cache: on the bench VM a DAMON ``pageout`` scheme evicts file pages left idle for well
    under a minute, so an image was read from the disk in one round and from memory in the
    next, whichever tool read it."""
    os.sync()
    _warm(argv)
    report = None
    command = argv
    if GNU_TIME:
        report = tempfile.NamedTemporaryFile("r", prefix="zflash-bench-rss-", suffix=".txt")
        command = [GNU_TIME, "-f", "%M", "-o", report.name, *argv]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    out = child.stdout.read()  # type: ignore[union-attr]
    err = child.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    rss_mib = usage.ru_maxrss / 1024
    if report is not None:
        with report:
            lines = report.read().split()
        rss_mib = int(lines[-1]) / 1024 if lines and lines[-1].isdigit() else rss_mib
    run = Run(elapsed, rss_mib, out, err, child.returncode)
    if check and child.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({child.returncode}):\n{err[-2000:]}")
    return run


#: one small buffer for ``_warm``, kept: a fresh large one per run would stay in the
#: bench's heap, and a child spawned by vfork reports the parent's pages in its ru_maxrss
_WARM_BUFFER = bytearray(MIB)


def _warm(argv: list[str]) -> None:
    """Read each existing regular file in ``argv`` once (into the page cache)."""
    buffer = _WARM_BUFFER
    for arg in argv:
        path = Path(arg)
        try:
            if not path.is_file():
                continue
            with open(path, "rb", buffering=0) as handle:
                while handle.readinto(buffer):
                    pass
        except OSError:
            continue


def write_profile(path: Path, partition: str, size: int,
                  max_download_size: int = 256 * MIB) -> Path:
    path.write_text(json.dumps({"partitions": [{"name": partition, "size": size,
                                                "slotted": True}],
                                "cache_size": MIB, "max_download_size": max_download_size}))
    return path


class Emulator:
    """`zflash emulate` as a process: its URLs, and its peak RSS while it runs."""

    def __init__(self, state: Path, profile: Path, *, tcp: bool = True,
                 fastboot: bool = False, rate: float | None = None) -> None:
        argv = [*ZFLASH, "emulate", "--state", str(state), "--profile", str(profile),
                "--trust", str(PUB)]
        if tcp:
            argv += ["--tcp", "0"]
        if fastboot:
            argv += ["--fastboot-tcp", "0"]
        if rate:
            argv += ["--rate", str(rate)]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        self.urls = [self.process.stdout.readline().strip()  # type: ignore[union-attr]
                     for _ in range(int(tcp) + int(fastboot))]
        if not all(self.urls):
            self.stop()
            raise SystemExit(f"zflash emulate did not start: {argv}")

    def url(self, scheme: str) -> str:
        return next(u for u in self.urls if u.startswith(scheme))

    @property
    def peak_rss_mib(self) -> float:
        return peak_rss_mib(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(30)


@contextmanager
def emulator(state: Path, profile: Path, **kwargs: object) -> Iterator[Emulator]:
    device = Emulator(state, profile, **kwargs)  # type: ignore[arg-type]
    try:
        yield device
    finally:
        device.stop()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
