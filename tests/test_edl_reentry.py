"""An EDL device met again after a session that left its programmer running (D212).

A real device keeps its Firehose programmer running when a host closes its handle: it sends
no new Sahara HELLO, so the next host used to wait for one and time out (9025) until the
device was replugged (REFERENCE-EDL 2, qdl#184). The host now probes with ``<nop/>`` and,
when a programmer answers, resets the device to EDL so the boot ROM reads the fused ids
again; a boot ROM that answers nothing is reported with its fix, and nothing is written.
"""

from __future__ import annotations

from typing import Any

import pytest

from test_edl_e2e import EDL, GOOD, USB_URL, assert_flashed_and_booted, edl_usb, lun_bytes  # noqa: F401
from test_edl_e2e import edl_pty, trust  # noqa: F401
from zflash.errors import Code, ZflashError, lookup
from zflash.flash import FlashOptions, PreflightRefused, flash
from zflash.protocol.firehose import programmer as programmer_module
from zflash.targets.base import LinkOptions
from zflash.targets.edl.target import EdlTarget
from zflash.transport.open import open_transport
from zflash.transport.usb import UsbTransport

ROLLBACK = EDL / "zx-demo-edl-1.0.0-rollback.zpk"
PROGRAMMER = EDL / "prog_firehose_zx-demo-TEST-ONLY.elf"


def infos(events: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in events
            if e.get("event") == "device_message" and e.get("kind") == "info"]


def test_flash_after_a_refusal_resets_the_running_programmer_and_flashes(edl_usb) -> None:
    device, usb = edl_usb
    with pytest.raises(PreflightRefused) as refused:
        flash(USB_URL, ROLLBACK, trust(), FlashOptions(), lambda e: None)
    assert refused.value.code == Code.ROLLBACK and device.programmer_loads == 1
    events: list[dict[str, Any]] = []
    summary = flash(USB_URL, GOOD, trust(), FlashOptions(), events.append)
    assert summary.slot == "b" and summary.rebooted
    assert any("still running: resetting the device to EDL" in m for m in infos(events))
    assert device.last_power == "reset" and device.programmer_loads == 2  # loaded anew
    facts = next(e for e in events if e["event"] == "device")
    assert facts["msm_hw_id"] == device.profile.hw_id  # the boot ROM's fused id, read again
    assert_flashed_and_booted(device, sessions=2)
    assert not usb.server_errors


def test_a_first_flash_meets_the_boot_rom_and_resets_nothing(edl_usb) -> None:
    device, usb = edl_usb
    events: list[dict[str, Any]] = []
    flash(USB_URL, GOOD, trust(), FlashOptions(), events.append)
    assert not any("still running" in m for m in infos(events))
    assert device.programmer_loads == 1 and device.sessions == 1


def test_a_programmer_that_will_not_reset_leaves_the_ids_unknown_and_refuses(
        edl_usb, monkeypatch) -> None:
    """Fail closed: without the boot ROM the fused HW id is unknown, so the hardware checks
    cannot pass and nothing is written."""
    device, usb = edl_usb
    with pytest.raises(PreflightRefused):
        flash(USB_URL, ROLLBACK, trust(), FlashOptions(), lambda e: None)
    original = programmer_module.Programmer._do_power

    def no_edl(self: Any, cmd: Any) -> None:
        if (cmd.get("value") or "").lower() == "edl":
            raise programmer_module._Nak("power value 'edl' is not supported")
        original(self, cmd)

    monkeypatch.setattr(programmer_module.Programmer, "_do_power", no_edl)
    before = lun_bytes(device)
    with pytest.raises(PreflightRefused) as refused:
        flash(USB_URL, GOOD, trust(), FlashOptions(), lambda e: None)
    assert refused.value.code == Code.UNVERIFIABLE
    assert "a programmer was already running" in str(refused.value)
    assert lun_bytes(device) == before and device.programmer_loads == 1


def test_a_boot_rom_left_mid_sahara_is_reported_with_its_fix(edl_usb) -> None:
    """A host took the HELLO and left: the boot ROM waits for an answer no new host knows
    to give, and takes the probe for a bad packet. The next host says what to do."""
    device, usb = edl_usb
    early = UsbTransport.open(USB_URL, timeout=5)
    assert early.read(1 << 16, 5)[:4] == (1).to_bytes(4, "little")  # HELLO's command id
    early.close()
    before = lun_bytes(device)
    with pytest.raises(ZflashError) as silent:
        flash(USB_URL, GOOD, trust(), FlashOptions(), lambda e: None)
    assert silent.value.code == Code.TIMEOUT and silent.value.cause == "edl_silent"
    assert "Unplug the device" in lookup(silent.value.code, silent.value.cause).fix
    assert lun_bytes(device) == before and device.programmer_loads == 0
    usb.unplug()  # what the fix says: replugged, the boot ROM starts over
    usb.plug()
    flash(USB_URL, GOOD, trust(), FlashOptions(), lambda e: None)
    assert_flashed_and_booted(device, sessions=2)


def test_a_programmer_running_on_the_com_port_is_reset_to_edl(edl_pty) -> None:
    """The COM variant: no HELLO comes (the driver may swallow it), so the host speaks first
    with HELLO_RESP; the running programmer answers those bytes with a NAK, and the host
    resets it to EDL and meets the boot ROM on the port opened again. (The emulated pty
    device starts a new boot per connection, so the first host keeps its port open and the
    second takes it over, as a new process would find the device.)"""
    device, url, _ = edl_pty
    options = LinkOptions(programmer=str(PROGRAMMER))
    transport = open_transport(url, timeout=5)
    first = EdlTarget(url, transport, options)
    first.connect()
    first.identify(None)
    assert device.programmer_loads == 1
    events: list[dict[str, Any]] = []
    second = EdlTarget(url, transport, options, events.append)
    try:
        second.connect()
        assert any("still running: resetting the device to EDL" in m for m in infos(events))
        assert second.ids.hw_id == device.profile.hw_id and second.transport is not transport
        identity = second.identify(None)
        assert device.programmer_loads == 2 and device.sessions == 2
        assert identity.facts.serial == f"{device.profile.serial:08x}"
    finally:
        second.close()
