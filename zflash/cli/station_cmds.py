"""``zflash station``: flash every device that shows up, in parallel, and report each.

Settings come from the station file (--config, TOML) with command-line flags overriding it;
the work is done by ``zflash.station``; this module parses, picks the renderer, installs the
stop signals and writes the report. Exit 0 when every device flashed and booted, else 9060.
"""

from __future__ import annotations

import hashlib
import signal
import sys
from pathlib import Path
from typing import Any

import click

from zflash.cli import main
from zflash.cli.common import emit_json, load_trust
from zflash.cli.tls_options import tls_options
from zflash.errors import Code, ZflashError


def _multi(name: str, metavar: str, text: str) -> Any:
    return click.option(name, multiple=True, metavar=metavar, help=text)


@main.command()
@click.argument("package", type=click.Path(path_type=Path), required=False)
@click.option("--latest", metavar="CATALOG_URL",
              help="Fetch the newest package for the first device from this signed catalog, "
                   "once; every device gets that package.")
@click.option("--trust", multiple=True, type=click.Path(path_type=Path),
              help="Trusted public key PEM (repeat).")
@click.option("--trust-dir", type=click.Path(path_type=Path), help="Trust directory.")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Station file (TOML) holding any of these settings; flags override it.")
@click.option("-d", "--device", multiple=True, metavar="URL",
              help="Explicit device URL (tcp://, serial, rfc2217://, usb://, fastboot+tcp://); "
                   "repeat.")
@_multi("--port", "PATH_OR_GLOB", "USB port path or glob (1-1.2, 1-1.*); repeat.")
@_multi("--serial-prefix", "P", "USB serial-number prefix; repeat.")
@_multi("--usb-id", "VID:PID[:KIND]", "USB VID:PID (hex, PID may be *) and interface kind "
                                      "(zdl, fastboot); repeat.")
@_multi("--tty", "GLOB", "Serial port glob (/dev/ttyUSB*, /dev/serial/by-path/...); repeat.")
@click.option("--once/--watch", "once", default=None,
              help="--once (default): flash what is attached now, then exit. --watch: keep "
                   "watching until Ctrl-C / SIGTERM / --max-devices.")
@click.option("--max-devices", type=click.IntRange(1), help="Watch: end after N devices.")
@click.option("--jobs", type=click.IntRange(1), help="At most N devices at once (default: all).")
@click.option("--device-timeout", type=click.FloatRange(0.1), metavar="SECONDS",
              help="Give up on a device after this long.")
@click.option("--retries", type=click.IntRange(0),
              help="Link-loss retries per device, resuming (a refused package is never retried).")
@click.option("--timeout", type=click.FloatRange(0.1, 600),
              help="Seconds to wait for a device to answer (default 5).")
@click.option("--log-dir", type=click.Path(path_type=Path),
              help="One JSONL log per device, named by serial number (or port path).")
@click.option("--report", type=click.Path(path_type=Path), help="Run report (JSON).")
@click.option("--junit", type=click.Path(path_type=Path), help="Run report (JUnit XML).")
@click.option("--json", "as_json", is_flag=True, default=None, help="NDJSON on stdout only.")
@click.option("--no-reboot", is_flag=True, default=None, help="Leave devices in download mode.")
@click.option("--wipe-userdata", is_flag=True, default=None, help="Erase userdata too.")
@click.option("--no-delta", is_flag=True, default=None, help="Send every block.")
@click.option("--accept-unverifiable", is_flag=True, default=None,
              help="Flash although a check cannot be made (each is listed, 9045).")
@click.option("--skip-host-checks", is_flag=True, default=None,
              help="Send without host checks (ZDL devices enforce every rule themselves).")
@click.option("--allow-partial", is_flag=True, default=None,
              help="Fastboot devices: flash a package that does not carry every A/B "
                   "partition (the new slot keeps what it held for the others).")
@click.option("--force-boot-failure", is_flag=True, hidden=True)
@tls_options
def station(package: Path | None, latest: str | None, trust: tuple[Path, ...],
            trust_dir: Path | None, config_path: Path | None, device: tuple[str, ...],
            port: tuple[str, ...], serial_prefix: tuple[str, ...], usb_id: tuple[str, ...],
            tty: tuple[str, ...], once: bool | None, max_devices: int | None,
            jobs: int | None, device_timeout: float | None, retries: int | None,
            timeout: float | None, log_dir: Path | None, report: Path | None,
            junit: Path | None, as_json: bool | None, no_reboot: bool | None,
            wipe_userdata: bool | None, no_delta: bool | None,
            accept_unverifiable: bool | None, skip_host_checks: bool | None,
            allow_partial: bool | None, force_boot_failure: bool, pins: tuple[str, ...],
            pin_file: Path | None, pin_only: bool, ca_file: Path | None, cache_dir: Path | None,
            state_file: Path | None) -> None:
    """Flash every device that shows up (USB ports, serial numbers, tty globs, URLs), in
    parallel, once each; write one log per device and a run report."""
    from zflash.station.config import StationConfig, load_station_file
    base = load_station_file(config_path) if config_path else StationConfig()
    cfg = base.merged({
        "package": package, "latest": latest, "trust": trust, "trust_dir": trust_dir,
        "device": device, "port": port, "serial_prefix": serial_prefix, "usb_id": usb_id,
        "tty": tty, "mode": None if once is None else ("once" if once else "watch"),
        "max_devices": max_devices, "jobs": jobs, "device_timeout": device_timeout,
        "retries": retries, "timeout": timeout, "log_dir": log_dir, "report": report,
        "junit": junit, "json": as_json, "no_reboot": no_reboot,
        "wipe_userdata": wipe_userdata, "no_delta": no_delta,
        "accept_unverifiable": accept_unverifiable, "skip_host_checks": skip_host_checks,
        "allow_partial": allow_partial, "pin": pins, "pin_file": pin_file, "ca_file": ca_file,
        "cache_dir": cache_dir})
    sys.exit(run_station(cfg, force_boot_failure, pin_only, state_file))


def run_station(cfg: Any, force_boot_failure: bool = False, pin_only: bool = False,
                state_file: Path | None = None) -> int:
    """Build the station from checked settings, run it, write the reports; the exit status."""
    from zflash.cli.station_render import StationRenderer
    from zflash.flash import FlashOptions
    from zflash.station.discovery import Discovery
    from zflash.station.scheduler import Station, StationOptions
    from zflash.station.selectors import Selectors, UsbIdFilter
    from zflash.targets.base import LinkOptions

    if (cfg.package is None) == (cfg.latest is None):
        raise ZflashError(Code.USAGE, "give a PACKAGE file or --latest CATALOG_URL (not both)")
    if cfg.mode == "once" and cfg.max_devices is not None:
        raise ZflashError(Code.USAGE, "--max-devices applies to --watch")
    selectors = Selectors(urls=cfg.device, ports=cfg.port, serial_prefixes=cfg.serial_prefix,
                          usb_ids=tuple(UsbIdFilter.parse(u) for u in cfg.usb_id),
                          ttys=cfg.tty)
    for directory in (cfg.log_dir,):
        if directory is not None:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ZflashError(Code.FILE_UNWRITABLE, f"{directory}: {exc.strerror}") from None
    trust = load_trust(cfg.trust, cfg.trust_dir)
    link = LinkOptions(timeout=cfg.timeout)
    mode = "json" if cfg.json else ("terminal" if sys.stderr.isatty() else "pipe")
    discovery = Discovery(selectors)
    package = cfg.package
    if package is None:
        package = _latest_for_first_device(cfg, discovery, link, trust, pin_only, state_file)
    plan = _plan(package, trust, FlashOptions(
        skip_host_checks=cfg.skip_host_checks, reboot=not cfg.no_reboot,
        wipe_userdata=cfg.wipe_userdata, delta=not cfg.no_delta,
        force_boot_failure=force_boot_failure, accept_unverifiable=cfg.accept_unverifiable,
        allow_partial=cfg.allow_partial, link=link))
    renderer = StationRenderer(mode)
    station_ = Station(discovery, plan, StationOptions(
        watch=cfg.mode == "watch", jobs=cfg.jobs, device_timeout=cfg.device_timeout,
        retries=cfg.retries, log_dir=cfg.log_dir, max_devices=cfg.max_devices), renderer)
    previous = {sig: signal.signal(sig, lambda num, _f: station_.stop(signal.Signals(num).name))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = station_.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if cfg.report:
        result.write_json(cfg.report)
    if cfg.junit:
        result.write_junit(cfg.junit)
    counts = result.counts()
    if cfg.json:
        emit_json({"event": "station_report", **counts, "exit_code": result.exit_code,
                   "report": str(cfg.report) if cfg.report else None,
                   "junit": str(cfg.junit) if cfg.junit else None,
                   "records": [d.to_dict() for d in result.devices()]})
    else:
        for device in result.devices():
            click.echo(f"{device.serial or device.port or device.url}: "
                       f"{'ok' if device.ok else f'{device.result} {device.code}'}")
        click.echo(f"ok {counts['ok']}  failed {counts['failed']}  "
                   f"interrupted {counts['interrupted']}")
    if result.exit_code:
        error = ZflashError(Code.STATION_FAILURES, f"{counts['failed']} failed, "
                                                   f"{counts['interrupted']} interrupted of "
                                                   f"{counts['devices']} devices")
        if not cfg.json:
            click.echo(f"error {error.code}: {error.info.meaning}", err=True)
            click.echo(f"  {error.detail}", err=True)
        return error.exit_status
    return 0


def _plan(package: Path, trust: Any, options: Any) -> Any:
    """The package, opened and hashed once for the whole run (a bad one fails here)."""
    from zflash.package.reader import Package
    from zflash.station.job import FlashPlan
    with Package(package) as opened:
        manifest = opened.manifest
    digest = hashlib.sha256()
    try:
        with open(package, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{package}: {exc.strerror}") from None
    return FlashPlan(package, trust, options, digest.hexdigest(), manifest.version,
                     manifest.product)


def _latest_for_first_device(cfg: Any, discovery: Any, link: Any, trust: Any, pin_only: bool,
                             state_file: Path | None) -> Path:
    """--latest: the catalog's newest package for the first device seen, fetched once."""
    import time
    from zflash.cli.device_cmds import fetch_latest_for
    while True:
        seen = discovery.scan()
        if seen:
            first = next(iter(seen.values()))
            return fetch_latest_for(first.url, link, cfg.latest, trust, bool(cfg.json),
                                    cfg.pin, cfg.pin_file, pin_only, cfg.ca_file,
                                    cfg.cache_dir, state_file)
        if cfg.mode != "watch":
            raise ZflashError(Code.DEVICE_NOT_FOUND, "--latest: no device attached to pick "
                                                     "the package for")
        time.sleep(0.2)
