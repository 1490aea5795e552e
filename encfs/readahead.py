"""Overlapping ranged reads for one object on a concurrent target
(FORMAT.md section 7, "Reading").

A :class:`Readahead` hands the reader the ciphertext of consecutive
segments, chunk by chunk and in order, while keeping up to ``depth`` ranged
requests of ``chunk_segs`` segments in flight on the target's event loop.
It only moves ciphertext: the reader authenticates every segment before it
releases a byte of it, so a chunk that arrives damaged, short, reordered or
from a replaced object fails exactly as a single ranged read would.

Memory is bounded: at most ``depth`` chunks of ciphertext are in flight or
waiting (``depth x chunk`` bytes; 4 x 8 MiB by default on S3).
"""

from __future__ import annotations

import concurrent.futures
from collections import deque
from collections.abc import Callable, Iterator

from .targets import TargetIO

#: Ranged requests a sequential reader keeps in flight (at most).
READ_AHEAD_REQUESTS = 4
#: A random read of more than this many bytes is split into up to
#: READ_AHEAD_REQUESTS concurrent requests (of at least this size each).
SPLIT_MIN = 1024 * 1024


class Readahead:
    """The in-flight chunk queue of one reader (callers serialize access)."""

    def __init__(self, io: TargetIO, path: str, nseg: int, chunk_segs: int, depth: int,
                 span: Callable[[int, int], tuple[int, int]]) -> None:
        self.io, self.path, self.nseg = io, path, nseg
        self.chunk_segs, self.depth = max(1, chunk_segs), max(1, depth)
        self._span = span  # segment range -> ciphertext [start, end)
        self._queue: deque[tuple[int, int, concurrent.futures.Future[bytes]]] = deque()
        self._next: int | None = None  # first segment not yet scheduled; None: nothing started
        self.in_flight = 1  # current target depth: ramps up while access stays sequential

    def cancel(self) -> None:
        """Drop everything scheduled (requests already sent finish unread)."""
        while self._queue:
            self._queue.popleft()[2].cancel()
        self._next = None

    def top_up(self, limit: int) -> None:
        """Schedule chunks (from where the queue ends) up to ``in_flight`` requests."""
        if self._next is None:
            return  # nothing started: the next read decides where
        while len(self._queue) < self.in_flight and self._next < limit:
            lo, hi = self._next, min(self._next + self.chunk_segs, limit)
            start, end = self._span(lo, hi)
            self._queue.append((lo, hi, self.io.submit(self.path, start, end)))
            self._next = hi

    def chunks(self, lo: int, hi: int, limit: int) -> Iterator[tuple[int, int, bytes]]:
        """Ciphertext of segments ``[lo, hi)`` as ``(first, stop, data)``
        chunks in order (a chunk may start before ``lo`` or end past ``hi``);
        requests are scheduled up to segment ``limit`` (exclusive)."""
        while self._queue and self._queue[0][1] <= lo:
            self._queue.popleft()[2].cancel()  # behind the reader: stale
        if not self._queue or self._queue[0][0] > lo:
            self.cancel()  # not where the reader is: start over here
            self._next = lo
        pos = lo
        while pos < hi:
            self.top_up(max(limit, hi))
            first, stop, fut = self._queue.popleft()
            try:
                data = fut.result()
            except BaseException:
                self.cancel()
                raise
            yield first, stop, data
            pos = stop
        self.top_up(limit)
