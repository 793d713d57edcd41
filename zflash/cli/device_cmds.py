"""Device commands for every download mode: emulate, info, flash, slot, reboot, backup.

Each goes through the target interface (``zflash.targets``), so it works on every back-end
that has the capability and says so with a coded error (9035) when one does not."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

import click

from zflash.cli import main
from zflash.cli.common import emit_json, load_trust, refuse_existing, trust_options
from zflash.cli.tls_options import fetch_config, tls_options
from zflash.cli.render import DownloadRenderer, EventRenderer
from zflash.errors import Code, ZflashError
from zflash.facts import SlotInfo
from zflash.flash import FlashOptions, backup as backup_partition, flash as flash_package
from zflash.targets.base import Identity, LinkOptions
from zflash.targets.registry import open_target

DEVICE_HELP = ("Device URL: serial:///dev/ttyUSB0?baud=115200, /dev/ttyACM0, COM3, "
               "tcp://HOST:PORT (ZDL), fastboot+tcp://HOST[:PORT], usb://1209:0001?serial=X "
               "(env ZFLASH_DEVICE)")


def device_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-d", "--device", "url", envvar="ZFLASH_DEVICE", required=True,
                        help=DEVICE_HELP)(func)


def link_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--baud", type=click.IntRange(1200, 100_000_000),
                        help="Serial: ask the device to switch to this standard UART rate "
                             "(9600 .. 4000000) after connecting; others are refused (9002).")(func)
    func = click.option("--max-data", type=click.IntRange(4096, 1 << 20), default=256 << 10,
                        show_default=True, help="Largest frame payload to offer.")(func)
    func = click.option("--window", type=click.IntRange(1, 64), default=32, show_default=True,
                        help="Frames in flight.")(func)
    return click.option("--timeout", type=click.FloatRange(0.1, 600), default=5.0,
                        show_default=True,
                        help="Seconds to wait for the device to appear (open or connect) and "
                             "to answer the ZDL handshake; also the base of each request's "
                             "answer deadline (at least 4.5 s, plus the request's flash work "
                             "at 20 MB/s; keep-alives do not extend it: 9025). 10 s without "
                             "a sign of life is a lost link (9024).")(func)


def link_settings(baud: int | None, max_data: int, window: int,
                  timeout: float) -> LinkOptions:
    return LinkOptions(timeout=timeout, baud=baud, max_data=max_data, window=window)


# ---------------------------------------------------------------------------------- emulate
@main.command()
@click.option("--state", "state_dir", type=click.Path(path_type=Path), required=True,
              help="State directory (created on first use; survives restarts and kill -9).")
@click.option("--profile", type=click.Path(path_type=Path), help="Device profile JSON.")
@click.option("--trust", "trust_files", multiple=True, type=click.Path(path_type=Path),
              help="Public key the device trusts (repeat); stored in a new state directory.")
@click.option("--product", help="Identity of a new device (default zx-demo).")
@click.option("--hw-rev", help="Hardware revision of a new device (default A01).")
@click.option("--baseband", help="Baseband id of a new device (default ZXB-100).")
@click.option("--serial-number", help="Serial number of a new device (default ZXEMU0001).")
@click.option("--pty/--no-pty", default=False, help="Serve on a pseudo-terminal.")
@click.option("--pty-link", help="Keep a symlink at this path pointing to the pty.")
@click.option("--tcp", "tcp_port", type=click.IntRange(0, 65535),
              help="Serve ZDL on 127.0.0.1:PORT (0 picks a free port).")
@click.option("--fastboot-tcp", "fastboot_port", type=click.IntRange(0, 65535),
              help="Serve fastboot over TCP on 127.0.0.1:PORT.")
@click.option("--rate", type=float, help="Shape the link to this many bytes per second.")
@click.option("--latency", type=float, help="Added per-transfer latency in seconds.")
@click.option("--drop-after", type=int, help="Fault: drop the link after N bytes from the host.")
@click.option("--stall-after", type=int, help="Fault: stall the link after N bytes.")
@click.option("--corrupt", type=click.FloatRange(0, 1), default=0.0,
              help="Fault: flip a bit in this fraction of transfers.")
@click.option("--seed", type=int, default=0, help="Seed for the corruption faults.")
@click.option("--serial-baud", type=click.IntRange(1200, 100_000_000),
              help="Emulate a UART at this baud (paced at baud/10 B/s); the host may ask "
                   "to switch to 230400, 460800, 921600 or 2000000 (--baud).")
@click.option("--baud-switch-fails", is_flag=True,
              help="Fault: a baud switch garbles the line, so the host must fall back.")
@click.option("--power-loss", help="Fault: lose power at STEP[:N] (begin, write-block, "
                                   "commit, set-active; with --edl: program, gpt-primary, "
                                   "gpt-backup, patch, reset).")
@click.option("--fail-next-boot", is_flag=True, help="The next boot of the new slot fails.")
@click.option("--url-file", type=click.Path(path_type=Path),
              help="Also write the URLs here, one per line (for scripts).")
@click.option("--devices", "device_count", type=int,
              help="A line of N devices (serials ZXEMU0001..; state in STATE/devNN, ptys at "
                   "STATE/devNN.tty, TCP ports from --tcp BASE up, or free ones with 0).")
@click.option("--schedule", type=click.Path(path_type=Path),
              help="With --devices: lines 'T plug|unplug INDEX' and 'T stop' (T seconds "
                   "from the start); a device whose first event is a plug starts unplugged.")
@click.option("--control", type=click.Path(path_type=Path),
              help="With --devices: a unix socket taking 'plug N', 'unplug N', 'status', "
                   "'stop' lines.")
@click.option("--device-option", "device_options", multiple=True, metavar="N:KEY=VALUE",
              help="With --devices: set one device apart (keys product, hw-rev, baseband, "
                   "serial-number, fail-next-boot, rate). Repeat.")
@click.option("--edl", is_flag=True,
              help="Be a Qualcomm EDL device (Sahara + Firehose) on a pty, the QDLoader COM "
                   "variant; the state directory then holds lun*.img files.")
@click.option("--edl-quirk", "edl_quirks", multiple=True,
              type=click.Choice(["logs-after-response", "pending-done"]),
              help="EDL: a real programmer's habit to reproduce (repeat).")
def emulate(state_dir: Path, profile: Path | None, trust_files: tuple[Path, ...],
            product: str | None, hw_rev: str | None, baseband: str | None,
            serial_number: str | None, pty: bool,
            pty_link: str | None, tcp_port: int | None, fastboot_port: int | None,
            rate: float | None, latency: float | None, drop_after: int | None,
            stall_after: int | None, corrupt: float, seed: int, serial_baud: int | None,
            baud_switch_fails: bool, power_loss: str | None,
            fail_next_boot: bool, url_file: Path | None, device_count: int | None,
            schedule: Path | None, control: Path | None,
            device_options: tuple[str, ...], edl: bool, edl_quirks: tuple[str, ...]) -> None:
    """Run an emulated device (or, with --devices, a line of them) until interrupted.

    A new state directory takes its identity and layout from --profile (JSON: product,
    hardware_revision, baseband, serial, partitions, cache_size, rollback_indexes,
    trusted_keys, max_download_size) and the options; an existing one keeps its own."""
    from zflash.emulator.runner import (EmulatorRunner, LinkFaults, load_profile,
                                        serve_until_stopped)
    if edl:
        from zflash.emulator.edl_runner import run_edl
        sys.exit(run_edl(state_dir, pty_link, url_file, LinkFaults(
            rate, latency, drop_after, stall_after, corrupt, seed), edl_quirks,
            fail_next_boot, lambda m: click.echo(f"emulator: {m}", err=True), power_loss))
    if not (pty or tcp_port is not None or fastboot_port is not None):
        pty = True
    device_profile = load_profile(profile, list(trust_files))
    for field, value in (("product", product), ("hardware_revision", hw_rev),
                         ("baseband", baseband), ("serial", serial_number)):
        if value is not None:
            setattr(device_profile, field, value)
    faults = LinkFaults(rate, latency, drop_after, stall_after, corrupt, seed,
                        serial_baud=serial_baud, baud_switch_fails=baud_switch_fails)
    if device_count is not None or schedule or control or device_options:
        from zflash.emulator.fleet import run_fleet
        for flag, value in (("--serial-number", serial_number), ("--pty-link", pty_link),
                            ("--power-loss", power_loss)):
            if value is not None:
                raise ZflashError(Code.USAGE, f"{flag} does not apply to --devices (use "
                                              f"--device-option N:serial-number=X)")
        run_fleet(state_dir, device_count or 1, device_profile, faults, fail_next_boot,
                  list(device_options), pty, tcp_port, fastboot_port, schedule, control,
                  url_file, log=lambda m: click.echo(f"emulator: {m}", err=True),
                  out=click.echo)
        return
    if (state_dir / "profile.json").exists() and (profile or trust_files or product or hw_rev
                                                   or baseband or serial_number):
        click.echo("emulator: note: the state directory already holds a device; its stored "
                   "identity and keys are used, identity options are ignored", err=True)
    runner = EmulatorRunner(state_dir, device_profile, faults, power_loss, fail_next_boot,
                            log=lambda m: click.echo(f"emulator: {m}", err=True))
    if not len(runner.device.trust):
        click.echo("emulator: warning: the device trusts no key and will refuse every "
                   "package (use --trust)", err=True)
    if pty:
        runner.start_pty(pty_link)
    if tcp_port is not None:
        runner.start_tcp(tcp_port)
    if fastboot_port is not None:
        runner.start_fastboot_tcp(fastboot_port)
    for url in runner.urls:
        click.echo(url)
    sys.stdout.flush()
    if url_file:
        url_file.write_text("".join(f"{u}\n" for u in runner.urls))
    try:
        serve_until_stopped(runner.stop_event)
    finally:
        runner.stop()
    if runner.power_lost.is_set():
        sys.exit(137)


# ---------------------------------------------------------------------------------- info
def facts_lines(identity: Identity, protocol: str) -> list[str]:
    """The device's facts as aligned lines; what it does not report says so."""
    facts, unreported = identity.facts, identity.unreported

    def value(key: str, text: object) -> str:
        return f"not reported ({unreported[key]})" if key in unreported else str(text)

    cache = (f"{facts.cache_free} of {facts.cache_size} bytes free" if protocol == "zdl"
             else "none (writes in place)")
    rollback = ", ".join(f"[{k}]={v}" for k, v in sorted(facts.rollback_indexes.items()))
    missing = sorted(k.split(":", 1)[1] for k in unreported if k.startswith("rollback_index:"))
    if missing:
        rollback += ("; " if rollback else "") + f"not reported for {', '.join(missing)}"
    lines = [f"download mode:      {protocol}",
             f"product:            {value('product', facts.product)}",
             f"hardware revision:  {value('hardware_revision', facts.hardware_revision)}",
             f"baseband:           {value('baseband', facts.baseband)}",
             f"serial:             {value('serial', facts.serial)}",
             f"protocol version:   {facts.protocol_version or '-'}",
             f"flash size:         {facts.flash_size or 'not reported'}",
             f"staging cache:      {cache}",
             f"running slot:       {facts.current_slot or '-'}",
             f"rollback indexes:   {rollback or '-'}",
             "slots:"]
    for s in facts.slots:
        flags = [w for w, on in (("active", s.active), ("bootable", s.bootable),
                                 ("successful", s.successful)) if on]
        priority = "not reported" if "slot_priority" in unreported else s.priority
        lines.append(f"  {s.name}: priority {priority}, tries left {s.tries_left}, "
                     f"{', '.join(flags) or 'unbootable'}; {slot_build(s, unreported)}")
    lines.append("partitions:" + (f" not reported ({unreported['partitions']})"
                                  if "partitions" in unreported else ""))
    for p in facts.partitions:
        lines.append(f"  {p.name:<12} {p.size:>12} bytes  {'A/B' if p.slotted else ''}")
    return lines


def slot_build(slot: SlotInfo, unreported: Mapping[str, str]) -> str:
    """Which build a slot holds, as the device recorded it at set-active."""
    if "slot_builds" in unreported:
        return f"build not reported ({unreported['slot_builds']})"
    if slot.version is None:
        return "build unknown (no package completed in this slot)"
    package = f", package {slot.package[:16]}..." if slot.package else ""
    return f"build {slot.version}{package}"


def identity_json(identity: Identity, protocol: str, capabilities: Any) -> dict[str, Any]:
    return {**identity.facts.to_dict(), "protocol": protocol,
            "unreported": dict(identity.unreported), "capabilities": capabilities.to_dict()}


@main.command()
@device_option
@link_options
@click.option("--programmer", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="EDL: the Firehose programmer to load (a device in EDL mode reports its "
                   "storage and partitions only once one runs).")
@click.option("--json", "as_json", is_flag=True)
def info(url: str, baud: int | None, max_data: int, window: int, timeout: float,
         programmer: Path | None, as_json: bool) -> None:
    """Show everything the device reports about itself."""
    link = link_settings(baud, max_data, window, timeout)
    if programmer is not None:
        link = replace(link, programmer=str(programmer))
    with open_target(url, link) as target:
        identity = target.identify()
    if as_json:
        emit_json(identity_json(identity, target.protocol, target.capabilities))
    else:
        for line in facts_lines(identity, target.protocol):
            click.echo(line)


# ---------------------------------------------------------------------------------- flash
@main.command()
@click.argument("package", type=click.Path(path_type=Path), required=False)
@click.option("-d", "--device", "urls", envvar="ZFLASH_DEVICE", required=True, multiple=True,
              help=DEVICE_HELP)
@trust_options
@link_options
@click.option("--latest", "catalog_url", metavar="CATALOG_URL",
              help="Fetch the newest compatible package from this signed catalog, then flash.")
@tls_options
@click.option("--no-reboot", is_flag=True, help="Leave the device in download mode.")
@click.option("--skip-host-checks", is_flag=True,
              help="Send without host checks (only for download modes whose device enforces "
                   "every rule itself, such as ZDL).")
@click.option("--wipe-userdata", is_flag=True,
              help="Erase the userdata partition too (also needed for a package that writes "
                   "userdata).")
@click.option("--no-delta", is_flag=True, help="Send every block, even those already there.")
@click.option("--force-boot-failure", is_flag=True, hidden=True,
              help="Test devices: make the new slot fail its first boot.")
@click.option("--accept-unverifiable", is_flag=True,
              help="Flash although a check cannot be made because the device does not "
                   "report the fact (each such check is listed, 9045).")
@click.option("--allow-partial", is_flag=True,
              help="fastboot: flash a package that lacks some slotted partition; the new "
                   "slot keeps those from its older build (9039 without it). ZDL devices and "
                   "EDL copy them from the running slot instead.")
@click.option("--programmer", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="EDL: the Firehose programmer to load (default: the package's).")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line on stdout.")
def flash(package: Path | None, urls: tuple[str, ...], trust_files: tuple[Path, ...],
          trust_dir: Path | None, baud: int | None, max_data: int, window: int, timeout: float,
          catalog_url: str | None, pins: tuple[str, ...], pin_file: Path | None,
          pin_only: bool, ca_file: Path | None, cache_dir: Path | None,
          state_file: Path | None, no_reboot: bool, skip_host_checks: bool,
          wipe_userdata: bool, no_delta: bool, force_boot_failure: bool,
          accept_unverifiable: bool, allow_partial: bool, programmer: Path | None,
          as_json: bool) -> None:
    """Flash a signed package (or, with --latest, the newest one from a catalog) into the
    device's inactive slot, verify, switch, reboot."""
    if len(urls) > 1:  # never flash one and drop the others silently
        raise ZflashError(Code.USAGE, f"flash takes one device, got {len(urls)} (-d "
                                      f"{' -d '.join(urls)}); flash several with `zflash "
                                      "station PACKAGE -d URL -d URL ...`")
    url = urls[0]
    trust = load_trust(trust_files, trust_dir)
    if (package is None) == (catalog_url is None):
        raise ZflashError(Code.USAGE, "give a PACKAGE file or --latest CATALOG_URL (not both)")
    link = link_settings(baud, max_data, window, timeout)
    if programmer is not None:
        link = replace(link, programmer=str(programmer))
    if catalog_url:
        package = fetch_latest_for(url, link, catalog_url, trust, as_json, pins, pin_file,
                                   pin_only, ca_file, cache_dir, state_file)
    assert package is not None
    options = FlashOptions(skip_host_checks=skip_host_checks, reboot=not no_reboot,
                           wipe_userdata=wipe_userdata, delta=not no_delta,
                           force_boot_failure=force_boot_failure,
                           accept_unverifiable=accept_unverifiable,
                           allow_partial=allow_partial, link=link)
    renderer = EventRenderer(as_json)
    try:
        summary = flash_package(url, package, trust, options, renderer)
    finally:
        renderer.close()
    if not as_json:
        click.echo(f"flashed {package.name}: {summary.image_bytes} image bytes, "
                   f"{summary.sent_bytes} sent, {summary.skipped_bytes} skipped, "
                   f"{summary.seconds:.2f} s, {summary.rate / 1e6:.1f} MB/s effective"
                   + (f", {summary.retransmissions} frames retransmitted"
                      if summary.retransmissions else ""))
        if summary.booted_slot:
            click.echo(f"device now runs slot {summary.booted_slot}")
        elif summary.rebooted:  # the download mode does not report the boot
            click.echo(f"slot {summary.slot} is active; the device rebooted to run it")
        elif summary.slot:
            click.echo(f"slot {summary.slot} is active; reboot the device to run it")


def fetch_latest_for(url: str, link: LinkOptions, catalog_url: str, trust: Any, as_json: bool,
                     pins: tuple[str, ...], pin_file: Path | None, pin_only: bool,
                     ca_file: Path | None, cache_dir: Path | None,
                     state_file: Path | None) -> Path:
    """The newest compatible package for the device at ``url``, downloaded and verified."""
    from zflash.fetch.remote import fetch_latest
    from zflash.flash import read_device_facts
    facts = read_device_facts(url, link)
    render = DownloadRenderer(as_json)
    try:
        config = fetch_config(pins, pin_file, pin_only, ca_file, cache_dir, state_file, 30.0,
                              trust, render)
        entry, result = fetch_latest(catalog_url, facts, config)
    finally:
        render.close()
    if not as_json:
        click.echo(f"latest for {facts.product} {facts.hardware_revision}/{facts.baseband}: "
                   f"{entry.name} (version {result.version})", err=True)
    return result.path


# ---------------------------------------------------------------------------------- slot
def _slot_link(ctx: click.Context, url: str | None, link: LinkOptions) -> tuple[str, LinkOptions]:
    """The device and link for a slot command: its own -d/--timeout, else the group's."""
    parent = ctx.obj or {}
    url = url or parent.get("url")
    if not url:
        raise ZflashError(Code.USAGE, "name the device with -d URL (or ZFLASH_DEVICE)")
    return url, link if link != LinkOptions() else parent.get("link", link)


@main.group(invoke_without_command=True)
@click.option("-d", "--device", "url", envvar="ZFLASH_DEVICE", help=DEVICE_HELP)
@link_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def slot(ctx: click.Context, url: str | None, baud: int | None, max_data: int, window: int,
         timeout: float, as_json: bool) -> None:
    """Show the A/B slots, or `slot set-active SLOT`."""
    ctx.obj = {"url": url, "link": link_settings(baud, max_data, window, timeout),
               "as_json": as_json}
    if ctx.invoked_subcommand is None:
        url, link = _slot_link(ctx, None, ctx.obj["link"])
        with open_target(url, link) as target:
            identity = target.identify()
        facts = identity.facts
        if as_json:
            emit_json({"protocol": target.protocol, "current_slot": facts.current_slot,
                       "slots": [s.__dict__ for s in facts.slots]})
        else:
            for line in facts_lines(identity, target.protocol):
                if line.startswith(("running slot", "slots:", "  a:", "  b:")):
                    click.echo(line)


@slot.command("set-active")
@click.argument("name")
@click.option("-d", "--device", "url", envvar="ZFLASH_DEVICE", help=DEVICE_HELP)
@link_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def slot_set_active(ctx: click.Context, name: str, url: str | None, baud: int | None,
                    max_data: int, window: int, timeout: float, as_json: bool) -> None:
    """Make SLOT the one the bootloader tries next."""
    url, link = _slot_link(ctx, url, link_settings(baud, max_data, window, timeout))
    as_json = as_json or bool((ctx.obj or {}).get("as_json"))
    with open_target(url, link) as target:
        slots = [s.name for s in target.identify().facts.slots]
        if name not in slots:
            raise ZflashError(Code.SLOT, f"no slot {name!r}; the device has "
                                         f"{', '.join(slots) or 'no slots'}")
        target.set_active(name)
    if as_json:
        emit_json({"event": "slot_switched", "slot": name})
    else:
        click.echo(f"active slot is now {name}")


# ---------------------------------------------------------------------------------- reboot
@main.command("reboot")
@device_option
@link_options
@click.option("--json", "as_json", is_flag=True)
def reboot_cmd(url: str, baud: int | None, max_data: int, window: int, timeout: float,
               as_json: bool) -> None:
    """Reboot the device (it boots its active slot, falling back if that fails)."""
    with open_target(url, link_settings(baud, max_data, window, timeout)) as target:
        boot = target.reboot()
    if as_json:
        emit_json({"event": "rebooted", "protocol": target.protocol, "reported": boot.reported,
                   **boot.details, "booted_slot": boot.booted_slot,
                   "fell_back": boot.fell_back})
    elif boot.reported:
        click.echo(f"booted slot {boot.booted_slot}")
    else:
        click.echo(f"rebooted; this download mode ({target.protocol}) does not report which "
                   "slot booted")
    if boot.fell_back:
        raise ZflashError(Code.BOOT_FAILED, f"device fell back to slot {boot.booted_slot}")


# ---------------------------------------------------------------------------------- backup
@main.command()
@click.argument("partition")
@device_option
@link_options
@click.option("--slot", "slot_name", help="Slot to read (default: the running slot).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True)
def backup(partition: str, url: str, baud: int | None, max_data: int, window: int,
           timeout: float, slot_name: str | None, output: Path, force: bool,
           as_json: bool) -> None:
    """Read a partition back to a file and print its SHA-256."""
    refuse_existing(output, force)
    renderer = EventRenderer(as_json)
    try:
        size, digest = backup_partition(url, partition, slot_name, output, renderer,
                                        link_settings(baud, max_data, window, timeout))
    finally:
        renderer.close()
    if as_json:
        emit_json({"event": "backup", "partition": partition, "output": str(output),
                   "bytes": size, "sha256": digest})
    else:
        click.echo(f"{output}: {size} bytes, sha256 {digest}")
