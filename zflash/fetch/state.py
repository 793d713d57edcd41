"""The newest catalog version seen, per server and signing key.

Remembering it is what turns "signed" into "fresh": without it a man in the middle holding
the right pin (or a compromised mirror) could replay last year's validly signed catalog and
steer devices to an old, vulnerable build. Versions only ever go up in this file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from zflash.errors import Code, ZflashError

STATE_FORMAT = "zflash-catalog-state/1"
MAX_STATE_FILE = 4 << 20


class CatalogState:
    """A small JSON file: ``seen[origin][key_id_hex] = {"version": N, "seen_at": T}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: dict[str, dict[str, dict[str, int]]] = self._load()

    def _load(self) -> dict[str, dict[str, dict[str, int]]]:
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(MAX_STATE_FILE + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ZflashError(Code.FILE_UNREADABLE, f"{self.path}: {exc.strerror}") from None
        try:
            data: Any = json.loads(raw)
            if data.get("format") != STATE_FORMAT or not isinstance(data.get("seen"), dict):
                raise ValueError("unknown format")
            for keys in data["seen"].values():
                for entry in keys.values():
                    if not isinstance(entry.get("version"), int):
                        raise ValueError("version is not an integer")
            return data["seen"]
        except (ValueError, AttributeError, TypeError, RecursionError) as exc:
            raise ZflashError(Code.FILE_UNREADABLE,
                              f"{self.path}: catalog state is corrupt ({exc}); deleting it "
                              "forgets which catalog versions were seen") from None

    def newest(self, origin: str, key_id: bytes) -> int | None:
        entry = self._seen.get(origin, {}).get(key_id.hex())
        return None if entry is None else entry["version"]

    def record(self, origin: str, key_ids: list[bytes], version: int) -> None:
        """Raise the remembered version (never lower it) and save atomically."""
        server = self._seen.setdefault(origin, {})
        now = int(time.time())
        for kid in key_ids:
            old = server.get(kid.hex(), {}).get("version", -1)
            server[kid.hex()] = {"version": max(old, version), "seen_at": now}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": STATE_FORMAT, "seen": self._seen},
                                  indent=1, sort_keys=True))
        os.replace(tmp, self.path)
