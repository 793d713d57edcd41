"""Which back-end speaks to a device URL, and opening it.

The URL's scheme decides first (``fastboot+tcp://`` is fastboot, ``edl+serial://`` is
Qualcomm EDL on a QDLoader COM port; ``tcp://``, serial ports and pyserial URLs are ZDL); a
``usb://`` device is looked at without claiming it, and the
download interface it offers (from the USB id table) names the back-end.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Iterator

from zflash.errors import Code, ZflashError
from zflash.targets.base import Capabilities, Emit, LinkOptions, Target
from zflash.transport.open import open_transport
from zflash.transport.url import parse_device_url

#: Every download mode zflash speaks, by the name the USB id table and events use, and the
#: class that speaks it. Imported only when used: a command pays for one back-end.
BACKENDS: dict[str, str] = {"zdl": "zflash.targets.zdl.target:ZdlTarget",
                            "fastboot": "zflash.targets.fastboot.target:FastbootTarget",
                            "edl": "zflash.targets.edl.target:EdlTarget"}


def backend(name: str) -> type[Target]:
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def capabilities() -> dict[str, Capabilities]:
    """What each back-end declares it can do."""
    return {name: backend(name).capabilities for name in BACKENDS}


def protocol_of(url: str) -> str:
    """The download mode of the device at ``url``. A USB device that cannot be seen (absent,
    no access) counts as ZDL, whose open then reports the problem with its own wait."""
    parsed = parse_device_url(url)
    if parsed.scheme == "fastboot+tcp":
        return "fastboot"
    if parsed.scheme == "edl+serial":
        return "edl"
    if parsed.scheme != "usb":
        return "zdl"
    from zflash.transport.usb import target_from_url
    from zflash.transport.usb_find import enumerate_devices, select
    try:
        protocol = select(enumerate_devices(), target_from_url(parsed)).info.protocol
    except ZflashError:
        return "zdl"
    return protocol if protocol in BACKENDS else "zdl"


@contextmanager
def open_target(url: str, options: LinkOptions | None = None,
                emit: Emit | None = None) -> Iterator[Target]:
    """Open the device at ``url`` with the back-end its download mode needs, connected."""
    options = options or LinkOptions()
    protocol = protocol_of(url)
    target: Target
    if protocol == "fastboot":
        if options.baud is not None:
            raise ZflashError(Code.USAGE, "--baud does not apply to fastboot devices")
        from zflash.targets.fastboot.target import FastbootTarget, open_client
        target = FastbootTarget(url, open_client(url, options.timeout), emit)
    elif protocol == "edl":
        if options.baud is not None:
            raise ZflashError(Code.USAGE, "--baud does not apply to EDL devices")
        from zflash.targets.edl.target import EdlTarget
        target = EdlTarget(url, open_transport(url, timeout=options.timeout), options, emit)
    else:
        from zflash.targets.zdl.session import SessionOptions
        from zflash.targets.zdl.target import ZdlTarget
        # built first: it refuses a baud no device can switch to (9002) before a port opens
        session_options = SessionOptions(
            max_data=options.max_data, window=options.window, baud=options.baud,
            rto=options.rto, connect_timeout=options.timeout)
        transport = open_transport(url, timeout=options.timeout)
        if options.baud is not None and not transport.has_baudrate:
            transport.close()
            raise ZflashError(Code.USAGE, f"--baud applies to serial ports only; {url} is "
                                          "not one")
        target = ZdlTarget(url, transport, session_options, emit)
    try:
        target.connect()
        yield target
    finally:
        target.close()
