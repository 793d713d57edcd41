#!/usr/bin/env python3
"""Build the zx-demo sample packages deterministically. TEST-ONLY: never ship these.

Images come from a seeded generator and keys from firmware-samples/keys/ (created on the
first run, then committed), so running this script again reproduces every file byte for byte;
a test checks that. Usage: python firmware-samples/build.py [--out DIR]
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from zflash.disk.avb import build_vbmeta  # noqa: E402
from zflash.emulator.edl_disk import (BASEBAND_LENGTH, BASEBAND_OFFSET, EdlProfile,  # noqa: E402
                                      test_programmer)
from zflash.package import keys as keymod  # noqa: E402
from zflash.package.edlspec import BasebandSource, EdlSpec, Programmer  # noqa: E402
from zflash.package.reader import Package  # noqa: E402
from zflash.package.writer import PackageInfo, PartitionSource, build_package  # noqa: E402

BUILD_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z, fixed for reproducibility
SIGNING_KEY = HERE / "keys" / "zx-demo-TEST-ONLY-signing.pem"
UNTRUSTED_KEY = HERE / "keys" / "zx-demo-TEST-ONLY-untrusted.pem"

BASE = PackageInfo(product="zx-demo", hardware_revisions=("A01", "A02"),
                   baseband_ids=("ZXB-100",), version="1.1.0", rollback_index=2,
                   rollback_location=0, build_time=BUILD_TIME)
LAYOUT = (("boot", True), ("system", True), ("vendor", True), ("logo", False))


def make_image(name: str, version: str, size: int) -> bytes:
    """Seeded content with the mix real images have: code, text, zero runs, fill."""
    rng = random.Random(f"{name}-{version}")
    out = bytearray()
    text = (f"zx-demo {name} {version} TEST-ONLY sample image. " * 64).encode()
    while len(out) < size:
        kind = rng.choice(("random", "text", "zeros", "fill"))
        length = rng.choice((4096, 16384, 65536))
        if kind == "random":
            out += rng.randbytes(length)
        elif kind == "text":
            out += (text * (length // len(text) + 1))[:length]
        elif kind == "zeros":
            out += bytes(length)
        else:
            out += bytes([rng.randrange(256)]) * length
    return bytes(out[:size])


SIZES = {"boot": 96 * 1024, "system": 384 * 1024, "vendor": 160 * 1024, "logo": 40 * 1024 + 123}


def ensure_keys() -> None:
    for path in (SIGNING_KEY, UNTRUSTED_KEY):
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            keymod.write_keypair(keymod.generate("ed25519"), path,
                                 path.with_name(path.name.removesuffix(".pem") + ".pub.pem"))


def write_images(out: Path, version: str, sizes: dict[str, int]) -> list[PartitionSource]:
    folder = out / "images" / version
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for name, slotted in LAYOUT:
        path = folder / f"{name}.img"
        path.write_bytes(make_image(name, version, sizes[name]))
        sources.append(PartitionSource(name, path, slotted))
    return sources


def corrupt_one_block(path: Path) -> None:
    """Flip one byte inside the first stored block of the payload."""
    with Package(path) as pkg:
        first = next(e for p in pkg.manifest.partitions for e in pkg.head.tables[p.name]
                     if e.stored_size)
        offset = pkg.head.header.payload_offset + first.stored_offset + first.stored_size // 2
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# --- Qualcomm EDL samples (zx-demo EDL layout: emulator/edl_disk.py) ---------------------
EDL_PROFILE = EdlProfile()
PROGRAMMER_NAME = "prog_firehose_zx-demo-TEST-ONLY.elf"
WRONG_PROGRAMMER_NAME = "prog_firehose_other-TEST-ONLY.elf"
EDL_SPEC = EdlSpec(hw_ids=(EDL_PROFILE.hw_id,), oem_key_hashes=(EDL_PROFILE.oem_key_hash,),
                   programmer=Programmer(PROGRAMMER_NAME, test_programmer()),
                   baseband=BasebandSource("modem", BASEBAND_OFFSET, BASEBAND_LENGTH))
EDL_BASE = PackageInfo(product="zx-demo", hardware_revisions=("A01",),
                       baseband_ids=("ZXB-100",), version="1.1.0", rollback_index=3,
                       rollback_location=0, build_time=BUILD_TIME, edl=EDL_SPEC)
EDL_LAYOUT = (("boot", True), ("system", True), ("vendor", True), ("vbmeta", True),
              ("modem", False))
EDL_SIZES = {"boot": 96 * 1024, "system": 384 * 1024, "vendor": 160 * 1024,
             "modem": 64 * 1024}


def edl_image(name: str, version: str, rollback: int, size: int) -> bytes:
    if name == "vbmeta":
        return build_vbmeta(rollback, release=f"zx-demo {version}").ljust(4096, b"\0")
    image = bytearray(make_image(name, version, size))
    if name == "modem":  # the baseband id where the manifest says (edl.baseband)
        image[BASEBAND_OFFSET:BASEBAND_OFFSET + BASEBAND_LENGTH] = \
            b"ZXB-100".ljust(BASEBAND_LENGTH, b"\0")
    return bytes(image)


def write_edl_images(out: Path, version: str, rollback: int,
                     sizes: dict[str, int]) -> list[PartitionSource]:
    folder = out / "images" / f"edl-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for name, slotted in EDL_LAYOUT:
        path = folder / f"{name}.img"
        path.write_bytes(edl_image(name, version, rollback, sizes.get(name, 0)))
        sources.append(PartitionSource(name, path, slotted))
    return sources


def build_edl(out: Path, signing: keymod.PrivateKey) -> list[Path]:
    """The EDL programmers (TEST-ONLY) and packages good / rollback / other HW id / too
    large / corrupt."""
    folder = out / "edl"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PROGRAMMER_NAME).write_bytes(test_programmer())
    (folder / WRONG_PROGRAMMER_NAME).write_bytes(test_programmer("other"))
    good = write_edl_images(out, "1.1.0", 3, EDL_SIZES)
    older = write_edl_images(out, "1.0.0", 1, EDL_SIZES)
    huge = write_edl_images(out, "9.9.9-toolarge", 3, {**EDL_SIZES, "system": 3 << 20})
    other = replace(EDL_SPEC, hw_ids=("000a50e100514986",))
    plans = {
        "zx-demo-edl-1.1.0.zpk": (EDL_BASE, good),
        "zx-demo-edl-1.0.0-rollback.zpk": (replace(EDL_BASE, version="1.0.0",
                                                   rollback_index=1), older),
        "zx-demo-edl-1.1.0-other-hwid.zpk": (replace(EDL_BASE, edl=other), good),
        "zx-demo-edl-1.1.0-too-large.zpk": (replace(EDL_BASE, version="9.9.9"), huge),
        "zx-demo-edl-1.1.0-corrupt-block.zpk": (EDL_BASE, good),
    }
    written = [folder / PROGRAMMER_NAME, folder / WRONG_PROGRAMMER_NAME]
    for name, (info, sources) in plans.items():
        path = folder / name
        build_package(info, sources, [signing], path)
        if "corrupt" in name:
            corrupt_one_block(path)
        written.append(path)
    return written


def build_all(out: Path) -> list[Path]:
    ensure_keys()
    signing = keymod.load_private_key(SIGNING_KEY)
    untrusted = keymod.load_private_key(UNTRUSTED_KEY)
    good = write_images(out, "1.1.0", SIZES)
    newer = write_images(out, "1.2.0", SIZES)
    older = write_images(out, "1.0.0", SIZES)
    huge = write_images(out, "9.9.9-toolarge", SIZES)
    with open(huge[1].path, "ab") as system:  # larger than any zx-demo system partition
        system.truncate(3 * 1024 * 1024)
    plans = {
        "zx-demo-1.1.0.zpk": (BASE, good, signing),
        "zx-demo-1.2.0-newer.zpk": (replace(BASE, version="1.2.0", rollback_index=3), newer,
                                    signing),
        "zx-demo-1.0.0-rollback.zpk": (replace(BASE, version="1.0.0", rollback_index=1), older,
                                       signing),
        "zx-demo-1.1.0-other-baseband.zpk": (replace(BASE, baseband_ids=("ZXB-200",)), good,
                                             signing),
        "zx-demo-1.1.0-too-large.zpk": (replace(BASE, version="9.9.9"), huge, signing),
        "zx-demo-1.1.0-corrupt-block.zpk": (BASE, good, signing),
        "zx-demo-1.1.0-untrusted-key.zpk": (BASE, good, untrusted),
    }
    written = []
    for name, (info, sources, key) in plans.items():
        path = out / name
        # zlib, not the per-block choice: the samples stay byte-identical whatever zstd
        # library builds them, and they show that a zlib-only package still flashes.
        build_package(info, sources, [key], path, codec="zlib")
        if "corrupt" in name:
            corrupt_one_block(path)
        written.append(path)
    return written + build_edl(out, signing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    for path in build_all(args.out):
        print(f"{path.relative_to(args.out)}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
