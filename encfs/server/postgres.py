"""PostgreSQL storage: several stateless server processes (replicas) on one
database serve the same keys, policies and grants.

The schema is SQLite's (encfs/server/sqlite.py) in PostgreSQL types, with
versioned migrations recorded in ``meta`` and applied under a transaction
advisory lock, so replicas starting together migrate once.  Migration 2 adds
the shared audit trail (:mod:`encfs.server.audit_pg`).

Transactions (psycopg 3, an async connection pool, autocommit connections
with explicit ``BEGIN``):

- reads: autocommit statements, each seeing every change committed before
  it (no BEGIN/COMMIT: they would double a request's round trips).  Every
  change commits atomically, and a request is refused as soon as any of its
  reads says no (key gone or disabled, grant gone, version gone), so a read
  racing a change is answered as if it came just before the change or just
  after it, or refused; it never uses something no committed state allowed;
- writes: ``BEGIN`` (READ COMMITTED) and ``SELECT ... FOR UPDATE`` on the key
  row the service reads before changing it (``for_update=True``), so two
  administrative calls on two replicas serialise on that row and the second
  one re-reads the first one's result: no lost update.  ``COMMIT`` returns
  once the WAL is flushed (``synchronous_commit`` on, PostgreSQL's default),
  so an acknowledged change survives a PostgreSQL crash or restart.

Nothing is cached between requests: each request reads the current key
state, policy and grants, so a change committed through one replica applies
to the next request on every replica (docs/SERVER.md, "High availability").

Connection loss (PostgreSQL restarted, a failover) surfaces as
:class:`StorageUnavailable`, which the server answers with a retryable
``DependencyTimeoutException`` (HTTP 503, retried by AWS SDKs and encfs's
aws-kms provider); the pool drops the broken connection.  A write whose
connection is found broken at ``BEGIN`` is retried at once on another, as
nothing has run on it yet.

The database password never comes from the config: libpq reads
``PGPASSWORD`` or ``PGPASSFILE`` (or use peer/certificate authentication).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
    StorageUnavailable,
    Transaction,
)

#: Migrations, in order: MIGRATIONS[i] takes the schema from version i to i+1.
#: Version 1 is SQLite's schema; version 2 adds the shared audit trail.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE keys (
            key_id TEXT PRIMARY KEY, arn TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, policy TEXT NOT NULL,
            creator TEXT NOT NULL, description TEXT NOT NULL, state TEXT NOT NULL, usage TEXT NOT NULL,
            spec TEXT NOT NULL, current_version INTEGER NOT NULL, deletion_date DOUBLE PRECISION,
            rotation_enabled INTEGER NOT NULL, rotation_period_days INTEGER, next_rotation DOUBLE PRECISION,
            tags TEXT NOT NULL)""",
        """CREATE TABLE key_versions (
            key_id TEXT NOT NULL REFERENCES keys(key_id) ON DELETE CASCADE, version INTEGER NOT NULL,
            created DOUBLE PRECISION NOT NULL, rotation_type TEXT NOT NULL, wrapped BYTEA NOT NULL,
            master_key_id TEXT NOT NULL, PRIMARY KEY (key_id, version))""",
        """CREATE TABLE aliases (
            name TEXT PRIMARY KEY, key_id TEXT NOT NULL REFERENCES keys(key_id) ON DELETE CASCADE,
            created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX aliases_key ON aliases(key_id)",
        """CREATE TABLE grants (
            grant_id TEXT PRIMARY KEY, key_id TEXT NOT NULL REFERENCES keys(key_id) ON DELETE CASCADE,
            grantee TEXT NOT NULL, retiring TEXT, operations TEXT NOT NULL, constraints TEXT NOT NULL,
            name TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, issuing_account TEXT NOT NULL,
            creator TEXT NOT NULL)""",
        "CREATE INDEX grants_key_grantee ON grants(key_id, grantee)",
        """CREATE TABLE access_keys (
            access_key_id TEXT PRIMARY KEY, principal_arn TEXT NOT NULL, sealed_secret BYTEA NOT NULL,
            master_key_id TEXT NOT NULL, created DOUBLE PRECISION NOT NULL)""",
    ],
    [
        # One hash chain for every replica (docs/SERVER.md, "Audit across
        # replicas"): ``record`` is the canonical JSON line (with seq, prev
        # and hash), ``audit_head`` the chain's tip, locked per batch.
        "CREATE TABLE audit_log (seq BIGINT PRIMARY KEY, record TEXT NOT NULL)",
        "CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, hash TEXT NOT NULL)",
        "INSERT INTO audit_head VALUES (1, 0, '" + "0" * 64 + "')",
    ],
    [
        # Principals live in the database (encfs/server/principals.py): their
        # account_actions beside their access keys, NULL in rows written before.
        "ALTER TABLE access_keys ADD COLUMN account_actions TEXT",
    ],
]

#: pg_advisory_xact_lock key for migrations ("encfs" in ASCII).
_MIGRATION_LOCK = 0x656E636673
#: pg_advisory_xact_lock key for principal syncs ("encfsP").
_PRINCIPALS_LOCK = 0x656E63667350


def redact_url(url: str) -> str:
    """``url`` without a password (for reprs and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


#: Transaction.prefetch's one statement: the alias (if ``ident`` is one), the
#: key, one version of its material (the current one when none is given) and
#: the grantee's grants on the key.  Always one row.
_PREFETCH = """
SELECT a.key_id AS a_key_id, a.created AS a_created, a.updated AS a_updated, k.*,
       v.version AS v_version, v.created AS v_created, v.rotation_type AS v_rotation_type,
       v.wrapped AS v_wrapped, v.master_key_id AS v_master_key_id,
       (SELECT json_agg(g) FROM grants g WHERE g.key_id = k.key_id AND g.grantee = %(grantee)s) AS g_grants
FROM (SELECT %(ident)s::text AS ident) i
LEFT JOIN aliases a ON a.name = i.ident
LEFT JOIN keys k ON k.key_id = COALESCE(a.key_id, i.ident)
LEFT JOIN key_versions v ON v.key_id = k.key_id AND v.version = COALESCE(%(version)s::bigint, k.current_version)
"""


class _Tx(Transaction):
    def __init__(self, conn: Any, write: bool) -> None:
        self.conn = conn
        self.write = write
        # What prefetch read, for this transaction only (a read transaction
        # of one request): answers the hot path's reads without more round
        # trips.  Keyed as the reads ask; a miss goes to the database.
        self._aliases: dict[str, AliasRecord | None] = {}
        self._keys: dict[str, KeyRecord | None] = {}
        self._versions: dict[tuple[str, int], KeyVersion | None] = {}
        self._grants: dict[tuple[str, str], list[GrantRecord]] = {}

    async def prefetch(self, ident: str, version: int | None, grantee: str) -> None:
        if self.write:  # writes lock what they read (for_update): read it then
            return
        row = await self._one(_PREFETCH, {"ident": ident, "version": version, "grantee": grantee})
        assert row is not None
        if ident.startswith("alias/"):
            self._aliases[ident] = None if row["a_key_id"] is None else AliasRecord(
                name=ident, key_id=row["a_key_id"], created=row["a_created"], updated=row["a_updated"])
        key_id = row["a_key_id"] or ident
        if row["key_id"] is None:
            self._keys[key_id] = None
            return
        self._keys[key_id] = key = _key(row)
        wanted = version if version is not None else key.current_version
        self._versions[(key_id, wanted)] = None if row["v_version"] is None else KeyVersion(
            key_id=key_id, version=row["v_version"], created=row["v_created"],
            rotation_type=row["v_rotation_type"], wrapped=bytes(row["v_wrapped"]),
            master_key_id=row["v_master_key_id"])
        self._grants[(key_id, grantee)] = [_grant(g) for g in row["g_grants"] or ()]

    async def _one(self, sql: str, args: Any) -> dict[str, Any] | None:
        cur = await self.conn.execute(sql, args)
        return await cur.fetchone()

    async def _all(self, sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        cur = await self.conn.execute(sql, args)
        return await cur.fetchall()

    async def _exec(self, sql: str, args: tuple[Any, ...], what: str = "") -> None:
        import psycopg

        try:
            await self.conn.execute(sql, args)
        except psycopg.errors.UniqueViolation as exc:
            raise AlreadyExists(f"{what} exists") from exc

    # keys
    async def get_key(self, key_id: str, *, for_update: bool = False) -> KeyRecord | None:
        if key_id in self._keys and not for_update:
            return self._keys[key_id]
        lock = " FOR UPDATE" if for_update and self.write else ""
        row = await self._one("SELECT * FROM keys WHERE key_id = %s" + lock, (key_id,))
        return _key(row) if row else None

    async def insert_key(self, rec: KeyRecord) -> None:
        await self._exec(
            "INSERT INTO keys (arn, created, policy, creator, description, state, usage, spec, current_version,"
            " deletion_date, rotation_enabled, rotation_period_days, next_rotation, tags, key_id)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", _key_values(rec), f"key {rec.key_id}")

    async def update_key(self, rec: KeyRecord) -> None:
        await self._exec(
            "UPDATE keys SET arn=%s, created=%s, policy=%s, creator=%s, description=%s, state=%s, usage=%s,"
            " spec=%s, current_version=%s, deletion_date=%s, rotation_enabled=%s, rotation_period_days=%s,"
            " next_rotation=%s, tags=%s WHERE key_id=%s", _key_values(rec))

    async def list_keys(self, after: str | None, limit: int) -> list[KeyRecord]:
        rows = await self._all("SELECT * FROM keys WHERE key_id > %s ORDER BY key_id LIMIT %s", (after or "", limit))
        return [_key(r) for r in rows]

    async def due_keys(self, now: float) -> list[str]:
        rows = await self._all(
            "SELECT key_id FROM keys WHERE (state = 'PendingDeletion' AND deletion_date <= %s)"
            " OR (rotation_enabled = 1 AND state = 'Enabled' AND next_rotation <= %s) ORDER BY key_id", (now, now))
        return [r["key_id"] for r in rows]

    async def destroy_key(self, key_id: str) -> None:
        for table in ("key_versions", "aliases", "grants", "keys"):
            await self.conn.execute(f"DELETE FROM {table} WHERE key_id = %s", (key_id,))

    # versions
    async def get_version(self, key_id: str, version: int) -> KeyVersion | None:
        if (key_id, version) in self._versions:
            return self._versions[(key_id, version)]
        row = await self._one("SELECT * FROM key_versions WHERE key_id = %s AND version = %s", (key_id, version))
        return _version(row) if row else None

    async def list_versions(self, key_id: str) -> list[KeyVersion]:
        rows = await self._all("SELECT * FROM key_versions WHERE key_id = %s ORDER BY version", (key_id,))
        return [_version(r) for r in rows]

    async def insert_version(self, ver: KeyVersion) -> None:
        await self._exec(
            "INSERT INTO key_versions (key_id, version, created, rotation_type, wrapped, master_key_id)"
            " VALUES (%s,%s,%s,%s,%s,%s)",
            (ver.key_id, ver.version, ver.created, ver.rotation_type, ver.wrapped, ver.master_key_id),
            f"version {ver.version} of key {ver.key_id}")

    async def update_version_wrapping(self, ver: KeyVersion) -> None:
        await self.conn.execute("UPDATE key_versions SET wrapped = %s, master_key_id = %s"
                                " WHERE key_id = %s AND version = %s",
                                (ver.wrapped, ver.master_key_id, ver.key_id, ver.version))

    # aliases
    async def get_alias(self, name: str) -> AliasRecord | None:
        if name in self._aliases:
            return self._aliases[name]
        row = await self._one("SELECT * FROM aliases WHERE name = %s", (name,))
        return _alias(row) if row else None

    async def insert_alias(self, rec: AliasRecord) -> None:
        await self._exec("INSERT INTO aliases (name, key_id, created, updated) VALUES (%s,%s,%s,%s)",
                         (rec.name, rec.key_id, rec.created, rec.updated), f"alias {rec.name}")

    async def update_alias(self, rec: AliasRecord) -> None:
        await self.conn.execute("UPDATE aliases SET key_id = %s, created = %s, updated = %s WHERE name = %s",
                                (rec.key_id, rec.created, rec.updated, rec.name))

    async def delete_alias(self, name: str) -> None:
        await self.conn.execute("DELETE FROM aliases WHERE name = %s", (name,))

    async def list_aliases(self, key_id: str | None, after: str | None, limit: int) -> list[AliasRecord]:
        if key_id is None:
            rows = await self._all("SELECT * FROM aliases WHERE name > %s ORDER BY name LIMIT %s",
                                   (after or "", limit))
        else:
            rows = await self._all("SELECT * FROM aliases WHERE key_id = %s AND name > %s ORDER BY name LIMIT %s",
                                   (key_id, after or "", limit))
        return [_alias(r) for r in rows]

    # grants
    async def insert_grant(self, rec: GrantRecord) -> None:
        await self._exec(
            "INSERT INTO grants (grant_id, key_id, grantee, retiring, operations, constraints, name, created,"
            " issuing_account, creator) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (rec.grant_id, rec.key_id, rec.grantee, rec.retiring, json.dumps(rec.operations),
             json.dumps(rec.constraints, sort_keys=True), rec.name, rec.created, rec.issuing_account, rec.creator),
            f"grant {rec.grant_id}")

    async def get_grant(self, grant_id: str) -> GrantRecord | None:
        row = await self._one("SELECT * FROM grants WHERE grant_id = %s", (grant_id,))
        return _grant(row) if row else None

    async def list_grants(self, key_id: str, after: str | None, limit: int) -> list[GrantRecord]:
        rows = await self._all("SELECT * FROM grants WHERE key_id = %s AND grant_id > %s ORDER BY grant_id LIMIT %s",
                               (key_id, after or "", limit))
        return [_grant(r) for r in rows]

    async def grants_for(self, key_id: str, grantee: str) -> list[GrantRecord]:
        if (key_id, grantee) in self._grants:
            return self._grants[(key_id, grantee)]
        rows = await self._all("SELECT * FROM grants WHERE key_id = %s AND grantee = %s", (key_id, grantee))
        return [_grant(r) for r in rows]

    async def delete_grant(self, grant_id: str) -> None:
        await self.conn.execute("DELETE FROM grants WHERE grant_id = %s", (grant_id,))

    # principals
    async def get_access_key(self, access_key_id: str) -> AccessKey | None:
        row = await self._one("SELECT * FROM access_keys WHERE access_key_id = %s", (access_key_id,))
        return _access_key(row) if row else None

    async def put_access_key(self, rec: AccessKey) -> None:
        await self.conn.execute(
            "INSERT INTO access_keys (access_key_id, principal_arn, sealed_secret, master_key_id, created,"
            " account_actions) VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (access_key_id) DO UPDATE SET"
            " principal_arn = EXCLUDED.principal_arn, sealed_secret = EXCLUDED.sealed_secret,"
            " master_key_id = EXCLUDED.master_key_id, created = EXCLUDED.created,"
            " account_actions = EXCLUDED.account_actions",
            (rec.access_key_id, rec.principal_arn, rec.sealed_secret, rec.master_key_id, rec.created,
             _actions_text(rec.account_actions)))

    async def list_access_keys(self) -> list[AccessKey]:
        return [_access_key(r) for r in await self._all("SELECT * FROM access_keys ORDER BY access_key_id", ())]

    async def delete_access_key(self, access_key_id: str) -> None:
        await self.conn.execute("DELETE FROM access_keys WHERE access_key_id = %s", (access_key_id,))

    async def lock_principals(self) -> None:
        await self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PRINCIPALS_LOCK,))

    # meta
    async def get_meta(self, name: str) -> str | None:
        row = await self._one("SELECT value FROM meta WHERE name = %s", (name,))
        return row["value"] if row else None

    async def set_meta(self, name: str, value: str) -> None:
        await self.conn.execute("INSERT INTO meta (name, value) VALUES (%s, %s)"
                                " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", (name, value))


class PostgresStorage(Storage):
    """PostgreSQL at ``url`` (``postgresql://user@host:port/db``; the password
    from ``PGPASSWORD``/``PGPASSFILE``), through a pool of ``min_size`` to
    ``max_size`` connections."""

    #: Replicas, each with its own config, share the database.
    shared = True

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 16, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self._pool: Any = None

    def __repr__(self) -> str:
        return f"PostgresStorage({redact_url(self.url)!r})"

    async def open(self) -> None:
        try:
            import psycopg  # noqa: F401
            from psycopg_pool import AsyncConnectionPool
        except ModuleNotFoundError:
            from ..errors import ConfigurationError

            raise ConfigurationError("PostgreSQL storage needs psycopg and psycopg_pool: "
                                     "pip install 'encfs[server]'") from None
        from psycopg.rows import dict_row

        async def configure(conn: Any) -> None:
            await conn.set_autocommit(True)

        self._pool = AsyncConnectionPool(
            self.url, min_size=self.min_size, max_size=self.max_size, open=False, configure=configure,
            kwargs={"row_factory": dict_row, "connect_timeout": int(self.connect_timeout)},
            timeout=self.connect_timeout, name="encfs-server")
        try:
            await self._pool.open(wait=True, timeout=self.connect_timeout)
            await self._migrate()
        except Exception as exc:
            await self._pool.close()
            self._pool = None
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot open {redact_url(self.url)}: {type(exc).__name__}: "
                               f"{_first_line(exc)}") from None

    async def _migrate(self) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("BEGIN")
            try:
                # Replicas starting together: one migrates, the others wait
                # and then find the schema current.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                await conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
                cur = await conn.execute("SELECT value FROM meta WHERE name = 'schema_version'")
                row = await cur.fetchone()
                current = int(row["value"]) if row else 0
                if current > len(MIGRATIONS):
                    raise StorageError(f"{redact_url(self.url)} has schema version {current}; this encfs knows up "
                                       f"to {len(MIGRATIONS)} (upgrade encfs)")
                for version in range(current, len(MIGRATIONS)):
                    for statement in MIGRATIONS[version]:
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (name)"
                                       " DO UPDATE SET value = EXCLUDED.value", (str(version + 1),))
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled autocommit connection (the audit trail's writer uses it)."""
        import psycopg

        if self._pool is None:
            raise StorageError("storage is closed")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(f"database unavailable: {_first_line(exc)}") from None
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg_pool"):  # PoolTimeout, PoolClosed
                raise StorageUnavailable(f"database unavailable: {type(exc).__name__}") from None
            raise

    @asynccontextmanager
    async def transaction(self, *, write: bool = False) -> AsyncIterator[Transaction]:
        import psycopg

        if not write:
            # Reads run in autocommit: each statement sees every change
            # committed before it (BEGIN/COMMIT would double a request's
            # round trips; see the module docstring for why that is safe).
            async with self.connection() as conn:
                yield _Tx(conn, False)
            return
        # A pooled connection may have died with a PostgreSQL restart: one
        # broken at BEGIN has run nothing, so take another (the pool drops
        # the broken one).  A bounded number of times: then give up.
        for attempt in range(self.max_size + 1):
            async with self.connection() as conn:
                try:
                    await conn.execute("BEGIN")
                except psycopg.OperationalError as exc:
                    if attempt == self.max_size or not conn.closed:
                        raise StorageUnavailable(f"database unavailable: {_first_line(exc)}") from None
                    continue
                try:
                    yield _Tx(conn, write)
                except BaseException:
                    if not conn.closed:
                        try:
                            await conn.execute("ROLLBACK")
                        except psycopg.Error:
                            pass
                    raise
                try:
                    await conn.execute("COMMIT")
                except psycopg.OperationalError as exc:
                    raise StorageUnavailable(f"commit failed, outcome unknown: {_first_line(exc)}") from None
                except psycopg.Error as exc:
                    raise StorageError(f"commit failed: {type(exc).__name__}") from None
                return


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
