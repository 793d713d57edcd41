"""The zflash command line: parse options, call the library, render the result.

Results go to stdout (a table, or JSON with --json); progress and diagnostics go to stderr.
Every failure ends as a coded error with its meaning and fix, and the exit status is
``code - 9000``; a traceback is never the answer to bad input. One module per command
group; each registers its commands on ``main``.
"""

from __future__ import annotations

import click

from zflash import __version__
from zflash.cli.common import ZflashGroup


@click.group(cls=ZflashGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zflash")
def main() -> None:
    """zflash: flash signed firmware into devices in download mode."""


from zflash.cli import package_cmds  # noqa: E402,F401  (registers commands)
from zflash.cli import fetch_cmds  # noqa: E402,F401  (registers commands)
from zflash.cli import usb_cmds  # noqa: E402,F401  (registers commands)
from zflash.cli import fastboot_cmds  # noqa: E402,F401  (registers commands)
from zflash.cli import device_cmds  # noqa: E402,F401  (registers commands)
