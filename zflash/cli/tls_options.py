"""The options that say how to reach an update server, shared by `fetch`, `flash --latest`
and `station`: in a module of their own so that `zflash flash PKG` does not import the fetch
commands (and their update-server code) to build its option list."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from zflash.fetch.paths import default_cache_dir, default_pin_file, default_state_file

if TYPE_CHECKING:
    from zflash.fetch.config import FetchConfig
    from zflash.package.keys import TrustStore


def tls_options(func: Any) -> Any:
    """Options that say how to reach an update server: pins, CA, cache, catalog state."""
    for option in reversed([
        click.option("--pin", "pins", multiple=True, metavar="sha256/BASE64",
                     help="Accepted server key (SHA-256 of its SubjectPublicKeyInfo); repeat "
                          "to allow key rotation."),
        click.option("--pin-file", type=click.Path(path_type=Path),
                     help=f"JSON {{server: [pins]}} (default {default_pin_file()})."),
        click.option("--pin-only", is_flag=True,
                     help="Skip CA and hostname checks (self-signed or private server); the "
                          "pin alone authenticates the server."),
        click.option("--ca-file", type=click.Path(path_type=Path),
                     help="CA certificates (PEM) to verify the server with, instead of the "
                          "system's."),
        click.option("--cache-dir", type=click.Path(path_type=Path),
                     help=f"Download cache (default {default_cache_dir()})."),
        click.option("--state-file", type=click.Path(path_type=Path),
                     help=f"Newest catalog versions seen (default {default_state_file()})."),
    ]):
        func = option(func)
    return func


def fetch_config(pins: tuple[str, ...], pin_file: Path | None, pin_only: bool,
                 ca_file: Path | None, cache_dir: Path | None, state_file: Path | None,
                 timeout: float, trust: "TrustStore", on_event: Any) -> FetchConfig:
    from zflash.fetch.config import FetchConfig  # only a fetch needs it, not every command
    from zflash.fetch.tls import TlsPolicy
    policy = TlsPolicy.build(pins, pin_file, pin_only, ca_file, timeout)
    return FetchConfig(policy=policy, trust=trust, cache_dir=cache_dir or default_cache_dir(),
                       state_file=state_file or default_state_file(), on_event=on_event)
