"""Server audit: one hash-chained record per request, committed in groups.

Records go to an :class:`AuditSink`.  :class:`FileAuditSink` appends to the
same hash-chained JSON Lines log as the rest of encfs (encfs/audit.py), so
``encfs audit --log FILE`` and ``encfs audit --log FILE verify`` read and
verify it.  :class:`GroupCommitter` batches: a request's record is queued,
one writer appends every queued record with a single write and a single
fsync, and each request is answered only once its record is durable (fail
closed: a request that cannot be audited gets KMSInternalException).  While
one fsync runs, the next batch fills, so the fsync cost is shared by every
concurrent request instead of capping throughput.

A replicated deployment swaps the sink (records into the shared database, or
one chain per replica) without touching the request path.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from ..audit import AuditLog


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class AuditSink(ABC):
    @abstractmethod
    async def write(self, records: list[dict[str, Any]]) -> None:
        """Durably append ``records`` in order (raise on failure)."""

    async def close(self) -> None:
        """Release files or connections."""


class FileAuditSink(AuditSink):
    def __init__(self, path: Any) -> None:
        self.log = AuditLog(path)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="encfs-audit")

    def __repr__(self) -> str:
        return f"FileAuditSink({str(self.log.path)!r})"

    async def write(self, records: list[dict[str, Any]]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.log.append_many, records)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)


class GroupCommitter:
    """Queues records and writes them in batches, one writer at a time."""

    def __init__(self, sink: AuditSink, *, max_batch: int = 2048) -> None:
        self.sink = sink
        self.max_batch = max_batch
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0
        self.records = 0

    @property
    def backlog(self) -> int:
        return len(self._queue)

    async def submit(self, record: dict[str, Any]) -> None:
        """Return once ``record`` is durable; raise if it could not be written."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((record, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.shield(fut)  # a dropped client does not un-write its record

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            try:
                await self.sink.write([r for r, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.records += len(batch)
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def flush(self) -> None:
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
