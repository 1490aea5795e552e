"""The local keystore: encfs's embedded root-key service.

Root keys are 32 random bytes from the OS CSPRNG (``os.urandom``), kept in
``$ENCFS_HOME/keystore.json`` (default ``~/.encfs``), owner-only, written
atomically under a file lock (storage.py).  Each key has an id
(``lk-<hex>``), aliases, a state, and numbered versions; the current version
wraps new data keys and every version keeps unwrapping.  Optionally, key
material is sealed under a passphrase (sealing.py).

Lifecycle (docs/KEYS.md), modelled on AWS KMS:

- states ``Enabled`` → ``Disabled`` → ``Enabled``; ``Enabled|Disabled`` →
  ``PendingDeletion`` (7–30 days) → deleted, or → ``Disabled`` on cancel.
  Only Enabled keys wrap *and* unwrap; deletion removes every version.
- kinds: ``customer`` (made by the user) and ``encfs`` (managed: the
  ``default`` key and keys auto-created under ``alias/encfs/<name>``,
  rotated automatically every 365 days).
- automatic rotation (period 90–2560 days) and deletion at the end of the
  waiting period are *due dates*, applied whenever the keystore is used,
  read against the injectable ``clock`` so tests need no sleeping.

Key material leaves this module only through :meth:`LocalKeystore._material`,
which the local provider calls; nothing here logs or reprs it.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, KeyNotFoundError, KeyStateError, KeystoreError
from .sealing import PASSPHRASE_ENV, Sealer, b64d, b64e, get_passphrase
from .storage import JsonFileStore

FORMAT = "encfs-keystore/1"
DEFAULT_ALIAS = "default"
MANAGED_PREFIX = "encfs/"
HOME_ENV = "ENCFS_HOME"
KEY_BYTES = 32
ENABLED, DISABLED, PENDING_DELETION = "Enabled", "Disabled", "PendingDeletion"
STATES = (ENABLED, DISABLED, PENDING_DELETION)
CUSTOMER, MANAGED = "customer", "encfs"
DAY = 86400.0
MIN_DELETION_DAYS, MAX_DELETION_DAYS, DEFAULT_DELETION_DAYS = 7, 30, 30
MIN_ROTATION_DAYS, MAX_ROTATION_DAYS, DEFAULT_ROTATION_DAYS = 90, 2560, 365
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE, MAX_DESCRIPTION = 50, 128, 256, 8192


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or "~/.encfs").expanduser()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def normalize_alias(name: str) -> str:
    """Aliases may be written with or without AWS's ``alias/`` prefix."""
    name = name.removeprefix("alias/")
    if not name or len(name) > 256 or name.startswith("/") or any(c.isspace() for c in name):
        raise ConfigurationError(f"invalid alias {name!r}")
    return name


def is_reserved_alias(alias: str) -> bool:
    """``default`` and ``encfs/...`` belong to encfs-managed keys (like AWS's
    ``alias/aws/...``): users cannot create, move or delete them."""
    return alias == DEFAULT_ALIAS or alias.startswith(MANAGED_PREFIX)


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str) or not 0 < len(k) <= MAX_TAG_KEY or len(v) > MAX_TAG_VALUE:
            raise ConfigurationError(f"invalid tag {k!r}: keys 1..{MAX_TAG_KEY} chars, values up to {MAX_TAG_VALUE}")
        out[k] = v
    return out


def _uri(key_id: str) -> str:
    return f"local://{key_id}"


def check_document(doc: dict[str, Any]) -> None:
    """Raise ValueError unless ``doc`` has the shape this module indexes
    without further checks: a hand-edited or damaged file must be reported
    as a corrupted keystore, not crash with KeyError or AttributeError."""
    keys, aliases, deleted = doc.get("keys"), doc.get("aliases"), doc.get("deleted", {})
    if not isinstance(keys, dict) or not isinstance(aliases, dict) or not isinstance(deleted, dict):
        raise ValueError("keys, aliases or deleted is missing or not an object")
    for key_id, rec in keys.items():
        if not isinstance(rec, dict) or rec.get("id", key_id) != key_id or rec.get("state") not in STATES:
            raise ValueError(f"malformed record for key {key_id}")
        versions = rec.get("versions")
        if not isinstance(versions, dict) or not versions:
            raise ValueError(f"key {key_id} has no versions")
        for v, entry in versions.items():
            if not v.isdigit() or not isinstance(entry, dict):
                raise ValueError(f"malformed version {v!r} of key {key_id}")
            if not isinstance(entry.get("sealed", entry.get("material")), str):
                raise ValueError(f"key {key_id} version {v} has no material")
        if str(rec.get("current_version")) not in versions:
            raise ValueError(f"key {key_id} has no current version")
        rotation = rec.get("rotation") or {}
        if not isinstance(rotation, dict):
            raise ValueError(f"malformed rotation of key {key_id}")
        try:
            for when in (rec.get("deletion_date"), rotation.get("next")):
                if when:
                    _ts(when)
            if rotation.get("enabled"):
                int(rotation["period_days"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"malformed dates of key {key_id}") from None
    if not all(isinstance(a, str) and isinstance(k, str) for a, k in aliases.items()):
        raise ValueError("malformed alias")


class LocalKeystore:
    """Thread-safe handle on one keystore directory."""

    def __init__(self, home: str | os.PathLike[str] | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.home = Path(home).expanduser() if home else default_home()
        self.clock = clock
        self._file = JsonFileStore(self.home / "keystore.json")
        self._lock = threading.RLock()
        self._doc: dict[str, Any] | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._sealer: Sealer | None = None
        self._next_due = float("inf")

    def __repr__(self) -> str:
        return f"LocalKeystore(home={str(self.home)!r})"

    def __reduce__(self):
        return (type(self), (str(self.home),))

    # -- audit of automatic actions -----------------------------------------
    def _audit(self, action: str, key_id: str, **fields: Any) -> None:
        from ..audit import get_log  # lazy: audit imports the provider layer

        log = get_log(self.home)
        if log is not None:
            log.append(action, key=_uri(key_id), automatic=True, **fields)

    # -- document access -------------------------------------------------
    def _empty(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": FORMAT, "sealing": None, "aliases": {}, "keys": {}, "deleted": {}}
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if passphrase:
            doc["sealing"] = Sealer.new_params(passphrase)
        return doc

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._file.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self) -> dict[str, Any]:
        doc = self._file.read() or self._empty()
        if doc.get("format") != FORMAT:
            raise KeystoreError(f"{self._file.path} is not an encfs keystore (format {doc.get('format')!r})")
        try:
            check_document(doc)
        except ValueError as exc:
            raise self._file.corrupted(str(exc)) from None
        doc.setdefault("deleted", {})
        return doc

    def _read(self) -> dict[str, Any]:
        """Current document, reloaded only when the file changed; applies
        rotations and deletions that have come due (cheap when none has)."""
        with self._lock:
            stamp = self._stat()
            if self._doc is None or stamp != self._stamp:
                self._doc, self._stamp = self._load(), stamp
                self._next_due = self._due_time(self._doc)
            if self.clock() >= self._next_due:
                try:
                    self._update(lambda doc: None)  # _update runs the due work
                except (OSError, KeystoreError):
                    # A read-only keystore (or one sealed without the
                    # passphrase at hand) still serves reads.  Nothing unsafe
                    # is skipped: a key past its deletion date is still
                    # PendingDeletion and refuses every use; a missed rotation
                    # only means the old version wraps a little longer.
                    # Retry in a minute rather than on every call.
                    self._next_due = self.clock() + 60
            return self._doc

    def _update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Apply due work then ``change`` to a fresh copy of the document
        under the file lock, and write it back."""
        with self._lock, self._file.locked():
            doc = self._load()
            events = self._apply_due(doc)
            result = change(doc)
            self._file.write(doc)
            self._doc, self._stamp = doc, self._stat()
            self._next_due = self._due_time(doc)
        for action, key_id, fields in events:
            self._audit(action, key_id, **fields)
        return result

    def recover_from_backup(self) -> None:
        """Replace a corrupted keystore file by its last good backup."""
        with self._lock, self._file.locked():
            doc = self._file.read_backup()
            if doc.get("format") != FORMAT:
                raise KeystoreError(f"backup {self._file.backup} is not an encfs keystore")
            try:
                check_document(doc)
            except ValueError:
                raise KeystoreError(f"keystore backup {self._file.backup} is corrupted too") from None
            self._file.write(doc)
            self._doc, self._stamp = doc, self._stat()
            self._next_due = self._due_time(doc)

    # -- due work: automatic rotation and deletion ------------------------
    @staticmethod
    def _due_time(doc: dict[str, Any]) -> float:
        due = float("inf")
        for rec in doc["keys"].values():
            if rec.get("state") == PENDING_DELETION and rec.get("deletion_date"):
                due = min(due, _ts(rec["deletion_date"]))
            rot = rec.get("rotation") or {}
            if rot.get("enabled") and rec.get("state") == ENABLED and rot.get("next"):
                due = min(due, _ts(rot["next"]))
        return due

    def _apply_due(self, doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
        now = self.clock()
        events: list[tuple[str, str, dict[str, Any]]] = []
        for key_id, rec in list(doc["keys"].items()):
            if rec.get("state") == PENDING_DELETION and rec.get("deletion_date") and _ts(rec["deletion_date"]) <= now:
                # End of the waiting period: every version goes, and its aliases.
                del doc["keys"][key_id]
                for alias in [a for a, k in doc["aliases"].items() if k == key_id]:
                    del doc["aliases"][alias]
                doc["deleted"][key_id] = _iso(now)
                events.append(("delete-key", key_id, {}))
                continue
            rot = rec.get("rotation") or {}
            if rot.get("enabled") and rec.get("state") == ENABLED and rot.get("next") and _ts(rot["next"]) <= now:
                v = self._add_version(doc, rec, now)
                rot["last"] = _iso(now)
                # One rotation however many periods were missed (as KMS does):
                # the next one is a full period from now.
                rot["next"] = _iso(now + int(rot["period_days"]) * DAY)
                events.append(("auto-rotate", key_id, {"version": str(v)}))
        return events

    def _add_version(self, doc: dict[str, Any], rec: dict[str, Any], now: float) -> int:
        v = max(int(x) for x in rec["versions"]) + 1
        material = os.urandom(KEY_BYTES)
        rec["versions"][str(v)] = {"created": _iso(now), **self._seal_material(doc, rec["id"], v, material)}
        rec["current_version"] = v
        return v

    # -- sealing ---------------------------------------------------------
    def _get_sealer(self, doc: dict[str, Any]) -> Sealer | None:
        params = doc.get("sealing")
        if not params:
            return None
        if self._sealer is None:
            try:
                self._sealer = Sealer(params, get_passphrase())
            except (KeyError, TypeError, ValueError):
                raise self._file.corrupted("malformed sealing parameters") from None
        return self._sealer

    @staticmethod
    def _aad(key_id: str, version: int) -> bytes:
        return f"encfs-keystore/1|{key_id}|{version}".encode()

    def _seal_material(self, doc: dict[str, Any], key_id: str, version: int, material: bytes) -> dict[str, str]:
        sealer = self._get_sealer(doc)
        if sealer is None:
            return {"material": b64e(material)}
        return {"sealed": sealer.seal(material, self._aad(key_id, version))}

    def _open_material(self, doc: dict[str, Any], key_id: str, version: int, entry: Mapping[str, str]) -> bytes:
        if "sealed" in entry:
            sealer = self._get_sealer(doc)
            if sealer is None:
                raise KeystoreError("sealed key material but the keystore has no sealing parameters")
            try:
                material = sealer.unseal(entry["sealed"], self._aad(key_id, version))
            except ValueError:  # malformed base64 (KeystoreError passes through)
                material = b""
        else:
            try:
                material = b64d(entry["material"])
            except ValueError:
                material = b""
        # A root key is exactly KEY_BYTES: anything else is damage, and a
        # 16-byte one would silently become an AES-128 key.
        if len(material) != KEY_BYTES:
            raise self._file.corrupted(f"key material of {key_id} version {version} is malformed")
        return material

    # -- lookups -----------------------------------------------------------
    def resolve(self, name: str) -> str:
        """Key id for an id or alias; raises KeyNotFoundError.

        ``default`` and ``encfs/<name>`` are created on first use: they name
        encfs-managed keys (docs/KEYS.md).
        """
        doc = self._read()
        if name in doc["keys"]:
            return name
        try:
            alias = normalize_alias(name)
        except ConfigurationError:
            alias = name
        key_id = doc["aliases"].get(alias)
        if key_id is None and alias == DEFAULT_ALIAS:
            return self.ensure_default()
        if key_id is None and alias.startswith(MANAGED_PREFIX) and len(alias) > len(MANAGED_PREFIX):
            return self.managed_key(alias[len(MANAGED_PREFIX) :])
        if key_id is None or key_id not in doc["keys"]:
            self._not_found(doc, key_id or name)
        return key_id

    def _not_found(self, doc: dict[str, Any], name: str) -> None:
        when = doc.get("deleted", {}).get(name)
        if when:
            raise KeyNotFoundError(f"local key {name} was deleted on {when}", key=_uri(name))
        raise KeyNotFoundError(f"local key {name!r} not found in keystore {self.home}", key=_uri(name))

    def record(self, key_id: str) -> dict[str, Any]:
        doc = self._read()
        rec = doc["keys"].get(key_id)
        if rec is None:
            self._not_found(doc, key_id)
        return rec

    def deleted_on(self, key_id: str) -> str | None:
        """When ``key_id`` was deleted from this keystore (None if it was not)."""
        return self._read().get("deleted", {}).get(key_id)

    def aliases_of(self, key_id: str) -> list[str]:
        return sorted(a for a, k in self._read()["aliases"].items() if k == key_id)

    def aliases(self) -> dict[str, str]:
        return dict(self._read()["aliases"])

    def list_ids(self) -> list[str]:
        return sorted(self._read()["keys"])

    def _material(self, key_id: str, version: int | None = None, *, for_wrap: bool) -> tuple[int, bytes]:
        """Root key material of ``version`` (current if None).  Provider-only."""
        doc = self._read()
        rec = self.record(key_id)
        state = rec.get("state", ENABLED)
        if state != ENABLED:
            op = "wrap" if for_wrap else "unwrap"
            extra = f" (deletion on {rec['deletion_date']})" if state == PENDING_DELETION else ""
            raise KeyStateError(f"local key {key_id} is {state}{extra}: cannot {op}", key=_uri(key_id), operation=op)
        v = int(rec["current_version"]) if version is None else int(version)
        entry = rec["versions"].get(str(v))
        if entry is None:
            raise KeyNotFoundError(f"local key {key_id} has no version {v}", key=_uri(key_id))
        return v, self._open_material(doc, key_id, v, entry)

    # -- creation ------------------------------------------------------------
    def _new_record(self, doc: dict[str, Any], key_id: str, *, description: str, tags: Mapping[str, str],
                    kind: str, rotation_days: int | None) -> dict[str, Any]:
        now = self.clock()
        rec: dict[str, Any] = {
            "id": key_id, "created": _iso(now), "description": description, "tags": dict(tags),
            "state": ENABLED, "usage": "ENCRYPT_DECRYPT", "kind": kind, "current_version": 1,
            "versions": {"1": {"created": _iso(now), **self._seal_material(doc, key_id, 1, os.urandom(KEY_BYTES))}},
            "rotation": {"enabled": False},
        }
        if rotation_days is not None:
            rec["rotation"] = {"enabled": True, "period_days": rotation_days, "next": _iso(now + rotation_days * DAY)}
        return rec

    def create_key(
        self,
        *,
        alias: str | None = None,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        kind: str = CUSTOMER,
        rotation_days: int | None = None,
    ) -> str:
        """Create a customer-managed root key from the CSPRNG; return its id."""
        alias = normalize_alias(alias) if alias else None
        if kind != CUSTOMER:
            raise ConfigurationError("only customer keys can be created directly; managed keys come from managed_key()")
        if alias and is_reserved_alias(alias):
            raise ConfigurationError(f"alias {alias!r} is reserved for encfs-managed keys")
        if len(description) > MAX_DESCRIPTION:
            raise ConfigurationError(f"description longer than {MAX_DESCRIPTION} characters")
        tags = check_tags(tags or {})
        if rotation_days is not None:
            _check_rotation_days(rotation_days)
        key_id = "lk-" + secrets.token_hex(16)

        def change(doc: dict[str, Any]) -> str:
            if alias and alias in doc["aliases"]:
                raise ConfigurationError(f"alias {alias!r} already exists")
            doc["keys"][key_id] = self._new_record(doc, key_id, description=description, tags=tags, kind=kind,
                                                   rotation_days=rotation_days)
            if alias:
                doc["aliases"][alias] = key_id
            return key_id

        return self._update(change)

    def _ensure_managed(self, alias: str, description: str) -> str:
        doc = self._read()
        key_id = doc["aliases"].get(alias)
        if key_id and key_id in doc["keys"]:
            return key_id
        created: list[str] = []

        def change(doc: dict[str, Any]) -> str:
            existing = doc["aliases"].get(alias)
            if existing and existing in doc["keys"]:
                return existing  # another process won the race: use its key
            new_id = "lk-" + secrets.token_hex(16)
            doc["keys"][new_id] = self._new_record(doc, new_id, description=description, tags={}, kind=MANAGED,
                                                   rotation_days=DEFAULT_ROTATION_DAYS)
            doc["aliases"][alias] = new_id
            created.append(new_id)
            return new_id

        key_id = self._update(change)
        if created:
            self._audit("create-key", key_id, alias=alias, kind=MANAGED)
        return key_id

    def ensure_default(self) -> str:
        """The id of the ``default`` key, created on first use (once, even
        when several processes race to create it)."""
        return self._ensure_managed(DEFAULT_ALIAS, "encfs default key")

    def managed_key(self, name: str) -> str:
        """The encfs-managed key of a store or dataset (alias
        ``encfs/<name>``), created on first use and rotated automatically."""
        name = name.removeprefix("alias/")
        name = name.removeprefix(MANAGED_PREFIX)
        alias = normalize_alias(MANAGED_PREFIX + name)
        return self._ensure_managed(alias, f"encfs-managed key for {name}")

    # -- state transitions -----------------------------------------------------
    def _change_key(self, key_id: str, fn: Callable[[dict[str, Any], dict[str, Any]], Any]) -> Any:
        def change(doc: dict[str, Any]) -> Any:
            rec = doc["keys"].get(key_id)
            if rec is None:
                self._not_found(doc, key_id)
            return fn(doc, rec)

        return self._update(change)

    @staticmethod
    def _refuse(rec: dict[str, Any], op: str) -> None:
        raise KeyStateError(f"local key {rec['id']} is {rec['state']}: cannot {op}", key=_uri(rec["id"]), operation=op)

    def enable(self, key_id: str) -> None:
        """Disabled → Enabled (Enabled stays Enabled)."""
        def fn(doc: dict[str, Any], rec: dict[str, Any]) -> None:
            if rec["state"] == PENDING_DELETION:
                self._refuse(rec, "enable (cancel the deletion first)")
            rec["state"] = ENABLED

        self._change_key(key_id, fn)

    def disable(self, key_id: str) -> None:
        """Enabled → Disabled (Disabled stays Disabled)."""
        def fn(doc: dict[str, Any], rec: dict[str, Any]) -> None:
            if rec["state"] == PENDING_DELETION:
                self._refuse(rec, "disable")
            rec["state"] = DISABLED

        self._change_key(key_id, fn)

    def set_state(self, key_id: str, state: str) -> None:
        """Enable or disable (kept for callers of the first API)."""
        if state == ENABLED:
            self.enable(key_id)
        elif state == DISABLED:
            self.disable(key_id)
        else:
            raise ConfigurationError(f"cannot set key state {state!r} directly; use schedule_deletion")

    def schedule_deletion(self, key_id: str, days: int = DEFAULT_DELETION_DAYS) -> str:
        """Enabled/Disabled → PendingDeletion; returns the deletion date."""
        if not isinstance(days, int) or not MIN_DELETION_DAYS <= days <= MAX_DELETION_DAYS:
            raise ConfigurationError(f"deletion waiting period must be {MIN_DELETION_DAYS}..{MAX_DELETION_DAYS} days")

        def fn(doc: dict[str, Any], rec: dict[str, Any]) -> str:
            if rec["state"] == PENDING_DELETION:
                self._refuse(rec, "schedule deletion (already scheduled)")
            if rec.get("kind") == MANAGED:
                raise ConfigurationError(f"local key {key_id} is encfs-managed and cannot be deleted")
            rec["state"] = PENDING_DELETION
            rec["deletion_date"] = _iso(self.clock() + days * DAY)
            return rec["deletion_date"]

        return self._change_key(key_id, fn)

    def cancel_deletion(self, key_id: str) -> None:
        """PendingDeletion → Disabled (as in KMS: re-enable explicitly)."""
        def fn(doc: dict[str, Any], rec: dict[str, Any]) -> None:
            if rec["state"] != PENDING_DELETION:
                self._refuse(rec, "cancel deletion (no deletion is scheduled)")
            rec["state"] = DISABLED
            rec.pop("deletion_date", None)

        self._change_key(key_id, fn)

    # -- rotation ------------------------------------------------------------------
    def rotate(self, key_id: str) -> int:
        """On-demand rotation: a new version from the CSPRNG becomes current.
        Old versions keep unwrapping."""
        def fn(doc: dict[str, Any], rec: dict[str, Any]) -> int:
            if rec["state"] != ENABLED:
                self._refuse(rec, "rotate")
            now = self.clock()
            v = self._add_version(doc, rec, now)
            rot = rec.setdefault("rotation", {"enabled": False})
            rot["last"] = _iso(now)
            return v

        return self._change_key(key_id, fn)

    def enable_rotation(self, key_id: str, period_days: int = DEFAULT_ROTATION_DAYS) -> None:
        _check_rotation_days(period_days)

        def fn(doc: dict[str, Any], rec: dict[str, Any]) -> None:
            if rec["state"] != ENABLED:
                self._refuse(rec, "enable automatic rotation")
            rot = rec.setdefault("rotation", {})
            rot.update(enabled=True, period_days=period_days, next=_iso(self.clock() + period_days * DAY))

        self._change_key(key_id, fn)

    def disable_rotation(self, key_id: str) -> None:
        def fn(doc: dict[str, Any], rec: dict[str, Any]) -> None:
            if rec["state"] == PENDING_DELETION:
                self._refuse(rec, "disable automatic rotation")
            if rec.get("kind") == MANAGED:
                raise ConfigurationError(f"local key {key_id} is encfs-managed: its rotation cannot be turned off")
            rec["rotation"] = {k: v for k, v in (rec.get("rotation") or {}).items() if k == "last"}
            rec["rotation"]["enabled"] = False

        self._change_key(key_id, fn)

    # -- metadata --------------------------------------------------------------------
    def _alias_target(self, doc: dict[str, Any], key_id: str) -> None:
        rec = doc["keys"].get(key_id)
        if rec is None:
            self._not_found(doc, key_id)
        if rec["state"] == PENDING_DELETION:
            self._refuse(rec, "take an alias")

    def create_alias(self, alias: str, key_id: str) -> None:
        alias = normalize_alias(alias)
        if is_reserved_alias(alias):
            raise ConfigurationError(f"alias {alias!r} is reserved for encfs-managed keys")

        def change(doc: dict[str, Any]) -> None:
            if alias in doc["aliases"]:
                raise ConfigurationError(f"alias {alias!r} already exists (use 'alias update')")
            self._alias_target(doc, key_id)
            doc["aliases"][alias] = key_id

        self._update(change)

    def update_alias(self, alias: str, key_id: str) -> None:
        alias = normalize_alias(alias)
        if is_reserved_alias(alias):
            raise ConfigurationError(f"alias {alias!r} is reserved for encfs-managed keys")

        def change(doc: dict[str, Any]) -> None:
            if alias not in doc["aliases"]:
                raise KeyNotFoundError(f"alias {alias!r} does not exist", key=f"local://alias/{alias}")
            self._alias_target(doc, key_id)
            doc["aliases"][alias] = key_id

        self._update(change)

    def set_alias(self, alias: str, key_id: str) -> None:
        """Create or move an alias."""
        alias = normalize_alias(alias)
        if alias in self._read()["aliases"]:
            self.update_alias(alias, key_id)
        else:
            self.create_alias(alias, key_id)

    def delete_alias(self, alias: str) -> None:
        alias = normalize_alias(alias)
        if is_reserved_alias(alias):
            raise ConfigurationError(f"alias {alias!r} is reserved for encfs-managed keys")

        def change(doc: dict[str, Any]) -> None:
            if doc["aliases"].pop(alias, None) is None:
                raise KeyNotFoundError(f"alias {alias!r} does not exist", key=f"local://alias/{alias}")

        self._update(change)

    def tag(self, key_id: str, tags: Mapping[str, str]) -> None:
        tags = check_tags(tags)

        def fn(doc: dict[str, Any], rec: dict[str, Any]) -> None:
            if rec["state"] == PENDING_DELETION:
                self._refuse(rec, "tag")
            merged = {**rec.get("tags", {}), **tags}
            if len(merged) > MAX_TAGS:
                raise ConfigurationError(f"a key holds at most {MAX_TAGS} tags")
            rec["tags"] = merged

        self._change_key(key_id, fn)

    def untag(self, key_id: str, names: list[str]) -> None:
        def fn(doc: dict[str, Any], rec: dict[str, Any]) -> None:
            if rec["state"] == PENDING_DELETION:
                self._refuse(rec, "untag")
            for name in names:
                rec.get("tags", {}).pop(name, None)

        self._change_key(key_id, fn)

    def set_description(self, key_id: str, description: str) -> None:
        if len(description) > MAX_DESCRIPTION:
            raise ConfigurationError(f"description longer than {MAX_DESCRIPTION} characters")

        def fn(doc: dict[str, Any], rec: dict[str, Any]) -> None:
            if rec["state"] == PENDING_DELETION:
                self._refuse(rec, "change its description")
            rec["description"] = description

        self._change_key(key_id, fn)

    # -- export / import -------------------------------------------------------------
    def export_records(self, key_ids: list[str] | None = None) -> dict[str, Any]:
        """Keys (with *unsealed* material) and their aliases, for
        :mod:`encfs.keystore.transfer` to seal under an export passphrase."""
        doc = self._read()
        ids = key_ids if key_ids is not None else sorted(doc["keys"])
        keys = {}
        for key_id in ids:
            rec = doc["keys"].get(key_id)
            if rec is None:
                self._not_found(doc, key_id)
            out = {k: v for k, v in rec.items() if k != "versions"}
            out["versions"] = {
                v: {"created": e.get("created", ""), "material": b64e(self._open_material(doc, key_id, int(v), e))}
                for v, e in rec["versions"].items()
            }
            keys[key_id] = out
        aliases = {a: k for a, k in doc["aliases"].items() if k in keys}
        return {"keys": keys, "aliases": aliases}

    def import_records(self, bundle: Mapping[str, Any]) -> dict[str, list[str]]:
        """Merge exported keys: new keys are added, known keys gain missing
        versions (same material required), aliases are added unless taken
        by another key.  Returns what happened, for the report."""
        report: dict[str, list[str]] = {"added": [], "merged": [], "unchanged": [], "alias_conflicts": []}

        def change(doc: dict[str, Any]) -> dict[str, list[str]]:
            for key_id, rec in bundle["keys"].items():
                if not isinstance(key_id, str) or not key_id.startswith("lk-") or rec.get("id") != key_id:
                    raise KeystoreError(f"import bundle holds a malformed key entry {key_id!r}")
                mine = doc["keys"].get(key_id)
                versions = {}
                for v, e in rec["versions"].items():
                    versions[v] = {"created": e.get("created", ""),
                                   **self._seal_material(doc, key_id, int(v), b64d(e["material"]))}
                if mine is None:
                    new = {k: v for k, v in rec.items() if k != "versions"}
                    new["versions"] = versions
                    doc["keys"][key_id] = new
                    doc["deleted"].pop(key_id, None)
                    report["added"].append(key_id)
                    continue
                added = False
                for v, e in rec["versions"].items():
                    if v in mine["versions"]:
                        if self._open_material(doc, key_id, int(v), mine["versions"][v]) != b64d(e["material"]):
                            raise KeystoreError(f"import conflict: key {key_id} version {v} differs from the local one")
                    else:
                        mine["versions"][v] = versions[v]
                        added = True
                if added:
                    mine["current_version"] = max(int(x) for x in mine["versions"])
                report["merged" if added else "unchanged"].append(key_id)
            for alias, key_id in bundle.get("aliases", {}).items():
                have = doc["aliases"].get(alias)
                if have is None:
                    doc["aliases"][alias] = key_id
                elif have != key_id:
                    report["alias_conflicts"].append(alias)
            return report

        return self._update(change)


def _check_rotation_days(days: int) -> None:
    if not isinstance(days, int) or not MIN_ROTATION_DAYS <= days <= MAX_ROTATION_DAYS:
        raise ConfigurationError(f"rotation period must be {MIN_ROTATION_DAYS}..{MAX_ROTATION_DAYS} days")
