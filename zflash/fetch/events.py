"""The event callback shared by the fetch modules.

The library renders nothing: it reports what happens as plain dicts (``{"event": NAME, ...}``)
so that the CLI can draw a progress bar on a terminal or print one JSON object per line, and a
factory script can consume the same stream.
"""

from __future__ import annotations

from typing import Any, Callable

EventSink = Callable[[dict[str, Any]], None]


def ignore(_event: dict[str, Any]) -> None:
    """Default sink for callers that want no events."""
