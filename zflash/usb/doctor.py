"""`zflash doctor`: can this machine reach devices in download mode, and if not, why.

Each check has a status and, when something is wrong, one fix. Status policy (what the exit
status reports):

- ``fail``: flashing is blocked now: no libusb (no USB device can be flashed at all), or a
  device that is connected right now cannot be opened. The exit status is that failure's
  error code minus 9000 (LIBUSB_MISSING 29, PERMISSION_DENIED 22), as for any zflash error.
- ``warn``: nothing connected is blocked yet, but a device will be: udev rules missing or
  outdated, user not in the serial ports' group. Exit status 0.
- ``ok`` / ``info``: fine, or a fact worth knowing (no USB bus, e.g. in a container).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from zflash.usb.devices import list_serial_ports
from zflash.errors import Code, ZflashError, lookup
from zflash.transport.usb_find import (
    BACKEND_HOOK_ENV,
    UDEV_HINT,
    enumerate_devices,
    find_libusb,
)
from zflash.usb.udev import RELOAD_HINT, check_rules, installed_rules, render_rules
from zflash.usb.ids import IdTable

SERIAL_GROUPS = ("dialout", "uucp")
USB_SYSFS = Path("/sys/bus/usb/devices")
UDEV_DIR = Path("/etc/udev")


@dataclass
class Check:
    """One finding: ``status`` is ok, info, warn or fail; ``code`` is set on a fail."""

    name: str
    status: str
    detail: str
    fix: str | None = None
    code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def exit_status(checks: list[Check]) -> int:
    """0 unless a check failed; then the first failure's error code minus 9000."""
    failed = [c for c in checks if c.status == "fail"]
    return lookup(failed[0].code or Code.INTERNAL).exit_status if failed else 0


def _can_rw(path: str) -> bool:
    return os.access(path, os.R_OK | os.W_OK)


def check_libusb() -> Check:
    hook = os.environ.get(BACKEND_HOOK_ENV)
    if hook:
        return Check("libusb", "info", f"USB goes through {BACKEND_HOOK_ENV}={hook}")
    backend, info = find_libusb()
    if backend is None:
        return Check("libusb", "fail", f"no libusb-1.0 found ({info.problem})",
                     lookup(Code.LIBUSB_MISSING).fix, int(Code.LIBUSB_MISSING))
    return Check("libusb", "ok", f"libusb {info.version} from {info.source}: {info.path}")


def check_usb_bus() -> Check:
    if not sys.platform.startswith("linux") or os.environ.get(BACKEND_HOOK_ENV):
        return Check("usb bus", "info", "not checked on this platform")
    if USB_SYSFS.is_dir():
        return Check("usb bus", "ok", f"{USB_SYSFS} present")
    return Check("usb bus", "info", "no USB bus on this machine (a container or VM without "
                 "USB passthrough?): only serial, TCP and emulated devices can be reached")


def check_usb_devices(table: IdTable, backend: Any = None) -> list[Check]:
    try:
        found = enumerate_devices(backend, table)
    except ZflashError as exc:
        return [Check("usb devices", "info", f"not searched: {exc.detail or exc.info.meaning}")]
    if not found:
        return [Check("usb devices", "info", "no USB device in download mode is connected")]
    checks = []
    for cand in found:
        info = cand.info
        node = info.node
        blocked = not info.accessible or (node is not None and os.path.exists(node)
                                          and not _can_rw(node))
        if blocked:
            checks.append(Check(f"usb {info.port_path or info.node}", "fail",
                                f"{info.summary()}: cannot open {node or 'the device'}",
                                UDEV_HINT, int(Code.PERMISSION_DENIED)))
        else:
            checks.append(Check(f"usb {info.port_path or info.node}", "ok",
                                f"{info.summary()}: accessible"))
    return checks


def check_udev_rules(table: IdTable) -> Check:
    if not sys.platform.startswith("linux"):
        return Check("udev rules", "info", "not needed on this platform")
    installed = installed_rules()
    if not installed:
        if not UDEV_DIR.is_dir():
            return Check("udev rules", "info", "udev is not installed here (container?); "
                         "install the rules on the machine the devices plug into")
        return Check("udev rules", "warn", "60-zflash.rules is not installed: only root can "
                     "open devices in download mode",
                     f"zflash udev-rules --install, then {RELOAD_HINT}, and replug")
    path = installed[0]
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return Check("udev rules", "warn", f"{path}: {exc}", "reinstall: zflash udev-rules "
                     "--install")
    problems = check_rules(text)
    if problems:
        return Check("udev rules", "warn", f"{path}: {'; '.join(problems[:3])}",
                     f"reinstall: zflash udev-rules --install, then {RELOAD_HINT}")
    if text != render_rules(table):
        return Check("udev rules", "warn", f"{path} differs from this zflash's id table",
                     f"reinstall: zflash udev-rules --install, then {RELOAD_HINT}")
    return Check("udev rules", "ok", f"{path} is installed and current")


def _user_groups() -> tuple[str, set[str]]:
    import grp
    import pwd  # POSIX only, like the checks that use them
    user = pwd.getpwuid(os.getuid()).pw_name
    names = set()
    for gid in set(os.getgroups()) | {os.getgid()}:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return user, names


def check_serial_access(table: IdTable) -> list[Check]:
    checks: list[Check] = []
    if not sys.platform.startswith("linux"):
        return [Check("serial group", "info", "not checked on this platform")]
    user, groups = _user_groups()
    present = [g for g in SERIAL_GROUPS if _group_exists(g)]
    if os.geteuid() == 0:
        checks.append(Check("serial group", "ok", "running as root"))
    elif not present or groups & set(present):
        member = ", ".join(sorted(groups & set(present)))
        checks.append(Check("serial group", "ok",
                            f"{user} is in {member}" if member else "no serial group exists"))
    else:
        checks.append(Check("serial group", "warn", f"{user} is not in {' or '.join(present)}: "
                            "serial ports need the uaccess rules and a desktop session",
                            f"sudo usermod -aG {present[0]} {user}, then log out and back in"))
    try:
        ports = [p for p in list_serial_ports(table) if p.known]
    except OSError:
        ports = []
    for port in ports:
        if _can_rw(port.device):
            checks.append(Check(f"serial {port.device}", "ok", f"{port.summary()}: accessible"))
        else:
            checks.append(Check(f"serial {port.device}", "fail",
                                f"{port.summary()}: cannot open {port.device}",
                                f"sudo usermod -aG {present[0] if present else 'dialout'} "
                                f"{user} (log out and in), or {UDEV_HINT}",
                                int(Code.PERMISSION_DENIED)))
    return checks


def _group_exists(name: str) -> bool:
    import grp
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def run_checks(table: IdTable, backend: Any = None) -> list[Check]:
    """Every check, in the order a person would fix them."""
    checks = [check_libusb(), check_usb_bus()]
    checks += check_usb_devices(table, backend)
    checks.append(check_udev_rules(table))
    checks += check_serial_access(table)
    return checks
