"""Validators for fields of untrusted JSON (manifests, catalogs): one rule set, any error code.

A package manifest and an update catalog describe the same things (product, revisions,
versions, indexes, SHA-256 digests) and must refuse the same malformed values; they differ
only in the error a bad value raises, so each caller binds its own error factory.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from zflash.errors import ZflashError

MAX_UINT = 2**63 - 1
# Whole-string patterns, used with fullmatch: ``$`` alone would accept a trailing newline,
# and a signed "A01\n" must not pass as a different value from "A01". Text has no leading or
# trailing space for the same reason.
TEXT_RE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,62}[\x21-\x7e])?")
HEX64_RE = re.compile(r"[0-9a-f]{64}")


class Fields:
    """Field checks that raise ``error(message)`` on a bad value."""

    def __init__(self, error: Callable[[str], ZflashError]) -> None:
        self.error = error

    def uint(self, value: Any, what: str, limit: int = MAX_UINT) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise self.error(f"{what} must be an integer in 0..{limit}")
        return value

    def text(self, value: Any, what: str) -> str:
        if not isinstance(value, str) or not TEXT_RE.fullmatch(value):
            raise self.error(f"{what} must be 1..64 printable ASCII characters, no space at either end")
        return value

    def texts(self, value: Any, what: str, unique: bool = True) -> tuple[str, ...]:
        if not isinstance(value, list) or not 0 < len(value) <= 64:
            raise self.error(f"{what} must be a list of 1..64 strings")
        items = tuple(self.text(v, what) for v in value)
        if unique and len(set(items)) != len(items):
            raise self.error(f"{what} has duplicates")
        return items

    def hex64(self, value: Any, what: str) -> str:
        if not isinstance(value, str) or not HEX64_RE.fullmatch(value):
            raise self.error(f"{what} must be 64 lowercase hex digits")
        return value
