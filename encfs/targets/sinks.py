"""Atomic writers into the target filesystem.

A sink receives ciphertext and makes it visible at the destination only on
:meth:`Sink.commit`; :meth:`Sink.discard` leaves nothing behind.  This is how
a failed or interrupted write never leaves a partial object (DESIGN.md
section 2): each target gets the cheapest atomic strategy it offers.

- local disk: a hidden temp file in the destination directory, fsync, then
  ``os.replace`` (or ``os.link`` for create-only, which fails atomically if
  the destination appeared meanwhile);
- memory: bytes collected and stored in one step;
- anything else: a hidden temp sibling, then ``mv`` onto the destination
  (targets with native atomic uploads, such as S3 multipart, have their own
  sink: encfs/targets/s3.py).

Which sink a target gets is decided by its :class:`encfs.targets.TargetIO`.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import tempfile
import threading

from fsspec import AbstractFileSystem
from fsspec.implementations.memory import MemoryFileSystem

TEMP_MARK = ".encfs-tmp-"


class Sink:
    """Ciphertext destination with all-or-nothing visibility."""

    def __init__(self, fs: AbstractFileSystem, path: str, exclusive: bool) -> None:
        self.fs, self.path, self.exclusive = fs, path, exclusive
        self.done = False

    def write(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def discard(self) -> None:
        raise NotImplementedError

    def _check_exclusive(self) -> None:
        if self.exclusive and self.fs.exists(self.path):
            raise FileExistsError(self.path)


class LocalSink(Sink):
    def __init__(self, fs: AbstractFileSystem, path: str, exclusive: bool) -> None:
        super().__init__(fs, path, exclusive)
        parent = os.path.dirname(path) or "."
        if getattr(fs, "auto_mkdir", False):
            os.makedirs(parent, exist_ok=True)
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"directory does not exist: {parent}")
        fd, self.temp = tempfile.mkstemp(prefix="." + os.path.basename(path) + TEMP_MARK, dir=parent)
        self.f = os.fdopen(fd, "wb")

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(self.temp, 0o666 & ~mask)
        try:
            if self.exclusive:
                os.link(self.temp, self.path)  # atomic create-only
                os.unlink(self.temp)
            else:
                os.replace(self.temp, self.path)
        except BaseException:
            self.discard()
            raise
        self.done = True

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)
        self.done = True


#: Serializes commits of BufferSinks: a memory target lives in this
#: process, so the check and the store of a create-only (``xb``) write are
#: atomic under it (two racing ``xb`` writers both stored before).
_BUFFER_COMMIT = threading.Lock()


def _stores_directly(fs: AbstractFileSystem) -> bool:
    """May a BufferSink store through ``fs._open(path, "wb", data=...)``?

    That is what fsspec's ``MemoryFileSystem.pipe_file`` does once its
    generic ``open()`` wrapper has checked the mode and the transaction, so
    for the stock in-memory filesystem (or a subclass that changes neither
    how it opens nor how it stores) outside a transaction of its own, the
    same checks (a parent that is a file, a directory at the path) run and
    the same file is stored, for about a fifth of a small object's write
    cost less (issue 11).  Anything else goes through ``pipe_file``."""
    cls = type(fs)
    direct = _DIRECT.get(cls)
    if direct is None:
        direct = _DIRECT[cls] = (issubclass(cls, MemoryFileSystem) and cls.pipe_file is MemoryFileSystem.pipe_file
                                 and cls.open is AbstractFileSystem.open and cls._open is MemoryFileSystem._open)
    return direct and not fs._intrans


#: Filesystem class -> may BufferSink store through ``_open`` (see above).
_DIRECT: dict[type, bool] = {}


class BufferSink(Sink):
    """Collect in memory, store in one step (for in-memory targets).

    A whole small object (``write_whole``: one ``write``) is kept as the
    bytes it came as (no copy; a view is copied once) and stored as it is.
    A second write starts an io.BytesIO, whose ``getvalue()`` hands its
    buffer over without a copy: collecting parts and joining them at commit
    copied a large object once more into a fresh buffer (enc::memory write
    fell from 0.65x to 0.37x plain memory://, benchmarks/bench_throughput.py)."""

    def __init__(self, fs: AbstractFileSystem, path: str, exclusive: bool) -> None:
        super().__init__(fs, path, exclusive)
        self._first: bytes | None = None
        self._buf: io.BytesIO | None = None

    def write(self, data: bytes | memoryview) -> None:
        if self._buf is not None:
            self._buf.write(data)
        elif self._first is None:
            self._first = bytes(data)
        else:
            self._buf = io.BytesIO()
            self._buf.write(self._first)
            self._buf.write(data)
            self._first = None

    def commit(self) -> None:
        data = self._buf.getvalue() if self._buf is not None else (self._first or b"")
        with _BUFFER_COMMIT:
            self._check_exclusive()
            if _stores_directly(self.fs):
                self.fs._open(self.path, "wb", data=data)
            else:
                self.fs.pipe_file(self.path, data)
        self._first, self._buf = None, None
        self.done = True

    def discard(self) -> None:
        self._first, self._buf = None, None
        self.done = True


class TempSiblingSink(Sink):
    """Stream into a hidden sibling, then move it onto the destination."""

    def __init__(self, fs: AbstractFileSystem, path: str, exclusive: bool) -> None:
        super().__init__(fs, path, exclusive)
        parent, _, name = path.rpartition("/")
        self.temp = f"{parent}/.{name}{TEMP_MARK}{secrets.token_hex(6)}" if parent else f".{name}{TEMP_MARK}{secrets.token_hex(6)}"
        self.f = fs.open(self.temp, "wb")

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)

    def commit(self) -> None:
        self.f.close()
        try:
            self._check_exclusive()
            self.fs.mv(self.temp, self.path)
        except BaseException:
            self.discard()
            raise
        self.done = True

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.f.close()
        with contextlib.suppress(Exception):
            self.fs.rm_file(self.temp)
        self.done = True
