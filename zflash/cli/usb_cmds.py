"""Device access commands: devices, udev-rules, doctor."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from zflash.cli import main
from zflash.cli.common import emit_json
from zflash.usb.devices import Listing, list_devices, wait_for_new
from zflash.usb.doctor import exit_status, run_checks
from zflash.errors import Code, ZflashError
from zflash.usb.udev import (
    INSTALL_DIR,
    RELOAD_HINT,
    RULES_NAME,
    install_rules,
    render_rules,
)
from zflash.usb.ids import config_path, load_id_table

_FOREVER = "forever"


def usb_id_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--usb-id", "usb_ids", multiple=True, metavar="VID:PID[:KIND]",
        help=f"Also match this device (hex ids; KIND zdl, fastboot or serial). Repeat. "
             f"Permanent ones go in {config_path()}.")(func)


def _wait_seconds(text: str | None) -> float | None:
    if text is None or text == _FOREVER:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ZflashError(Code.USAGE, f"--wait expects a number of seconds, got {text!r}")
    return value


def _render(listing: Listing) -> None:
    if not listing.usb and not listing.serial:
        click.echo("no device in download mode found")
        return
    rows = [("USB", d.vid, d.pid, d.serial or "?", d.port_path or "?", d.protocol,
             d.speed or "?", d.url + ("" if d.accessible else "  (permission denied)"))
            for d in listing.usb]
    table = [("KIND", "ID", "SERIAL", "PORT", "PROTOCOL", "SPEED / BRIDGE", "URL")]
    table += [(k, f"{v:04x}:{p:04x}", s, port, proto, speed, url)
              for k, v, p, s, port, proto, speed, url in rows]
    table += [("SERIAL", p.id_text, (p.serial or "?") if p.usb else "-", p.device, "serial",
               p.known or p.description or ("USB serial" if p.usb else "not USB"), p.url)
              for p in listing.serial]
    header = table[0]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [str(c).ljust(w) for c, w in zip(row, widths)]
        click.echo("  ".join(cells + [row[-1]]).rstrip())


@main.command("devices")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--wait", "wait", is_flag=False, flag_value=_FOREVER, default=None,
              metavar="[SECONDS]",
              help="Block until a new device appears (for ever, or at most SECONDS); "
                   "list only the new one(s).")
@click.option("--tty", "tty_globs", multiple=True, metavar="GLOB",
              help="Also list serial ports matching GLOB, USB or not (/dev/ttyS*, "
                   "/dev/serial/by-path/*, an emulator's STATE/dev*.tty). Repeat.")
@usb_id_option
def devices_cmd(as_json: bool, wait: str | None, tty_globs: tuple[str, ...],
                usb_ids: tuple[str, ...]) -> None:
    """List devices in download mode: USB (ZDL, fastboot) and serial ports (USB-serial
    bridges with their USB serial number; other ports with --tty)."""
    table = load_id_table(usb_ids)
    if wait is None:
        listing = list_devices(table, tty_globs=tty_globs)
    else:
        seconds = _wait_seconds(wait)
        click.echo("waiting for a new device" + (f" (up to {seconds:g} s)" if seconds is not None
                                                 else "") + "...", err=True)
        listing = wait_for_new(table, seconds, tty_globs=tty_globs)
    for note in listing.notes:
        click.echo(f"note: {note}", err=True)
    if as_json:
        emit_json(listing.to_dict())
    else:
        _render(listing)


@main.command("udev-rules")
@click.option("--install", is_flag=True, help=f"Write the rules to {INSTALL_DIR / RULES_NAME}.")
@click.option("--path", type=click.Path(path_type=Path),
              help="With --install: write to PATH instead.")
@usb_id_option
def udev_rules_cmd(install: bool, path: Path | None, usb_ids: tuple[str, ...]) -> None:
    """Print (or install) the udev rules that give non-root users access to devices."""
    if path is not None and not install:
        raise ZflashError(Code.USAGE, "--path only applies with --install")
    text = render_rules(load_id_table(usb_ids))
    if not install:
        click.echo(text, nl=False)
        return
    target = install_rules(text, path)
    click.echo(f"wrote {target}")
    click.echo(f"now run: {RELOAD_HINT}")
    click.echo("then replug the device (or log out and in, for the uaccess tag to apply)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@usb_id_option
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, usb_ids: tuple[str, ...]) -> None:
    """Check that this machine can reach devices: libusb, permissions, udev rules, groups.

    Exit status 0 unless something blocks flashing now (no libusb, or a connected device
    that cannot be opened); then the status of that error code (e.g. 22, 29).
    """
    checks = run_checks(load_id_table(usb_ids))
    status = exit_status(checks)
    if as_json:
        emit_json({"checks": [c.to_dict() for c in checks], "ok": status == 0,
                   "exit_status": status})
    else:
        for check in checks:
            click.echo(f"{check.status.upper():<4}  {check.name}: {check.detail}")
            if check.fix:
                click.echo(f"      fix: {check.fix}")
        problems = sum(c.status in ("warn", "fail") for c in checks)
        click.echo("all good" if not problems else
                   f"{problems} problem(s); " + ("flashing is blocked" if status
                                                 else "flashing is not blocked"))
    if status:
        ctx.exit(status)
