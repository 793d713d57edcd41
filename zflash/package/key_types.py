"""The key-type unions of ``zflash.package.keys``, in a module of their own: naming the
ECDSA and RSA classes imports cryptography's ``ec`` and ``rsa`` (~6 ms of start-up), which
a flash checked with an Ed25519 trust key never needs (D205). ``keys`` re-exports them."""

from __future__ import annotations

from typing import Union

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PrivateKey = Union[ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]
PublicKey = Union[ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey]
