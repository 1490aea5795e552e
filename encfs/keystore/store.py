"""The local keystore: encfs's embedded root-key service.

Root keys are 32 random bytes from the OS CSPRNG (``os.urandom``), kept in
``$ENCFS_HOME/keystore.json`` (default ``~/.encfs``), owner-only, written
atomically under a file lock.  Each key has an id (``lk-<hex>``), aliases, a
state, and numbered versions; the current version wraps new data keys and
every version keeps unwrapping.  Optionally the keystore is sealed under a
passphrase, which then also authenticates the whole document.

This module is the public handle, :class:`LocalKeystore`; the work is split:

- model.py: formats, states, limits, date/alias/tag helpers;
- schema.py: the document's schema, checked whole on every load;
- document.py: load/save (permissions, schema, passphrase, document MAC);
- storage.py: the JSON file itself (atomic writes, lock, checksum, backup);
- sealing.py: the passphrase-derived keys; permissions.py: mode checks;
- lifecycle.py: states, rotation, deletion, due work (docs/KEYS.md);
- metadata.py: aliases, tags, descriptions;
- importer.py / transfer.py: export bundles and merging them in.

Key material leaves this package only through :meth:`LocalKeystore._material`,
which the local provider calls; nothing here logs or reprs it.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, KeyNotFoundError, KeyStateError, KeystoreError
from . import lifecycle, metadata
from .document import DocumentStore
from .importer import merge_records
from .model import (  # noqa: F401 - re-exported: the public names of the first store.py
    CUSTOMER,
    DAY,
    DEFAULT_ALIAS,
    DEFAULT_DELETION_DAYS,
    DEFAULT_ROTATION_DAYS,
    DISABLED,
    ENABLED,
    FORMAT,
    FORMAT_SEALED,
    HOME_ENV,
    KEY_BYTES,
    MANAGED,
    MANAGED_PREFIX,
    MAX_DELETION_DAYS,
    MAX_DESCRIPTION,
    MAX_ROTATION_DAYS,
    MAX_TAGS,
    MIN_DELETION_DAYS,
    MIN_ROTATION_DAYS,
    PENDING_DELETION,
    STATES,
    check_rotation_days,
    check_tags,
    default_home,
    is_reserved_alias,
    key_uri,
    normalize_alias,
)
from .model import iso as _iso  # noqa: F401 - re-exported
from .model import ts as _ts  # noqa: F401 - re-exported
from .schema import (
    SchemaError,
    check_bundle_records,
    check_document,  # noqa: F401 - re-exported; raises ValueError (SchemaError), as before
)
from .sealing import b64e
from .storage import JsonFileStore


class LocalKeystore:
    """Thread-safe handle on one keystore directory."""

    def __init__(self, home: str | os.PathLike[str] | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.home = Path(home).expanduser() if home else default_home()
        self.clock = clock
        self._file = JsonFileStore(self.home / "keystore.json")
        self._store = DocumentStore(self.home, self._file)
        self._lock = threading.RLock()
        self._doc: dict[str, Any] | None = None
        self._stamp: tuple[int, int, int] | None = None
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
            log.append(action, key=key_uri(key_id), automatic=True, **fields)

    # -- document access -------------------------------------------------
    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._file.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self) -> dict[str, Any]:
        return self._store.load()

    def _seal(self, doc: dict[str, Any]) -> lifecycle.Seal:
        return lambda key_id, version, material: self._store.seal_material(doc, key_id, version, material)

    def _read(self) -> dict[str, Any]:
        """Current document, reloaded only when the file changed; applies
        rotations and deletions that have come due (cheap when none has)."""
        with self._lock:
            stamp = self._stat()
            if self._doc is None or stamp != self._stamp:
                self._doc, self._stamp = self._load(), stamp
                self._next_due = lifecycle.due_time(self._doc)
                if self._doc.get("sealing") and self._doc["format"] != FORMAT_SEALED:
                    self._next_due = 0.0  # a format 1 sealed keystore: upgrade it now (document.py)
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
        # Before the lock: taking it makes the folder private, which would
        # hide that others could write it until now.
        self._store.check_permissions()
        with self._lock, self._file.locked():
            doc = self._load()
            sealer = self._store.sealer(doc)
            events = lifecycle.apply_due(doc, self.clock(), self._seal(doc))
            result = change(doc)
            self._store.save(doc, sealer)
            self._doc, self._stamp = doc, self._stat()
            self._next_due = lifecycle.due_time(doc)
        for action, key_id, fields in events:
            self._audit(action, key_id, **fields)
        return result

    def recover_from_backup(self) -> None:
        """Replace a corrupted keystore file by its last good backup."""
        self._store.check_permissions(backup=True)
        with self._lock, self._file.locked():
            doc = self._store.load_backup()
            self._store.save(doc, self._store.sealer(doc))
            self._doc, self._stamp = doc, self._stat()
            self._next_due = lifecycle.due_time(doc)

    def _open_material(self, doc: dict[str, Any], key_id: str, version: int, entry: Mapping[str, str]) -> bytes:
        return self._store.open_material(doc, key_id, version, entry)

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
            raise KeyNotFoundError(f"local key {name} was deleted on {when}", key=key_uri(name))
        raise KeyNotFoundError(f"local key {name!r} not found in keystore {self.home}", key=key_uri(name))

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
        state = rec["state"]
        if state != ENABLED:
            op = "wrap" if for_wrap else "unwrap"
            extra = f" (deletion on {rec['deletion_date']})" if state == PENDING_DELETION else ""
            raise KeyStateError(f"local key {key_id} is {state}{extra}: cannot {op}", key=key_uri(key_id), operation=op)
        v = int(rec["current_version"]) if version is None else int(version)
        entry = rec["versions"].get(str(v))
        if entry is None:
            raise KeyNotFoundError(f"local key {key_id} has no version {v}", key=key_uri(key_id))
        return v, self._open_material(doc, key_id, v, entry)

    # -- creation ------------------------------------------------------------
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
        if kind != CUSTOMER:
            raise ConfigurationError("only customer keys can be created directly; managed keys come from managed_key()")
        alias = metadata.user_alias(alias) if alias else None
        metadata.check_description(description)
        tags = check_tags(tags or {})
        if rotation_days is not None:
            check_rotation_days(rotation_days)
        key_id = "lk-" + secrets.token_hex(16)

        def change(doc: dict[str, Any]) -> str:
            if alias and alias in doc["aliases"]:
                raise ConfigurationError(f"alias {alias!r} already exists")
            doc["keys"][key_id] = lifecycle.new_record(key_id, self.clock(), self._seal(doc), description=description,
                                                       tags=tags, kind=kind, rotation_days=rotation_days)
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
            doc["keys"][new_id] = lifecycle.new_record(new_id, self.clock(), self._seal(doc), description=description,
                                                       tags={}, kind=MANAGED, rotation_days=DEFAULT_ROTATION_DAYS)
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

    # -- state transitions (lifecycle.py) -------------------------------------------
    def _change_key(self, key_id: str, fn: Callable[[dict[str, Any], dict[str, Any]], Any]) -> Any:
        def change(doc: dict[str, Any]) -> Any:
            rec = doc["keys"].get(key_id)
            if rec is None:
                self._not_found(doc, key_id)
            return fn(doc, rec)

        return self._update(change)

    @staticmethod
    def _refuse(rec: dict[str, Any], op: str) -> None:
        lifecycle.refuse(rec, op)

    def enable(self, key_id: str) -> None:
        """Disabled → Enabled (Enabled stays Enabled)."""
        self._change_key(key_id, lambda doc, rec: lifecycle.enable(rec))

    def disable(self, key_id: str) -> None:
        """Enabled → Disabled (Disabled stays Disabled)."""
        self._change_key(key_id, lambda doc, rec: lifecycle.disable(rec))

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
        lifecycle.check_deletion_days(days)
        return self._change_key(key_id, lambda doc, rec: lifecycle.schedule_deletion(rec, self.clock(), days))

    def cancel_deletion(self, key_id: str) -> None:
        """PendingDeletion → Disabled (as in KMS: re-enable explicitly)."""
        self._change_key(key_id, lambda doc, rec: lifecycle.cancel_deletion(rec))

    def rotate(self, key_id: str) -> int:
        """On-demand rotation: a new version from the CSPRNG becomes current.
        Old versions keep unwrapping."""
        return self._change_key(key_id, lambda doc, rec: lifecycle.rotate(rec, self.clock(), self._seal(doc)))

    def enable_rotation(self, key_id: str, period_days: int = DEFAULT_ROTATION_DAYS) -> None:
        check_rotation_days(period_days)
        self._change_key(key_id, lambda doc, rec: lifecycle.enable_rotation(rec, self.clock(), period_days))

    def disable_rotation(self, key_id: str) -> None:
        self._change_key(key_id, lambda doc, rec: lifecycle.disable_rotation(rec))

    # -- metadata (metadata.py) -----------------------------------------------------
    def create_alias(self, alias: str, key_id: str) -> None:
        alias = metadata.user_alias(alias)
        self._update(lambda doc: metadata.create_alias(doc, alias, key_id, self._not_found))

    def update_alias(self, alias: str, key_id: str) -> None:
        alias = metadata.user_alias(alias)
        self._update(lambda doc: metadata.update_alias(doc, alias, key_id, self._not_found))

    def set_alias(self, alias: str, key_id: str) -> None:
        """Create or move an alias."""
        alias = normalize_alias(alias)
        if alias in self._read()["aliases"]:
            self.update_alias(alias, key_id)
        else:
            self.create_alias(alias, key_id)

    def delete_alias(self, alias: str) -> None:
        alias = metadata.user_alias(alias)
        self._update(lambda doc: metadata.delete_alias(doc, alias))

    def tag(self, key_id: str, tags: Mapping[str, str]) -> None:
        tags = check_tags(tags)
        self._change_key(key_id, lambda doc, rec: metadata.tag(rec, tags))

    def untag(self, key_id: str, names: list[str]) -> None:
        self._change_key(key_id, lambda doc, rec: metadata.untag(rec, names))

    def set_description(self, key_id: str, description: str) -> None:
        metadata.check_description(description)
        self._change_key(key_id, lambda doc, rec: metadata.set_description(rec, description))

    # -- export / import (transfer.py seals bundles; importer.py merges them) ---------
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

    def import_records(self, bundle: Mapping[str, Any], *, add_versions: bool = False,
                       make_current: bool = False) -> dict[str, Any]:
        """Merge exported keys (rules in importer.py): new keys are added;
        known keys gain missing versions only with ``add_versions``, and
        their current version changes only with ``make_current``.  Returns
        what was added and refused, for the report."""
        try:
            records = check_bundle_records(bundle)
        except SchemaError as exc:
            raise KeystoreError(f"malformed key import bundle ({exc})") from None

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            return merge_records(
                doc, records, seal=self._seal(doc),
                open_material=lambda key_id, v, entry: self._open_material(doc, key_id, v, entry),
                add_versions=add_versions, make_current=make_current)

        return self._update(change)


def _check_rotation_days(days: int) -> None:  # kept for callers of the first store.py
    check_rotation_days(days)
