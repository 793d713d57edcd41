"""Messages say what happened (issue 11): zero blocks the device fills are not "already on
the device", and facts a bootloader does not report are said to be not reported."""

from __future__ import annotations

import random
from pathlib import Path

from conftest import SIGNING_KEY, SIGNING_PUB
from emulator_helpers import demo_profile
from zflash.cli.render import EventRenderer
from zflash.emulator.runner import EmulatorRunner
from zflash.flash import FlashOptions, flash
from zflash.package import keys as keymod
from zflash.package.writer import PackageInfo, PartitionSource, build_package

BLOCK = 8192


def zero_heavy_package(tmp_path: Path) -> Path:
    """boot: 4 data blocks, then 8 zero blocks, then 2 data blocks."""
    rng = random.Random(5)
    image = tmp_path / "boot.img"
    image.write_bytes(rng.randbytes(4 * BLOCK) + bytes(8 * BLOCK) + rng.randbytes(2 * BLOCK))
    info = PackageInfo(product="zx-demo", hardware_revisions=("A01",), baseband_ids=("ZXB-100",),
                       version="1.3.0", rollback_index=3, rollback_location=0,
                       build_time=1_700_000_900)
    out = tmp_path / "zeros.zpk"
    build_package(info, [PartitionSource("boot", image, True)],
                  [keymod.load_private_key(SIGNING_KEY)], out, block_size=BLOCK)
    return out


def render(events: list[dict], capsys) -> str:
    renderer = EventRenderer(as_json=False, progress=False)
    for event in events:
        renderer(event)
    renderer.close()
    return capsys.readouterr().err


def test_zero_blocks_are_not_claimed_as_already_on_the_device(tmp_path, capsys):
    runner = EmulatorRunner(tmp_path / "dev", demo_profile())
    url = runner.start_tcp(0)
    # slot b holds other data where the package has zeros: the device fills them
    with open(runner.storage.partition_path("boot", "b"), "r+b") as handle:
        handle.write(b"\xaa" * (16 * BLOCK))
    trust = keymod.TrustStore.load([SIGNING_PUB], use_default_dir=False)
    events: list[dict] = []
    try:
        flash(url, zero_heavy_package(tmp_path), trust, FlashOptions(reboot=False),
              events.append)
    finally:
        runner.stop()
    started = next(e for e in events if e["event"] == "partition_started")
    assert (started["kept_bytes"], started["zero_bytes"]) == (0, 8 * BLOCK)
    assert started["skipped_bytes"] == started["kept_bytes"] + started["zero_bytes"]
    with open(runner.storage.partition_path("boot", "b"), "rb") as handle:
        assert handle.read(14 * BLOCK)[4 * BLOCK:12 * BLOCK] == bytes(8 * BLOCK)  # filled
    text = render([started], capsys)
    assert "already on the device" not in text
    assert f"boot_b: {8 * BLOCK} bytes of zero blocks, not sent: the device fills them" in text


def test_kept_data_is_said_to_be_on_the_device():
    event = {"event": "partition_started", "partition": "system", "size": 100,
             "skipped_bytes": 70, "kept_bytes": 40, "zero_bytes": 30, "slot": "b",
             "target": "system_b"}
    import io
    import contextlib
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        renderer = EventRenderer(as_json=False, progress=False)
        renderer(event)
    text = err.getvalue()
    assert "system_b: 40 bytes already on the device (hash-checked), not sent" in text
    assert "system_b: 30 bytes of zero blocks" in text


def test_a_plain_bootloader_says_not_reported(capsys):
    facts = {"product": "zx-demo", "hardware_revision": "", "baseband": "", "serial": "S1",
             "current_slot": "a"}
    text = render([{"event": "device", "protocol": "fastboot", "facts": facts,
                    "unreported": {"hardware_revision": "getvar hw-revision",
                                   "baseband": "getvar version-baseband"}}], capsys)
    assert "device: zx-demo rev not reported, baseband not reported, serial S1, running " \
           "slot a" in text
    assert "rev ," not in text


def test_backup_shows_a_progress_bar() -> None:
    """`zflash backup` at 115200 took 91 s with no bar (issue 11): it draws one now."""
    from zflash.cli.render import EventRenderer
    renderer = EventRenderer(False, progress=True)
    renderer({"event": "backup_started", "partition": "boot", "slot": "a", "size": 4096})
    renderer({"event": "bytes_received", "bytes": 1024})
    renderer({"event": "bytes_received", "bytes": 1024})
    assert renderer._part is not None
    assert (renderer._part.total, renderer._part.n) == (4096, 2048)
    renderer.close()


def test_each_download_mode_is_named_as_itself(capsys):
    """An EDL flash is not described in ZDL's or fastboot's words."""
    text = render([
        {"event": "connected", "url": "edl+serial:///dev/ttyUSB0", "protocol": "edl",
         "max_data": 0, "window": 1, "codecs": [], "baud": None},
        {"event": "rebooted", "protocol": "edl", "slot": "b", "reported": False,
         "booted_slot": None, "fell_back": False},
        {"event": "rebooted", "protocol": "fastboot", "slot": "a", "reported": False,
         "booted_slot": None, "fell_back": False},
    ], capsys)
    assert "Qualcomm EDL" in text and "ZDL" not in text and "frames up to" not in text
    assert "left EDL to boot slot b" in text
    assert "left fastboot to boot slot a" in text
