"""The audit trail: every key use and every administrative action, as
hash-chained JSON Lines.

Each record is one line of canonical JSON (sorted keys, no spaces) holding
the time, the principal, the action, the key URI and version, the (service)
encryption context, the outcome and the error text.  Never key material: the
writers (the auditing provider proxy, the keystore's automatic actions, the
rewrap tool) only hand over names, versions and contexts.

Chain: each record carries ``seq`` (1, 2, ...), ``prev`` (the ``hash`` of the
record before it; 64 zeros for the first) and ``hash`` = SHA-256 of the
record's canonical JSON without the ``hash`` field.  An edited record no
longer matches its own hash, a removed, inserted or reordered record breaks
``prev``/``seq`` of the next one; :meth:`AuditLog.verify` reports all of it.
Removing records from the *end* leaves a valid shorter chain: anchor the
head hash printed by ``encfs audit verify`` somewhere else to detect that
(docs/KEYS.md).

Durability and concurrency: an append takes an exclusive lock on the side
file ``<log>.lock`` (``filelock``: ``flock`` on POSIX, ``msvcrt.locking`` on
Windows; threads of one process also share a ``threading.Lock``), reads the
chain tail, writes one line with ``O_APPEND`` and ``fsync``s before
releasing the lock.  One line, one write,
one fsync per key-service call: that is the whole cost of the hook.

Location: ``$ENCFS_AUDIT_LOG`` if set (``off`` disables auditing), else
``audit.log`` in the local keystore directory (``$ENCFS_HOME``, default
``~/.encfs``).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .errors import ConfigurationError, EncfsError
from .format import WrappedKey
from .portable import O_BINARY, current_uid, file_lock
from .providers.base import KeyInfo, KeyProvider, KeyRef

AUDIT_ENV = "ENCFS_AUDIT_LOG"
PRINCIPAL_ENV = "ENCFS_PRINCIPAL"
GENESIS = "0" * 64
_DISABLED = ("off", "none", "0", "false")


class AuditError(EncfsError):
    """The audit log could not be written or read."""


def principal() -> str:
    """Who acts: ``$ENCFS_PRINCIPAL``, else ``user@host``."""
    value = os.environ.get(PRINCIPAL_ENV)
    if value:
        return value
    try:
        user = getpass.getuser()
    except (ImportError, KeyError, OSError):
        # No passwd entry (containers), or no user variables on Windows
        # (getpass then fails importing pwd, or with OSError on 3.13+).
        uid = current_uid()
        user = f"uid{uid}" if uid is not None else "unknown"
    return f"{user}@{socket.gethostname()}"


def _home() -> Path:
    # Same rule as keystore.default_home (not imported: the keystore imports us).
    return Path(os.environ.get("ENCFS_HOME") or "~/.encfs").expanduser()


def log_path(home: str | os.PathLike[str] | None = None) -> Path | None:
    """Where the audit log of a keystore directory lives (None: disabled)."""
    configured = os.environ.get(AUDIT_ENV)
    if configured:
        if configured.strip().lower() in _DISABLED:
            return None
        return Path(configured).expanduser()
    return (Path(home).expanduser() if home else _home()) / "audit.log"


def canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``record`` without its ``hash`` field."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass
class VerifyResult:
    ok: bool
    count: int
    head: str
    problems: list[str] = field(default_factory=list)


class AuditLog:
    """One append-only, hash-chained JSON Lines file.  Thread- and process-safe."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = threading.Lock()
        # (inode, size) -> (seq, hash) of the last record: saves re-reading
        # the tail when nobody else appended since our last write.
        self._tail: tuple[tuple[int, int], tuple[int, str]] | None = None

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    # -- writing ---------------------------------------------------------
    def append(
        self,
        action: str,
        *,
        key: str | None = None,
        version: str | None = None,
        context: Mapping[str, str] | None = None,
        outcome: str = "success",
        error: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "time": _now(), "principal": principal(), "action": action, "key": key,
            "version": version, "context": dict(context or {}), "outcome": outcome, "error": error,
        }
        record.update({k: v for k, v in extra.items() if v is not None})
        try:
            return self._append(record)
        except OSError as exc:
            # Fail closed: a key operation that cannot be audited does not happen.
            raise AuditError(f"cannot write audit log {self.path}: {exc.strerror or exc}") from exc

    def append_many(self, records: list[dict[str, Any]], *, sync: bool = True) -> list[dict[str, Any]]:
        """Chain and append prepared records (each with at least ``time``,
        ``principal``, ``action``, ``outcome``) with one write and, if
        ``sync``, one fsync: the key server's grouped commit (without
        ``sync`` the records survive a killed process but not a power cut
        until :meth:`sync`).  Raises :class:`AuditError`."""
        if not records:
            return []
        try:
            return self._append(records, sync=sync)
        except OSError as exc:
            raise AuditError(f"cannot write audit log {self.path}: {exc.strerror or exc}") from exc

    def sync(self) -> None:
        """fsync the log (what :meth:`append_many` without ``sync`` left to do)."""
        try:
            # Opened for writing: on Windows fsync (_commit) fails with EBADF
            # on a read-only descriptor.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | O_BINARY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            raise AuditError(f"cannot sync audit log {self.path}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)

    def _append(self, records: dict[str, Any] | list[dict[str, Any]], *, sync: bool = True) -> Any:
        batch = records if isinstance(records, list) else [records]
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._lock, file_lock(self.lock_path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | O_BINARY, 0o600)
            try:
                st = os.fstat(fd)
                stamp = (st.st_ino, st.st_size)
                if self._tail is not None and self._tail[0] == stamp:
                    (seq, prev), torn = self._tail[1], False
                else:
                    seq, prev, torn = self._read_tail(st.st_size)
                lines = []
                for record in batch:
                    seq += 1
                    record["seq"] = seq
                    record["prev"] = prev
                    record["hash"] = prev = record_hash(record)
                    lines.append(canonical(record) + b"\n")
                data = b"".join(lines)
                if torn:
                    data = b"\n" + data  # never glue onto a torn line
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if sync:
                    os.fsync(fd)
                self._tail = ((st.st_ino, st.st_size + len(data)), (seq, prev))
            finally:
                os.close(fd)
        return records

    def _read_tail(self, size: int) -> tuple[int, str, bool]:
        """(seq, hash) of the last valid record and whether the file ends in
        a torn (newline-less) line, e.g. after a crash mid-append."""
        if size == 0:
            return 0, GENESIS, False
        with open(self.path, "rb") as f:
            chunk = 4096  # a record is a few hundred bytes: usually one small read
            pos, buf = size, b""
            f.seek(max(0, size - 1))
            torn = f.read(1) != b"\n"
            # Walk backwards until a line parses as a record (normally the last one).
            while True:
                start = max(0, pos - chunk)
                f.seek(start)
                buf = f.read(pos - start) + buf
                pos = start
                lines = buf.split(b"\n")
                complete = lines if pos == 0 else lines[1:]
                for raw in reversed(complete):
                    rec = _parse(raw)
                    if rec is not None:
                        return int(rec["seq"]), str(rec["hash"]), torn
                if pos == 0:
                    return 0, GENESIS, torn
                chunk = min(chunk * 4, 1 << 20)

    # -- reading ---------------------------------------------------------
    def lines(self) -> Iterator[tuple[int, bytes]]:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            for n, raw in enumerate(f, 1):
                yield n, raw.rstrip(b"\n")

    def records(self) -> Iterator[dict[str, Any]]:
        for _, raw in self.lines():
            rec = _parse(raw)
            if rec is not None:
                yield rec

    def verify(self) -> VerifyResult:
        problems: list[str] = []
        prev, seq, count = GENESIS, 0, 0
        for n, raw in self.lines():
            if not raw.strip():
                problems.append(f"line {n}: empty line")
                continue
            rec = _parse(raw)
            if rec is None:
                problems.append(f"line {n}: not a valid audit record")
                continue
            count += 1
            if record_hash(rec) != rec["hash"]:
                problems.append(f"line {n}: record seq {rec.get('seq')} was modified (hash mismatch)")
            if rec.get("prev") != prev or rec.get("seq") != seq + 1:
                problems.append(
                    f"line {n}: chain broken before record seq {rec.get('seq')} "
                    f"(expected seq {seq + 1}): a record was removed, inserted or reordered"
                )
            prev = rec["hash"]
            seq = rec["seq"] if isinstance(rec.get("seq"), int) else seq + 1
        return VerifyResult(ok=not problems, count=count, head=prev, problems=problems)

    def query(
        self,
        *,
        key: str | list[str] | None = None,
        action: str | None = None,
        principal: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[dict[str, Any]]:
        for rec in self.records():
            if action and rec.get("action") != action:
                continue
            if principal and rec.get("principal") != principal:
                continue
            if key and not _key_matches(key, rec):
                continue
            if since or until:
                when = _parse_time(str(rec.get("time")))
                if when is None or (since and when < since) or (until and when >= until):
                    continue
            yield rec


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("hash"), str) or "seq" not in rec:
        return None
    return rec


def _key_matches(wanted: str | list[str], rec: Mapping[str, Any]) -> bool:
    """Whether a record is about one of ``wanted`` (key URIs; a bare id or
    alias means a local key, as everywhere in the CLI)."""
    names = {str(rec.get(f)) for f in ("key", "ref") if rec.get(f)}
    names |= {str(x).split("#", 1)[0] for x in rec.get("keys", []) or []}
    if rec.get("to"):
        names |= {x.split("#", 1)[0] for x in str(rec["to"]).split(",")}
    for w in [wanted] if isinstance(wanted, str) else wanted:
        uri = w if "://" in w else f"local://{w}"
        scheme, _, name = uri.partition("://")
        bare = name.removeprefix("alias/")
        if {uri, f"{scheme}://{bare}", f"{scheme}://alias/{bare}"} & names:
            return True
    return False


def _parse_time(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> datetime:
    """A time filter: ISO date/datetime (UTC unless it says otherwise) or a
    relative age such as ``30m``, ``12h``, ``7d``, ``2w``."""
    m = _RELATIVE.match(text.strip())
    if m:
        return now() - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    t = _parse_time(text.strip())
    if t is None:
        raise ConfigurationError(f"invalid time {text!r}: use ISO 8601 (2026-11-30T12:00) or an age like 7d")
    return t


_LOGS: dict[Path, AuditLog] = {}
_LOGS_LOCK = threading.Lock()


def get_log(home: str | os.PathLike[str] | None = None) -> AuditLog | None:
    """The (process-shared) audit log for a keystore directory, None if disabled."""
    path = log_path(home)
    if path is None:
        return None
    with _LOGS_LOCK:
        log = _LOGS.get(path)
        if log is None:
            log = _LOGS[path] = AuditLog(path)
        return log


def _after_fork_in_child() -> None:
    # A parent thread may have held these locks at fork time; the child has
    # only one thread, so fresh locks are correct.  The tail cache stays
    # valid: it is checked against the file's inode and size on every append.
    global _LOGS_LOCK
    _LOGS_LOCK = threading.Lock()
    for log in _LOGS.values():
        log._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the auditing provider proxy -------------------------------------------------

#: Administrative methods recorded by the proxy, and their action names.
ADMIN_ACTIONS = {
    "create_key": "create-key", "enable_key": "enable-key", "disable_key": "disable-key",
    "rotate_key": "rotate-key", "schedule_deletion": "schedule-deletion", "cancel_deletion": "cancel-deletion",
    "set_alias": "set-alias", "create_alias": "create-alias", "update_alias": "update-alias",
    "delete_alias": "delete-alias", "tag_key": "tag-key", "untag_key": "untag-key",
    "set_rotation": "set-rotation", "enable_rotation": "enable-rotation", "disable_rotation": "disable-rotation",
    "set_description": "set-description", "import_keys": "import-keys", "export_keys": "export-keys",
}


#: Every action encfs itself records (the key server adds its own, and
#: ``encfs audit --action`` also accepts any action present in the log read).
ACTIONS = frozenset({
    "wrap", "unwrap", "generate", "rewrap", *ADMIN_ACTIONS.values(),
    "auto-rotate", "delete-key", "recover-keystore",  # keystore: automatic and CLI actions
})


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AuditedProvider(KeyProvider):
    """Records every wrap, unwrap, data-key generation and admin call of the
    provider it wraps, success or failure, then returns or re-raises."""

    def __init__(self, inner: KeyProvider, log: AuditLog) -> None:
        self.inner = inner
        self.audit_log = log
        self.scheme = inner.scheme  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Audited({self.inner!r})"

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the proxy does not define (provider
        # extras such as ``keystore`` or ``create_alias``).
        if name == "inner":  # not yet set (half-built object): no recursion
            raise AttributeError(name)
        attr = getattr(self.inner, name)
        if name in ADMIN_ACTIONS and callable(attr):
            return lambda *a, **kw: self._admin(name, attr, *a, **kw)
        return attr

    # -- key use ---------------------------------------------------------------
    def resolve(self, ref: KeyRef) -> str:
        return self.inner.resolve(ref)

    def allows(self, wrapped: WrappedKey, refs: list[KeyRef]) -> bool:
        return self.inner.allows(wrapped, refs)

    def wrap(self, ref: KeyRef, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        try:
            w = self.inner.wrap(ref, dek, context)
        except BaseException as exc:
            self.audit_log.append("wrap", key=str(ref), context=context, outcome="failure", error=_error_text(exc))
            raise
        self.audit_log.append("wrap", key=f"{w.provider}://{w.key_id}", version=w.version, context=context, ref=str(ref))
        return w

    def generate_data_key(self, ref: KeyRef, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        try:
            dek, w = self.inner.generate_data_key(ref, context)
        except BaseException as exc:
            self.audit_log.append("generate", key=str(ref), context=context, outcome="failure", error=_error_text(exc))
            raise
        self.audit_log.append("generate", key=f"{w.provider}://{w.key_id}", version=w.version, context=context,
                              ref=str(ref))
        return dek, w

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        key = f"{wrapped.provider}://{wrapped.key_id}"
        try:
            dek = self.inner.unwrap(wrapped, context)
        except BaseException as exc:
            self.audit_log.append("unwrap", key=key, version=wrapped.version, context=context, outcome="failure",
                                  error=_error_text(exc))
            raise
        self.audit_log.append("unwrap", key=key, version=wrapped.version, context=context)
        return dek

    # -- metadata (read-only, not audited) -------------------------------------
    def describe(self, ref: KeyRef) -> KeyInfo:
        return self.inner.describe(ref)

    def list_keys(self) -> list[KeyInfo]:
        return self.inner.list_keys()

    def rotation_status(self, ref: KeyRef) -> dict[str, Any]:
        return self.inner.rotation_status(ref)

    # -- administration ----------------------------------------------------------
    def _admin(self, method: str, fn: Callable[..., Any], *args: Any, _key: str | None = None, **kwargs: Any) -> Any:
        action = ADMIN_ACTIONS[method]
        ref = next((a for a in args if isinstance(a, KeyRef)), None)
        details: dict[str, Any] = {}
        for a in args:
            if isinstance(a, str):
                details["alias" if "alias" in method else "value"] = a
            elif isinstance(a, Mapping):
                details["tags"] = sorted(a)
            elif isinstance(a, list):
                details["tag_keys"] = [str(x) for x in a]
            elif isinstance(a, int):
                details["days"] = a
        for k, v in kwargs.items():
            if isinstance(v, (str, int, bool)) or v is None:
                details[k] = v
            elif isinstance(v, Mapping):
                details[k] = sorted(v)  # tag names only; values may be sensitive
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self.audit_log.append(action, key=self._canonical(ref) or _key, outcome="failure", error=_error_text(exc),
                                  ref=str(ref) if ref else None, **details)
            raise
        version = None
        if isinstance(result, KeyInfo):
            key, version = result.uri or self._canonical(ref), result.current_version or None
        else:
            key = self._canonical(ref) or _key
        self.audit_log.append(action, key=key, version=version, ref=str(ref) if ref else None, **details)
        return result

    def _canonical(self, ref: KeyRef | None) -> str | None:
        """The key the record is about: its canonical id, not just the alias typed."""
        if ref is None:
            return None
        try:
            return f"{ref.scheme}://{self.inner.resolve(ref)}"
        except Exception:  # noqa: BLE001 - unknown or deleted: record what was asked for; never fail the audit
            return str(ref)

    def create_key(self, **kwargs: Any) -> KeyInfo:
        return self._admin("create_key", self.inner.create_key, **kwargs)

    def enable_key(self, ref: KeyRef) -> None:
        return self._admin("enable_key", self.inner.enable_key, ref)

    def disable_key(self, ref: KeyRef) -> None:
        return self._admin("disable_key", self.inner.disable_key, ref)

    def rotate_key(self, ref: KeyRef) -> KeyInfo:
        return self._admin("rotate_key", self.inner.rotate_key, ref)

    def set_rotation(self, ref: KeyRef, enabled: bool, period_days: int | None = None) -> dict[str, Any]:
        return self._admin("set_rotation", self.inner.set_rotation, ref, enabled=enabled, period_days=period_days)

    def schedule_deletion(self, ref: KeyRef, days: int = 30) -> KeyInfo:
        return self._admin("schedule_deletion", self.inner.schedule_deletion, ref, days)

    def cancel_deletion(self, ref: KeyRef) -> KeyInfo:
        return self._admin("cancel_deletion", self.inner.cancel_deletion, ref)

    def set_alias(self, alias: str, ref: KeyRef) -> None:
        return self._admin("set_alias", self.inner.set_alias, alias, ref)

    def delete_alias(self, alias: str) -> None:
        # Record which key the alias named before it goes.
        key = self._canonical(KeyRef(self.scheme, alias))
        target = key if key != f"{self.scheme}://{alias}" else None
        return self._admin("delete_alias", self.inner.delete_alias, alias, _key=target)

    def tag_key(self, ref: KeyRef, tags: Mapping[str, str]) -> None:
        return self._admin("tag_key", self.inner.tag_key, ref, tags)

    def untag_key(self, ref: KeyRef, keys: list[str]) -> None:
        return self._admin("untag_key", self.inner.untag_key, ref, keys)


def audited(provider: KeyProvider, home: str | os.PathLike[str] | None = None) -> KeyProvider:
    """``provider`` behind the auditing proxy (unchanged when auditing is off
    or it is already audited).  The log sits next to the provider's local
    keystore when it has one, else under ``home`` / ``$ENCFS_HOME``."""
    if isinstance(provider, AuditedProvider):
        return provider
    keystore = getattr(provider, "keystore", None)
    log = get_log(getattr(keystore, "home", None) or home)
    return provider if log is None else AuditedProvider(provider, log)


__all__ = [
    "ACTIONS",
    "AuditError",
    "AuditLog",
    "AuditedProvider",
    "VerifyResult",
    "audited",
    "get_log",
    "log_path",
    "parse_when",
    "principal",
    "record_hash",
]
