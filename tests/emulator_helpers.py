"""Helpers for tests that drive the emulated device: state snapshots, sample packages."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import SAMPLES, SIGNING_PUB
from zflash.emulator.storage import Profile, Storage

GOOD = SAMPLES / "zx-demo-1.1.0.zpk"
NEWER = SAMPLES / "zx-demo-1.2.0-newer.zpk"
BAD_SAMPLES = {
    "zx-demo-1.0.0-rollback.zpk": 9015,
    "zx-demo-1.1.0-other-baseband.zpk": 9040,
    "zx-demo-1.1.0-too-large.zpk": 9041,  # not 9023: a full cache is another cause
    "zx-demo-1.1.0-corrupt-block.zpk": 9012,
    "zx-demo-1.1.0-untrusted-key.zpk": 9012,
}


def demo_profile(**changes: object) -> Profile:
    profile = Profile(trusted_keys=[SIGNING_PUB.read_text()])
    for key, value in changes.items():
        setattr(profile, key, value)
    return profile


def new_device_dir(root: Path, **changes: object) -> Path:
    Storage.create(root, demo_profile(**changes))
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file of a state directory with its SHA-256 (to prove nothing changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def image_sha256(version: str, name: str) -> str:
    return hashlib.sha256((SAMPLES / "images" / version / f"{name}.img").read_bytes()).hexdigest()


def partition_prefix_sha256(root: Path, filename: str, size: int) -> str:
    with open(root / "partitions" / filename, "rb") as handle:
        return hashlib.sha256(handle.read(size)).hexdigest()


def count_host_hashes(monkeypatch) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """Record every (partition, block) the host hashes against the signed table."""
    from zflash.targets import blocks as blocks_module
    hashed: list[tuple[str, int]] = []
    real = blocks_module.decode_block

    def counting(part, index, entry, stored):  # type: ignore[no-untyped-def]
        hashed.append((part.name, index))
        return real(part, index, entry, stored)

    monkeypatch.setattr(blocks_module, "decode_block", counting)
    return hashed
