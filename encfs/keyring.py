"""The keyring: turns key references into wrapped data keys and back.

It owns one provider instance per URI scheme (created lazily from
secret-free options), generates a data key under the first root key and
wraps it under the others, and on read picks the wrapped entries this
filesystem may use, unwraps one, and accepts it only if it matches the
header's key commitment (so a substituted entry is harmless).

The encryption context given to key services is the header context minus
the object path: coarse enough that one data key can serve many objects
(the data-key cache), while the header MAC binds the exact path.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError, EncfsError, IntegrityError, KeyServiceError, NoUsableKeyError
from .format import PATH_KEY, Header, ObjectKeys, WrappedKey, derive_object_keys
from .providers import KeyProvider, KeyRef, make_provider

DEFAULT_KEY = "local://default"


def service_context(context: Mapping[str, str]) -> dict[str, str]:
    """The context sent to key services: everything but the bound path."""
    return {k: v for k, v in context.items() if k != PATH_KEY}


class Keyring:
    """Root keys for writing, the allow-list for reading, and their providers."""

    def __init__(
        self,
        keys: str | list[str] | None = None,
        *,
        decrypt_keys: list[str] | None = None,
        provider_options: Mapping[str, Mapping[str, Any]] | None = None,
        providers: Mapping[str, KeyProvider] | None = None,
    ) -> None:
        if keys is None:
            keys = [DEFAULT_KEY]
        elif isinstance(keys, str):
            keys = [keys]
        if not keys:
            raise ConfigurationError("at least one root key is needed")
        self.write_refs = [KeyRef.parse(k) for k in keys]
        self.read_refs = self.write_refs + [KeyRef.parse(k) for k in (decrypt_keys or [])]
        self._options = {k: dict(v) for k, v in (provider_options or {}).items()}
        self._providers: dict[str, KeyProvider] = dict(providers or {})
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Keyring(keys={[str(r) for r in self.write_refs]})"

    def provider(self, scheme: str) -> KeyProvider:
        with self._lock:
            p = self._providers.get(scheme)
            if p is None:
                p = make_provider(scheme, self._options.get(scheme))
                self._providers[scheme] = p
            return p

    # -- write side ------------------------------------------------------------
    def new_data_key(self, context: Mapping[str, str]) -> tuple[bytes, list[WrappedKey]]:
        """A fresh data key and its wrapped copies, one per write key."""
        ctx = service_context(context)
        first, rest = self.write_refs[0], self.write_refs[1:]
        dek, wrapped = self.provider(first.scheme).generate_data_key(first, ctx)
        entries = [wrapped]
        for ref in rest:
            entries.append(self.provider(ref.scheme).wrap(ref, dek, ctx))
        return dek, entries

    def rewrap(self, dek: bytes, context: Mapping[str, str], refs: list[KeyRef] | None = None) -> list[WrappedKey]:
        """Wrap an existing data key under ``refs`` (default: the write keys)."""
        ctx = service_context(context)
        return [self.provider(r.scheme).wrap(r, dek, ctx) for r in (refs or self.write_refs)]

    # -- read side ---------------------------------------------------------------
    def unwrap(self, header: Header, path: str | None = None) -> tuple[bytes, ObjectKeys]:
        """The data key of ``header`` and the derived object keys.

        Raises the most telling error when no entry works: a key-service error
        (state, access, availability) if one occurred, IntegrityError if an
        entry unwrapped to a key that fails the commitment, NoUsableKeyError
        if no entry names a key this filesystem may use.
        """
        ctx = service_context(header.context)
        key_error: EncfsError | None = None
        integrity = False
        for entry in header.wrapped_keys:
            try:
                provider = self.provider(entry.provider)
            except ConfigurationError as exc:
                key_error = key_error or exc
                continue
            try:
                if not provider.allows(entry, self.read_refs):
                    continue
                dek = provider.unwrap(entry, ctx)
            except IntegrityError:
                integrity = True
                continue
            except KeyServiceError as exc:
                key_error = exc
                continue
            keys = derive_object_keys(dek, header.object_id, header.suite)
            if keys.matches(header.commitment):
                return dek, keys
            integrity = True
        if key_error is not None:
            raise key_error
        if integrity:
            raise IntegrityError(path)
        names = ", ".join(f"{w.provider}://{w.key_id} (v{w.version})" for w in header.wrapped_keys)
        raise NoUsableKeyError(
            f"no root key this filesystem may use can unwrap {path or 'the object'}; it is wrapped under: {names}",
            operation="unwrap",
        )
