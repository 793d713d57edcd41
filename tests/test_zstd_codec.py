"""zstd as a package block kind and a ZDL codec: per-block choice, bounds, negotiation, fallback."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from conftest import INFO, SAMPLES, SIGNING_KEY, SIGNING_PUB, seeded_image, trust_for
from emulator_helpers import GOOD, new_device_dir
from zflash import zstd
from zflash.emulator.device import EmulatedDevice
from zflash.emulator.storage import Profile, Storage
from zflash.errors import Code, ZflashError
from zflash.package import keys as keymod
from zflash.package.format import (KIND_NAMES, KIND_RAW, KIND_ZERO, KIND_ZLIB, KIND_ZSTD,
                                   BlockEntry)
from zflash.package.reader import Package, decode_block, wire_form
from zflash.package.writer import PackageInfo, PartitionSource, build_package
from zflash.protocol.zdl import (CODEC_ZLIB, CODEC_ZSTD, NEED_DATA, DeviceEngine,
                                 HostEngine)
from zflash.protocol.zdl import decode_block as wire_decode

BLOCK = 8192


def _patch_content_size(frame: bytes, size: int) -> bytes:
    """The frame with its 4-byte Frame_Content_Size field rewritten (RFC 8878 3.1.1.1)."""
    descriptor = frame[4]
    assert descriptor >> 6 == 2 and not descriptor & 3  # 4-byte size, no dictionary id
    at = 5 if descriptor & 0x20 else 6  # single segment: no window descriptor byte
    return frame[:at] + struct.pack("<I", size) + frame[at + 4:]


# -- the bounded decoder -----------------------------------------------------------------------

def test_zstd_round_trip_and_exact_length():
    raw = b"zflash " * 3000
    frame = zstd.compress(raw)
    assert zstd.decompress(frame, len(raw)) == raw
    for bad in (frame + b"x", frame[:-1], b"not zstd at all"):  # trailing, truncated, garbage
        with pytest.raises(zstd.ZstdError):
            zstd.decompress(bad, len(raw))
    with pytest.raises(zstd.ZstdError, match="claims"):
        zstd.decompress(frame, len(raw) - 1)


def test_zstd_bomb_is_refused_before_decoding():
    """A frame claiming more than the block is refused on its header; one that hides its size,
    or lies about it, never produces more than the block."""
    bomb = zstd.compress(bytes(64 << 20), 3)
    assert len(bomb) < 4096
    with pytest.raises(zstd.ZstdError, match="claims"):
        zstd.decompress(bomb, 65536)
    import zstandard
    hidden = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1 << 20))
    with pytest.raises(zstd.ZstdError, match="content size"):
        zstd.decompress(hidden, 65536)
    liar = _patch_content_size(zstd.compress(bytes(1 << 20), 3), 65536)
    with pytest.raises(zstd.ZstdError):
        zstd.decompress(liar, 65536)


# -- package side ---------------------------------------------------------------------------

def _pack(tmp_path: Path, data: bytes, codec: str, private_keys) -> Path:
    image = tmp_path / f"img-{codec}.img"
    image.write_bytes(data)
    out = tmp_path / f"p-{codec}.zpk"
    build_package(INFO, [PartitionSource("boot", image, True)], [private_keys["ed25519"]], out,
                  codec=codec, block_size=BLOCK)
    return out


def _kinds(path: Path) -> list[int]:
    with Package(path) as pkg:
        return [e.kind for e in pkg.head.tables["boot"]]


def test_auto_stores_each_block_in_its_smallest_form(tmp_path: Path, private_keys):
    data = seeded_image("zstd-auto", 40 * BLOCK)
    auto = _pack(tmp_path, data, "auto", private_keys)
    with Package(auto) as pkg:
        part = pkg.manifest.partitions[0]
        assert b"".join(bytes(b) for _, b in pkg.iter_blocks(part)) == data
        assert pkg.verify(trust_for(private_keys["ed25519"]))
        for index, entry, stored in pkg.iter_stored(part):
            raw = data[index * BLOCK:(index + 1) * BLOCK]
            if entry.kind == KIND_ZERO:
                assert raw == bytes(len(raw))
                continue
            sizes = [len(raw), len(zlib.compress(raw, 6)), len(zstd.compress(raw))]
            assert len(stored) == min(sizes), (index, entry.kind, sizes)
    assert {KIND_ZSTD, KIND_ZERO, KIND_RAW} <= set(_kinds(auto))
    assert KIND_ZSTD not in _kinds(_pack(tmp_path, data, "zlib", private_keys))
    assert set(_kinds(_pack(tmp_path, data, "zstd", private_keys))) <= {KIND_ZSTD, KIND_RAW,
                                                                       KIND_ZERO}
    assert auto.stat().st_size < (tmp_path / "p-zlib.zpk").stat().st_size


def test_corrupt_zstd_block_is_a_signature_failure(tmp_path: Path, private_keys):
    data = b"abc" * (4 * BLOCK)
    path = _pack(tmp_path, data, "zstd", private_keys)
    with Package(path) as pkg:
        part = pkg.manifest.partitions[0]
        entry = pkg.head.tables["boot"][0]
        stored = pkg.read_stored(part, 0)
        assert entry.kind == KIND_ZSTD
        # a bomb in the block's place: same claimed kind, far more output
        bomb = zstd.compress(bytes(16 << 20), 3)
        for bad in (bomb, stored + b"\0", stored[:-2]):
            forged = BlockEntry(entry.sha256, KIND_ZSTD, len(bad), entry.stored_offset)
            with pytest.raises(ZflashError) as err:
                decode_block(part, 0, forged, bad)
            assert err.value.code == Code.SIGNATURE
        assert decode_block(part, 0, entry, stored) == data[:BLOCK]


def test_wire_form_sends_as_stored_or_decodes_for_a_device_without_zstd(tmp_path: Path,
                                                                       private_keys):
    data = seeded_image("zstd-wire", 24 * BLOCK)
    path = _pack(tmp_path, data, "auto", private_keys)
    with Package(path) as pkg:
        part = pkg.manifest.partitions[0]
        for index, entry, stored in pkg.iter_stored(part):
            raw = data[index * BLOCK:(index + 1) * BLOCK]
            if entry.kind == KIND_ZERO:
                with pytest.raises(ZflashError):
                    wire_form(part, index, entry, stored, ("zstd", "zlib", "none"))
                continue
            codec, payload = wire_form(part, index, entry, stored, ("zstd", "zlib", "none"))
            assert (codec, bytes(payload)) == ({KIND_RAW: "none", KIND_ZLIB: "zlib",
                                               KIND_ZSTD: "zstd"}[entry.kind], bytes(stored))
            codec, payload = wire_form(part, index, entry, stored, ("zlib", "none"))
            if entry.kind == KIND_ZSTD:
                assert (codec, bytes(payload)) == ("none", raw)
            else:
                assert codec != "zstd"


def test_cli_pack_auto_then_inspect_and_verify(tmp_path: Path):
    image = tmp_path / "boot.img"
    image.write_bytes(seeded_image("cli-zstd", 30 * BLOCK))
    out = tmp_path / "a.zpk"
    cli = [sys.executable, "-m", "zflash"]
    packed = subprocess.run(cli + ["pack", "--product", "zx-demo", "--hw-rev", "A01",
                                   "--baseband", "ZXB-100", "--version", "2.0",
                                   "--rollback-index", "2", "--build-time", "0",
                                   "--image", f"boot={image}", "--key", str(SIGNING_KEY),
                                   "--codec", "auto", "--block-size", str(BLOCK), "-o",
                                   str(out)], capture_output=True, text=True, timeout=120)
    assert packed.returncode == 0, packed.stderr
    shown = subprocess.run(cli + ["inspect", str(out), "--json"], capture_output=True, text=True,
                           timeout=60)
    blocks = json.loads(shown.stdout)["blocks"]["boot"]
    assert set(blocks) == set(KIND_NAMES.values()) and blocks["zstd"] > 0
    verified = subprocess.run(cli + ["verify", str(out), "--trust", str(SIGNING_PUB)],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stderr


# -- the wire ---------------------------------------------------------------------------------

def test_wire_decode_zstd_bounded():
    raw = bytes(range(256)) * 32
    assert wire_decode(CODEC_ZSTD, zstd.compress(raw), len(raw)) == raw
    with pytest.raises(ZflashError) as err:
        wire_decode(CODEC_ZSTD, zstd.compress(bytes(1 << 24), 3), 65536)
    assert err.value.code == Code.PROTOCOL
    with pytest.raises(ZflashError):
        wire_decode(CODEC_ZSTD, zlib.compress(raw), len(raw))


def _agreed(host: HostEngine, device: DeviceEngine) -> tuple[str, ...]:
    for frame in host.hello():
        device.receive_data(frame)
    for frame in device.data_to_send():
        host.receive_data(frame)
    while host.next_event() is not NEED_DATA:
        pass
    assert host.session is not None
    return host.session.codecs


def test_handshake_offers_zstd_and_falls_back_without_it():
    assert _agreed(HostEngine(), DeviceEngine()) == ("zstd", "zlib", "none")
    host = HostEngine()
    assert _agreed(host, DeviceEngine(codecs=("zlib", "none"))) == ("zlib", "none")
    with pytest.raises(ZflashError) as err:
        host.send_block(0, 0, CODEC_ZSTD, b"x")
    assert err.value.code == Code.INTERNAL
    assert host.send_block(0, 0, CODEC_ZLIB, zlib.compress(b"x"))
    assert _agreed(HostEngine(codecs=("zlib", "none")), DeviceEngine()) == ("zlib", "none")


# -- the emulated device ------------------------------------------------------------------------

def _repack_good(tmp_path: Path) -> Path:
    """The 1.1.0 sample's images and metadata again, each block in its smallest form."""
    with Package(GOOD) as pkg:
        m = pkg.manifest
        info = PackageInfo(m.product, m.hardware_revisions, m.baseband_ids, m.version,
                           m.rollback_index, m.rollback_location, m.build_time)
        sources = [PartitionSource(p.name, SAMPLES / "images" / "1.1.0" / f"{p.name}.img",
                                   p.slotted) for p in m.partitions]
    out = tmp_path / "good-auto.zpk"
    build_package(info, sources, [keymod.load_private_key(SIGNING_KEY)], out, codec="auto")
    assert KIND_ZSTD in {e.kind for t in Package(out).head.tables.values() for e in t}
    return out


@pytest.mark.parametrize("accepted", [("zstd", "zlib", "none"), ("zlib", "none")])
def test_device_flashes_a_zstd_package_natively_or_decoded_by_the_host(tmp_path: Path,
                                                                      accepted):
    package = _repack_good(tmp_path)
    root = new_device_dir(tmp_path / "dev")
    device = EmulatedDevice(Storage(root))
    kinds = {"none": KIND_RAW, "zlib": KIND_ZLIB, "zstd": KIND_ZSTD}
    sent: set[str] = set()
    with Package(package) as pkg:
        device.begin_update(package.read_bytes()[:pkg.head.header.payload_offset])
        for index, part in enumerate(pkg.manifest.partitions):
            for block, entry, stored in pkg.iter_stored(part):
                if entry.kind == KIND_ZERO:
                    continue
                codec, payload = wire_form(part, block, entry, stored, accepted)
                sent.add(codec)
                device.write_block(index, block, payload, kind=kinds[codec])
            assert device.commit_partition(index) == part.sha256
        for part in pkg.manifest.partitions:
            name = f"{part.name}_b.img" if part.slotted else f"{part.name}.img"
            with open(root / "partitions" / name, "rb") as handle:
                assert hashlib.sha256(handle.read(part.size)).hexdigest() == part.sha256
    assert ("zstd" in sent) == ("zstd" in accepted)


def test_profile_zdl_codecs_is_validated():
    assert Profile.from_json({"zdl_codecs": ["zlib", "none"]}).zdl_codecs == ("zlib", "none")
    assert Profile.from_json({}).zdl_codecs is None
    for bad in (["zlib"], ["none", "lzma"], ["none", "none"]):
        with pytest.raises(ZflashError) as err:
            Profile.from_json({"zdl_codecs": bad})
        assert err.value.code == Code.USAGE


def test_emulator_without_zstd_welcomes_without_it(tmp_path: Path):
    from zflash.emulator.runner import EmulatorRunner
    runner = EmulatorRunner(tmp_path / "dev", Profile(zdl_codecs=("zlib", "none")))
    assert runner.server.options.codecs == ("zlib", "none")
    default = EmulatorRunner(tmp_path / "dev2", Profile())
    assert default.server.options.codecs is None  # DeviceEngine: all it can decode (zstd too)


def test_zdl_vector_write_block_zstd_decodes_to_its_raw_block():
    vectors = json.loads((SAMPLES.parent / "protocols" / "zdl-vectors.json").read_text())
    vector = next(v for v in vectors["vectors"] if v["name"] == "write_block_zstd")
    fields = vector["message"]["fields"]
    raw = bytes.fromhex(vector["raw_hex"])
    assert fields["codec"] == CODEC_ZSTD
    assert wire_decode(CODEC_ZSTD, bytes.fromhex(fields["data_hex"]), len(raw)) == raw
