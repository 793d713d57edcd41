"""The one error table: every failure a user can meet, with a stable code, meaning and fix.

The process exit status is ``code - 9000``, so a factory script can branch on the exit status
alone and a technician can look the code up with ``zflash errors CODE``. The four codes 9012,
9015, 9023 and 9040 are fixed by the product specification and shared with the OTA updater;
their meaning and fix text must not change.

One code can have several *causes* (9040: the product, the hardware revision or the baseband
differs), and a fix that is right for one cause is wrong for another. So each code has its
row, and a cause may refine it with its own meaning line and fix: ``lookup(code, cause)``.
The code, its meaning and its exit status never depend on the cause; only what the user is
told to do does.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Code(IntEnum):
    """Stable error codes. Never renumber: scripts depend on them."""

    INTERNAL = 9001
    USAGE = 9002
    FILE_UNREADABLE = 9003
    MALFORMED_PACKAGE = 9004
    MALFORMED_IMAGE = 9005
    BAD_KEY_FILE = 9006
    FILE_EXISTS = 9007
    INTERRUPTED = 9008
    FILE_UNWRITABLE = 9009
    SIGNATURE = 9012
    NO_TRUSTED_KEY = 9013
    ROLLBACK = 9015
    DEVICE_NOT_FOUND = 9020
    SEVERAL_DEVICES = 9021
    PERMISSION_DENIED = 9022
    STORAGE = 9023
    LINK_LOST = 9024
    TIMEOUT = 9025
    PROTOCOL = 9026
    UNSUPPORTED_PROTOCOL = 9027
    BAD_DEVICE_URL = 9028
    LIBUSB_MISSING = 9029
    READBACK_MISMATCH = 9030
    BOOT_FAILED = 9031
    SLOT = 9032
    NO_SUCH_PARTITION = 9033
    DEVICE_REFUSED = 9034
    PORT_BUSY = 9035
    NOT_SUPPORTED = 9036
    SERIAL_SERVER = 9037
    PARTIAL_PACKAGE = 9039
    COMPATIBILITY = 9040
    IMAGE_TOO_LARGE = 9041
    FLAT_BUILD = 9043
    UNVERIFIABLE = 9045
    PROGRAMMER_REJECTED = 9046
    BAD_GPT = 9047
    TLS_PIN = 9050
    TLS = 9051
    CATALOG_ROLLBACK = 9052
    CATALOG_EXPIRED = 9053
    DOWNLOAD = 9054
    NO_COMPATIBLE_PACKAGE = 9055
    STATION_FAILURES = 9060
    STATION_FILE = 9061


@dataclass(frozen=True)
class ErrorInfo:
    """One row of the table, refined by a cause when one is known.

    ``meaning`` is always the code's own meaning; ``cause`` and ``what`` (the cause's
    meaning line) are empty for the code's plain row; ``fix`` is the cause's fix if it has
    one, else the code's.
    """

    code: int
    meaning: str
    fix: str
    cause: str = ""
    what: str = ""

    @property
    def exit_status(self) -> int:
        return self.code - 9000


_ROWS: tuple[tuple[Code, str, str], ...] = (
    (Code.INTERNAL, "Internal error in zflash",
     "Report a bug with the command line and the output of `zflash --version`."),
    (Code.USAGE, "Invalid command-line usage or option value",
     "Check the command's --help for the accepted options and values."),
    (Code.FILE_UNREADABLE, "An input file is missing or cannot be read",
     "Check the path and its permissions."),
    (Code.MALFORMED_PACKAGE, "Firmware package is malformed or truncated",
     "Redownload firmware; file corrupted or not a .zpk package."),
    (Code.MALFORMED_IMAGE, "Partition image is malformed (bad sparse image or size)",
     "Regenerate the image; check it with `simg2img` if it is an Android sparse image."),
    (Code.BAD_KEY_FILE, "Key file is invalid or uses an unsupported algorithm",
     "Use a PEM key made by `zflash keygen` (Ed25519, ECDSA P-256 or RSA >= 3072 bits)."),
    (Code.FILE_EXISTS, "Output file already exists",
     "Choose another path or pass --force to overwrite it."),
    (Code.INTERRUPTED, "Interrupted by the user",
     "Run the same command again; an interrupted flash resumes where it stopped."),
    (Code.FILE_UNWRITABLE, "An output file or directory cannot be written",
     "Check that the directory exists, is writable and has free space."),
    (Code.SIGNATURE, "Signature verification failed",
     "Redownload firmware; file corrupted."),
    (Code.NO_TRUSTED_KEY, "No trusted public key is configured",
     "Pass --trust KEY.pem or copy the vendor's public key into the trust directory "
     "(see `zflash verify --help`)."),
    (Code.ROLLBACK, "Anti-rollback check failed",
     "Do not downgrade; stay on current build."),
    (Code.DEVICE_NOT_FOUND, "No device in download mode was found",
     "Check the cable, put the device in download mode, and list devices with `zflash devices`."),
    (Code.SEVERAL_DEVICES, "Several devices match; zflash will not guess",
     "Name one device: add ?serial=SERIAL or use its port path (see `zflash devices`)."),
    (Code.PERMISSION_DENIED, "Permission denied opening the device",
     "Install the udev rules (`zflash udev-rules --install`), replug, or join the dialout group."),
    (Code.STORAGE, "Insufficient flash storage",
     "Perform factory reset to clear logs."),
    (Code.LINK_LOST, "The link to the device was lost",
     "Reconnect the cable and run the same command again; the flash resumes."),
    (Code.TIMEOUT, "The device did not answer in time",
     "Check the device is still in download mode; replug it and run the command again."),
    (Code.PROTOCOL, "The device sent something the protocol does not allow",
     "Replug the device and retry; if it persists, report it with the --json log attached."),
    (Code.UNSUPPORTED_PROTOCOL, "The device speaks a protocol version zflash does not support",
     "Update zflash, or use the protocol the device offers (e.g. fastboot)."),
    (Code.BAD_DEVICE_URL, "The device URL is not understood",
     "Use serial:///dev/ttyUSB0, tcp://HOST:PORT, usb://VID:PID, or a bare /dev/tty* or COM port."),
    (Code.LIBUSB_MISSING, "No libusb-1.0 library was found",
     "Install libusb-1.0 (apt install libusb-1.0-0) or `pip install libusb-package`."),
    (Code.READBACK_MISMATCH, "Data read back from the device does not match what was written",
     "Run the flash again; if it repeats, the device's flash memory may be failing."),
    (Code.BOOT_FAILED, "The new slot failed to boot; the device fell back to the old slot",
     "The device still runs the previous build. Reflash, or report the firmware as bad."),
    (Code.SLOT, "Invalid slot or slot operation",
     "Use a slot the device reports (`zflash slot`), e.g. a or b."),
    (Code.NO_SUCH_PARTITION, "The device has no such partition",
     "Check the partition name against `zflash info`."),
    (Code.DEVICE_REFUSED, "The device refused the command",
     "Read the device's message above; check the device is unlocked for this operation."),
    (Code.PORT_BUSY, "The port or USB interface is in use by another program",
     "Close the other program (a terminal, ModemManager, fastboot, adb, another zflash) "
     "and run the command again."),
    (Code.NOT_SUPPORTED, "The device's download mode cannot do this operation",
     "Use a download mode that offers it (`zflash info` shows the mode and what it can do)."),
    (Code.SERIAL_SERVER, "The network serial server refused the connection or the RFC 2217 "
     "negotiation",
     "Check the server's host, port and that it runs; ser2net serves RFC 2217 with "
     "`accepter: telnet(rfc2217),tcp,PORT`; for a raw TCP port use socket://HOST:PORT."),
    (Code.PARTIAL_PACKAGE, "The package does not carry every slotted partition, and this "
     "download mode cannot complete the new slot itself",
     "Flash the full build for this device; or, if mixing the other partitions' older "
     "build into the new slot is intended, pass --allow-partial."),
    (Code.COMPATIBILITY, "Baseband mismatch",
     "Firmware is for wrong hardware revision."),
    (Code.IMAGE_TOO_LARGE, "An image is too large for its partition",
     "Use the build made for this device's partition layout (compare `zflash inspect PKG` "
     "with `zflash info`); a factory reset does not grow a partition."),
    (Code.FLAT_BUILD, "A Qualcomm flat build (rawprogram/patch XML) cannot be imported",
     "Correct the file and entry named above; the import rules are in protocols/zpk.md 3.1."),
    (Code.UNVERIFIABLE, "A check cannot be verified because the device does not report the fact",
     "Confirm the firmware matches this device, then pass --accept-unverifiable."),
    (Code.PROGRAMMER_REJECTED, "The device's boot ROM refused the EDL programmer",
     "Use the programmer signed for this device's MSM HW id and OEM key hash "
     "(`zflash info` shows both)."),
    (Code.BAD_GPT, "The partition table (GPT) is missing or corrupt",
     "Flash the full build for this device, including its GPT (rawprogram with gpt_main and "
     "gpt_backup), or restore a backup of the table."),
    (Code.TLS_PIN, "The update server's key does not match the pinned key",
     "Do not continue on this network; check the pin with the server's operator."),
    (Code.TLS, "Secure connection to the update server failed",
     "Check the URL, the server's certificate and that it offers TLS 1.2 or newer."),
    (Code.CATALOG_ROLLBACK, "The update catalog is older than one already seen",
     "Someone may be replaying an old catalog; use a trusted network and retry."),
    (Code.CATALOG_EXPIRED, "The update catalog has expired",
     "The server is stale or frozen; ask its operator to re-sign the catalog."),
    (Code.DOWNLOAD, "Download from the update server failed",
     "Check the network and run the same command again; the download resumes."),
    (Code.NO_COMPATIBLE_PACKAGE, "No package in the catalog fits this device",
     "Check the device's product, hardware revision and baseband with `zflash info`."),
    (Code.STATION_FAILURES, "Some devices failed; see the report",
     "Read each failed device's code in the report (--report/--junit) or its log "
     "(--log-dir); replug it to try again."),
    (Code.STATION_FILE, "The station file has a wrong key or value",
     "Fix the line named in the message; `zflash station --help` lists every setting."),
)

#: (code, cause, what, fix): a cause's own meaning line and fix. A cause is named by the
#: check that found it (checks.Failure.check) or by the raiser (ZflashError(cause=...)).
_CAUSE_ROWS: tuple[tuple[Code, str, str, str], ...] = (
    (Code.USAGE, "recipe", "The pack recipe is not valid",
     "Correct the field named above; the recipe format is in protocols/recipe.md."),
    (Code.SIGNATURE, "signature",
     "Not signed by a key this host trusts, or the signature is damaged",
     "If the package is your vendor's, pass the vendor's public key with --trust KEY.pem; "
     "if that key is already trusted, redownload firmware: the file is corrupted or not "
     "the vendor's."),
    (Code.SIGNATURE, "untrusted_signer", "Signed, but by no key this host trusts",
     "Pass the vendor's public key with --trust KEY.pem (or put it in the trust directory); "
     "if you already trust the vendor's key, this package is not the vendor's: do not "
     "flash it."),
    (Code.SIGNATURE, "bad_signature", "A trusted key's signature does not match the manifest",
     "Redownload firmware; file corrupted."),
    (Code.SIGNATURE, "blocks", "An image block does not match its signed hash",
     "Redownload firmware; file corrupted."),
    (Code.SIGNATURE, "changed",
     "The package file was written to while it was being flashed, so what was sent may "
     "not be what was signed",
     "Let whatever writes the file (a download, a copy, a sync) finish, then flash again; "
     "the device still runs its current slot."),
    (Code.TIMEOUT, "edl_silent",
     "The EDL device sends no Sahara HELLO and no Firehose programmer answers: its boot ROM "
     "is stuck after an aborted session",
     "Unplug the device (on a phone: hold power until it is off), enter EDL again, plug it "
     "in and flash again; nothing was written."),
    (Code.COMPATIBILITY, "product", "The package is for another product",
     "Use the package built for this product (`zflash info` shows the device's product)."),
    (Code.COMPATIBILITY, "hardware_revision",
     "The package does not list the device's hardware revision",
     "Firmware is for wrong hardware revision."),
    (Code.COMPATIBILITY, "baseband", "The package does not list the device's baseband",
     "Use the build made for this device's baseband (modem) variant; `zflash info` shows "
     "it."),
    (Code.FLAT_BUILD, "xml", "A rawprogram or patch file is not plain, well-formed XML",
     "Use the XML the build tools wrote: no DOCTYPE or entity declarations, at most "
     "4 MiB."),
    (Code.FLAT_BUILD, "entry", "An entry has a missing or bad attribute, or cannot become a "
     "package partition",
     "Correct the entry at the line named above (attributes: REFERENCE-EDL 4)."),
    (Code.FLAT_BUILD, "fuse", "The build programs a fuse or security partition (secdata)",
     "Writing it can fuse the device for good; if that is intended, pass --include-fuse "
     "NAME for that partition."),
    (Code.FLAT_BUILD, "patch", "A DISK patch changes sectors outside the partition tables",
     "zflash keeps the device's GPT and carries no patches; rebuild without that patch."),
    (Code.COMPATIBILITY, "layout",
     "A partition has A/B slots in the package but not on the device, or the reverse",
     "Use the build made for this device's partition layout, or rebuild the package with "
     "`zflash pack --profile DEVICE.json`."),
)

TABLE: dict[int, ErrorInfo] = {int(code): ErrorInfo(int(code), meaning, fix)
                               for code, meaning, fix in _ROWS}

#: Per code, its causes by name.
CAUSES: dict[int, dict[str, ErrorInfo]] = {}
for _code, _cause, _what, _fix in _CAUSE_ROWS:
    CAUSES.setdefault(int(_code), {})[_cause] = ErrorInfo(
        int(_code), TABLE[_code].meaning, _fix, _cause, _what)


def lookup(code: int, cause: str | None = None) -> ErrorInfo:
    """The row for ``code``, refined by ``cause`` when the code knows that cause.

    Unknown codes map to the internal-error row; an unknown cause gives the code's row.
    """
    row = TABLE.get(int(code), TABLE[Code.INTERNAL])
    return CAUSES.get(row.code, {}).get(cause or "", row)


def resolve_code(number: int) -> int | None:
    """A code from what a user may type: the code (9040) or the exit status (40)."""
    if number in TABLE:
        return number
    if 0 < number < 1000 and number + 9000 in TABLE:
        return number + 9000
    return None


def describe(code: int) -> str:
    """The plain-text entry `zflash errors CODE` prints: the row, then each cause and its fix.

    Here rather than in the command, so that the console script can print it without
    importing click (zflash/__main__.py).
    """
    info = TABLE[code]
    lines = [f"{info.code}  exit {info.exit_status:<3} {info.meaning}", f"      fix: {info.fix}"]
    for cause in CAUSES.get(info.code, {}).values():
        lines += [f"      cause {cause.cause}: {cause.what}", f"        fix: {cause.fix}"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """The README's error section body: every code, then every cause with its own fix.

    The README embeds this text verbatim (a test keeps them equal); regenerate it with
    ``zflash errors --markdown``.
    """
    lines = ["| Code | Exit | Meaning | Fix |", "|---|---|---|---|"]
    lines += [f"| {i.code} | {i.exit_status} | {_cell(i.meaning)} | {_cell(i.fix)} |"
              for i in TABLE.values()]
    lines += ["", "Where one code has several causes, each cause has its own fix:", "",
              "| Code | Cause | What happened | Fix |", "|---|---|---|---|"]
    lines += [f"| {i.code} | `{i.cause}` | {_cell(i.what)} | {_cell(i.fix)} |"
              for causes in CAUSES.values() for i in causes.values()]
    return "\n".join(lines) + "\n"


class ZflashError(Exception):
    """A failure the user can meet. ``detail`` says what happened in this instance;
    ``cause`` (optional) picks the cause's fix from the table."""

    def __init__(self, code: int, detail: str = "", cause: str = "") -> None:
        self.code = int(code)
        self.detail = detail
        self.cause = cause
        super().__init__(f"{self.code}: {detail or self.info.meaning}")

    @property
    def info(self) -> ErrorInfo:
        return lookup(self.code, self.cause)

    @property
    def exit_status(self) -> int:
        return self.info.exit_status

    def to_dict(self) -> dict[str, object]:
        info = self.info
        result: dict[str, object] = {"code": self.code, "meaning": info.meaning,
                                     "detail": self.detail, "fix": info.fix}
        if info.cause:
            result.update(cause=info.cause, what=info.what)
        return result
