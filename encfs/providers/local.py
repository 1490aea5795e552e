"""Local-keystore provider: ``local://<alias or key id>``.

Data keys are wrapped with AES-256-GCM under the current version of the
root key; the AAD binds the key id, version and the (coarse) encryption
context.  Every key of the keystore may unwrap: the keystore file's
permissions are the access control for local keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError, KeyNotFoundError
from ..format import DEK_BYTES, WrappedKey, encode_context
from ..keystore.store import LocalKeystore
from .base import KeyInfo, KeyProvider, KeyRef

_NONCE = 12


def _aad(key_id: str, version: str, context: Mapping[str, str]) -> bytes:
    return b"encfs-local-wrap/1|" + key_id.encode() + b"|" + version.encode() + b"|" + encode_context(context)


class LocalProvider(KeyProvider):
    scheme = "local"

    def __init__(self, home: str | os.PathLike[str] | None = None, *, keystore: LocalKeystore | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        if keystore is None:
            keystore = LocalKeystore(home, clock=clock) if clock else LocalKeystore(home)
        self.keystore = keystore

    def __repr__(self) -> str:
        return f"LocalProvider(home={str(self.keystore.home)!r})"

    def resolve(self, ref: KeyRef) -> str:
        return self.keystore.resolve(ref.name)

    def wrap(self, ref: KeyRef, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        key_id = self.resolve(ref)
        version, material = self.keystore._material(key_id, for_wrap=True)
        nonce = os.urandom(_NONCE)
        blob = nonce + AESGCM(material).encrypt(nonce, dek, _aad(key_id, str(version), context))
        return WrappedKey(self.scheme, key_id, str(version), blob)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        if not wrapped.version.isdigit():
            raise IntegrityError()
        version, material = self.keystore._material(wrapped.key_id, int(wrapped.version), for_wrap=False)
        blob = wrapped.wrapped
        try:
            dek = AESGCM(material).decrypt(blob[:_NONCE], blob[_NONCE:], _aad(wrapped.key_id, wrapped.version, context))
        except (InvalidTag, ValueError):
            raise IntegrityError() from None
        if len(dek) != DEK_BYTES:
            raise IntegrityError()
        return dek

    def allows(self, wrapped: WrappedKey, refs: list[KeyRef]) -> bool:
        # Any key in this keystore may unwrap (a local key is usable by
        # whoever can read the keystore file).
        try:
            self.keystore.record(wrapped.key_id)
        except KeyNotFoundError:
            return False
        return True

    def describe(self, ref: KeyRef) -> KeyInfo:
        key_id = self.resolve(ref)
        rec = self.keystore.record(key_id)
        return KeyInfo(
            uri=f"local://{key_id}", key_id=key_id, provider=self.scheme, state=rec.get("state", "Enabled"),
            current_version=str(rec["current_version"]), versions=sorted(rec["versions"], key=int),
            aliases=self.keystore.aliases_of(key_id), description=rec.get("description", ""),
            created=rec.get("created", ""), tags=dict(rec.get("tags", {})),
            extra={"kind": rec.get("kind", "customer"), "usage": rec.get("usage", "ENCRYPT_DECRYPT"),
                   "keystore": str(self.keystore.home)},
        )

    def list_keys(self) -> list[KeyInfo]:
        return [self.describe(KeyRef(self.scheme, k)) for k in self.keystore.list_ids()]

    def create_key(self, *, alias: str | None = None, description: str = "", tags: Mapping[str, str] | None = None) -> KeyInfo:
        key_id = self.keystore.create_key(alias=alias, description=description, tags=tags)
        return self.describe(KeyRef(self.scheme, key_id))
