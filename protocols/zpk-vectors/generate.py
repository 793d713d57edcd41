#!/usr/bin/env python3
"""Rebuild the zpk test vectors: two tiny packages, their TEST-ONLY key, images, expected parses.

``tiny.zpk`` stores blocks as zlib, raw and zero (a reader without zstd reads it);
``tiny-auto.zpk`` holds the same images with each block in the smallest form, so it has all
four kinds: zstd, zlib, raw and zero. The key is created once and committed; with it, this
script reproduces every file byte for byte (zstd output is that of libzstd 1.5.x at level 19).
Usage: python protocols/zpk-vectors/generate.py [OUT_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from zflash.package import keys as keymod  # noqa: E402
from zflash.package.reader import Package  # noqa: E402
from zflash.package.writer import PackageInfo, PartitionSource, build_package  # noqa: E402

KEY = HERE / "tiny.TEST-ONLY.key.pem"
PUB = HERE / "tiny.pub.pem"
INFO = PackageInfo(product="zx-vector", hardware_revisions=("R1",), baseband_ids=("BB-1",),
                   version="0.0.1", rollback_index=7, rollback_location=1, build_time=1_700_000_000)


#: package name -> codec it is built with
PACKAGES = {"tiny": "zlib", "tiny-auto": "auto"}


def images() -> dict[str, bytes]:
    """Every block kind appears; the last block is short."""
    raw_block = bytes((i * 7 + 3) % 251 for i in range(8192))
    return {"boot": raw_block + b"ab" * 4096 + bytes(8192) + b"end",
            "misc": b"misc-partition " * 40}


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    out_dir.mkdir(parents=True, exist_ok=True)
    if not KEY.exists():
        keymod.write_keypair(keymod.generate("ed25519"), KEY, PUB)
    sources = []
    for name, content in images().items():
        path = out_dir / f"tiny.{name}.img"
        path.write_bytes(content)
        sources.append(PartitionSource(name, path, name == "boot"))
    for name, codec in PACKAGES.items():
        out = out_dir / f"{name}.zpk"
        build_package(INFO, sources, [keymod.load_private_key(KEY)], out, codec=codec,
                      block_size=8192)
        write_expected(out, out_dir / f"{name}.expected.json")
        print(f"wrote {out} ({out.stat().st_size} bytes) and {name}.expected.json")


def write_expected(out: Path, expected_path: Path) -> None:
    with Package(out) as pkg:
        h = pkg.head.header
        expected = {
            "key_id": pkg.head.signatures[0].key_id.hex(),
            "manifest_sha256": pkg.head.digest,
            "header": [h.manifest_size, h.signatures_size, h.tables_size, h.payload_size],
            "manifest": pkg.manifest.to_json(),
            "tables": {p.name: [{"sha256": e.sha256.hex(), "kind": e.kind,
                                 "stored_size": e.stored_size, "stored_offset": e.stored_offset}
                                for e in pkg.head.tables[p.name]]
                       for p in pkg.manifest.partitions},
        }
    expected_path.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
