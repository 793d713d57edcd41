"""Names and defaults the command line shows in --help, without importing cryptography.

Why a module of its own: ``zflash --help``, ``zflash errors`` and option lists must start in
a few tens of milliseconds (docs/DECISIONS.md D72); the key and writer modules that own these
values pull in cryptography and thread pools, so they import them from here.
"""

from __future__ import annotations

import os
from pathlib import Path

ALGORITHMS = ("ed25519", "ecdsa-p256", "rsa-pss")
ALG_IDS = {"ed25519": 1, "ecdsa-p256": 2, "rsa-pss": 3}
MIN_RSA_BITS = 3072
MAX_RSA_BITS = 8192

#: "auto" stores each block in the smallest of raw, zlib and zstd; "zstd" and "zlib" try
#: only that codec (and raw). Packages with zstd blocks flash onto any device: a host whose
#: device does not offer zstd decodes them and sends raw or zlib (zdl.md 3.3).
CODECS = ("auto", "zstd", "zlib", "none")
#: per block the smallest of raw, zlib and zstd; every host path sends zstd (or expands it)
DEFAULT_CODEC = "auto"


def default_trust_dir() -> Path:
    """``$ZFLASH_TRUST_DIR`` or ``$XDG_CONFIG_HOME/zflash/trusted-keys``."""
    if os.environ.get("ZFLASH_TRUST_DIR"):
        return Path(os.environ["ZFLASH_TRUST_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "zflash" / "trusted-keys"

#: the block size `pack` uses unless told (zpk.md; format.py checks the allowed range)
DEFAULT_BLOCK_SIZE = 64 << 10
