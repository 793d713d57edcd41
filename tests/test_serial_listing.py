"""`zflash devices` lists serial ports: USB-serial bridges with their USB serial number, and
ports that are not USB (the emulator's ptys) by the path they were found under."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from zflash.cli import main
from zflash.emulator.link import PtyLink
from zflash.usb import devices
from zflash.usb.ids import load_id_table

TABLE = load_id_table(())


def fake_port(device: str, vid: int | None = None, pid: int | None = None,
              serial: str | None = None, description: str = "n/a",
              hwid: str = "n/a") -> SimpleNamespace:
    return SimpleNamespace(device=device, vid=vid, pid=pid, serial_number=serial,
                           description=description, hwid=hwid)


@pytest.fixture
def ptys(tmp_path: Path):
    """Two emulator-style ptys under stable symlinks (not USB)."""
    links = [PtyLink(str(tmp_path / f"dev0{i}.tty")) for i in (1, 2)]
    yield links
    for link in links:
        link.close()


@pytest.fixture
def no_system_ports(monkeypatch):
    monkeypatch.setattr(devices.list_ports, "comports", lambda: [])


def test_ptys_matching_a_glob_are_listed_by_their_path(tmp_path, ptys, no_system_ports):
    ports = devices.list_serial_ports(TABLE, [str(tmp_path / "*.tty"), str(tmp_path / "*")])
    assert [p.device for p in ports] == [str(tmp_path / "dev01.tty"), str(tmp_path / "dev02.tty")]
    first = ports[0]
    assert not first.usb and first.vid is None and first.serial is None
    assert first.target == ptys[0].slave_path and first.url == f"serial://{tmp_path}/dev01.tty"
    assert first.to_dict()["usb"] is False and "not USB" in first.summary()


def test_a_glob_matching_no_character_device_lists_nothing(tmp_path, no_system_ports):
    (tmp_path / "plain.tty").write_text("not a port")
    assert devices.list_serial_ports(TABLE, [str(tmp_path / "*.tty")]) == []


def test_a_usb_bridge_carries_its_usb_serial_number_also_under_a_stable_link(
        tmp_path, ptys, monkeypatch):
    bridge = fake_port(ptys[1].slave_path, 0x0403, 0x6001, "FT9XK2", "FT232R USB UART",
                       "USB VID:PID=0403:6001 SER=FT9XK2")
    monkeypatch.setattr(devices.list_ports, "comports",
                        lambda: [bridge, fake_port("/dev/ttyS0")])  # phantom ttyS0: no hwid
    plain = devices.list_serial_ports(TABLE)
    assert [(p.device, p.serial, p.usb) for p in plain] == [(ptys[1].slave_path, "FT9XK2", True)]
    linked = devices.list_serial_ports(TABLE, [str(tmp_path / "dev02.tty")])
    assert len(linked) == 1  # one port, found twice, listed once under the stable name
    port = linked[0]
    assert port.device == str(tmp_path / "dev02.tty") and port.serial == "FT9XK2"
    assert port.known == "FTDI FT232R USB-UART bridge"
    assert port.to_dict()["vid"] == "0403"


def test_a_described_non_usb_port_is_listed_without_a_glob(monkeypatch):
    onboard = fake_port("/dev/ttyAMA0", description="ttyAMA0", hwid="fe201000.serial")
    monkeypatch.setattr(devices.list_ports, "comports", lambda: [onboard])
    [port] = devices.list_serial_ports(TABLE)
    assert port.device == "/dev/ttyAMA0" and not port.usb and port.description == "ttyAMA0"


def test_a_replugged_pty_counts_as_new(tmp_path, ptys, no_system_ports):
    before = devices.list_devices(TABLE, tty_globs=[str(tmp_path / "*.tty")]).keys()
    ptys[0].hangup()  # a fresh pty under the same name
    after = devices.list_devices(TABLE, tty_globs=[str(tmp_path / "*.tty")]).keys()
    assert len(after - before) == 1


def test_cli_devices_shows_ptys_and_a_bridge(tmp_path, ptys, monkeypatch):
    bridge = fake_port("/dev/ttyUSB7", 0x1A86, 0x7523, "CH340-42", "USB Serial",
                       "USB VID:PID=1A86:7523 SER=CH340-42")
    monkeypatch.setattr(devices.list_ports, "comports", lambda: [bridge])
    monkeypatch.setenv("ZFLASH_LIBUSB", "/nonexistent/libusb-1.0.so")
    runner = CliRunner()
    table = runner.invoke(main, ["devices", "--tty", str(tmp_path / "*.tty")])
    assert table.exit_code == 0, table.output
    lines = [line for line in table.output.splitlines() if line.startswith("SERIAL")]
    assert len(lines) == 3
    assert "1a86:7523" in lines[0] and "CH340-42" in lines[0] and "WCH CH340" in lines[0]
    assert "serial:///dev/ttyUSB7" in lines[0]
    assert f"{tmp_path}/dev01.tty" in lines[1] and "not USB" in lines[1]
    listed = runner.invoke(main, ["devices", "--json", "--tty", str(tmp_path / "*.tty")])
    found = {d["device"]: d for d in json.loads(listed.stdout)["devices"]}
    assert found["/dev/ttyUSB7"]["serial"] == "CH340-42" and found["/dev/ttyUSB7"]["usb"]
    assert found[f"{tmp_path}/dev02.tty"]["target"] == os.path.realpath(tmp_path / "dev02.tty")
