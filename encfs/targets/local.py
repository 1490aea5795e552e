"""Local disk: the probe's bytes and size from one open descriptor, large
reads straight into the reader's buffer, writes through a hidden temp file
and a rename (sinks.LocalSink)."""

from __future__ import annotations

import os

from .base import MiB, TargetIO
from .sinks import LocalSink, Sink


class LocalIO(TargetIO):
    remote = False
    # Local and in-memory targets answer at memory speed, so a window that
    # stays in the CPU caches wins (measured: 1 MiB reads 0.67x raw
    # AES-GCM, 4 MiB 0.51x).
    read_block = 1 * MiB
    reads_into = True

    def _local(self, path: str) -> str:
        return self.fs._strip_protocol(path)

    def probe(self, path: str, nbytes: int) -> tuple[bytes, int]:
        # One open: the size from fstat, the first bytes from the same descriptor.
        with open(self._local(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return f.read(nbytes), size

    def fetch_into(self, path: str, start: int, out: memoryview) -> int:
        # Into a buffer the reader reuses: a fresh one per read cost more in
        # page faults than the decryption (enc::file read was 0.22x raw
        # AES-GCM; benchmarks/bench_throughput.py).
        with open(self._local(path), "rb", buffering=0) as f:
            f.seek(start)
            got = 0
            while got < len(out):
                n = f.readinto(out[got:])
                if not n:
                    break
                got += n
            return got

    def open_sink(self, path: str, exclusive: bool) -> Sink:
        return LocalSink(self.fs, path, exclusive)
