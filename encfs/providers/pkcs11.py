"""PKCS#11 provider: root keys that live in an HSM, ``pkcs11://<token>/<key>``.

Root keys are AES-256 secret keys generated inside the token as token
objects that are private, sensitive and non-extractable (set explicitly,
never left to the module's defaults).  Data keys are wrapped by the HSM with
``CKM_AES_GCM`` (C_Encrypt/C_Decrypt under the root key); the associated data
binds the wrapping suite, token and key label, key version and the canonical
encryption context, so a wrapped entry moved to another key, version or
context fails authentication.  docs/HSM.md describes the design.

Versions: every version of a key is its own token object with the same
``CKA_LABEL`` and a ``CKA_ID`` of 4 bytes holding the version number
(big-endian).  The current version is the highest; rotation generates the
next one and never deletes older ones, so objects wrapped under them still
open.

Secrets: the module path and token label come from options or environment;
the user PIN only from ``ENCFS_PKCS11_PIN`` or the file named by
``ENCFS_PKCS11_PIN_FILE``, read at login and never stored on the provider,
so no PIN reaches a repr, an error, a pickle or ``to_json()``.

Token access — loading the library, the PIN, the per-process session pools
with reconnection, and error translation — lives in pkcs11_token.py.
"""

from __future__ import annotations

import os
import struct
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..errors import (
    ConfigurationError,
    IntegrityError,
    KeyNotFoundError,
    KeyServiceError,
    KeyUnavailableError,
)
from ..format import DEK_BYTES, WrappedKey, encode_context
from .base import KeyInfo, KeyProvider, KeyRef

# Token access (library, names, PIN, session pools, error translation) lives
# in pkcs11_token.py; these names are re-exported for callers of this module.
from .pkcs11_token import (  # noqa: F401
    ENV_MODULE,
    ENV_PIN,
    ENV_PIN_FILE,
    ENV_TOKEN,
    KeyName,
    _Lease,
    _Missing,
    _module,
    _pkcs11,
    _TokenPool,
    read_pin,
    translate,
)

#: First byte of every wrapped blob: the blob layout and wrapping suite.
BLOB_V1 = 1
#: The wrapping suite the AAD names (docs/HSM.md "Wrapped data keys").
WRAP_SUITE = b"AES-256-GCM/PKCS11/v1"
IV_BYTES = 12
TAG_BYTES = 16
BLOB_BYTES = 1 + IV_BYTES + DEK_BYTES + TAG_BYTES
#: CKA_ID of a version object: the version number, 4 bytes big-endian.
_ID = struct.Struct(">I")
MAX_VERSION = 2**32 - 1

T = TypeVar("T")

def wrap_aad(name: KeyName, version: str, context: Mapping[str, str]) -> bytes:
    """Associated data of one wrapped data key (docs/HSM.md): every field is
    length-prefixed so no two different tuples encode alike."""
    out = bytearray(b"encfs-pkcs11-wrap")
    for part in (bytes([BLOB_V1]), WRAP_SUITE, name.token.encode(), name.label.encode(), version.encode("ascii")):
        out += struct.pack(">H", len(part)) + part
    return bytes(out) + encode_context(context)


# -- the provider -------------------------------------------------------------------
def _root_key_template(p11: Any) -> dict[Any, Any]:
    """Attributes of a new root key, all explicit (docs/HSM.md "Root keys"):
    a token object usable only to encrypt/decrypt (wrap data keys), whose
    value never leaves the token."""
    A = p11.Attribute
    return {
        A.TOKEN: True,
        A.PRIVATE: True,
        A.SENSITIVE: True,
        A.EXTRACTABLE: False,
        A.ENCRYPT: True,
        A.DECRYPT: True,
        A.WRAP: False,
        A.UNWRAP: False,
        A.SIGN: False,
        A.VERIFY: False,
        A.DERIVE: False,
        A.MODIFIABLE: False,
    }


class Pkcs11Provider(KeyProvider):
    """Root keys in a PKCS#11 token.

    Options (all secret-free): ``module`` (path of the PKCS#11 library;
    default ``$ENCFS_PKCS11_MODULE``), ``token`` (default token for
    ``list_keys``/``create_key`` with a bare label; default
    ``$ENCFS_PKCS11_TOKEN``), ``max_sessions`` (per token, default 4).
    """

    scheme = "pkcs11"

    def __init__(self, module: str | None = None, *, token: str | None = None, max_sessions: int = 4,
                 **unexpected: Any) -> None:
        secretish = sorted(k for k in unexpected if "pin" in k.lower() or "pass" in k.lower())
        if secretish:
            raise ConfigurationError(
                f"the PKCS#11 provider takes no {', '.join(secretish)} option: a PIN never goes into "
                f"filesystem options; set {ENV_PIN} or {ENV_PIN_FILE}"
            )
        if unexpected:
            raise ConfigurationError(f"unknown PKCS#11 provider options: {', '.join(sorted(unexpected))}")
        _pkcs11()  # fail now, with the install hint, if python-pkcs11 is missing
        path = module or os.environ.get(ENV_MODULE)
        if not path:
            raise ConfigurationError(
                f"no PKCS#11 module: pass providers={{'pkcs11': {{'module': PATH}}}} or set {ENV_MODULE}"
            )
        if not os.path.isfile(path):
            raise ConfigurationError(f"PKCS#11 module {path!r} does not exist")
        self.module_path = os.path.abspath(path)
        self.default_token = token or os.environ.get(ENV_TOKEN) or None
        self.max_sessions = int(max_sessions)
        if self.max_sessions < 1:
            raise ConfigurationError("max_sessions must be at least 1")
        self._admin_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Pkcs11Provider(module={self.module_path!r}, token={self.default_token!r})"

    # -- plumbing --------------------------------------------------------------------
    def _pool(self, token: str) -> _TokenPool:
        # Shared by every provider of the process (login is per application
        # and token); the first one to use a token sets its session bound.
        return _module(self.module_path).pool(token, self.max_sessions)

    def _name(self, ref: KeyRef) -> KeyName:
        if ref.scheme != self.scheme:
            raise ConfigurationError(f"{ref} is not a pkcs11:// key")
        return KeyName.parse(ref.name)

    @staticmethod
    def _versions(lease: _Lease, name: KeyName) -> dict[int, list[Any]]:
        """Every encfs-managed version object of ``name`` (label match, 4-byte ID)."""
        p11 = _pkcs11()
        A = p11.Attribute
        found = list(lease.session.get_objects({A.CLASS: p11.ObjectClass.SECRET_KEY, A.LABEL: name.label}))
        out: dict[int, list[Any]] = {}
        for obj in found:
            ident = obj[A.ID]
            if isinstance(ident, bytes) and len(ident) == _ID.size and _ID.unpack(ident)[0] > 0:
                out.setdefault(_ID.unpack(ident)[0], []).append(obj)
        return out

    def _current(self, lease: _Lease, name: KeyName) -> tuple[int, list[Any]]:
        versions = self._versions(lease, name)
        if not versions:
            raise _Missing()
        version = max(versions)
        return version, versions[version]

    @staticmethod
    def _version_objects(lease: _Lease, name: KeyName, version: int) -> list[Any]:
        cached = lease.keys.get((name.label, version))
        if cached is not None:
            return cached
        p11 = _pkcs11()
        A = p11.Attribute
        objs = list(lease.session.get_objects(
            {A.CLASS: p11.ObjectClass.SECRET_KEY, A.LABEL: name.label, A.ID: _ID.pack(version)}))
        if not objs:
            raise _Missing()
        lease.keys[(name.label, version)] = objs
        return objs

    def _run(self, name: KeyName, operation: str, fn: Callable[[_Lease], T],
             missing: Callable[[], KeyServiceError] | None = None) -> T:
        try:
            return self._pool(name.token).run(fn, name=name, operation=operation)
        except _Missing:
            err = missing() if missing else KeyNotFoundError(
                f"no key labelled {name.label!r} in PKCS#11 token {name.token!r}", key=name.uri, operation=operation)
            raise err from None

    # -- KeyProvider -------------------------------------------------------------------
    def resolve(self, ref: KeyRef) -> str:
        name = self._name(ref)
        self._run(name, "resolve", lambda lease: self._current(lease, name))
        return name.key_id

    def allows(self, wrapped: WrappedKey, refs: list[KeyRef]) -> bool:
        # The allow-list is by name; deciding it needs no HSM round trip.
        for ref in refs:
            if ref.scheme == self.scheme:
                try:
                    if KeyName.parse(ref.name).key_id == wrapped.key_id:
                        return True
                except ConfigurationError:
                    continue
        return False

    def wrap(self, ref: KeyRef, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        if len(dek) != DEK_BYTES:
            raise ValueError("data keys are 32 bytes")
        name = self._name(ref)
        p11 = _pkcs11()

        def op(lease: _Lease) -> tuple[int, bytes]:
            version, objs = self._current(lease, name)
            iv = os.urandom(IV_BYTES)
            params = p11.mechanisms.GCMParams(iv, wrap_aad(name, str(version), context), TAG_BYTES * 8)
            return version, iv + objs[0].encrypt(dek, mechanism=p11.Mechanism.AES_GCM, mechanism_param=params)

        version, sealed = self._run(name, "wrap", op)
        return WrappedKey(self.scheme, name.key_id, str(version), bytes([BLOB_V1]) + sealed)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        # Everything here is attacker-controlled: check shape before the HSM sees it.
        blob, v = wrapped.wrapped, wrapped.version
        if (wrapped.provider != self.scheme or len(blob) != BLOB_BYTES or blob[0] != BLOB_V1
                or not v.isdigit() or not v.isascii() or v != str(int(v)) or not 0 < int(v) <= MAX_VERSION):
            raise IntegrityError()
        try:
            name = KeyName.parse(wrapped.key_id)
        except ConfigurationError:
            raise IntegrityError() from None
        version = int(v)
        p11 = _pkcs11()
        e = p11.exceptions
        iv, sealed = blob[1 : 1 + IV_BYTES], blob[1 + IV_BYTES :]
        aad = wrap_aad(name, v, context)

        def op(lease: _Lease) -> bytes | None:
            for obj in self._version_objects(lease, name, version):
                params = p11.mechanisms.GCMParams(iv, aad, TAG_BYTES * 8)
                try:
                    return bytes(obj.decrypt(sealed, mechanism=p11.Mechanism.AES_GCM, mechanism_param=params))
                # A failed GCM tag check: SoftHSM2 answers CKR_GENERAL_ERROR,
                # others CKR_ENCRYPTED_DATA_INVALID or CKR_FUNCTION_FAILED.
                except (e.EncryptedDataInvalid, e.EncryptedDataLenRange, e.GeneralError, e.FunctionFailed,
                        e.DataInvalid, e.DataLenRange):
                    continue
            return None

        dek = self._run(name, "unwrap", op, missing=lambda: KeyNotFoundError(
            f"version {version} of key {name.label!r} is not in PKCS#11 token {name.token!r}",
            key=name.uri, operation="unwrap"))
        if dek is None or len(dek) != DEK_BYTES:
            raise IntegrityError()
        return dek

    def describe(self, ref: KeyRef) -> KeyInfo:
        name = self._name(ref)
        p11 = _pkcs11()
        A = p11.Attribute

        def op(lease: _Lease) -> KeyInfo:
            versions = self._versions(lease, name)
            if not versions:
                raise _Missing()
            objs = [obj for group in versions.values() for obj in group]

            def every(attr: Any) -> bool:
                return all(bool(obj[attr]) for obj in objs)

            # Attributes over *all* versions: one extractable old version is
            # enough for the key's material to leave the token.
            return KeyInfo(
                uri=name.uri, key_id=name.key_id, provider=self.scheme, state="Enabled",
                current_version=str(max(versions)), versions=[str(n) for n in sorted(versions)],
                extra={
                    "token": name.token, "label": name.label, "module": self.module_path,
                    "key_type": "/".join(sorted({f"AES-{8 * int(obj[A.VALUE_LEN])}" for obj in objs})),
                    "sensitive": every(A.SENSITIVE), "extractable": any(bool(obj[A.EXTRACTABLE]) for obj in objs),
                    "always_sensitive": every(A.ALWAYS_SENSITIVE), "never_extractable": every(A.NEVER_EXTRACTABLE),
                    "generated_in_token": every(A.LOCAL),
                },
            )

        return self._run(name, "describe", op)

    def _token_for_listing(self) -> str:
        if self.default_token:
            return self.default_token
        p11 = _pkcs11()
        mod = _module(self.module_path)
        try:
            with mod.call_lock:
                labels = [s.get_token().label for s in mod.lib().get_slots(token_present=True)]
        except p11.exceptions.PKCS11Error as exc:
            raise KeyUnavailableError(f"cannot list the tokens of PKCS#11 module {self.module_path}",
                                      operation="list") from exc
        labels = [lb for lb in labels if lb]  # SoftHSM2 keeps one uninitialised slot
        if len(labels) != 1:
            raise ConfigurationError(
                f"PKCS#11 module has {len(labels)} initialised tokens; name one with the provider option "
                f"token= or {ENV_TOKEN}"
            )
        return labels[0]

    def list_keys(self) -> list[KeyInfo]:
        token = self._token_for_listing()
        p11 = _pkcs11()
        A = p11.Attribute

        def op(lease: _Lease) -> list[str]:
            objs = lease.session.get_objects({A.CLASS: p11.ObjectClass.SECRET_KEY})
            return sorted({o[A.LABEL] for o in objs if isinstance(o[A.ID], bytes) and len(o[A.ID]) == _ID.size})

        labels = self._pool(token).run(op, name=None, operation="list")
        return [self.describe(KeyRef(self.scheme, f"{token}/{label}")) for label in labels]

    def _name_for_create(self, alias: str | None) -> KeyName:
        if alias and alias.startswith("pkcs11://"):
            alias = alias[len("pkcs11://"):]
        if alias and "/" in alias:
            return KeyName.parse(alias)
        token = self.default_token or self._token_for_listing()
        return KeyName.parse(f"{token}/{alias or 'encfs-' + uuid.uuid4().hex[:12]}")

    def _generate(self, lease: _Lease, name: KeyName, version: int) -> None:
        p11 = _pkcs11()
        lease.session.generate_key(
            p11.KeyType.AES, 256, label=name.label, id=_ID.pack(version), store=True,
            template=_root_key_template(p11),
        )

    def create_key(self, *, alias: str | None = None, description: str = "",
                   tags: Mapping[str, str] | None = None) -> KeyInfo:
        """Generate version 1 of a new root key inside the token.  ``alias`` is
        the key label, ``token/label`` or ``pkcs11://token/label``."""
        if description or tags:
            raise ConfigurationError("PKCS#11 keys carry no description or tags (the token has no place for them)")
        name = self._name_for_create(alias)

        def op(lease: _Lease) -> None:
            if self._versions(lease, name):
                raise ConfigurationError(f"key {name.uri} already exists")
            self._generate(lease, name, 1)

        with self._admin_lock:
            self._pool(name.token).run(op, name=name, operation="create")
        return self.describe(KeyRef(self.scheme, name.key_id))

    def rotate_key(self, ref: KeyRef) -> KeyInfo:
        """Generate the next version; older versions stay and keep unwrapping."""
        name = self._name(ref)

        def op(lease: _Lease) -> None:
            version, _ = self._current(lease, name)
            if version >= MAX_VERSION:
                raise ConfigurationError(f"key {name.uri} has no version numbers left")
            self._generate(lease, name, version + 1)

        with self._admin_lock:
            self._run(name, "rotate", op)
        return self.describe(ref)

    def rotation_status(self, ref: KeyRef) -> dict[str, Any]:
        info = self.describe(ref)
        return {"uri": info.uri, "automatic": False, "current_version": info.current_version,
                "versions": info.versions}

