"""The Show test of issue 12: a line of 8 emulated devices flashed by one `zflash station`.

Four emulated USB devices (in-process pyusb bus, via the ZFLASH_USB_BACKEND hook), two over
TCP and two on ptys (found by a tty glob). One is unplugged mid-flash, one is on another
baseband, one's new slot fails to boot; the other five flash and boot. In watch mode the
unplugged one is plugged back in after the station saw it leave, and resumes.
"""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SIGNING_PUB
from emulator_helpers import GOOD, demo_profile
from test_events_schema import schema
from zflash.cli import main
from zflash.emulator.device import EmulatedDevice
from zflash.emulator.runner import EmulatorRunner
from zflash.emulator.storage import Storage
from zflash.emulator.usb_backend import EmulatedUsbBackend
from zflash.emulator.usb_device import EmulatedUsbDevice
from zflash.emulator.zdl_server import ZdlServer

_BACKEND: EmulatedUsbBackend | None = None


def backend() -> EmulatedUsbBackend:
    """The ZFLASH_USB_BACKEND hook: this module's bus."""
    assert _BACKEND is not None
    return _BACKEND


@pytest.fixture
def line(tmp_path, monkeypatch):
    """8 devices: serial -> the EmulatedDevice behind it."""
    global _BACKEND
    devices: dict[str, EmulatedDevice] = {}
    usb: dict[str, EmulatedUsbDevice] = {}
    _BACKEND = EmulatedUsbBackend()
    for i in range(1, 5):
        serial = f"ZXUSB{i}"
        device = EmulatedDevice(Storage.create(tmp_path / serial, demo_profile(serial=serial)))
        devices[serial] = device
        usb[serial] = _BACKEND.plug(EmulatedUsbDevice(serial, f"1-1.{i}",
                                                      server=ZdlServer(device).serve))
    runners = []
    (tmp_path / "ttys").mkdir()
    for serial, link in (("ZXTCP1", "tcp"), ("ZXTCP2", "tcp"), ("ZXPTY1", "pty"),
                         ("ZXPTY2", "pty")):
        profile = demo_profile(serial=serial)
        if serial == "ZXTCP2":
            profile.baseband = "ZXB-999"  # another baseband: refused (9040)
        runner = EmulatorRunner(tmp_path / serial, profile)
        runner.start_tcp(0) if link == "tcp" else runner.start_pty(str(tmp_path / "ttys" /
                                                                        serial))
        runners.append(runner)
        devices[serial] = runner.device
    monkeypatch.setenv("ZFLASH_USB_BACKEND", f"{__name__}:backend")
    monkeypatch.setenv("ZFLASH_TRUST_DIR", "/nonexistent")
    yield devices, usb, runners
    for runner in runners:
        runner.stop()
    _BACKEND.shutdown()
    _BACKEND = None


def _log_has(path: Path, kind: str, after: int = 0) -> bool:
    if not path.exists():
        return False
    return sum(json.loads(l)["event"] == kind for l in path.read_text().splitlines()) > after


def test_a_line_of_eight_devices(line, tmp_path):
    devices, usb, runners = line
    usb["ZXUSB3"].unplug_after("out", 150_000)  # pulled mid-flash
    devices["ZXUSB4"].fail_next_boot = True  # its new slot will not boot
    logs, report, junit = tmp_path / "logs", tmp_path / "run.json", tmp_path / "run.xml"

    def replug() -> None:
        """Plug ZXUSB3 back once the station saw it fail and leave."""
        log = logs / "ZXUSB3.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (_log_has(log, "job_finished")
                                                    and _log_has(log, "device_left")):
            time.sleep(0.05)
        backend().plug(usb["ZXUSB3"])

    helper = threading.Thread(target=replug, daemon=True)
    helper.start()
    args = ["station", str(GOOD), "--trust", str(SIGNING_PUB), "--watch", "--max-devices", "9",
            "--port", "1-1.*", "--tty", str(tmp_path / "ttys" / "*"),
            "-d", runners[0].urls[0], "-d", runners[1].urls[0],
            "--log-dir", str(logs), "--report", str(report), "--junit", str(junit), "--json"]
    result = CliRunner().invoke(main, args)
    helper.join(timeout=5)
    assert result.exit_code == 60, result.output

    # stdout is NDJSON only, and the last line is the report's summary
    lines = [json.loads(l) for l in result.stdout.splitlines()]
    assert lines[-1]["event"] == "station_report"
    assert (lines[-1]["ok"], lines[-1]["failed"], lines[-1]["devices"]) == (6, 2, 8)
    table = schema()  # every event of the run is in protocols/events.md, with its fields
    for event in lines:
        assert not table[event["event"]][0] - set(event), event

    data = json.loads(report.read_text())
    by_serial = {d["serial"]: d for d in data["devices"]}
    assert set(by_serial) == set(devices)
    assert data["summary"] == {"devices": 8, "ok": 6, "failed": 2, "interrupted": 0,
                               "exit_code": 9060}
    assert {s: d["code"] for s, d in by_serial.items() if d["result"] != "ok"} == \
        {"ZXTCP2": 9040, "ZXUSB4": 9031}
    for serial in ("ZXUSB1", "ZXUSB2", "ZXTCP1", "ZXPTY1", "ZXPTY2", "ZXUSB3"):
        assert by_serial[serial]["booted_slot"] == "b", serial
        assert devices[serial].facts().current_slot == "b", serial
        assert by_serial[serial]["package_sha256"] == data["package"]["sha256"]
    assert devices["ZXUSB4"].facts().current_slot == "a"  # fell back
    assert devices["ZXTCP2"].facts().current_slot == "a"  # refused before any write
    # The unplugged one: its first job lost the link, the second resumed and finished.
    usb3 = [j for j in data["jobs"] if j["serial"] == "ZXUSB3"]
    assert [j["code"] for j in usb3] == [9024, 0]
    assert usb3[1]["skipped_bytes"] > 0 and usb3[1]["resumed_blocks"] > 0
    assert usb3[1]["port"] == "1-1.3"

    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("8", "2")
    failed = {c.get("name"): c.find("failure").get("type") for c in suite.iter("testcase")
              if c.find("failure") is not None}
    assert failed == {"ZXTCP2": "9040", "ZXUSB4": "9031"}

    # One log per device, named by serial; every event carries the device and elapsed.
    assert sorted(p.name for p in logs.iterdir()) == sorted(f"{s}.jsonl" for s in devices)
    for path in logs.iterdir():
        events = [json.loads(l) for l in path.read_text().splitlines()]
        assert all(e["device"].get("serial") == path.stem or e["event"] in (
            "device_arrived", "attempt", "connected") for e in events), path
        assert all("elapsed" in e and e["device"]["url"] for e in events)
