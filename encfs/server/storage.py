"""The storage seam: everything the key server persists, behind one
transactional interface.

A backend (SQLite here, PostgreSQL for replicas) implements :class:`Storage`.
Every request runs its reads and writes inside one transaction
(``async with storage.transaction(write=...) as tx``), so a request never sees
a half-applied change and two concurrent administrative calls never lose an
update (a write transaction locks the rows it reads with ``for_update``).

Nothing here caches: every request reads the current key state, policy and
grants, so a revoked grant, a disabled key or a changed policy applies to the
next request (on every replica sharing the database).  Key material and
secret access keys are stored only as master-key-wrapped blobs
(:mod:`encfs.server.masterkey`); a row never holds a secret in clear.

The interface is async because a networked backend (psycopg's async pool)
needs it; the SQLite backend runs its statements synchronously inside the
coroutines (each is tens of microseconds) and so never yields mid-transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

#: Key states (KMS's names).
ENABLED = "Enabled"
DISABLED = "Disabled"
PENDING_DELETION = "PendingDeletion"


class StorageError(Exception):
    """The storage backend failed (unavailable, corrupt, or a newer schema)."""


class StorageUnavailable(StorageError):
    """The backend cannot be reached now (a database restart or failover);
    nothing was applied, or a commit's outcome is unknown.  Retryable."""


class AlreadyExists(StorageError):
    """An insert collided with an existing row (alias name, grant id, ...)."""


@dataclass
class KeyRecord:
    """One root key's metadata.  ``policy`` is the key policy JSON text."""

    key_id: str
    arn: str
    created: float
    policy: str
    creator: str
    description: str = ""
    state: str = ENABLED
    usage: str = "ENCRYPT_DECRYPT"
    spec: str = "SYMMETRIC_DEFAULT"
    current_version: int = 1
    deletion_date: float | None = None
    rotation_enabled: bool = False
    rotation_period_days: int | None = None
    next_rotation: float | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class KeyVersion:
    """One version of a root key's material, wrapped by the master key."""

    key_id: str
    version: int
    created: float
    rotation_type: str  # "INITIAL", "AUTOMATIC" or "ON_DEMAND"
    wrapped: bytes = field(repr=False)
    master_key_id: str = ""


@dataclass
class GrantRecord:
    grant_id: str
    key_id: str
    grantee: str
    operations: list[str]
    created: float
    issuing_account: str
    creator: str
    name: str = ""
    retiring: str | None = None
    #: {"EncryptionContextEquals": {...}} or {"EncryptionContextSubset": {...}} or {}
    constraints: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class AccessKey:
    """A principal's access key; the secret is sealed by the master key."""

    access_key_id: str
    principal_arn: str
    sealed_secret: bytes = field(repr=False)
    master_key_id: str = ""
    created: float = 0.0
    #: The principal's ``account_actions`` (docs/SERVER.md, "Configuration reference"), as
    #: the last principal sync stored them; None in a row written before
    #: they were stored (the config's apply then).
    account_actions: tuple[str, ...] | None = None


@dataclass
class AliasRecord:
    name: str
    key_id: str
    created: float
    updated: float


class Transaction(ABC):
    """The reads and writes of one request.  Methods raise :class:`StorageError`."""

    async def prefetch(self, ident: str, version: int | None, grantee: str) -> None:
        """A hint on the hot path (Encrypt, Decrypt, GenerateDataKey...): this
        read transaction will read the key ``ident`` (a key id or an alias
        name), its material ``version`` (None: its current one) and
        ``grantee``'s grants on it.  A networked backend may read all of them
        in one round trip and answer those reads, in this transaction only,
        from what it read; the default does nothing.  Never across
        transactions: nothing is cached between requests."""

    # -- keys ---------------------------------------------------------------------
    @abstractmethod
    async def get_key(self, key_id: str, *, for_update: bool = False) -> KeyRecord | None: ...

    @abstractmethod
    async def insert_key(self, rec: KeyRecord) -> None: ...

    @abstractmethod
    async def update_key(self, rec: KeyRecord) -> None: ...

    @abstractmethod
    async def list_keys(self, after: str | None, limit: int) -> list[KeyRecord]:
        """Keys ordered by id, strictly after ``after``."""

    @abstractmethod
    async def due_keys(self, now: float) -> list[str]:
        """Ids of keys whose deletion date or next automatic rotation has come."""

    @abstractmethod
    async def destroy_key(self, key_id: str) -> None:
        """Delete the key, every version of its material, its aliases and grants."""

    # -- key material -------------------------------------------------------------
    @abstractmethod
    async def get_version(self, key_id: str, version: int) -> KeyVersion | None: ...

    @abstractmethod
    async def list_versions(self, key_id: str) -> list[KeyVersion]:
        """Ordered by version."""

    @abstractmethod
    async def insert_version(self, ver: KeyVersion) -> None: ...

    @abstractmethod
    async def update_version_wrapping(self, ver: KeyVersion) -> None:
        """Store a re-wrapped blob (master-key rotation)."""

    # -- aliases ------------------------------------------------------------------
    @abstractmethod
    async def get_alias(self, name: str) -> AliasRecord | None: ...

    @abstractmethod
    async def insert_alias(self, rec: AliasRecord) -> None:
        """Raises :class:`AlreadyExists`."""

    @abstractmethod
    async def update_alias(self, rec: AliasRecord) -> None: ...

    @abstractmethod
    async def delete_alias(self, name: str) -> None: ...

    @abstractmethod
    async def list_aliases(self, key_id: str | None, after: str | None, limit: int) -> list[AliasRecord]: ...

    # -- grants -------------------------------------------------------------------
    @abstractmethod
    async def insert_grant(self, rec: GrantRecord) -> None: ...

    @abstractmethod
    async def get_grant(self, grant_id: str) -> GrantRecord | None: ...

    @abstractmethod
    async def list_grants(self, key_id: str, after: str | None, limit: int) -> list[GrantRecord]:
        """Grants of a key ordered by grant id."""

    @abstractmethod
    async def grants_for(self, key_id: str, grantee: str) -> list[GrantRecord]:
        """The grants on ``key_id`` whose grantee is ``grantee`` (the hot path)."""

    @abstractmethod
    async def delete_grant(self, grant_id: str) -> None: ...

    # -- principals -----------------------------------------------------------------
    @abstractmethod
    async def get_access_key(self, access_key_id: str) -> AccessKey | None: ...

    @abstractmethod
    async def put_access_key(self, rec: AccessKey) -> None:
        """Insert or replace."""

    @abstractmethod
    async def list_access_keys(self) -> list[AccessKey]: ...

    @abstractmethod
    async def delete_access_key(self, access_key_id: str) -> None: ...

    async def lock_principals(self) -> None:
        """In a write transaction: serialise principal syncs (replicas
        starting together).  A backend whose write transactions already
        exclude each other (SQLite's BEGIN IMMEDIATE) needs nothing."""

    # -- small settings ----------------------------------------------------------------
    @abstractmethod
    async def get_meta(self, name: str) -> str | None: ...

    @abstractmethod
    async def set_meta(self, name: str, value: str) -> None: ...


class Storage(ABC):
    """A storage backend.  ``open`` applies pending schema migrations."""

    #: The schema version this code writes (each backend migrates up to it).
    SCHEMA_VERSION = 1
    #: Whether several server processes with their own configs may share this
    #: storage (PostgreSQL replicas): their principal lists must then agree
    #: (encfs.server.principals).
    shared = False

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def transaction(self, *, write: bool = False) -> AbstractAsyncContextManager[Transaction]:
        """A transaction: committed when the block exits normally (durably,
        before the caller acknowledges anything), rolled back on an exception."""

    async def schema_version(self) -> int:
        async with self.transaction() as tx:
            return int(await tx.get_meta("schema_version") or 0)

