"""fsspec's in-memory filesystem: reads are views of the stored buffer (no
copy), writes are collected and stored in one step (sinks.BufferSink)."""

from __future__ import annotations

from .base import MiB, TargetIO
from .sinks import BufferSink, Sink


class MemoryIO(TargetIO):
    remote = False
    read_block = 1 * MiB  # see local.py

    def _buffer(self, path: str) -> memoryview:
        try:
            f = self.fs.store[self.fs._strip_protocol(path)]
        except KeyError:
            raise FileNotFoundError(path) from None
        return f.getbuffer()

    def fetch(self, path: str, start: int | None = None, end: int | None = None) -> memoryview:
        # A read-only view, released by the caller (or the garbage collector)
        # once decrypted: the reader never keeps it past one read.
        return self._buffer(path).toreadonly()[start:end]

    def probe(self, path: str, nbytes: int) -> tuple[bytes | memoryview, int]:
        try:
            f = self.fs.store[self.fs._strip_protocol(path)]
        except KeyError:
            raise FileNotFoundError(path) from None
        buf = f.getbuffer()
        size = buf.nbytes
        if size <= nbytes:
            # The whole object: its bytes, not a view (BytesIO hands over
            # the buffer it holds once no view is exported, no copy), so
            # the reader has nothing to copy either.
            buf.release()
            return f.getvalue(), size
        return buf.toreadonly()[:nbytes], size

    def open_sink(self, path: str, exclusive: bool) -> Sink:
        return BufferSink(self.fs, path, exclusive)
