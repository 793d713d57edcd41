"""The compatibility policy, table-driven: each failure alone and in combination."""

from __future__ import annotations

from dataclasses import replace

import pytest

from zflash.checks import (check_all, check_compatibility, check_device, check_rollback,
                           check_storage)
from zflash.errors import Code
from zflash.facts import DeviceFacts, PartitionInfo, SlotInfo
from zflash.package.format import Manifest, PartitionEntry

HEX = "ab" * 32


def part(name: str, size: int, slotted: bool = True) -> PartitionEntry:
    count = -(-size // 65536)
    return PartitionEntry(name, slotted, size, HEX, 65536, count, HEX, size)


MANIFEST = Manifest(product="zx-demo", hardware_revisions=("A01", "A02"),
                    baseband_ids=("ZXB-100",), version="1.1.0", rollback_index=2,
                    rollback_location=0, build_time=0,
                    partitions=(part("boot", 100_000), part("system", 400_000),
                                part("logo", 50_000, slotted=False)))

FACTS = DeviceFacts(product="zx-demo", hardware_revision="A02", baseband="ZXB-100",
                    serial="EMU0001", protocol_version=1, flash_size=8 << 20,
                    cache_size=512 << 10, cache_free=512 << 10,
                    partitions=(PartitionInfo("boot", 256 << 10, True),
                                PartitionInfo("system", 1 << 20, True),
                                PartitionInfo("logo", 128 << 10, False),
                                PartitionInfo("userdata", 1 << 20, False)),
                    slots=(SlotInfo("a", True, True, True, 0, 15),
                           SlotInfo("b", False, True, False, 0, 14)),
                    current_slot="a", rollback_indexes={0: 2})

# Each fault: (name, manifest change, facts change, expected codes)
FAULTS = {
    "baseband": ({"baseband_ids": ("ZXB-200",)}, {}, [Code.COMPATIBILITY]),
    "hardware": ({}, {"hardware_revision": "B01"}, [Code.COMPATIBILITY]),
    "product": ({"product": "zx-other"}, {}, [Code.COMPATIBILITY]),
    "rollback": ({"rollback_index": 1}, {}, [Code.ROLLBACK]),
    "rollback-other-location": ({"rollback_location": 3}, {"rollback_indexes": {0: 0, 3: 9}},
                                [Code.ROLLBACK]),
    "too-large": ({"partitions": (part("boot", 300_000), part("system", 400_000),
                                  part("logo", 50_000, False))}, {}, [Code.IMAGE_TOO_LARGE]),
    "cache-full": ({}, {"cache_free": 10_000}, [Code.STORAGE]),
    "no-partition": ({"partitions": (part("radio", 1000),)}, {}, [Code.NO_SUCH_PARTITION]),
}


def apply(names: list[str]) -> tuple[Manifest, DeviceFacts]:
    manifest, facts = MANIFEST, FACTS
    for name in names:
        mchange, fchange, _ = FAULTS[name]
        manifest = replace(manifest, **mchange)
        facts = replace(facts, **fchange)
    return manifest, facts


def test_good_package_passes_every_check():
    assert check_device(MANIFEST, FACTS) == []


def test_equal_rollback_index_is_accepted():
    assert check_rollback(replace(MANIFEST, rollback_index=2), FACTS) == []


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_each_fault_alone(name):
    manifest, facts = apply([name])
    assert sorted(f.code for f in check_device(manifest, facts)) == sorted(FAULTS[name][2])


@pytest.mark.parametrize("names", [["baseband", "rollback"], ["hardware", "too-large"],
                                   ["baseband", "hardware", "rollback", "too-large"],
                                   ["product", "baseband", "hardware", "cache-full"]])
def test_faults_in_combination_are_all_reported(names):
    manifest, facts = apply(names)
    codes = sorted(f.code for f in check_device(manifest, facts))
    assert codes == sorted(c for n in names for c in FAULTS[n][2])


def test_every_failure_names_its_check_and_carries_fix_text():
    manifest, facts = apply(["baseband", "hardware", "rollback", "too-large"])
    failures = check_device(manifest, facts)
    assert {f.check for f in failures} == {"baseband", "hardware_revision", "rollback", "storage"}
    for f in failures:
        d = f.to_dict()
        assert d["fix"] and d["meaning"] and d["message"]
    by_check = {f.check: f.to_dict() for f in failures}
    assert by_check["hardware_revision"]["fix"] == "Firmware is for wrong hardware revision."


def test_each_cause_has_its_own_fix_under_one_code():
    """Product, hardware revision and baseband share 9040 and its meaning, not the fix; an
    image too large for its partition is not a full cache (9041, not 9023)."""
    manifest, facts = apply(["product", "baseband", "hardware", "too-large", "cache-full"])
    by_check: dict[str, list[dict[str, object]]] = {}
    for failure in check_device(manifest, facts):
        by_check.setdefault(failure.check, []).append(failure.to_dict())
    mismatch = [by_check[c][0] for c in ("product", "hardware_revision", "baseband")]
    assert {d["code"] for d in mismatch} == {9040}
    assert {d["meaning"] for d in mismatch} == {"Baseband mismatch"}
    assert len({d["fix"] for d in mismatch}) == 3 and len({d["what"] for d in mismatch}) == 3
    assert "product" in str(mismatch[0]["what"]) and "baseband" in str(mismatch[2]["what"])
    storage = {d["code"]: d for d in by_check["storage"]}
    assert set(storage) == {Code.IMAGE_TOO_LARGE, Code.STORAGE}
    assert "partition layout" in str(storage[Code.IMAGE_TOO_LARGE]["fix"])
    assert storage[Code.STORAGE]["fix"] == "Perform factory reset to clear logs."


def test_untrusted_signer_is_not_a_corrupt_file():
    from zflash.checks import Failure
    from zflash.errors import lookup
    untrusted = Failure(Code.SIGNATURE, "signature", "no signature by a trusted key",
                        cause="untrusted_signer").to_dict()
    corrupt = Failure(Code.SIGNATURE, "blocks", "block 3 hash differs").to_dict()
    assert untrusted["meaning"] == corrupt["meaning"] == "Signature verification failed"
    assert "--trust" in str(untrusted["fix"]) and "corrupted" not in str(untrusted["fix"])
    assert corrupt["fix"] == lookup(Code.SIGNATURE).fix == "Redownload firmware; file corrupted."


def test_slotted_package_on_device_without_slots():
    facts = replace(FACTS, slots=(), current_slot=None)
    assert [f.code for f in check_storage(MANIFEST, facts)] == [Code.SLOT]


def test_layout_mismatch_is_compatibility():
    facts = replace(FACTS, partitions=tuple(replace(p, slotted=not p.slotted)
                                            if p.name == "boot" else p
                                            for p in FACTS.partitions))
    assert [f.check for f in check_storage(MANIFEST, facts)] == ["layout"]


def test_compatibility_lists_three_failures_at_once():
    manifest, facts = apply(["product", "baseband", "hardware"])
    assert len(check_compatibility(manifest, facts)) == 3


def test_check_all_includes_the_signature(tiny_package, private_keys):
    from conftest import trust_for
    from zflash.package.reader import Package
    with Package(tiny_package) as pkg:
        facts = replace(FACTS, baseband="ZXB-999")
        failures = check_all(pkg.head, facts, trust_for(private_keys["rsa-pss"]))
        assert [f.code for f in failures][:2] == [Code.SIGNATURE, Code.COMPATIBILITY]
        assert check_all(pkg.head, FACTS, trust_for(private_keys["ed25519"])) == []
