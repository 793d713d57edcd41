"""The zflash command line: parse options, call the library, render the result.

Results go to stdout (a table, or JSON with --json); progress and diagnostics go to stderr.
Every failure ends as a coded error with its meaning and fix, and the exit status is
``code - 9000``; a traceback is never the answer to bad input. One module per command
group; each registers its commands on ``main``.
"""

from __future__ import annotations

import click

import importlib

from zflash import __version__
from zflash.cli.common import ZflashGroup

#: Which module defines each command. Modules are imported only when their command runs (or
#: for --help), so `zflash fastboot ...` does not pay for the flasher, TLS or USB imports.
COMMAND_MODULES = {
    "errors": "package_cmds", "keygen": "package_cmds", "pack": "package_cmds",
    "inspect": "package_cmds", "verify": "package_cmds",
    "emulate": "device_cmds", "info": "device_cmds", "flash": "device_cmds",
    "slot": "device_cmds", "reboot": "device_cmds", "backup": "device_cmds",
    "fetch": "fetch_cmds", "catalog": "fetch_cmds", "serve": "fetch_cmds",
    "devices": "usb_cmds", "udev-rules": "usb_cmds", "doctor": "usb_cmds",
    "fastboot": "fastboot_cmds", "station": "station_cmds",
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


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zflash")
def main() -> None:
    """zflash: flash signed firmware into devices in download mode."""
