"""Canonical JSON means canonical values: a signed manifest with a sneaky value is refused.

The manifest check used to match its patterns with ``^...$``, which accepts a trailing
newline; a package signed with ``"boot\\n"`` or ``"A01\\n"`` then verified and the emulated
device (which parses the head with the same code) accepted it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import SIGNING_KEY
from emulator_helpers import GOOD, new_device_dir
from zflash.emulator.device import EmulatedDevice
from zflash.emulator.storage import Storage
from zflash.errors import Code, ZflashError
from zflash.fields import Fields
from zflash.package import keys as keymod
from zflash.package.format import Header, canonical_json
from zflash.package.reader import Package, PackageHead
from zflash.package.signing import encode_signatures, sign


def resigned_head(package: Path, change: Callable[[dict[str, Any]], None]) -> bytes:
    """The package's head with its manifest changed by ``change`` and signed again."""
    data = package.read_bytes()
    with Package(package) as pkg:
        header = pkg.head.header
        obj = json.loads(pkg.head.manifest_bytes)
    change(obj)
    manifest = canonical_json(obj)
    signatures = encode_signatures([sign(manifest, keymod.load_private_key(SIGNING_KEY))])
    tables = data[header.tables_offset:header.payload_offset]
    new = Header(len(manifest), len(signatures), header.tables_size, header.payload_size)
    return new.encode() + manifest + signatures + tables


def _set(path: tuple[Any, ...], value: Callable[[Any], Any]) -> Callable[[dict], None]:
    def change(obj: dict[str, Any]) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value(target[path[-1]])
    return change


SNEAKY = {
    "partition name + newline": _set(("partitions", 0, "name"), lambda v: v + "\n"),
    "sha256 + newline": _set(("partitions", 0, "sha256"), lambda v: v + "\n"),
    "table_sha256 + newline": _set(("partitions", 0, "table_sha256"), lambda v: v + "\n"),
    "product + newline": _set(("product",), lambda v: v + "\n"),
    "hardware revision + newline": _set(("hardware_revisions", 0), lambda v: v + "\n"),
    "version with a trailing space": _set(("version",), lambda v: v + " "),
    "baseband with a leading space": _set(("baseband_ids", 0), lambda v: " " + v),
    "uppercase sha256": _set(("partitions", 0, "sha256"), lambda v: v.upper()),
}


@pytest.mark.parametrize("case", sorted(SNEAKY))
def test_sneaky_values_in_a_signed_manifest_are_malformed(case):
    head = resigned_head(GOOD, SNEAKY[case])
    with pytest.raises(ZflashError) as err:
        PackageHead.decode(head)
    assert err.value.code == Code.MALFORMED_PACKAGE


def test_resigned_head_without_changes_still_parses():
    """The helper itself builds valid heads, so the refusals above are about the values."""
    head = PackageHead.decode(resigned_head(GOOD, lambda obj: None))
    assert head.manifest.partitions


@pytest.mark.parametrize("case", ["partition name + newline", "hardware revision + newline"])
def test_emulated_device_refuses_the_sneaky_head(tmp_path, case):
    device = EmulatedDevice(Storage(new_device_dir(tmp_path / "dev")))
    with pytest.raises(ZflashError) as err:
        device.begin_update(resigned_head(GOOD, SNEAKY[case]))
    assert err.value.code == Code.MALFORMED_PACKAGE


@pytest.mark.parametrize("value", ["a\n", "a\r", "\ta", "a\x00", "", "x" * 65, " a", "a "])
def test_text_field_refuses_non_canonical_text(value):
    fields = Fields(lambda msg: ZflashError(Code.MALFORMED_PACKAGE, msg))
    with pytest.raises(ZflashError):
        fields.text(value, "field")


def test_text_field_keeps_inner_spaces():
    fields = Fields(lambda msg: ZflashError(Code.MALFORMED_PACKAGE, msg))
    assert fields.text("Rev A 01", "field") == "Rev A 01"
