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
    rfc2217://HOST:PORT[?baud=N]        (a port shared by ser2net: zflash's RFC 2217 client)
    socket://...  spy://...  loop://     (handed verbatim to pyserial)
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
PASSTHROUGH_SCHEMES = frozenset({"socket", "spy", "loop"})

#: Query parameters each zflash scheme accepts; anything else is rejected as a likely typo.
ALLOWED_PARAMS: dict[str, frozenset[str]] = {
    "serial": frozenset({"baud"}),
    "edl+serial": frozenset({"baud"}),
    "tcp": frozenset(),
    "fastboot+tcp": frozenset(),
    "usb": frozenset({"serial"}),
    # ign_set_control / poll_modem: pyserial's options (labgrid writes the first); accepted
    # so the same URL works, and meaningless to zflash's client (transport/rfc2217.py)
    "rfc2217": frozenset({"baud", "timeout", "ign_set_control", "poll_modem"}),
}
#: Parameters that are flags: given without a value.
FLAG_PARAMS = frozenset({"ign_set_control", "poll_modem"})
MAX_NEGOTIATION_TIMEOUT = 600

ACCEPTED_FORMS = ("serial:///dev/ttyUSB0[?baud=N], /dev/tty*, COMn, edl+serial:///dev/ttyX, "
                  "tcp://HOST:PORT, "
                  "fastboot+tcp://HOST[:PORT], usb://[VID:PID][?serial=SN], "
                  "usb://BUS-PORT[.PORT...], rfc2217://HOST:PORT, or a pyserial URL "
                  "(socket://, spy://, loop://)")

# Patterns, not compiled ones: re.match compiles (and caches) each on first use, so a
# command pays only for those its URL needs (a tcp:// URL: just the digits).
_COM_RE = r"(?i)^(?:\\\\\.\\)?COM[0-9]+$"
_VIDPID_RE = r"^([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,4})$"
_PORT_PATH_RE = r"^[0-9]+-[0-9]+(?:\.[0-9]+)*$"
_DIGITS_RE = r"^[0-9]+$"


@dataclass(frozen=True)
class DeviceUrl:
    """A parsed device URL. Only the fields meaningful for ``scheme`` are set."""

    scheme: str  #: serial | edl+serial | tcp | fastboot+tcp | rfc2217 | usb | socket | spy | loop
    raw: str  #: the string as given; pass-through schemes hand this to pyserial unchanged
    path: str = ""  #: serial: the port (/dev/ttyUSB0, COM3); usb: a bus-port path (1-2.3)
    host: str = ""  #: tcp, fastboot+tcp, rfc2217
    port: int | None = None  #: tcp, fastboot+tcp, rfc2217
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
        query = "&".join(k if k in FLAG_PARAMS else f"{k}={quote(v, safe='')}"
                         for k, v in sorted(self.params.items()))
        suffix = f"?{query}" if query else ""
        if self.scheme in ("serial", "edl+serial"):
            return f"{self.scheme}://{quote(self.path, safe='/:.-_+@,')}{suffix}"
        if self.scheme in ("tcp", "fastboot+tcp", "rfc2217"):
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
    if scheme in ("tcp", "fastboot+tcp", "rfc2217"):
        return _parse_tcp(url, text, scheme)
    if scheme == "usb":
        return _parse_usb(url, text)
    if scheme in ("edl+usb", "fastboot+usb"):  # a guess a technician makes: say the real form
        raise bad_url(url, f"unknown scheme {scheme + '://'!r}: over USB zflash tells the mode "
                           "from the device itself; name it usb://VID:PID (a Qualcomm phone "
                           "in EDL: usb://05c6:9008), usb://BUS-PORT, or usb:// if it is "
                           "the only one")
    raise bad_url(url, f"unknown scheme {scheme + '://'!r}")


def _parse_bare(url: str, text: str) -> DeviceUrl:
    """A bare ``/dev/...`` path or ``COMn`` is shorthand for ``serial://``."""
    name, _, query = text.partition("?")
    if not (name.startswith("/dev/") or re.match(_COM_RE, name)):
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
    if re.match(_COM_RE, name.lstrip("/")):
        name = name.lstrip("/")
    if not name or name == "/":
        raise bad_url(url, "no serial port named")
    params = _parse_query(url, parts.query, scheme)
    return DeviceUrl(scheme=scheme, raw=url, path=name, params=params)


def _parse_tcp(url: str, text: str, scheme: str) -> DeviceUrl:
    """``tcp://HOST:PORT``, ``rfc2217://HOST:PORT`` (port required) or
    ``fastboot+tcp://HOST[:PORT]``."""
    parts = _split(url, text)
    if parts.username is not None or parts.password is not None:
        raise bad_url(url, f"user names are not supported in a {scheme} URL")
    if parts.path not in ("", "/") or parts.fragment:
        raise bad_url(url, f"a {scheme} URL is just HOST:PORT")
    host = parts.hostname or ""
    if not host:
        raise bad_url(url, "no host named")
    port_text = _port_text(parts.netloc)
    if port_text is None:
        if scheme != "fastboot+tcp":
            raise bad_url(url, f"a {scheme} URL needs a port, e.g. {scheme}://127.0.0.1:5554")
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
    match = re.match(_VIDPID_RE, where)
    if match:
        return DeviceUrl(scheme="usb", raw=url, vid=int(match.group(1), 16),
                         pid=int(match.group(2), 16), params=params)
    if re.match(_PORT_PATH_RE, where):
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
        if key in FLAG_PARAMS:
            if value:
                raise bad_url(url, f"parameter {key!r} is a flag and takes no value")
        elif value == "":
            raise bad_url(url, f"parameter {key!r} has no value")
        params[key] = value
    if "baud" in params:
        params["baud"] = str(_int_in_range(url, params["baud"], "baud rate",
                                           MIN_BAUD, MAX_BAUD))
    if "timeout" in params:
        params["timeout"] = str(_seconds(url, params["timeout"]))
    return params


def _seconds(url: str, text: str) -> float:
    """A positive number of seconds, at most MAX_NEGOTIATION_TIMEOUT."""
    try:
        value = float(text)
    except ValueError:
        raise bad_url(url, f"timeout {text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_NEGOTIATION_TIMEOUT:  # also refuses nan and inf
        raise bad_url(url, f"timeout {text} is out of range (0, {MAX_NEGOTIATION_TIMEOUT}]")
    return value


def _int_in_range(url: str, text: str, what: str, low: int, high: int) -> int:
    """A plain decimal integer within [low, high]; no signs, spaces or fractions."""
    if not re.match(_DIGITS_RE, text):
        raise bad_url(url, f"{what} {text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise bad_url(url, f"{what} {value} is out of range {low}..{high}")
    return value
