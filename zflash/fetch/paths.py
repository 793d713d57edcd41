"""Where fetched files, pins and remembered catalog versions live by default.

Apart from ``config`` so that the CLI can name these paths in its option help without
importing the fetch settings (and their watchdog) into every command (D205).
"""

from __future__ import annotations

import os
from pathlib import Path


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
