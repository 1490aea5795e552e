"""Generic target I/O: any fsspec filesystem, sync or async.

A :class:`TargetIO` answers the few questions the reader and writer ask of
storage (file.py): the first bytes of an object and, when the same request
can tell, its size (:meth:`TargetIO.probe`); a byte range (:meth:`fetch`);
a byte range started in the background (:meth:`submit`, async targets only);
an atomic sink for a new object (:meth:`open_sink`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from fsspec import AbstractFileSystem

from .sinks import Sink, TempSiblingSink

MiB = 1024 * 1024


class TargetIO:
    """Sync I/O through the target's public fsspec API."""

    #: A request costs a network round trip (readers fetch larger windows).
    remote = True
    #: Several requests can be in flight at once (see :meth:`submit`).
    concurrent = False
    #: Default sequential read window, bytes (EncryptedFileSystem.read_block_size).
    read_block = 8 * MiB
    #: :meth:`fetch_into` reads straight into the caller's buffer (else it
    #: fetches and copies, and readers prefer :meth:`fetch`).
    reads_into = False

    def __init__(self, fs: AbstractFileSystem) -> None:
        self.fs = fs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.fs).__name__})"

    def fetch(self, path: str, start: int | None = None, end: int | None = None) -> bytes | memoryview:
        """Bytes ``[start, end)`` of ``path`` (the whole object when both are None).

        May return a read-only memoryview (memory targets: no copy)."""
        if start is None and end is None:
            return self.fs.cat_file(path)
        return self.fs.cat_file(path, start=start, end=end)

    def fetch_into(self, path: str, start: int, out: memoryview) -> int:
        """Read bytes from ``start`` into ``out``; how many arrived (fewer at
        the end of the object)."""
        data = self.fetch(path, start, start + len(out))
        out[: len(data)] = data
        return len(data)

    def size(self, path: str) -> int:
        return int(self.fs.size(path))

    def probe(self, path: str, nbytes: int) -> tuple[bytes | memoryview | None, int | None]:
        """The first ``nbytes`` of ``path`` and its size, in one request when
        the target allows.

        The size is None when the answer does not tell it (the caller then
        asks :meth:`size`); the bytes are None when the target cannot serve
        a range past the end of a short object (the caller then asks for the
        size first, which raises the target's own error).
        """
        try:
            data = self.fetch(path, 0, nbytes)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except Exception:  # noqa: BLE001 - e.g. HTTP 416 for an empty object; the size path re-raises
            return None, None
        # A shorter answer than asked for is the whole object.
        return data, (len(data) if len(data) < nbytes else None)

    def submit(self, path: str, start: int, end: int) -> concurrent.futures.Future[bytes]:
        """Start fetching ``[start, end)``; only when :attr:`concurrent`."""
        raise NotImplementedError(f"{self!r} cannot overlap requests")

    def open_sink(self, path: str, exclusive: bool) -> Sink:
        return TempSiblingSink(self.fs, path, exclusive)


class AsyncTargetIO(TargetIO):
    """An async fsspec filesystem used through its sync API (s3fs, gcsfs,
    adlfs, http): background fetches run as coroutines on the target's own
    event loop, so several ranged reads overlap on the wire while the
    calling thread decrypts."""

    concurrent = True

    def submit(self, path: str, start: int, end: int) -> concurrent.futures.Future[bytes]:
        return asyncio.run_coroutine_threadsafe(self._fetch_coro(path, start, end), self.fs.loop)

    async def _fetch_coro(self, path: str, start: int, end: int) -> Any:
        return await self.fs._cat_file(path, start=start, end=end)
