"""Fetching over real TLS on loopback: pins, TLS versions, certificates, resume, catalogs.

Every server here is zflash's own workshop server (zflash.fetch.server) on 127.0.0.1, in a
thread, with certificates made by the fixtures below; handler subclasses inject the faults
(cut connections, ignored ranges, chunked bodies, tampered bytes).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import REPO, SAMPLES, SIGNING_KEY, SIGNING_PUB, UNTRUSTED_KEY
from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.fetch import FetchConfig, TlsPolicy, fetch_catalog, fetch_latest, fetch_package
from zflash.fetch.builder import build_catalog
from zflash.fetch.catalog import Catalog, CatalogEntry, decode
from zflash.fetch.select import select_package, version_key
from zflash.fetch.server import RangeRequestHandler, WorkshopServer, make_server, server_context
from zflash.fetch.tls import parse_pin, parse_url, pin_of_pem_file
from zflash.package import keys as keymod

GOOD = "zx-demo-1.1.0.zpk"
NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


# ------------------------------------------------------------------------------ certificates
@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    pin: str


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(folder: Path, stem: str, cert: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> CertFiles:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(keymod.private_pem(key))  # type: ignore[arg-type]
    return CertFiles(cert_path, key_path, pin_of_pem_file(cert_path))


def _leaf(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], names: list[x509.GeneralName],
          not_before: datetime.datetime, not_after: datetime.datetime,
          ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("zflash test server"))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    """A test CA; good, expired and wrong-host leaves it signed; one self-signed server."""
    folder = tmp_path_factory.mktemp("certs")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name("zflash TEST-ONLY CA"))
               .issuer_name(_name("zflash TEST-ONLY CA")).public_key(ca_key.public_key())
               .serial_number(1).not_valid_before(NOW - DAY).not_valid_after(NOW + 30 * DAY)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                            False, False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                              critical=False)
               .sign(ca_key, hashes.SHA256()))
    ca = (ca_cert, ca_key)
    local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    result = {"ca": _write(folder, "ca", ca_cert, ca_key),
              "good": _write(folder, "good", *_leaf(ca, local, NOW - DAY, NOW + 10 * DAY)),
              "expired": _write(folder, "expired",
                                *_leaf(ca, local, NOW - 10 * DAY, NOW - DAY)),
              "wronghost": _write(folder, "wronghost",
                                  *_leaf(ca, [x509.DNSName("updates.example.com")],
                                         NOW - DAY, NOW + 10 * DAY))}
    self_key = ec.generate_private_key(ec.SECP256R1())
    self_cert = (x509.CertificateBuilder().subject_name(_name("bench server"))
                 .issuer_name(_name("bench server")).public_key(self_key.public_key())
                 .serial_number(7).not_valid_before(NOW - DAY).not_valid_after(NOW + DAY)
                 .add_extension(x509.SubjectAlternativeName(local), critical=False)
                 .sign(self_key, hashes.SHA256()))
    result["selfsigned"] = _write(folder, "selfsigned", self_cert, self_key)
    return result


# ------------------------------------------------------------------------------ servers
class LoggingHandler(RangeRequestHandler):
    """Records (path, Range header) of every request on ``server.requests``."""

    def serve(self, body: bool) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        super().serve(body)


def cut_after(limit: int, times: int = 1) -> type[RangeRequestHandler]:
    """Closes the connection after ``limit`` body bytes, for the first ``times`` answers."""
    state = {"left": times}

    class Cutting(LoggingHandler):
        def copy_body(self, source: BinaryIO, length: int) -> None:
            if state["left"] > 0:
                state["left"] -= 1
                self.wfile.write(source.read(min(limit, length)))
                self.wfile.flush()
                self.close_connection = True
                return
            super().copy_body(source, length)
    return Cutting


class IgnoresRange(LoggingHandler):
    """Answers every request with 200 and the whole file, as servers without Range do."""

    def wanted_range(self, size: int, etag: str, modified: str) -> Any:
        return None


class Chunked(LoggingHandler):
    """Sends the body with chunked transfer coding and no Content-Length."""

    def serve(self, body: bool) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))  # type: ignore[attr-defined]
        path = self.resolve()
        assert path is not None
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for start in range(0, len(data), 50_000):
            piece = data[start:start + 50_000]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")


def tampering(times: int) -> type[RangeRequestHandler]:
    """Flips one payload byte in the first ``times`` answers (a man in the middle's edit)."""
    state = {"left": times}

    class Tampering(LoggingHandler):
        def copy_body(self, source: BinaryIO, length: int) -> None:
            data = bytearray(source.read(length))
            if state["left"] > 0:
                state["left"] -= 1
                data[-100] ^= 0x55
            self.wfile.write(data)
    return Tampering


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """What the server publishes: the sample packages it is meant to list."""
    out = tmp_path / "www"
    out.mkdir()
    for name in (GOOD, "zx-demo-1.2.0-newer.zpk", "zx-demo-1.0.0-rollback.zpk",
                 "zx-demo-1.1.0-other-baseband.zpk", "zx-demo-1.1.0-corrupt-block.zpk"):
        shutil.copy(SAMPLES / name, out / name)
    return out


@pytest.fixture
def serve(certs: dict[str, CertFiles]) -> Iterator[Callable[..., WorkshopServer]]:
    """Start servers in threads; all are shut down after the test."""
    started: list[WorkshopServer] = []

    def start(directory: Path, handler: type[RangeRequestHandler] = LoggingHandler,
              cert: str = "good", context: ssl.SSLContext | None = None) -> WorkshopServer:
        files = certs[cert]
        server = make_server(directory, context or server_context(files.cert, files.key),
                             handler=handler, quiet=True)
        server.requests = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def make_config(tmp_path: Path, certs: dict[str, CertFiles], pin: str | None = None,
                pin_only: bool = False, reconnects: int = 3) -> tuple[FetchConfig, list[dict]]:
    events: list[dict[str, Any]] = []
    policy = TlsPolicy(pins=(pin or certs["good"].pin,), pin_only=pin_only,
                       ca_file=certs["ca"].cert, timeout=10)
    trust = keymod.TrustStore()
    trust.add(keymod.load_public_key(SIGNING_PUB))
    config = FetchConfig(policy=policy, trust=trust, cache_dir=tmp_path / "cache",
                         state_file=tmp_path / "state" / "catalogs.json",
                         on_event=events.append, reconnects=reconnects)
    return config, events


def code_of(call: Callable[[], Any]) -> ZflashError:
    with pytest.raises(ZflashError) as info:
        call()
    return info.value


def cache_files(config: FetchConfig) -> list[str]:
    """Cached files and leftovers; the lock directory (D55) is neither."""
    if not config.cache_dir.exists():
        return []
    return sorted(n for n in os.listdir(config.cache_dir) if n != ".locks")


# ------------------------------------------------------------------------------ pins and TLS
def test_pinned_fetch_succeeds_and_verifies(tmp_path, certs, folder, serve):
    server = serve(folder)
    config, events = make_config(tmp_path, certs)
    result = fetch_package(server.url + GOOD, config)
    assert result.path == config.cache_dir / GOOD
    assert result.path.read_bytes() == (SAMPLES / GOOD).read_bytes()
    assert cache_files(config) == [GOOD]  # no .part or sidecar left
    kinds = [e["event"] for e in events]
    assert kinds[0] == "connected" and "verified" in kinds and kinds[-1] == "done"
    assert events[0]["tls_version"] in ("TLSv1.3", "TLSv1.2")
    assert events[0]["tls_version"] == "TLSv1.3"  # both ends support it: 1.3 is preferred
    assert events[0]["pin"] == certs["good"].pin


def test_wrong_pin_is_refused_and_leaves_nothing(tmp_path, certs, folder, serve):
    server = serve(folder)
    config, _ = make_config(tmp_path, certs, pin=certs["selfsigned"].pin)
    error = code_of(lambda: fetch_package(server.url + GOOD, config))
    assert error.code == Code.TLS_PIN
    assert cache_files(config) == []
    assert server.requests == []  # refused after the handshake, before any request was sent


def test_rotation_any_configured_pin_matches(tmp_path, certs, folder, serve):
    server = serve(folder)
    config, _ = make_config(tmp_path, certs)
    config.policy = TlsPolicy(pins=(certs["selfsigned"].pin, certs["good"].pin),
                              ca_file=certs["ca"].cert)
    assert fetch_package(server.url + GOOD, config).path.is_file()


def test_plain_http_and_missing_pin_are_refused(tmp_path, certs):
    assert code_of(lambda: parse_url("http://127.0.0.1/x.zpk")).code == Code.TLS
    assert code_of(lambda: parse_url("ftp://127.0.0.1/x.zpk")).code == Code.USAGE
    config, _ = make_config(tmp_path, certs)
    config.policy = TlsPolicy(ca_file=certs["ca"].cert)
    error = code_of(lambda: fetch_package("https://127.0.0.1:1/x.zpk", config))
    assert error.code == Code.USAGE and "no pin" in error.detail
    assert code_of(lambda: parse_pin("sha256/abc")).code == Code.USAGE


def test_pin_file_is_per_server(tmp_path, certs, folder, serve):
    server = serve(folder)
    pins = tmp_path / "pins.json"
    port = server.server_address[1]
    pins.write_text(json.dumps({f"127.0.0.1:{port}": [certs["good"].pin],
                                "other.example": [certs["selfsigned"].pin]}))
    config, _ = make_config(tmp_path, certs)
    config.policy = TlsPolicy.build(pin_file=pins, ca_file=certs["ca"].cert)
    assert fetch_package(server.url + GOOD, config).path.is_file()
    pins.write_text(json.dumps({"127.0.0.1": [certs["selfsigned"].pin]}))
    config.policy = TlsPolicy.build(pin_file=pins, ca_file=certs["ca"].cert)
    assert code_of(lambda: fetch_package(server.url + GOOD, config)).code == Code.TLS_PIN


def _tls11_only_context(files: CertFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 only offers TLS < 1.2 at level 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def test_server_offering_only_tls11_is_refused(tmp_path, certs, folder, serve):
    server = serve(folder, context=_tls11_only_context(certs["good"]))
    # Control: a client that still allows TLS 1.1 really negotiates TLS 1.1 with this server
    # (local OpenSSL 3.0 can offer it at security level 0), so the refusal below is about the
    # version and not about a server that cannot talk at all. zflash's client (minimum 1.2)
    # then gets the server's TLSV1_ALERT_PROTOCOL_VERSION: nothing is negotiated.
    legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    legacy.check_hostname, legacy.verify_mode = False, ssl.CERT_NONE
    legacy.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy.minimum_version = ssl.TLSVersion.TLSv1
    try:
        with socket.create_connection(server.server_address[:2], timeout=5) as raw, \
                legacy.wrap_socket(raw) as tls:
            negotiated = tls.version()
    except ssl.SSLError:
        negotiated = None  # this OpenSSL build cannot do TLS 1.1 at all
    if negotiated is not None:
        assert negotiated == "TLSv1.1"
    config, _ = make_config(tmp_path, certs)
    error = code_of(lambda: fetch_package(server.url + GOOD, config))
    assert error.code == Code.TLS
    assert "does not offer TLS 1.2 or 1.3" in error.detail
    assert cache_files(config) == []


@pytest.mark.parametrize("cert", ["expired", "wronghost", "selfsigned"])
def test_bad_certificate_refused_unless_pin_only_and_pin_matches(tmp_path, certs, folder,
                                                                 serve, cert):
    server = serve(folder, cert=cert)
    url = server.url + GOOD
    # Normal mode: CA and hostname checks are on, even with the right pin.
    config, _ = make_config(tmp_path, certs, pin=certs[cert].pin)
    error = code_of(lambda: fetch_package(url, config))
    assert error.code == Code.TLS and "certificate" in error.detail
    # Pin-only with a pin that does not match: still refused, by the pin.
    config, _ = make_config(tmp_path, certs, pin=certs["good"].pin, pin_only=True)
    assert code_of(lambda: fetch_package(url, config)).code == Code.TLS_PIN
    assert cache_files(config) == []
    # Pin-only, chosen explicitly, with the server's own pin: accepted.
    config, _ = make_config(tmp_path, certs, pin=certs[cert].pin, pin_only=True)
    assert fetch_package(url, config).path.read_bytes() == (SAMPLES / GOOD).read_bytes()


# ------------------------------------------------------------------------------ resume
def test_cut_transfer_resumes_with_range_in_the_same_run(tmp_path, certs, folder, serve):
    server = serve(folder, handler=cut_after(100_000))
    config, events = make_config(tmp_path, certs)
    result = fetch_package(server.url + GOOD, config)
    assert result.path.read_bytes() == (SAMPLES / GOOD).read_bytes()
    assert server.requests == [(f"/{GOOD}", None), (f"/{GOOD}", "bytes=100000-")]
    assert [e for e in events if e["event"] == "download"][1]["resumed"] is True


def test_cut_transfer_resumes_on_a_later_run(tmp_path, certs, folder, serve):
    server = serve(folder, handler=cut_after(120_000, times=99))
    config, _ = make_config(tmp_path, certs, reconnects=0)
    error = code_of(lambda: fetch_package(server.url + GOOD, config))
    assert error.code == Code.DOWNLOAD and "resume" in error.detail
    assert (config.cache_dir / f"{GOOD}.part").stat().st_size == 120_000
    assert not (config.cache_dir / GOOD).exists()
    server.RequestHandlerClass = LoggingHandler  # the network is healthy again
    result = fetch_package(server.url + GOOD, config)
    assert result.path.read_bytes() == (SAMPLES / GOOD).read_bytes()
    assert server.requests[-1] == (f"/{GOOD}", "bytes=120000-")
    assert cache_files(config) == [GOOD]


def test_range_answered_with_whole_body_restarts_cleanly(tmp_path, certs, folder, serve):
    server = serve(folder, handler=cut_after(90_000))
    config, events = make_config(tmp_path, certs, reconnects=0)
    assert code_of(lambda: fetch_package(server.url + GOOD, config)).code == Code.DOWNLOAD
    server.RequestHandlerClass = IgnoresRange
    result = fetch_package(server.url + GOOD, config)
    assert result.path.read_bytes() == (SAMPLES / GOOD).read_bytes()
    assert server.requests[-1] == (f"/{GOOD}", "bytes=90000-")
    assert any(e["event"] == "restart" for e in events)


def test_complete_part_file_gets_416_and_is_used(tmp_path, certs, folder, serve):
    server = serve(folder)
    config, _ = make_config(tmp_path, certs)
    config.cache_dir.mkdir()
    (config.cache_dir / f"{GOOD}.part").write_bytes((SAMPLES / GOOD).read_bytes())
    (config.cache_dir / f"{GOOD}.part.json").write_text(json.dumps({"url": server.url + GOOD}))
    result = fetch_package(server.url + GOOD, config)
    assert result.path.read_bytes() == (SAMPLES / GOOD).read_bytes()
    size = (SAMPLES / GOOD).stat().st_size
    assert server.requests == [(f"/{GOOD}", f"bytes={size}-")]


def test_chunked_body(tmp_path, certs, folder, serve):
    server = serve(folder, handler=Chunked)
    config, _ = make_config(tmp_path, certs)
    assert fetch_package(server.url + GOOD, config).path.read_bytes() == \
        (SAMPLES / GOOD).read_bytes()


# ------------------------------------------------------------------------------ corruption
def test_tampered_once_is_fetched_again(tmp_path, certs, folder, serve):
    server = serve(folder, handler=tampering(1))
    config, events = make_config(tmp_path, certs)
    result = fetch_package(server.url + GOOD, config)
    assert result.path.read_bytes() == (SAMPLES / GOOD).read_bytes()
    assert len(server.requests) == 2
    assert [e["code"] for e in events if e["event"] == "retry"] == [Code.SIGNATURE]


def test_tampered_twice_stops_with_9012(tmp_path, certs, folder, serve):
    server = serve(folder, handler=tampering(2))
    config, _ = make_config(tmp_path, certs)
    assert code_of(lambda: fetch_package(server.url + GOOD, config)).code == Code.SIGNATURE
    assert len(server.requests) == 2
    assert cache_files(config) == []


def test_corrupt_package_on_server_is_9012_after_two_downloads(tmp_path, certs, folder, serve):
    server = serve(folder)
    config, _ = make_config(tmp_path, certs)
    name = "zx-demo-1.1.0-corrupt-block.zpk"
    assert code_of(lambda: fetch_package(server.url + name, config)).code == Code.SIGNATURE
    assert len(server.requests) == 2 and cache_files(config) == []


# ------------------------------------------------------------------------------ catalog
def _publish(folder: Path, version: int, now: int | None = None, lifetime: int = 86400,
             key: Path = SIGNING_KEY) -> None:
    trust = keymod.TrustStore()
    trust.add(keymod.load_public_key(SIGNING_PUB))
    (folder / "zx-demo-1.1.0-corrupt-block.zpk").unlink(missing_ok=True)
    build_catalog(folder, [keymod.load_private_key(key)], folder / "catalog.json", trust,
                  version=version, lifetime=lifetime, now=now)


def _facts(baseband: str = "ZXB-100", rollback: dict[int, int] | None = None,
           hw: str = "A01") -> DeviceFacts:
    return DeviceFacts(product="zx-demo", hardware_revision=hw, baseband=baseband,
                       serial="T1", protocol_version=1, flash_size=1 << 30, cache_size=1 << 20,
                       cache_free=1 << 20, rollback_indexes=rollback or {0: 2})


def test_catalog_picks_newest_compatible_and_downloads_it(tmp_path, certs, folder, serve):
    _publish(folder, version=5)
    server = serve(folder)
    config, events = make_config(tmp_path, certs)
    entry, result = fetch_latest(server.url + "catalog.json", _facts(), config)
    assert entry.name == "zx-demo-1.2.0-newer.zpk" and result.version == "1.2.0"
    assert result.path.read_bytes() == (folder / entry.name).read_bytes()
    state = json.loads(config.state_file.read_text())
    (seen,) = state["seen"].values()
    assert seen == {
        keymod.key_id(keymod.load_public_key(SIGNING_PUB)).hex(): {
            "version": 5, "seen_at": pytest.approx(time.time(), abs=60)}}
    assert [e["event"] for e in events].count("selected") == 1


def test_older_and_expired_catalogs_are_refused(tmp_path, certs, folder, serve):
    server = serve(folder)
    config, _ = make_config(tmp_path, certs)
    url = server.url + "catalog.json"
    _publish(folder, version=5)
    assert fetch_catalog(url, config).catalog.version == 5
    _publish(folder, version=4)
    error = code_of(lambda: fetch_catalog(url, config))
    assert error.code == Code.CATALOG_ROLLBACK and "version 5" in error.detail
    _publish(folder, version=9, now=int(time.time()) - 7200, lifetime=3600)
    assert code_of(lambda: fetch_catalog(url, config)).code == Code.CATALOG_EXPIRED
    _publish(folder, version=6)  # the expired v9 was never remembered
    assert fetch_catalog(url, config).catalog.version == 6
    _publish(folder, version=7, key=UNTRUSTED_KEY)
    assert code_of(lambda: fetch_catalog(url, config)).code == Code.SIGNATURE
    (seen,) = json.loads(config.state_file.read_text())["seen"].values()
    assert [v["version"] for v in seen.values()] == [6]


def test_catalog_tampering_and_malformed_files(folder):
    _publish(folder, version=3)
    raw = (folder / "catalog.json").read_bytes()
    trust = keymod.TrustStore()
    trust.add(keymod.load_public_key(SIGNING_PUB))
    assert decode(raw).verify(trust)
    edited = raw.replace(b'"rollback_index": 1', b'"rollback_index": 7')
    assert edited != raw
    assert code_of(lambda: decode(edited).verify(trust)).code == Code.SIGNATURE
    for bad in (b"[]", b'{"signed": 1.5, "signatures": []}', raw.replace(b"{", b'{"x":1,', 1),
                b'{"signed": {}, "signed": {}}', b"\xff"):
        with pytest.raises(ZflashError) as info:
            decode(bad)
        assert info.value.code == Code.DOWNLOAD


# ------------------------------------------------------------------------------ selection
def _entry(name: str, version: str, rollback: int, baseband: str = "ZXB-100",
           location: int = 0, product: str = "zx-demo", hw: tuple[str, ...] = ("A01", "A02"),
           built: int = 1_700_000_000) -> CatalogEntry:
    return CatalogEntry(name=name, url=name, product=product, hardware_revisions=hw,
                        baseband_ids=(baseband,), version=version, rollback_index=rollback,
                        rollback_location=location, build_time=built, size=1,
                        sha256="0" * 64, manifest_sha256="1" * 64)


def test_select_newest_compatible_skipping_rollback_and_baseband():
    catalog = Catalog(version=1, issued=0, expires=1, packages=(
        _entry("a-1.0.0", "1.0.0", 1),
        _entry("a-1.1.0", "1.1.0", 2),
        _entry("a-1.3.0-zxb200", "1.3.0", 4, baseband="ZXB-200"),
        _entry("a-1.4.0-loc1", "1.4.0", 1, location=1),  # below the index stored at 1
        _entry("a-1.2.0", "1.2.0", 2),
        _entry("b-9.0.0", "9.0.0", 9, product="other"),
        _entry("a-9.0.0-revB", "9.0.0", 9, hw=("B01",)),
    ))
    facts = _facts(rollback={0: 2, 1: 3})
    assert select_package(catalog, facts).name == "a-1.2.0"
    assert select_package(catalog, _facts(baseband="ZXB-200", rollback={0: 2, 1: 3})).name \
        == "a-1.3.0-zxb200"
    error = code_of(lambda: select_package(catalog, _facts(rollback={0: 5, 1: 5})))
    assert error.code == Code.NO_COMPATIBLE_PACKAGE and "a-1.2.0" in error.detail


def test_version_order():
    ordered = ["1.2.0-rc1", "1.2.0", "1.9", "1.10", "2.0.0"]
    shuffled = [ordered[i] for i in (3, 0, 4, 2, 1)]
    assert sorted(shuffled, key=version_key) == ordered


def test_fetch_for_device_reads_the_emulated_device(tmp_path, certs, folder, serve):
    """--for asks a real (emulated) device over ZDL and picks the newest package for it."""
    from emulator_helpers import demo_profile
    from zflash.emulator.runner import EmulatorRunner
    _publish(folder, version=5)
    server = serve(folder)
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        url = runner.start_tcp(0)
        args = ["fetch", server.url + "catalog.json", "--for", url,
                "--pin", certs["good"].pin, "--ca-file", str(certs["ca"].cert),
                "--trust", str(SIGNING_PUB), "--json"]
        done = subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                              check=False, text=True, env=_cli_env(tmp_path), cwd=REPO,
                              timeout=60)
    assert done.returncode == 0, done.stderr
    final = json.loads(done.stdout.strip().splitlines()[-1])
    assert final["event"] == "result" and final["version"] == "1.2.0"


def test_flash_latest_fetches_and_flashes(tmp_path, certs, folder, serve):
    """`flash --latest`: device facts -> catalog choice -> pinned download -> flash."""
    from emulator_helpers import demo_profile
    from zflash.emulator.runner import EmulatorRunner
    _publish(folder, version=5)
    server = serve(folder)
    with EmulatorRunner(tmp_path / "dev", demo_profile()) as runner:
        url = runner.start_tcp(0)
        args = ["flash", "-d", url, "--latest", server.url + "catalog.json",
                "--pin", certs["good"].pin, "--ca-file", str(certs["ca"].cert),
                "--trust", str(SIGNING_PUB), "--json"]
        done = subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                              check=False, text=True, env=_cli_env(tmp_path), cwd=REPO,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        facts = runner.device.facts()
    assert facts.current_slot == "b" and facts.rollback_indexes[0] == 3  # 1.2.0 booted


def _cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_CACHE_HOME=str(tmp_path / "xc"),
               XDG_STATE_HOME=str(tmp_path / "xs"), ZFLASH_TRUST_DIR=str(tmp_path / "trust"))
    env.pop("ZFLASH_CACHE_DIR", None)
    return env


def _zflash(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                          check=False, text=True, env=env, cwd=REPO, timeout=60)


def test_cli_serve_catalog_build_and_fetch(tmp_path, certs, folder):
    env = _cli_env(tmp_path)
    (tmp_path / "trust").mkdir()
    shutil.copy(SIGNING_PUB, tmp_path / "trust" / "zx-demo.pem")
    built = _zflash(env, "catalog", "build", str(folder), "--key", str(SIGNING_KEY),
                    "--version", "3", "--expires", "2d", "--json")
    # The trust directory holds the signer's key, so every package is verified before it is
    # listed: the corrupt sample is refused (exit status is code - 9000).
    assert built.returncode == Code.SIGNATURE - 9000 and "9012" in built.stderr
    (folder / "zx-demo-1.1.0-corrupt-block.zpk").unlink()
    built = _zflash(env, "catalog", "build", str(folder), "--key", str(SIGNING_KEY),
                    "--version", "3", "--expires", "2d", "--json")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["version"] == 3
    server = subprocess.Popen([sys.executable, "-m", "zflash", "serve", str(folder),
                               "--cert", str(certs["selfsigned"].cert),
                               "--key", str(certs["selfsigned"].key), "--port", "0", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=env, cwd=REPO)
    try:
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        assert info["pin"] == certs["selfsigned"].pin
        url = info["url"]
        # Pinned fetch of a package (self-signed bench server: pin-only, chosen explicitly).
        ok = _zflash(env, "fetch", url + GOOD, "--pin", info["pin"], "--pin-only")
        assert ok.returncode == 0, ok.stderr
        fetched = Path(ok.stdout.strip())
        assert fetched == tmp_path / "xc" / "zflash" / "downloads" / GOOD
        assert fetched.read_bytes() == (SAMPLES / GOOD).read_bytes()
        # The same server without pin-only: the self-signed certificate is refused.
        refused = _zflash(env, "fetch", url + GOOD, "--pin", info["pin"])
        assert refused.returncode == Code.TLS - 9000 and "error 9051" in refused.stderr
        # A wrong pin, as JSON: coded error, nothing new in the cache.
        wrong = _zflash(env, "fetch", url + "zx-demo-1.2.0-newer.zpk", "--pin",
                        certs["good"].pin, "--pin-only", "--json")
        assert wrong.returncode == Code.TLS_PIN - 9000
        assert json.loads(wrong.stdout.splitlines()[-1])["code"] == Code.TLS_PIN
        assert sorted(set(os.listdir(fetched.parent)) - {".locks"}) == [GOOD]
        # Catalog selection with explicit facts; the pin comes from the config file.
        (tmp_path / "config" / "zflash").mkdir(parents=True)
        (tmp_path / "config" / "zflash" / "pins.json").write_text(
            json.dumps({"127.0.0.1": [info["pin"]]}))
        chosen = _zflash(env, "fetch", url + "catalog.json", "--pin-only", "--product",
                         "zx-demo", "--hw-rev", "A02", "--baseband", "ZXB-200", "--json")
        assert chosen.returncode == 0, chosen.stderr
        lines = [json.loads(line) for line in chosen.stdout.splitlines()]
        assert lines[-1]["catalog_entry"]["name"] == "zx-demo-1.1.0-other-baseband.zpk"
        none = _zflash(env, "fetch", url + "catalog.json", "--pin-only", "--product",
                       "zx-demo", "--hw-rev", "A01", "--baseband", "ZXB-100",
                       "--rollback-index", "9")
        assert none.returncode == Code.NO_COMPATIBLE_PACKAGE - 9000, none.stderr
        plain = _zflash(env, "fetch", url.replace("https", "http") + GOOD, "--pin",
                        info["pin"])
        assert plain.returncode == Code.TLS - 9000
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout:
            server.stdout.close()


def test_station_latest_fetches_once_for_the_whole_run(tmp_path, certs, folder, serve):
    """`station --latest`: the catalog's package is chosen and downloaded once, then every
    device gets it."""
    from emulator_helpers import demo_profile
    from zflash.emulator.runner import EmulatorRunner
    _publish(folder, version=5)
    server = serve(folder)
    with EmulatorRunner(tmp_path / "dev1", demo_profile(serial="ZXLATEST1")) as one, \
            EmulatorRunner(tmp_path / "dev2", demo_profile(serial="ZXLATEST2")) as two:
        urls = [one.start_tcp(0), two.start_tcp(0)]
        report = tmp_path / "run.json"
        args = ["station", "--latest", server.url + "catalog.json", "-d", urls[0], "-d",
                urls[1], "--once", "--pin", certs["good"].pin, "--ca-file",
                str(certs["ca"].cert), "--trust", str(SIGNING_PUB), "--report", str(report),
                "--json"]
        done = subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                              check=False, text=True, env=_cli_env(tmp_path), cwd=REPO,
                              timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        for runner in (one, two):
            facts = runner.device.facts()
            assert facts.current_slot == "b" and facts.rollback_indexes[0] == 3  # 1.2.0
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events].count("download") == 1  # one download for the run
    assert len(json.loads(report.read_text())["devices"]) == 2
