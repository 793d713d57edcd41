"""The station's parts: matching, the station file, the retry policy, the report, the
renderer, hotplug on the emulated bus, Ctrl-C, and flash's refusal of several -d."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import SIGNING_PUB
from emulator_helpers import GOOD, demo_profile
from zflash.cli.station_render import StationRenderer
from zflash.emulator.runner import EmulatorRunner, LinkFaults
from zflash.emulator.usb_backend import EmulatedUsbBackend
from zflash.emulator.usb_device import EmulatedUsbDevice, echo_server
from zflash.errors import Code, ZflashError
from zflash.flash import FlashOptions, flash
from zflash.package import keys as keymod
from zflash.station.config import StationConfig, load_station_file
from zflash.station.discovery import Discovery, Sighting
from zflash.station.job import FlashPlan, Job
from zflash.station.policy import RetryPolicy
from zflash.station.report import RunReport
from zflash.station.selectors import Selectors, UsbIdFilter


def _cand(port: str, serial: str, vid: int = 0x1209, pid: int = 0x0001, kind: str = "zdl"):
    info = SimpleNamespace(vid=vid, pid=pid, protocol=kind, port_path=port, serial=serial,
                           url=f"usb://{vid:04x}:{pid:04x}?serial={serial}")
    return SimpleNamespace(info=info)


BUS = [_cand("1-1.1", "ZX001"), _cand("1-1.2", "QA002"), _cand("1-2", "ZX003"),
       _cand("2-1", "FB004", pid=0x0002, kind="fastboot")]


def _keys(selectors: Selectors, tmp: Path | None = None) -> list[str]:
    return sorted(Discovery(selectors, usb=lambda: BUS).scan())


# ---------------------------------------------------------------------------------- matching
def test_usb_filters_narrow_each_other_and_sources_unite(tmp_path):
    assert _keys(Selectors(ports=("1-1.*",))) == ["usb:1-1.1", "usb:1-1.2"]
    assert _keys(Selectors(ports=("1-1.*",), serial_prefixes=("ZX",))) == ["usb:1-1.1"]
    assert _keys(Selectors(serial_prefixes=("ZX", "FB"))) == ["usb:1-1.1", "usb:1-2",
                                                              "usb:2-1"]
    assert _keys(Selectors(usb_ids=(UsbIdFilter.parse("1209:*:fastboot"),))) == ["usb:2-1"]
    assert _keys(Selectors(usb_ids=(UsbIdFilter.parse("1209:0001"),))) == [
        "usb:1-1.1", "usb:1-1.2", "usb:1-2"]
    assert len(_keys(Selectors())) == 4  # nothing named: every USB device in download mode
    (tmp_path / "ttyUSB0").touch()
    (tmp_path / "ttyACM0").touch()
    sel = Selectors(urls=("tcp://127.0.0.1:9",), ttys=(str(tmp_path / "ttyUSB*"),),
                    ports=("2-1",))
    seen = Discovery(sel, usb=lambda: BUS).scan()
    assert sorted(seen) == sorted(["usb:2-1", f"tty:{tmp_path}/ttyUSB0",
                                   "url:tcp://127.0.0.1:9"])
    assert seen[f"tty:{tmp_path}/ttyUSB0"].url == f"serial://{tmp_path}/ttyUSB0"
    # URLs or ttys alone: USB is not scanned at all (no libusb needed)
    assert Discovery(Selectors(urls=("tcp://h:1",)), usb=lambda: 1 / 0).scan()


@pytest.mark.parametrize("text", ["1209", "12:34:56:78", "xyz:0001", "1209:0001:edl",
                                  "12345:0001"])
def test_bad_usb_id_is_a_usage_error(text):
    with pytest.raises(ZflashError) as err:
        UsbIdFilter.parse(text)
    assert err.value.code == Code.USAGE and text in err.value.detail


# ---------------------------------------------------------------------------------- station file
def test_station_file_resolves_paths_and_flags_override(tmp_path):
    (tmp_path / "st.toml").write_text('package = "pkg.zpk"\ntrust = "k.pem"\n'
                                      'serial-prefix = ["ZX", "QA"]\nmode = "watch"\n'
                                      'jobs = 4\nretries = 2\nno_reboot = true\n')
    cfg = load_station_file(tmp_path / "st.toml")
    assert cfg.package == tmp_path / "pkg.zpk" and cfg.trust == (tmp_path / "k.pem",)
    assert (cfg.serial_prefix, cfg.mode, cfg.jobs, cfg.retries, cfg.no_reboot) == \
        (("ZX", "QA"), "watch", 4, 2, True)
    merged = cfg.merged({"jobs": 8, "mode": None, "serial_prefix": (), "port": ("1-1.*",)})
    assert (merged.jobs, merged.mode, merged.serial_prefix, merged.port) == \
        (8, "watch", ("ZX", "QA"), ("1-1.*",))


@pytest.mark.parametrize("text, line, words", [
    ('jobs = 2\nflavour = "x"\n', 2, "unknown setting 'flavour'"),
    ('package = "p"\n\njobs = 0\n', 3, "jobs must be a whole number >= 1"),
    ('mode = "sometimes"\n', 1, 'mode must be "once" or "watch"'),
    ('retries = true\n', 1, "retries must be"),
    ('port = [1, 2]\n', 1, "port must be a string or a list of strings"),
    ('[device]\nurl = "x"\n', 1, "device must be"),
    ('jobs = = 2\n', 1, "not valid TOML"),
])
def test_station_file_mistakes_name_the_line(tmp_path, text, line, words):
    path = tmp_path / "station.toml"
    path.write_text(text)
    with pytest.raises(ZflashError) as err:
        load_station_file(path)
    assert err.value.code == Code.STATION_FILE
    assert words in err.value.detail and f"line {line}" in err.value.detail \
        or f"{path}:{line}:" in err.value.detail


def test_station_file_error_through_the_cli_is_coded_not_a_traceback(tmp_path):
    path = tmp_path / "station.toml"
    path.write_text('package = "p.zpk"\njbos = 3\n')
    result = subprocess.run([sys.executable, "-m", "zflash", "station", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 61
    assert f"{path}:2: unknown setting 'jbos'" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------- retry policy
def test_only_link_codes_are_retried():
    policy = RetryPolicy(retries=2)
    for code in (9012, 9013, 9015, 9023, 9031, 9040, 9045, 9004, 9001):
        assert not policy.should_retry(code, 1), code
    assert policy.should_retry(9024, 1) and policy.should_retry(9025, 2)
    assert not policy.should_retry(9024, 3)  # retries used up
    assert not policy.should_retry(9024, 1, stopping=True)
    assert not policy.should_retry(9025, 1, timed_out=True)


def _plan() -> FlashPlan:
    return FlashPlan(GOOD, keymod.TrustStore(), FlashOptions(), "ab" * 32, "1.1.0", "zx-demo")


def _job(codes: list[int], retries: int, tmp_path: Path | None = None) -> tuple[Job, list]:
    calls: list[str] = []

    def flasher(url, package, trust, options, emit):
        calls.append(url)
        emit({"event": "device", "facts": {"serial": "SN9"}})
        emit({"event": "partition_started", "partition": "boot", "skipped_bytes": 10})
        emit({"event": "bytes_sent", "partition": "boot", "bytes": 100, "wire_bytes": 100})
        code = codes[len(calls) - 1]
        if code:
            raise ZflashError(code, f"attempt {len(calls)}")
        emit({"event": "done", "booted_slot": "b", "resumed_blocks": 3})

    job = Job(Sighting("tty:/dev/x", "serial:///dev/x", "tty", "/dev/x"), _plan(),
              threading.Event(), lambda j, e: None, policy=RetryPolicy(retries, 0.0),
              log_dir=tmp_path, flasher=flasher)
    return job, calls


def test_a_lost_link_is_retried_with_resume_and_counted(tmp_path):
    job, calls = _job([9024, 9025, 0], retries=2, tmp_path=tmp_path)
    result = job.run()
    assert (result.result, result.retries, len(calls)) == ("ok", 2, 3)
    assert [a["code"] for a in result.attempts] == [9024, 9025, 0]
    assert result.sent_bytes == 300 and result.booted_slot == "b" and result.serial == "SN9"
    # the log moved from the port's name to the serial's once the serial was known
    assert [p.name for p in tmp_path.iterdir()] == ["SN9.jsonl"]
    kinds = [json.loads(l)["event"] for l in (tmp_path / "SN9.jsonl").read_text().splitlines()]
    assert kinds.count("retrying") == 2 and kinds[-1] == "job_finished"


def test_a_refused_package_is_never_retried():
    job, calls = _job([9040, 0], retries=5)
    result = job.run()
    assert (result.result, result.code, result.retries, len(calls)) == ("failed", 9040, 0, 1)


# ---------------------------------------------------------------------------------- report
def test_report_keeps_the_last_job_per_device_and_junit_says_the_same(tmp_path):
    report = RunReport(_plan())
    for codes in ([9024], [0]):  # the same device: failed, then replugged and flashed
        job, _ = _job(codes, retries=0)
        report.add(job.run())
    job, _ = _job([9040], retries=0)
    job.sighting = Sighting("tty:/dev/y", "serial:///dev/y", "tty", "/dev/y")
    result = job.run()
    result.serial = "SN10"
    report.add(result)
    assert report.counts() == {"devices": 2, "ok": 1, "failed": 1, "interrupted": 0}
    assert report.exit_code == 9060
    report.write_json(tmp_path / "r.json")
    report.write_junit(tmp_path / "r.xml")
    data = json.loads((tmp_path / "r.json").read_text())
    assert [d["serial"] for d in data["devices"]] == ["SN9", "SN10"]
    assert len(data["jobs"]) == 3 and data["package"]["sha256"] == "ab" * 32
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    assert cases["SN9"].find("failure") is None
    assert cases["SN10"].find("failure").get("type") == "9040"


# ---------------------------------------------------------------------------------- renderer
def test_pipe_lines_are_prefixed_by_the_device_and_json_is_json_only():
    job, _ = _job([0], retries=0)
    err = io.StringIO()
    render = StationRenderer("pipe", err=err, out=io.StringIO())
    job._on_event = render
    job.run()
    lines = err.getvalue().splitlines()
    assert lines and all(l.startswith(("[/dev/x] ", "[/dev/x SN9] ")) for l in lines)
    assert lines[-1].startswith("[/dev/x SN9] ok: booted slot b")
    out = io.StringIO()
    job, _ = _job([9040], retries=0)
    job._on_event = StationRenderer("json", err=io.StringIO(), out=out)
    job.run()
    events = [json.loads(l) for l in out.getvalue().splitlines()]
    assert events[-1]["event"] == "job_finished" and events[-1]["code"] == 9040


def test_terminal_redraws_one_line_per_device_under_the_header():
    err = io.StringIO()
    render = StationRenderer("terminal", err=err)
    for codes in ([0], [9040]):
        job, _ = _job(codes, retries=0)
        job.sighting = Sighting(f"tty:/dev/{codes[0]}", "serial:///x", "tty", f"/dev/{codes[0]}")
        job._on_event = render
        job.run()
    assert render.header() == "ok 1  failed 1  running 0"
    assert "\x1b[3F" in err.getvalue()  # moved back over header + 2 device lines


# ---------------------------------------------------------------------------------- hotplug
def test_emulated_bus_plug_and_unplug_at_run_time():
    bus = EmulatedUsbBackend()
    device = EmulatedUsbDevice("HOT1", "1-4", server=echo_server, plugged=False)
    assert bus.enumerate_devices() == []
    bus.plug(device)
    assert len(bus.enumerate_devices()) == 1
    bus.unplug("1-4")
    assert bus.enumerate_devices() == []
    bus.plug(device)
    bus.unplug("HOT1")
    assert bus.enumerate_devices() == [] and device in bus.devices
    with pytest.raises(KeyError):
        bus.unplug("HOT1")
    bus.shutdown()


# ---------------------------------------------------------------------------------- Ctrl-C
def test_sigint_stops_the_station_writes_the_report_and_leaves_the_device_resumable(tmp_path):
    runner = EmulatorRunner(tmp_path / "dev", demo_profile(serial="ZXINT"),
                            LinkFaults(bytes_per_second=150_000))
    url = runner.start_tcp(0)
    logs, report = tmp_path / "logs", tmp_path / "run.json"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zflash", "station", str(GOOD), "--trust", str(SIGNING_PUB),
             "--watch", "-d", url, "--log-dir", str(logs), "--report", str(report), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent"})
        log = logs / "ZXINT.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (log.exists() and '"bytes_sent"' in
                                                   log.read_text()):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 60, stderr
        data = json.loads(report.read_text())
        assert data["stopped_by"] == "SIGINT"
        (device,) = data["devices"]
        assert (device["serial"], device["result"], device["code"]) == \
            ("ZXINT", "interrupted", 9008)
        assert json.loads(stdout.splitlines()[-1])["event"] == "station_report"
        assert runner.device.facts().current_slot == "a"
        trust = keymod.TrustStore()
        trust.add(keymod.load_public_key(SIGNING_PUB))
        summary = flash(url, GOOD, trust, FlashOptions(), lambda e: None)
        assert summary.resumed_blocks > 0 and summary.booted_slot == "b"
    finally:
        runner.stop()


def test_flash_with_several_devices_is_a_usage_error_naming_station():
    result = subprocess.run([sys.executable, "-m", "zflash", "flash", str(GOOD), "-d",
                             "tcp://127.0.0.1:9", "-d", "tcp://127.0.0.1:10"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "zflash station" in result.stderr


def test_station_allow_partial_onto_fastboot(tmp_path):
    """A package without every A/B partition: a fastboot job refuses it (9039) unless the
    station is told --allow-partial (or allow_partial in the station file)."""
    import json as json_module
    import os
    import subprocess
    import sys

    from conftest import SIGNING_KEY, SIGNING_PUB
    from emulator_helpers import demo_profile
    from zflash.emulator.runner import EmulatorRunner
    from zflash.package import keys as keymod
    from zflash.package.writer import PackageInfo, PartitionSource, build_package
    image = tmp_path / "boot.img"
    image.write_bytes(os.urandom(64 << 10))
    package = tmp_path / "partial.zpk"
    build_package(PackageInfo("zx-demo", ("A01",), ("ZXB-100",), "9.9.9", 5, 0, 0),
                  [PartitionSource("boot", image, True)],
                  [keymod.load_private_key(SIGNING_KEY)], package)
    config = tmp_path / "st.toml"
    config.write_text("allow_partial = true\n")
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        url = runner.start_fastboot_tcp(0)
        for extra, code in (([], 9039), (["--allow-partial"], 0), (["--config", str(config)], 0)):
            report = tmp_path / f"run{len(extra)}.json"
            done = subprocess.run(
                [sys.executable, "-m", "zflash", "station", str(package), "-d", url, "--once",
                 "--trust", str(SIGNING_PUB), "--no-reboot", "--report", str(report), *extra],
                capture_output=True, text=True, timeout=120,
                env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent"})
            assert done.returncode == (0 if code == 0 else 60), done.stderr[-1500:]
            devices = json_module.loads(report.read_text())["devices"]
            assert [d["code"] for d in devices] == [code], devices
