"""The signed catalog: an update server's index of packages (format: protocols/catalog.md).

The signature covers ``CATALOG_DOMAIN || canonical_json(signed)``, with the same keys and
algorithms as packages but its own domain prefix, so a package manifest signature can never
pass as a catalog signature or the reverse. Parsing is strict (no duplicate keys, no floats,
no unknown fields, bounded sizes) because the bytes come from the network.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from zflash.errors import Code, ZflashError
from zflash.fields import Fields
from zflash.package.format import MAX_ROLLBACK_LOCATION, MAX_SIGNATURES, canonical_json
from zflash.package.keys import ALGORITHMS, PrivateKey, TrustStore
from zflash.package.signing import Signature, sign, verify

CATALOG_DOMAIN = b"zflash-catalog-v1\x00"
FORMAT_NAME = "zflash-catalog/1"
MAX_CATALOG_SIZE = 4 << 20
MAX_ENTRIES = 4096
_URL = re.compile(r"[\x21-\x7e]{1,2048}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
ENTRY_FIELDS = ("name", "url", "product", "hardware_revisions", "baseband_ids", "version",
                "rollback_index", "rollback_location", "build_time", "size", "sha256",
                "manifest_sha256")


@dataclass(frozen=True)
class CatalogEntry:
    """One package as the catalog describes it; attribute names match the manifest's."""

    name: str
    url: str
    product: str
    hardware_revisions: tuple[str, ...]
    baseband_ids: tuple[str, ...]
    version: str
    rollback_index: int
    rollback_location: int
    build_time: int
    size: int
    sha256: str
    manifest_sha256: str

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in ENTRY_FIELDS}
        data["hardware_revisions"] = list(self.hardware_revisions)
        data["baseband_ids"] = list(self.baseband_ids)
        return data


@dataclass(frozen=True)
class Catalog:
    version: int
    issued: int
    expires: int
    packages: tuple[CatalogEntry, ...]

    def signed_json(self) -> dict[str, Any]:
        return {"format": FORMAT_NAME, "version": self.version, "issued": self.issued,
                "expires": self.expires, "packages": [p.to_json() for p in self.packages]}

    def signed_bytes(self) -> bytes:
        return canonical_json(self.signed_json())


@dataclass(frozen=True)
class SignedCatalog:
    catalog: Catalog
    signatures: tuple[Signature, ...]

    def verify(self, trust: TrustStore) -> list[bytes]:
        """Ids of the trusted keys that signed it; SIGNATURE (9012) if none did."""
        return verify(self.catalog.signed_bytes(), list(self.signatures), trust,
                      CATALOG_DOMAIN)


def encode(catalog: Catalog, keys: list[PrivateKey]) -> bytes:
    """Sign with every key and lay out the file (indented for people; order is irrelevant)."""
    if not 0 < len(keys) <= MAX_SIGNATURES:
        raise ZflashError(Code.USAGE, f"1..{MAX_SIGNATURES} signing keys required")
    message = catalog.signed_bytes()
    sigs = [sign(message, key, CATALOG_DOMAIN) for key in keys]
    envelope = {"signed": catalog.signed_json(),
                "signatures": [{"algorithm": s.algorithm, "key_id": s.key_id.hex(),
                                "signature": base64.b64encode(s.value).decode()}
                               for s in sigs]}
    return json.dumps(envelope, indent=1, sort_keys=True).encode() + b"\n"


def decode(data: bytes) -> SignedCatalog:
    """Parse a catalog file; signatures are NOT checked here (see SignedCatalog.verify)."""
    if len(data) > MAX_CATALOG_SIZE:
        raise _bad(f"catalog is {len(data)} bytes, more than {MAX_CATALOG_SIZE}")
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_float=_no_float, parse_constant=_no_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"not valid JSON ({exc})") from None
    _fields(obj, {"signed", "signatures"}, "catalog")
    return SignedCatalog(_catalog(obj["signed"]), _signatures(obj["signatures"]))


def _catalog(obj: Any) -> Catalog:
    _fields(obj, {"format", "version", "issued", "expires", "packages"}, "signed")
    if obj["format"] != FORMAT_NAME:
        raise _bad(f"format {obj['format']!r}, expected {FORMAT_NAME!r}")
    packages = obj["packages"]
    if not isinstance(packages, list) or len(packages) > MAX_ENTRIES:
        raise _bad(f"packages must be a list of at most {MAX_ENTRIES} entries")
    entries = tuple(_entry(p) for p in packages)
    if len({e.name for e in entries}) != len(entries):
        raise _bad("two packages have the same name")
    issued, expires = _uint(obj["issued"], "issued"), _uint(obj["expires"], "expires")
    if expires <= issued:
        raise _bad("expires is not after issued")
    return Catalog(_uint(obj["version"], "version"), issued, expires, entries)


def _entry(obj: Any) -> CatalogEntry:
    _fields(obj, set(ENTRY_FIELDS), "package entry")
    name = obj["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _bad(f"bad package name {name!r}")
    if not isinstance(obj["url"], str) or not _URL.fullmatch(obj["url"]):
        raise _bad(f"{name}: bad url")
    location = _uint(obj["rollback_location"], f"{name}.rollback_location")
    if location > MAX_ROLLBACK_LOCATION:
        raise _bad(f"{name}: rollback_location above {MAX_ROLLBACK_LOCATION}")
    size = _uint(obj["size"], f"{name}.size")
    if size == 0:
        raise _bad(f"{name}: size 0")
    return CatalogEntry(name=name, url=obj["url"], product=_text(obj["product"], name),
                        hardware_revisions=_texts(obj["hardware_revisions"], name),
                        baseband_ids=_texts(obj["baseband_ids"], name),
                        version=_text(obj["version"], name),
                        rollback_index=_uint(obj["rollback_index"], f"{name}.rollback_index"),
                        rollback_location=location,
                        build_time=_uint(obj["build_time"], f"{name}.build_time"), size=size,
                        sha256=_hex64(obj["sha256"], f"{name}.sha256"),
                        manifest_sha256=_hex64(obj["manifest_sha256"],
                                               f"{name}.manifest_sha256"))


def _signatures(obj: Any) -> tuple[Signature, ...]:
    if not isinstance(obj, list) or not 0 < len(obj) <= MAX_SIGNATURES:
        raise _bad(f"signatures must be a list of 1..{MAX_SIGNATURES}")
    result = []
    for item in obj:
        _fields(item, {"algorithm", "key_id", "signature"}, "signature")
        if item["algorithm"] not in ALGORITHMS:
            raise _bad(f"unknown signature algorithm {item['algorithm']!r}")
        kid = _hex64(item["key_id"], "key_id")
        try:
            value = base64.b64decode(item["signature"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise _bad("signature is not base64") from None
        if not 0 < len(value) <= 1024:
            raise _bad("signature length out of bounds")
        result.append(Signature(item["algorithm"], bytes.fromhex(kid), value))
    return tuple(result)


def _bad(detail: str) -> ZflashError:
    # No dedicated code: a catalog that cannot be read is a failed download of the index.
    return ZflashError(Code.DOWNLOAD, f"catalog is malformed: {detail}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _no_float(text: str) -> Any:
    raise ValueError(f"non-integer number {text}")


def _fields(obj: Any, expected: set[str], what: str) -> None:
    if not isinstance(obj, dict) or set(obj) != expected:
        raise _bad(f"{what} must have exactly the fields {sorted(expected)}")


_FIELDS = Fields(_bad)
_uint, _text, _hex64 = _FIELDS.uint, _FIELDS.text, _FIELDS.hex64


def _texts(value: Any, what: str) -> tuple[str, ...]:
    return _FIELDS.texts(value, what, unique=False)
