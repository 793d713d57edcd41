"""Fetching firmware from an update server: pinned TLS 1.2/1.3, resume, a signed catalog.

Modules: ``tls`` (context, pins, pinned connection), ``client`` (one GET), ``download``
(resume, verify, atomic rename), ``catalog`` (format), ``state`` (versions seen), ``select``
(pure package choice), ``remote`` (catalog to package), ``builder`` (catalog for a folder),
``server`` (a workshop/test HTTPS server). The library emits events and renders nothing.

Names are loaded on first use (PEP 562) so that importing ``zflash.fetch.config`` for a
default path, as the CLI does at start-up, does not pull in ssl and http.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FetchConfig": "config", "default_cache_dir": "config", "default_state_file": "config",
    "default_pin_file": "config", "Expected": "download", "Fetched": "download",
    "fetch_package": "download", "fetch_catalog": "remote", "fetch_entry": "remote",
    "fetch_latest": "remote", "select_package": "select", "TlsPolicy": "tls",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zflash.fetch' has no attribute {name!r}")
    return getattr(importlib.import_module(f"zflash.fetch.{_EXPORTS[name]}"), name)
