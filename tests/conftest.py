"""Shared fixtures: keys for every algorithm, small images, and interop-tool lookup."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from zflash.package import keys as keymod
from zflash.package.writer import PackageInfo, PartitionSource, build_package

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "firmware-samples"
SIGNING_KEY = SAMPLES / "keys" / "zx-demo-TEST-ONLY-signing.pem"
SIGNING_PUB = SAMPLES / "keys" / "zx-demo-TEST-ONLY-signing.pub.pem"
UNTRUSTED_KEY = SAMPLES / "keys" / "zx-demo-TEST-ONLY-untrusted.pem"


#: The Debian package that installs each interop peer (.ci/run installs them all).
TOOL_PACKAGES = {"img2simg": "android-sdk-libsparse-utils",
                 "simg2img": "android-sdk-libsparse-utils", "fastboot": "fastboot",
                 "ser2net": "ser2net", "socat": "socat", "sgdisk": "gdisk", "gdisk": "gdisk"}


def require_tool(name: str, hint: str | None = None) -> str:
    """Path of an interop peer; skip (saying why) when missing, fail in CI where it must exist."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path:
        return path
    _missing(f"{name} not installed "
             f"({hint or 'Debian: apt-get install ' + TOOL_PACKAGES.get(name, name)})")


def require_module(name: str, hint: str) -> None:
    """An optional Python peer (an extra such as zflash[labgrid]); as `require_tool`."""
    import importlib.util
    if importlib.util.find_spec(name) is None:
        _missing(f"Python module {name} not installed ({hint})")


def _missing(message: str):  # type: ignore[no-untyped-def]
    if os.environ.get("ZFLASH_REQUIRE_PEERS"):
        pytest.fail(f"{message}, but ZFLASH_REQUIRE_PEERS is set (CI installs it)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def private_keys() -> dict[str, keymod.PrivateKey]:
    """One fresh key per algorithm (RSA at the 3072-bit minimum)."""
    return {alg: keymod.generate(alg) for alg in keymod.ALGORITHMS}


def seeded_image(seed: str, size: int) -> bytes:
    """Random, text, zero and fill runs: every block kind appears."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        kind = rng.randrange(4)
        length = rng.choice((4096, 8192, 20000))
        if kind == 0:
            out += rng.randbytes(length)
        elif kind == 1:
            out += b"zflash test text " * (length // 17 + 1)
        elif kind == 2:
            out += bytes(length)
        else:
            out += bytes([rng.randrange(1, 256)]) * length
    return bytes(out[:size])


INFO = PackageInfo(product="zx-demo", hardware_revisions=("A01", "A02"),
                   baseband_ids=("ZXB-100",), version="1.0.0", rollback_index=2,
                   rollback_location=0, build_time=1_700_000_000)


@pytest.fixture
def tiny_images(tmp_path: Path) -> list[PartitionSource]:
    """Two small partitions: a slotted one with raw, zlib and zero blocks, and an unslotted one."""
    boot = tmp_path / "boot.img"
    boot.write_bytes(random.Random(1).randbytes(8192) + b"abcd" * 2048 + bytes(8192) + b"tail")
    logo = tmp_path / "logo.img"
    logo.write_bytes(b"logo!" * 1000)
    return [PartitionSource("boot", boot, True), PartitionSource("logo", logo, False)]


@pytest.fixture
def tiny_package(tmp_path: Path, tiny_images: list[PartitionSource],
                 private_keys: dict[str, keymod.PrivateKey]) -> Path:
    out = tmp_path / "tiny.zpk"
    build_package(INFO, tiny_images, [private_keys["ed25519"]], out, block_size=8192,
                  codec="zlib")  # the zlib path; zstd and auto have tests of their own
    return out


def trust_for(*keys: keymod.PrivateKey) -> keymod.TrustStore:
    store = keymod.TrustStore()
    for key in keys:
        store.add(key.public_key())
    return store
