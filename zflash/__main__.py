"""`python -m zflash` and the `zflash` script's entry point (``run``): answers `zflash --help`
and `zflash errors CODE` before click is imported, and hands every other command line to the
click CLI unchanged.

Why: importing click costs about as much as starting Python (~20 ms on the bench machine), so
with click these two answers cannot start in 2.5x `python -c pass` (issue 10, D180). The fast
answers are the CLI's own: the root help text below is what click renders (a test compares
them), and the error entry comes from ``zflash.errors.describe``, which `zflash errors` also
prints. Anything this module is not certain to answer identically (other options, a narrow
terminal, `python -m zflash`'s program name, shell completion) goes to click.
"""

from __future__ import annotations

import os
import sys

#: `zflash --help` as click renders it for the program name "zflash" at its widest (a terminal
#: of 80 columns or more, or a pipe). tests/test_entry.py keeps it equal to click's output.
ROOT_HELP = """\
Usage: zflash [OPTIONS] COMMAND [ARGS]...

  zflash: flash signed firmware into devices in download mode.

  Colour only on a terminal and never with NO_COLOR set. Shell completion:
  eval "$(_ZFLASH_COMPLETE=bash_source zflash)" (zsh_source, fish_source).

Options:
  --version      Show the version and exit.
  -q, --quiet    Only results and errors: no progress bars, no notes.
  -v, --verbose  More detail: every event as a line; -vv also tracebacks of
                 internal errors.
  -h, --help     Show this message and exit.

Commands:
  backup      Read a partition back to a file and print its SHA-256.
  catalog     Signed catalogs of packages for an update server.
  devices     List devices in download mode: USB (ZDL, fastboot) and...
  doctor      Check that this machine can reach devices: libusb,...
  emulate     Run an emulated device (or, with --devices, a line of them)...
  errors      Print the error table, or the entry for CODE (the code,...
  fastboot    Talk to an Android fastboot bootloader (or `zflash emulate...
  fetch       Download a package, or the right package from a signed...
  flash       Flash a signed package (or, with --latest, the newest one...
  info        Show everything the device reports about itself.
  inspect     Summarise a package (structure is checked; the signature is...
  keygen      Make a signing key pair (private key written with mode 0600).
  pack        Build a signed .zpk package from partition images (options...
  reboot      Reboot the device (it boots its active slot, falling back...
  serve       Serve FOLDER over HTTPS with Range support: for a workshop...
  slot        Show the A/B slots, or `slot set-active SLOT`.
  station     Flash every device that shows up (USB ports, serial...
  udev-rules  Print (or install) the udev rules that give non-root users...
  verify      Check the signature against trusted keys and every block...
"""

#: click wraps help at min(terminal columns, 80) - 2; from 80 columns on the text is the same
WIDEST_FROM_COLUMNS = 80


def run() -> None:
    """The console script: a fast answer when one is certain, else the click CLI."""
    text = fast_answer(sys.argv[1:])
    if text is None:
        from zflash.cli import main
        try:
            main()
        except SystemExit as done:
            _exit_now(done.code)
            raise
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:  # `zflash errors 9012 | true`: quiet, as the click path is
        if not (isinstance(exc, BrokenPipeError) or exc.errno == 32):
            raise
        _quiet_broken_pipe()
    sys.exit(0)


def fast_answer(args: list[str]) -> str | None:
    """The output for ``args`` if it is `--help`/`-h` or `errors CODE` and the click CLI
    would print exactly this; None means "ask click"."""
    if "_ZFLASH_COMPLETE" in os.environ:  # shell completion is click's
        return None
    if args in (["--help"], ["-h"]):
        if _program_name() != "zflash" or _terminal_columns() < WIDEST_FROM_COLUMNS:
            return None
        return ROOT_HELP
    if len(args) == 2 and args[0] == "errors":
        try:
            number = int(args[1])  # what click's INT type accepts
        except ValueError:
            return None
        from zflash.errors import describe, resolve_code
        code = resolve_code(number)
        return None if code is None else describe(code)
    return None


def _program_name() -> str:
    """The name click puts in the usage line: the script's file name when run as a script;
    `python -m zflash` (a package's __main__) gets click's own spelling, so click answers."""
    main_module = sys.modules.get("__main__")
    if getattr(main_module, "__package__", None) not in (None, ""):
        return ""
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns (what click reads), without importing shutil."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def _exit_now(code: object) -> None:
    """End the process without the interpreter's teardown, when nothing is left to do.

    Why: freeing every module and object of a `zflash flash` (click, cryptography, the
    protocol tables) took ~20 ms after the job was done, a tenth of a re-flash (D188).
    What the teardown would still do is done first: stdout and stderr are flushed and the
    atexit handlers run (weakref finalizers, logging). Only with an integer status and no
    thread left that Python would wait for; anything else returns, and exits as usual."""
    if not (code is None or isinstance(code, int)):
        return
    import threading
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    import atexit
    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_handlers is None:
        return
    try:
        sys.stdout.flush()  # a closed pipe shows here, before any handler ran
    except (OSError, ValueError):
        return  # the usual exit handles and reports it
    run_handlers()  # in Python's order: handlers, then the streams' last flush
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code or 0)


def _quiet_broken_pipe() -> None:
    """As zflash.cli.common's: stdout's reader went away; exit 141 without a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    os._exit(141)


if __name__ == "__main__":
    run()
