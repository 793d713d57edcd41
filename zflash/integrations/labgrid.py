"""A labgrid driver that flashes a zflash package onto the device behind a labgrid resource.

Why this exists: when a line outgrows one station, or a lab shares boards across machines,
labgrid already has the engine (coordinator, exporters, ser2net RFC 2217 serial ports, USB
resources on exporters). `ZflashDriver` binds to the resource that reaches the device in
download mode and runs the one flash pipeline (`zflash.flash.flash`) as a labgrid step:

- a serial port: local (`RawSerialPort`, `USBSerialPort`) is opened directly; an exported
  one (`NetworkSerialPort`, ser2net on the exporter) as ``rfc2217://HOST:PORT`` (or
  ``socket://`` for a raw one) through pyserial;
- fastboot over the network (`AndroidNetFastboot`, `RemoteAndroidNetFastboot`, TCP only) as
  ``fastboot+tcp://ADDRESS:PORT``;
- a USB device (`AndroidUSBFastboot`, `USBFlashableDevice` and their exported variants) by
  its port path, ``usb://BUS-PORT.PATH``: locally in this process; on an exporter by running
  ``zflash flash`` there (labgrid's ssh command prefix; the package and keys are synced with
  labgrid's `ManagedFile`), since a USB device can only be opened on the machine it is on.

Use it from an environment file (``imports: [zflash.integrations.labgrid]``, see
docs/labgrid-env.yaml), then ``target.get_driver("ZflashDriver").flash()``.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import attr
from labgrid.driver.common import Driver
from labgrid.factory import target_factory
from labgrid.resource.fastboot import AndroidNetFastboot
from labgrid.resource.remote import (
    NetworkUSBFlashableDevice,
    RemoteAndroidNetFastboot,
    RemoteAndroidUSBFastboot,
)
from labgrid.resource.serialport import NetworkSerialPort, RawSerialPort
from labgrid.resource.udev import AndroidUSBFastboot, USBFlashableDevice, USBSerialPort
from labgrid.step import step
from labgrid.util.managedfile import ManagedFile

from zflash.errors import Code, ZflashError
from zflash.flash import FlashOptions, FlashSummary, flash
from zflash.package.keys import TrustStore
from zflash.targets.base import LinkOptions

SERIAL = (RawSerialPort, USBSerialPort)
NET_FASTBOOT = (AndroidNetFastboot, RemoteAndroidNetFastboot)
USB_LOCAL = (AndroidUSBFastboot, USBFlashableDevice)
USB_REMOTE = (RemoteAndroidUSBFastboot, NetworkUSBFlashableDevice)

_str_list = attr.validators.deep_iterable(attr.validators.instance_of(str),
                                          attr.validators.instance_of(list))
_opt_str = attr.validators.optional(attr.validators.instance_of(str))


def device_url(resource: Any) -> str:
    """The zflash device URL for a bound resource (a coded error for one zflash cannot use)."""
    if isinstance(resource, NetworkSerialPort):
        if resource.protocol == "raw":
            return f"socket://{resource.host}:{resource.port}"
        if resource.protocol != "rfc2217":
            raise ZflashError(Code.USAGE, f"NetworkSerialPort protocol {resource.protocol!r}: "
                                          "zflash speaks rfc2217 and raw")
        # ser2net on a pty (or a bridge without modem lines) does not answer SET_CONTROL
        # for DTR/RTS; download mode does not use them, so do not wait for the answers.
        return f"rfc2217://{resource.host}:{resource.port}?ign_set_control"
    if isinstance(resource, SERIAL):
        return f"serial://{resource.port}"
    if isinstance(resource, NET_FASTBOOT):
        if resource.protocol != "tcp":
            raise ZflashError(Code.USAGE, f"fastboot over {resource.protocol}: zflash speaks "
                                          "fastboot over TCP (set protocol: tcp)")
        return f"fastboot+tcp://{resource.address}:{resource.port}"
    if isinstance(resource, USB_LOCAL + USB_REMOTE):
        if not resource.path:
            raise ZflashError(Code.DEVICE_NOT_FOUND, f"{type(resource).__name__} has no USB "
                                                     "port path (is it plugged in?)")
        return f"usb://{resource.path}"
    raise ZflashError(Code.USAGE, f"zflash cannot flash through a {type(resource).__name__}")


@target_factory.reg_driver
@attr.s(eq=False)
class ZflashDriver(Driver):
    """Flash a signed zflash package as a labgrid step.

    Args:
        package: the package path, or a key of the environment's ``images``
        trust: public key files (PEM) the package must be signed with
        reboot, wipe_userdata, accept_unverifiable: as ``zflash flash``'s options
        timeout: seconds to wait for the device and for each answer
        remote_zflash: the zflash command on an exporter (USB resources there)
    """

    bindings = {"device": {*SERIAL, NetworkSerialPort, *NET_FASTBOOT, *USB_LOCAL,
                           *USB_REMOTE}}

    package = attr.ib(default=None, validator=_opt_str)
    trust = attr.ib(default=attr.Factory(list), validator=_str_list)
    reboot = attr.ib(default=True, validator=attr.validators.instance_of(bool))
    wipe_userdata = attr.ib(default=False, validator=attr.validators.instance_of(bool))
    accept_unverifiable = attr.ib(default=False, validator=attr.validators.instance_of(bool))
    timeout = attr.ib(default=10.0, converter=float)
    remote_zflash = attr.ib(default="zflash", validator=attr.validators.instance_of(str))

    def on_activate(self) -> None:
        pass

    def on_deactivate(self) -> None:
        pass

    @property
    def url(self) -> str:
        return device_url(self.device)

    def _path(self, name: str) -> str:
        """An ``images`` key of the environment, or a path (relative to the config file)."""
        env = self.target.env
        if env is not None:
            if name in (env.config.data.get("images") or {}):
                return str(env.config.get_image_path(name))
            return str(env.config.resolve_path(name))
        return name

    def _options(self) -> FlashOptions:
        return FlashOptions(reboot=self.reboot, wipe_userdata=self.wipe_userdata,
                            accept_unverifiable=self.accept_unverifiable,
                            link=LinkOptions(timeout=self.timeout))

    @Driver.check_active
    @step(title="zflash", args=["package"], result=True)
    def flash(self, package: str | None = None) -> dict[str, Any]:
        """Flash ``package`` (default: the driver's) and return zflash's summary (the
        ``done`` event's fields); a refusal or failure raises its coded ZflashError."""
        name = package or self.package
        if not name:
            raise ZflashError(Code.USAGE, "ZflashDriver: no package (set package: or pass one)")
        path = self._path(name)
        keys = [self._path(key) for key in self.trust]
        if isinstance(self.device, USB_REMOTE):
            return self._flash_on_exporter(path, keys)
        trust = TrustStore.load(tuple(Path(k) for k in keys), None)
        summary: FlashSummary = flash(self.url, Path(path), trust, self._options(), self._log)
        return summary.to_dict()

    def _log(self, event: dict[str, Any]) -> None:
        level = logging.DEBUG if event.get("event") == "progress" else logging.INFO
        self.logger.log(level, "%s", json.dumps(event, sort_keys=True, default=str))

    def _flash_on_exporter(self, package: str, keys: list[str]) -> dict[str, Any]:
        """USB on an exporter: run zflash there (the device can only be opened there)."""
        remote = []
        for local in [package, *keys]:
            managed = ManagedFile(local, self.device)
            managed.sync_to_resource()
            remote.append(managed.get_remote_path())
        command = [self.remote_zflash, "flash", remote[0], "-d", self.url, "--json",
                   "--timeout", f"{self.timeout:g}"]
        for key in remote[1:]:
            command += ["--trust", key]
        if not self.reboot:
            command.append("--no-reboot")
        if self.wipe_userdata:
            command.append("--wipe-userdata")
        if self.accept_unverifiable:
            command.append("--accept-unverifiable")
        result = subprocess.run(self.device.wrap_command(command), capture_output=True,
                                text=True, check=False)
        return remote_summary(result.returncode, result.stdout, result.stderr)


def remote_summary(status: int, stdout: str, stderr: str) -> dict[str, Any]:
    """The ``done`` event of a remote ``zflash flash --json`` run; its coded error if it
    failed (exit status = code - 9000)."""
    done = None
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "done":
            done = event
    if status == 0 and done is not None:
        return done
    try:
        code = Code(9000 + status)
    except ValueError:
        code = Code.INTERNAL
    tail = stderr.strip().splitlines()[-1:] or [f"exit status {status}"]
    raise ZflashError(code, f"zflash on the exporter: {tail[0]}")
