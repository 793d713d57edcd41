"""`python -m zflash` runs the command line (through the same entry as the `zflash` script)."""

from zflash.entry import run

run()
