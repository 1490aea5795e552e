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

Concurrency: PKCS#11 login state belongs to the application, per token, not
to a session, so sessions are pooled per (module, token) for the whole
process, not per provider.  python-pkcs11 calls ``C_Initialize(NULL)``,
which tells the module the application will not call it from several
threads at once (PKCS#11 v2.40 section 5.4); SoftHSM2 then switches its own
mutexes off.  Calls into one module are therefore serialised by a
process-wide lock; the pool still keeps sessions open between calls and gives
each operation a session of its own.
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
    AccessDeniedError,
    ConfigurationError,
    IntegrityError,
    KeyNotFoundError,
    KeyServiceError,
    KeyUnavailableError,
)
from ..format import DEK_BYTES, WrappedKey, encode_context
from .base import KeyInfo, KeyProvider, KeyRef

ENV_MODULE = "ENCFS_PKCS11_MODULE"
ENV_PIN = "ENCFS_PKCS11_PIN"
ENV_PIN_FILE = "ENCFS_PKCS11_PIN_FILE"
ENV_TOKEN = "ENCFS_PKCS11_TOKEN"

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
MAX_TOKEN_LABEL = 32  # CK_TOKEN_INFO.label is 32 bytes
MAX_KEY_LABEL = 255

T = TypeVar("T")


def _pkcs11() -> Any:
    """python-pkcs11, imported on first use so ``import encfs`` does not need it."""
    try:
        import pkcs11
    except ImportError as exc:
        raise ConfigurationError(
            "the pkcs11:// key provider needs python-pkcs11: pip install encfs[pkcs11]"
        ) from exc
    return pkcs11


@dataclass(frozen=True)
class KeyName:
    """``<token label>/<key label>``: the canonical key id of a PKCS#11 key."""

    token: str
    label: str

    @classmethod
    def parse(cls, name: str) -> KeyName:
        token, sep, label = name.partition("/")
        if not sep or not token or not label:
            raise ConfigurationError(
                f"PKCS#11 key {name!r} must be written pkcs11://<token label>/<key label>"
            )
        if len(token.encode("utf-8")) > MAX_TOKEN_LABEL:
            raise ConfigurationError(f"PKCS#11 token label {token!r} is longer than {MAX_TOKEN_LABEL} bytes")
        if len(label.encode("utf-8")) > MAX_KEY_LABEL:
            raise ConfigurationError(f"PKCS#11 key label is longer than {MAX_KEY_LABEL} bytes")
        return cls(token, label)

    @property
    def key_id(self) -> str:
        return f"{self.token}/{self.label}"

    @property
    def uri(self) -> str:
        return f"pkcs11://{self.key_id}"


def wrap_aad(name: KeyName, version: str, context: Mapping[str, str]) -> bytes:
    """Associated data of one wrapped data key (docs/HSM.md): every field is
    length-prefixed so no two different tuples encode alike."""
    out = bytearray(b"encfs-pkcs11-wrap")
    for part in (bytes([BLOB_V1]), WRAP_SUITE, name.token.encode(), name.label.encode(), version.encode("ascii")):
        out += struct.pack(">H", len(part)) + part
    return bytes(out) + encode_context(context)


def read_pin(token: str) -> str:
    """The user PIN, from the environment only, read at login time."""
    pin = os.environ.get(ENV_PIN)
    if pin:
        return pin
    path = os.environ.get(ENV_PIN_FILE)
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                pin = fh.read().rstrip("\r\n")
        except OSError as exc:
            # The path is not secret; the error text of open() names only it.
            raise AccessDeniedError(
                f"cannot read the PIN file for PKCS#11 token {token!r} ({ENV_PIN_FILE}={path}): {exc.strerror}",
                key=f"pkcs11://{token}", operation="login",
            ) from exc
        if pin:
            return pin
        raise AccessDeniedError(f"the PIN file for PKCS#11 token {token!r} is empty ({path})",
                                key=f"pkcs11://{token}", operation="login")
    raise AccessDeniedError(
        f"no user PIN for PKCS#11 token {token!r}: set {ENV_PIN} or {ENV_PIN_FILE} "
        "(PINs are never taken from filesystem options)",
        key=f"pkcs11://{token}", operation="login",
    )


# -- error translation (the boundary) ----------------------------------------------
def _reconnect_errors(p11: Any) -> tuple[type[BaseException], ...]:
    """Errors after which the session, the login or the module state is gone:
    drop the pool's sessions, log in again and retry once."""
    e = p11.exceptions
    return (e.SessionHandleInvalid, e.SessionClosed, e.UserNotLoggedIn, e.DeviceRemoved, e.TokenNotPresent,
            e.KeyHandleInvalid, e.ObjectHandleInvalid, e.OperationActive)


def _is_uninitialised(p11: Any, exc: BaseException) -> bool:
    # python-pkcs11 raises the bare PKCS11Error only for return values it
    # considers impossible, CKR_CRYPTOKI_NOT_INITIALIZED among them (after a
    # C_Finalize behind our back): that state is cured by re-initialising.
    return type(exc) is p11.exceptions.PKCS11Error


def translate(exc: BaseException, *, name: KeyName | None, token: str, module: str, operation: str) -> KeyServiceError:
    """Map a python-pkcs11 exception to the encfs error tree.  Messages name
    the token, key and operation and the PKCS#11 error class; never a PIN."""
    p11 = _pkcs11()
    e = p11.exceptions
    uri = name.uri if name else f"pkcs11://{token}"
    kind = type(exc).__name__
    if isinstance(exc, (e.PinIncorrect, e.PinInvalid, e.PinLenRange)):
        return AccessDeniedError(f"PKCS#11 token {token!r} rejected the user PIN ({kind})", key=uri,
                                 operation=operation)
    if isinstance(exc, e.PinLocked):
        return AccessDeniedError(
            f"the user PIN of PKCS#11 token {token!r} is locked; its security officer must reset it",
            key=uri, operation=operation)
    if isinstance(exc, (e.PinExpired, e.UserPinNotInitialized)):
        return AccessDeniedError(f"the user PIN of PKCS#11 token {token!r} is expired or not set ({kind})",
                                 key=uri, operation=operation)
    if isinstance(exc, (e.NoSuchToken, e.TokenNotPresent, e.TokenNotRecognised, e.DeviceRemoved, e.SlotIDInvalid)):
        return KeyUnavailableError(f"PKCS#11 token {token!r} is not present in module {module}", key=uri,
                                   operation=operation)
    if isinstance(exc, e.MultipleTokensReturned):
        return KeyUnavailableError(f"several PKCS#11 tokens are labelled {token!r} in module {module}", key=uri,
                                   operation=operation)
    return KeyUnavailableError(f"PKCS#11 {operation} failed for {uri} ({kind})", key=uri, operation=operation)



class _Missing(Exception):
    """Raised inside an operation when a key object is not visible.  It may
    also mean the login was lost, so the pool logs in again once before the
    caller turns it into KeyNotFoundError."""


# -- process-wide module and session state --------------------------------------------
class _Module:
    """One loaded PKCS#11 module: the python-pkcs11 ``lib``, the lock that
    serialises calls into it, and the session pools of its tokens."""

    def __init__(self, path: str, reinit: bool) -> None:
        self.path = path
        self.call_lock = threading.RLock()
        self._pools: dict[str, _TokenPool] = {}
        self._pools_lock = threading.Lock()
        self._reinit = reinit

    def lib(self) -> Any:
        """The initialised library (re-initialised if someone finalised it, or
        once in a forked child, where PKCS#11 requires a fresh C_Initialize)."""
        p11 = _pkcs11()
        with self.call_lock:
            lib = p11.lib(self.path)  # cached by python-pkcs11; re-initialises a finalised lib
            if self._reinit:
                self._reinit = False
                lib.reinitialize()
            return lib

    def pool(self, token: str, max_sessions: int) -> _TokenPool:
        with self._pools_lock:
            pool = self._pools.get(token)
            if pool is None:
                pool = self._pools[token] = _TokenPool(self, token, max_sessions)
            return pool


_MODULES: dict[str, _Module] = {}
_MODULES_LOCK = threading.Lock()
_FORKED_PATHS: set[str] = set()


def _module(path: str) -> _Module:
    with _MODULES_LOCK:
        mod = _MODULES.get(path)
        if mod is None:
            mod = _MODULES[path] = _Module(path, reinit=path in _FORKED_PATHS)
            _FORKED_PATHS.discard(path)
        return mod


def _after_fork_in_child() -> None:
    # Sessions, logins and locks of the parent are not the child's: start
    # over, and re-initialise every module the parent had loaded.
    global _MODULES, _MODULES_LOCK
    _FORKED_PATHS.update(_MODULES)
    _MODULES = {}
    _MODULES_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(eq=False)
class _Lease:
    """A session lent to one operation, with the key objects found through it
    (object handles are looked up once per session, not per operation)."""

    session: Any
    generation: int
    keys: dict[tuple[str, int], list[Any]] = field(default_factory=dict)


class _TokenPool:
    """Sessions of one token.  One extra *anchor* session holds the login and
    is never lent out; the others are opened without a PIN and share its login
    (PKCS#11 logs in per application and token).  Closing the anchor logs all
    of them out, which is exactly what a reset wants."""

    def __init__(self, module: _Module, token: str, max_sessions: int) -> None:
        self.module = module
        self.token_label = token
        self.max_sessions = max(1, int(max_sessions))
        self.generation = 0
        self._cond = threading.Condition()
        self._idle: list[_Lease] = []
        self._open = 0
        self._anchor: Any = None
        self._token: Any = None

    # The library lock is always taken *after* and never while holding
    # self._cond, so the two locks cannot deadlock.
    def _connect(self) -> tuple[Any, int]:
        """Token object and login of the current generation (under call_lock)."""
        p11 = _pkcs11()
        if self._token is None:
            self._token = self.module.lib().get_token(token_label=self.token_label)
        if self._anchor is None:
            pin = read_pin(self.token_label)
            try:
                self._anchor = self._token.open(rw=True, user_pin=pin)
            except p11.exceptions.UserAlreadyLoggedIn:
                # A session of an earlier generation still holds the login
                # (it is closed when its operation returns it); the login we
                # wanted is there, and python-pkcs11 has already opened the
                # session it could not log in, which keeps it alive.
                self._anchor = False
            finally:
                del pin
        return self._token, self.generation

    def _acquire(self) -> _Lease:
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._open < self.max_sessions:
                    self._open += 1
                    break
                self._cond.wait()
        try:
            with self.module.call_lock:
                token, generation = self._connect()
                session = token.open(rw=True)
            return _Lease(session, generation)
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _release(self, lease: _Lease, broken: bool = False) -> None:
        with self._cond:
            if not broken and lease.generation == self.generation:
                self._idle.append(lease)
                self._cond.notify()
                return
            self._open -= 1
            self._cond.notify()
        self._close(lease.session)

    def _close(self, session: Any) -> None:
        if not session:
            return
        with self.module.call_lock:
            try:
                session.close()
            except Exception:  # noqa: BLE001, S110  (already invalid: nothing left to close)
                pass

    def reset(self, generation: int, reinitialise: bool = False) -> None:
        """Drop every session of ``generation`` (once, however many threads
        saw it fail) and the login; the next operation connects afresh."""
        with self._cond:
            if generation != self.generation:
                return
            self.generation += 1
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            anchor, self._anchor = self._anchor, None
            self._token = None
            self._cond.notify_all()
        for lease in idle:
            self._close(lease.session)
        self._close(anchor)  # C_Logout + C_CloseSession: ends the old login
        if reinitialise:
            with self.module.call_lock:
                try:
                    self.module.lib().reinitialize()
                except Exception:  # noqa: BLE001, S110  (the next connect reports what is wrong)
                    pass

    def run(self, fn: Callable[[_Lease], T], *, name: KeyName | None, operation: str) -> T:
        """Run ``fn`` with a session; reconnect and retry once when the session,
        login or module state was lost; translate PKCS#11 errors."""
        p11 = _pkcs11()
        reconnect = _reconnect_errors(p11)
        for attempt in (0, 1):
            try:
                lease = self._acquire()
            except KeyServiceError:
                raise
            except p11.exceptions.PKCS11Error as exc:
                if attempt == 0 and (isinstance(exc, reconnect) or _is_uninitialised(p11, exc)):
                    self.reset(self.generation, reinitialise=_is_uninitialised(p11, exc))
                    continue
                raise self._translate(exc, name, operation) from exc
            try:
                with self.module.call_lock:
                    result = fn(lease)
            except _Missing:
                # Not visible: either it does not exist or the login is gone
                # (a logged-out session sees no private object).  Only the
                # latter is worth a reconnect; a plain missing key must not
                # log every other thread out.
                logged_in = self._sees_private_keys(lease)
                self._release(lease, broken=not logged_in)
                if attempt == 0 and not logged_in:
                    self.reset(lease.generation)
                    continue
                raise
            except KeyServiceError:
                self._release(lease)
                raise
            except p11.exceptions.PKCS11Error as exc:
                lost = isinstance(exc, reconnect) or _is_uninitialised(p11, exc)
                self._release(lease, broken=lost)
                if lost and attempt == 0:
                    self.reset(lease.generation, reinitialise=_is_uninitialised(p11, exc))
                    continue
                raise self._translate(exc, name, operation) from exc
            except BaseException:
                self._release(lease)
                raise
            self._release(lease)
            return result
        raise AssertionError("unreachable")  # the loop returns or raises

    def _sees_private_keys(self, lease: _Lease) -> bool:
        """Whether the session still sees private secret keys, i.e. is logged
        in.  (encfs root keys are private, so a token without any has none
        of ours either: the reconnect that follows is then merely wasted.)"""
        p11 = _pkcs11()
        A = p11.Attribute
        with self.module.call_lock:
            try:
                found = lease.session.get_objects({A.CLASS: p11.ObjectClass.SECRET_KEY, A.PRIVATE: True})
                try:
                    return next(found, None) is not None
                finally:
                    found.close()  # ends the search (C_FindObjectsFinal)
            except p11.exceptions.PKCS11Error:
                return False

    def _translate(self, exc: BaseException, name: KeyName | None, operation: str) -> KeyServiceError:
        return translate(exc, name=name, token=self.token_label, module=self.module.path, operation=operation)


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

