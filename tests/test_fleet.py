"""A line of emulated devices (`zflash emulate --devices N`): plug, unplug, schedule, control."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SIGNING_PUB
from emulator_helpers import BAD_SAMPLES, GOOD, demo_profile
from zflash.emulator.fleet import (ControlServer, Fleet, Links, ScheduleEvent, device_specs,
                                   parse_schedule, send_control)
from zflash.emulator.runner import LinkFaults
from zflash.errors import Code, ZflashError

TRUST = ["--trust", str(SIGNING_PUB)]
OTHER_BASEBAND = next(k for k, v in BAD_SAMPLES.items() if v == 9040)


def zflash(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent"})


def tcp_open(url: str) -> bool:
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def make_fleet(tmp_path: Path, count: int, rate: float | None = None, **links: object) -> Fleet:
    specs = device_specs(count, demo_profile(), LinkFaults(bytes_per_second=rate), False, [])
    return Fleet(tmp_path / "line", specs, Links(**links))  # type: ignore[arg-type]


# ------------------------------------------------------------------ schedule and options
def test_schedule_lines_are_sorted_by_time_and_comments_ignored() -> None:
    events = parse_schedule("# a line\n2 unplug 1\n\n0.5 plug 2  # second device\n3 stop\n", 2)
    assert events == [ScheduleEvent(0.5, "plug", 2), ScheduleEvent(2.0, "unplug", 1),
                      ScheduleEvent(3.0, "stop")]


@pytest.mark.parametrize("line, says", [("x plug 1", "seconds"), ("-1 plug 1", "seconds"),
                                        ("1 pull 1", "expected"), ("1 plug 3", "1..2"),
                                        ("1 plug", "expected"), ("inf stop", "seconds")])
def test_a_bad_schedule_line_is_a_usage_error_naming_it(line: str, says: str) -> None:
    with pytest.raises(ZflashError) as caught:
        parse_schedule(f"0 plug 1\n{line}\n", 2, "sched.txt")
    assert caught.value.code == Code.USAGE
    assert "sched.txt line 2" in caught.value.detail and says in caught.value.detail


def test_each_device_has_its_own_serial_and_options_set_one_apart() -> None:
    specs = device_specs(3, demo_profile(), LinkFaults(bytes_per_second=1000), False,
                         ["2:baseband=ZXB-900", "3:fail-next-boot", "1:rate=5000"])
    assert [s.profile.serial for s in specs] == ["ZXEMU0001", "ZXEMU0002", "ZXEMU0003"]
    assert [s.profile.baseband for s in specs] == ["ZXB-100", "ZXB-900", "ZXB-100"]
    assert [s.fail_next_boot for s in specs] == [False, False, True]
    assert [s.faults.bytes_per_second for s in specs] == [5000, 1000, 1000]


@pytest.mark.parametrize("option", ["4:baseband=X", "1:colour=red", "1:baseband=", "nokey",
                                    "1:serial-number=ZXEMU0002", "1:rate=fast"])
def test_a_bad_device_option_is_a_usage_error(option: str) -> None:
    with pytest.raises(ZflashError) as caught:
        device_specs(3, demo_profile(), LinkFaults(), False, [option])
    assert caught.value.code == Code.USAGE


# ------------------------------------------------------------------ plug and unplug
def test_unplug_removes_the_port_and_plug_brings_it_back_on_the_same_names(tmp_path) -> None:
    fleet = make_fleet(tmp_path, 2, pty=True, tcp_base=0)
    try:
        fleet.start()
        first = fleet.device(1)
        pty_url, tcp_url = first.urls
        tty = Path(pty_url.removeprefix("serial://"))
        assert tty.is_symlink() and tcp_open(tcp_url)
        assert fleet.apply("unplug", 1) == "ok"
        assert not tty.exists() and not tcp_open(tcp_url)
        assert fleet.device(2).plugged  # the other device is untouched
        assert fleet.apply("unplug", 1) == "ok (already unplugged)"
        assert fleet.apply("plug", 1) == "ok"
        assert first.urls == [pty_url, tcp_url]
        facts = json.loads(zflash("info", "-d", pty_url, "--json").stdout)
        assert facts["serial"] == "ZXEMU0001"
        assert json.loads(zflash("info", "-d", fleet.device(2).urls[1],
                                 "--json").stdout)["serial"] == "ZXEMU0002"
    finally:
        fleet.stop()
    assert not any(tmp_path.joinpath("line").glob("*.tty"))


def test_a_device_unplugged_mid_flash_resumes_when_plugged_back(tmp_path) -> None:
    fleet = make_fleet(tmp_path, 1, rate=100_000, tcp_base=0)
    try:
        fleet.start()
        device = fleet.device(1)
        url = device.urls[0]
        flash = subprocess.Popen([sys.executable, "-m", "zflash", "flash", str(GOOD), "-d", url,
                                  *TRUST, "--json"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent"})
        staging = device.state_dir / "staging"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                p.name == "journal.json" or p.suffix == ".img" for p in staging.rglob("*")):
            time.sleep(0.05)
        time.sleep(0.5)
        fleet.apply("unplug", 1)
        _, err = flash.communicate(timeout=60)
        assert flash.returncode in (24, 25), err  # link lost (or timed out)
        fleet.apply("plug", 1)
        again = zflash("flash", str(GOOD), "-d", url, *TRUST, "--json")
        assert again.returncode == 0, again.stderr
        done = next(json.loads(line) for line in again.stdout.splitlines()
                    if '"event": "done"' in line or '"event":"done"' in line)
        assert done["resumed_blocks"] > 0 and done["booted_slot"] == "b"
    finally:
        fleet.stop()


def test_control_socket_plugs_unplugs_and_reports(tmp_path) -> None:
    fleet = make_fleet(tmp_path, 2, tcp_base=0)
    sock = tmp_path / "ctl.sock"
    fleet.start([ScheduleEvent(0, "plug", 2)])  # device 2 waits for its plug
    server = ControlServer(fleet, sock)
    try:
        status = send_control(sock, "status").splitlines()
        assert status[0].startswith("1 ZXEMU0001 plugged tcp://")
        assert status[1].startswith("2 ZXEMU0002 unplugged tcp://") and status[2] == "ok"
        assert not tcp_open(fleet.device(2).urls[0])
        assert send_control(sock, "plug 2") == "ok"
        assert tcp_open(fleet.device(2).urls[0])
        assert send_control(sock, "unplug 1") == "ok" and not fleet.device(1).plugged
        assert send_control(sock, "unplug 9").startswith("error: ")
        assert send_control(sock, "reboot").startswith("error: expected")
        assert send_control(sock, "stop") == "ok" and fleet.stop_event.is_set()
    finally:
        server.close()
        fleet.stop()


# ------------------------------------------------------------------ the command
def test_emulate_devices_plays_its_schedule_and_stops_by_itself(tmp_path) -> None:
    schedule = tmp_path / "line.txt"
    schedule.write_text("0 plug 2\n1 unplug 1\n30 stop\n")
    urls_file = tmp_path / "urls"
    ctl = tmp_path / "ctl.sock"
    emu = subprocess.Popen([sys.executable, "-m", "zflash", "emulate", "--devices", "3",
                            "--state", str(tmp_path / "line"), "--pty", "--tcp", "0", *TRUST,
                            "--schedule", str(schedule), "--control", str(ctl),
                            "--device-option", "3:baseband=ZXB-900",
                            "--url-file", str(urls_file)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        urls = [emu.stdout.readline().strip() for _ in range(6)]  # type: ignore[union-attr]
        assert [u.split(":", 1)[0] for u in urls] == ["serial", "tcp"] * 3
        assert urls[0] == f"serial://{tmp_path / 'line' / 'dev01.tty'}"
        assert urls_file.read_text().split() == urls
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(urls[0][9:]).exists():
            time.sleep(0.1)
        assert not Path(urls[0][9:]).exists()  # device 1 unplugged at t=1
        refused = zflash("flash", str(GOOD), "-d", urls[5], *TRUST, "--no-reboot")
        assert refused.returncode == 40, refused.stderr  # device 3: another baseband
        assert send_control(ctl, "stop") == "ok"
        assert emu.wait(timeout=30) == 0
    finally:
        if emu.poll() is None:
            emu.kill()
            emu.wait()
    _, err = emu.communicate()
    assert "ZXEMU0001 unplugged" in err


def test_emulate_devices_refuses_a_bad_schedule_with_its_line(tmp_path) -> None:
    schedule = tmp_path / "line.txt"
    schedule.write_text("0 plug 1\n1 unplug 7\n")
    result = zflash("emulate", "--devices", "2", "--state", str(tmp_path / "s"), "--tcp", "0",
                    *TRUST, "--schedule", str(schedule), timeout=30)
    assert result.returncode == Code.USAGE - 9000
    assert "line 2" in result.stderr and "Traceback" not in result.stderr
    assert zflash("emulate", "--devices", "2", "--state", str(tmp_path / "s"),
                  "--pty-link", "x", timeout=30).returncode == Code.USAGE - 9000
