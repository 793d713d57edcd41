"""Shared pieces of the command line: JSON output, coded failure, the error-catching group."""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import click

from zflash.errors import Code, ErrorInfo, ZflashError
from zflash.package.names import default_trust_dir

if TYPE_CHECKING:
    from zflash.package.keys import TrustStore


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, sort_keys=True))


# ---------------------------------------------------------------------- output settings
VERBOSITY_KEY = "zflash.verbosity"


def verbosity() -> int:
    """-1 with -q (results and errors only), 0 by default, 1+ with -v (more detail).

    Kept in the click context's ``meta`` (shared by every sub-command's context), so that
    renderers read it without each command passing it along.
    """
    ctx = click.get_current_context(silent=True)
    return int(ctx.meta.get(VERBOSITY_KEY, 0)) if ctx is not None else 0


def use_color(stream: Any = None) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org) or
    TERM=dumb."""
    stream = sys.stderr if stream is None else stream
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _paint(text: str, **style: Any) -> str:
    return click.style(text, **style) if use_color() else text


# ---------------------------------------------------------------------- errors
def _echo_error(info: ErrorInfo, detail: str) -> None:
    """One error: its code and meaning, what happened (the cause's line and the detail),
    and the fix for that cause."""
    click.echo(_paint(f"error {info.code}: {info.meaning}", fg="red", bold=True), err=True)
    what = ": ".join(part for part in (info.what, detail) if part)
    if what:
        click.echo(f"  {what}", err=True)
    click.echo(f"  {_paint('fix:', bold=True)} {info.fix}", err=True)


def fail(error: ZflashError, as_json: bool = False) -> NoReturn:
    """Report a coded error on stderr (and stdout as JSON when asked) and exit.

    A refusal that carries its failed checks (``error.failures``) prints each failure once,
    with its own cause and fix, instead of the joined message a second time.
    """
    info = error.info
    if as_json:
        emit_json({"event": "error", **error.to_dict()})
    failures = getattr(error, "failures", None)
    if failures:
        for failure in failures:
            _echo_error(failure.info, failure.message)
        count = f"{len(failures)} check{'s' if len(failures) > 1 else ''}"
        click.echo(f"refused: {count} failed; nothing was written", err=True)
    else:
        _echo_error(info, error.detail)
    sys.exit(info.exit_status)


def refuse_existing(path: Path, force: bool) -> None:
    """The one rule for every output file: an existing file is refused (FILE_EXISTS)
    unless --force. Call it before any work, so a refusal costs nothing."""
    if force:
        return
    if os.path.lexists(path):
        raise ZflashError(Code.FILE_EXISTS, f"{path} exists; pass --force to overwrite it")


def _quiet_broken_pipe() -> NoReturn:
    """stdout's reader went away (``zflash errors | head -1``): exit quietly, like cat.

    Python would otherwise print a BrokenPipeError traceback while flushing stdout at exit,
    so stdout is pointed at /dev/null first. Exit status 141 (128 + SIGPIPE), as a shell
    reports a process killed by SIGPIPE.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    os._exit(141)


def _is_broken_pipe(exc: BaseException) -> bool:
    return isinstance(exc, BrokenPipeError) or (
        isinstance(exc, OSError) and exc.errno == errno.EPIPE)


class ZflashGroup(click.Group):
    """Turns every escape from a command into a coded error instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        as_json = "--json" in ctx.args or "--json" in sys.argv[1:]
        try:
            return super().invoke(ctx)
        except ZflashError as exc:
            fail(exc, as_json)
        except KeyboardInterrupt:
            fail(ZflashError(Code.INTERRUPTED), as_json)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if _is_broken_pipe(exc):
                _quiet_broken_pipe()
            if os.environ.get("ZFLASH_DEBUG"):
                raise
            if int(ctx.meta.get(VERBOSITY_KEY, 0)) >= 2:
                traceback.print_exc(file=sys.stderr)
            fail(ZflashError(Code.INTERNAL, f"{type(exc).__name__}: {exc}"), as_json)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Usage errors are coded too (9002, exit 2), with click's usage line as the detail."""
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, not as a traceback at exit
        except OSError as exc:
            if not _is_broken_pipe(exc):
                raise
            _quiet_broken_pipe()
        except click.exceptions.Abort:
            fail(ZflashError(Code.INTERRUPTED))
        except click.ClickException as exc:
            usage = exc.ctx.get_usage() + "\n  " if getattr(exc, "ctx", None) else ""
            fail(ZflashError(Code.USAGE, f"{usage}{exc.format_message()}"))
        sys.exit(result if isinstance(result, int) else 0)


def trust_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--trust", "trust_files", multiple=True,
                        type=click.Path(path_type=Path),
                        help="Trusted public key PEM (repeat), trusted for this command "
                             "only, in addition to the trust directory's keys (nothing is "
                             "written there).")(func)
    return click.option("--trust-dir", type=click.Path(path_type=Path),
                        help=f"Trust directory (default {default_trust_dir()}).")(func)


def load_trust(trust_files: tuple[Path, ...], trust_dir: Path | None) -> TrustStore:
    from zflash.package.keys import TrustStore  # cryptography: only for commands that verify
    return TrustStore.load(trust_files, trust_dir)
