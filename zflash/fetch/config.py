"""Where fetched files and remembered catalog versions live, and the settings of one fetch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from zflash.fetch.events import EventSink, ignore
from zflash.fetch.watchdog import MIN_PROGRESS

if TYPE_CHECKING:  # keeps `zflash --help` from loading ssl, http.client and the package code
    from zflash.fetch.tls import TlsPolicy
    from zflash.package.keys import TrustStore

DEFAULT_RECONNECTS = 3


def default_cache_dir() -> Path:
    """``$ZFLASH_CACHE_DIR`` or ``$XDG_CACHE_HOME/zflash/downloads``."""
    if os.environ.get("ZFLASH_CACHE_DIR"):
        return Path(os.environ["ZFLASH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "zflash" / "downloads"


def default_pin_file() -> Path:
    """``$XDG_CONFIG_HOME/zflash/pins.json`` (next to the trusted-keys directory)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "zflash" / "pins.json"


def default_state_file() -> Path:
    """``$XDG_STATE_HOME/zflash/catalogs.json``: state, not cache, so a cache wipe keeps it."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "zflash" / "catalogs.json"


@dataclass
class FetchConfig:
    """Everything one fetch needs besides the URL; built once by the CLI or the flasher."""

    policy: TlsPolicy
    trust: TrustStore
    cache_dir: Path = field(default_factory=default_cache_dir)
    state_file: Path = field(default_factory=default_state_file)
    on_event: EventSink = ignore
    reconnects: int = DEFAULT_RECONNECTS  # automatic resumes within one run
    min_progress: int = MIN_PROGRESS  # bytes per policy.timeout seconds, or the fetch stops
