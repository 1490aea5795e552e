"""Optional passphrase sealing of local root key material.

The passphrase is stretched with scrypt (``cryptography``) into a key-
encryption key; each key version's material is then sealed with AES-256-GCM,
its AAD naming the key id and version so sealed blobs cannot be swapped.
The passphrase comes from ``ENCFS_PASSPHRASE`` or an interactive prompt,
never from storage options.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import KeystoreError

PASSPHRASE_ENV = "ENCFS_PASSPHRASE"
_CHECK = b"encfs keystore passphrase check"


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
    """Seals and unseals key material under a passphrase-derived key."""

    def __init__(self, params: dict[str, Any], passphrase: str) -> None:
        kdf = Scrypt(salt=b64d(params["salt"]), length=32, n=int(params["n"]), r=int(params["r"]), p=int(params["p"]))
        self._aead = AESGCM(kdf.derive(passphrase.encode("utf-8")))
        try:
            self.unseal(params["check"], b"check")
        except KeystoreError:
            raise KeystoreError("wrong keystore passphrase") from None

    def __repr__(self) -> str:
        return "Sealer(<hidden>)"

    def __reduce__(self):
        raise TypeError("Sealer cannot be pickled")

    @staticmethod
    def new_params(passphrase: str, n: int = 2**15) -> dict[str, Any]:
        salt = os.urandom(16)
        params: dict[str, Any] = {"kdf": "scrypt", "salt": b64e(salt), "n": n, "r": 8, "p": 1}
        aead = AESGCM(Scrypt(salt=salt, length=32, n=n, r=8, p=1).derive(passphrase.encode("utf-8")))
        nonce = os.urandom(12)
        params["check"] = b64e(nonce + aead.encrypt(nonce, _CHECK, b"check"))
        return params

    def seal(self, material: bytes, aad: bytes) -> str:
        nonce = os.urandom(12)
        return b64e(nonce + self._aead.encrypt(nonce, material, aad))

    def unseal(self, blob: str, aad: bytes) -> bytes:
        raw = b64d(blob)
        try:
            return self._aead.decrypt(raw[:12], raw[12:], aad)
        except InvalidTag:
            raise KeystoreError("keystore key material failed authentication (wrong passphrase or tampered file)") from None
