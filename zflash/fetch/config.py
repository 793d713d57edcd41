"""The settings of one fetch; the default paths are in ``paths`` (re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from zflash.fetch.events import EventSink, ignore
from zflash.fetch.paths import (default_cache_dir, default_pin_file,  # noqa: F401 (re-export)
                                default_state_file)
from zflash.fetch.watchdog import MIN_PROGRESS

if TYPE_CHECKING:  # keeps `zflash --help` from loading ssl, http.client and the package code
    from zflash.fetch.tls import TlsPolicy
    from zflash.package.keys import TrustStore

DEFAULT_RECONNECTS = 3


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
