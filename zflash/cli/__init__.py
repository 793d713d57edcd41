"""The zflash command line: parse options, call the library, render the result.

Results go to stdout (a table, or JSON with --json); progress and diagnostics go to stderr.
Every failure ends as a coded error with its meaning and fix, and the exit status is
``code - 9000``; a traceback is never the answer to bad input. One module per command
group; each registers its commands on ``main``.
"""

from __future__ import annotations

import importlib

import click

from zflash import __version__
from zflash.cli.common import VERBOSITY_KEY, ZflashGroup
from zflash.errors import Code, ZflashError

#: Which module defines each command. Modules are imported only when their command runs, so
#: `zflash fastboot ...` does not pay for the flasher, TLS or USB imports.
COMMAND_MODULES = {
    "errors": "package_cmds", "keygen": "package_cmds", "pack": "package_cmds",
    "inspect": "package_cmds", "verify": "package_cmds",
    "emulate": "device_cmds", "info": "device_cmds", "flash": "device_cmds",
    "slot": "device_cmds", "reboot": "device_cmds", "backup": "device_cmds",
    "fetch": "fetch_cmds", "catalog": "fetch_cmds", "serve": "fetch_cmds",
    "devices": "usb_cmds", "udev-rules": "usb_cmds", "doctor": "usb_cmds",
    "fastboot": "fastboot_cmds", "station": "station_cmds",
}

#: Each command's short help (the first sentence of its docstring), so that `zflash --help`
#: lists the commands without importing any of their modules. A test keeps it in step.
SHORT_HELP = {
    "errors": "Print the error table, or the entry for CODE (the code, 9040, or the exit "
              "status, 40), with the fix for each of its causes.",
    "keygen": "Make a signing key pair (private key written with mode 0600).",
    "pack": "Build a signed .zpk package from partition images (options override the recipe).",
    "inspect": "Summarise a package (structure is checked; the signature is not: use verify).",
    "verify": "Check the signature against trusted keys and every block against its hash.",
    "emulate": "Run an emulated device (or, with --devices, a line of them) until interrupted.",
    "info": "Show everything the device reports about itself.",
    "flash": "Flash a signed package (or, with --latest, the newest one from a catalog) into "
             "the device's inactive slot, verify, switch, reboot.",
    "slot": "Show the A/B slots, or `slot set-active SLOT`.",
    "reboot": "Reboot the device (it boots its active slot, falling back if that fails).",
    "backup": "Read a partition back to a file and print its SHA-256.",
    "fetch": "Download a package, or the right package from a signed catalog, over pinned "
             "TLS.",
    "catalog": "Signed catalogs of packages for an update server.",
    "serve": "Serve FOLDER over HTTPS with Range support: for a workshop or a test, not "
             "production.",
    "devices": "List devices in download mode: USB (ZDL, fastboot) and serial ports "
               "(USB-serial bridges with their USB serial number; other ports with --tty).",
    "udev-rules": "Print (or install) the udev rules that give non-root users access to "
                  "devices.",
    "doctor": "Check that this machine can reach devices: libusb, permissions, udev rules, "
              "groups.",
    "station": "Flash every device that shows up (USB ports, serial numbers, tty globs, URLs), "
               "in parallel, once each; write one log per device and a run report.",
    "fastboot": "Talk to an Android fastboot bootloader (or `zflash emulate --fastboot-tcp`).",
}


class LazyGroup(ZflashGroup):
    """Imports a command's module the first time the command is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module and cmd_name not in self.commands:
            importlib.import_module(f"zflash.cli.{module}")
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list as click writes it, from SHORT_HELP instead of the commands."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, click.utils.make_default_short_help(SHORT_HELP[name], limit))
                for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zflash")
@click.option("-q", "--quiet", is_flag=True,
              help="Only results and errors: no progress bars, no notes.")
@click.option("-v", "--verbose", count=True,
              help="More detail: every event as a line; -vv also tracebacks of internal "
                   "errors.")
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: int) -> None:
    """zflash: flash signed firmware into devices in download mode.

    Colour only on a terminal and never with NO_COLOR set. Shell completion:
    eval "$(_ZFLASH_COMPLETE=bash_source zflash)" (zsh_source, fish_source).
    """
    if quiet and verbose:
        raise ZflashError(Code.USAGE, "-q/--quiet and -v/--verbose exclude each other")
    ctx.meta[VERBOSITY_KEY] = -1 if quiet else verbose
