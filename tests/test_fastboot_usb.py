"""zflash's fastboot client flashes the emulated device over emulated USB (0xFF/0x42/0x03).

The real pyusb core and zflash's USB transport sit between the client and the emulator's
``serve_fastboot_usb`` firmware (one bulk OUT transfer = one packet, each answer one IN
transfer), through the ``ZFLASH_USB_BACKEND`` hook: the same scenarios as the TCP tests
(getvar all, raw, img2simg sparse, split, set_active, reboot), with partitions hash-equal to
the source images afterwards. Images are small and max-download-size is 256 KiB, so the
split path runs in milliseconds.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from conftest import REPO, require_tool
from test_fastboot_emulator import (
    make_device,
    make_image,
    padded_sha256,
    partition_sha256,
)

from zflash.emulator.device import EmulatedDevice
from zflash.emulator.fastboot_server import FastbootOptions, serve_fastboot_usb
from zflash.emulator.usb_backend import EmulatedUsbBackend
from zflash.emulator.usb_device import EmulatedUsbDevice
from zflash.errors import Code, ZflashError
from zflash.targets.fastboot.client import FastbootClient
from zflash.transport.usb import UsbTransport

SERIAL = "ZXFB0001"
URL = f"usb://1209:0001?serial={SERIAL}"
LIMIT = 256 << 10
_BUS: EmulatedUsbBackend | None = None


def bus() -> EmulatedUsbBackend:
    """The ZFLASH_USB_BACKEND hook: the bus the current test set up."""
    assert _BUS is not None
    return _BUS


@pytest.fixture
def usb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[tuple[EmulatedUsbDevice, EmulatedDevice]]:
    global _BUS
    device = make_device(tmp_path / "dev")
    options = FastbootOptions(max_download_size=LIMIT)
    emulated = EmulatedUsbDevice(SERIAL, "1-4", protocol="fastboot",
                                 server=lambda link: serve_fastboot_usb(device, link, options))
    _BUS = EmulatedUsbBackend([emulated])
    monkeypatch.setenv("ZFLASH_USB_BACKEND", f"{__name__}:bus")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(REPO / "tests" / "no-such-config-dir"))
    yield emulated, device
    _BUS.shutdown()
    _BUS = None
    assert not emulated.server_errors


def connect() -> FastbootClient:
    return FastbootClient.connect(URL, timeout=5.0, open_timeout=2.0)


def test_getvar_all_over_usb(usb: tuple[EmulatedUsbDevice, EmulatedDevice]) -> None:
    emulated, _ = usb
    with connect() as client:
        assert isinstance(client.link.transport, UsbTransport)
        assert client.link.transport.protocol == "fastboot"
        before = emulated.stats.in_transfers
        values = client.getvar_all()
        lines = emulated.stats.in_transfers - before
    assert values["product"] == "zx-demo" and values["serialno"] == "ZXEMU0001"
    assert values["max-download-size"] == "0x40000" and values["hw-revision"] == "A01"
    assert values["partition-size:system_b"] == "0x400000" and values["current-slot"] == "a"
    assert values["rollback-index:0"] == "2"
    assert lines == len(values) + 1  # one IN transfer per INFO line, then the OKAY


def test_raw_image_and_refused_download(usb: tuple[EmulatedUsbDevice, EmulatedDevice],
                                        tmp_path: Path) -> None:
    _, device = usb
    image = make_image(tmp_path / "boot.img", 200_000)
    with connect() as client:
        assert client.flash("boot", image, slot="b") == ["boot_b"]
        data = bytes(LIMIT + 4096)
        with pytest.raises(ZflashError) as refused:
            client.download(io.BytesIO(data), len(data))  # over max-download-size
        assert refused.value.code == Code.DEVICE_REFUSED
        assert client.getvar("product") == "zx-demo"  # still in step
    assert partition_sha256(device, "boot", "b") == padded_sha256(image, 1 << 20)


def test_data_phase_split_over_many_transfers(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """With a 2 MiB limit, a 1.5 MiB raw image goes in one download of two bulk transfers."""
    global _BUS
    device = make_device(tmp_path / "dev")
    options = FastbootOptions(max_download_size=2 << 20)
    emulated = EmulatedUsbDevice(SERIAL, "1-4", protocol="fastboot", speed="full",
                                 server=lambda link: serve_fastboot_usb(device, link, options))
    _BUS = EmulatedUsbBackend([emulated])
    monkeypatch.setenv("ZFLASH_USB_BACKEND", f"{__name__}:bus")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(REPO / "tests" / "no-such-config-dir"))
    try:
        image = make_image(tmp_path / "system.img", 1_500_000, seed=8, noise=6)
        with connect() as client:
            before = emulated.stats.out_transfers
            assert client.flash_image("system_b", image) == 1
            transfers = emulated.stats.out_transfers - before
        assert transfers >= 4  # download:, 2 data transfers (+ ZLP), flash:
        assert partition_sha256(device, "system", "b") == padded_sha256(image, 4 << 20)
        assert not emulated.server_errors
    finally:
        _BUS.shutdown()
        _BUS = None


def test_img2simg_sparse_image(usb: tuple[EmulatedUsbDevice, EmulatedDevice],
                               tmp_path: Path) -> None:
    _, device = usb
    img2simg = require_tool("img2simg")
    raw = make_image(tmp_path / "system.img", 600 << 10, seed=3)
    simg = tmp_path / "system.simg"
    subprocess.run([img2simg, str(raw), str(simg)], check=True, capture_output=True)
    with connect() as client:
        assert client.flash("system", simg) == ["system_a"]  # the current slot
    assert partition_sha256(device, "system", "a") == padded_sha256(raw, 4 << 20)


def test_larger_than_max_download_is_split_then_set_active_and_reboot(
        usb: tuple[EmulatedUsbDevice, EmulatedDevice], tmp_path: Path) -> None:
    emulated, device = usb
    system = make_image(tmp_path / "system.img", 1 << 20, seed=2, noise=6)
    boot = make_image(tmp_path / "boot.img", 300_000, seed=4)
    events: list[dict] = []  # type: ignore[type-arg]
    with connect() as client:
        client.on_event = events.append
        assert client.flash("system", system, slot="other") == ["system_b"]
        client.flash("boot", boot, slot="b")
        assert client.set_active("b") == "b"
        client.reboot()
    # The OKAY comes before the boot; the bootloader's loop ends once the device booted.
    emulated.threads[-1].join(5)
    assert not emulated.threads[-1].is_alive()
    pieces = [e for e in events if e["event"] == "piece"]
    assert len(pieces) >= 4 and all(e["bytes"] <= LIMIT for e in pieces)
    assert partition_sha256(device, "system", "b") == padded_sha256(system, 4 << 20)
    assert partition_sha256(device, "boot", "b") == padded_sha256(boot, 1 << 20)
    assert device.meta["current_slot"] == "b"
    assert device.meta["last_boot"]["booted_slot"] == "b"
    # After the reboot the bootloader is gone; replugged, it is back in fastboot mode.
    emulated.replug()
    with connect() as client:
        assert client.current_slot() == "b"


def test_unplug_mid_download_then_replug(usb: tuple[EmulatedUsbDevice, EmulatedDevice],
                                         tmp_path: Path) -> None:
    emulated, device = usb
    image = make_image(tmp_path / "boot.img", 200_000, seed=5, noise=8)
    emulated.unplug_after("out", 100_000)
    with pytest.raises(ZflashError) as lost, connect() as client:
        client.flash("boot", image, slot="b")
    assert lost.value.code == Code.LINK_LOST
    emulated.plug()
    with connect() as client:
        client.flash("boot", image, slot="b")
    assert partition_sha256(device, "boot", "b") == padded_sha256(image, 1 << 20)


def test_protocol_breach_resets_the_bootloader(usb: tuple[EmulatedUsbDevice,
                                                          EmulatedDevice]) -> None:
    """More data than announced: no answer, and the next command finds a fresh session."""
    with UsbTransport.open(URL, timeout=2.0) as link:
        link.write(b"download:00000010")
        assert link.read(256, 5.0) == b"DATA00000010"
        link.write(bytes(32))
        link.write(b"getvar:product")
        assert link.read(256, 5.0) == b"OKAYzx-demo"
