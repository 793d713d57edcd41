"""Update-server commands: fetch, catalog build, serve."""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from zflash.cli import main
from zflash.cli.common import emit_json, load_trust, trust_options
from zflash.cli.render import DownloadRenderer
from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.cli.tls_options import fetch_config, tls_options

if TYPE_CHECKING:
    from zflash.package.keys import TrustStore

# The network modules (ssl, http.client, http.server) are imported inside the commands
# that use them, so that every other zflash command starts without them.

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


# ---------------------------------------------------------------------------------- fetch
def _rollback_indexes(values: tuple[str, ...]) -> dict[int, int]:
    """``N`` (location 0) or ``LOCATION=N``, repeatable."""
    result = {}
    for value in values:
        loc, sep, index = value.rpartition("=")
        try:
            result[int(loc) if sep else 0] = int(index)
        except ValueError:
            raise ZflashError(Code.USAGE, f"--rollback-index expects N or LOCATION=N, "
                                          f"got {value!r}") from None
    return result


def _device_facts(device_url: str) -> DeviceFacts:
    """Ask the connected device (the flasher is imported only when --for is used)."""
    from zflash.flash import read_device_facts
    return read_device_facts(device_url)


def _explicit_facts(product: str | None, hw_rev: str | None, baseband: str | None,
                    rollback: tuple[str, ...]) -> DeviceFacts:
    missing = [name for name, value in (("--product", product), ("--hw-rev", hw_rev),
                                        ("--baseband", baseband)) if not value]
    if missing:
        raise ZflashError(Code.USAGE, f"selecting from a catalog needs --for DEVICE_URL or "
                                      f"all of --product, --hw-rev, --baseband "
                                      f"(missing {', '.join(missing)})")
    return DeviceFacts(product=product or "", hardware_revision=hw_rev or "",
                       baseband=baseband or "", serial="", protocol_version=0, flash_size=0,
                       cache_size=0, cache_free=0,
                       rollback_indexes=_rollback_indexes(rollback))


@main.command()
@click.argument("url")
@tls_options
@click.option("--for", "device_url", metavar="DEVICE_URL",
              help="URL is a catalog: pick the newest package for this connected device.")
@click.option("--product", help="URL is a catalog: the device's product.")
@click.option("--hw-rev", help="URL is a catalog: the device's hardware revision.")
@click.option("--baseband", help="URL is a catalog: the device's baseband id.")
@click.option("--rollback-index", "rollback", multiple=True, metavar="[LOC=]N",
              help="The device's stored rollback index (location 0 unless LOC= is given).")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True)
@trust_options
@click.option("--json", "as_json", is_flag=True, help="Events and result as JSON lines.")
def fetch(url: str, pins: tuple[str, ...], pin_file: Path | None, pin_only: bool,
          ca_file: Path | None, cache_dir: Path | None, state_file: Path | None,
          device_url: str | None, product: str | None, hw_rev: str | None,
          baseband: str | None, rollback: tuple[str, ...], timeout: float,
          trust_files: tuple[Path, ...], trust_dir: Path | None, as_json: bool) -> None:
    """Download a package, or the right package from a signed catalog, over pinned TLS.

    URL names a .zpk package, or a catalog when --for or --product/--hw-rev/--baseband are
    given. The verified file's path is printed on stdout.
    """
    selecting = bool(device_url or product or hw_rev or baseband or rollback)
    if device_url and (product or hw_rev or baseband or rollback):
        raise ZflashError(Code.USAGE, "--for reads the device's facts; do not also give them")
    if not selecting and url.split("?", 1)[0].endswith(".json"):
        raise ZflashError(Code.USAGE, "URL looks like a catalog: add --for DEVICE_URL or "
                                      "--product/--hw-rev/--baseband to choose a package")
    from zflash.fetch.download import fetch_package
    from zflash.fetch.remote import fetch_latest

    render = DownloadRenderer(as_json)
    config = fetch_config(pins, pin_file, pin_only, ca_file, cache_dir, state_file, timeout,
                          load_trust(trust_files, trust_dir), render)
    try:
        if selecting:
            facts = (_device_facts(device_url) if device_url
                     else _explicit_facts(product, hw_rev, baseband, rollback))
            entry, result = fetch_latest(url, facts, config)
        else:
            entry, result = None, fetch_package(url, config)
    finally:
        render.close()
    if as_json:
        emit_json({"event": "result", "path": str(result.path), "sha256": result.sha256,
                   "size": result.size, "product": result.product, "version": result.version,
                   "catalog_entry": entry.to_json() if entry else None})
    else:
        click.echo(str(result.path))


# ---------------------------------------------------------------------------------- catalog
def parse_expiry(text: str, now: int) -> int:
    """Seconds of validity from ``30d``/``12h``/``90m``/``3600s``/``2w`` or an ISO date."""
    match = _DURATION.match(text.strip())
    if match:
        return int(match[1]) * _UNITS[match[2]]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ZflashError(Code.USAGE, f"--expires {text!r}: use a duration like 30d or 12h, "
                                      "or an ISO date like 2030-01-31T00:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    seconds = int(when.timestamp()) - now
    if seconds <= 0:
        raise ZflashError(Code.USAGE, f"--expires {text!r} is in the past")
    return seconds


@main.group()
def catalog() -> None:
    """Signed catalogs of packages for an update server."""


@catalog.command("build")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--key", "key_paths", multiple=True, required=True,
              type=click.Path(path_type=Path), help="Signing private key (repeat to rotate).")
@click.option("--version", "version", type=click.IntRange(0, 2**63 - 1),
              help="Catalog version (default: Unix time, or one above the existing file's).")
@click.option("--expires", default="30d", show_default=True,
              help="Validity: a duration (30d, 12h) or an ISO date.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Catalog file (default FOLDER/catalog.json).")
@trust_options
@click.option("--json", "as_json", is_flag=True)
def catalog_build(folder: Path, key_paths: tuple[Path, ...], version: int | None, expires: str,
                  output: Path | None, trust_files: tuple[Path, ...], trust_dir: Path | None,
                  as_json: bool) -> None:
    """Write a signed catalog of every *.zpk in FOLDER (each verified if keys are trusted)."""
    from zflash.fetch.builder import build_catalog

    now = int(time.time())
    from zflash.package import keys as keymod  # cryptography: only when signing
    keys = [keymod.load_private_key(p) for p in key_paths]
    output = output or folder / "catalog.json"
    result = build_catalog(folder, keys, output, load_trust(trust_files, trust_dir),
                           version, parse_expiry(expires, now), now)
    if as_json:
        emit_json({"output": str(output), "version": result.version,
                   "expires": result.expires,
                   "packages": [p.to_json() for p in result.packages]})
        return
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.expires))
    click.echo(f"wrote {output}: version {result.version}, {len(result.packages)} packages, "
               f"expires {until}")
    for entry in result.packages:
        click.echo(f"  {entry.name}  {entry.product} {entry.version}  rollback "
                   f"{entry.rollback_index}@{entry.rollback_location}  {entry.size} bytes")


# ---------------------------------------------------------------------------------- serve
@main.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--cert", type=click.Path(path_type=Path, exists=True), required=True,
              help="Server certificate chain (PEM).")
@click.option("--key", type=click.Path(path_type=Path, exists=True), required=True,
              help="Server private key (PEM).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8443, show_default=True,
              help="0 picks a free port.")
@click.option("--json", "as_json", is_flag=True, help="Print the URL and pin as JSON.")
def serve(folder: Path, cert: Path, key: Path, host: str, port: int, as_json: bool) -> None:
    """Serve FOLDER over HTTPS with Range support: for a workshop or a test, not production."""
    from zflash.fetch.server import make_server, server_context
    from zflash.fetch.tls import pin_of_pem_file

    pin = pin_of_pem_file(cert)
    try:
        server = make_server(folder, server_context(cert, key), host, port)
    except (OSError, ValueError) as exc:
        raise ZflashError(Code.USAGE, f"cannot serve on {host}:{port}: {exc}") from None
    if as_json:
        emit_json({"event": "serving", "url": server.url, "pin": pin,
                   "folder": str(folder)})
    else:
        click.echo(f"serving {folder} at {server.url} (workshop/test use only)")
        click.echo(f"pin: {pin}")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
