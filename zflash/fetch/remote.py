"""Catalog from an update server to a verified package on disk, in the order that is safe.

A catalog is used only after, in this order: its signature verifies with a trusted key, it
has not expired, and its version is not below the newest one remembered for that server and
key. Only then is the state raised and an entry looked at.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urljoin

from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.fetch.catalog import MAX_CATALOG_SIZE, Catalog, CatalogEntry, decode
from zflash.fetch.client import Exchange, describe_status
from zflash.fetch.config import FetchConfig
from zflash.fetch.download import Expected, Fetched, fetch_package
from zflash.fetch.select import select_package
from zflash.fetch.state import CatalogState
from zflash.fetch.tls import parse_url
from zflash.package.keys import TrustStore


@dataclass(frozen=True)
class VerifiedCatalog:
    url: str
    catalog: Catalog
    signers: tuple[bytes, ...]

    def entry_url(self, entry: CatalogEntry) -> str:
        """Entry URLs may be relative to the catalog's own URL."""
        return urljoin(self.url, entry.url)


def accept_catalog(data: bytes, origin: str, trust: TrustStore, state: CatalogState,
                   now: float | None = None) -> tuple[Catalog, list[bytes]]:
    """Verify, check expiry and rollback, then remember the version. Pure but for ``state``."""
    signed = decode(data)
    signers = signed.verify(trust)
    catalog = signed.catalog
    now = time.time() if now is None else now
    if now >= catalog.expires:
        raise ZflashError(Code.CATALOG_EXPIRED,
                          f"catalog version {catalog.version} expired at "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(catalog.expires))}")
    for kid in signers:
        newest = state.newest(origin, kid)
        if newest is not None and catalog.version < newest:
            raise ZflashError(Code.CATALOG_ROLLBACK,
                              f"{origin} offered catalog version {catalog.version}, but "
                              f"version {newest} signed by key {kid.hex()[:16]} was already "
                              "seen")
    state.record(origin, signers, catalog.version)
    return catalog, signers


def fetch_catalog(url: str, config: FetchConfig) -> VerifiedCatalog:
    """Download a catalog into memory (bounded) over the pinned connection and accept it."""
    if not len(config.trust):
        raise ZflashError(Code.NO_TRUSTED_KEY, "a catalog cannot be verified without a "
                                               "trusted key")
    target = parse_url(url)
    with Exchange(target, config.policy, {}, config.on_event) as ex:
        if ex.status != 200:
            raise describe_status(ex)
        data = ex.read_limited(MAX_CATALOG_SIZE)
    catalog, signers = accept_catalog(data, target.origin, config.trust,
                                      CatalogState(config.state_file))
    config.on_event({"event": "catalog", "url": url, "version": catalog.version,
                     "expires": catalog.expires, "packages": len(catalog.packages),
                     "signers": [s.hex() for s in signers]})
    return VerifiedCatalog(url, catalog, tuple(signers))


def fetch_entry(verified: VerifiedCatalog, entry: CatalogEntry, config: FetchConfig) -> Fetched:
    """Download one catalog entry; its size and SHA-256 bind the file to the signed catalog."""
    return fetch_package(verified.entry_url(entry), config,
                         Expected(size=entry.size, sha256=entry.sha256), name=entry.name)


def fetch_latest(catalog_url: str, facts: DeviceFacts, config: FetchConfig
                 ) -> tuple[CatalogEntry, Fetched]:
    """The newest package in the catalog that fits ``facts``, downloaded and verified.

    This is what ``zflash fetch --for`` and ``zflash flash --latest`` call.
    """
    verified = fetch_catalog(catalog_url, config)
    entry = select_package(verified.catalog, facts)
    config.on_event({"event": "selected", "name": entry.name, "version": entry.version,
                     "rollback_index": entry.rollback_index, "size": entry.size})
    return entry, fetch_entry(verified, entry, config)
