"""fsspec's async API over encfs, for async targets (s3fs, gcsfs, adlfs, http).

fsspec's async machinery (``fsspec.generic.rsync``, zarr v3's
``FsspecStore``, ``AsyncFileSystem`` callers) checks ``fs.async_impl`` and
then awaits ``fs._cat_file(...)``, ``fs._put_file(...)`` and friends on its
own event loop, the same loop s3fs runs on.  Calling encfs's sync methods
from there raised "Calling sync() from within a running loop".

Each coroutine here runs the sync method of the same name in a worker
thread: the event loop stays free (it serves the target's requests that the
worker makes, and other coroutines), encryption runs off the loop, and
concurrent awaits proceed concurrently (a batch of ``_cat_file`` calls
overlaps on the wire like s3fs's own).  ``EncryptedFileSystem.async_impl``
is True exactly when the target is async (encfs/targets).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

#: Sync methods with a coroutine twin ``_<name>``.
MIRRORED = (
    "cat_file", "cat_ranges", "cat", "pipe_file", "pipe", "info", "ls", "find", "exists", "isdir", "isfile",
    "size", "sizes", "du", "makedirs", "mkdir", "rmdir", "rm", "rm_file", "touch", "modified", "created",
    "get_file", "put_file", "get", "put", "cp_file", "copy", "mv", "expand_path", "glob",
)


def _twin(name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self, name), *args, **kwargs)

    method.__name__ = method.__qualname__ = f"_{name}"
    method.__doc__ = f"Async twin of :meth:`{name}` (runs it in a worker thread)."
    return method


class AsyncMethods:
    """Mixin: the coroutine twins (see the module docstring)."""


for _name in MIRRORED:
    setattr(AsyncMethods, f"_{_name}", _twin(_name))

__all__ = ["MIRRORED", "AsyncMethods"]
