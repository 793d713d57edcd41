"""Fuzz the .zpk head and manifest: what a package file or a host hands a device."""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, coded_or_ok, mutate
from zflash.errors import Code
from zflash.package import keys as keymod
from zflash.package.format import Manifest
from zflash.package.reader import Package, PackageHead
from zflash.package.writer import PackageInfo, PartitionSource, build_package

PACKAGE_CODES = {Code.MALFORMED_PACKAGE, Code.SIGNATURE}
INFO = PackageInfo("zx-demo", ("A01",), ("ZXB-100",), "1.0.0", 1, 0, 1_700_000_000)


@lru_cache(maxsize=1)
def real_head() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "boot.img"
        image.write_bytes(bytes(range(256)) * 200 + bytes(30000))
        out = Path(tmp) / "p.zpk"
        build_package(INFO, [PartitionSource("boot", image, True),
                             PartitionSource("logo", image, False)],
                      [keymod.generate("ed25519")], out, block_size=8192)
        with Package(out) as pkg:
            return out.read_bytes()[:pkg.head.header.payload_offset]


@FUZZ
@given(st.binary(max_size=4096))
def test_random_heads(blob: bytes) -> None:
    coded_or_ok(lambda: PackageHead.decode(blob), allowed=PACKAGE_CODES)
    coded_or_ok(lambda: PackageHead.decode(b"ZPKG\r\n\x1a\n" + blob), allowed=PACKAGE_CODES)


@FUZZ
@given(st.data())
def test_mutated_real_heads(data: st.DataObject) -> None:
    blob = mutate(real_head(), data.draw, st)
    coded_or_ok(lambda: PackageHead.decode(blob), allowed=PACKAGE_CODES)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=80)
    | st.sampled_from(["boot", "boot\n", " A01", "zpk/1", "a" * 64, "0" * 64, "0" * 64 + "\n"]),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(
        st.sampled_from(["format", "product", "partitions", "name", "sha256", "size",
                         "block_size", "block_count", "slotted", "version", "x"]) | st.text(),
        inner, max_size=8),
    max_leaves=40)


@FUZZ
@given(JSON)
def test_random_manifest_json(obj: object) -> None:
    raw = json.dumps(obj).encode()
    coded_or_ok(lambda: Manifest.decode(raw), allowed={Code.MALFORMED_PACKAGE})


@FUZZ
@given(st.data())
def test_mutated_real_manifest_fields(data: st.DataObject) -> None:
    """Valid structure, one field replaced by anything: still coded (or still valid)."""
    head = PackageHead.decode(real_head())
    obj = json.loads(head.manifest_bytes)
    target = obj if data.draw(st.booleans()) else obj["partitions"][0]
    key = data.draw(st.sampled_from(sorted(target)))
    target[key] = data.draw(JSON)
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    coded_or_ok(lambda: Manifest.decode(raw), allowed={Code.MALFORMED_PACKAGE})
