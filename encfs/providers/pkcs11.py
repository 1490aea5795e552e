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
open.  A key provisioned outside encfs (any other ``CKA_ID``) is version 1
of its label; rotating it adds versions 2, 3, ... in encfs's scheme.  A key
wraps new data keys only if it is an AES-256 secret key that is sensitive,
not extractable and allowed to encrypt and decrypt; otherwise the error
says which of these fails (docs/HSM.md "Keys provisioned elsewhere").

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
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import (
    ConfigurationError,
    IntegrityError,
    KeyNotFoundError,
    KeyServiceError,
    KeyStateError,
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
    _Unusable,
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


# -- key objects found by label ------------------------------------------------------
@dataclass
class _Found:
    """The objects a label names: encfs versions (a key provisioned outside
    encfs counts as version 1), secret keys without a version id, and a
    description of every other object (a key pair, a certificate)."""

    versions: dict[int, list[Any]] = field(default_factory=dict)
    foreign: list[Any] = field(default_factory=list)
    foreign_v1: bool = False
    others: list[str] = field(default_factory=list)


def _version_of(ident: Any) -> int:
    """The encfs version in a CKA_ID (4 bytes, big-endian, > 0), else 0."""
    if isinstance(ident, bytes) and len(ident) == _ID.size:
        return _ID.unpack(ident)[0]
    return 0


def _id_text(ident: Any) -> str:
    return ident.hex() if isinstance(ident, bytes) and ident else "(empty)"


def _enum_name(value: Any) -> str:
    return getattr(value, "name", str(value)).replace("_", " ")


def _kind(p11: Any, obj: Any) -> str:
    """'RSA private key', 'certificate', ... for error messages."""
    cls = obj.object_class
    what = _enum_name(cls).lower()
    if cls in (p11.ObjectClass.PUBLIC_KEY, p11.ObjectClass.PRIVATE_KEY, p11.ObjectClass.SECRET_KEY):
        try:
            what = f"{_enum_name(obj[p11.Attribute.KEY_TYPE])} {what}"
        except p11.exceptions.PKCS11Error:
            pass
    return what


def _key_type(p11: Any, obj: Any) -> str:
    """'AES-256', 'DES3', ... of a secret key."""
    A = p11.Attribute
    key_type = obj[A.KEY_TYPE]
    if key_type == p11.KeyType.AES:
        return f"AES-{8 * int(obj[A.VALUE_LEN])}"
    return _enum_name(key_type)


def _problems(p11: Any, obj: Any, *, wrap: bool) -> list[str]:
    """Why secret key ``obj`` cannot serve as a root key (empty: it can).
    Unwrapping needs an AES-256 key allowed to decrypt; wrapping new data
    keys also needs it sensitive, not extractable and allowed to encrypt,
    whoever provisioned it (docs/HSM.md "Keys provisioned elsewhere")."""
    A = p11.Attribute
    key_type = _key_type(p11, obj)
    if key_type != "AES-256":
        return [f"its key type is {key_type} (root keys are AES-256)"]
    attrs = obj.get_attributes([A.SENSITIVE, A.EXTRACTABLE, A.ENCRYPT, A.DECRYPT, A.WRAP])
    out = []
    if wrap and not attrs[A.SENSITIVE]:
        out.append("it is not sensitive (CKA_SENSITIVE=false: its value can be read out of the token)")
    if wrap and attrs[A.EXTRACTABLE]:
        out.append("it is extractable (CKA_EXTRACTABLE=true: it can be wrapped out of the token)")
    only_wrap = " (it allows only C_WrapKey/C_UnwrapKey)" if attrs[A.WRAP] else ""
    if wrap and not attrs[A.ENCRYPT]:
        out.append(f"it may not encrypt (CKA_ENCRYPT=false: encfs wraps data keys with C_Encrypt){only_wrap}")
    if not attrs[A.DECRYPT]:
        out.append(f"it may not decrypt (CKA_DECRYPT=false: encfs unwraps data keys with C_Decrypt){only_wrap}")
    return out


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
    def _lookup(lease: _Lease, name: KeyName) -> _Found:
        """Every object labelled ``name.label``, sorted into versions."""
        p11 = _pkcs11()
        A = p11.Attribute
        found = _Found()
        for obj in list(lease.session.get_objects({A.LABEL: name.label})):
            if obj.object_class != p11.ObjectClass.SECRET_KEY:
                found.others.append(_kind(p11, obj))
                continue
            version = _version_of(obj[A.ID])
            if version:
                found.versions.setdefault(version, []).append(obj)
            else:
                found.foreign.append(obj)
        if found.foreign and 1 not in found.versions:
            # Provisioned outside encfs (pkcs11-tool, a vendor console, an
            # SO's script): whatever its CKA_ID, it is version 1 of the label.
            found.versions[1] = list(found.foreign)
            found.foreign_v1 = True
        return found

    def _current(self, lease: _Lease, name: KeyName, operation: str,
                 found: _Found | None = None) -> tuple[int, list[Any], bool]:
        """(version, its objects, whether it is a key provisioned outside encfs)."""
        found = found or self._lookup(lease, name)
        if not found.versions:
            if found.others:
                raise _Unusable(KeyStateError(
                    f"{name.uri} cannot be a root key: its label names only other objects "
                    f"({', '.join(sorted(found.others))}), no AES-256 secret key", key=name.uri, operation=operation))
            raise _Missing()
        version = max(found.versions)
        return version, found.versions[version], version == 1 and found.foreign_v1

    def _wrapping_object(self, lease: _Lease, name: KeyName, operation: str) -> tuple[int, Any]:
        """The current version's object, checked fit to wrap new data keys."""
        version, objs, foreign = self._current(lease, name, operation)
        if foreign and len(objs) > 1:
            ids = ", ".join(_id_text(o[_pkcs11().Attribute.ID]) for o in objs)
            raise KeyStateError(
                f"{name.uri} is ambiguous: {len(objs)} secret keys carry the label {name.label!r} without an "
                f"encfs version id (CKA_ID {ids}); give the one to use a label of its own",
                key=name.uri, operation=operation)
        obj = objs[0]
        if obj.handle not in lease.checked:
            problems = _problems(_pkcs11(), obj, wrap=True)
            if problems:
                raise KeyStateError(f"{name.uri} (version {version}) cannot wrap data keys: {'; '.join(problems)}",
                                    key=name.uri, operation=operation)
            lease.checked.add(obj.handle)
        return version, obj

    def _version_objects(self, lease: _Lease, name: KeyName, version: int) -> list[Any]:
        cached = lease.keys.get((name.label, version))
        if cached is not None:
            return cached
        p11 = _pkcs11()
        A = p11.Attribute
        objs = list(lease.session.get_objects(
            {A.CLASS: p11.ObjectClass.SECRET_KEY, A.LABEL: name.label, A.ID: _ID.pack(version)}))
        if not objs and version == 1:
            found = self._lookup(lease, name)
            if found.foreign_v1:
                # Any of them may be the one that wrapped it: GCM picks.
                checked = [(o, _problems(p11, o, wrap=False)) for o in found.foreign]
                objs = [o for o, problems in checked if not problems]
                if not objs:
                    why = "; ".join(sorted({p for _, problems in checked for p in problems}))
                    raise KeyStateError(f"{name.uri} (version 1) cannot unwrap data keys: {why}",
                                        key=name.uri, operation="unwrap")
        if not objs:
            raise _Missing()
        lease.keys[(name.label, version)] = objs
        return objs

    def _run(self, name: KeyName, operation: str, fn: Callable[[_Lease], T],
             missing: Callable[[], KeyServiceError] | None = None) -> T:
        try:
            return self._pool(name.token).run(fn, name=name, operation=operation)
        except _Unusable as exc:
            raise exc.error from None
        except _Missing:
            err = missing() if missing else KeyNotFoundError(
                f"no key labelled {name.label!r} in PKCS#11 token {name.token!r}", key=name.uri, operation=operation)
            raise err from None

    # -- KeyProvider -------------------------------------------------------------------
    def resolve(self, ref: KeyRef) -> str:
        name = self._name(ref)
        self._run(name, "resolve", lambda lease: self._current(lease, name, "resolve"))
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
            version, obj = self._wrapping_object(lease, name, "wrap")
            iv = os.urandom(IV_BYTES)
            params = p11.mechanisms.GCMParams(iv, wrap_aad(name, str(version), context), TAG_BYTES * 8)
            return version, iv + obj.encrypt(dek, mechanism=p11.Mechanism.AES_GCM, mechanism_param=params)

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
            found = self._lookup(lease, name)
            version, current, foreign = self._current(lease, name, "describe", found)
            versions = found.versions
            objs = [obj for group in versions.values() for obj in group]

            def every(attr: Any) -> bool:
                return all(bool(obj[attr]) for obj in objs)

            if foreign and len(current) > 1:
                problems = [f"{len(current)} secret keys carry the label without an encfs version id"]
            else:
                problems = _problems(p11, current[0], wrap=True)
            # Attributes over *all* versions: one extractable old version is
            # enough for the key's material to leave the token.
            extra: dict[str, Any] = {
                "token": name.token, "label": name.label, "module": self.module_path,
                "key_type": "/".join(sorted({_key_type(p11, obj) for obj in objs})),
                "sensitive": every(A.SENSITIVE), "extractable": any(bool(obj[A.EXTRACTABLE]) for obj in objs),
                "always_sensitive": every(A.ALWAYS_SENSITIVE), "never_extractable": every(A.NEVER_EXTRACTABLE),
                "generated_in_token": every(A.LOCAL),
                "provisioned": "outside encfs (version 1 has no encfs CKA_ID)" if found.foreign_v1 else "encfs",
                "usable": not problems,
            }
            if problems:
                extra["problem"] = "; ".join(problems)
            return KeyInfo(
                uri=name.uri, key_id=name.key_id, provider=self.scheme, state="Enabled",
                current_version=str(version), versions=[str(n) for n in sorted(versions)], extra=extra,
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
            # encfs's own keys, and AES keys provisioned by other tools.
            objs = list(lease.session.get_objects({A.CLASS: p11.ObjectClass.SECRET_KEY}))
            return sorted({o[A.LABEL] for o in objs
                           if o[A.LABEL] and (_version_of(o[A.ID]) or o[A.KEY_TYPE] == p11.KeyType.AES)})

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
            found = self._lookup(lease, name)
            if found.foreign_v1:
                raise ConfigurationError(
                    f"key {name.uri} already exists, provisioned outside encfs: use it as it is "
                    "('encfs hsm check' tells whether it qualifies), or rotate it to add encfs versions")
            if found.versions:
                raise ConfigurationError(f"key {name.uri} already exists")
            self._generate(lease, name, 1)

        with self._admin_lock:
            self._pool(name.token).run(op, name=name, operation="create")
        return self.describe(KeyRef(self.scheme, name.key_id))

    def rotate_key(self, ref: KeyRef) -> KeyInfo:
        """Generate the next version; older versions stay and keep unwrapping."""
        name = self._name(ref)

        def op(lease: _Lease) -> None:
            version, _, _ = self._current(lease, name, "rotate")
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

