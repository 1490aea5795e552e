"""Server audit: one hash-chained record per request, committed in groups.

Records go to an :class:`AuditSink`.  :class:`FileAuditSink` appends to the
same hash-chained JSON Lines log as the rest of encfs (encfs/audit.py), so
``encfs audit --log FILE`` and ``encfs audit --log FILE verify`` read and
verify it.  :class:`GroupCommitter` batches: a request's record is queued,
one writer appends every queued record with a single write and a single
fsync, and each request is answered only once its record is durable (fail
closed: a request that cannot be audited gets KMSInternalException).  While
one batch is written, the next fills, so the cost of a write (and, with
``sync="request"``, of an fsync) is shared by every concurrent request
instead of capping throughput.  :class:`FileAuditSink` says when records
reach the disk.

A replicated deployment swaps the sink (records into the shared database, or
one chain per replica) without touching the request path.
"""

from __future__ import annotations

import asyncio
import functools
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from ..audit import AuditLog


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def printable(value: Any) -> Any:
    """``value`` with every string made UTF-8-encodable (unpaired surrogates
    backslash-escaped), so a record always serialises."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


class AuditSink(ABC):
    @abstractmethod
    async def write(self, records: list[dict[str, Any]]) -> None:
        """Durably append ``records`` in order (raise on failure)."""

    async def close(self) -> None:
        """Release files or connections."""


class FileAuditSink(AuditSink):
    """The hash-chained JSON Lines log.

    ``sync="request"``: every batch is fsynced before its requests are
    answered (a power cut loses no answered request's record).
    ``sync="interval"`` (default): every batch is written (one ``write``)
    before its requests are answered, so a killed server loses nothing, and
    a second thread fsyncs at most every ``interval`` seconds, so a power cut
    loses at most that window, and a slow disk never stalls the requests.
    """

    def __init__(self, path: Any, *, sync: str = "interval", interval: float = 0.05) -> None:
        if sync not in ("request", "interval"):
            raise ValueError("audit sync must be 'request' or 'interval'")
        self.log = AuditLog(path)
        self.sync = sync
        self.interval = interval
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="encfs-audit")
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="encfs-audit-sync")
        self._sync_task: asyncio.Future[None] | None = None
        self._dirty = False
        self.syncs = 0

    def __repr__(self) -> str:
        return f"FileAuditSink({str(self.log.path)!r}, sync={self.sync!r})"

    async def write(self, records: list[dict[str, Any]]) -> None:
        if self.sync == "request":
            await asyncio.get_running_loop().run_in_executor(
                self._pool, functools.partial(self.log.append_many, records, sync=True))
            return
        # One write() into the page cache: tens of microseconds, cheaper on
        # the event loop than a hand-off to a thread and back.
        self.log.append_many(records, sync=False)
        self._dirty = True
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.ensure_future(self._sync_soon())

    async def _sync_soon(self) -> None:
        loop = asyncio.get_running_loop()
        while self._dirty:
            await asyncio.sleep(self.interval)
            self._dirty = False
            await loop.run_in_executor(self._syncer, self.log.sync)
            self.syncs += 1

    async def close(self) -> None:
        if self._sync_task is not None:
            await self._sync_task
        self._pool.shutdown(wait=True)
        self.log.sync()
        self._syncer.shutdown(wait=True)


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
        # aiohttp does not cancel a handler whose client went away
        # (handler_cancellation is off), so every queued record is written.
        await fut

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            try:
                try:
                    await self.sink.write([r for r, _ in batch])
                except (ValueError, TypeError):
                    # A record that cannot be serialised (a lone surrogate from a
                    # header): raised before anything was written.  One bad
                    # record must not cost its batch neighbours their records
                    # (their changes may have landed): write them all escaped.
                    await self.sink.write([printable(r) for r, _ in batch])
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
