"""Shared pieces of the command line: JSON output, coded failure, the error-catching group."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import click

from zflash.errors import Code, ZflashError
from zflash.package.names import default_trust_dir

if TYPE_CHECKING:
    from zflash.package.keys import TrustStore


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, sort_keys=True))


def fail(error: ZflashError, as_json: bool = False) -> NoReturn:
    """Report a coded error on stderr (and stdout as JSON when asked) and exit."""
    info = error.info
    if as_json:
        emit_json({"event": "error", **error.to_dict()})
    click.echo(f"error {info.code}: {info.meaning}", err=True)
    if error.detail:
        click.echo(f"  {error.detail}", err=True)
    click.echo(f"  fix: {info.fix}", err=True)
    sys.exit(info.exit_status)


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
            if os.environ.get("ZFLASH_DEBUG"):
                raise
            fail(ZflashError(Code.INTERNAL, f"{type(exc).__name__}: {exc}"), as_json)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Usage errors are coded too (9002, exit 2), with click's usage line as the detail."""
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            fail(ZflashError(Code.INTERRUPTED))
        except click.ClickException as exc:
            usage = exc.ctx.get_usage() + "\n  " if getattr(exc, "ctx", None) else ""
            fail(ZflashError(Code.USAGE, f"{usage}{exc.format_message()}"))
        sys.exit(result if isinstance(result, int) else 0)


def trust_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--trust", "trust_files", multiple=True,
                        type=click.Path(path_type=Path),
                        help="Trusted public key PEM (repeat). Added to the trust directory.")(func)
    return click.option("--trust-dir", type=click.Path(path_type=Path),
                        help=f"Trust directory (default {default_trust_dir()}).")(func)


def load_trust(trust_files: tuple[Path, ...], trust_dir: Path | None) -> TrustStore:
    from zflash.package.keys import TrustStore  # cryptography: only for commands that verify
    return TrustStore.load(trust_files, trust_dir)
