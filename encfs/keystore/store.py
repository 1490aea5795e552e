"""The local keystore: encfs's embedded root-key service.

Root keys are 32 random bytes from the OS CSPRNG (``os.urandom``), kept in
``$ENCFS_HOME/keystore.json`` (default ``~/.encfs``), owner-only, written
atomically under a file lock (storage.py).  Each key has an id
(``lk-<hex>``), aliases, a state, and numbered versions; the current version
wraps new data keys and every version keeps unwrapping.  Optionally, key
material is sealed under a passphrase (sealing.py).

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

from ..errors import ConfigurationError, KeyNotFoundError, KeystoreError, KeyStateError
from .sealing import PASSPHRASE_ENV, Sealer, b64d, b64e, get_passphrase
from .storage import JsonFileStore

FORMAT = "encfs-keystore/1"
DEFAULT_ALIAS = "default"
HOME_ENV = "ENCFS_HOME"
KEY_BYTES = 32
ENABLED, DISABLED, PENDING_DELETION = "Enabled", "Disabled", "PendingDeletion"


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or "~/.encfs").expanduser()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def normalize_alias(name: str) -> str:
    """Aliases may be written with or without AWS's ``alias/`` prefix."""
    name = name[len("alias/") :] if name.startswith("alias/") else name
    if not name or len(name) > 256 or name.startswith("/") or any(c.isspace() for c in name):
        raise ConfigurationError(f"invalid alias {name!r}")
    return name


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

    def __repr__(self) -> str:
        return f"LocalKeystore(home={str(self.home)!r})"

    def __reduce__(self):
        return (type(self), (str(self.home),))

    # -- document access -------------------------------------------------
    def _empty(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": FORMAT, "sealing": None, "aliases": {}, "keys": {}}
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

    def _read(self) -> dict[str, Any]:
        """Current document, reloaded only when the file changed."""
        with self._lock:
            stamp = self._stat()
            if self._doc is None or stamp != self._stamp:
                doc = self._file.read() or self._empty()
                if doc.get("format") != FORMAT:
                    raise KeystoreError(f"{self._file.path} is not an encfs keystore (format {doc.get('format')!r})")
                self._doc, self._stamp = doc, stamp
            return self._doc

    def _update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Apply ``change`` to a fresh copy of the document under the file lock."""
        with self._lock, self._file.locked():
            doc = self._file.read() or self._empty()
            result = change(doc)
            self._file.write(doc)
            self._doc, self._stamp = doc, self._stat()
            return result

    def recover_from_backup(self) -> None:
        """Replace a corrupted keystore file by its last good backup."""
        with self._lock, self._file.locked():
            doc = self._file.read_backup()
            self._file.write(doc)
            self._doc, self._stamp = doc, self._stat()

    # -- sealing ---------------------------------------------------------
    def _get_sealer(self, doc: dict[str, Any]) -> Sealer | None:
        params = doc.get("sealing")
        if not params:
            return None
        if self._sealer is None:
            self._sealer = Sealer(params, get_passphrase())
        return self._sealer

    @staticmethod
    def _aad(key_id: str, version: int) -> bytes:
        return f"encfs-keystore/1|{key_id}|{version}".encode()

    def _seal_material(self, doc: dict[str, Any], key_id: str, version: int, material: bytes) -> dict[str, str]:
        sealer = self._get_sealer(doc)
        if sealer is None:
            return {"material": b64e(material)}
        return {"sealed": sealer.seal(material, self._aad(key_id, version))}

    # -- lookups -----------------------------------------------------------
    def resolve(self, name: str) -> str:
        """Key id for an id or alias; raises KeyNotFoundError."""
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
        if key_id is None or key_id not in doc["keys"]:
            raise KeyNotFoundError(f"local key {name!r} not found in keystore {self.home}", key=f"local://{name}")
        return key_id

    def record(self, key_id: str) -> dict[str, Any]:
        doc = self._read()
        rec = doc["keys"].get(key_id)
        if rec is None:
            raise KeyNotFoundError(f"local key {key_id!r} not found in keystore {self.home}", key=f"local://{key_id}")
        return rec

    def aliases_of(self, key_id: str) -> list[str]:
        return sorted(a for a, k in self._read()["aliases"].items() if k == key_id)

    def list_ids(self) -> list[str]:
        return sorted(self._read()["keys"])

    def _material(self, key_id: str, version: int | None = None, *, for_wrap: bool) -> tuple[int, bytes]:
        """Root key material of ``version`` (current if None).  Provider-only."""
        doc = self._read()
        rec = self.record(key_id)
        state = rec.get("state", ENABLED)
        if state != ENABLED:
            op = "wrap" if for_wrap else "unwrap"
            raise KeyStateError(f"local key {key_id} is {state}: cannot {op}", key=f"local://{key_id}", operation=op)
        v = int(rec["current_version"]) if version is None else int(version)
        entry = rec["versions"].get(str(v))
        if entry is None:
            raise KeyNotFoundError(f"local key {key_id} has no version {v}", key=f"local://{key_id}")
        if "sealed" in entry:
            sealer = self._get_sealer(doc)
            if sealer is None:
                raise KeystoreError("sealed key material but the keystore has no sealing parameters")
            return v, sealer.unseal(entry["sealed"], self._aad(key_id, v))
        return v, b64d(entry["material"])

    # -- administration ------------------------------------------------------
    def create_key(
        self,
        *,
        alias: str | None = None,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        kind: str = "customer",
    ) -> str:
        """Create a root key from the CSPRNG; return its id."""
        alias = normalize_alias(alias) if alias else None
        key_id = "lk-" + secrets.token_hex(16)
        material = os.urandom(KEY_BYTES)
        now = _iso(self.clock())

        def change(doc: dict[str, Any]) -> str:
            if alias and alias in doc["aliases"]:
                raise ConfigurationError(f"alias {alias!r} already exists")
            doc["keys"][key_id] = {
                "id": key_id,
                "created": now,
                "description": description,
                "tags": dict(tags or {}),
                "state": ENABLED,
                "usage": "ENCRYPT_DECRYPT",
                "kind": kind,
                "current_version": 1,
                "versions": {"1": {"created": now, **self._seal_material(doc, key_id, 1, material)}},
            }
            if alias:
                doc["aliases"][alias] = key_id
            return key_id

        return self._update(change)

    def ensure_default(self) -> str:
        """The id of the ``default`` key, created on first use (once, even
        when several processes race to create it)."""
        doc = self._read()
        key_id = doc["aliases"].get(DEFAULT_ALIAS)
        if key_id and key_id in doc["keys"]:
            return key_id

        def change(doc: dict[str, Any]) -> str:
            existing = doc["aliases"].get(DEFAULT_ALIAS)
            if existing and existing in doc["keys"]:
                return existing
            new_id = "lk-" + secrets.token_hex(16)
            now = _iso(self.clock())
            doc["keys"][new_id] = {
                "id": new_id, "created": now, "description": "encfs default key", "tags": {},
                "state": ENABLED, "usage": "ENCRYPT_DECRYPT", "kind": "encfs",
                "current_version": 1,
                "versions": {"1": {"created": now, **self._seal_material(doc, new_id, 1, os.urandom(KEY_BYTES))}},
            }
            doc["aliases"][DEFAULT_ALIAS] = new_id
            return new_id

        return self._update(change)

    def set_alias(self, alias: str, key_id: str) -> None:
        alias = normalize_alias(alias)

        def change(doc: dict[str, Any]) -> None:
            if key_id not in doc["keys"]:
                raise KeyNotFoundError(f"local key {key_id!r} not found", key=f"local://{key_id}")
            doc["aliases"][alias] = key_id

        self._update(change)

    def set_state(self, key_id: str, state: str) -> None:
        if state not in (ENABLED, DISABLED):
            raise ConfigurationError(f"cannot set key state {state!r} directly")

        def change(doc: dict[str, Any]) -> None:
            rec = doc["keys"].get(key_id)
            if rec is None:
                raise KeyNotFoundError(f"local key {key_id!r} not found", key=f"local://{key_id}")
            rec["state"] = state

        self._update(change)

    def rotate(self, key_id: str) -> int:
        """Add a new version from the CSPRNG and make it current."""
        material = os.urandom(KEY_BYTES)
        now = _iso(self.clock())

        def change(doc: dict[str, Any]) -> int:
            rec = doc["keys"].get(key_id)
            if rec is None:
                raise KeyNotFoundError(f"local key {key_id!r} not found", key=f"local://{key_id}")
            v = max(int(x) for x in rec["versions"]) + 1
            rec["versions"][str(v)] = {"created": now, **self._seal_material(doc, key_id, v, material)}
            rec["current_version"] = v
            return v

        return self._update(change)
