"""Building a catalog for a folder of packages (`zflash catalog build`).

Every field of an entry is taken from the package's own signed manifest and the file's bytes,
so the catalog cannot drift from what it lists. When trusted keys are configured each package
must also verify, so a corrupt file is never published.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import time
from pathlib import Path
from urllib.parse import quote

from zflash.errors import Code, ZflashError
from zflash.fetch.catalog import Catalog, CatalogEntry, decode, encode
from zflash.package.keys import PrivateKey, TrustStore
from zflash.package.reader import Package


def entry_for(path: Path, url: str, trust: TrustStore) -> CatalogEntry:
    """Describe one package file; verify it too when ``trust`` holds keys."""
    with Package(path) as pkg:
        if len(trust):
            pkg.verify(trust)
        manifest, manifest_digest = pkg.manifest, pkg.head.digest
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return CatalogEntry(name=path.name, url=url, product=manifest.product,
                        hardware_revisions=manifest.hardware_revisions,
                        baseband_ids=manifest.baseband_ids, version=manifest.version,
                        rollback_index=manifest.rollback_index,
                        rollback_location=manifest.rollback_location,
                        build_time=manifest.build_time, size=path.stat().st_size,
                        sha256=digest.hexdigest(), manifest_sha256=manifest_digest)


def previous_version(output: Path) -> int | None:
    """The version of an existing catalog at ``output`` (unverified: only to count upwards)."""
    try:
        return decode(output.read_bytes()).catalog.version
    except (OSError, ZflashError):
        return None


def build_catalog(folder: Path, keys: list[PrivateKey], output: Path, trust: TrustStore,
                  version: int | None = None, lifetime: int = 30 * 86400,
                  now: int | None = None) -> Catalog:
    """Write a signed catalog of every ``*.zpk`` in ``folder`` to ``output`` (atomically).

    URLs are relative to the catalog file, so the folder can move between servers. The
    default version is the current Unix time, or one above the existing catalog's.
    """
    paths = sorted(folder.glob("*.zpk"))
    if not paths:
        raise ZflashError(Code.USAGE, f"{folder}: no *.zpk packages to list")
    now = int(time.time()) if now is None else now
    if version is None:
        version = max(now, (previous_version(output) or -1) + 1)
    base = output.resolve().parent
    entries = tuple(entry_for(p, quote(posixpath.join(*Path(os.path.relpath(
        p.resolve(), base)).parts)), trust) for p in paths)
    catalog = Catalog(version=version, issued=now, expires=now + lifetime, packages=entries)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    tmp.write_bytes(encode(catalog, keys))
    os.replace(tmp, output)
    return catalog
