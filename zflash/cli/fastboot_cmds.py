"""``zflash fastboot ...``: the stock fastboot client's verbs, on zflash's fastboot host.

Options follow the stock client (``-s DEVICE``, ``--slot a|b|other|all``, ``--set-active``,
``-S SIZE``) and may be given before the verb, as with ``fastboot``, or after it.
Results go to stdout, device INFO lines and progress to stderr, JSON lines with ``--json``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from zflash.cli import main
from zflash.cli.common import emit_json, verbosity
from zflash.errors import Code, ZflashError

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)[bB]?\s*$")
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30}


def parse_size_option(text: str | None) -> int | None:
    """``-S 256M`` -> bytes; 0 or absent -> None (use the device's max-download-size)."""
    if text is None:
        return None
    match = _SIZE.match(text)
    if not match:
        raise ZflashError(Code.USAGE, f"-S expects SIZE[K|M|G], e.g. 256M, not {text!r}")
    size = int(match.group(1)) << _SHIFT[match.group(2).lower()]
    return size or None


@dataclass
class Options:
    device: str | None = None
    slot: str | None = None
    set_active: str | None = None
    sparse_limit: str | None = None
    timeout: float = 30.0
    as_json: bool = False

    def merged(self, **override: Any) -> "Options":
        values = {k: v for k, v in override.items() if v not in (None, False)}
        return Options(**{**self.__dict__, **values})


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The shared options, accepted on the group (stock style) and on each verb."""
    options = [
        click.option("-s", "--device", "device", metavar="URL",
                     help="Device: fastboot+tcp://HOST[:PORT], tcp:HOST[:PORT], usb://... "
                          "(default $ZFLASH_DEVICE)."),
        click.option("--slot", metavar="a|b|other|all",
                     help="Slot to write (default: the current slot, as fastboot does)."),
        click.option("--set-active", "set_active", is_flag=False, flag_value="",
                     default=None, metavar="[SLOT]",
                     help="Make SLOT (default: the --slot one) active afterwards."),
        click.option("-S", "sparse_limit", metavar="SIZE[K|M|G]",
                     help="Split images larger than SIZE (default: max-download-size)."),
        click.option("--timeout", type=float, default=None,
                     help="Seconds to wait for each answer (default 30)."),
        click.option("--json", "as_json", is_flag=True, help="JSON lines on stdout."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings(ctx: click.Context, **override: Any) -> Options:
    base = ctx.obj if isinstance(ctx.obj, Options) else Options()
    return base.merged(**override)


class Renderer:
    """INFO lines as ``(bootloader) ...`` on stderr, a bar on a terminal, or JSON lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.quiet = verbosity() < 0
        self.terminal = not as_json and sys.stderr.isatty() and not self.quiet
        self.bar: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if self.as_json:
            if kind != "progress" or event["sent"] == event["total"]:
                emit_json(event)
            return
        if kind in ("info", "text"):
            self.close()
            prefix = "(bootloader) " if kind == "info" else ""
            click.echo(f"{prefix}{event['message']}", err=True)
        elif kind == "warning":
            click.echo(f"warning: {event['message']}", err=True)
        elif kind == "progress" and self.terminal:
            if self.bar is None or self.bar.desc != event["what"]:
                self.close()
                from tqdm import tqdm
                self.bar = tqdm(total=event["total"], unit="B", unit_scale=True,
                                unit_divisor=1024, desc=event["what"], file=sys.stderr,
                                leave=False)
            self.bar.update(event["sent"] - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _client(opts: Options) -> Any:
    from zflash.targets.fastboot.client import FastbootClient
    url = opts.device or os.environ.get("ZFLASH_DEVICE")
    if not url:
        raise ZflashError(Code.USAGE, "name the device with -s URL (e.g. "
                                      "-s fastboot+tcp://127.0.0.1:5554) or $ZFLASH_DEVICE")
    return FastbootClient.connect(url, timeout=opts.timeout, on_event=Renderer(opts.as_json))


def _done(opts: Options, text: str, **result: Any) -> None:
    if opts.as_json:
        emit_json({"event": "done", **result})
    else:
        click.echo(text)


# ---------------------------------------------------------------------------------- group
@main.group("fastboot")
@_options
@click.pass_context
def fastboot(ctx: click.Context, **opts: Any) -> None:
    """Talk to an Android fastboot bootloader (or `zflash emulate --fastboot-tcp`)."""
    ctx.obj = Options().merged(**opts)


@fastboot.command("getvar")
@click.argument("name")
@_options
@click.pass_context
def getvar_cmd(ctx: click.Context, name: str, **over: Any) -> None:
    """Print a variable, or every variable with `getvar all`."""
    opts = _settings(ctx, **over)
    with _client(opts) as client:
        if name == "all":
            client.on_event = lambda event: None  # the lines are the result here
            values = client.getvar_all()
            if opts.as_json:
                emit_json({"event": "getvar", "vars": values})
            for key, value in values.items() if not opts.as_json else ():
                click.echo(f"{key}: {value}")
            return
        value = client.getvar(name)
    if value is None:
        raise ZflashError(Code.DEVICE_REFUSED, f"the device does not report {name!r}")
    if opts.as_json:
        emit_json({"event": "getvar", "name": name, "value": value})
    else:
        click.echo(f"{name}: {value}")


@fastboot.command("flash")
@click.argument("partition")
@click.argument("image", required=False, type=click.Path(path_type=Path))
@_options
@click.pass_context
def flash_cmd(ctx: click.Context, partition: str, image: Path | None, **over: Any) -> None:
    """Flash IMAGE (default PARTITION.img) into PARTITION; large images are split."""
    opts = _settings(ctx, **over)
    image = image or Path(f"{partition}.img")
    limit = parse_size_option(opts.sparse_limit)
    with _client(opts) as client:
        names = client.flash(partition, image, opts.slot, limit)
        active = _maybe_set_active(client, opts)
    _done(opts, f"flashed {', '.join(names)}" + (f"; slot {active} active" if active else ""),
          flashed=names, active=active)


def _maybe_set_active(client: Any, opts: Options) -> str | None:
    if opts.set_active is None:
        return None
    slot = opts.set_active or (opts.slot if opts.slot not in (None, "all") else None)
    if slot is None:
        current = client.current_slot()
        if current is None:
            raise ZflashError(Code.SLOT, "--set-active: name a slot; the device reports none")
        slot = current
    return str(client.set_active(slot))


@fastboot.command("erase")
@click.argument("partition")
@_options
@click.pass_context
def erase_cmd(ctx: click.Context, partition: str, **over: Any) -> None:
    """Erase PARTITION (the current slot unless --slot)."""
    opts = _settings(ctx, **over)
    with _client(opts) as client:
        names = client.erase(partition, opts.slot)
    _done(opts, f"erased {', '.join(names)}", erased=names)


@click.argument("target", metavar="SLOT")
@_options
@click.pass_context
def set_active_cmd(ctx: click.Context, target: str, **over: Any) -> None:
    """Make SLOT (a, b, other) boot next."""
    opts = _settings(ctx, **over)
    with _client(opts) as client:
        letter = client.set_active(target)
    _done(opts, f"slot {letter} active", active=letter)


fastboot.command("set-active")(set_active_cmd)
fastboot.add_command(fastboot.commands["set-active"], "set_active")


@fastboot.command("reboot")
@click.argument("target", required=False, default="",
                type=click.Choice(["", "bootloader", "fastboot", "recovery"]))
@_options
@click.pass_context
def reboot_cmd(ctx: click.Context, target: str, **over: Any) -> None:
    """Reboot (into the OS, or TARGET: bootloader, fastboot, recovery)."""
    opts = _settings(ctx, **over)
    with _client(opts) as client:
        client.reboot(target)
    _done(opts, f"rebooting{' into ' + target if target else ''}", reboot=target or "system")


@fastboot.command("reboot-bootloader")
@_options
@click.pass_context
def reboot_bootloader_cmd(ctx: click.Context, **over: Any) -> None:
    """Reboot into the bootloader."""
    ctx.invoke(reboot_cmd, target="bootloader", **over)


@fastboot.command("oem", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, required=True)
@click.pass_context
def oem_cmd(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Pass an OEM command through to the device."""
    opts = _settings(ctx)
    with _client(opts) as client:
        message = client.oem(" ".join(args))
    _done(opts, message or "OKAY", message=message)


@fastboot.command("stage")
@click.argument("file", type=click.Path(path_type=Path))
@_options
@click.pass_context
def stage_cmd(ctx: click.Context, file: Path, **over: Any) -> None:
    """Download FILE to the device without flashing it."""
    opts = _settings(ctx, **over)
    try:
        handle = open(file, "rb")
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{file}: {exc.strerror}") from None
    with handle, _client(opts) as client:
        size = file.stat().st_size
        client.download(handle, size, file.name)
    _done(opts, f"staged {size} bytes", staged=size)


@fastboot.command("get-staged")
@click.argument("file", type=click.Path(path_type=Path))
@_options
@click.pass_context
def get_staged_cmd(ctx: click.Context, file: Path, **over: Any) -> None:
    """Upload what the device staged into FILE."""
    opts = _settings(ctx, **over)
    with _client(opts) as client:
        try:
            handle = open(file, "wb")
        except OSError as exc:
            raise ZflashError(Code.FILE_UNREADABLE, f"{file}: {exc.strerror}") from None
        with handle:
            size = client.upload(handle)
    _done(opts, f"received {size} bytes", received=size)


@fastboot.command("flashall")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--skip-reboot", is_flag=True, help="Do not reboot afterwards.")
@click.option("--accept-unverifiable", is_flag=True,
              help="Flash even if the device does not report a variable android-info.txt "
                   "requires.")
@_options
@click.pass_context
def flashall_cmd(ctx: click.Context, directory: Path, skip_reboot: bool,
                 accept_unverifiable: bool, **over: Any) -> None:
    """Check DIRECTORY/android-info.txt, flash every NAME.img, switch slot, reboot.

    Images go to the inactive slot unless --slot says otherwise; nothing is written if a
    requirement fails (9040) or cannot be checked (9045).
    """
    from zflash.targets.fastboot.flashall import flashall
    opts = _settings(ctx, **over)
    with _client(opts) as client:
        result = flashall(client, directory, opts.slot or "other", accept_unverifiable,
                          reboot=not skip_reboot,
                          size_limit=parse_size_option(opts.sparse_limit))
    text = f"flashed {', '.join(result['flashed'])}"
    if result["slot"]:
        text += f"; slot {result['slot']} active"
    _done(opts, text + ("; rebooting" if result["rebooted"] else ""), **result)
