"""Signing keys and the host trust store.

Three algorithms through ``cryptography``: Ed25519 (default), ECDSA P-256 with SHA-256 and
RSA-PSS with SHA-256 (3072 bits and up). A key's id is the SHA-256 of its DER
SubjectPublicKeyInfo, so the id names the key itself, not a file or a label.

Trust comes only from the host: files given with ``--trust`` plus every ``*.pem`` in the
trust directory. A key that arrives inside a package is never consulted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from cryptography.hazmat.primitives.asymmetric import ed25519

from zflash.errors import Code, ZflashError
from zflash import lazy_getattr
from zflash.package.names import (ALG_IDS, ALGORITHMS, MAX_RSA_BITS, MIN_RSA_BITS,  # noqa: F401
                                  default_trust_dir)

if TYPE_CHECKING:
    from zflash.package.key_types import PrivateKey, PublicKey

# cryptography's ec and rsa are imported only where an ECDSA or RSA key is met (D205); the
# unions that name their classes are built on first use
__getattr__ = lazy_getattr(__name__, dict.fromkeys(("PrivateKey", "PublicKey"),
                                                   "zflash.package.key_types"))

MAX_KEY_FILE = 64 << 10

#: The DER SubjectPublicKeyInfo of an Ed25519 key is this fixed 12-byte header (SEQUENCE,
#: AlgorithmIdentifier id-Ed25519 1.3.101.112 with no parameters, BIT STRING of 33 bytes)
#: and the 32-byte key (RFC 8410 section 4): one canonical encoding, no choices.
ED25519_SPKI_HEADER = bytes.fromhex("302a300506032b6570032100")
PEM_PUBLIC_BEGIN, PEM_PUBLIC_END = b"-----BEGIN PUBLIC KEY-----", b"-----END PUBLIC KEY-----"


def algorithm_of(key: PrivateKey | PublicKey) -> str:
    """The zflash algorithm name; unsupported curves and small RSA keys are refused."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    from cryptography.hazmat.primitives.asymmetric import ec, rsa  # not for Ed25519 (D205)
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ZflashError(Code.BAD_KEY_FILE, f"ECDSA curve {key.curve.name} is not P-256")
        return "ecdsa-p256"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise ZflashError(Code.BAD_KEY_FILE, f"RSA key of {key.key_size} bits; "
                                                 f"{MIN_RSA_BITS}..{MAX_RSA_BITS} required")
        return "rsa-pss"
    raise ZflashError(Code.BAD_KEY_FILE, f"unsupported key type {type(key).__name__}")


def key_id(key: PrivateKey | PublicKey) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo of the (public half of the) key."""
    public = key.public_key() if hasattr(key, "private_bytes") else key
    if isinstance(public, ed25519.Ed25519PublicKey):  # its one encoding, built directly
        return hashlib.sha256(ED25519_SPKI_HEADER + public.public_bytes_raw()).digest()
    from cryptography.hazmat.primitives import serialization
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def generate(algorithm: str = "ed25519", rsa_bits: int = MIN_RSA_BITS) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives.asymmetric import ec, rsa  # not for Ed25519 (D205)
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa-pss":
        if not MIN_RSA_BITS <= rsa_bits <= MAX_RSA_BITS:
            raise ZflashError(Code.USAGE, f"RSA size must be {MIN_RSA_BITS}..{MAX_RSA_BITS}")
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise ZflashError(Code.USAGE, f"unknown algorithm {algorithm!r}; use one of {ALGORITHMS}")


def private_pem(key: PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(key: PrivateKey | PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization
    public = key.public_key() if hasattr(key, "private_bytes") else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def write_keypair(key: PrivateKey, private_path: Path, public_path: Path,
                  force: bool = False) -> None:
    """Write the private key with mode 0600 from the start (never world-readable)."""
    for path in (private_path, public_path):
        if path.exists() and not force:
            raise ZflashError(Code.FILE_EXISTS, str(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(private_path, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(private_pem(key))
        public_path.write_bytes(public_pem(key))
    except OSError as exc:
        raise ZflashError(Code.FILE_UNWRITABLE, f"{exc.filename}: {exc.strerror}") from None


def _read_key_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ZflashError(Code.FILE_UNREADABLE, f"{path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise ZflashError(Code.BAD_KEY_FILE, f"{path}: larger than {MAX_KEY_FILE} bytes")
    return data


def load_private_key(path: Path) -> PrivateKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ZflashError(Code.BAD_KEY_FILE, f"{path}: not an unencrypted PEM private key "
                                             f"({exc})") from None
    algorithm_of(key)
    return key  # type: ignore[return-value]


def load_public_key(path: Path) -> PublicKey:
    """A public key PEM. A private key is refused (BAD_KEY_FILE): a trust key is handed
    around and copied into trust directories, and a signing key must never travel that way;
    take its public half (``zflash keygen`` writes it next to the private key)."""
    data = _read_key_file(path)
    if b"PRIVATE KEY-----" in data:
        raise ZflashError(Code.BAD_KEY_FILE,
                          f"{path} is a private key; trust its public key instead (the "
                          "*.pub.pem `zflash keygen` wrote next to it), and keep the private "
                          "key where only the signer can read it")
    key = _canonical_ed25519(data)
    if key is None:
        key = _parse_public_pem(data, path)
    algorithm_of(key)
    return key  # type: ignore[return-value]


def _canonical_ed25519(data: bytes) -> ed25519.Ed25519PublicKey | None:
    """The key of a file that is exactly one PEM block of a canonical Ed25519
    SubjectPublicKeyInfo (what `zflash keygen` and OpenSSL write); None for anything else,
    which goes to the general parser. Why: that parser (``cryptography``'s serialization
    module) costs ~20 ms of start-up, a tenth of a re-flash, and the one encoding of an
    Ed25519 key needs none of it (D189)."""
    lines = data.strip().split(b"\n")
    if len(lines) < 3 or lines[0].rstrip(b"\r") != PEM_PUBLIC_BEGIN or \
            lines[-1].rstrip(b"\r") != PEM_PUBLIC_END:
        return None
    try:
        der = base64.b64decode(b"".join(line.strip() for line in lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(der) != len(ED25519_SPKI_HEADER) + 32 or not der.startswith(ED25519_SPKI_HEADER):
        return None
    return ed25519.Ed25519PublicKey.from_public_bytes(der[len(ED25519_SPKI_HEADER):])


def _parse_public_pem(data: bytes, path: Path) -> PublicKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    try:
        return serialization.load_pem_public_key(data)  # type: ignore[return-value]
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ZflashError(Code.BAD_KEY_FILE, f"{path}: not a PEM public key ({exc})") from None


@dataclass(frozen=True)
class TrustedKey:
    key_id: bytes
    algorithm: str
    public_key: PublicKey
    source: str


class TrustStore:
    """The host's trusted public keys, by key id."""

    def __init__(self, keys: Iterable[TrustedKey] = ()) -> None:
        self._keys: dict[bytes, TrustedKey] = {k.key_id: k for k in keys}

    @classmethod
    def load(cls, files: Iterable[Path] = (), directory: Path | None = None,
             use_default_dir: bool = True) -> "TrustStore":
        """Keys from explicit files plus every ``*.pem`` in the trust directory."""
        paths = list(files)
        folder = directory if directory is not None else (
            default_trust_dir() if use_default_dir else None)
        if folder is not None and folder.is_dir():
            paths.extend(sorted(folder.glob("*.pem")))
        store = cls()
        for path in paths:
            store.add(load_public_key(path), str(path))
        return store

    def add(self, key: PublicKey, source: str = "") -> TrustedKey:
        entry = TrustedKey(key_id(key), algorithm_of(key), key, source)
        self._keys[entry.key_id] = entry
        return entry

    def get(self, kid: bytes) -> TrustedKey | None:
        return self._keys.get(kid)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._keys.values())
