"""Moving keys between machines: export bundles sealed under a passphrase.

A bundle is a small JSON document::

    {"format": "encfs-key-export/1", "kdf": {"kdf": "scrypt", "salt", "n", "r", "p"},
     "nonce": b64, "ciphertext": b64, "keys": [ids], "created": iso}

The ciphertext is AES-256-GCM under a scrypt-derived key of the whole key
records (every version's material) and their aliases; the AAD is the format
name plus the listed key ids, so the cleartext id list cannot be edited
without detection.  The passphrase comes from ``$ENCFS_EXPORT_PASSPHRASE``,
else ``$ENCFS_PASSPHRASE``, else an interactive prompt — never from an
argument, so it does not land in shell history.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import KeystoreError
from .schema import SchemaError, check_bundle_records, check_sealing
from .sealing import PASSPHRASE_ENV, b64d, b64e

EXPORT_FORMAT = "encfs-key-export/1"
EXPORT_PASSPHRASE_ENV = "ENCFS_EXPORT_PASSPHRASE"
SCRYPT_N = 2**15
MAX_BUNDLE = 64 * 1024 * 1024


def export_passphrase(*, confirm: bool) -> str:
    value = os.environ.get(EXPORT_PASSPHRASE_ENV) or os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if os.isatty(0):
        import getpass

        value = getpass.getpass("export passphrase: ")
        if confirm and value != getpass.getpass("repeat passphrase: "):
            raise KeystoreError("the passphrases do not match")
        if value:
            return value
    raise KeystoreError(f"an export passphrase is needed: set {EXPORT_PASSPHRASE_ENV} or run interactively")


def _key(passphrase: str, kdf: Any) -> AESGCM:
    try:
        check_sealing({**kdf, "check": b64e(bytes(28))}, "kdf")  # same bounds as a sealed keystore's
    except (SchemaError, TypeError):
        raise KeystoreError("export bundle has unsupported key-derivation parameters") from None
    n, r, p = kdf["n"], kdf["r"], kdf["p"]
    return AESGCM(Scrypt(salt=b64d(kdf["salt"]), length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8")))


def _aad(key_ids: list[str]) -> bytes:
    return (EXPORT_FORMAT + "|" + ",".join(key_ids)).encode("utf-8")


def seal_bundle(records: dict[str, Any], passphrase: str, *, n: int = SCRYPT_N) -> bytes:
    kdf = {"kdf": "scrypt", "salt": b64e(os.urandom(16)), "n": n, "r": 8, "p": 1}
    key_ids = sorted(records["keys"])
    nonce = os.urandom(12)
    plaintext = json.dumps(records, sort_keys=True).encode("utf-8")
    ct = _key(passphrase, kdf).encrypt(nonce, plaintext, _aad(key_ids))
    doc = {
        "format": EXPORT_FORMAT, "kdf": kdf, "nonce": b64e(nonce), "ciphertext": b64e(ct), "keys": key_ids,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def open_bundle(data: bytes, passphrase: str) -> dict[str, Any]:
    """The checked records of a bundle; every problem is a KeystoreError."""
    if len(data) > MAX_BUNDLE:
        raise KeystoreError("export bundle is too large")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise KeystoreError("malformed encfs key export (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        what = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise KeystoreError(f"not an encfs key export (format {str(what)[:80]!r})")
    key_ids = doc.get("keys")
    if not isinstance(doc.get("kdf"), dict) or not isinstance(key_ids, list) or not all(
            isinstance(k, str) for k in key_ids):
        raise KeystoreError("malformed encfs key export")
    aead = _key(passphrase, doc["kdf"])
    try:
        nonce, ct = b64d(doc["nonce"]), b64d(doc["ciphertext"])
        if len(nonce) != 12:
            raise ValueError("nonce")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise KeystoreError("malformed encfs key export") from None
    try:
        plaintext = aead.decrypt(nonce, ct, _aad(key_ids))
    except InvalidTag:
        raise KeystoreError("cannot open the key export: wrong passphrase or tampered file") from None
    try:
        records = check_bundle_records(json.loads(plaintext.decode("utf-8")))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # SchemaError is a ValueError
        raise KeystoreError(f"malformed encfs key export ({str(exc)[:200]})") from None
    if sorted(records["keys"]) != key_ids:
        raise KeystoreError("malformed encfs key export (key list differs from its content)")
    return records
