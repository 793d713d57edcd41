#!/usr/bin/env python3
"""Station throughput: N = 1, 4, 8, 16 emulated devices, each link shaped to 4 MB/s.

One `zflash emulate --devices N` process serves the line (one TCP link per device, each
paced by --rate); one `zflash station --once` run flashes every device. For each N the table
gives the station's wall time, the aggregate rate (bytes sent to all devices / wall time),
the target 0.9 x N x the single-device rate, and host CPU seconds and RSS per device, for the
station and for the emulator. Not a test: the table goes into bench/results-station.md and
the README.

    python bench/bench_station.py                      # N = 1, 4, 8, 16
    python bench/bench_station.py --counts 1,8 --image-mib 16
    python bench/bench_station.py --mode processes     # baseline: one `zflash flash` each
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import KEY, MIB, PUB, ZFLASH, peak_rss_mib  # noqa: E402  (bench/ is on sys.path)

RESULTS = Path(__file__).resolve().parent / "results-station.md"
RATE = 4_000_000
CLK = os.sysconf("SC_CLK_TCK")
COLUMNS = ["N", "wall_s", "sent_MB", "aggregate_MBps", "target_MBps", "meets_target",
           "station_cpu_s_per_dev", "station_rss_MiB", "station_rss_MiB_per_dev",
           "emulator_cpu_s_per_dev", "emulator_rss_MiB"]


def pack(workdir: Path, size: int) -> Path:
    """A package of one incompressible slotted image (the link, not zlib, sets the pace)."""
    image, package = workdir / "system.img", workdir / "bench.zpk"
    with open(image, "wb") as out:
        for _ in range(size // MIB):
            out.write(os.urandom(MIB))
    subprocess.run([*ZFLASH, "pack", "--product", "zx-demo", "--hw-rev", "A01", "--baseband",
                    "ZXB-100", "--version", "1", "--rollback-index", "5", "--build-time", "0",
                    "--image", f"system={image}", "--key", str(KEY), "--codec", "none",
                    "-o", str(package)], check=True, stdout=subprocess.DEVNULL)
    image.unlink()
    return package


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def sent_bytes(stdout: str, report: Path | None) -> int:
    """Bytes sent to every device: the `done` events of the NDJSON stream, else the report."""
    total, seen = 0, False
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "done" and "sent_bytes" in event:
            total += int(event["sent_bytes"])
            seen = True
    if seen or report is None or not report.exists():
        return total
    devices = json.loads(report.read_text()).get("devices", [])
    return sum(int(d.get("sent_bytes", d.get("bytes_sent", 0))) for d in devices)


def run_measured(args: list[str]) -> tuple[int, str, str, float, float]:
    """Run one process; its exit status, stdout, stderr, CPU seconds and peak RSS (MiB)."""
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(child.stdout.read()))  # type: ignore
    reader.start()
    err = child.stderr.read()  # type: ignore[union-attr]
    reader.join()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return (child.returncode, out[0], err, usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss / 1024)


def run_station(urls: list[str], package: Path, workdir: Path) -> tuple[int, str, str, float,
                                                                         float]:
    args = [*ZFLASH, "station", str(package), "--trust", str(PUB), "--once", "--json",
            "--report", str(workdir / "report.json")]
    for url in urls:
        args += ["-d", url]
    return run_measured(args)


def run_processes(urls: list[str], package: Path) -> tuple[int, str, str, float, float]:
    """Baseline: one `zflash flash` process per device; CPU and RSS summed over them."""
    results: list[tuple[int, str, str, float, float]] = []
    threads = [threading.Thread(target=lambda u=url: results.append(run_measured(
        [*ZFLASH, "flash", str(package), "-d", u, "--trust", str(PUB), "--json"])))
        for url in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    status = next((r[0] for r in results if r[0]), 0)
    return (status, "\n".join(r[1] for r in results), "\n".join(r[2] for r in results),
            sum(r[3] for r in results), sum(r[4] for r in results))


def run_case(count: int, package: Path, workdir: Path, mode: str) -> dict[str, object]:
    profile = workdir / "profile.json"
    profile.write_text(json.dumps({"partitions": [{"name": "system", "size": 256 * MIB,
                                                   "slotted": True}], "cache_size": MIB}))
    state = workdir / f"line-{count}"
    emulator = subprocess.Popen([*ZFLASH, "emulate", "--devices", str(count), "--state",
                                 str(state), "--profile", str(profile), "--tcp", "0",
                                 "--rate", str(RATE), "--trust", str(PUB)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        urls = [emulator.stdout.readline().strip() for _ in range(count)]  # type: ignore
        emulator_cpu = cpu_seconds(emulator.pid)
        started = time.perf_counter()
        if mode == "station":
            status, out, err, host_cpu, host_rss = run_station(urls, package, workdir)
        else:
            status, out, err, host_cpu, host_rss = run_processes(urls, package)
        wall = time.perf_counter() - started
        emulator_cpu = cpu_seconds(emulator.pid) - emulator_cpu
        emulator_rss = peak_rss_mib(emulator.pid)
    finally:
        emulator.terminate()
        emulator.wait()
    if status:
        raise SystemExit(f"N={count}: {mode} exited {status}:\n{err[-2000:]}")
    sent = sent_bytes(out, workdir / "report.json")
    return {"N": count, "wall_s": round(wall, 2), "sent_MB": round(sent / 1e6, 1),
            "aggregate_MBps": round(sent / wall / 1e6, 2),
            "station_cpu_s_per_dev": round(host_cpu / count, 2),
            "station_rss_MiB": round(host_rss), "station_rss_MiB_per_dev":
                round(host_rss / count, 1),
            "emulator_cpu_s_per_dev": round(emulator_cpu / count, 2),
            "emulator_rss_MiB": round(emulator_rss)}


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", default="1,4,8,16")
    parser.add_argument("--image-mib", type=int, default=16)
    parser.add_argument("--mode", choices=("station", "processes"), default="station")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--no-write", action="store_true", help="Do not update " + RESULTS.name)
    args = parser.parse_args()
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, {platform.platform()}")
    print(f"machine: {machine}", flush=True)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        package = pack(Path(tmp), args.image_mib * MIB)
        for count in (int(c) for c in args.counts.split(",")):
            row = run_case(count, package, Path(tmp), args.mode)
            single = next((r["aggregate_MBps"] for r in rows if r["N"] == 1),
                          row["aggregate_MBps"] if count == 1 else None)
            if single is not None:
                target = 0.9 * count * float(single)  # type: ignore[arg-type]
                row["target_MBps"] = round(target, 2)
                row["meets_target"] = "yes" if float(row["aggregate_MBps"]) >= target else "no"
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    text = table(rows)
    print("\n" + text)
    if not args.no_write:
        RESULTS.write_text(
            f"# zflash station benchmark\n\n`python bench/bench_station.py --counts "
            f"{args.counts} --image-mib {args.image_mib} --mode {args.mode}` on {machine}; "
            f"each device's link shaped to {RATE / 1e6:g} MB/s, a {args.image_mib} MiB "
            "incompressible image. Aggregate = bytes sent to all devices / "
            "wall time of the run; target = 0.9 x N x the N=1 rate.\n\n" + text + "\n")


if __name__ == "__main__":
    main()
