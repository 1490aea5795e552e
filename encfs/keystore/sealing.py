"""Optional passphrase sealing of the local keystore.

The passphrase is stretched with scrypt (``cryptography``) into a key-
encryption key; each key version's material is then sealed with AES-256-GCM,
its AAD naming the key id and version so sealed blobs cannot be swapped.

Since keystore format 2 the whole document is authenticated as well: an
HMAC-SHA256 over its canonical JSON under a MAC key derived from the scrypt
output with HKDF (a separate key, so the AES-GCM key is never used as a MAC
key).  The sealing parameters' ``check`` blob, which only the passphrase
holder can make, says which generation sealed the file, so stripping the MAC
and claiming format 1 is detected (docs/SECURITY.md "The local keystore").

The passphrase comes from ``ENCFS_PASSPHRASE`` or an interactive prompt,
never from storage options.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import KeystoreError

PASSPHRASE_ENV = "ENCFS_PASSPHRASE"
#: Plaintexts of the passphrase check: format 1 (key material sealed, the
#: rest not authenticated) and format 2 (the document carries a MAC).
_CHECK = b"encfs keystore passphrase check"
_CHECK_MAC = b"encfs keystore passphrase check/2 document mac"
_MAC_INFO = b"encfs-keystore/2 document mac"
SCRYPT_N = 2**15


def b64e(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def b64d(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"), validate=True)


def get_passphrase(prompt: bool = True) -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    if prompt and os.isatty(0):
        import getpass

        value = getpass.getpass("encfs keystore passphrase: ")
        if value:
            return value
    raise KeystoreError(f"the keystore is sealed with a passphrase: set {PASSPHRASE_ENV} or run interactively")


class Sealer:
    """Seals and unseals key material, and MACs the document, under keys
    derived from the passphrase."""

    def __init__(self, params: dict[str, Any], passphrase: str) -> None:
        kdf = Scrypt(salt=b64d(params["salt"]), length=32, n=int(params["n"]), r=int(params["r"]), p=int(params["p"]))
        self._setup(kdf.derive(passphrase.encode("utf-8")), params, passphrase)
        try:
            check = self.unseal(params["check"], b"check")
        except KeystoreError:
            raise KeystoreError("wrong keystore passphrase") from None
        if check not in (_CHECK, _CHECK_MAC):
            raise KeystoreError("keystore sealing parameters are malformed")
        #: Whether this sealing was made by an encfs that MACs the document
        #: (format 2); False for a format 1 keystore awaiting its upgrade.
        self.authenticates = check == _CHECK_MAC

    def _setup(self, key: bytes, params: dict[str, Any], passphrase: str) -> None:
        self._aead = AESGCM(key)
        self._mac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MAC_INFO).derive(key)
        self.params = params
        # Kept (like the derived keys) only to re-seal a format 1 keystore
        # under a fresh salt when it is upgraded; never logged or pickled.
        self._passphrase = passphrase

    def __repr__(self) -> str:
        return "Sealer(<hidden>)"

    def __reduce__(self):
        raise TypeError("Sealer cannot be pickled")

    @classmethod
    def create(cls, passphrase: str, n: int | None = None) -> Sealer:
        """A sealer with fresh parameters (new salt) for ``passphrase``."""
        n = SCRYPT_N if n is None else n  # read at call time: tests lower it
        salt = os.urandom(16)
        params: dict[str, Any] = {"kdf": "scrypt", "salt": b64e(salt), "n": n, "r": 8, "p": 1}
        self = cls.__new__(cls)
        self._setup(Scrypt(salt=salt, length=32, n=n, r=8, p=1).derive(passphrase.encode("utf-8")), params, passphrase)
        params["check"] = self.seal(_CHECK_MAC, b"check")
        self.authenticates = True
        return self

    @staticmethod
    def new_params(passphrase: str, n: int | None = None) -> dict[str, Any]:
        return Sealer.create(passphrase, n).params

    def renewed(self) -> Sealer:
        """A format 2 sealer under a fresh salt for the same passphrase."""
        return Sealer.create(self._passphrase, int(self.params["n"]))

    def seal(self, material: bytes, aad: bytes) -> str:
        nonce = os.urandom(12)
        return b64e(nonce + self._aead.encrypt(nonce, material, aad))

    def unseal(self, blob: str, aad: bytes) -> bytes:
        raw = b64d(blob)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], aad)
        except InvalidTag:
            raise KeystoreError("keystore key material failed authentication (wrong passphrase or tampered file)") from None

    def mac(self, data: bytes) -> str:
        h = hmac.HMAC(self._mac_key, hashes.SHA256())
        h.update(data)
        return b64e(h.finalize())

    def verify_mac(self, data: bytes, tag: str) -> bool:
        try:
            expected = b64d(tag)
        except ValueError:
            return False
        h = hmac.HMAC(self._mac_key, hashes.SHA256())
        h.update(data)
        try:
            h.verify(expected)  # constant-time comparison
        except InvalidSignature:
            return False
        return True
