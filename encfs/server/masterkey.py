"""The master-key seam: wraps what the server stores (root key material,
sealed secret access keys) so that a copy of the database alone decrypts
nothing.

:class:`MasterKey` is the interface: ``wrap``/``unwrap`` bytes with
associated data that names what the blob is (``b"key-material|<key id>|<v>"``,
``b"secret|<access key id>"``), so a blob moved to another row fails to
unwrap.  ``key_id`` names the master key (and its version, once a backend
has versions); storage records it beside every blob so a master-key rotation
can find and re-wrap what the old key wrapped.  Calls are synchronous and
short (an HSM backend may hold a session pool).

:class:`LocalKeystoreMasterKey` is the first implementation: a root key in
encfs's local keystore (``local://alias/...``; the keystore may be sealed
with a passphrase, ``ENCFS_PASSPHRASE``).  Each blob is an envelope: a fresh
32-byte data key encrypts the payload with AES-256-GCM and the keystore
wraps that data key through the public local provider, so keystore key
rotation keeps old blobs readable (the wrapped entry names its version).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import EncfsError, KeyNotFoundError
from ..format import WrappedKey

_MAGIC = b"EKM1"
_NONCE = 12


class MasterKeyError(EncfsError):
    """A blob could not be wrapped or unwrapped (wrong master key, damaged blob)."""


class MasterKey(ABC):
    """Wraps and unwraps the server's stored secrets."""

    #: Identifies the master key that wrapped a blob (stored beside it).
    key_id: str

    @abstractmethod
    def wrap(self, plaintext: bytes, aad: bytes) -> bytes: ...

    @abstractmethod
    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        """Raises :class:`MasterKeyError` for a blob it cannot open."""

    def close(self) -> None:
        """Release sessions or handles."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key_id!r})"

    def __reduce__(self):  # never pickled into a worker or a log
        raise TypeError("master keys cannot be pickled")


class CachingMasterKey(MasterKey):
    """Remembers recent unwraps of ``inner`` (bounded: ``max_entries``,
    each for at most ``ttl`` seconds).

    Only the cryptography is saved: callers still read the wrapped blob from
    storage on every request, so a deleted key or a revoked access key (whose
    blob is gone) is never served from here, and a key's state, policy and
    grants are always read afresh.  What stays in memory is what the server
    holds while it uses a key anyway: unwrapped material of recently used
    key versions and access keys.
    """

    def __init__(self, inner: MasterKey, *, max_entries: int = 4096, ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.key_id = inner.key_id
        self.max_entries = max_entries
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[bytes, bytes], tuple[float, bytes]] = OrderedDict()

    def __repr__(self) -> str:
        return f"Caching({self.inner!r})"

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        return self.inner.wrap(plaintext, aad)

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        key = (blob, aad)
        now = self.clock()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] > now:
                self._entries.move_to_end(key)
                return hit[1]
        plaintext = self.inner.unwrap(blob, aad)
        with self._lock:
            self._entries[key] = (now + self.ttl, plaintext)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return plaintext

    def forget(self) -> None:
        with self._lock:
            self._entries.clear()

    def close(self) -> None:
        self.forget()
        self.inner.close()


def material_aad(key_id: str, version: int) -> bytes:
    return f"encfs-server/key-material|{key_id}|{version}".encode()


def secret_aad(access_key_id: str) -> bytes:
    return f"encfs-server/secret|{access_key_id}".encode()


class LocalKeystoreMasterKey(MasterKey):
    """A root key of the local keystore at ``home`` (alias ``alias``),
    created on first use when ``create`` is true."""

    def __init__(self, home: str | os.PathLike[str] | None, alias: str = "encfs-server/master", *,
                 create: bool = False) -> None:
        from ..providers.base import KeyRef
        from ..providers.local import LocalProvider

        self._provider = LocalProvider(home)
        name = alias.removeprefix("alias/")
        try:
            key_id = self._provider.keystore.resolve(name)
        except KeyNotFoundError:
            if not create:
                raise
            key_id = self._provider.keystore.create_key(alias=name, description="encfs key server master key")
        self._ref = KeyRef("local", key_id)
        self.key_id = f"local://{key_id}"

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes:
        dek, entry = self._provider.generate_data_key(self._ref, {"encfs-server": "master"})
        nonce = os.urandom(_NONCE)
        body = AESGCM(dek).encrypt(nonce, plaintext, aad)
        head = entry.encode()
        return _MAGIC + struct.pack(">H", len(head)) + head + nonce + body

    def unwrap(self, blob: bytes, aad: bytes) -> bytes:
        try:
            if blob[:4] != _MAGIC:
                raise ValueError("not a master-key blob")
            (n,) = struct.unpack(">H", blob[4:6])
            entry = _decode_entry(blob[6:6 + n])
            rest = blob[6 + n:]
            if entry.key_id != self._ref.name:
                raise ValueError("wrapped by another master key")
            dek = self._provider.unwrap(entry, {"encfs-server": "master"})
            return AESGCM(dek).decrypt(rest[:_NONCE], rest[_NONCE:], aad)
        except (ValueError, struct.error, InvalidTag, EncfsError) as exc:
            raise MasterKeyError(f"cannot unwrap a stored secret with master key {self.key_id}: "
                                 f"{type(exc).__name__}") from None


def _decode_entry(raw: bytes) -> WrappedKey:
    # The inverse of WrappedKey.encode (docs/FORMAT.md, wrapped-key entries).
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, raw, pos)
        pos += struct.calcsize(fmt)
        return value

    def field(length: int) -> bytes:
        nonlocal pos
        if pos + length > len(raw):
            raise ValueError("truncated entry")
        out = raw[pos:pos + length]
        pos += length
        return out

    provider = field(take(">B")).decode("ascii")
    key_id = field(take(">H")).decode("utf-8")
    version = field(take(">B")).decode("ascii")
    wrapped = field(take(">H"))
    if pos != len(raw) or provider != "local":
        raise ValueError("bad entry")
    return WrappedKey(provider, key_id, version, wrapped)
