"""USB: the id table, udev rules, the emulated pyusb backend, the USB transport, and the CLI.

The real pyusb core runs against `EmulatedUsbBackend`; no libusb or USB bus is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import usb.core
import usb.util

from zflash.usb import doctor
from zflash.usb.devices import list_devices, wait_for_new
from zflash.usb.doctor import check_usb_devices, exit_status
from zflash.emulator.usb_backend import (
    EmulatedUsbBackend,
    EmulatedUsbDevice,
    echo_server,
    sink_server,
)
from zflash.errors import Code, ZflashError
from zflash.transport import open_transport
from zflash.transport.usb import MAX_TRANSFER, UsbTransport
from zflash.usb.udev import check_rules, install_rules, parse_rule_line, render_rules
from zflash.usb.ids import (
    FASTBOOT_INTERFACE,
    ZDL_INTERFACE,
    IdTable,
    TtyId,
    UsbId,
    load_id_table,
    parse_id,
)

REPO = Path(__file__).resolve().parent.parent
RULES_FILE = REPO / "udev-rules" / "60-zflash.rules"
SERIALS = ("ZA0001", "ZB0002", "ZC0003")
PORTS = ("1-1", "1-2.3", "2-4")
TABLE = IdTable()  # built-in ids only: tests never read the user's config file


@pytest.fixture
def bus() -> Iterator[EmulatedUsbBackend]:
    """Three echoing devices: two ZDL (high and super speed) and one fastboot."""
    backend = EmulatedUsbBackend([
        EmulatedUsbDevice(SERIALS[0], PORTS[0], server=echo_server),
        EmulatedUsbDevice(SERIALS[1], PORTS[1], speed="super", server=echo_server),
        EmulatedUsbDevice(SERIALS[2], PORTS[2], protocol="fastboot", server=echo_server),
    ])
    yield backend
    backend.shutdown()
    for device in backend.devices:
        assert not device.server_errors, device.server_errors


def open_usb(bus: EmulatedUsbBackend, url: str, **kw: object) -> UsbTransport:
    return UsbTransport.open(url, timeout=0, backend=bus, ids=TABLE, **kw)  # type: ignore[arg-type]


def code_of(excinfo: pytest.ExceptionInfo[ZflashError]) -> int:
    return excinfo.value.code


# ------------------------------------------------------------------------ emulator + pyusb core
def test_emulated_device_echo_through_real_pyusb_core() -> None:
    backend = EmulatedUsbBackend([EmulatedUsbDevice("ECHO1", "3-1", server=echo_server)])
    try:
        dev = usb.core.find(backend=backend, idVendor=0x1209, idProduct=0x0001)
        assert dev is not None and dev.serial_number == "ECHO1" and dev.port_numbers == (1,)
        dev.set_configuration()
        intf = dev.get_active_configuration()[(0, 0)]
        assert (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol) == (
            ZDL_INTERFACE.cls, ZDL_INTERFACE.subclass, ZDL_INTERFACE.protocol)
        assert dev.write(0x01, b"ping", 1000) == 4
        assert bytes(dev.read(0x81, 512, 1000)) == b"ping"
        with pytest.raises(usb.core.USBTimeoutError):
            dev.read(0x81, 512, 50)
        usb.util.dispose_resources(dev)
    finally:
        backend.shutdown()


def test_emulator_holds_a_transfer_without_zlp_until_its_end() -> None:
    """A 512-byte write with no ZLP is not a finished transfer: the device waits for more."""
    device = EmulatedUsbDevice("RAW1", "3-2")
    backend = EmulatedUsbBackend([device])
    try:
        dev = usb.core.find(backend=backend)
        dev.write(0x01, bytes(512), 1000)
        start = time.monotonic()
        assert len(device.link.read(4096, 0.2)) == 512
        assert time.monotonic() - start >= 0.19  # only the timeout ended it
        dev.write(0x01, bytes(512), 1000)
        dev.write(0x01, b"", 1000)  # with the ZLP it ends at once
        start = time.monotonic()
        assert len(device.link.read(4096, 1.0)) == 512
        assert time.monotonic() - start < 0.5  # well before the 1 s timeout
        usb.util.dispose_resources(dev)
    finally:
        backend.shutdown()


# ------------------------------------------------------------------------ finding and choosing
def test_three_devices_listed_with_protocol_speed_and_port(bus: EmulatedUsbBackend) -> None:
    listing = list_devices(TABLE, bus)
    got = {(d.serial, d.port_path, d.protocol, d.speed.split()[0]) for d in listing.usb}
    assert got == {("ZA0001", "1-1", "zdl", "high"), ("ZB0002", "1-2.3", "zdl", "super"),
                   ("ZC0003", "2-4", "fastboot", "high")}


@pytest.mark.parametrize("index", range(3))
def test_select_by_serial_and_by_port_path(bus: EmulatedUsbBackend, index: int) -> None:
    for url in (f"usb://1209:0001?serial={SERIALS[index]}", f"usb://{PORTS[index]}",
                f"usb://?serial={SERIALS[index]}"):
        with open_usb(bus, url) as link:
            assert link.info.serial == SERIALS[index] and link.info.port_path == PORTS[index]
            link.write(url.encode())
            assert link.read(4096, 2.0) == url.encode()


@pytest.mark.parametrize("url", ["usb://", "usb://1209:0001"])
def test_no_choice_among_three_is_several_devices(bus: EmulatedUsbBackend, url: str) -> None:
    with pytest.raises(ZflashError) as excinfo:
        open_usb(bus, url)
    assert code_of(excinfo) == Code.SEVERAL_DEVICES
    for serial, port in zip(SERIALS, PORTS):
        assert serial in excinfo.value.detail and port in excinfo.value.detail


def test_unknown_serial_is_device_not_found(bus: EmulatedUsbBackend) -> None:
    with pytest.raises(ZflashError) as excinfo:
        open_usb(bus, "usb://?serial=NOPE")
    assert code_of(excinfo) == Code.DEVICE_NOT_FOUND
    assert "ZA0001" in excinfo.value.detail  # says what is there instead


def test_interface_claimed_by_another_program_is_refused(bus: EmulatedUsbBackend) -> None:
    with open_usb(bus, "usb://1-1"), pytest.raises(ZflashError) as excinfo:
        open_usb(bus, "usb://1-1")
    assert code_of(excinfo) == Code.PORT_BUSY and "claimed" in excinfo.value.detail


def test_open_transport_routes_usb_urls_here(bus: EmulatedUsbBackend,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What the flasher calls; the backend comes from the ZFLASH_USB_BACKEND hook."""
    hook = types.ModuleType("zflash_test_usb_bus")
    hook.bus = lambda: bus  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, hook.__name__, hook)
    monkeypatch.setenv("ZFLASH_USB_BACKEND", f"{hook.__name__}:bus")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(REPO / "tests" / "no-such-config-dir"))
    with open_transport(f"usb://{PORTS[2]}", timeout=0) as link:
        assert isinstance(link, UsbTransport) and link.protocol == "fastboot"
        link.write(b"getvar:product")
        assert link.read(256, 2.0) == b"getvar:product"


def test_three_devices_flashed_at_once(bus: EmulatedUsbBackend) -> None:
    """One transport per device, each in its own thread: no shared state between them."""
    results: dict[str, bool] = {}

    def worker(serial: str) -> None:
        payload = serial.encode() * 100_000
        with open_usb(bus, f"usb://?serial={serial}") as link:
            for _ in range(4):
                link.write(payload)
                got = b""
                while len(got) < len(payload):
                    got += link.read(1 << 20, 5.0)
                results[serial] = got == payload

    threads = [threading.Thread(target=worker, args=(s,)) for s in SERIALS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == dict.fromkeys(SERIALS, True)


def test_wait_for_new_sees_a_device_plugged_in_later(bus: EmulatedUsbBackend) -> None:
    late = EmulatedUsbDevice("LATE01", "3-3", server=echo_server, plugged=False)
    bus.add(late)
    threading.Timer(0.3, late.plug).start()
    new = wait_for_new(TABLE, 10, bus)
    assert [d.serial for d in new.usb] == ["LATE01"]


# ------------------------------------------------------------------------ data path
def test_zlp_rule_and_large_transfers(bus: EmulatedUsbBackend) -> None:
    device = bus.devices[0]
    with open_usb(bus, "usb://1-1") as link:
        assert link.max_packet == 512 and link.is_stream is False
        link.write(bytes(512))
        assert device.stats.out_zlps == 1
        assert link.read(1 << 20, 2.0) == bytes(512)  # the device's ZLP ended it at once
        link.write(bytes(513))
        assert device.stats.out_zlps == 1
        assert len(link.read(1 << 20, 2.0)) == 513
        payload = os.urandom(3 * MAX_TRANSFER)  # split into 1 MiB transfers, then a ZLP
        before = device.stats.out_transfers
        link.write(payload)
        assert device.stats.out_transfers - before == 4 and device.stats.out_zlps == 2
        got = b""
        while len(got) < len(payload):
            got += link.read(1 << 20, 2.0)
        assert got == payload


def test_read_returns_at_most_max_bytes_and_keeps_the_rest(bus: EmulatedUsbBackend) -> None:
    with open_usb(bus, "usb://1-1") as link:
        link.write(b"abcdefgh")
        assert link.read(3, 2.0) == b"abc"
        assert link.read(100, 0) == b"defgh"
        with pytest.raises(ZflashError) as excinfo:
            link.read(100, 0.05)
        assert code_of(excinfo) == Code.TIMEOUT


def test_full_speed_device_uses_64_byte_packets() -> None:
    backend = EmulatedUsbBackend([EmulatedUsbDevice("FS1", "4-1", speed="full",
                                                    server=echo_server)])
    try:
        with UsbTransport.open("usb://", timeout=0, backend=backend, ids=TABLE) as link:
            assert link.max_packet == 64
            link.write(bytes(128))
            assert backend.devices[0].stats.out_zlps == 1
            assert link.read(4096, 2.0) == bytes(128)
    finally:
        backend.shutdown()


# ------------------------------------------------------------------------ faults
def test_unplug_mid_transfer_is_link_lost_and_replug_works(bus: EmulatedUsbBackend) -> None:
    device = bus.devices[1]
    link = open_usb(bus, f"usb://?serial={SERIALS[1]}")
    device.unplug_after("out", 100_000)
    with pytest.raises(ZflashError) as excinfo:
        link.write(bytes(256 << 10))
    assert code_of(excinfo) == Code.LINK_LOST
    with pytest.raises(ZflashError) as excinfo:
        link.read(4096, 1.0)
    assert code_of(excinfo) == Code.LINK_LOST
    link.close()
    link.close()  # twice is fine
    device.plug()  # the second attempt finds the device again, at a new address
    with open_usb(bus, f"usb://?serial={SERIALS[1]}") as again:
        again.write(b"back")
        assert again.read(64, 2.0) == b"back"


def test_unplug_while_a_read_waits_is_link_lost(bus: EmulatedUsbBackend) -> None:
    device = bus.devices[0]
    with open_usb(bus, "usb://1-1") as link:
        threading.Timer(0.1, device.unplug).start()
        start = time.monotonic()
        with pytest.raises(ZflashError) as excinfo:
            link.read(4096, 5.0)
        assert code_of(excinfo) == Code.LINK_LOST and time.monotonic() - start < 2


@pytest.mark.parametrize("direction", ["out", "in"])
def test_endpoint_stall_is_cleared_and_retried(bus: EmulatedUsbBackend, direction: str) -> None:
    device = bus.devices[0]
    notes: list[str] = []
    with open_usb(bus, "usb://1-1", on_retry=notes.append) as link:
        device.stall(direction)
        link.write(b"after a stall")
        assert link.read(4096, 2.0) == b"after a stall"
    assert device.stats.stalls_hit == 1 and device.stats.clear_halts == 1
    assert any("stalled" in note for note in notes)


def test_write_timeout_retried_then_succeeds(bus: EmulatedUsbBackend) -> None:
    device = bus.devices[0]
    notes: list[str] = []
    with open_usb(bus, "usb://1-1", retries=2, on_retry=notes.append) as link:
        device.inject_timeouts("out", 2)
        link.write(b"third time lucky")
        assert link.read(4096, 2.0) == b"third time lucky"
    assert device.stats.timeouts_injected == 2 and len(notes) == 2


def test_write_timeout_retries_are_bounded(bus: EmulatedUsbBackend) -> None:
    device = bus.devices[0]
    with open_usb(bus, "usb://1-1", retries=2) as link:
        device.inject_timeouts("out", 100)
        with pytest.raises(ZflashError) as excinfo:
            link.write(b"never")
    assert code_of(excinfo) == Code.TIMEOUT and "3 attempts" in excinfo.value.detail
    assert device.stats.timeouts_injected == 3


def test_device_that_stops_reading_times_out_the_write() -> None:
    """No server reads: the device NAKs, the pipe fills, and the write times out."""
    backend = EmulatedUsbBackend([EmulatedUsbDevice("DEAF", "5-1")])
    try:
        with UsbTransport.open("usb://", timeout=0, backend=backend, ids=TABLE,
                               write_timeout=0.3) as link:
            start = time.monotonic()
            with pytest.raises(ZflashError) as excinfo:
                for _ in range(40):
                    link.write(bytes(1 << 20))
            assert code_of(excinfo) == Code.TIMEOUT
            assert time.monotonic() - start < 3
    finally:
        backend.shutdown()


def test_read_timeouts_injected_stay_within_the_callers_timeout(
        bus: EmulatedUsbBackend) -> None:
    device = bus.devices[0]
    with open_usb(bus, "usb://1-1") as link:
        link.write(b"late")
        device.inject_timeouts("in", 3)
        assert link.read(64, 2.0) == b"late"
    assert device.stats.timeouts_injected == 3


@pytest.mark.parametrize("url", [f"usb://?serial={SERIALS[2]}", f"usb://{PORTS[2]}"])
def test_permission_denied_names_the_udev_rules(bus: EmulatedUsbBackend, url: str) -> None:
    bus.devices[2].deny_access()
    with pytest.raises(ZflashError) as excinfo:
        open_usb(bus, url)
    assert code_of(excinfo) == Code.PERMISSION_DENIED
    assert "zflash udev-rules --install" in excinfo.value.detail
    assert excinfo.value.exit_status == 22


def test_doctor_flags_a_connected_device_it_cannot_open(bus: EmulatedUsbBackend) -> None:
    bus.devices[0].deny_access()
    checks = check_usb_devices(TABLE, bus)
    failed = [c for c in checks if c.status == "fail"]
    assert len(failed) == 1 and "1-1" in failed[0].name and "udev-rules" in (failed[0].fix or "")
    assert exit_status(failed) == Code.PERMISSION_DENIED - 9000
    assert sum(c.status == "ok" for c in checks) == 2


# ------------------------------------------------------------------------ throughput sanity
def test_sink_throughput_sanity() -> None:
    """64 MiB in 256 KiB writes to a sink: checks bookkeeping (the real numbers are bench)."""
    backend = EmulatedUsbBackend([EmulatedUsbDevice("SINK", "6-1", server=sink_server)])
    try:
        with UsbTransport.open("usb://", timeout=0, backend=backend, ids=TABLE) as link:
            chunk = bytes(256 << 10)
            for _ in range(256):
                link.write(chunk)
            link.write(b"?")
            assert int.from_bytes(link.read(64, 5.0), "little") == 64 << 20
    finally:
        backend.shutdown()


# ------------------------------------------------------------------------ id table
def test_parse_ids_and_kinds() -> None:
    assert parse_id("1209:0001") == UsbId(0x1209, 0x0001, None, "added by --usb-id")
    assert parse_id("18d1:4ee0:fastboot Pixel").protocol == "fastboot"
    assert isinstance(parse_id("10c4:ea61:serial"), TtyId)
    for bad in ("1209", "12345:1", "zz:01", "1209:0001:adb"):
        with pytest.raises(ZflashError) as excinfo:
            parse_id(bad)
        assert code_of(excinfo) == Code.USAGE


def test_config_file_and_command_line_extend_the_table(tmp_path: Path) -> None:
    config = tmp_path / "usb-ids.txt"
    config.write_text("# lab devices\n abcd:1234:zdl  Lab board # comment\n\n"
                      "1a86:7522:serial\n1209:0001\n")
    table = load_id_table(["dead:beef:fastboot"], config=config)
    assert table.usb_id(0xABCD, 0x1234).label == "Lab board"
    assert table.usb_id(0xDEAD, 0xBEEF).protocol == "fastboot"
    assert table.tty_id(0x1A86, 0x7522) is not None
    assert sum(u.vid == 0x1209 for u in table.usb) == 1  # duplicates dropped
    rules = render_rules(table)
    assert 'ATTR{idVendor}=="abcd", ATTR{idProduct}=="1234"' in rules
    assert 'ATTRS{idVendor}=="1a86", ATTRS{idProduct}=="7522"' in rules
    config.write_text("nonsense\n")
    with pytest.raises(ZflashError) as excinfo:
        load_id_table(config=config)
    assert code_of(excinfo) == Code.USAGE and "usb-ids.txt:1" in excinfo.value.detail


def test_device_of_an_unlisted_vendor_is_found_by_interface_class() -> None:
    backend = EmulatedUsbBackend([EmulatedUsbDevice("V1", "7-1", vid=0xABCD, pid=0x0001)])
    try:
        assert [d.serial for d in list_devices(TABLE, backend).usb] == ["V1"]  # by class
    finally:
        backend.shutdown()


# ------------------------------------------------------------------------ udev rules
def test_rules_file_is_the_generator_output() -> None:
    assert RULES_FILE.read_text() == render_rules(TABLE), \
        "udev-rules/60-zflash.rules is stale: regenerate it with `zflash udev-rules`"


def test_every_rules_line_is_valid_udev_syntax() -> None:
    text = RULES_FILE.read_text()
    assert check_rules(text) == []
    rules = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for line in rules:
        keys = parse_rule_line(line)
        assert keys[0].key == "SUBSYSTEM" and keys[0].op == "=="
        assert any(k.key == "TAG" and k.op == "+=" and k.value == "uaccess" for k in keys)


def test_rules_agree_with_the_id_table() -> None:
    text = RULES_FILE.read_text()
    for entry in TABLE.usb:
        assert (f'SUBSYSTEM=="usb", ENV{{DEVTYPE}}=="usb_device", ATTR{{idVendor}}=='
                f'"{entry.vid:04x}", ATTR{{idProduct}}=="{entry.pid:04x}"') in text
    for iface in (ZDL_INTERFACE, FASTBOOT_INTERFACE):
        assert f'ENV{{ID_USB_INTERFACES}}=="*:{iface.hex}:*"' in text
    for tty in TABLE.tty:
        assert (f'SUBSYSTEM=="tty", ATTRS{{idVendor}}=="{tty.vid:04x}", '
                f'ATTRS{{idProduct}}=="{tty.pid:04x}", TAG+="uaccess"') in text
    assert 'ATTR{idVendor}=="1209", ATTR{idProduct}=="0001"' in text
    assert "*:ff4203:*" in text


@pytest.mark.parametrize("line, why", [
    ('SUBSYSTEM=="usb", FOO=="1", TAG+="uaccess"', "unknown key"),
    ('SUBSYSTEM=="usb", TAG+="uaccess",', "trailing"),
    ('SUBSYSTEM=="usb" TAG+="uaccess"', "expected ','"),
    ('SUBSYSTEM=="usb", MODE=="0660"', "cannot be matched"),
    ('SUBSYSTEMS="usb", TAG+="uaccess"', "cannot be assigned"),
    ('SUBSYSTEM=="usb", ATTR=="1", TAG+="uaccess"', "needs"),
    ('SUBSYSTEM=="usb", TAG+=uaccess', "cannot parse"),
    ('SUBSYSTEM=="usb"', "assigns nothing"),
])
def test_rule_checker_rejects_bad_lines(line: str, why: str) -> None:
    problems = check_rules(line + "\n")
    assert len(problems) == 1 and why in problems[0]


def test_install_rules_writes_the_file(tmp_path: Path) -> None:
    target = install_rules(render_rules(TABLE), tmp_path / "rules.d" / "60-zflash.rules")
    assert target.read_text() == RULES_FILE.read_text()
    assert (target.stat().st_mode & 0o777) == 0o644


def test_doctor_checks_the_installed_rules(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "UDEV_DIR", tmp_path)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(doctor, "installed_rules", list)
    missing = doctor.check_udev_rules(TABLE)
    assert missing.status == "warn" and "zflash udev-rules --install" in (missing.fix or "")
    rules = install_rules(render_rules(TABLE), tmp_path / "60-zflash.rules")
    monkeypatch.setattr(doctor, "installed_rules", lambda: [rules])
    assert doctor.check_udev_rules(TABLE).status == "ok"
    assert doctor.check_udev_rules(TABLE.extended([parse_id("abcd:0001")], "x")).status == "warn"
    rules.write_text("SUBSYSTEM==\"usb\" TAG+=\"uaccess\"\n")
    assert "line 1" in doctor.check_udev_rules(TABLE).detail


# ------------------------------------------------------------------------ CLI (real process)
def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ZFLASH_")}
    environ.update(env)
    environ.setdefault("XDG_CONFIG_HOME", str(REPO / "tests" / "no-such-config-dir"))
    result = subprocess.run([sys.executable, "-m", "zflash", *args], check=False,
                            capture_output=True,
                            text=True, env=environ, timeout=60)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    return result


@pytest.mark.parametrize("command", ["devices", "doctor"])
def test_cli_on_this_machine_exits_0_in_clear_text(command: str) -> None:
    text = run_cli(command)
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip()
    as_json = run_cli(command, "--json")
    assert as_json.returncode == 0, as_json.stderr
    parsed = json.loads(as_json.stdout)
    if command == "devices":
        assert isinstance(parsed["devices"], list)
    else:
        assert parsed["ok"] is True and {c["name"] for c in parsed["checks"]} >= {"libusb"}


def test_cli_without_libusb_still_exits_0_for_devices() -> None:
    result = run_cli("devices", ZFLASH_LIBUSB="/nonexistent/libusb-1.0.so")
    assert result.returncode == 0
    assert "no device in download mode found" in result.stdout
    assert "libusb" in result.stderr
    doctor = run_cli("doctor", "--json", ZFLASH_LIBUSB="/nonexistent/libusb-1.0.so")
    assert doctor.returncode == Code.LIBUSB_MISSING - 9000
    assert json.loads(doctor.stdout)["ok"] is False


def test_cli_lists_emulated_devices_through_the_backend_hook() -> None:
    hook = "zflash.emulator.usb_backend:demo_backend"
    result = run_cli("devices", "--json", ZFLASH_USB_BACKEND=hook)
    assert result.returncode == 0, result.stderr
    devices = json.loads(result.stdout)["devices"]
    assert {(d["serial"], d["protocol"]) for d in devices if d["transport"] == "usb"} == {
        ("ZEMU0001", "zdl"), ("ZEMU0002", "zdl"), ("ZEMU0003", "fastboot")}
    table = run_cli("devices", ZFLASH_USB_BACKEND=hook)
    assert "usb://1209:0001?serial=ZEMU0002" in table.stdout and "super" in table.stdout


def test_cli_wait_gives_up_with_device_not_found() -> None:
    result = run_cli("devices", "--wait", "0.2")
    assert result.returncode == Code.DEVICE_NOT_FOUND - 9000
    assert "no new device" in result.stderr


def test_cli_udev_rules_print_install_and_bad_usb_id(tmp_path: Path) -> None:
    printed = run_cli("udev-rules")
    assert printed.returncode == 0 and printed.stdout == RULES_FILE.read_text()
    target = tmp_path / "60-zflash.rules"
    installed = run_cli("udev-rules", "--install", "--path", str(target))
    assert installed.returncode == 0 and target.read_text() == RULES_FILE.read_text()
    assert "udevadm control --reload-rules" in installed.stdout
    bad = run_cli("devices", "--usb-id", "not-an-id")
    assert bad.returncode == Code.USAGE - 9000 and "VID:PID" in bad.stderr
