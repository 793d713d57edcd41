"""ZDL over USB end to end: the real pyusb core, the emulated bus, the real device engine."""

from __future__ import annotations

import hashlib

import pytest

from conftest import SAMPLES, trust_for
from emulator_helpers import GOOD, demo_profile, image_sha256, partition_prefix_sha256
from zflash.emulator.device import EmulatedDevice
from zflash.emulator.storage import Storage
from zflash.emulator.usb_backend import EmulatedUsbBackend
from zflash.emulator.usb_device import EmulatedUsbDevice
from zflash.emulator.zdl_server import ZdlServer
from zflash.errors import Code, ZflashError
from zflash.flash import FlashOptions, flash
from zflash.targets.base import LinkOptions
from zflash.package import keys as keymod

_BACKEND: EmulatedUsbBackend | None = None


def backend() -> EmulatedUsbBackend:
    """The ZFLASH_USB_BACKEND hook: the bus this test module set up."""
    assert _BACKEND is not None
    return _BACKEND


@pytest.fixture
def usb_device(tmp_path, monkeypatch):
    global _BACKEND
    storage = Storage.create(tmp_path / "dev", demo_profile())
    device = EmulatedDevice(storage)
    server = ZdlServer(device)
    usb = EmulatedUsbDevice("ZXUSB01", "1-2.3", protocol="zdl", server=server.serve)
    _BACKEND = EmulatedUsbBackend([usb])
    monkeypatch.setenv("ZFLASH_USB_BACKEND", f"{__name__}:backend")
    yield usb, device
    usb.unplug()
    _BACKEND.shutdown()
    _BACKEND = None


def trust() -> keymod.TrustStore:
    store = keymod.TrustStore()
    store.add(keymod.load_public_key(SAMPLES / "keys" / "zx-demo-TEST-ONLY-signing.pub.pem"))
    return store


def test_good_sample_flashed_over_emulated_usb(usb_device):
    usb, device = usb_device
    events: list[dict] = []
    summary = flash("usb://1209:0001?serial=ZXUSB01", GOOD, trust(), FlashOptions(),
                    events.append)
    assert summary.booted_slot == "b" and summary.sent_bytes > 0
    root = device.storage.root
    for name in ("boot", "system", "vendor"):
        size = (SAMPLES / "images" / "1.1.0" / f"{name}.img").stat().st_size
        assert partition_prefix_sha256(root, f"{name}_b.img", size) == image_sha256("1.1.0", name)
    # The bus really carried the package: every sent byte crossed the OUT endpoint.
    assert usb.stats.out_bytes >= summary.sent_bytes and usb.stats.out_transfers > 10
    assert not usb.server_errors


def test_selected_by_port_path(usb_device):
    usb, device = usb_device
    summary = flash("usb://1-2.3", GOOD, trust(), FlashOptions(reboot=False), lambda e: None)
    assert summary.slot == "b"


def test_unplug_mid_transfer_is_link_lost_then_resume_completes(usb_device):
    usb, device = usb_device
    usb.unplug_after("out", 150_000)
    with pytest.raises(ZflashError) as err:
        flash("usb://1209:0001?serial=ZXUSB01", GOOD, trust(), FlashOptions(), lambda e: None)
    assert err.value.code == Code.LINK_LOST
    assert device.facts().current_slot == "a"
    usb.plug()
    summary = flash("usb://1209:0001?serial=ZXUSB01", GOOD, trust(), FlashOptions(),
                    lambda e: None)
    assert summary.resumed_blocks > 0 and summary.booted_slot == "b"
    with open(device.storage.root / "partitions" / "system_b.img", "rb") as handle:
        size = (SAMPLES / "images" / "1.1.0" / "system.img").stat().st_size
        assert hashlib.sha256(handle.read(size)).hexdigest() == image_sha256("1.1.0", "system")


def test_unknown_serial_is_device_not_found(usb_device):
    with pytest.raises(ZflashError) as err:
        flash("usb://1209:0001?serial=NOPE", GOOD, trust_for(), FlashOptions(link=LinkOptions(timeout=0.5)),
              lambda e: None)
    assert err.value.code == Code.DEVICE_NOT_FOUND
