"""The one table of USB ids zflash looks for, and the ways a user extends it.

Everything that recognises a device in download mode reads this table: the USB transport
(which device to open and which interface to claim), `zflash devices`, `zflash doctor` and
the udev rules generator (`zflash/udev.py`), so the shipped rules cannot drift from the code.

A device is matched two ways, as fastboot does: by a (vendor id, product id) pair listed here,
or by an interface whose (class, subclass, protocol) triple is ZDL's or fastboot's. Matching by
interface class lets a new product work without a table entry; the pair list covers devices
whose interface class is not (yet) the standard one. Serial download modes sit behind
USB-to-UART bridges, so their tty nodes are matched by the bridge's ids.

Qualcomm EDL (Sahara/Firehose) has no class triple of its own: its interface is vendor
specific (ff/ff/ff, or ff/ff/10, 11, 13 on newer parts), so it is matched by that triple only
on Qualcomm's vendor id 05c6 (a `VendorInterface`), as qdl does, plus pairs such as ZTE's
19d2:0076 that the table lists as kind "edl".

Extensions, both in the same `VID:PID[:KIND] [label]` form (KIND: zdl, fastboot, edl or serial):
the command line (`--usb-id`, repeatable) and `$XDG_CONFIG_HOME/zflash/usb-ids.txt`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from zflash.errors import Code, ZflashError

PROTOCOLS = ("zdl", "fastboot", "edl")
KINDS = PROTOCOLS + ("serial",)
CONFIG_NAME = "usb-ids.txt"


@dataclass(frozen=True)
class UsbId:
    """A USB device by vendor and product id. ``protocol`` None: decide by interface class."""

    vid: int
    pid: int
    protocol: str | None
    label: str

    @property
    def text(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}"


@dataclass(frozen=True)
class InterfaceClass:
    """An interface class triple that identifies a download protocol on any vendor's device."""

    cls: int
    subclass: int
    protocol: int
    name: str

    @property
    def hex(self) -> str:
        """The `ID_USB_INTERFACES` form udev uses, e.g. ``ff4203``."""
        return f"{self.cls:02x}{self.subclass:02x}{self.protocol:02x}"

    def matches(self, cls: int, subclass: int, protocol: int) -> bool:
        return (cls, subclass, protocol) == (self.cls, self.subclass, self.protocol)


@dataclass(frozen=True)
class VendorInterface:
    """Interface triples that mean ``name`` only on one vendor's devices (any product id)."""

    vid: int
    triples: tuple[tuple[int, int, int], ...]
    name: str
    label: str

    def matches(self, vid: int, cls: int, subclass: int, protocol: int) -> bool:
        return vid == self.vid and (cls, subclass, protocol) in self.triples


@dataclass(frozen=True)
class TtyId:
    """A USB-to-UART bridge (or a ROM's USB-CDC port) behind which serial download modes live."""

    vid: int
    pid: int
    label: str

    @property
    def text(self) -> str:
        return f"{self.vid:04x}:{self.pid:04x}"


# protocols/zdl.md section 10 defines ZDL's triple; fastboot's comes from AOSP (REFERENCE.md).
ZDL_INTERFACE = InterfaceClass(0xFF, 0x5A, 0x01, "zdl")
FASTBOOT_INTERFACE = InterfaceClass(0xFF, 0x42, 0x03, "fastboot")
INTERFACE_CLASSES: tuple[InterfaceClass, ...] = (ZDL_INTERFACE, FASTBOOT_INTERFACE)

EMULATED_VID, EMULATED_PID = 0x1209, 0x0001
QUALCOMM_VID, EDL_PID = 0x05C6, 0x9008

# REFERENCE-EDL 1: qdl takes any 05c6 device with a vendor interface ff/ff/ff (older) or
# ff/ff/10, 11, 13 (newer); the emulated EDL device offers ff/ff/ff.
EDL_INTERFACE = InterfaceClass(0xFF, 0xFF, 0xFF, "edl")
EDL_VENDOR_INTERFACES: tuple[VendorInterface, ...] = (
    VendorInterface(QUALCOMM_VID, ((0xFF, 0xFF, 0xFF), (0xFF, 0xFF, 0x10), (0xFF, 0xFF, 0x11),
                                   (0xFF, 0xFF, 0x13)), "edl",
                    "Qualcomm Emergency Download (Sahara/Firehose), any product id"),
)

BUILTIN_USB_IDS: tuple[UsbId, ...] = (
    UsbId(EMULATED_VID, EMULATED_PID, None, "pid.codes test id (zflash emulated device)"),
    UsbId(QUALCOMM_VID, EDL_PID, "edl", "Qualcomm HS-USB QDLoader 9008 (EDL)"),
    UsbId(0x19D2, 0x0076, "edl", "ZTE Download (EDL)"),
)

BUILTIN_TTY_IDS: tuple[TtyId, ...] = (
    TtyId(0x303A, 0x1001, "Espressif USB-Serial/JTAG (ESP32-C3/S3 download mode)"),
    TtyId(0x303A, 0x0002, "Espressif ESP32-S2 ROM download mode (USB-CDC)"),
    TtyId(0x10C4, 0xEA60, "Silicon Labs CP210x USB-UART bridge"),
    TtyId(0x1A86, 0x7523, "WCH CH340 USB-UART bridge"),
    TtyId(0x1A86, 0x55D4, "WCH CH9102 USB-UART bridge"),
    TtyId(0x0403, 0x6001, "FTDI FT232R USB-UART bridge"),
    TtyId(0x0403, 0x6010, "FTDI FT2232 dual USB-UART bridge"),
    TtyId(0x0403, 0x6015, "FTDI FT-X series USB-UART bridge"),
)


@dataclass(frozen=True)
class IdTable:
    """The ids in force for one command: built-in, plus config file, plus command line."""

    usb: tuple[UsbId, ...] = BUILTIN_USB_IDS
    tty: tuple[TtyId, ...] = BUILTIN_TTY_IDS
    interfaces: tuple[InterfaceClass, ...] = INTERFACE_CLASSES
    sources: tuple[str, ...] = field(default=("built-in",), compare=False)
    vendor_interfaces: tuple[VendorInterface, ...] = EDL_VENDOR_INTERFACES

    def usb_id(self, vid: int, pid: int) -> UsbId | None:
        return next((u for u in self.usb if (u.vid, u.pid) == (vid, pid)), None)

    def tty_id(self, vid: int, pid: int) -> TtyId | None:
        return next((t for t in self.tty if (t.vid, t.pid) == (vid, pid)), None)

    def interface(self, cls: int, subclass: int, protocol: int) -> InterfaceClass | None:
        return next((i for i in self.interfaces if i.matches(cls, subclass, protocol)), None)

    def vendor_interface(self, vid: int, cls: int, subclass: int,
                         protocol: int) -> VendorInterface | None:
        return next((v for v in self.vendor_interfaces
                     if v.matches(vid, cls, subclass, protocol)), None)

    def extended(self, entries: Iterable[UsbId | TtyId], source: str) -> IdTable:
        """A new table with ``entries`` added (duplicates dropped, first one wins)."""
        usb, tty = list(self.usb), list(self.tty)
        for entry in entries:
            if isinstance(entry, TtyId):
                if self.tty_id(entry.vid, entry.pid) is None and entry not in tty:
                    tty.append(entry)
            elif all((u.vid, u.pid) != (entry.vid, entry.pid) for u in usb):
                usb.append(entry)
        return IdTable(tuple(usb), tuple(tty), self.interfaces, self.sources + (source,),
                       self.vendor_interfaces)


_ENTRY = re.compile(r"^([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,4})(?::([a-z]+))?(?:\s+(.*))?$")


def parse_id(text: str, origin: str = "--usb-id") -> UsbId | TtyId:
    """One ``VID:PID[:KIND] [label]`` entry (hex ids); a coded usage error names the origin."""
    match = _ENTRY.match(text.strip())
    if not match:
        raise ZflashError(Code.USAGE, f"{origin}: {text.strip()!r} is not VID:PID[:KIND] "
                                      f"(hex ids, KIND one of {', '.join(KINDS)})")
    vid, pid = int(match.group(1), 16), int(match.group(2), 16)
    kind, label = match.group(3), (match.group(4) or "").strip() or f"added by {origin}"
    if kind is not None and kind not in KINDS:
        raise ZflashError(Code.USAGE, f"{origin}: unknown kind {kind!r} in {text.strip()!r} "
                                      f"(use one of {', '.join(KINDS)})")
    if kind == "serial":
        return TtyId(vid, pid, label)
    return UsbId(vid, pid, kind, label)


def config_path() -> Path:
    """`$XDG_CONFIG_HOME/zflash/usb-ids.txt` (XDG default ~/.config)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "zflash" / CONFIG_NAME


def read_config(path: Path) -> list[UsbId | TtyId]:
    """Entries of a config file, one per line, ``#`` comments; a missing file is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc}") from None
    entries: list[UsbId | TtyId] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            entries.append(parse_id(line, f"{path}:{number}"))
    return entries


def load_id_table(extra: Sequence[str] = (), config: Path | None = None,
                  use_config: bool = True) -> IdTable:
    """The table for one command: built-in ids, then the config file, then ``--usb-id``."""
    table = IdTable()
    if use_config:
        path = config or config_path()
        entries = read_config(path)
        if entries:
            table = table.extended(entries, str(path))
    if extra:
        table = table.extended([parse_id(text) for text in extra], "--usb-id")
    return table
