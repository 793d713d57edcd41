"""End to end: the real CLI (a subprocess) against the emulated device over a pty and TCP."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SAMPLES, SIGNING_PUB
from emulator_helpers import (BAD_SAMPLES, GOOD, NEWER, demo_profile, image_sha256,
                              partition_prefix_sha256, snapshot)
from zflash.emulator.runner import EmulatorRunner, LinkFaults
from zflash.package.reader import Package

TRUST = ["--trust", str(SIGNING_PUB)]


def zflash(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent"})


def events(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def done_event(result: subprocess.CompletedProcess[str]) -> dict:
    return next(e for e in events(result) if e["event"] == "done")


def info(url: str) -> dict:
    result = zflash("info", "-d", url, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def emulator(tmp_path):
    """Start an in-process emulated device; yields a factory (faults...) -> runner."""
    runners = []

    def start(link: str = "tcp", state: Path | None = None, **kwargs) -> EmulatorRunner:
        runner = EmulatorRunner(state or tmp_path / f"dev{len(runners)}", demo_profile(),
                                **kwargs)
        runner.start_tcp(0) if link == "tcp" else runner.start_pty()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.stop()


def slot_files(root: Path, slot: str) -> dict[str, str]:
    return {k: v for k, v in snapshot(root).items() if k.endswith(f"_{slot}.img")}


@pytest.mark.parametrize("link", ["pty", "tcp"])
def test_good_package_flashes_boots_and_raises_rollback_after_boot(emulator, link):
    runner = emulator(link)
    url, root = runner.urls[0], runner.storage.root
    running_before = slot_files(root, "a")
    result = zflash("flash", str(NEWER), "-d", url, *TRUST, "--no-reboot", "--json")
    assert result.returncode == 0, result.stderr
    kinds = [e["event"] for e in events(result)]
    assert kinds.index("check_passed") < kinds.index("update_ready") < kinds.index("slot_switched")
    for name in ("boot", "system", "vendor"):
        size = (SAMPLES / "images" / "1.2.0" / f"{name}.img").stat().st_size
        assert partition_prefix_sha256(root, f"{name}_b.img", size) == image_sha256("1.2.0", name)
    logo_size = (SAMPLES / "images" / "1.2.0" / "logo.img").stat().st_size
    assert partition_prefix_sha256(root, "logo.img", logo_size) == image_sha256("1.2.0", "logo")
    facts = info(url)
    assert facts["current_slot"] == "a" and facts["rollback_indexes"] == {"0": 2}
    assert [s["name"] for s in facts["slots"] if s["active"]] == ["b"]
    rebooted = zflash("reboot", "-d", url)
    assert rebooted.returncode == 0 and "booted slot b" in rebooted.stdout
    facts = info(url)
    assert facts["current_slot"] == "b" and facts["rollback_indexes"] == {"0": 3}
    assert slot_files(root, "a") == running_before


def test_summary_counts_and_reboot_in_one_go(emulator):
    runner = emulator()
    result = zflash("flash", str(GOOD), "-d", runner.urls[0], *TRUST)
    assert result.returncode == 0, result.stderr
    assert "device now runs slot b" in result.stdout
    assert "sent" in result.stdout and "MB/s" in result.stdout
    again = zflash("flash", str(GOOD), "-d", runner.urls[0], *TRUST, "--json")
    summary = done_event(again)
    # Slot a (target now) holds the old build; nothing is skipped except zero blocks.
    assert summary["booted_slot"] == "a"


@pytest.mark.parametrize("sample, code", sorted(BAD_SAMPLES.items()))
def test_bad_samples_refused_by_host_and_by_device(emulator, sample, code):
    runner = emulator()
    url, root = runner.urls[0], runner.storage.root
    before = snapshot(root)
    host = zflash("flash", str(SAMPLES / sample), "-d", url, *TRUST)
    assert host.returncode == code - 9000, host.stderr
    assert f"error {code}" in host.stderr and "fix:" in host.stderr
    assert "Traceback" not in host.stderr
    assert snapshot(root) == before
    device = zflash("flash", str(SAMPLES / sample), "-d", url, *TRUST, "--skip-host-checks")
    assert device.returncode == code - 9000, device.stderr
    assert "device:" in device.stderr  # the refusal came from the device
    assert snapshot(root) == before


def test_preflight_lists_every_failure(emulator, tmp_path):
    runner = emulator()
    result = zflash("flash", str(SAMPLES / "zx-demo-1.1.0-other-baseband.zpk"), "-d",
                    runner.urls[0], *TRUST, "--json")
    failed = [e for e in events(result) if e["event"] == "check_failed"]
    assert [f["code"] for f in failed] == [9040]
    assert failed[0]["meaning"] == "Baseband mismatch" and failed[0]["cause"] == "baseband"
    assert "baseband" in failed[0]["fix"]


def _stored_sizes(package: Path) -> dict[tuple[int, int], int]:
    with Package(package) as pkg:
        return {(i, b): e.stored_size for i, p in enumerate(pkg.manifest.partitions)
                for b, e in enumerate(pkg.head.tables[p.name]) if e.stored_size}


def test_link_dropped_at_ten_random_points_then_resumes(emulator):
    stored = _stored_sizes(GOOD)
    total = sum(stored.values())
    rng = random.Random(2024)
    points = sorted(rng.randrange(2_000, total) for _ in range(10))
    resumed_any = 0
    for point in points:
        runner = emulator(faults=LinkFaults(drop_after_bytes=point))
        url = runner.urls[0]
        first = zflash("flash", str(GOOD), "-d", url, *TRUST, "--json")
        assert first.returncode == 24, (point, first.stderr)
        assert "error 9024" in first.stderr
        facts = info(url)
        slot_a = next(s for s in facts["slots"] if s["name"] == "a")
        assert facts["current_slot"] == "a" and slot_a["bootable"] and slot_a["successful"]
        second = zflash("flash", str(GOOD), "-d", url, *TRUST, "--json")
        assert second.returncode == 0, (point, second.stderr)
        summary = done_event(second)
        ready = next(e for e in events(second) if e["event"] == "update_ready")
        assert ready["slot"] == "b"
        # Only the missing blocks went over the link the second time.
        assert summary["sent_bytes"] < total
        assert summary["resumed_blocks"] > 0
        resumed_any += 1
        assert summary["booted_slot"] == "b"
        runner.stop()
    assert resumed_any == 10


def test_emulator_killed_mid_write_then_flash_completes(tmp_path):
    state = tmp_path / "dev"
    cmd = [sys.executable, "-m", "zflash", "emulate", "--state", str(state), "--tcp", "0",
           "--rate", "100000", *TRUST, "--url-file", str(tmp_path / "urls")]
    emu = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = emu.stdout.readline().decode().strip()
    flash = subprocess.Popen([sys.executable, "-m", "zflash", "flash", str(GOOD), "-d", url,
                              *TRUST, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until blocks are being written
        if (state / "staging").exists() and any((state / "staging").iterdir()):
            break
        time.sleep(0.05)
    time.sleep(0.5)
    emu.send_signal(signal.SIGKILL)
    emu.wait(timeout=10)
    out, err = flash.communicate(timeout=60)
    assert flash.returncode in (24, 25), err  # link lost or timeout
    restarted = subprocess.Popen(cmd[:-2], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = restarted.stdout.readline().decode().strip()
        result = zflash("flash", str(GOOD), "-d", url, *TRUST, "--json")
        assert result.returncode == 0, result.stderr
        assert done_event(result)["booted_slot"] == "b"
    finally:
        restarted.terminate()
        restarted.wait(timeout=10)


def test_power_loss_at_commit_then_flash_completes(emulator, tmp_path):
    state = tmp_path / "pl"
    runner = emulator(state=state, power_loss_at="commit:2", on_power_loss=lambda: None)
    result = zflash("flash", str(GOOD), "-d", runner.urls[0], *TRUST)
    assert result.returncode in (24, 25), result.stderr
    runner.stop()
    again = emulator(state=state)
    result = zflash("flash", str(GOOD), "-d", again.urls[0], *TRUST, "--json")
    assert result.returncode == 0, result.stderr


def test_one_percent_corruption_completes_with_retransmissions(emulator, tmp_path):
    runner = emulator("pty", faults=LinkFaults(corrupt_fraction=0.01, seed=7))
    result = zflash("flash", str(GOOD), "-d", runner.urls[0], *TRUST, "--json",
                    "--max-data", "65536", "--window", "8")
    assert result.returncode == 0, result.stderr
    summary = done_event(result)
    assert summary["retransmissions"] > 0
    assert runner.faulty is not None and runner.faulty.corrupted_chunks > 0
    root = runner.storage.root
    for name in ("boot", "system", "vendor"):
        size = (SAMPLES / "images" / "1.1.0" / f"{name}.img").stat().st_size
        assert partition_prefix_sha256(root, f"{name}_b.img", size) == image_sha256("1.1.0", name)


def test_forced_boot_failure_falls_back_and_says_so(emulator):
    runner = emulator()
    result = zflash("flash", str(NEWER), "-d", runner.urls[0], *TRUST, "--force-boot-failure")
    assert result.returncode == 31, result.stderr
    assert "fell back to slot a" in result.stderr
    facts = info(runner.urls[0])
    assert facts["current_slot"] == "a" and facts["rollback_indexes"] == {"0": 2}


def test_garbage_then_a_clean_session(emulator):
    runner = emulator()
    host, port = runner.urls[0].removeprefix("tcp://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(random.Random(1).randbytes(200_000))
    assert info(runner.urls[0])["product"] == "zx-demo"


def test_backup_reads_back_with_hash(emulator, tmp_path):
    runner = emulator()
    assert zflash("flash", str(GOOD), "-d", runner.urls[0], *TRUST).returncode == 0
    out = tmp_path / "system.bin"
    result = zflash("backup", "system", "-d", runner.urls[0], "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.splitlines()[-1])
    data = out.read_bytes()
    assert len(data) == 1 << 20 and record["bytes"] == len(data)
    import hashlib
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    size = (SAMPLES / "images" / "1.1.0" / "system.img").stat().st_size
    assert hashlib.sha256(data[:size]).hexdigest() == image_sha256("1.1.0", "system")


def test_no_device_is_a_coded_error():
    result = zflash("info", "-d", "tcp://127.0.0.1:1")
    assert result.returncode == 20 and "error 9020" in result.stderr
    result = zflash("info", "-d", "bogus://x")
    assert result.returncode == 28 and "Traceback" not in result.stderr


def test_serial_baud_switch_is_confirmed_by_ping(emulator):
    runner = emulator("pty", faults=LinkFaults(serial_baud=115200))
    result = zflash("flash", str(GOOD), "-d", runner.urls[0], *TRUST, "--baud", "2000000",
                    "--json", "--no-reboot")
    assert result.returncode == 0, result.stderr
    baud = next(e for e in events(result) if e["event"] == "baud")
    assert baud["switched"] is True and baud["baud"] == 2000000
    # 346 kB at the old 11.5 kB/s would take 30 s; at the new rate it takes under 3 s.
    assert done_event(result)["seconds"] < 10


def test_serial_baud_switch_falls_back_when_the_ping_fails(emulator):
    runner = emulator("pty", faults=LinkFaults(serial_baud=921600, baud_switch_fails=True))
    result = zflash("flash", str(GOOD), "-d", runner.urls[0] + "?baud=921600", *TRUST,
                    "--baud", "2000000", "--json", "--no-reboot")
    assert result.returncode == 0, result.stderr
    baud = next(e for e in events(result) if e["event"] == "baud")
    assert baud["switched"] is False and baud["kept"] == 921600
    connected = next(e for e in events(result) if e["event"] == "connected")
    assert connected["baud"] is None
    assert done_event(result)["slot"] == "b"


def test_device_without_block_hashes_still_flashes(emulator, monkeypatch):
    """Delta is an optimisation: a device that refuses BLOCK_HASHES gets every block."""
    from zflash.errors import Code, ZflashError
    runner = emulator()

    def refuse(*args, **kwargs):
        raise ZflashError(Code.DEVICE_REFUSED, "block hashes not supported")
    monkeypatch.setattr(runner.device, "block_hashes", refuse)
    result = zflash("flash", str(GOOD), "-d", runner.urls[0], *TRUST, "--json")
    assert result.returncode == 0, result.stderr
    summary = done_event(result)
    assert summary["kept_blocks"] == 0 and summary["sent_bytes"] > 0


def test_reflash_of_the_same_build_sends_nothing(emulator):
    """Delta: the inactive slot (and the live unslotted logo) already hold this build."""
    runner = emulator()
    url = runner.urls[0]
    assert zflash("flash", str(GOOD), "-d", url, *TRUST, "--no-reboot").returncode == 0
    again = zflash("flash", str(GOOD), "-d", url, *TRUST, "--no-reboot", "--json")
    assert again.returncode == 0, again.stderr
    summary = done_event(again)
    assert summary["sent_bytes"] == 0 and summary["kept_blocks"] > 0
    assert summary["skipped_bytes"] == summary["image_bytes"]


def test_emulate_identity_from_options_and_bad_profile(tmp_path):
    cmd = [sys.executable, "-m", "zflash", "emulate", "--state", str(tmp_path / "dev"),
           "--tcp", "0", "--hw-rev", "A02", "--baseband", "ZXB-200", "--serial-number", "SN9",
           *TRUST]
    emu = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = emu.stdout.readline().strip()
        facts = info(url)
        assert (facts["hardware_revision"], facts["baseband"], facts["serial"]) == \
            ("A02", "ZXB-200", "SN9")
        refused = zflash("flash", str(GOOD), "-d", url, *TRUST)
        assert refused.returncode == 40, refused.stderr  # the good sample is for ZXB-100
    finally:
        emu.terminate()
        emu.wait(timeout=10)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = zflash("emulate", "--state", str(tmp_path / "dev2"), "--profile", str(bad),
                    "--tcp", "0")
    assert result.returncode == 2 and "error 9002" in result.stderr
    assert "Traceback" not in result.stderr


def test_one_host_session_at_a_time_across_protocols(emulator):
    """While a ZDL host holds the device, a fastboot host is told it is busy (D62)."""
    from zflash.errors import Code, ZflashError
    from zflash.targets.fastboot.client import FastbootClient
    from zflash.targets.registry import open_target
    runner = emulator()
    fastboot_url = runner.start_fastboot_tcp(0)
    with open_target(runner.urls[0]) as target:
        assert target.identify().facts.product == "zx-demo"
        with pytest.raises(ZflashError) as err:
            with FastbootClient.connect(fastboot_url, timeout=1.0) as client:
                client.getvar("product")  # busy is not "unknown variable"
        assert err.value.code == Code.DEVICE_REFUSED and "device busy" in err.value.detail
    with FastbootClient.connect(fastboot_url, timeout=10.0) as client:
        assert client.getvar("product") == "zx-demo"


def test_slot_show_and_set_active(emulator):
    runner = emulator()
    url = runner.urls[0]
    shown = zflash("slot", "-d", url, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["current_slot"] == "a"
    switched = zflash("slot", "-d", url, "set-active", "b")
    assert switched.returncode == 0 and "active slot is now b" in switched.stdout
    assert zflash("reboot", "-d", url).returncode == 0
    assert info(url)["current_slot"] == "b"
    bad = zflash("slot", "-d", url, "set-active", "c")
    assert bad.returncode == 32 and "error 9032" in bad.stderr


def test_userdata_is_wiped_only_when_asked(emulator):
    runner = emulator()
    url, root = runner.urls[0], runner.storage.root
    userdata = root / "partitions" / "userdata.img"
    with open(userdata, "r+b") as handle:
        handle.write(b"the user's photos")
    assert zflash("flash", str(GOOD), "-d", url, *TRUST).returncode == 0
    assert userdata.read_bytes().startswith(b"the user's photos")
    result = zflash("flash", str(NEWER), "-d", url, *TRUST, "--wipe-userdata", "--json")
    assert result.returncode == 0, result.stderr
    assert any(e["event"] == "userdata_wiped" for e in events(result))
    assert not any(userdata.read_bytes())


def test_three_devices_flashed_at_once(emulator):
    """A factory line: one flash job per device, in parallel, no shared state between them."""
    from concurrent.futures import ThreadPoolExecutor
    from zflash.flash import FlashOptions, flash
    from zflash.package import keys as keymod
    trust = keymod.TrustStore()
    trust.add(keymod.load_public_key(SIGNING_PUB))
    runners = [emulator() for _ in range(3)]
    logs: list[list[dict]] = [[], [], []]

    def job(i: int):
        return flash(runners[i].urls[0], GOOD, trust, FlashOptions(), logs[i].append)

    with ThreadPoolExecutor(3) as pool:
        summaries = list(pool.map(job, range(3)))
    assert [s.booted_slot for s in summaries] == ["b", "b", "b"]
    for runner, log in zip(runners, logs):
        assert runner.device.facts().current_slot == "b"
        assert log[0]["event"] == "connected" and log[0]["url"] == runner.urls[0]
        assert log[-1]["event"] == "done"
