"""`python -m zflash` runs the command line."""

from zflash.cli import main

main()
