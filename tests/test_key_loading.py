"""Public keys load to the same key whichever parser reads them (D189).

An Ed25519 public key in its one canonical PEM form is read without ``cryptography``'s
serialization module (start-up time); every other file goes to that module. Both must give
the same key, the same key id, and the same refusals."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from zflash.errors import Code, ZflashError
from zflash.package import keys as keymod

X25519_SPKI_HEADER = bytes.fromhex("302a300506032b656e032100")  # 1.3.101.110, not a signing key


def _pem(der: bytes, line_end: bytes = b"\n") -> bytes:
    body = base64.b64encode(der)
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return line_end.join([keymod.PEM_PUBLIC_BEGIN, *lines, keymod.PEM_PUBLIC_END]) + line_end


def _both(path: Path) -> tuple[keymod.PublicKey, keymod.PublicKey]:
    return keymod.load_public_key(path), keymod._parse_public_pem(path.read_bytes(), path)


@pytest.mark.parametrize("algorithm", keymod.ALGORITHMS)
def test_every_algorithm_loads_to_the_same_key_and_id(tmp_path, private_keys, algorithm):
    path = tmp_path / "key.pub.pem"
    path.write_bytes(keymod.public_pem(private_keys[algorithm]))
    fast, general = _both(path)
    assert fast == general
    assert keymod.key_id(fast) == keymod.key_id(general) == keymod.key_id(private_keys[algorithm])
    # only the canonical Ed25519 form takes the short path
    short = keymod._canonical_ed25519(path.read_bytes())
    assert (short is not None) == (algorithm == "ed25519")


def test_ed25519_key_id_is_the_hash_of_its_der(private_keys):
    from cryptography.hazmat.primitives import serialization
    public = private_keys["ed25519"].public_key()
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib
    assert keymod.key_id(public) == hashlib.sha256(der).digest()
    assert der.startswith(keymod.ED25519_SPKI_HEADER)


@pytest.mark.parametrize("variant", ["crlf", "text-around", "no-final-newline"])
def test_other_spellings_of_an_ed25519_key_still_load(tmp_path, private_keys, variant):
    public = private_keys["ed25519"].public_key()
    der = keymod.ED25519_SPKI_HEADER + public.public_bytes_raw()
    data = {"crlf": _pem(der, b"\r\n"),
            "text-around": b"a comment before the key\n" + _pem(der) + b"trailing text\n",
            "no-final-newline": _pem(der).rstrip(b"\n")}[variant]
    path = tmp_path / "key.pem"
    path.write_bytes(data)
    assert keymod.load_public_key(path) == public


def test_a_non_signing_key_of_the_same_shape_is_refused(tmp_path):
    """Same length and layout as an Ed25519 key, another algorithm (X25519): the short path
    declines it, and the general parser's answer (not a signing key) stands."""
    path = tmp_path / "x25519.pem"
    path.write_bytes(_pem(X25519_SPKI_HEADER + bytes(range(32))))
    assert keymod._canonical_ed25519(path.read_bytes()) is None
    with pytest.raises(ZflashError) as caught:
        keymod.load_public_key(path)
    assert caught.value.code == Code.BAD_KEY_FILE


@pytest.mark.parametrize("body", [b"not base64!!", base64.b64encode(b"\x30\x03\x02\x01\x00")])
def test_a_broken_key_file_is_bad_key_file(tmp_path, body):
    path = tmp_path / "broken.pem"
    path.write_bytes(keymod.PEM_PUBLIC_BEGIN + b"\n" + body + b"\n" + keymod.PEM_PUBLIC_END + b"\n")
    with pytest.raises(ZflashError) as caught:
        keymod.load_public_key(path)
    assert caught.value.code == Code.BAD_KEY_FILE


def test_openssl_written_ed25519_key_takes_the_short_path(tmp_path):
    openssl = subprocess.run(["openssl", "version"], capture_output=True)
    if openssl.returncode:
        pytest.fail("openssl is needed (Debian: openssl)")
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)],
                   check=True, capture_output=True)
    assert keymod._canonical_ed25519(public.read_bytes()) is not None
    fast, general = _both(public)
    assert fast == general


def test_loading_an_ed25519_trust_key_leaves_serialization_unloaded():
    sample = Path(__file__).resolve().parent.parent / "firmware-samples" / "keys"
    pub = next(sample.glob("*.pub.pem"))
    probe = ("import sys\nfrom pathlib import Path\nfrom zflash.package.keys import TrustStore\n"
             f"store = TrustStore.load([Path({str(pub)!r})], use_default_dir=False)\n"
             "assert len(store) == 1\n"
             "print('cryptography.hazmat.primitives.serialization' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
