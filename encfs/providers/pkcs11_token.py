"""Access to PKCS#11 tokens for the pkcs11:// provider (pkcs11.py).

This module owns everything about *talking to* a token, so that pkcs11.py
can hold only the key-provider logic (versions, wrapping, administration):

- loading python-pkcs11 lazily and each PKCS#11 module once per process;
- key names (``<token label>/<key label>``) and the user PIN, which comes
  from ``ENCFS_PKCS11_PIN`` or the file named by ``ENCFS_PKCS11_PIN_FILE``
  only, read at login and never stored;
- the per-(module, token) session pools with login, reconnection after a
  lost session or login, and re-initialisation after fork;
- translation of PKCS#11 errors into encfs key errors (never naming the PIN).

Why pools are per process, not per provider: PKCS#11 login state belongs
to the application, per token.  python-pkcs11 calls ``C_Initialize(NULL)``,
so the module assumes no concurrent calls (SoftHSM2 then switches its own
mutexes off): calls into one module are serialised by a process-wide lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import (
    AccessDeniedError,
    ConfigurationError,
    KeyServiceError,
    KeyUnavailableError,
)

ENV_MODULE = "ENCFS_PKCS11_MODULE"
ENV_PIN = "ENCFS_PKCS11_PIN"
ENV_PIN_FILE = "ENCFS_PKCS11_PIN_FILE"
ENV_TOKEN = "ENCFS_PKCS11_TOKEN"
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


class _Unusable(_Missing):
    """The label names objects, but none that can serve as a root key (a
    public RSA key is visible without login, so this too may mean a lost
    login).  ``error`` says why, for the caller to raise."""

    def __init__(self, error: KeyServiceError) -> None:
        super().__init__(str(error))
        self.error = error


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
    #: Handles of key objects that passed the root-key checks (pkcs11.py).
    checked: set[int] = field(default_factory=set)


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
