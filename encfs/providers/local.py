"""Local-keystore provider: ``local://<alias or key id>``.

Data keys are wrapped with AES-256-GCM under the current version of the
root key; the AAD binds the key id, version and the (coarse) encryption
context.  Every key of the keystore may unwrap: the keystore file's
permissions are the access control for local keys.

The administrative methods of :class:`~encfs.providers.base.KeyProvider`
map one to one onto the keystore's lifecycle (docs/KEYS.md); the CLI calls
them generically, so the same verbs work on KMS and HSM keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError, KeyNotFoundError
from ..format import DEK_BYTES, WrappedKey, encode_context
from ..keystore.store import DEFAULT_DELETION_DAYS, DEFAULT_ROTATION_DAYS, LocalKeystore
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
        _, material = self.keystore._material(wrapped.key_id, int(wrapped.version), for_wrap=False)
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
            # A key deleted here is still "ours": let unwrap say it was deleted
            # (and when) instead of a vague "no usable key".
            return self.keystore.deleted_on(wrapped.key_id) is not None
        return True

    def describe(self, ref: KeyRef) -> KeyInfo:
        return self._info(self.resolve(ref))

    def _info(self, key_id: str) -> KeyInfo:
        rec = self.keystore.record(key_id)
        rot = rec.get("rotation") or {}
        extra: dict[str, Any] = {
            "kind": rec.get("kind", "customer"), "usage": rec.get("usage", "ENCRYPT_DECRYPT"),
            "rotation_enabled": bool(rot.get("enabled")), "keystore": str(self.keystore.home),
        }
        if rot.get("enabled"):
            extra.update(rotation_period_days=rot.get("period_days"), next_rotation=rot.get("next"))
        if rot.get("last"):
            extra["last_rotation"] = rot["last"]
        if rec.get("deletion_date"):
            extra["deletion_date"] = rec["deletion_date"]
        return KeyInfo(
            uri=f"local://{key_id}", key_id=key_id, provider=self.scheme, state=rec.get("state", "Enabled"),
            current_version=str(rec["current_version"]), versions=sorted(rec["versions"], key=int),
            aliases=self.keystore.aliases_of(key_id), description=rec.get("description", ""),
            created=rec.get("created", ""), tags=dict(rec.get("tags", {})), extra=extra,
        )

    def list_keys(self) -> list[KeyInfo]:
        return [self._info(k) for k in self.keystore.list_ids()]

    def create_key(self, *, alias: str | None = None, description: str = "", tags: Mapping[str, str] | None = None,
                   rotation_days: int | None = None) -> KeyInfo:
        key_id = self.keystore.create_key(alias=alias, description=description, tags=tags, rotation_days=rotation_days)
        return self._info(key_id)

    def managed_key(self, name: str) -> KeyInfo:
        """The encfs-managed key ``alias/encfs/<name>``, created on first use."""
        return self._info(self.keystore.managed_key(name))

    # -- administration ----------------------------------------------------------
    def enable_key(self, ref: KeyRef) -> None:
        self.keystore.enable(self.resolve(ref))

    def disable_key(self, ref: KeyRef) -> None:
        self.keystore.disable(self.resolve(ref))

    def rotate_key(self, ref: KeyRef) -> KeyInfo:
        key_id = self.resolve(ref)
        self.keystore.rotate(key_id)
        return self._info(key_id)

    def rotation_status(self, ref: KeyRef) -> dict[str, Any]:
        key_id = self.resolve(ref)
        rot = self.keystore.record(key_id).get("rotation") or {}
        return {"key_id": key_id, "enabled": bool(rot.get("enabled")), "period_days": rot.get("period_days"),
                "next_rotation": rot.get("next"), "last_rotation": rot.get("last")}

    def enable_rotation(self, ref: KeyRef, period_days: int = DEFAULT_ROTATION_DAYS) -> KeyInfo:
        key_id = self.resolve(ref)
        self.keystore.enable_rotation(key_id, period_days)
        return self._info(key_id)

    def set_rotation(self, ref: KeyRef, enabled: bool, period_days: int | None = None) -> dict[str, Any]:
        """Automatic rotation on (every ``period_days``, 90–2560, default 365) or off."""
        if enabled:
            self.enable_rotation(ref, DEFAULT_ROTATION_DAYS if period_days is None else int(period_days))
        else:
            self.disable_rotation(ref)
        return self.rotation_status(ref)

    def disable_rotation(self, ref: KeyRef) -> KeyInfo:
        key_id = self.resolve(ref)
        self.keystore.disable_rotation(key_id)
        return self._info(key_id)

    def schedule_deletion(self, ref: KeyRef, days: int = DEFAULT_DELETION_DAYS) -> KeyInfo:
        key_id = self.resolve(ref)
        self.keystore.schedule_deletion(key_id, days)
        return self._info(key_id)

    def cancel_deletion(self, ref: KeyRef) -> KeyInfo:
        key_id = self.resolve(ref)
        self.keystore.cancel_deletion(key_id)
        return self._info(key_id)

    def set_alias(self, alias: str, ref: KeyRef) -> None:
        self.keystore.set_alias(alias, self.resolve(ref))

    def create_alias(self, alias: str, ref: KeyRef) -> None:
        self.keystore.create_alias(alias, self.resolve(ref))

    def update_alias(self, alias: str, ref: KeyRef) -> None:
        self.keystore.update_alias(alias, self.resolve(ref))

    def delete_alias(self, alias: str) -> None:
        self.keystore.delete_alias(alias)

    def tag_key(self, ref: KeyRef, tags: Mapping[str, str]) -> None:
        self.keystore.tag(self.resolve(ref), tags)

    def untag_key(self, ref: KeyRef, keys: list[str]) -> None:
        self.keystore.untag(self.resolve(ref), list(keys))

    def set_description(self, ref: KeyRef, description: str) -> None:
        self.keystore.set_description(self.resolve(ref), description)
