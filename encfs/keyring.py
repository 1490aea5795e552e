"""The keyring: turns key references into wrapped data keys and back.

It owns one provider instance per URI scheme (created lazily from
secret-free options), generates a data key under the first root key and
wraps it under the others, and on read picks the wrapped entries this
filesystem may use, unwraps one, and accepts it only if it matches the
header's key commitment (so a substituted entry is harmless).

The encryption context given to key services is the header context minus
the object path: coarse enough that one data key can serve many objects
(the data-key cache), while the header MAC binds the exact path.

The data-key cache (cache.py, docs/CACHE.md) sits between the keyring and
the providers: ``new_data_key`` reuses a generated key within the limits,
``unwrap`` reuses an unwrapped key by the digest of its wrapped entry.  The
keyring counts every key-service call itself, cache or not, so ``stats()``
tells the truth about what reached the key service.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from .cache import CacheLimits, DataKeyCache, partition_id, wrapped_digest
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
        cache: bool | Mapping[str, Any] | None = True,
    ) -> None:
        if keys is None:
            keys = [DEFAULT_KEY]
        elif isinstance(keys, str):
            keys = [keys]
        if not keys:
            raise ConfigurationError("at least one root key is needed")
        self.write_refs = [KeyRef.parse(k) for k in keys]
        self._write_uris = tuple(str(r) for r in self.write_refs)
        self.read_refs = self.write_refs + [KeyRef.parse(k) for k in (decrypt_keys or [])]
        #: Key services a read may consult: only those a configured key names.
        #: An entry of any other service is skipped before its provider is
        #: even built (no keystore opened, no passphrase prompt, no client).
        self.read_schemes = frozenset(r.scheme for r in self.read_refs)
        self._options = {k: dict(v) for k, v in (provider_options or {}).items()}
        self._providers: dict[str, KeyProvider] = dict(providers or {})
        #: Providers this keyring created itself (re-created after a fork).
        self._made: dict[str, KeyProvider] = {}
        self._lock = threading.Lock()
        limits = CacheLimits.from_option(cache)
        self.cache: DataKeyCache | None = DataKeyCache(limits) if limits is not None else None
        self._calls = {"generate_calls": 0, "wrap_calls": 0, "unwrap_calls": 0, "key_service_errors": 0}
        self._calls_lock = threading.Lock()
        _KEYRINGS.add(self)

    def __repr__(self) -> str:
        return f"Keyring(keys={[str(r) for r in self.write_refs]})"

    def provider(self, scheme: str) -> KeyProvider:
        with self._lock:
            p = self._providers.get(scheme)
            if p is None:
                from .audit import audited  # every key-service call leaves one audit line (encfs/audit.py)

                p = audited(make_provider(scheme, self._options.get(scheme)), self._options.get("local", {}).get("home"))
                self._providers[scheme] = p
                self._made[scheme] = p
            return p

    def _after_fork_in_child(self) -> None:
        """Child side of a fork: a new lock (the old one may be held by a
        parent thread that does not exist here) and fresh providers, since
        SDK clients and HSM sessions must not be shared with the parent
        (PKCS#11 requires a new C_Initialize; HTTP pools share sockets).
        Providers handed in by the caller cannot be re-created and stay."""
        self._lock = threading.Lock()
        self._calls_lock = threading.Lock()
        for scheme, made in list(self._made.items()):
            if self._providers.get(scheme) is made:
                del self._providers[scheme]
        self._made.clear()

    # -- counters ----------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        with self._calls_lock:
            self._calls[name] += n

    def stats(self) -> dict[str, Any]:
        """Key-service calls made by this keyring and the cache's counters.

        ``key_service_calls`` is generate + wrap + unwrap calls, attempted
        (failed calls count too).  With ``cache=False`` the cache fields are
        absent and ``cache_enabled`` is False.
        """
        with self._calls_lock:
            out: dict[str, Any] = dict(self._calls)
        out["key_service_calls"] = out["generate_calls"] + out["wrap_calls"] + out["unwrap_calls"]
        out["cache_enabled"] = self.cache is not None
        if self.cache is not None:
            out.update(self.cache.stats())
        return out

    def clear_cache(self) -> None:
        """Forget (and wipe) every cached data key, e.g. after revoking a key."""
        if self.cache is not None:
            self.cache.clear()

    # -- write side ------------------------------------------------------------
    def new_data_key(self, context: Mapping[str, str], nbytes: int | None = None) -> tuple[bytes, list[WrappedKey]]:
        """A data key and its wrapped copies, one per write key.

        With the cache on, a key generated for an earlier object of the same
        root keys and service context is reused within the limits; each
        object still derives its own keys from its random object id.  The
        writer reports its plaintext size at close with
        :meth:`record_plaintext` (the ``max_bytes`` limit), or, when it
        knows the size now (a value written whole), passes it as ``nbytes``
        and it is accounted here, in the same step as the hand-out.
        """
        ctx = service_context(context)
        cache = self.cache
        if cache is None or not cache.reuses_encryption_keys:
            # Nothing could be reused: no single flight, which would only
            # serialise the key-service calls of concurrent writers.
            dek, entries = self._generate(ctx)
            if cache is not None:
                cache.count_encrypt_miss()
                if nbytes is not None:
                    cache.account(entries, nbytes)
            return dek, entries
        part = partition_id(self._write_uris, ctx)
        hit = cache.take_encryption_key(part, nbytes)
        if hit is None:
            with cache.flight("enc", part):
                # Another thread may have filled the slot while we waited.
                hit = cache.take_encryption_key(part, nbytes)
                if hit is None:
                    dek, entries = self._generate(ctx)
                    cache.put_encryption_key(part, dek, entries)
                    if nbytes is not None:
                        cache.account(entries, nbytes)
                    return dek, entries
        dek, cached = hit
        return dek, list(cached)

    def _generate(self, ctx: dict[str, str]) -> tuple[bytes, list[WrappedKey]]:
        first, rest = self.write_refs[0], self.write_refs[1:]
        self._count("generate_calls")
        try:
            dek, wrapped = self.provider(first.scheme).generate_data_key(first, ctx)
        except Exception:
            self._count("key_service_errors")
            raise
        entries = [wrapped]
        for ref in rest:
            entries.append(self._wrap(ref, dek, ctx))
        return dek, entries

    def _wrap(self, ref: KeyRef, dek: bytes, ctx: dict[str, str]) -> WrappedKey:
        self._count("wrap_calls")
        try:
            return self.provider(ref.scheme).wrap(ref, dek, ctx)
        except Exception:
            self._count("key_service_errors")
            raise

    def record_plaintext(self, wrapped: list[WrappedKey] | tuple[WrappedKey, ...], nbytes: int) -> None:
        """An object sealed under the data key of ``wrapped`` is finished
        with ``nbytes`` of plaintext: counts toward the key's ``max_bytes``."""
        if self.cache is not None:
            self.cache.account(wrapped, nbytes)

    def rewrap(self, dek: bytes, context: Mapping[str, str], refs: list[KeyRef] | None = None) -> list[WrappedKey]:
        """Wrap an existing data key under ``refs`` (default: the write keys)."""
        ctx = service_context(context)
        return [self._wrap(r, dek, ctx) for r in (refs or self.write_refs)]

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
        cache = self.cache if self.cache is not None and self.cache.limits.max_age > 0 else None
        digests: list[bytes] = []
        if cache is not None:
            # Any cached entry first: a hit needs no key-service call at all.
            # Only entries this keyring unwrapped itself (so allowed by its
            # fixed allow-list) are ever cached; the commitment is checked
            # on every hit, so a wrapped entry copied from another object
            # fails exactly as it would at the key service.
            digests = [wrapped_digest(e, ctx) for e in header.wrapped_keys]
            for digest in digests:
                dek = cache.get_decryption_key(digest)
                if dek is not None:
                    keys = derive_object_keys(dek, header.object_id, header.suite)
                    if keys.matches(header.commitment):
                        return dek, keys
                    integrity = True
        for i, entry in enumerate(header.wrapped_keys):
            if entry.provider not in self.read_schemes:
                # A service this filesystem was not configured with (a planted
                # entry, or one for other readers): never consulted, so it
                # costs nothing but a skipped entry (docs/SECURITY.md).
                continue
            try:
                provider = self.provider(entry.provider)
            except ConfigurationError as exc:
                # A configured scheme that cannot load (e.g. its SDK is missing).
                key_error = key_error or exc
                continue
            try:
                if not provider.allows(entry, self.read_refs):
                    continue
                if cache is None:
                    dek = self._unwrap(provider, entry, ctx)
                else:
                    with cache.flight("dec", digests[i]):
                        # A thread that unwrapped this entry while we waited
                        # saves us the call.
                        cached = cache.get_decryption_key(digests[i])
                        if cached is None:
                            cache.count_decrypt_miss()
                            dek = self._unwrap(provider, entry, ctx)
                            # Cached inside the flight, so the waiting threads
                            # find it.  Safe before the commitment check: the
                            # service authenticated the entry, so this is the
                            # key any later unwrap of it would return.
                            cache.put_decryption_key(digests[i], dek)
                        else:
                            dek = cached
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
        names = ", ".join(f"{w.provider}://{w.key_id}" + (f" (v{w.version})" if w.version else "") for w in header.wrapped_keys)
        raise NoUsableKeyError(
            f"no root key this filesystem may use can unwrap {path or 'the object'}; it is wrapped under: {names}",
            operation="unwrap",
        )

    def allows(self, entry: WrappedKey) -> bool:
        """Whether a read may use ``entry``: its service is configured and
        the provider's allow-list admits its key (the rule of :meth:`unwrap`,
        which rewrap obeys too)."""
        if entry.provider not in self.read_schemes:
            return False
        return self.provider(entry.provider).allows(entry, self.read_refs)

    def _unwrap(self, provider: KeyProvider, entry: WrappedKey, ctx: dict[str, str]) -> bytes:
        self._count("unwrap_calls")
        try:
            return provider.unwrap(entry, ctx)
        except Exception:
            self._count("key_service_errors")
            raise


#: Live keyrings, for the fork hook (weakly held).
_KEYRINGS: weakref.WeakSet[Keyring] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for keyring in list(_KEYRINGS):
        keyring._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
