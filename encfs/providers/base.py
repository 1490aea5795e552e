"""The key-provider interface every root-key service implements.

A provider wraps and unwraps 32-byte data keys under root keys it holds and
never hands root key material out.  Key references are URIs whose scheme
names the provider: ``local://default``, ``aws-kms://alias/lake``,
``pkcs11://token/label``.  A :class:`~encfs.format.WrappedKey` records the
provider scheme, the provider's canonical key id and the key version, so a
reader knows which provider to ask without trusting anything else.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigurationError, EncfsError
from ..format import DEK_BYTES, WrappedKey


@dataclass(frozen=True)
class KeyRef:
    """A parsed key URI: ``scheme://name``."""

    scheme: str
    name: str

    @classmethod
    def parse(cls, uri: str) -> KeyRef:
        if not isinstance(uri, str) or "://" not in uri:
            raise ConfigurationError(
                f"key reference {uri!r} is not a key URI such as 'local://default' or 'aws-kms://alias/name'"
            )
        scheme, _, name = uri.partition("://")
        if not scheme or not name:
            raise ConfigurationError(f"key reference {uri!r} has no scheme or no key name")
        return cls(scheme.lower(), name)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.name}"


@dataclass
class KeyInfo:
    """Public description of a root key (never any key material)."""

    uri: str
    key_id: str
    provider: str
    state: str = "Enabled"
    current_version: str = ""
    versions: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    description: str = ""
    created: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri, "key_id": self.key_id, "provider": self.provider, "state": self.state,
            "current_version": self.current_version, "versions": list(self.versions),
            "aliases": list(self.aliases), "description": self.description, "created": self.created,
            "tags": dict(self.tags), **self.extra,
        }


class KeyProvider(ABC):
    """A root-key service.  Implementations must be thread-safe."""

    #: URI scheme and the ``provider`` field written into wrapped key entries.
    scheme: ClassVar[str]

    @abstractmethod
    def resolve(self, ref: KeyRef) -> str:
        """Canonical key id for a reference (alias → id); raises KeyNotFoundError."""

    @abstractmethod
    def wrap(self, ref: KeyRef, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Wrap ``dek`` under the current version of the root key ``ref``."""

    @abstractmethod
    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """Return the data key inside ``wrapped``; raise an encfs key error or
        IntegrityError if it cannot be unwrapped."""

    def generate_data_key(self, ref: KeyRef, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        """A fresh data key from a CSPRNG and its wrapped form.  Services that
        generate keys themselves (KMS GenerateDataKey) override this."""
        dek = os.urandom(DEK_BYTES)
        return dek, self.wrap(ref, dek, context)

    def allows(self, wrapped: WrappedKey, refs: list[KeyRef]) -> bool:
        """Whether this filesystem may try to unwrap ``wrapped``.  The default:
        only entries whose key is one of the configured ``refs``."""
        for ref in refs:
            if ref.scheme != self.scheme:
                continue
            try:
                if self.resolve(ref) == wrapped.key_id:
                    return True
            except EncfsError:  # an unresolvable configured key allows nothing
                continue
        return False

    @abstractmethod
    def describe(self, ref: KeyRef) -> KeyInfo:
        """Public metadata of a root key."""

    def list_keys(self) -> list[KeyInfo]:
        raise ConfigurationError(f"provider {self.scheme!r} cannot list keys")

    def create_key(self, *, alias: str | None = None, description: str = "", tags: Mapping[str, str] | None = None) -> KeyInfo:
        raise ConfigurationError(f"provider {self.scheme!r} cannot create keys")

    # -- administration (optional: a provider implements what its service has)
    def _unsupported(self, what: str):
        raise ConfigurationError(f"key provider {self.scheme!r} does not support {what}")

    def enable_key(self, ref: KeyRef) -> None:
        self._unsupported("enabling keys")

    def disable_key(self, ref: KeyRef) -> None:
        self._unsupported("disabling keys")

    def rotate_key(self, ref: KeyRef) -> KeyInfo:
        """Create a new key version (or rotate on demand); return the new state."""
        self._unsupported("rotation")

    def rotation_status(self, ref: KeyRef) -> dict[str, Any]:
        self._unsupported("rotation status")

    def set_rotation(self, ref: KeyRef, enabled: bool, period_days: int | None = None) -> dict[str, Any]:
        """Turn automatic rotation on (every ``period_days``) or off; return rotation_status."""
        self._unsupported("automatic rotation")

    def schedule_deletion(self, ref: KeyRef, days: int = 30) -> KeyInfo:
        self._unsupported("scheduled deletion")

    def cancel_deletion(self, ref: KeyRef) -> KeyInfo:
        self._unsupported("cancelling deletion")

    def set_alias(self, alias: str, ref: KeyRef) -> None:
        self._unsupported("aliases")

    def delete_alias(self, alias: str) -> None:
        self._unsupported("aliases")

    def tag_key(self, ref: KeyRef, tags: Mapping[str, str]) -> None:
        self._unsupported("tags")

    def untag_key(self, ref: KeyRef, keys: list[str]) -> None:
        self._unsupported("tags")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __reduce__(self):
        # Providers hold live clients/sessions; filesystems re-create them
        # from their (secret-free) options instead of pickling them.
        raise TypeError(f"{type(self).__name__} cannot be pickled; pickle the filesystem instead")
