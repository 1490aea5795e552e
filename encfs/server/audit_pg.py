"""Audit across replicas: one hash-chained trail in the shared PostgreSQL.

Every replica's :class:`~encfs.server.audit.GroupCommitter` hands its batch
to :class:`PostgresAuditSink`, which appends it in one transaction: lock the
chain's head row (``audit_head``, ``SELECT ... FOR UPDATE``), chain the
records after it exactly as encfs's audit log does (encfs/audit.py: ``seq``,
``prev``, ``hash`` = SHA-256 of the canonical JSON), insert them, move the
head, commit.  So records of all replicas form one chain, in commit order,
each naming the ``replica`` that served it; a request is answered only once
its record is committed (fail closed).  Batches are whole transactions, so
the head lock is taken once per batch, not per request: under load batches
grow and the trail does not cap throughput (benchmarks/bench_server.py).

:class:`DatabaseAuditLog` reads the trail with the file log's own reader
and verifier (``encfs audit --log postgresql://... verify``), and also
checks the head row, so records removed from the end are reported too.
As with the file log, a chain proves order and integrity against edits;
copy the printed head hash elsewhere to detect a rewrite of the whole trail.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

from ..audit import AuditLog, VerifyResult, canonical, record_hash
from .audit import AuditSink
from .postgres import PostgresStorage, redact_url
from .storage import StorageUnavailable

_servers = itertools.count(1)


def replica_name() -> str:
    """This server, as records name it: ``host:pid/n`` (n: the server's
    number in its process, 1 but for tests that run several)."""
    return f"{socket.gethostname()}:{os.getpid()}/{next(_servers)}"


class PostgresAuditSink(AuditSink):
    """Appends batches to the shared chain; retries a batch for up to
    ``retry_seconds`` while the database is unavailable (a restart)."""

    def __init__(self, storage: PostgresStorage, *, replica: str | None = None, retry_seconds: float = 10.0) -> None:
        self.storage = storage
        self.replica = replica or replica_name()
        self.retry_seconds = retry_seconds
        self.batches = 0

    def __repr__(self) -> str:
        return f"PostgresAuditSink({redact_url(self.storage.url)!r}, replica={self.replica!r})"

    async def write(self, records: list[dict[str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_seconds
        delay = 0.05
        while True:
            try:
                await self._append(records)
                self.batches += 1
                return
            except StorageUnavailable:
                if loop.time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _append(self, records: list[dict[str, Any]]) -> None:
        import psycopg

        async with self.storage.connection() as conn:
            try:
                # Two round trips and two statements sent per batch, however
                # many records: the simple query protocol (a client-side
                # cursor, values escaped by libpq) carries several statements
                # in one message.  First BEGIN with the head's lock...
                cur = psycopg.AsyncClientCursor(conn)
                await cur.execute("BEGIN; SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")
                cur.nextset()
                head = await cur.fetchone()
                seq, prev = int(head["seq"]), str(head["hash"])
                first, lines = seq + 1, []
                for record in records:
                    seq += 1
                    record.pop("hash", None)  # a retried batch is chained afresh
                    record["replica"] = self.replica
                    record["seq"] = seq
                    record["prev"] = prev
                    record["hash"] = prev = record_hash(record)
                    lines.append(canonical(record).decode())
                # ...then the records, the head's move and COMMIT together.
                # The records travel as one JSON array of strings (one string
                # literal, escaped by libpq: a text[] parameter is escaped
                # element by element in Python, hundreds of µs a batch).
                await cur.execute("WITH added AS (INSERT INTO audit_log (seq, record)"
                                  " SELECT %s + n - 1, r FROM json_array_elements_text(%s::json)"
                                  " WITH ORDINALITY AS t(r, n))"
                                  " UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1; COMMIT",
                                  (first, json.dumps(lines, ensure_ascii=False), seq, prev))
            except psycopg.OperationalError as exc:
                raise StorageUnavailable(f"audit append failed: {type(exc).__name__}") from None
            except BaseException:
                if not conn.closed:
                    try:
                        await conn.execute("ROLLBACK")
                    except psycopg.Error:
                        pass
                raise


class DatabaseAuditLog(AuditLog):
    """The shared trail at ``url``, read like an audit log file (read only)."""

    def __init__(self, url: str) -> None:
        super().__init__(os.devnull)
        self.url = url
        self.path = redact_url(url)  # type: ignore[assignment] - names the trail in messages

    def __repr__(self) -> str:
        return f"DatabaseAuditLog({self.path!r})"

    def _connect(self) -> Any:
        import psycopg

        from ..errors import ConfigurationError

        try:
            return psycopg.connect(self.url, connect_timeout=10)
        except psycopg.Error as exc:
            raise ConfigurationError(f"cannot read the audit trail in {self.path}: "
                                     f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from None

    def lines(self) -> Iterator[tuple[int, bytes]]:
        with self._connect() as conn, conn.transaction(), conn.cursor(name="encfs_audit") as cur:
            cur.itersize = 2000
            cur.execute("SELECT seq, record FROM audit_log ORDER BY seq")
            for seq, record in cur:
                yield int(seq), record.encode()

    def head(self) -> tuple[int, str]:
        with self._connect() as conn:
            row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return int(row[0]), str(row[1])

    def append_many(self, records: list[dict[str, Any]], *, sync: bool = True) -> list[dict[str, Any]]:
        raise NotImplementedError("the shared trail is written by the key server only")

    def verify(self) -> VerifyResult:
        result = super().verify()
        seq, head = self.head()
        if (seq, head) != (result.count, result.head):
            result.problems.append(f"the chain ends at record {result.count} but its head row names record {seq}"
                                   f" ({head[:16]}...): records were removed from the end or the head was moved")
        result.ok = not result.problems
        return result
