"""Importing Qualcomm flat builds (rawprogram/patch XML): parsing, mapping, and end to end a
build whose GPT the stock `sgdisk` made, packed with `zflash pack --rawprogram`, flashed onto
the emulated EDL device over the emulated USB bus, then checked with `sgdisk -v`."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SAMPLES, SIGNING_KEY, SIGNING_PUB, require_tool
from zflash.errors import Code, ZflashError
from zflash.package.edlspec import edl_from_json
from zflash.package.rawprogram import (NOTE_EMPTY, NOTE_ERASE, NOTE_GPT, import_build,
                                       parse_patch, parse_rawprogram)

ZFLASH = [sys.executable, "-m", "zflash"]
PROGRAMMER = SAMPLES / "edl" / "prog_firehose_zx-demo-TEST-ONLY.elf"


def prog(label: str, filename: str, start: str, sectors: int | str, lun: int = 0,
         ss: int = 512, **extra: str) -> str:
    attrs = {"SECTOR_SIZE_IN_BYTES": ss, "file_sector_offset": 0, "filename": filename,
             "label": label, "num_partition_sectors": sectors,
             "physical_partition_number": lun, "start_sector": start, **extra}
    return "<program " + " ".join(f'{k}="{v}"' for k, v in attrs.items()) + "/>"


def write_xml(path: Path, entries: list[str], root: str = "data") -> Path:
    path.write_text('<?xml version="1.0" ?>\n<' + root + '>\n' + "\n".join(entries) +
                    f"\n</{root}>\n")
    return path


def coded(err: pytest.ExceptionInfo[ZflashError], code: Code, cause: str | None = None) -> str:
    assert err.value.code == code, err.value
    if cause is not None:
        assert err.value.cause == cause, err.value
    return err.value.detail


# ------------------------------------------------------------------------ parsing
def test_every_attribute_form_is_read(tmp_path):
    (tmp_path / "a.img").write_bytes(b"a" * 1000)
    raw = write_xml(tmp_path / "rawprogram0.xml", [
        prog("PrimaryGPT", "gpt_main0.bin", "0", 34),
        prog("boot_a", "a.img", "0x800", "0x100", sparse="false"),
        '<program SECTOR_SIZE_IN_BYTES="512" filename="" label="boot_b" '
        'num_partition_sectors="256" physical_partition_number="0" start_sector="2304"/>',
        prog("userdata", "a.img", "4096", 0, LUN="x", readbackverify="false",
             size_in_KB="0.0", partofsingleimage="false", start_byte_hex="0x200000"),
        prog("BackupGPT", "gpt_backup0.bin", "NUM_DISK_SECTORS-33.", 33),
        '<erase SECTOR_SIZE_IN_BYTES="512" num_partition_sectors="8" label="misc" '
        'physical_partition_number="0" start_sector="8000"/>',
    ])
    got = parse_rawprogram(raw)
    assert [(p.line, p.label, p.start_sector, p.sectors) for p in got] == [
        (3, "PrimaryGPT", "0", 34), (4, "boot_a", "2048", 256), (5, "boot_b", "2304", 256),
        (6, "userdata", "4096", 0), (7, "BackupGPT", "NUM_DISK_SECTORS-33.", 33),
        (8, "misc", "8000", 8)]
    assert got[0].is_gpt and got[4].is_gpt and got[4].start is None
    assert got[2].filename == "" and got[5].tag == "erase" and not got[1].sparse
    # the mapping: GPT and empty entries recorded, boot_a+boot_b one slotted partition
    out = import_build([raw], [], set(), tmp_path)
    assert [(s.name, s.slotted) for s in out.sources] == [("boot", True), ("userdata", False)]
    notes = {e.label: (e.partition, e.slot, e.note) for e in out.flat_build.entries}
    assert notes["PrimaryGPT"] == ("", "", NOTE_GPT)
    assert notes["BackupGPT"] == ("", "", NOTE_GPT)
    assert notes["boot_a"] == ("boot", "a", "")
    assert notes["boot_b"][:2] == ("boot", "b") and "inactive" in notes["boot_b"][2]
    assert notes["misc"] == ("", "", NOTE_ERASE)
    assert out.flat_build.sector_size == 512


def test_manifest_object_round_trips_and_bad_values_are_refused(tmp_path):
    (tmp_path / "a.img").write_bytes(b"a" * 1000)
    raw = write_xml(tmp_path / "rawprogram0.xml", [prog("modem", "a.img", "34", 8)])
    flat = import_build([raw], [], set(), tmp_path).flat_build
    obj = {"hw_ids": ["000a50e100514985"], "oem_key_hashes": ["ab" * 32],
           "flat_build": flat.to_json()}
    assert edl_from_json(json.loads(json.dumps(obj))).flat_build == flat
    for bad in ({"start_sector": "NUM_DISK_SECTORS+1"}, {"partition": "Boot"},
                {"slot": "c"}, {"lun": 99}, {"note": "x" * 201}, {"line": -1}):
        broken = json.loads(json.dumps(obj))
        broken["flat_build"]["entries"][0].update(bad)
        with pytest.raises(ZflashError) as err:
            edl_from_json(broken)
        coded(err, Code.MALFORMED_PACKAGE)


@pytest.mark.parametrize("body, where, words", [
    ("<data><program label='x'</data>", ":1", "not well-formed"),
    ('<!DOCTYPE data [<!ENTITY a "aaaa">]><data/>', "", "DOCTYPE"),
    ("<data><program label='&lol;'/></data>", ":1", "undefined entity"),
    ("<patches/>", ":1", "expected <data>"),
    ("<data><program><x/></program></data>", ":1", "nested"),
])
def test_bad_xml_is_refused_naming_file_and_line(tmp_path, body, where, words):
    path = tmp_path / "rawprogram0.xml"
    path.write_text(body)
    with pytest.raises(ZflashError) as err:
        parse_rawprogram(path)
    detail = coded(err, Code.FLAT_BUILD, "xml")
    assert detail.startswith(f"{path}{where}") and words in detail


def test_entity_expansion_never_happens(tmp_path):
    """A billion-laughs file is refused before the parser sees it, whatever the spelling."""
    lol = "".join(f'<!ENTITY l{i} "{"&l%d;" % (i - 1) * 10 if i else "lol"}">' for i in range(9))
    for text in (f"<!DOCTYPE data [{lol}]><data a='&l8;'/>",
                 f"<!doctype data [{lol}]><data/>", f"<data><!ENTITY x 'y'></data>"):
        path = tmp_path / "rawprogram0.xml"
        path.write_text(text)
        with pytest.raises(ZflashError) as err:
            parse_rawprogram(path)
        coded(err, Code.FLAT_BUILD, "xml")


def test_oversized_xml_is_refused_unread(tmp_path):
    path = tmp_path / "rawprogram0.xml"
    path.write_bytes(b"<data>" + b" " * (4 << 20) + b"</data>")
    with pytest.raises(ZflashError) as err:
        parse_rawprogram(path)
    assert "larger than" in coded(err, Code.FLAT_BUILD, "xml")


@pytest.mark.parametrize("entry, words", [
    ('<program SECTOR_SIZE_IN_BYTES="512" filename="a.img" label="x" '
     'physical_partition_number="0" start_sector="34"/>', "no num_partition_sectors"),
    (prog("x", "a.img", "34", 8, ss=1024), "expected 512 or 4096"),
    (prog("x", "a.img", "thirty", 8), "neither a sector number"),
    (prog("x", "a.img", "34", "-1"), "not a whole number"),
    (prog("x", "a.img", "34", 8, lun=9), "physical_partition_number"),
    (prog("x", "../a.img", "34", 8), "leaves the build folder"),
    (prog("x", "/etc/passwd", "34", 8), "leaves the build folder"),
    (prog("x", "a.img", "34", 8, sparse="maybe"), "expected true or false"),
    ("<read/>", "not a rawprogram entry"),
    (prog("b\u00f6\u00f6t", "a.img", "34", 8), "printable ASCII"),
])
def test_bad_attributes_name_the_entry(tmp_path, entry, words):
    path = write_xml(tmp_path / "rawprogram0.xml", ["<!-- a comment -->", entry])
    with pytest.raises(ZflashError) as err:
        parse_rawprogram(path)
    detail = coded(err, Code.FLAT_BUILD, "entry")
    assert detail.startswith(f"{path}:4") and words in detail


def build_with(tmp_path: Path, entries: list[str], **files: bytes) -> Path:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return write_xml(tmp_path / "rawprogram0.xml", entries)


def refused(tmp_path: Path, raw: Path, cause: str | None, code: Code = Code.FLAT_BUILD,
            include: set[str] | None = None, patches: list[Path] | None = None) -> str:
    with pytest.raises(ZflashError) as err:
        import_build([raw], patches or [], include or set(), tmp_path)
    return coded(err, code, cause)


def test_missing_image_file_names_the_entry(tmp_path):
    raw = build_with(tmp_path, [prog("modem", "nothere.img", "34", 8)])
    detail = refused(tmp_path, raw, None, Code.FILE_UNREADABLE)
    assert f"{raw}:3" in detail and "nothere.img" in detail


def test_secdata_is_refused_unless_named(tmp_path):
    raw = build_with(tmp_path, [prog("modem", "m.img", "34", 8),
                                prog("secdata", "sec.img", "42", 8)],
                     **{"m.img": b"m" * 512, "sec.img": b"fuse" * 128})
    detail = refused(tmp_path, raw, "fuse")
    assert detail.startswith(f"{raw}:4") and "--include-fuse secdata" in detail
    out = import_build([raw], [], {"secdata"}, tmp_path)
    assert [s.name for s in out.sources] == ["modem", "secdata"]
    assert "include-fuse" in out.flat_build.entries[1].note
    assert "build does not have" in refused(tmp_path, raw, None, Code.USAGE, {"fsg"})
    # An empty secdata entry writes nothing, so nothing is refused.
    empty = build_with(tmp_path, [prog("modem", "m.img", "34", 8), prog("secdata", "", "42", 8)])
    assert import_build([empty], [], set(), tmp_path).flat_build.entries[1].note == NOTE_EMPTY
    # A slotted fuse partition is refused too, and may be named by its base name.
    pair = build_with(tmp_path, [prog("secdata_a", "sec.img", "34", 8),
                                 prog("secdata_b", "", "42", 8)])
    assert "fuse" in refused(tmp_path, pair, "fuse")
    out = import_build([pair], [], {"secdata"}, tmp_path)
    assert [(s.name, s.slotted) for s in out.sources] == [("secdata", True)]


def test_slot_pairs_with_different_images_are_refused(tmp_path):
    raw = build_with(tmp_path, [prog("boot_a", "a.img", "34", 8), prog("boot_b", "b.img", "42", 8)],
                     **{"a.img": b"a" * 512, "b.img": b"b" * 512})
    assert "different images" in refused(tmp_path, raw, "entry")
    (tmp_path / "b.img").write_bytes(b"a" * 512)  # same content under another name is fine
    out = import_build([raw], [], set(), tmp_path)
    assert [(s.name, s.slotted) for s in out.sources] == [("boot", True)]


def test_sizes_overlaps_duplicates_and_sparse_flags(tmp_path):
    big = build_with(tmp_path, [prog("modem", "m.img", "34", 2)], **{"m.img": b"m" * 1025})
    assert "more than num_partition_sectors 2" in refused(tmp_path, big, "entry")
    over = build_with(tmp_path, [prog("a", "m.img", "34", 8), prog("b", "m.img", "40", 8)])
    assert "overlaps 'a'" in refused(tmp_path, over, "entry")
    twice = build_with(tmp_path, [prog("a", "m.img", "34", 8), prog("a", "m.img", "50", 8)])
    assert "appears twice" in refused(tmp_path, twice, "entry")
    flagged = build_with(tmp_path, [prog("a", "m.img", "34", 8, sparse="true")])
    assert "no sparse header" in refused(tmp_path, flagged, "entry")
    upper = build_with(tmp_path, [prog("Modem", "m.img", "34", 8)])
    assert "partition name" in refused(tmp_path, upper, "entry")
    end = build_with(tmp_path, [prog("a", "m.img", "NUM_DISK_SECTORS-8.", 8)])
    assert "end of the disk" in refused(tmp_path, end, "entry")
    mixed = build_with(tmp_path, [prog("a", "m.img", "34", 8), prog("b", "m.img", "6", 2,
                                                                    ss=4096)])
    assert "one storage type" in refused(tmp_path, mixed, "entry")
    many = build_with(tmp_path, [prog(f"p{i}", "m.img", str(34 + 8 * i), 8) for i in range(65)])
    assert "at most 64 partitions" in refused(tmp_path, many, "entry")
    nothing = build_with(tmp_path, [prog("a", "", "34", 8)])
    assert "no image to pack" in refused(tmp_path, nothing, "entry")


def test_file_sector_offset_cuts_the_image(tmp_path):
    raw = build_with(tmp_path, [prog("modem", "m.bin", "34", 0, file_sector_offset="2")],
                     **{"m.bin": b"H" * 1024 + b"payload"})
    out = import_build([raw], [], set(), tmp_path / "..")
    assert out.sources[0].path.read_bytes() == b"payload"


def patch(start: str, value: str, filename: str = "DISK", offset: int = 16, size: int = 4,
          lun: int = 0) -> str:
    return (f'<patch SECTOR_SIZE_IN_BYTES="512" byte_offset="{offset}" filename="{filename}" '
            f'physical_partition_number="{lun}" size_in_bytes="{size}" '
            f'start_sector="{start}" value="{value}" what="fix"/>')


def test_patches_inside_the_gpt_are_recorded_and_others_refused(tmp_path):
    raw = build_with(tmp_path, [prog("PrimaryGPT", "gpt_main0.bin", "0", 34),
                                prog("modem", "m.img", "34", 8)], **{"m.img": b"m" * 512})
    good = write_xml(tmp_path / "patch0.xml", [
        patch("1", "0", offset=16), patch("1", "CRC32(1,92)"),
        patch("NUM_DISK_SECTORS-1.", "CRC32(NUM_DISK_SECTORS-1.,92)"),
        patch("1", "NUM_DISK_SECTORS-34.", offset=48, size=8),
        patch("1", "0", filename="gpt_main0.bin")], root="patches")
    assert len(parse_patch(good)) == 5
    out = import_build([raw], [good], set(), tmp_path)
    summary = out.flat_build.patches[0]
    assert (summary.file, summary.disk, summary.host) == ("patch0.xml", 4, 1)
    bad = write_xml(tmp_path / "patch1.xml", [patch("1", "0"), patch("36", "7")],
                    root="patches")
    detail = refused(tmp_path, raw, "patch", patches=[bad])
    assert detail.startswith(f"{bad}:4") and "sector 36" in detail
    for entry, words in ((patch("1", "0", size=3), "sizes 1, 2, 4, 8"),
                         (patch("1", "CRC32(1;92)"), "CRC32(sector,bytes)"),
                         (patch("1", "0", offset=510), "inside one")):
        path = write_xml(tmp_path / "patch2.xml", [entry], root="patches")
        with pytest.raises(ZflashError) as err:
            parse_patch(path)
        assert words in coded(err, Code.FLAT_BUILD, "entry")


# ------------------------------------------------------------------------ end to end
SS = 512
LUN0 = (("boot_a", 128), ("boot_b", 128), ("system_a", 512), ("system_b", 512),
        ("vbmeta_a", 16), ("vbmeta_b", 16))  # KiB
LUN1 = (("modem", 256), ("secdata", 16), ("persist", 0))  # 0: the rest of the disk
SLOT_BITS = {"a": (48, 49, 50, 51, 52, 53, 54), "b": (49, 51, 52, 53, 54)}  # 0x7F, 0x7A


def sgdisk(*args: str) -> str:
    done = subprocess.run([require_tool("sgdisk"), *args], capture_output=True, text=True,
                          timeout=30, env={"LANG": "C", "PATH": os.environ.get("PATH", "")})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def make_disk(path: Path, size: int, layout: tuple[tuple[str, int], ...]) -> dict[str, tuple[int, int]]:
    """A disk image with a GPT made by `sgdisk`; returns {name: (first sector, sectors)}."""
    path.write_bytes(bytes(size))
    args = ["-o", "-a", "8"]
    for number, (name, kib) in enumerate(layout, 1):
        args += ["-n", f"{number}:0:{'+' + str(kib) + 'K' if kib else '0'}",
                 "-c", f"{number}:{name}", "-t", f"{number}:8300"]
        for bit in SLOT_BITS.get(name[-1], ()) if name[-2:] in ("_a", "_b") else ():
            args += ["-A", f"{number}:set:{bit}"]
    sgdisk(*args, str(path))
    places = {}
    for number, (name, _) in enumerate(layout, 1):
        info = sgdisk("-i", str(number), str(path))
        first = int(re.search(r"First sector: (\d+)", info).group(1))
        count = int(re.search(r"Partition size: (\d+) sectors", info).group(1))
        places[name] = (first, count)
    return places


def seeded(size: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def flat_build(tmp_path):
    """A flat build in tmp/build: images, GPT files, rawprogram0/1.xml, patch0/1.xml; and the
    factory disks (same GPT, vbmeta index 2) in tmp/factory."""
    from zflash.disk import avb
    build, factory = tmp_path / "build", tmp_path / "factory"
    build.mkdir()
    factory.mkdir()
    places = [make_disk(factory / "lun0.img", 4 << 20, LUN0),
              make_disk(factory / "lun1.img", 1 << 20, LUN1)]
    images = {"boot.img": seeded(100 << 10, "boot"), "vbmeta.img": avb.build_vbmeta(3),
              "persist.img": seeded(8 << 10, "persist")}
    system = bytearray(400 << 10)
    system[:64 << 10] = seeded(64 << 10, "system")
    system[300 << 10:310 << 10] = seeded(10 << 10, "system tail")
    (build / "system.raw").write_bytes(bytes(system))
    subprocess.run([require_tool("img2simg"), str(build / "system.raw"),
                    str(build / "system.img"), "4096"], check=True, capture_output=True)
    (build / "system.raw").unlink()
    modem = seeded(200 << 10, "modem")
    images["modem.bin"] = b"MODEMHDR" * 64 + modem  # one 512-byte header skipped
    for name, data in images.items():
        (build / name).write_bytes(data)
    xmls = []
    for lun, (layout, place) in enumerate(zip((LUN0, LUN1), places)):
        disk = (factory / f"lun{lun}.img").read_bytes()
        (build / f"gpt_main{lun}.bin").write_bytes(disk[:34 * SS])
        (build / f"gpt_backup{lun}.bin").write_bytes(disk[-33 * SS:])
        files = {"boot_a": "boot.img", "system_a": "system.img", "vbmeta_a": "vbmeta.img",
                 "vbmeta_b": "vbmeta.img", "modem": "modem.bin", "persist": "persist.img"}
        entries = [prog("PrimaryGPT", f"gpt_main{lun}.bin", "0", 34, lun)]
        for name, _ in layout:
            first, count = place[name]
            extra = {"sparse": "true"} if name == "system_a" else \
                {"file_sector_offset": "1"} if name == "modem" else {}
            entries.append(prog(name, files.get(name, ""), str(first),
                                0 if name == "persist" else count, lun, **extra))
        entries.append(prog("BackupGPT", f"gpt_backup{lun}.bin", "NUM_DISK_SECTORS-33.", 33,
                            lun))
        xmls.append(write_xml(build / f"rawprogram{lun}.xml", entries))
        write_xml(build / f"patch{lun}.xml", [
            patch("1", "NUM_DISK_SECTORS-34.", offset=48, size=8, lun=lun),
            patch("NUM_DISK_SECTORS-1.", "NUM_DISK_SECTORS-34.", offset=48, size=8, lun=lun),
            patch("1", "CRC32(2,16384)", offset=88, lun=lun),
            patch("1", "0", offset=16, lun=lun), patch("1", "CRC32(1,92)", lun=lun),
            patch("1", "0", filename=f"gpt_main{lun}.bin", lun=lun)], root="patches")
    for lun, layout in enumerate((LUN0, LUN1)):  # the factory's vbmeta: index 2
        with open(factory / f"lun{lun}.img", "r+b") as disk:
            for name in ("vbmeta_a", "vbmeta_b"):
                if name in places[lun]:
                    disk.seek(places[lun][name][0] * SS)
                    disk.write(avb.build_vbmeta(2))
    return build, factory, places, images, system


def zflash(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ZFLASH, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent-zflash-trust"})


def pack_args(build: Path, out: Path, *extra: str) -> list[str]:
    from zflash.emulator.edl_disk import EdlProfile
    profile = EdlProfile(sector_size=SS)
    return ["pack", "--product", "zx-demo", "--hw-rev", "A01", "--baseband", "ZXB-100",
            "--version", "2.0.0", "--rollback-index", "3", "--build-time", "1700000000",
            "--rawprogram", str(build / "rawprogram0.xml"),
            "--rawprogram", str(build / "rawprogram1.xml"),
            "--patch", str(build / "patch0.xml"), "--patch", str(build / "patch1.xml"),
            "--msm-hw-id", profile.hw_id, "--oem-key-hash", profile.oem_key_hash,
            "--programmer", str(PROGRAMMER), "--key", str(SIGNING_KEY), "-o", str(out), *extra]


_BUS = None


def backend():
    """The ZFLASH_USB_BACKEND hook: the emulated bus the test set up."""
    assert _BUS is not None
    return _BUS


def test_flat_build_packs_inspects_flashes_and_passes_sgdisk(flat_build, tmp_path,
                                                             monkeypatch):
    global _BUS
    from zflash.emulator.edl_disk import EdlProfile
    from zflash.emulator.edl_server import EdlDevice, usb_device
    from zflash.emulator.usb_backend import EmulatedUsbBackend
    from zflash.flash import FlashOptions, flash
    from zflash.package import keys as keymod
    build, factory, places, images, system = flat_build
    out = tmp_path / "flat.zpk"
    done = zflash(*pack_args(build, out))
    assert done.returncode == 0, done.stderr
    shown = zflash("inspect", str(out))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    first, count = places[0]["boot_a"]
    assert re.search(rf"rawprogram0.xml:4 +boot_a +0 +{first} +{count}  boot \(slot a\)", text)
    assert re.search(r"rawprogram0.xml:3 +PrimaryGPT +0 +0 +34  partition table", text)
    assert re.search(r"rawprogram1.xml:\d+ +BackupGPT +1 +NUM_DISK_SECTORS-33\. +33", text)
    assert re.search(r"secdata +1 .*no image", text)
    assert re.search(r"system_a .*system \(slot a\); sparse image, expanded", text)
    assert re.search(r"modem .*file_sector_offset 1: the image starts 512 bytes", text)
    assert re.search(r"persist +1 +\d+ +0  persist; num_partition_sectors 0", text)
    assert "patch1.xml: 5 DISK patches, 1 patches of the build's GPT files" in text
    manifest = json.loads(zflash("inspect", "--json", str(out)).stdout)["manifest"]
    assert [(p["name"], p["slotted"]) for p in manifest["partitions"]] == [
        ("boot", True), ("system", True), ("vbmeta", True), ("modem", False),
        ("persist", False)]
    assert manifest["edl"]["programmer"]["sha256"] == \
        hashlib.sha256(PROGRAMMER.read_bytes()).hexdigest()

    device = EdlDevice(tmp_path / "edl", profile=EdlProfile(sector_size=SS))
    for lun in (0, 1):  # the device as the factory left it: the sgdisk-made GPT
        shutil.copyfile(factory / f"lun{lun}.img", tmp_path / "edl" / f"lun{lun}.img")
    secdata_before = read_part(tmp_path / "edl", 1, places[1]["secdata"], 16 << 10)
    _BUS = EmulatedUsbBackend([usb_device(device)])
    monkeypatch.setenv("ZFLASH_USB_BACKEND", f"{__name__}:backend")
    trust = keymod.TrustStore()
    trust.add(keymod.load_public_key(SIGNING_PUB))
    try:
        # The baseband is not readable (the build says nowhere where it is kept).
        summary = flash("usb://05c6:9008", out, trust, FlashOptions(accept_unverifiable=True),
                        lambda e: None)
    finally:
        _BUS.shutdown()
        _BUS = None
    assert summary.slot == "b" and summary.rebooted
    assert device.wait_sessions(1)
    root = tmp_path / "edl"
    for name, data in (("boot_b", images["boot.img"]), ("system_b", bytes(system)),
                       ("vbmeta_b", images["vbmeta.img"])):
        assert read_part(root, 0, places[0][name], len(data)) == data, name
    modem = images["modem.bin"][SS:]  # file_sector_offset="1"
    assert read_part(root, 1, places[1]["modem"], len(modem)) == modem
    assert read_part(root, 1, places[1]["persist"], 8 << 10) == images["persist.img"]
    assert read_part(root, 1, places[1]["secdata"], 16 << 10) == secdata_before
    assert device.boots[-1] == {"booted_slot": "b", "fell_back": False}
    assert device.stored_rollback[0] == 3
    for lun in (0, 1):
        report = sgdisk("-v", str(root / f"lun{lun}.img"))
        assert "No problems found" in report, report
    # boot_b: priority 3, active, 7 tries (bootctrl's 0x3F), then marked successful (0x40)
    assert "Attribute flags: 007F000000000000" in sgdisk("-i", "2", str(root / "lun0.img"))


def test_pack_refuses_a_fuse_partition_unless_named(flat_build, tmp_path):
    build = flat_build[0]
    raw = build / "rawprogram1.xml"
    raw.write_text(raw.read_text().replace('filename="" label="secdata"',
                                           'filename="persist.img" label="secdata"'))
    out = tmp_path / "fuse.zpk"
    done = zflash(*pack_args(build, out))
    assert done.returncode == Code.FLAT_BUILD - 9000, done.stderr
    assert "error 9043" in done.stderr and "secdata" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    done = zflash(*pack_args(build, out, "--include-fuse", "secdata"))
    assert done.returncode == 0, done.stderr
    names = [p["name"] for p in json.loads(zflash("inspect", "--json", str(out)).stdout)
             ["manifest"]["partitions"]]
    assert "secdata" in names


def test_pack_rawprogram_needs_the_edl_hardware_ids(flat_build, tmp_path):
    args = pack_args(flat_build[0], tmp_path / "x.zpk")
    cut = args.index("--msm-hw-id")
    done = zflash(*args[:cut], *args[cut + 2:])
    assert done.returncode == Code.USAGE - 9000 and "--msm-hw-id" in done.stderr
    alone = zflash("pack", "--image", f"boot={flat_build[0] / 'boot.img'}", "--patch",
                   str(flat_build[0] / "patch0.xml"), "--key", str(SIGNING_KEY),
                   "-o", str(tmp_path / "y.zpk"))
    assert alone.returncode == Code.USAGE - 9000 and "go with --rawprogram" in alone.stderr


def read_part(root: Path, lun: int, place: tuple[int, int], size: int) -> bytes:
    with open(root / f"lun{lun}.img", "rb") as disk:
        disk.seek(place[0] * SS)
        return disk.read(size)
