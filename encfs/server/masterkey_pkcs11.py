"""The key server's master key in a PKCS#11 HSM.

Every blob the server stores (root key material, sealed secret access keys)
is an envelope: a fresh 32-byte key encrypts the payload with AES-256-GCM
(the payload's associated data names the row, as for every master key), and
that key is wrapped inside the HSM by an AES-256 key that is sensitive and
not extractable, through encfs's PKCS#11 provider (its token, session pool,
login and error handling; the PIN only from ``ENCFS_PKCS11_PIN`` or
``ENCFS_PKCS11_PIN_FILE``, never from the config).  A copy of the database,
with the config, decrypts nothing without the token and its PIN.

Blob layout (all integers big-endian)::

    b"EKH1" | u32 HSM key version | u16 n | n bytes: the provider's wrapped key
           | 12-byte nonce | AES-GCM(payload) with its 16-byte tag

The HSM key version is the provider's (``rotate_key`` adds one; older ones
stay in the token and keep unwrapping).  So a master-key rotation needs no
downtime: rotate, and every replica wraps new blobs with the new version at
once (the provider looks the current version up per wrap) while reading old
blobs with the old one; then :func:`encfs.server.rewrap.rewrap_stored`
re-wraps the stored blobs, key by key, while the servers keep serving.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import ConfigurationError, EncfsError, KeyNotFoundError
from .masterkey import MasterKey, MasterKeyError

_MAGIC = b"EKH1"
_HEAD = struct.Struct(">IH")
_NONCE = 12
#: The provider binds its wrapped keys to this context (docs/HSM.md, wrapping).
_CONTEXT: Mapping[str, str] = {"encfs-server": "master"}


class Pkcs11MasterKey(MasterKey):
    """The master key ``pkcs11://<token>/<label>`` of the PKCS#11 module
    ``module`` (default ``$ENCFS_PKCS11_MODULE``); generated inside the token
    on first use when ``create`` is true."""

    def __init__(self, uri: str, *, module: str | None = None, create: bool = False, max_sessions: int = 4) -> None:
        from ..providers.base import KeyRef
        from ..providers.pkcs11 import Pkcs11Provider

        name = uri.removeprefix("pkcs11://")
        if "/" not in name:
            raise ConfigurationError(f"master_key: key must be pkcs11://<token>/<label>, not {uri!r}")
        self._provider = Pkcs11Provider(module, max_sessions=max_sessions)
        self._ref = KeyRef("pkcs11", name)
        try:
            key_id = self._provider.resolve(self._ref)
        except KeyNotFoundError:
            if not create:
                raise
            self._provider.create_key(alias=name)
            key_id = self._provider.resolve(self._ref)
        self._name = key_id
        self.key_id = f"pkcs11://{key_id}"
        info = self._provider.describe(self._ref)
        # The provider refuses to wrap with an unfit key; say so at startup.
        if not info.extra.get("usable", False) or info.extra.get("extractable"):
            raise ConfigurationError(f"master_key: {self.key_id} cannot be the master key: "
                                     f"{info.extra.get('problem') or 'it is extractable'}")

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        dek = os.urandom(32)
        entry = self._provider.wrap(self._ref, dek, _CONTEXT)
        nonce = os.urandom(_NONCE)
        body = AESGCM(dek).encrypt(nonce, plaintext, aad)
        return _MAGIC + _HEAD.pack(int(entry.version), len(entry.wrapped)) + entry.wrapped + nonce + body

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        from ..format import WrappedKey

        try:
            version, wrapped, rest = _parse(blob)
            dek = self._provider.unwrap(WrappedKey("pkcs11", self._name, str(version), wrapped), _CONTEXT)
            return AESGCM(dek).decrypt(rest[:_NONCE], rest[_NONCE:], aad)
        except (ValueError, struct.error, InvalidTag, EncfsError) as exc:
            raise MasterKeyError(f"cannot unwrap a stored secret with master key {self.key_id}: "
                                 f"{type(exc).__name__}") from None

    # -- rotation ----------------------------------------------------------------------
    def version_of(self, blob: bytes) -> int | None:
        """The HSM key version that wrapped ``blob`` (None: not one of ours)."""
        try:
            return _parse(blob)[0]
        except (ValueError, struct.error):
            return None

    def current_version(self) -> int:
        return int(self._provider.describe(self._ref).current_version)

    def rotate(self) -> int:
        """Generate the next HSM key version (inside the token); returns it."""
        return int(self._provider.rotate_key(self._ref).current_version)

    def describe(self) -> dict[str, Any]:
        info = self._provider.describe(self._ref)
        return {"key": self.key_id, "current_version": info.current_version, "versions": info.versions,
                "extractable": info.extra.get("extractable"), "sensitive": info.extra.get("sensitive")}


def _parse(blob: bytes) -> tuple[int, bytes, bytes]:
    if blob[:4] != _MAGIC:
        raise ValueError("not an HSM master-key blob")
    version, n = _HEAD.unpack_from(blob, 4)
    start = 4 + _HEAD.size
    wrapped, rest = blob[start:start + n], blob[start + n:]
    if len(wrapped) != n or len(rest) < _NONCE + 16 or version < 1:
        raise ValueError("truncated blob")
    return version, wrapped, rest


def from_config(settings: Mapping[str, Any], *, create: bool) -> Pkcs11MasterKey:
    """``[master_key] type = "pkcs11"``: ``key`` (pkcs11://token/label),
    ``module`` (optional), ``create`` (optional), ``max_sessions``."""
    secretish = sorted(k for k in settings if "pin" in k.lower() or "pass" in k.lower())
    if secretish:
        raise ConfigurationError(f"master_key: no {', '.join(secretish)} in the config; the HSM PIN comes from "
                                 "ENCFS_PKCS11_PIN or ENCFS_PKCS11_PIN_FILE")
    unknown = set(settings) - {"type", "key", "module", "create", "max_sessions"}
    if unknown:
        raise ConfigurationError(f"master_key: unknown setting(s) {', '.join(sorted(unknown))}")
    if not settings.get("key"):
        raise ConfigurationError('master_key: type pkcs11 needs key = "pkcs11://<token>/<label>"')
    return Pkcs11MasterKey(str(settings["key"]), module=settings.get("module"),
                           create=create or bool(settings.get("create")),
                           max_sessions=int(settings.get("max_sessions", 4)))
