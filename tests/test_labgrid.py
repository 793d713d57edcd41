"""zflash[labgrid]: the labgrid driver, locally and through a real coordinator, exporter and
ser2net on loopback against the emulator's pty."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SIGNING_PUB, require_module, require_tool
from emulator_helpers import BAD_SAMPLES, GOOD, demo_profile
from zflash.emulator.runner import EmulatorRunner
from zflash.errors import Code, ZflashError

EXTRA = "pip install 'zflash[labgrid]'; CI installs it"
OTHER_BASEBAND = GOOD.parent / next(k for k, v in BAD_SAMPLES.items() if v == 9040)
BIN = Path(sys.executable).parent


@pytest.fixture
def labgrid():
    require_module("labgrid", EXTRA)
    import labgrid
    from zflash.integrations import labgrid as driver_module
    return labgrid, driver_module


@pytest.fixture
def device(tmp_path):
    runner = EmulatorRunner(tmp_path / "dev", demo_profile())
    yield runner
    runner.stop()


def local_target(labgrid, resource_cls, **params):
    target = labgrid[0].Target("bench")
    resource_cls(target, "device", **params)
    from zflash.integrations.labgrid import ZflashDriver
    driver = ZflashDriver(target, "zflash", package=str(GOOD), trust=[str(SIGNING_PUB)])
    target.activate(driver)
    return target, driver


# ------------------------------------------------------------------ resources -> URLs
def test_each_resource_kind_becomes_a_zflash_url(labgrid) -> None:
    from labgrid.resource import NetworkSerialPort, RawSerialPort
    from labgrid.resource.fastboot import AndroidNetFastboot
    _, module = labgrid
    target = labgrid[0].Target("urls")
    assert module.device_url(NetworkSerialPort(target, "a", host="lab1", port=3001)) == \
        "rfc2217://lab1:3001?ign_set_control"
    assert module.device_url(NetworkSerialPort(target, "b", host="lab1", port=3002,
                                               protocol="raw")) == "socket://lab1:3002"
    assert module.device_url(RawSerialPort(target, "c", port="/dev/ttyUSB3")) == \
        "serial:///dev/ttyUSB3"
    assert module.device_url(AndroidNetFastboot(target, "d", address="10.0.0.7", port=5554,
                                                protocol="tcp")) == \
        "fastboot+tcp://10.0.0.7:5554"
    with pytest.raises(ZflashError) as udp:
        module.device_url(AndroidNetFastboot(target, "e", address="10.0.0.7"))  # udp default
    assert udp.value.code == Code.USAGE and "tcp" in udp.value.detail
    with pytest.raises(ZflashError) as telnet:
        module.device_url(NetworkSerialPort(target, "f", host="x", port=1, protocol="telnet"))
    assert telnet.value.code == Code.USAGE


def test_a_remote_run_returns_its_summary_or_its_coded_error(labgrid) -> None:
    _, module = labgrid
    done = {"event": "done", "booted_slot": "b", "sent_bytes": 10}
    out = "\n".join([json.dumps({"event": "device"}), "not json", json.dumps(done)])
    assert module.remote_summary(0, out, "") == done
    with pytest.raises(ZflashError) as refused:
        module.remote_summary(40, "", "error 9040: Baseband mismatch\n  fix: ...")
    assert refused.value.code == Code.COMPATIBILITY and "exporter" in refused.value.detail
    with pytest.raises(ZflashError) as odd:
        module.remote_summary(255, "", "")
    assert odd.value.code == Code.INTERNAL


# ------------------------------------------------------------------ local resources
def test_flashes_through_a_local_serial_port_and_fastboot_over_tcp(labgrid, device) -> None:
    from labgrid.resource import RawSerialPort
    from labgrid.resource.fastboot import AndroidNetFastboot
    pty = device.start_pty().removeprefix("serial://")
    target, driver = local_target(labgrid, RawSerialPort, port=pty, speed=115200)
    summary = driver.flash()
    assert summary["protocol"] == "zdl" and summary["booted_slot"] == "b"
    target.deactivate_all_drivers()
    port = int(device.start_fastboot_tcp(0).rsplit(":", 1)[1])
    target, driver = local_target(labgrid, AndroidNetFastboot, address="127.0.0.1", port=port,
                                  protocol="tcp")
    assert driver.url == f"fastboot+tcp://127.0.0.1:{port}"
    assert driver.flash()["protocol"] == "fastboot"
    with pytest.raises(ZflashError) as refused:
        driver.flash(str(OTHER_BASEBAND))
    assert refused.value.code == Code.COMPATIBILITY


def test_the_driver_must_be_active_and_have_a_package(labgrid, device) -> None:
    from labgrid.resource import RawSerialPort
    from zflash.integrations.labgrid import ZflashDriver
    target = labgrid[0].Target("t")
    RawSerialPort(target, "device", port="/dev/null")
    driver = ZflashDriver(target, "zflash", trust=[str(SIGNING_PUB)])
    with pytest.raises(Exception, match="not been activated"):
        driver.flash()
    target.activate(driver)
    with pytest.raises(ZflashError) as missing:
        driver.flash()
    assert missing.value.code == Code.USAGE


# ------------------------------------------------------------------ coordinator + exporter
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    assert port not in (20408, 20409)
    return port


def wait_for(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


CLIENT = """
import json, sys
from labgrid import Environment
env = Environment(sys.argv[1])
driver = env.get_target("main").get_driver("ZflashDriver")
print(json.dumps({"url": driver.url, "summary": driver.flash()}))
env.cleanup()
"""


def test_flashes_through_a_real_coordinator_exporter_and_ser2net(labgrid, device,
                                                                 tmp_path) -> None:
    require_tool("ser2net", "Debian: ser2net")
    for tool in ("labgrid-coordinator", "labgrid-exporter", "labgrid-client"):
        if not (BIN / tool).exists():
            require_tool(tool, EXTRA)
    pty = device.start_pty().removeprefix("serial://")  # the exporter wants a /dev path
    port = free_port()
    env = {**os.environ, "LG_COORDINATOR": f"127.0.0.1:{port}",
           "ZFLASH_TRUST_DIR": "/nonexistent"}
    (tmp_path / "exporter.yaml").write_text(
        f"zflash-line:\n  RawSerialPort:\n    port: {pty}\n    speed: 115200\n")
    (tmp_path / "env.yaml").write_text(
        "targets:\n  main:\n    resources:\n      RemotePlace:\n        name: zflash-bench\n"
        f"    drivers:\n      ZflashDriver:\n        package: {GOOD}\n"
        f"        trust: [{SIGNING_PUB}]\n"
        "imports:\n  - zflash.integrations.labgrid\n")
    (tmp_path / "client.py").write_text(CLIENT)
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("coordinator", "exporter")}
    procs = []
    try:
        procs.append(subprocess.Popen([BIN / "labgrid-coordinator", "-l", f"127.0.0.1:{port}"],
                                      cwd=tmp_path, stdout=logs["coordinator"],
                                      stderr=subprocess.STDOUT, env=env))
        wait_for(lambda: _listening(port), 30, "the coordinator")
        procs.append(subprocess.Popen([BIN / "labgrid-exporter", "-c", f"127.0.0.1:{port}",
                                       "-n", "zexp", "--hostname", "127.0.0.1",
                                       "exporter.yaml"], cwd=tmp_path, env=env,
                                      stdout=logs["exporter"], stderr=subprocess.STDOUT))

        def client(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([BIN / "labgrid-client", *args], capture_output=True,
                                  text=True, env=env, timeout=60, cwd=tmp_path)

        wait_for(lambda: "zexp/zflash-line/NetworkSerialPort" in client("resources").stdout,
                 30, "the exporter's resource")
        for args in (("create",), ("add-match", "zexp/zflash-line/*"), ("acquire",)):
            result = client("-p", "zflash-bench", *args)
            assert result.returncode == 0, result.stderr
        flashed = subprocess.run([sys.executable, "client.py", "env.yaml"], capture_output=True,
                                 text=True, env=env, timeout=180, cwd=tmp_path)
        assert flashed.returncode == 0, flashed.stderr[-3000:]
        answer = json.loads(flashed.stdout.strip().splitlines()[-1])
        assert answer["url"].startswith("rfc2217://127.0.0.1:")
        assert answer["summary"]["booted_slot"] == "b"
        assert answer["summary"]["sent_bytes"] > 0
        assert client("-p", "zflash-bench", "release").returncode == 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for handle in logs.values():
            handle.close()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
