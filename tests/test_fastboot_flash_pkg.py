"""``zflash flash PKG`` onto a fastboot device: checks from getvar values, inactive slot,
switch after every OKAY, reboot; over TCP (library and real CLI) and over emulated USB.

The emulator runs in-process (``EmulatorRunner.start_fastboot_tcp``) with the demo profile
and a 64 KiB max-download-size, so the sample's 384 KiB system image is sent in pieces.
``FastbootOptions.hidden_vars`` plays a plainer bootloader that does not report a variable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from conftest import REPO, SAMPLES, SIGNING_PUB, trust_for
from emulator_helpers import (
    BAD_SAMPLES,
    GOOD,
    demo_profile,
    image_sha256,
    partition_prefix_sha256,
    snapshot,
)

from zflash.emulator.device import EmulatedDevice
from zflash.emulator.fastboot_server import FastbootOptions, serve_fastboot_usb
from zflash.emulator.runner import EmulatorRunner
from zflash.emulator.storage import PartitionSpec, Profile, Storage
from zflash.emulator.usb_backend import EmulatedUsbBackend
from zflash.emulator.usb_device import EmulatedUsbDevice
from zflash.errors import Code, ZflashError
from zflash.targets.registry import protocol_of
from zflash.flash import FlashOptions, PreflightRefused, flash
from zflash.package import keys as keymod

LIMIT = 64 << 10
ROLLBACK = SAMPLES / "zx-demo-1.0.0-rollback.zpk"
Event = dict[str, Any]
Start = Callable[..., tuple[EmulatorRunner, str]]


def trust() -> keymod.TrustStore:
    return keymod.TrustStore.load([SIGNING_PUB], use_default_dir=False)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Start]:
    """Factory: (profile changes, fastboot options) -> (runner, fastboot+tcp URL)."""
    runners: list[EmulatorRunner] = []

    def start(profile: Profile | None = None, **options: Any) -> tuple[EmulatorRunner, str]:
        runner = EmulatorRunner(tmp_path / f"dev{len(runners)}", profile or demo_profile())
        runners.append(runner)
        options.setdefault("max_download_size", LIMIT)
        return runner, runner.start_fastboot_tcp(0, FastbootOptions(**options))

    yield start
    for runner in runners:
        runner.stop()


def assert_slot_b_holds(root: Path, version: str = "1.1.0") -> None:
    for name in ("boot", "system", "vendor"):
        size = (SAMPLES / "images" / version / f"{name}.img").stat().st_size
        assert partition_prefix_sha256(root, f"{name}_b.img", size) == image_sha256(version, name)
    size = (SAMPLES / "images" / version / "logo.img").stat().st_size
    assert partition_prefix_sha256(root, "logo.img", size) == image_sha256(version, "logo")


def kinds(events: list[Event]) -> list[str]:
    return [e["event"] for e in events]


def wait_booted(device: EmulatedDevice, timeout: float = 10.0) -> dict[str, Any]:
    """The device's boot report: its OKAY to ``reboot`` goes out before it boots."""
    deadline = time.monotonic() + timeout
    while device.meta["last_boot"] is None:
        assert time.monotonic() < deadline, "the device did not boot"
        time.sleep(0.01)
    return device.meta["last_boot"]


# --- the library ---------------------------------------------------------------------------

def test_good_sample_goes_to_the_inactive_slot_then_switches(emulator: Start) -> None:
    runner, url = emulator()
    root = runner.storage.root
    slot_a = {k: v for k, v in snapshot(root).items() if k.endswith("_a.img")}
    events: list[Event] = []
    summary = flash(url, GOOD, trust(), FlashOptions(), events.append)
    assert summary.slot == "b" and summary.rebooted and summary.unverified == []  # type: ignore[attr-defined]
    assert_slot_b_holds(root)
    assert {k: v for k, v in snapshot(root).items() if k.endswith("_a.img")} == slot_a
    order = kinds(events)
    assert order[:2] == ["connected", "device"]
    passed = [e["check"] for e in events if e["event"] == "check_passed"]
    assert sorted(passed) == sorted(["signature", "blocks", "compatibility", "rollback",
                                     "storage"])
    # the blocks are hashed while the first piece downloads (D183): their check passes
    # after the transfer began, and before anything is flashed (the first `verified`)
    assert [c for c in passed if c != "blocks"] == ["signature", "compatibility", "rollback",
                                                    "storage"]
    blocks_passed = next(i for i, e in enumerate(events) if e.get("check") == "blocks")
    assert blocks_passed < order.index("verified")
    verified = [i for i, k in enumerate(order) if k == "verified"]
    assert len(verified) == 4 and max(verified) < order.index("slot_switched")
    assert order.index("slot_switched") < order.index("rebooted") < order.index("done")
    system = next(e for e in events if e["event"] == "transferred" and e["partition"] == "system")
    assert system["pieces"] >= 4  # 384 KiB through a 64 KiB download buffer
    sent = sum(e["bytes"] for e in events if e["event"] == "bytes_sent")
    assert sent == summary.image_bytes
    assert wait_booted(runner.device)["booted_slot"] == "b"
    assert runner.device.meta["current_slot"] == "b"


def test_slot_is_not_switched_when_a_partition_fails(emulator: Start) -> None:
    """The device FAILs the last image (logo): boot, system and vendor were written to b,
    but b is never made active."""
    profile = demo_profile(partitions=[
        PartitionSpec("boot", 256 << 10, True), PartitionSpec("system", 1 << 20, True),
        PartitionSpec("vendor", 512 << 10, True), PartitionSpec("logo", 16 << 10, False)])
    runner, url = emulator(profile, extra_vars={"partition-size:logo": "0x20000"})
    events: list[Event] = []
    with pytest.raises(ZflashError) as refused:
        flash(url, GOOD, trust(), FlashOptions(), events.append)
    assert refused.value.code == Code.DEVICE_REFUSED
    assert "slot_switched" not in kinds(events)
    assert kinds(events).count("verified") == 3
    meta = runner.device.meta
    assert meta["current_slot"] == "a" and meta["slots"]["b"]["priority"] == 14


#: The fastboot back-end still reports an image too large for its partition as 9023
#: (zflash/targets/fastboot/flasher.py, being rewritten); ZDL and the checks say 9041.
FASTBOOT_CODES = BAD_SAMPLES


@pytest.mark.parametrize("sample, code", sorted(FASTBOOT_CODES.items()))
def test_bad_samples_are_refused_before_anything_is_written(emulator: Start, sample: str,
                                                            code: int) -> None:
    """other-baseband 9040, rollback 9015 (the emulator reports rollback-index:0), too-large
    9023, corrupt block and untrusted key 9012."""
    runner, url = emulator()
    before = snapshot(runner.storage.root)
    events: list[Event] = []
    with pytest.raises(PreflightRefused) as refused:
        flash(url, SAMPLES / sample, trust(), FlashOptions(), events.append)
    assert refused.value.code == code
    if "corrupt-block" in sample:
        # blocks are hashed while the first piece downloads into the device's RAM (D183):
        # the transfer may have begun, but nothing was flashed (and the state is unchanged)
        assert "transferred" not in kinds(events) and "verified" not in kinds(events)
    else:
        assert "partition_started" not in kinds(events)
    assert any(e["event"] == "check_failed" and e["code"] == code for e in events)
    assert snapshot(runner.storage.root) == before


def test_rollback_unverifiable_without_the_vendor_variable(emulator: Start) -> None:
    runner, url = emulator(hidden_vars=frozenset({"rollback-index"}))
    before = snapshot(runner.storage.root)
    events: list[Event] = []
    with pytest.raises(PreflightRefused) as refused:
        flash(url, ROLLBACK, trust(), FlashOptions(), events.append)
    assert refused.value.code == Code.UNVERIFIABLE
    assert "rollback-index:0" in refused.value.detail
    failed = [e for e in events if e["event"] == "check_failed"]
    assert [(e["check"], e["variable"]) for e in failed] == [("rollback", "rollback-index:0")]
    assert snapshot(runner.storage.root) == before
    events.clear()
    summary = flash(url, ROLLBACK, trust(), FlashOptions(accept_unverifiable=True, reboot=False),
                    events.append)
    assert summary.unverified and "rollback-index:0" in summary.unverified[0]  # type: ignore[attr-defined]
    accepted = [e for e in events if e["event"] == "check_unverified"]
    assert [e["variable"] for e in accepted] == ["rollback-index:0"]
    assert "rollback" not in [e["check"] for e in events if e["event"] == "check_passed"]
    assert_slot_b_holds(runner.storage.root, "1.0.0")
    assert "rebooted" not in kinds(events)


def test_device_without_baseband_is_unverifiable_naming_it(emulator: Start) -> None:
    runner, url = emulator(hidden_vars=frozenset({"version-baseband"}))
    before = snapshot(runner.storage.root)
    with pytest.raises(PreflightRefused) as refused:
        flash(url, GOOD, trust(), FlashOptions(), lambda e: None)
    assert refused.value.code == Code.UNVERIFIABLE
    assert "version-baseband" in refused.value.detail
    assert snapshot(runner.storage.root) == before


def test_a_mismatch_is_refused_even_with_accept_unverifiable(emulator: Start) -> None:
    """Accepting unverifiable checks never waives one the device can answer."""
    _, url = emulator(hidden_vars=frozenset({"rollback-index"}))
    with pytest.raises(PreflightRefused) as refused:
        flash(url, SAMPLES / "zx-demo-1.1.0-other-baseband.zpk", trust(),
              FlashOptions(accept_unverifiable=True), lambda e: None)
    assert refused.value.code == Code.COMPATIBILITY


def test_options_that_do_not_apply_to_fastboot(emulator: Start) -> None:
    _, url = emulator()
    with pytest.raises(ZflashError) as refused:
        flash(url, GOOD, trust(), FlashOptions(skip_host_checks=True), lambda e: None)
    assert refused.value.code == Code.USAGE
    with pytest.raises(PreflightRefused) as refused:
        flash(url, GOOD, trust_for(), FlashOptions(), lambda e: None)  # no trusted key
    assert refused.value.code in (Code.SIGNATURE, Code.NO_TRUSTED_KEY)


def test_dispatch_by_url() -> None:
    assert protocol_of("fastboot+tcp://127.0.0.1:5554") == "fastboot"
    assert protocol_of("tcp://127.0.0.1:5554") == "zdl"  # ZDL over TCP
    assert protocol_of("/dev/ttyUSB0") == "zdl"
    with pytest.raises(ZflashError) as bad:
        protocol_of("usb://zz:zz")
    assert bad.value.code == Code.BAD_DEVICE_URL


# --- over emulated USB, through the flasher function ---------------------------------------

_BUS: EmulatedUsbBackend | None = None


def bus() -> EmulatedUsbBackend:
    """The ZFLASH_USB_BACKEND hook for the USB test below."""
    assert _BUS is not None
    return _BUS


def test_good_sample_over_emulated_usb_fastboot(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    global _BUS
    device = EmulatedDevice(Storage.create(tmp_path / "dev", demo_profile()))
    options = FastbootOptions(max_download_size=LIMIT)
    usb = EmulatedUsbDevice("ZXFBPKG1", "1-5", protocol="fastboot",
                            server=lambda link: serve_fastboot_usb(device, link, options))
    _BUS = EmulatedUsbBackend([usb])
    monkeypatch.setenv("ZFLASH_USB_BACKEND", f"{__name__}:bus")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(REPO / "tests" / "no-such-config-dir"))
    try:
        url = "usb://1209:0001?serial=ZXFBPKG1"
        assert protocol_of(url) == "fastboot"
        events: list[Event] = []
        summary = flash(url, GOOD, trust(), FlashOptions(), events.append)
        assert summary.slot == "b" and "slot_switched" in kinds(events)
        assert_slot_b_holds(device.storage.root)
        assert wait_booted(device)["booted_slot"] == "b"
        assert device.meta["current_slot"] == "b"
        assert usb.stats.out_bytes >= summary.sent_bytes and not usb.server_errors
    finally:
        _BUS.shutdown()
        _BUS = None


# --- the real CLI ----------------------------------------------------------------------------

def zflash(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent"})


def json_events(result: subprocess.CompletedProcess[str]) -> list[Event]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_cli_flash_refusals_and_acceptance(emulator: Start) -> None:
    runner, url = emulator(hidden_vars=frozenset({"rollback-index"}))
    trust_args = ("--trust", str(SIGNING_PUB))
    result = zflash("flash", str(SAMPLES / "zx-demo-1.1.0-other-baseband.zpk"), "-d", url,
                    *trust_args)
    assert result.returncode == 40 and "error 9040" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    result = zflash("flash", str(GOOD), "-d", url, *trust_args, "--json")
    assert result.returncode == 45, result.stderr
    failed = [e for e in json_events(result) if e["event"] == "check_failed"]
    assert failed[0]["variable"] == "rollback-index:0"
    result = zflash("flash", str(GOOD), "-d", url, *trust_args, "--json",
                    "--accept-unverifiable")
    assert result.returncode == 0, result.stderr
    done = next(e for e in json_events(result) if e["event"] == "done")
    assert done["slot"] == "b" and done["protocol"] == "fastboot" and done["rebooted"]
    assert_slot_b_holds(runner.storage.root)


def test_cli_emulate_fastboot_tcp_and_flash_text_output(tmp_path: Path) -> None:
    """``zflash emulate --fastboot-tcp 0`` and ``zflash flash`` as a technician runs them."""
    state, url_file = tmp_path / "dev", tmp_path / "urls"
    emulator = subprocess.Popen(
        [sys.executable, "-m", "zflash", "emulate", "--state", str(state), "--trust",
         str(SIGNING_PUB), "--fastboot-tcp", "0", "--url-file", str(url_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (url_file.exists() and url_file.read_text().strip()):
            assert emulator.poll() is None, emulator.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "emulator did not start"
            time.sleep(0.05)
        url = url_file.read_text().split()[0]
        assert url.startswith("fastboot+tcp://127.0.0.1:")
        result = zflash("flash", str(GOOD), "-d", url, "--trust", str(SIGNING_PUB))
        assert result.returncode == 0, result.stderr
        assert "connected to fastboot+tcp://" in result.stderr
        assert "check passed: rollback" in result.stderr
        assert "active slot switched to b" in result.stderr
        assert "the device rebooted to run it" in result.stdout
    finally:
        emulator.terminate()
        emulator.wait(10)
    assert_slot_b_holds(state)


def test_device_facts_for_catalog_selection_over_fastboot(tmp_path):
    """`fetch --for` / `flash --latest` read a fastboot device's facts from getvar."""
    from emulator_helpers import demo_profile
    from zflash.emulator.runner import EmulatorRunner
    from zflash.flash import read_device_facts
    with EmulatorRunner(tmp_path / "fbdev", demo_profile()) as runner:
        url = runner.start_fastboot_tcp(0)
        facts = read_device_facts(url)
    assert (facts.product, facts.hardware_revision, facts.baseband) == \
        ("zx-demo", "A01", "ZXB-100")
    assert facts.rollback_indexes[0] == 2 and facts.current_slot == "a"
