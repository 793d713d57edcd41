"""Fuzz the update catalog parser: what any server on the network may send."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, coded_or_ok, mutate
from zflash.errors import Code
from zflash.fetch import catalog as catmod
from zflash.package import keys as keymod

CATALOG_CODES = {Code.MALFORMED_PACKAGE, Code.SIGNATURE, Code.DOWNLOAD}


def _catalog_bytes() -> bytes:
    """A catalog built from the encoder, whatever the entry fields are."""
    fields = {name: _sample(name) for name in catmod.ENTRY_FIELDS}
    entry = catmod.CatalogEntry(**fields)
    catalog = catmod.Catalog(1, 1_700_000_000, 1_800_000_000, (entry,))
    return catmod.encode(catalog, [keymod.generate("ed25519")])


def _sample(name: str) -> object:
    samples = {"name": "zx-demo-1.1.0.zpk", "url": "zx-demo-1.1.0.zpk", "size": 1000,
               "product": "zx-demo", "version": "1.1.0", "hardware_revisions": ("A01",),
               "baseband_ids": ("ZXB-100",), "rollback_index": 1, "rollback_location": 0}
    if name in samples:
        return samples[name]
    return "0" * 64 if "sha256" in name or "digest" in name else 1


_VALID: list[bytes] = []


def valid() -> bytes:
    if not _VALID:
        _VALID.append(_catalog_bytes())
    return _VALID[0]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=60),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["signed", "signatures", "format", "version", "issued", "expires",
                         "packages", "name", "url", "size", "sha256"]) | st.text(max_size=8),
        inner, max_size=6),
    max_leaves=30)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(blob: bytes) -> None:
    coded_or_ok(lambda: catmod.decode(blob), allowed=CATALOG_CODES)


@FUZZ
@given(JSON)
def test_random_json(obj: object) -> None:
    raw = json.dumps(obj, allow_nan=True).encode()
    coded_or_ok(lambda: catmod.decode(raw), allowed=CATALOG_CODES)


@FUZZ
@given(st.data())
def test_mutated_real_catalog(data: st.DataObject) -> None:
    blob = mutate(valid(), data.draw, st)
    coded_or_ok(lambda: catmod.decode(blob), allowed=CATALOG_CODES)


@FUZZ
@given(st.data())
def test_real_catalog_with_one_field_replaced(data: st.DataObject) -> None:
    obj = json.loads(valid())
    entry = obj["signed"]["packages"][0]
    key = data.draw(st.sampled_from(sorted(entry)))
    entry[key] = data.draw(JSON)
    raw = json.dumps(obj).encode()
    coded_or_ok(lambda: catmod.decode(raw), allowed=CATALOG_CODES)
