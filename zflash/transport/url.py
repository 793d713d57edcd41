"""Device URLs: one string names a device, and its scheme picks the transport.

Modelled on pyserial's URL handlers. Parsing is strict on purpose: a typo in a factory
script (``?baudrate=``, a port of 99999, ``usb://12O9:1``) must fail loudly before anything is
opened, rather than silently fall back to a default and flash the wrong device or at the
wrong speed.

Accepted forms::

    serial:///dev/ttyUSB0?baud=921600   serial://COM3        /dev/ttyACM0   COM3
    tcp://127.0.0.1:5554                fastboot+tcp://HOST[:PORT]   (default port 5554)
    edl+serial:///dev/ttyUSB0  edl+serial://COM5   (Qualcomm EDL over a QDLoader COM port)
    usb://1209:0001?serial=ABC          usb://1-2.3 (bus-port path)   usb:// (any device)
    rfc2217://...  socket://...  spy://...  loop://   (pyserial's URLs, taken as given:
                   rfc2217 by zflash's own client, the rest by pyserial)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlsplit

from zflash.errors import Code, ZflashError

DEFAULT_BAUD = 115200
FASTBOOT_TCP_PORT = 5554
MIN_BAUD = 50
MAX_BAUD = 20_000_000

#: Schemes whose URLs pyserial's ``serial_for_url`` understands; zflash does not parse them.
PASSTHROUGH_SCHEMES = frozenset({"rfc2217", "socket", "spy", "loop"})

#: Query parameters each zflash scheme accepts; anything else is rejected as a likely typo.
ALLOWED_PARAMS: dict[str, frozenset[str]] = {
    "serial": frozenset({"baud"}),
    "edl+serial": frozenset({"baud"}),
    "tcp": frozenset(),
    "fastboot+tcp": frozenset(),
    "usb": frozenset({"serial"}),
}

ACCEPTED_FORMS = ("serial:///dev/ttyUSB0[?baud=N], /dev/tty*, COMn, edl+serial:///dev/ttyX, "
                  "tcp://HOST:PORT, "
                  "fastboot+tcp://HOST[:PORT], usb://[VID:PID][?serial=SN], "
                  "usb://BUS-PORT[.PORT...], or a pyserial URL (rfc2217://, socket://, "
                  "spy://, loop://)")

_COM_RE = re.compile(r"^(?:\\\\\.\\)?COM[0-9]+$", re.IGNORECASE)
_VIDPID_RE = re.compile(r"^([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,4})$")
_PORT_PATH_RE = re.compile(r"^[0-9]+-[0-9]+(?:\.[0-9]+)*$")
_DIGITS_RE = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class DeviceUrl:
    """A parsed device URL. Only the fields meaningful for ``scheme`` are set."""

    scheme: str  #: serial | edl+serial | tcp | fastboot+tcp | usb | rfc2217 | socket | spy | loop
    raw: str  #: the string as given; pass-through schemes hand this to pyserial unchanged
    path: str = ""  #: serial: the port (/dev/ttyUSB0, COM3); usb: a bus-port path (1-2.3)
    host: str = ""  #: tcp, fastboot+tcp
    port: int | None = None  #: tcp, fastboot+tcp
    vid: int | None = None  #: usb
    pid: int | None = None  #: usb
    params: dict[str, str] = field(default_factory=dict)  #: validated query parameters

    @property
    def is_passthrough(self) -> bool:
        """True when pyserial, not zflash, interprets the URL."""
        return self.scheme in PASSTHROUGH_SCHEMES

    @property
    def baud(self) -> int:
        """The serial baud rate asked for (validated at parse time), or the default."""
        return int(self.params.get("baud", DEFAULT_BAUD))

    @property
    def usb_serial(self) -> str | None:
        """The USB serial number to match, if the URL names one."""
        return self.params.get("serial")

    def __str__(self) -> str:
        """A canonical spelling, used in messages and transport descriptions."""
        if self.is_passthrough:
            return self.raw
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in sorted(self.params.items()))
        suffix = f"?{query}" if query else ""
        if self.scheme in ("serial", "edl+serial"):
            return f"{self.scheme}://{quote(self.path, safe='/:.-_+@,')}{suffix}"
        if self.scheme in ("tcp", "fastboot+tcp"):
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"{self.scheme}://{host}:{self.port}{suffix}"
        if self.vid is not None and self.pid is not None:
            return f"usb://{self.vid:04x}:{self.pid:04x}{suffix}"
        return f"usb://{self.path}{suffix}"


def bad_url(url: str, why: str) -> ZflashError:
    """The one error every malformed URL produces: what is wrong, then the accepted forms."""
    return ZflashError(Code.BAD_DEVICE_URL, f"{url!r}: {why}. Accepted: {ACCEPTED_FORMS}")


def parse_device_url(url: str) -> DeviceUrl:
    """Parse and validate ``url``; raise ZflashError(BAD_DEVICE_URL) naming the accepted forms."""
    if not isinstance(url, str) or not url.strip():
        raise bad_url(str(url), "empty device URL")
    text = url.strip()
    if "://" not in text:
        return _parse_bare(url, text)
    scheme = text.split("://", 1)[0].lower()
    if scheme in PASSTHROUGH_SCHEMES:
        return DeviceUrl(scheme=scheme, raw=text)
    if scheme in ("serial", "edl+serial"):
        return _parse_serial(url, text, scheme)
    if scheme in ("tcp", "fastboot+tcp"):
        return _parse_tcp(url, text, scheme)
    if scheme == "usb":
        return _parse_usb(url, text)
    raise bad_url(url, f"unknown scheme {scheme + '://'!r}")


def _parse_bare(url: str, text: str) -> DeviceUrl:
    """A bare ``/dev/...`` path or ``COMn`` is shorthand for ``serial://``."""
    name, _, query = text.partition("?")
    if not (name.startswith("/dev/") or _COM_RE.match(name)):
        raise bad_url(url, "not a device URL")
    params = _parse_query(url, query, "serial")
    return DeviceUrl(scheme="serial", raw=url, path=name, params=params)


def _parse_serial(url: str, text: str, scheme: str = "serial") -> DeviceUrl:
    """``serial:///dev/ttyUSB0``, ``serial://COM3``; the port may be percent-encoded.
    ``edl+serial://`` names the same ports for Qualcomm EDL's COM variant."""
    parts = _split(url, text)
    if parts.fragment:
        raise bad_url(url, "a serial URL has no #fragment")
    netloc, path = unquote(parts.netloc), unquote(parts.path)
    if netloc and path:
        raise bad_url(url, "a serial URL names a local port: serial:///dev/ttyUSB0")
    name = netloc or path
    if _COM_RE.match(name.lstrip("/")):
        name = name.lstrip("/")
    if not name or name == "/":
        raise bad_url(url, "no serial port named")
    params = _parse_query(url, parts.query, scheme)
    return DeviceUrl(scheme=scheme, raw=url, path=name, params=params)


def _parse_tcp(url: str, text: str, scheme: str) -> DeviceUrl:
    """``tcp://HOST:PORT`` (port required) or ``fastboot+tcp://HOST[:PORT]``."""
    parts = _split(url, text)
    if parts.username is not None or parts.password is not None:
        raise bad_url(url, "user names are not supported in a tcp URL")
    if parts.path not in ("", "/") or parts.fragment:
        raise bad_url(url, "a tcp URL is just HOST:PORT")
    host = parts.hostname or ""
    if not host:
        raise bad_url(url, "no host named")
    port_text = _port_text(parts.netloc)
    if port_text is None:
        if scheme == "tcp":
            raise bad_url(url, "a tcp URL needs a port, e.g. tcp://127.0.0.1:5554")
        port = FASTBOOT_TCP_PORT
    else:
        port = _int_in_range(url, port_text, "port", 1, 65535)
    params = _parse_query(url, parts.query, scheme)
    return DeviceUrl(scheme=scheme, raw=url, host=host, port=port, params=params)


def _split(url: str, text: str) -> SplitResult:
    """urlsplit, with its ValueError (e.g. an unclosed IPv6 bracket) turned into ours."""
    try:
        return urlsplit(text)
    except ValueError as exc:
        raise bad_url(url, str(exc)) from None


def _port_text(netloc: str) -> str | None:
    """The text after the host's colon, or None when there is no colon (IPv6 aware)."""
    rest = netloc.rsplit("]", 1)[1] if netloc.startswith("[") else netloc
    if ":" not in rest:
        return None
    return rest.rsplit(":", 1)[1]


def _parse_usb(url: str, text: str) -> DeviceUrl:
    """``usb://``, ``usb://VID:PID``, ``usb://BUS-PORT.PORT``; optional ``?serial=``."""
    body = text.split("://", 1)[1]
    if "#" in body:
        raise bad_url(url, "a usb URL has no #fragment")
    where, _, query = body.partition("?")
    where = where.rstrip("/")
    params = _parse_query(url, query, "usb")
    if not where:
        return DeviceUrl(scheme="usb", raw=url, params=params)
    match = _VIDPID_RE.match(where)
    if match:
        return DeviceUrl(scheme="usb", raw=url, vid=int(match.group(1), 16),
                         pid=int(match.group(2), 16), params=params)
    if _PORT_PATH_RE.match(where):
        return DeviceUrl(scheme="usb", raw=url, path=where, params=params)
    raise bad_url(url, f"{where!r} is neither VID:PID (hex, e.g. 1209:0001) "
                       "nor a bus-port path (e.g. 1-2.3)")


def _parse_query(url: str, query: str, scheme: str) -> dict[str, str]:
    """Validate query parameters against the scheme's list; no duplicates, no unknowns."""
    if not query:
        return {}
    allowed = ALLOWED_PARAMS[scheme]
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise bad_url(url, f"unknown parameter {key!r} for {scheme}:// (known: {known})")
        if key in params:
            raise bad_url(url, f"parameter {key!r} given twice")
        if value == "":
            raise bad_url(url, f"parameter {key!r} has no value")
        params[key] = value
    if "baud" in params:
        params["baud"] = str(_int_in_range(url, params["baud"], "baud rate",
                                           MIN_BAUD, MAX_BAUD))
    return params


def _int_in_range(url: str, text: str, what: str, low: int, high: int) -> int:
    """A plain decimal integer within [low, high]; no signs, spaces or fractions."""
    if not _DIGITS_RE.match(text):
        raise bad_url(url, f"{what} {text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise bad_url(url, f"{what} {value} is out of range {low}..{high}")
    return value
