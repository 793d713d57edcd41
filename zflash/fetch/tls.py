"""TLS for update servers: a strict client context, key pins, and a pinned HTTPS connection.

A pin is the SHA-256 of the server certificate's SubjectPublicKeyInfo (``sha256/BASE64``, as
in HPKP and curl's ``--pinnedpubkey``): it names the key, so a server can renew its
certificate without breaking clients, and rotation works by listing the next key's pin
beforehand. The pin is checked inside ``connect()``, right after the handshake and before the
request is even sent, so no byte of a body from an unpinned server is ever read.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import SplitResult, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from zflash.errors import Code, ZflashError
from zflash.fetch.config import default_pin_file
from zflash.fetch.events import EventSink, ignore

PIN_PREFIX = "sha256/"
MAX_PIN_FILE = 1 << 20
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class HttpsUrl:
    """An ``https://`` URL split into what a connection needs."""

    host: str
    port: int
    target: str  # path and query, as sent in the request line
    text: str

    @property
    def origin(self) -> str:
        return f"https://{_host_for_url(self.host)}:{self.port}"

    @property
    def basename(self) -> str:
        return self.target.split("?", 1)[0].rsplit("/", 1)[-1]


def parse_url(url: str) -> HttpsUrl:
    """Accept only https:// URLs; plain http is a TLS error, anything else a usage error."""
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise ZflashError(Code.USAGE, f"bad URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "http":
        raise ZflashError(Code.TLS, f"{url}: plain http:// is refused; update servers are "
                                    "reached over https:// only")
    if scheme != "https" or not parts.hostname:
        raise ZflashError(Code.USAGE, f"{url!r} is not an https:// URL")
    if parts.username or parts.password:
        raise ZflashError(Code.USAGE, f"{url}: credentials in the URL are not supported")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7f for ch in url):
        raise ZflashError(Code.USAGE, f"{url!r}: URL contains spaces or control characters")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return HttpsUrl(parts.hostname, port, target, url)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ------------------------------------------------------------------------------------ pins
def parse_pin(text: str) -> str:
    """Normalise a ``sha256/BASE64`` pin; anything else is a usage error."""
    value = text.strip()
    if not value.startswith(PIN_PREFIX):
        raise ZflashError(Code.USAGE, f"pin {text!r} must look like sha256/BASE64")
    try:
        digest = base64.b64decode(value[len(PIN_PREFIX):], validate=True)
    except ValueError:
        raise ZflashError(Code.USAGE, f"pin {text!r}: not valid base64") from None
    if len(digest) != 32:
        raise ZflashError(Code.USAGE, f"pin {text!r}: a SHA-256 digest is 32 bytes, "
                                      f"got {len(digest)}")
    return PIN_PREFIX + base64.b64encode(digest).decode()


def pin_of_certificate(der: bytes) -> str:
    """The pin of a DER certificate: SHA-256 over its SubjectPublicKeyInfo."""
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return PIN_PREFIX + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def pin_of_pem_file(path: Path) -> str:
    """Pin of the first certificate in a PEM file (for `zflash serve` to print)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: not a readable PEM certificate "
                                                f"({exc})") from None
    return pin_of_certificate(cert.public_bytes(serialization.Encoding.DER))


def load_pin_file(path: Path, required: bool) -> dict[str, tuple[str, ...]]:
    """Pins per server from ``{"host": [pins], "host:port": [pins]}``; absent file is empty."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_PIN_FILE + 1)
    except FileNotFoundError:
        if required:
            raise ZflashError(Code.FILE_UNREADABLE, f"{path}: no such pin file") from None
        return {}
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None
    try:
        data: Any = json.loads(raw)
        if len(raw) > MAX_PIN_FILE or not isinstance(data, dict):
            raise ValueError("expected a JSON object of server -> list of pins")
        result = {}
        for server, pins in data.items():
            if not isinstance(pins, list) or not all(isinstance(p, str) for p in pins):
                raise ValueError(f"{server!r}: expected a list of pin strings")
            result[server.lower()] = tuple(parse_pin(p) for p in pins)
        return result
    except (ValueError, RecursionError) as exc:
        raise ZflashError(Code.USAGE, f"{path}: {exc}") from None


@dataclass(frozen=True)
class TlsPolicy:
    """How to reach update servers: pins, pin-only mode, CA file, timeout.

    ``pins`` apply to every server; ``server_pins`` (from the pin file) add pins per
    ``host`` or ``host:port``.
    """

    pins: tuple[str, ...] = ()
    server_pins: tuple[tuple[str, tuple[str, ...]], ...] = ()
    pin_only: bool = False
    ca_file: Path | None = None
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def build(cls, pins: Iterable[str] = (), pin_file: Path | None = None,
              pin_only: bool = False, ca_file: Path | None = None,
              timeout: float = DEFAULT_TIMEOUT) -> "TlsPolicy":
        file_pins = load_pin_file(pin_file or default_pin_file(), required=pin_file is not None)
        return cls(tuple(parse_pin(p) for p in pins), tuple(sorted(file_pins.items())),
                   pin_only, ca_file, timeout)

    def pins_for(self, host: str, port: int) -> frozenset[str]:
        table = dict(self.server_pins)
        host = host.lower()
        return frozenset(self.pins + table.get(f"{_host_for_url(host)}:{port}", ())
                         + table.get(host, ()))


def client_context(policy: TlsPolicy) -> ssl.SSLContext:
    """TLS 1.2 minimum (1.3 negotiated whenever the server has it), no renegotiation.

    Pin-only mode turns CA and hostname checks off; the pin, which is then mandatory, is the
    only authentication, and the handshake still proves the server holds the pinned key.
    """
    try:
        context = ssl.create_default_context(
            cafile=str(policy.ca_file) if policy.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"CA file {policy.ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    if policy.pin_only:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class PinnedConnection(http.client.HTTPSConnection):
    """An HTTPS connection that refuses the server before any request unless its key is pinned."""

    def __init__(self, url: HttpsUrl, policy: TlsPolicy, on_event: EventSink = ignore) -> None:
        self.pins = policy.pins_for(url.host, url.port)
        if not self.pins:
            raise ZflashError(Code.USAGE, f"no pin configured for {url.host}:{url.port}; pass "
                                          f"--pin sha256/... or add it to {default_pin_file()}")
        super().__init__(url.host, url.port, timeout=policy.timeout,
                         context=client_context(policy))
        self.url = url
        self.on_event = on_event

    def connect(self) -> None:
        where = f"{self.url.host}:{self.url.port}"
        try:
            super().connect()
        except ssl.SSLCertVerificationError as exc:
            raise ZflashError(Code.TLS, f"{where}: certificate rejected "
                                        f"({exc.verify_message or exc.reason}); a private "
                                        "server is reached only in pin-only mode with its "
                                        "pin") from None
        except ssl.SSLError as exc:
            reason = str(exc.reason or exc)
            if "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason:
                reason += "; the server does not offer TLS 1.2 or 1.3"
            raise ZflashError(Code.TLS, f"{where}: TLS handshake failed ({reason})") from None
        except OSError as exc:
            raise ZflashError(Code.DOWNLOAD, f"cannot connect to {where}: "
                                             f"{exc.strerror or exc}") from None
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        actual = pin_of_certificate(der) if der else "(no certificate)"
        if actual not in self.pins:
            self.close()
            raise ZflashError(Code.TLS_PIN, f"{where} presented key {actual}, which is not "
                                            "among the configured pins")
        cipher = sock.cipher()
        self.on_event({"event": "connected", "server": where, "tls_version": sock.version(),
                       "cipher": cipher[0] if cipher else None, "pin": actual})
