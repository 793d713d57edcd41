"""Manifest signatures: the signature block's encoding, signing and verification.

Every signature covers ``DOMAIN + manifest bytes``. The prefix is unique to zflash package
manifests (the catalog uses its own), so a signature made by the same key over any other
message can never pass as a manifest signature.

All three algorithms sign deterministically, so the same inputs and key give a byte-identical
package: Ed25519 by design, ECDSA with RFC 6979 nonces, RSA-PSS with a zero-length salt
(RFC 8017 permits it; the security then rests on the hash as for deterministic schemes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zflash.errors import Code, ZflashError
from zflash.package.format import MAX_SIGNATURES, malformed
from zflash.package.names import ALG_IDS

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import padding

    from zflash.package.keys import PrivateKey, PublicKey, TrustStore

MANIFEST_DOMAIN = b"zflash-package-manifest-v1\x00"
SIG_HEADER = struct.Struct("<BBH32s")
ALG_NAMES = {v: k for k, v in ALG_IDS.items()}
MAX_SIG_LEN = 1024  # RSA-8192 is 1024 bytes; DER ECDSA at most 72


@dataclass(frozen=True)
class Signature:
    algorithm: str
    key_id: bytes
    value: bytes


def sign(message: bytes, key: PrivateKey, domain: bytes = MANIFEST_DOMAIN) -> Signature:
    # cryptography is imported where it is used: parsing a package (inspect) needs none of it,
    # an Ed25519 key none of ec and hashes (D205)
    from zflash.package.keys import algorithm_of, key_id
    algorithm = algorithm_of(key)
    data = domain + message
    if algorithm == "ed25519":
        value = key.sign(data)  # type: ignore[call-arg]
    else:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        if algorithm == "ecdsa-p256":
            value = key.sign(data, ec.ECDSA(hashes.SHA256(),  # type: ignore[call-arg]
                                            deterministic_signing=True))
        else:
            value = key.sign(data, _pss(0), hashes.SHA256())  # type: ignore[call-arg]
    return Signature(algorithm, key_id(key), value)


def _pss(salt_length: int) -> padding.PSS:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt_length)


def check_one(signature: Signature, public: PublicKey, message: bytes,
              domain: bytes = MANIFEST_DOMAIN) -> bool:
    from cryptography.exceptions import InvalidSignature
    data = domain + message
    try:
        if signature.algorithm == "ed25519":
            public.verify(signature.value, data)  # type: ignore[call-arg]
        else:  # ec, padding (and rsa) only when such a signature is met (D205)
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import ec, padding
            if signature.algorithm == "ecdsa-p256":
                public.verify(signature.value, data,  # type: ignore[call-arg]
                              ec.ECDSA(hashes.SHA256()))
            else:
                public.verify(signature.value, data,  # type: ignore[call-arg]
                              _pss(padding.PSS.AUTO), hashes.SHA256())
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


def verify(message: bytes, signatures: list[Signature], trust: TrustStore,
           domain: bytes = MANIFEST_DOMAIN) -> list[bytes]:
    """Ids of the trusted keys whose signatures are valid; raise SIGNATURE if none.

    A signature by a trusted key that does not verify fails the whole package, even when
    another trusted signature is good: a package is either intact or it is not.
    """
    if not len(trust):
        raise ZflashError(Code.NO_TRUSTED_KEY, "the trust store is empty")
    good: list[bytes] = []
    for sig in signatures:
        trusted = trust.get(sig.key_id)
        if trusted is None:
            continue
        if trusted.algorithm != sig.algorithm or not check_one(sig, trusted.public_key,
                                                               message, domain):
            raise ZflashError(Code.SIGNATURE, f"signature by key {sig.key_id.hex()[:16]} "
                                              "does not verify", cause="bad_signature")
        good.append(sig.key_id)
    if not good:
        ids = ", ".join(s.key_id.hex()[:16] for s in signatures)
        raise ZflashError(Code.SIGNATURE, f"no signature by a trusted key (signed by {ids})",
                          cause="untrusted_signer")
    return good


def encode_signatures(signatures: list[Signature]) -> bytes:
    if not 0 < len(signatures) <= MAX_SIGNATURES:
        raise ZflashError(Code.USAGE, f"1..{MAX_SIGNATURES} signing keys required")
    parts = [bytes([len(signatures)])]
    for sig in signatures:
        parts.append(SIG_HEADER.pack(ALG_IDS[sig.algorithm], 0, len(sig.value), sig.key_id))
        parts.append(sig.value)
    return b"".join(parts)


def decode_signatures(data: bytes) -> list[Signature]:
    """Parse the signature block; every length is checked against what remains."""
    if not data:
        raise malformed("empty signature block")
    count = data[0]
    if not 0 < count <= MAX_SIGNATURES:
        raise malformed(f"signature count {count} outside 1..{MAX_SIGNATURES}")
    pos, result, seen = 1, [], set()
    for index in range(count):
        if pos + SIG_HEADER.size > len(data):
            raise malformed(f"signature {index} header truncated")
        alg, reserved, length, kid = SIG_HEADER.unpack_from(data, pos)
        pos += SIG_HEADER.size
        if alg not in ALG_NAMES:
            raise malformed(f"signature {index}: unknown algorithm {alg}")
        if reserved:
            raise malformed(f"signature {index}: reserved byte not zero")
        if not 0 < length <= MAX_SIG_LEN or pos + length > len(data):
            raise malformed(f"signature {index}: length {length} out of bounds")
        if kid in seen:
            raise malformed(f"signature {index}: duplicate key id")
        seen.add(kid)
        result.append(Signature(ALG_NAMES[alg], kid, bytes(data[pos:pos + length])))
        pos += length
    if pos != len(data):
        raise malformed(f"{len(data) - pos} stray bytes after the signatures")
    return result
