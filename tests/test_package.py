"""The .zpk format: round trips, tamper sweeps, truncation, trust, determinism, sparse input."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import INFO, require_tool, seeded_image, trust_for
from zflash.errors import Code, ZflashError
from zflash.package import keys as keymod
from zflash.package import sparse
from zflash.package.format import ENTRY_SIZE, HEADER_SIZE, KIND_RAW, KIND_ZERO, KIND_ZLIB
from zflash.package.reader import Package, PackageHead
from zflash.package.writer import PackageInfo, PartitionSource, build_package

STRUCTURAL = {Code.MALFORMED_PACKAGE, Code.SIGNATURE}


def verify_bytes(data: bytes, trust: keymod.TrustStore) -> None:
    with Package(io.BytesIO(data)) as pkg:
        pkg.verify(trust)


@pytest.mark.parametrize("algorithm", keymod.ALGORITHMS)
def test_round_trip_each_algorithm(tmp_path: Path, tiny_images, private_keys, algorithm):
    key = private_keys[algorithm]
    out = tmp_path / f"{algorithm}.zpk"
    manifest = build_package(INFO, tiny_images, [key], out, block_size=8192)
    with Package(out) as pkg:
        assert pkg.verify(trust_for(key)) == [keymod.key_id(key)]
        assert pkg.manifest == manifest
        assert pkg.head.signatures[0].algorithm == algorithm
        for part, src in zip(pkg.manifest.partitions, tiny_images):
            raw = b"".join(bytes(b) for _, b in pkg.iter_blocks(part))
            assert raw == src.path.read_bytes()


def test_block_kinds_and_compactness(tiny_package: Path):
    with Package(tiny_package) as pkg:
        kinds = [e.kind for e in pkg.head.tables["boot"]]
        assert kinds == [KIND_RAW, KIND_ZLIB, KIND_ZERO, KIND_RAW]
        boot = pkg.manifest.partition("boot")
        assert boot is not None and boot.stored_size < boot.size - 8192


def test_two_signatures_and_either_key_trusted(tmp_path, tiny_images, private_keys):
    keys = [private_keys["ed25519"], private_keys["ecdsa-p256"]]
    out = tmp_path / "two.zpk"
    build_package(INFO, tiny_images, keys, out, block_size=8192)
    for key in keys:
        with Package(out) as pkg:
            assert pkg.verify(trust_for(key)) == [keymod.key_id(key)]
    with Package(out) as pkg:
        assert len(pkg.verify(trust_for(*keys))) == 2


def test_deterministic_for_every_algorithm(tmp_path, tiny_images, private_keys):
    for algorithm, key in private_keys.items():
        first, second = tmp_path / "a.zpk", tmp_path / "b.zpk"
        build_package(INFO, tiny_images, [key], first, block_size=8192)
        build_package(INFO, tiny_images, [key], second, block_size=8192)
        assert first.read_bytes() == second.read_bytes(), algorithm


def test_untrusted_key_is_9012(tiny_package, private_keys):
    with Package(tiny_package) as pkg, pytest.raises(ZflashError) as err:
        pkg.verify(trust_for(private_keys["ecdsa-p256"]))
    assert err.value.code == Code.SIGNATURE


def test_empty_trust_store_is_its_own_code(tiny_package):
    with Package(tiny_package) as pkg, pytest.raises(ZflashError) as err:
        pkg.verify(keymod.TrustStore())
    assert err.value.code == Code.NO_TRUSTED_KEY


def test_package_carrying_its_own_key_is_refused(tmp_path, tiny_images, private_keys):
    """An attacker signs with their own key and ships the public key inside the package."""
    vendor, attacker = private_keys["ed25519"], keymod.generate("ed25519")
    out = tmp_path / "evil.zpk"
    build_package(INFO, tiny_images, [attacker], out, block_size=8192)
    # Hide the attacker's key in the package: appended, and in a signed text field.
    appended = out.read_bytes() + keymod.public_pem(attacker)
    with pytest.raises(ZflashError) as err:
        verify_bytes(appended, trust_for(vendor))
    assert err.value.code in STRUCTURAL
    with Package(out) as pkg, pytest.raises(ZflashError) as err:
        pkg.verify(trust_for(vendor))
    assert err.value.code == Code.SIGNATURE


def _regions(path: Path) -> dict[str, tuple[int, int]]:
    with Package(path) as pkg:
        h = pkg.head.header
        return {"header": (0, HEADER_SIZE),
                "manifest": (h.manifest_offset, h.signatures_offset),
                "signatures": (h.signatures_offset, h.tables_offset),
                "tables": (h.tables_offset, h.payload_offset)}


@pytest.mark.parametrize("region", ["header", "manifest", "signatures", "tables"])
def test_every_single_byte_flip_in_the_head_fails(tiny_package, private_keys, region):
    data = tiny_package.read_bytes()
    start, end = _regions(tiny_package)[region]
    trust = trust_for(private_keys["ed25519"])
    verify_bytes(data, trust)  # the untouched package is good
    for pos in range(start, end):
        for mask in (0x01, 0x80):
            bad = bytearray(data)
            bad[pos] ^= mask
            with pytest.raises(ZflashError) as err:
                verify_bytes(bytes(bad), trust)
            assert err.value.code in STRUCTURAL, (region, pos, err.value)


def test_one_byte_in_each_stored_block_fails(tiny_package, private_keys):
    data = tiny_package.read_bytes()
    trust = trust_for(private_keys["ed25519"])
    with Package(tiny_package) as pkg:
        base = pkg.head.header.payload_offset
        stored = [e for p in pkg.manifest.partitions for e in pkg.head.tables[p.name]
                  if e.stored_size]
    assert len(stored) >= 3
    for entry in stored:
        for pos in (entry.stored_offset, entry.stored_offset + entry.stored_size // 2,
                    entry.stored_offset + entry.stored_size - 1):
            bad = bytearray(data)
            bad[base + pos] ^= 0x40
            with pytest.raises(ZflashError) as err:
                verify_bytes(bytes(bad), trust)
            assert err.value.code == Code.SIGNATURE


def test_truncation_at_every_structural_boundary(tiny_package, private_keys):
    data = tiny_package.read_bytes()
    trust = trust_for(private_keys["ed25519"])
    with Package(tiny_package) as pkg:
        h = pkg.head.header
        cuts = {0, 1, 8, HEADER_SIZE - 1, HEADER_SIZE, h.signatures_offset, h.tables_offset,
                h.payload_offset, len(data) - 1}
        cuts |= {h.tables_offset + i * ENTRY_SIZE for i in range(h.tables_size // ENTRY_SIZE)}
        cuts |= {h.payload_offset + e.stored_offset for p in pkg.manifest.partitions
                 for e in pkg.head.tables[p.name] if e.stored_size}
    for cut in sorted(cuts | {c + 1 for c in cuts} | {c - 1 for c in cuts if c}):
        if cut >= len(data):
            continue
        with pytest.raises(ZflashError) as err:
            verify_bytes(data[:cut], trust)
        assert err.value.code == Code.MALFORMED_PACKAGE, cut
    # The device parses a head from what arrived so far: every prefix is a coded error.
    for cut in range(h.payload_offset):
        with pytest.raises(ZflashError) as err:
            PackageHead.decode(data[:cut])
        assert err.value.code == Code.MALFORMED_PACKAGE


def test_decompression_bomb_is_bounded(tmp_path, private_keys):
    """A zlib block that inflates far beyond its block size fails after at most one block."""
    from zflash.package.format import PartitionEntry
    from zflash.package.reader import inflate_bounded
    import zlib
    bomb = zlib.compress(bytes(64 << 20), 9)
    part = PartitionEntry("x", True, 8192, "0" * 64, 8192, 1, "0" * 64, len(bomb))
    with pytest.raises(ZflashError) as err:
        inflate_bounded(bomb, 8192, part, 0)
    assert err.value.code == Code.SIGNATURE


def test_sparse_input_gives_identical_package(tmp_path, private_keys):
    raw = tmp_path / "system.img"
    raw.write_bytes(seeded_image("sparse-eq", 300 * 1024))
    ours = tmp_path / "system.simg"
    with open(raw, "rb") as src, open(ours, "wb") as dst:
        sparse.write_sparse(src, dst)
    key = private_keys["ed25519"]
    outputs = []
    for name, path in (("raw", raw), ("ours", ours)):
        out = tmp_path / f"{name}.zpk"
        build_package(INFO, [PartitionSource("system", path, True)], [key], out)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_img2simg_input_gives_identical_package(tmp_path, private_keys):
    img2simg = require_tool("img2simg")
    raw = tmp_path / "system.img"
    raw.write_bytes(seeded_image("img2simg-eq", 256 * 1024))
    theirs = tmp_path / "system.simg"
    subprocess.run([img2simg, str(raw), str(theirs)], check=True, capture_output=True)
    assert sparse.is_sparse(theirs.read_bytes()[:4])
    key = private_keys["ed25519"]
    raw_pkg, sparse_pkg = tmp_path / "raw.zpk", tmp_path / "sparse.zpk"
    build_package(INFO, [PartitionSource("system", raw, True)], [key], raw_pkg)
    build_package(INFO, [PartitionSource("system", theirs, True)], [key], sparse_pkg)
    assert raw_pkg.read_bytes() == sparse_pkg.read_bytes()


def test_bad_inputs_to_the_writer_are_coded(tmp_path, private_keys):
    key = private_keys["ed25519"]
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    cases = [
        ([PartitionSource("boot", tmp_path / "missing.img", True)], Code.FILE_UNREADABLE),
        ([PartitionSource("boot", empty, True)], Code.MALFORMED_IMAGE),
        ([PartitionSource("Bad Name", empty, True)], None),
    ]
    for sources, code in cases[:2]:
        with pytest.raises(ZflashError) as err:
            build_package(INFO, sources, [key], tmp_path / "x.zpk")
        assert err.value.code == code
    good = tmp_path / "g.img"
    good.write_bytes(b"x" * 100)
    with pytest.raises(ZflashError) as err:
        build_package(INFO, [PartitionSource("Bad Name", good, True)], [key], tmp_path / "x.zpk")
    assert err.value.code in (Code.MALFORMED_PACKAGE, Code.USAGE)
    assert not (tmp_path / "x.zpk").exists()


_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_text = st.from_regex(r"[A-Za-z0-9.\-]{1,12}", fullmatch=True)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(images=st.lists(st.tuples(_names, st.binary(min_size=1, max_size=40000), st.booleans()),
                       min_size=1, max_size=3, unique_by=lambda t: t[0]),
       product=_text, revisions=st.lists(_text, min_size=1, max_size=3, unique=True),
       rollback=st.integers(0, 2**63 - 1), location=st.integers(0, 31),
       zero_tail=st.integers(0, 20000))
def test_random_images_and_manifests_round_trip(tmp_path_factory, private_keys, images, product,
                                                revisions, rollback, location, zero_tail):
    folder = tmp_path_factory.mktemp("rt")
    sources = []
    for name, content, slotted in images:
        path = folder / f"{name}.img"
        path.write_bytes(content + bytes(zero_tail))
        sources.append(PartitionSource(name, path, slotted))
    info = PackageInfo(product, tuple(revisions), ("BB-1",), "v1", rollback, location, 0)
    out = folder / "p.zpk"
    key = private_keys["ed25519"]
    manifest = build_package(info, sources, [key], out, block_size=8192)
    with Package(out) as pkg:
        pkg.verify(trust_for(key))
        assert pkg.manifest == manifest
        assert pkg.manifest.product == product and pkg.manifest.rollback_index == rollback
        for part, src in zip(pkg.manifest.partitions, sources):
            assert b"".join(bytes(b) for _, b in pkg.iter_blocks(part)) == src.path.read_bytes()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_raise_only_coded_errors(blob):
    for data in (blob, b"ZPKG\r\n\x1a\n" + blob):
        with pytest.raises(ZflashError) as err:
            verify_bytes(data, keymod.TrustStore())
        assert err.value.code in STRUCTURAL | {Code.NO_TRUSTED_KEY}


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_mutations_of_a_real_head_raise_only_coded_errors(data):
    """Many random byte changes at once to a valid head: still only coded errors."""
    global _HEAD_CACHE
    head = _tiny_head()
    buf = bytearray(head)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    try:
        PackageHead.decode(bytes(buf))
    except ZflashError as exc:
        assert exc.code in STRUCTURAL


_HEAD_CACHE: bytes | None = None


def _tiny_head() -> bytes:
    global _HEAD_CACHE
    if _HEAD_CACHE is None:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            img = Path(tmp) / "a.img"
            img.write_bytes(seeded_image("head", 40000))
            out = Path(tmp) / "a.zpk"
            build_package(INFO, [PartitionSource("boot", img, True)],
                          [keymod.generate("ed25519")], out, block_size=8192)
            with Package(out) as pkg:
                _HEAD_CACHE = out.read_bytes()[:pkg.head.header.payload_offset]
    return _HEAD_CACHE


@pytest.mark.parametrize("name", ["tiny", "tiny-auto"])
def test_protocol_vector_tiny_package_parses_as_expected(name: str):
    """protocols/zpk-vectors/: tiny packages and their expected parse, for other implementations.

    tiny.zpk is zlib-only (an old package still reads); tiny-auto.zpk has all four kinds."""
    folder = Path(__file__).resolve().parent.parent / "protocols" / "zpk-vectors"
    expected = json.loads((folder / f"{name}.expected.json").read_text())
    kinds = {e["kind"] for t in expected["tables"].values() for e in t}
    assert kinds == ({0, 1, 2} if name == "tiny" else {0, 1, 2, 3})
    pub = keymod.load_public_key(folder / "tiny.pub.pem")
    store = keymod.TrustStore()
    store.add(pub)
    with Package(folder / f"{name}.zpk") as pkg:
        assert pkg.verify(store) == [bytes.fromhex(expected["key_id"])]
        assert pkg.head.digest == expected["manifest_sha256"]
        assert pkg.manifest.to_json() == expected["manifest"]
        h = pkg.head.header
        assert [h.manifest_size, h.signatures_size, h.tables_size, h.payload_size] == \
            expected["header"]
        tables = {p.name: [{"sha256": e.sha256.hex(), "kind": e.kind,
                            "stored_size": e.stored_size, "stored_offset": e.stored_offset}
                           for e in pkg.head.tables[p.name]] for p in pkg.manifest.partitions}
        assert tables == expected["tables"]
        for part in pkg.manifest.partitions:
            raw = b"".join(bytes(b) for _, b in pkg.iter_blocks(part))
            assert raw == (folder / f"tiny.{part.name}.img").read_bytes()
