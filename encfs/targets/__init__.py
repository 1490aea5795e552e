"""Target I/O: the one layer that knows how each kind of target filesystem
is spoken to (DESIGN.md section 4: fs.py and file.py sit above it and never
special-case a target themselves).

:func:`target_io` picks a :class:`TargetIO` for a target filesystem:

- local disk (:mod:`.local`) and memory (:mod:`.memory`): requests cost no
  round trip, so readers use small windows and one request at a time;
- S3 through s3fs (:mod:`.s3`, imported only when an s3fs target shows up):
  the object size comes with the first ranged GET, sequential reads keep
  several ranged GETs in flight, multipart uploads overlap encryption;
- any other async fsspec filesystem (gcsfs, adlfs, http...): overlapping
  ranged reads on the target's own event loop;
- anything else: plain sync calls.

Nothing here imports fs.py or file.py.
"""

from __future__ import annotations

import importlib

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from .base import AsyncTargetIO, TargetIO
from .local import LocalIO
from .memory import MemoryIO
from .sinks import TEMP_MARK, BufferSink, LocalSink, Sink, TempSiblingSink

#: Target classes with a specific TargetIO, most specific first.
_BY_CLASS: list[tuple[type, type[TargetIO]]] = [(LocalFileSystem, LocalIO), (MemoryFileSystem, MemoryIO)]
#: TargetIO classes in modules that import an optional SDK: imported the first
#: time a filesystem from that package shows up (``import encfs`` stays free
#: of s3fs and botocore).
_LAZY = {"s3fs": ("encfs.targets.s3", "S3IO", "S3FileSystem")}


def _io_class(fs: AbstractFileSystem) -> type[TargetIO]:
    lazy = _LAZY.get(type(fs).__module__.partition(".")[0])
    if lazy is not None:
        module = importlib.import_module(lazy[0])
        fs_class = getattr(module, lazy[2])
        if isinstance(fs, fs_class):
            return getattr(module, lazy[1])
    for cls, io_cls in _BY_CLASS:
        # A subclass that changes how bytes are read (counting, caching,
        # transforming) is read through its own API.
        if isinstance(fs, cls) and type(fs).cat_file is cls.cat_file:
            return io_cls
    if getattr(fs, "async_impl", False) and not getattr(fs, "asynchronous", False):
        return AsyncTargetIO
    return TargetIO


def target_io(fs: AbstractFileSystem) -> TargetIO:
    """The I/O strategy for target filesystem ``fs``."""
    return _io_class(fs)(fs)


def open_sink(fs: AbstractFileSystem, path: str, exclusive: bool = False) -> Sink:
    """An atomic sink for ``path`` on ``fs`` (see :mod:`.sinks`)."""
    return target_io(fs).open_sink(path, exclusive)


__all__ = ["TEMP_MARK", "AsyncTargetIO", "BufferSink", "LocalIO", "LocalSink", "MemoryIO", "Sink",
           "TargetIO", "TempSiblingSink", "open_sink", "target_io"]
