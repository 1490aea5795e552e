"""SQLite storage (the embedded default): WAL journal, ``synchronous=FULL``
so an acknowledged change survives a killed process (and a power cut), and
versioned migrations recorded in the ``meta`` table.

One connection, used from the event-loop thread only.  Transactions are
serialised by an asyncio lock; as no statement awaits anything, a
transaction's body runs without interleaving and readers never see a
half-applied write (so reads need no BEGIN/COMMIT round trip).  Another
server must not serve the same file: a lock file next to the database
refuses a second one.  The worker processes of one server (``workers`` in
the config) share the file under their supervisor's lock; they open it with
``shared=True``, and their reads then run in a BEGIN ... COMMIT snapshot.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any

from filelock import BaseFileLock, Timeout

from ..portable import file_lock
from .rows import access_key_from_row as _access_key
from .rows import actions_text as _actions_text
from .rows import alias_from_row as _alias
from .rows import grant_from_row as _grant
from .rows import key_from_row as _key
from .rows import key_values as _key_values
from .rows import version_from_row as _version
from .storage import (
    AccessKey,
    AliasRecord,
    AlreadyExists,
    GrantRecord,
    KeyRecord,
    KeyVersion,
    Storage,
    StorageError,
    Transaction,
)

#: Migrations, in order: MIGRATIONS[i] takes the schema from version i to i+1.
MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE keys (
            key_id TEXT PRIMARY KEY, arn TEXT NOT NULL, created REAL NOT NULL, policy TEXT NOT NULL,
            creator TEXT NOT NULL, description TEXT NOT NULL, state TEXT NOT NULL, usage TEXT NOT NULL,
            spec TEXT NOT NULL, current_version INTEGER NOT NULL, deletion_date REAL,
            rotation_enabled INTEGER NOT NULL, rotation_period_days INTEGER, next_rotation REAL,
            tags TEXT NOT NULL)""",
        """CREATE TABLE key_versions (
            key_id TEXT NOT NULL REFERENCES keys(key_id) ON DELETE CASCADE, version INTEGER NOT NULL,
            created REAL NOT NULL, rotation_type TEXT NOT NULL, wrapped BLOB NOT NULL,
            master_key_id TEXT NOT NULL, PRIMARY KEY (key_id, version))""",
        """CREATE TABLE aliases (
            name TEXT PRIMARY KEY, key_id TEXT NOT NULL REFERENCES keys(key_id) ON DELETE CASCADE,
            created REAL NOT NULL, updated REAL NOT NULL)""",
        "CREATE INDEX aliases_key ON aliases(key_id)",
        """CREATE TABLE grants (
            grant_id TEXT PRIMARY KEY, key_id TEXT NOT NULL REFERENCES keys(key_id) ON DELETE CASCADE,
            grantee TEXT NOT NULL, retiring TEXT, operations TEXT NOT NULL, constraints TEXT NOT NULL,
            name TEXT NOT NULL, created REAL NOT NULL, issuing_account TEXT NOT NULL, creator TEXT NOT NULL)""",
        "CREATE INDEX grants_key_grantee ON grants(key_id, grantee)",
        """CREATE TABLE access_keys (
            access_key_id TEXT PRIMARY KEY, principal_arn TEXT NOT NULL, sealed_secret BLOB NOT NULL,
            master_key_id TEXT NOT NULL, created REAL NOT NULL)""",
    ],
    [
        # The principals' account_actions live with their access keys, so every
        # server reads them from storage (encfs/server/principals.py); NULL in
        # rows written before.
        "ALTER TABLE access_keys ADD COLUMN account_actions TEXT",
    ],
]


class _Tx(Transaction):
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def _one(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        return self.db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        return self.db.execute(sql, args).fetchall()

    # keys
    async def get_key(self, key_id: str, *, for_update: bool = False) -> KeyRecord | None:
        row = self._one("SELECT * FROM keys WHERE key_id = ?", (key_id,))
        return _key(row) if row else None

    async def insert_key(self, rec: KeyRecord) -> None:
        try:
            self.db.execute(
                "INSERT INTO keys (arn, created, policy, creator, description, state, usage, spec, current_version,"
                " deletion_date, rotation_enabled, rotation_period_days, next_rotation, tags, key_id)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", _key_values(rec))
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"key {rec.key_id} exists") from exc

    async def update_key(self, rec: KeyRecord) -> None:
        self.db.execute(
            "UPDATE keys SET arn=?, created=?, policy=?, creator=?, description=?, state=?, usage=?, spec=?,"
            " current_version=?, deletion_date=?, rotation_enabled=?, rotation_period_days=?, next_rotation=?,"
            " tags=? WHERE key_id=?", _key_values(rec))

    async def list_keys(self, after: str | None, limit: int) -> list[KeyRecord]:
        rows = self._all("SELECT * FROM keys WHERE key_id > ? ORDER BY key_id LIMIT ?", (after or "", limit))
        return [_key(r) for r in rows]

    async def due_keys(self, now: float) -> list[str]:
        rows = self._all(
            "SELECT key_id FROM keys WHERE (state = 'PendingDeletion' AND deletion_date <= ?)"
            " OR (rotation_enabled = 1 AND state = 'Enabled' AND next_rotation <= ?) ORDER BY key_id", (now, now))
        return [r["key_id"] for r in rows]

    async def destroy_key(self, key_id: str) -> None:
        # Explicit deletes (not only ON DELETE CASCADE): the material must go
        # even where foreign keys are off.
        for table in ("key_versions", "aliases", "grants", "keys"):
            self.db.execute(f"DELETE FROM {table} WHERE key_id = ?", (key_id,))

    # versions
    async def get_version(self, key_id: str, version: int) -> KeyVersion | None:
        row = self._one("SELECT * FROM key_versions WHERE key_id = ? AND version = ?", (key_id, version))
        return _version(row) if row else None

    async def list_versions(self, key_id: str) -> list[KeyVersion]:
        return [_version(r) for r in self._all("SELECT * FROM key_versions WHERE key_id = ? ORDER BY version",
                                               (key_id,))]

    async def insert_version(self, ver: KeyVersion) -> None:
        try:
            self.db.execute("INSERT INTO key_versions VALUES (?,?,?,?,?,?)",
                            (ver.key_id, ver.version, ver.created, ver.rotation_type, ver.wrapped, ver.master_key_id))
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"key {ver.key_id} version {ver.version} exists") from exc

    async def update_version_wrapping(self, ver: KeyVersion) -> None:
        self.db.execute("UPDATE key_versions SET wrapped = ?, master_key_id = ? WHERE key_id = ? AND version = ?",
                        (ver.wrapped, ver.master_key_id, ver.key_id, ver.version))

    # aliases
    async def get_alias(self, name: str) -> AliasRecord | None:
        row = self._one("SELECT * FROM aliases WHERE name = ?", (name,))
        return _alias(row) if row else None

    async def insert_alias(self, rec: AliasRecord) -> None:
        try:
            self.db.execute("INSERT INTO aliases VALUES (?,?,?,?)", (rec.name, rec.key_id, rec.created, rec.updated))
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"alias {rec.name} exists") from exc

    async def update_alias(self, rec: AliasRecord) -> None:
        self.db.execute("UPDATE aliases SET key_id = ?, updated = ? WHERE name = ?", (rec.key_id, rec.updated, rec.name))

    async def delete_alias(self, name: str) -> None:
        self.db.execute("DELETE FROM aliases WHERE name = ?", (name,))

    async def list_aliases(self, key_id: str | None, after: str | None, limit: int) -> list[AliasRecord]:
        if key_id is None:
            rows = self._all("SELECT * FROM aliases WHERE name > ? ORDER BY name LIMIT ?", (after or "", limit))
        else:
            rows = self._all("SELECT * FROM aliases WHERE key_id = ? AND name > ? ORDER BY name LIMIT ?",
                             (key_id, after or "", limit))
        return [_alias(r) for r in rows]

    # grants
    async def insert_grant(self, rec: GrantRecord) -> None:
        try:
            self.db.execute(
                "INSERT INTO grants (grant_id, key_id, grantee, retiring, operations, constraints, name, created,"
                " issuing_account, creator) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (rec.grant_id, rec.key_id, rec.grantee, rec.retiring, json.dumps(rec.operations),
                 json.dumps(rec.constraints, sort_keys=True), rec.name, rec.created, rec.issuing_account, rec.creator))
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"grant {rec.grant_id} exists") from exc

    async def get_grant(self, grant_id: str) -> GrantRecord | None:
        row = self._one("SELECT * FROM grants WHERE grant_id = ?", (grant_id,))
        return _grant(row) if row else None

    async def list_grants(self, key_id: str, after: str | None, limit: int) -> list[GrantRecord]:
        rows = self._all("SELECT * FROM grants WHERE key_id = ? AND grant_id > ? ORDER BY grant_id LIMIT ?",
                         (key_id, after or "", limit))
        return [_grant(r) for r in rows]

    async def grants_for(self, key_id: str, grantee: str) -> list[GrantRecord]:
        rows = self._all("SELECT * FROM grants WHERE key_id = ? AND grantee = ?", (key_id, grantee))
        return [_grant(r) for r in rows]

    async def delete_grant(self, grant_id: str) -> None:
        self.db.execute("DELETE FROM grants WHERE grant_id = ?", (grant_id,))

    # principals
    async def get_access_key(self, access_key_id: str) -> AccessKey | None:
        row = self._one("SELECT * FROM access_keys WHERE access_key_id = ?", (access_key_id,))
        return _access_key(row) if row is not None else None

    async def put_access_key(self, rec: AccessKey) -> None:
        self.db.execute("INSERT OR REPLACE INTO access_keys (access_key_id, principal_arn, sealed_secret,"
                        " master_key_id, created, account_actions) VALUES (?,?,?,?,?,?)",
                        (rec.access_key_id, rec.principal_arn, rec.sealed_secret, rec.master_key_id, rec.created,
                         _actions_text(rec.account_actions)))

    async def list_access_keys(self) -> list[AccessKey]:
        return [_access_key(r) for r in self._all("SELECT * FROM access_keys ORDER BY access_key_id", ())]

    async def delete_access_key(self, access_key_id: str) -> None:
        self.db.execute("DELETE FROM access_keys WHERE access_key_id = ?", (access_key_id,))

    # meta
    async def get_meta(self, name: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE name = ?", (name,))
        return row["value"] if row else None

    async def set_meta(self, name: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))


class SQLiteStorage(Storage):
    """SQLite in WAL mode at ``path`` (created with mode 0600)."""

    def __init__(self, path: str | os.PathLike[str], *, shared: bool = False) -> None:
        self.path = Path(path)
        #: One of several worker processes of one server (whose supervisor
        #: holds the lock file): reads then need BEGIN, others may write.
        self.shared = shared
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._lockfile: BaseFileLock | None = None

    def __repr__(self) -> str:
        return f"SQLiteStorage({str(self.path)!r})"

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One server process per database (filelock: flock on POSIX,
        # msvcrt.locking on Windows; encfs/portable.py).
        if not self.shared:
            lock = file_lock(str(self.path) + ".lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise StorageError(f"{self.path} is in use by another server process") from None
            self._lockfile = lock
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an acknowledged change
        # survives a crash of the process or the machine.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")
        self._db = db
        self._migrate()

    def _migrate(self) -> None:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            current = int(row["value"]) if row else 0
            if current > len(MIGRATIONS):
                raise StorageError(f"{self.path} has schema version {current}; this encfs knows up to "
                                   f"{len(MIGRATIONS)} (upgrade encfs)")
            for version in range(current, len(MIGRATIONS)):
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version + 1),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self, *, keep_lock: bool = False) -> None:
        """Close the connection and (unless ``keep_lock``: a supervisor about
        to start worker processes) release the lock file."""
        async with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lockfile is not None and not keep_lock:
                self._lockfile.release()
                self._lockfile = None

    def transaction(self, *, write: bool = False) -> _Transaction:
        return _Transaction(self, write)


class _Transaction:
    """One transaction (a class, not @asynccontextmanager: this runs twice
    per request, and the generator machinery costs more than the reads).

    A read needs no BEGIN in a single process: it is the only writer (the
    lock file), every write runs under the same asyncio lock, and no
    statement awaits, so nothing can change between the reads.  Worker
    processes (``shared``) read in a BEGIN ... COMMIT snapshot, as others may
    commit meanwhile.  Writes are BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any
    exception)."""

    __slots__ = ("began", "db", "storage", "write")

    def __init__(self, storage: SQLiteStorage, write: bool) -> None:
        self.storage = storage
        self.write = write
        self.db: sqlite3.Connection | None = None
        self.began = False

    async def __aenter__(self) -> Transaction:
        await self.storage._lock.acquire()
        try:
            db = self.storage._db
            if db is None:
                raise StorageError("storage is closed")
            if self.write:
                try:
                    db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise StorageError(f"storage unavailable: {exc}") from exc
                self.began = True
            elif self.storage.shared:
                db.execute("BEGIN")
                self.began = True
        except BaseException:
            self.storage._lock.release()
            raise
        self.db = db
        return _Tx(db)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        db = self.db
        try:
            if not self.began or db is None:
                return
            if exc_type is not None:
                db.execute("ROLLBACK")
                return
            try:
                db.execute("COMMIT")
            except sqlite3.Error as err:
                db.execute("ROLLBACK")
                raise StorageError(f"commit failed: {err}") from err
        finally:
            self.storage._lock.release()
