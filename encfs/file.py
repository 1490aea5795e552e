"""Encrypted file objects: reading by authenticated segment ranges, writing
by streaming segments into an atomic sink.

Reading (FORMAT.md section 7): opening reads the header region, unwraps the
data key, checks the key commitment, the header MAC and the bound path; the
final segment is authenticated by the first read that reaches the end of the
object (which proves the plaintext size), or at open when the probe brought
the whole object.  A read of ``[a, b)`` fetches the covering segments in one
ranged request and releases nothing before each segment's tag has verified.
A whole-object read that the probe answers whole (``read_whole``: every
small object) runs the same header checks (``authenticate_header``) and
opens every segment at once, without building a reader.

Writing: plaintext is cut into segments as it arrives; only the bytes of one
unfinished segment are held in memory.  The header goes first (it depends on
nothing but keys and path), so a stream of unknown length is fine.  Nothing
is visible at the destination until :meth:`EncryptedWriteFile.close` commits
the sink; an exception inside ``with fs.open(p, "wb")`` discards it.
"""

from __future__ import annotations

import contextlib
import dis
import io
import itertools
import os
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from fsspec.spec import AbstractBufferedFile

from .errors import FormatError, IntegrityError
from .format import (
    COMPACT_MAX_BODY,
    HEADER_REGION,
    OBJECT_ID_BYTES,
    PATH_KEY,
    TAG_BYTES,
    Header,
    HeaderPlan,
    ObjectKeys,
    SegmentAuthError,
    SegmentCipher,
    WrappedKey,
    covering_segments,
    derive_object_keys,
    open_body,
    parse_header,
    plaintext_size,
    segment_count,
    segment_offset,
)
from .format.header import FIXED_BYTES, MAGIC
from .readahead import READ_AHEAD_REQUESTS, SPLIT_MIN, Readahead
from .targets import Sink

if TYPE_CHECKING:
    from .fs import EncryptedFileSystem

#: Objects at most this large (ciphertext) are fetched whole by the first
#: read beyond the probe, then held.
SMALL_OBJECT = 1024 * 1024
#: Opening without a known size first asks for this many bytes (the header
#: and one default-size segment): a shorter answer is the whole object.
#: Bytes the opening probe asks for; None: the header region, one segment of
#: the reader's configured size (at least PROBE_MIN_BODY, so objects of a few
#: small segments still open in one request) and its tag.  A Parquet dataset
#: written and read with 32 KiB segments then fetches no 64 KiB first segment
#: (FORMAT.md section 8).  Tests set it to force the other open paths.
PROBE_BYTES: int | None = None
PROBE_MIN_BODY = 32 * 1024


def probe_size(segment_size: int) -> int:
    """Bytes the opening probe fetches for a reader of this segment size."""
    if PROBE_BYTES is not None:
        return PROBE_BYTES
    return HEADER_REGION + max(segment_size, PROBE_MIN_BODY) + TAG_BYTES
#: Ciphertext a local read fetches at a time into a large in-place read:
#: bounded pieces are recycled by the allocator, where one piece the size of
#: the read would be a second fresh buffer (see ObjectReader._read_into).
FETCH_RUN = 1024 * 1024
#: Plaintext bytes decrypted at a time for line reading (readline, iteration).
LINE_WINDOW = 256 * 1024
#: Objects (plaintext) up to this size are decrypted whole for line reading,
#: into one buffer whose own C ``readline`` and iterator then serve the file:
#: no Python call per line (issue 11, benchmarks/bench_lines.py).  The most
#: plaintext one open file holds for lines; larger objects use windows.
LINE_WHOLE = 8 * 1024 * 1024
#: Decrypted segments an open reader keeps (the final one is always kept).
SEGMENT_CACHE = 8
#: Frames above close() searched for a context manager's ``__exit__``
#: (text and compression wrappers sit in between).
_EXIT_SEARCH_DEPTH = 8


def read_header(efs: EncryptedFileSystem, path: str, prefix: bytes) -> Header:
    """Parse the header at the start of ``prefix`` (the first ``HEADER_REGION``
    bytes read from ``path``, or all of a shorter object: a compact v1.1
    header records its own region size, FORMAT.md section 3.1)."""
    if len(prefix) < FIXED_BYTES and not (prefix and MAGIC.startswith(bytes(prefix[:4]))):
        raise FormatError(f"not an encfs object (too short to hold a header) at {path}")
    return parse_header(prefix, path)


#: The opcode that calls a context manager's ``__exit__`` for an exception.
_WITH_EXCEPT_START = dis.opmap.get("WITH_EXCEPT_START")


def _calls_exit_for_exception(frame: Any) -> bool:
    """Is ``frame`` calling ``__exit__`` because its ``with`` block raised?

    A C ``__exit__`` (io.TextIOWrapper's, for ``fs.open(p, "w")``; io's
    buffered writers) has no frame of its own, so the name look-up alone
    misses it; the ``with`` statement's frame is then at this opcode.
    """
    code, i = frame.f_code.co_code, frame.f_lasti
    return _WITH_EXCEPT_START is not None and 0 <= i < len(code) and code[i] == _WITH_EXCEPT_START


def authenticate_header(efs: EncryptedFileSystem, path: str, head: bytes,
                        ct_size: int) -> tuple[Header, ObjectKeys, int]:
    """Parse and authenticate the header at the start of ``head`` (the
    first bytes of the ``ct_size``-byte object at ``path``) for reading: the
    header, the object's keys and its plaintext size (FORMAT.md section 7).

    The one place a read checks a header, in this order: parse, unwrap (the
    key commitment), the header MAC, the bound path, the configured context
    (a mismatch there is real, not tampering: the MAC has verified), and
    that the ciphertext size maps to a plaintext size under this header.
    Both :class:`ObjectReader` and :func:`read_whole` start here.
    """
    header = read_header(efs, path, head)
    _dek, keys = efs.keyring.unwrap(header, path)
    del _dek
    header.verify(keys, path)
    if efs.bind_path and header.context.get(PATH_KEY) != efs._bound_path(path):
        raise IntegrityError(path)
    efs._check_context(header, path)
    size = plaintext_size(ct_size, header.segment_size, header.header_region)
    if size is None:
        raise IntegrityError(path)
    return header, keys, size


def read_whole(efs: EncryptedFileSystem, path: str) -> bytes:
    """The whole plaintext of the object at target path ``path`` (``cat_file``
    without a range).

    When the opening probe brings the whole object (every small object),
    it is authenticated and decrypted in one step: :func:`authenticate_header`
    then :func:`~encfs.format.open_body`, which authenticates every segment,
    the final one included, so truncation and extension are caught as by
    the reader.  No :class:`ObjectReader` is built (its locks, segment cache
    and readahead are most of a small read's cost, issue 11).  A larger
    object goes to the reader with the probe's answer.
    """
    head, ct_size = efs.io.probe(path, probe_size(efs.segment_size))
    if head is None or ct_size is None or len(head) < ct_size:
        if head is None:
            # The target could not answer the probe (e.g. HTTP 416 for an
            # empty object): the reader asks for the size, then the bytes.
            reader = ObjectReader(efs, path, efs.io.size(path) if ct_size is None else ct_size)
        else:
            reader = ObjectReader(efs, path, ct_size, head=head)
        del head
        with contextlib.closing(reader):  # nothing left in flight after (as fs.cat_file)
            return reader.read_range(None, None)
    # A copy: never hold a view of the target's buffer past one read.
    data = bytes(head[:ct_size])
    del head
    header, keys, _size = authenticate_header(efs, path, data, ct_size)
    return open_body(data, header, keys, path)


class ObjectReader:
    """Authenticated random access to one encrypted object (FORMAT.md section 7).

    Opening costs one request: the probe brings the header, the first
    segment and, on most targets, the object size (S3: the Content-Range of
    the ranged GET).  The header is authenticated at open; the final
    segment when a read reaches the end of the object (or at open, for free,
    when the probe holds the whole object), so truncation and extension are
    caught by every read that could observe them.
    """

    def __init__(self, efs: EncryptedFileSystem, path: str, ct_size: int | None = None,
                 guess: tuple[int, int, Any] | None = None, head: bytes | memoryview | None = None) -> None:
        self.efs, self.path = efs, path
        self.io = io = efs.io
        # (start, end, future): ciphertext fetched ahead of the header on a
        # guess of the layout (fs.cat_file); used by _fetch only for exactly
        # that range, and authenticated like any other bytes.
        self._guess = guess
        # ``head``: the answer of a probe the caller already made (read_whole),
        # with its ``ct_size`` (None when the probe did not tell it).
        probe = probe_size(efs.segment_size)
        if ct_size is None and head is None:
            head, ct_size = io.probe(path, probe)
        if ct_size is None:
            ct_size = io.size(path)
        self.ct_size = ct_size = int(ct_size)
        if head is None:
            head = io.fetch(path, 0, min(probe, ct_size)) if ct_size else b""
        # A copy: never hold a view of the target's buffer past one read.
        self._head = bytes(head[:ct_size])
        del head
        header, keys, size = authenticate_header(efs, path, self._head, ct_size)
        self.header, self.size = header, size
        self.segment_size = header.segment_size
        self._stride = header.segment_size + TAG_BYTES
        self.nseg = segment_count(size, header.segment_size)
        self._cipher = SegmentCipher(keys.body_key)
        del keys
        self._final_ok = False
        # Ciphertext buffer reused by large local reads (_fetch_run).
        self._sealed = bytearray()
        self._sealed_lock = threading.Lock()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        # Guards the cache's bookkeeping only (fetching and decrypting stay
        # concurrent): eviction from several threads at once broke the dict.
        self._cache_lock = threading.Lock()
        # Sequential readahead (section "Reading" above): a read that starts
        # where the previous one ended fetches up to ``_max_ahead`` more
        # segments in the same request, doubling each time; a random read
        # resets it, so column reads fetch exactly their covering segments.
        self._seq_end = -1
        self._ahead = 0
        block = int(getattr(efs, "read_block_size", 0))
        self._max_ahead = max(0, block // self.segment_size - 1)
        # On a target that can overlap requests, sequential and large reads
        # go through a Readahead instead: several ranged requests of one
        # read block each in flight (readahead.py; memory bounded there).
        self._stream: Readahead | None = None
        self._stream_lock = threading.Lock()
        self._block_segs = max(1, block // self.segment_size)
        if io.concurrent and self.ct_size > len(self._head):
            self._stream = Readahead(io, path, self.nseg, self._block_segs, READ_AHEAD_REQUESTS, self._span)
        self._cache_limit = max(SEGMENT_CACHE, self._max_ahead + 4, self._block_segs + 4)
        if len(self._head) >= self.ct_size:
            # The whole object is in hand: proving its size costs nothing.
            self._load(range(self.nseg - 1, self.nseg))

    def __repr__(self) -> str:
        return f"ObjectReader({self.path!r}, size={self.size})"

    def close(self) -> None:
        """Drop readahead requests still in flight."""
        if self._stream is not None:
            with self._stream_lock:
                self._stream.cancel()

    def _span(self, lo: int, hi: int) -> tuple[int, int]:
        """Ciphertext byte range of segments ``[lo, hi)``."""
        region = self.header.header_region
        return (segment_offset(lo, self.segment_size, region),
                min(segment_offset(hi, self.segment_size, region), self.ct_size))

    def _fetch(self, start: int, end: int) -> bytes | memoryview:
        """Ciphertext ``[start, end)``: from the probe's bytes when they hold
        it; a small object's whole rest in one request (then held); else one
        ranged request."""
        guess, self._guess = self._guess, None
        if guess is not None and guess[0] == start and start >= len(self._head):
            try:
                data = guess[2].result()
            except Exception:  # noqa: BLE001 - a wrong guess (e.g. past the end): fetch as usual
                data = b""
            if len(data) >= end - start:
                return memoryview(data)[: end - start]
        head = self._head
        if end > len(head) and self.ct_size <= SMALL_OBJECT:
            rest = self.io.fetch(self.path, len(head), self.ct_size)
            if len(rest) != self.ct_size - len(head):
                raise IntegrityError(self.path)  # object changed size under us
            self._head = head = head + bytes(rest)
        if end <= len(head):
            return memoryview(head)[start:end]
        return self.io.fetch(self.path, start, end)

    def _fetch_run(self, start: int, end: int) -> bytes | memoryview:
        """:meth:`_fetch` for :meth:`_read_into` while it holds
        ``_sealed_lock``: on targets that read into a buffer (local disk), a
        large range lands in the reader's reused ciphertext buffer instead
        of a fresh one."""
        if end <= len(self._head) or self.ct_size <= SMALL_OBJECT or self._guess is not None:
            return self._fetch(start, end)
        n = end - start
        if len(self._sealed) < n:
            self._sealed = bytearray(n)
        view = memoryview(self._sealed)[:n]
        return view[: self.io.fetch_into(self.path, start, view)]

    def _open_segment(self, index: int, sealed: bytes | memoryview) -> bytes:
        final = index == self.nseg - 1
        try:
            plain = self._cipher.open(index, sealed, final)
        except SegmentAuthError:
            raise IntegrityError(self.path) from None
        if final:
            self._final_ok = True
        return plain

    def _ahead_segment(self, index: int, sealed: bytes | memoryview) -> bytes | None:
        """A segment read ahead of the caller's range: its plaintext, or None
        when it fails authentication.  It is then neither kept nor
        reported: the read that needs it fetches it again and fails there,
        so damage further on never fails the reads before it."""
        try:
            return self._open_segment(index, sealed)
        except IntegrityError:
            return None

    def _read_into(self, start: int, end: int, segs: range, cut: bytes | None = None) -> bytes:
        """:meth:`read` of several segments from a local or in-memory target.

        Segments wholly inside ``[start, end)`` are decrypted in place into
        the buffer of a private io.BytesIO of exactly the range's size, whose
        ``getvalue()`` then hands that buffer over as the result: one
        allocation and no copy of the plaintext (a scratch buffer plus a copy
        out cost a second fresh buffer per read, and on this machine kind
        fresh pages cost more than the decryption: 3.3 ms instead of 0.7 ms
        for a 4.4 MB read, issue 11).  The two boundary segments are
        decrypted on their own and copied in part.  Nothing is returned
        unless every segment authenticated: on failure the buffer, holding
        unauthenticated bytes, is dropped with the exception."""
        seg, size, first, last = self.segment_size, self.size, segs[0], segs[-1]
        out = io.BytesIO()
        out.seek(end - start - 1)
        out.write(b"\0")  # sizes the buffer once
        cached = self._cached(segs)
        keep: bytes | None = None  # the last segment, when the next sequential read starts inside it
        # The reused ciphertext buffer, unless another thread has it.
        own = self.io.reads_into and self._sealed_lock.acquire(blocking=False)
        fetch = self._fetch_run if own else self._fetch
        with out.getbuffer() as view, _released(self._sealed_lock if own else None):
            i = first
            while i <= last:
                plain = cached.get(i)
                if plain is not None:
                    lo, hi = max(i * seg, start), min((i + 1) * seg, end)
                    view[lo - start : hi - start] = memoryview(plain)[lo - i * seg : hi - i * seg]
                    i += 1
                    continue
                j = i  # a run of missing segments: one request of at most FETCH_RUN
                while j < last and j + 1 not in cached and (j + 1 - i) * seg < FETCH_RUN:
                    j += 1
                lo, hi = self._span(i, j + 1)
                blob = fetch(lo, hi)
                if len(blob) != hi - lo:
                    raise IntegrityError(self.path)  # object changed size under us
                sealed, stride = memoryview(blob), self._stride
                # Segments [a, b] lie wholly inside the range: in place.
                a = i if i * seg >= start else i + 1
                b = j if min((j + 1) * seg, size) <= end else j - 1
                for k in {i, j}:
                    if a <= k <= b:
                        continue  # decrypted in place below
                    part = self._open_segment(k, sealed[(k - i) * stride : (k - i + 1) * stride])
                    lo_k, hi_k = max(k * seg, start), min(k * seg + len(part), end)
                    view[lo_k - start : hi_k - start] = memoryview(part)[lo_k - k * seg : hi_k - k * seg]
                    if k == last:
                        keep = part
                if a <= b:
                    run = view[a * seg - start : min((b + 1) * seg, size) - start]
                    try:
                        self._cipher.open_run_into(a, sealed[(a - i) * stride : (b - i + 1) * stride], run, seg,
                                                   self.nseg - 1)
                    except SegmentAuthError:
                        # AES-GCM wrote the failed segment's plaintext before
                        # its tag failed, and the error's traceback keeps
                        # this buffer reachable (a kept error, a debugger):
                        # wiped, so nothing unauthenticated outlives the read.
                        run[:] = bytes(len(run))
                        # Let go of the buffer now: a slice kept alive by the
                        # traceback holds an export of ``out``, whose close
                        # at collection then fails ("Exception ignored").
                        run.release()
                        raise IntegrityError(self.path) from None
                    del run
                    if b == self.nseg - 1:
                        self._final_ok = True
                del sealed, blob
                i = j + 1
        if keep is not None and end % seg:
            with self._cache_lock:
                self._remember(last, keep)
        if cut is not None and end < size:
            # Line reading: end after the last separator, shrinking the
            # buffer in place (getvalue() then still hands it over uncopied).
            value = out.getvalue()
            k = value.rfind(cut)
            del value
            if k >= 0:
                out.truncate(k + 1)
        return out.getvalue()

    def _cached(self, segs: range) -> dict[int, bytes]:
        # .get, not "in" then [], so a concurrent eviction cannot KeyError.
        out: dict[int, bytes] = {}
        with self._cache_lock:
            for i in segs:
                cached = self._cache.get(i)
                if cached is not None:
                    out[i] = cached
        return out

    def _load(self, segs: range, ahead: int = 0) -> list[bytes]:
        """Plaintext of ``segs`` (contiguous), fetching missing ones in one
        request, plus up to ``ahead`` following segments when a fetch is needed."""
        if not segs:
            return []
        if len(segs) == 1:
            # One segment (a small object's whole body, at open and at its
            # read): no bookkeeping beyond the cache itself.  A single
            # OrderedDict.get is atomic under the GIL.
            i = segs[0]
            hit = self._cache.get(i)
            if hit is not None:
                return [hit]
            if not ahead:
                start, end = self._span(i, i + 1)
                blob = self._fetch(start, end)
                if len(blob) != end - start:
                    raise IntegrityError(self.path)  # object changed size under us
                plain = self._open_segment(i, blob)
                del blob
                with self._cache_lock:
                    self._remember(i, plain)
                return [plain]
        out = self._cached(segs)
        missing = [i for i in segs if i not in out]
        if missing:
            lo, hi = missing[0], missing[-1]
            if hi == segs[-1] and ahead:
                hi = min(self.nseg - 1, hi + ahead)
            start, end = self._span(lo, hi + 1)
            blob = self._fetch(start, end)
            if len(blob) != end - start:
                raise IntegrityError(self.path)  # object changed size under us
            view = memoryview(blob)
            stride, need = self._stride, segs[-1]
            for j, i in enumerate(range(lo, hi + 1)):
                sealed = view[j * stride : (j + 1) * stride]
                if i <= need:
                    out[i] = self._open_segment(i, sealed)
                else:
                    plain = self._ahead_segment(i, sealed)
                    if plain is not None:
                        out[i] = plain
            del view, blob
            # Keep the boundary segments (the next read often starts there),
            # the readahead ones, and the final one.
            with self._cache_lock:
                for i in (missing[0], *range(missing[-1], hi + 1), self.nseg - 1):
                    if i in out:
                        self._remember(i, out[i])
        return [out[i] for i in segs]

    def _stream_load(self, segs: range, sequential: bool) -> list[bytes]:
        """:meth:`_load` through the Readahead: the missing segments arrive
        as several overlapping requests; a sequential reader keeps requests
        in flight past ``segs`` for its next reads."""
        stream = self._stream
        assert stream is not None
        with self._stream_lock:
            out = self._cached(segs)
            missing = [i for i in segs if i not in out]
            limit = self.nseg if sequential else segs[-1] + 1
            if sequential:
                # Ramp up while access stays sequential: a reader that stops
                # early wastes at most what was in flight.
                stream.chunk_segs = self._block_segs
                stream.in_flight = min(stream.depth, 2 * stream.in_flight)
            else:
                # One large random read: split evenly, nothing read beyond it.
                split = max(SPLIT_MIN // self.segment_size, -(-len(segs) // stream.depth))
                stream.chunk_segs = max(1, min(self._block_segs, split))
                stream.in_flight = stream.depth
            if not missing:
                stream.top_up(limit)
                return [out[i] for i in segs]
            stride, last = self._stride, segs[-1]
            for first, stop, data in stream.chunks(missing[0], last + 1, limit):
                start, end = self._span(first, stop)
                if len(data) != end - start:
                    raise IntegrityError(self.path)  # object changed size under us
                view = memoryview(data)
                extra: list[tuple[int, bytes]] = []
                for i in range(max(first, missing[0]), stop):
                    if i in out:
                        continue
                    sealed = view[(i - first) * stride : (i - first + 1) * stride]
                    if i <= last:
                        out[i] = self._open_segment(i, sealed)
                    elif (plain := self._ahead_segment(i, sealed)) is not None:
                        extra.append((i, plain))  # read ahead: kept for the next read
                del view, data
                with self._cache_lock:
                    for i, plain in extra:
                        self._remember(i, plain)
            with self._cache_lock:
                self._remember(last, out[last])
                if self.nseg - 1 in out:
                    self._remember(self.nseg - 1, out[self.nseg - 1])
        return [out[i] for i in segs]

    def _remember(self, index: int, plain: bytes) -> None:
        """Cache one segment (the caller holds ``_cache_lock``)."""
        self._cache[index] = plain
        self._cache.move_to_end(index)
        while len(self._cache) > self._cache_limit:
            oldest = next(iter(self._cache))
            if oldest == self.nseg - 1 and len(self._cache) > 1:
                self._cache.move_to_end(oldest)
                oldest = next(iter(self._cache))
            del self._cache[oldest]

    def read(self, start: int, end: int | None, cut: bytes | None = None) -> bytes:
        """Plaintext bytes ``[start, end)`` (clamped to the object).

        A read that reaches the end of the object authenticates the final
        segment first (even an empty read at the end), so a truncated or
        extended object fails there instead of ending early.  With ``cut``
        (one byte, line reading), a read that stops before the end of the
        object may end early, just after the last ``cut`` byte in the range."""
        if end is None or end > self.size:
            end = self.size
        start = max(0, start)
        if start >= end:
            if end >= self.size and not self._final_ok:
                self._load(range(self.nseg - 1, self.nseg))
            return b""
        segs = covering_segments(start, end, self.segment_size)
        sequential = start == self._seq_end
        self._seq_end = end
        stream = self._stream
        if stream is not None and (sequential or end - start > SPLIT_MIN):
            parts = self._stream_load(segs, sequential)
        elif not self.io.remote and len(segs) > 1 and self._cipher.can_open_into:
            # Local and memory targets: decrypt in place into the result.
            return self._read_into(start, end, segs, cut)
        else:
            self._ahead = min(self._max_ahead, max(1, 2 * self._ahead)) if sequential else 0
            parts = self._load(segs, self._ahead if end < self.size else 0)
        first = segs[0] * self.segment_size
        if len(parts) == 1:
            return parts[0][start - first : end - first]
        # Trim the two boundary segments before joining, so the range is
        # copied once, not twice (a full-segment slice is not copied at all).
        parts[0] = parts[0][start - first :]
        parts[-1] = parts[-1][: end - segs[-1] * self.segment_size]
        return b"".join(parts)

    def read_range(self, start: int | None, end: int | None) -> bytes:
        """:meth:`read` with fsspec's conventions (``cat_file``): ``None``
        ends, negative offsets counted from the end of the plaintext."""
        size = self.size
        if start is None:
            start = 0
        elif start < 0:
            start = max(0, size + start)
        if end is not None and end < 0:
            end = max(0, size + end)
        return self.read(start, end)


@contextlib.contextmanager
def _released(lock: threading.Lock | None) -> Iterator[None]:
    """Release ``lock`` (already acquired; None: nothing) on the way out."""
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _refuse(f: Any, what: str) -> NoReturn:
    """Raise what Python's own files raise for a read on a write-only file or
    a write on a read-only one: io.UnsupportedOperation, both an OSError and a
    ValueError (so callers that caught fsspec's ValueError still do).  h5py
    and other libraries probe files with these calls and go by the error."""
    if f.closed:
        raise ValueError("I/O operation on closed file")
    raise io.UnsupportedOperation(f"{what}: encfs file {f.path!r} is open in mode {f.mode!r}")


class EncryptedReadFile(AbstractBufferedFile):
    """A read-only fsspec file over :class:`ObjectReader` (seek, read, lines)."""

    def __init__(self, efs: EncryptedFileSystem, path: str, mode: str = "rb", block_size: Any = "default",
                 cache_type: str = "none", cache_options: dict | None = None, **kwargs: Any) -> None:
        # No fsspec cache by default: ObjectReader already keeps decrypted
        # segments and reads ahead only for sequential access, whereas
        # fsspec's readahead would add a block to every column-chunk read
        # (measured: 2.77 MB instead of 0.66 MB for one Parquet column).
        self.reader = ObjectReader(efs, path, kwargs.pop("ct_size", None))
        # blockcache passes the size it listed (plaintext, or None); the
        # reader's authenticated size is the one that counts.
        kwargs.pop("size", None)
        if block_size in ("default", None):
            block_size = efs.read_block_size
        # Line reading keeps one window of plaintext (see readline).
        self._lines = b""
        self._lines_at = 0
        self._cur: io.BytesIO | None = None
        self._cur_base = 0
        # The cursor holds the whole object and owns the position for the
        # rest of the file's life (objects up to LINE_WHOLE, see readline).
        self._whole = False
        self._loc = 0
        super().__init__(efs, path, mode=mode, block_size=block_size, cache_type=cache_type,
                         cache_options=cache_options, size=self.reader.size, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.reader.read(start, end)

    def write(self, data: Any) -> int:
        _refuse(self, "not writable")

    def truncate(self, size: int | None = None) -> int:
        _refuse(self, "not writable")

    def read(self, length: int = -1) -> bytes:
        # Reads of at least a block bypass fsspec's cache: ObjectReader already
        # fetches exactly the covering segments in one request and keeps the
        # boundary ones, and the readahead buffer would copy every byte twice
        # more (measured: ~25% of sequential read time, benchmarks/).
        # A read that reaches the end goes to the reader too, so even a short
        # or empty one at the end authenticates the final segment (fsspec's
        # read would answer it from the claimed size alone).
        length = -1 if length is None else int(length)
        if self._whole and not self.closed:
            # Every segment authenticated when the cursor was filled.
            return self._cur.read(length)  # type: ignore[union-attr]
        if self.mode == "rb" and not self.closed and (length < 0 or length >= self.blocksize
                                                      or self.loc + length >= self.size):
            end = self.size if length < 0 else min(self.size, self.loc + length)
            if self.loc >= end:
                self.reader.read(self.loc, end)  # at the end: authenticates the final segment
                return b""
            out = self.reader.read(self.loc, end)
            self.loc += len(out)
            return out
        return super().read(length)

    # -- lines: fsspec's readline re-reads a whole block per line (it seeks
    # back after each one), which cost 500x plain files.  Here lines are cut
    # in C by an io.BytesIO "cursor" over decrypted plaintext; while a cursor
    # is active the position is the cursor's (see ``loc``), so tell(), seek()
    # and read() stay exact even in the middle of ``for line in f``.
    #
    # Lines are first cut from one window of LINE_WINDOW bytes, so reading a
    # few lines (a CSV header, the head of a log) decrypts only that.  An
    # object of at most LINE_WHOLE bytes read on past its first window is
    # then decrypted whole, once, into one cursor that owns the position
    # until close: ``f.readline`` becomes the cursor's own C method (an
    # instance attribute, found before the class's) and ``iter(f)`` the
    # cursor, so no Python runs per line (plain fsspec on memory:// is a
    # BytesIO too; issue 11).  A bound ``f.readline`` kept by the caller
    # stays right across seeks and reads.  Larger objects stay windowed.
    @property
    def loc(self) -> int:
        cur = self._cur
        return self._loc if cur is None else self._cur_base + cur.tell()

    @loc.setter
    def loc(self, value: int) -> None:
        cur = self._cur
        if cur is not None:
            if self._whole:
                cur.seek(value)
                return
            cur.seek(0, 2)  # stop a ``for`` loop still iterating it
            self._cur = None
        self._loc = value

    def _whole_cursor(self) -> io.BytesIO:
        """The cursor over the whole object (at most LINE_WHOLE), made once."""
        if self._cur is None or not self._whole:
            loc = self.loc
            self.loc = loc  # detaches a window cursor
            # Reading to the end authenticates every segment, the final one too.
            cur = io.BytesIO(self.reader.read(0, self.size))
            cur.seek(loc)
            self._cur, self._cur_base, self._whole = cur, 0, True
            self._lines = b""
            self.readline = cur.readline  # type: ignore[method-assign]
        return self._cur  # type: ignore[return-value]

    def _line_window(self) -> tuple[bytes, int]:
        """The plaintext window holding ``self.loc`` and loc's index in it
        (``b""`` at the end of the object); a new window ends with a whole
        line where the reader can cut it without a copy."""
        loc = self.loc
        buf, at = self._lines, self._lines_at
        if at <= loc < at + len(buf):
            return buf, loc - at
        end = min(self.size, loc + max(LINE_WINDOW, self.reader.segment_size))
        buf = self.reader.read(loc, end, cut=b"\n")  # at the end: b"", after the final segment authenticated
        self._lines, self._lines_at = buf, loc
        return buf, 0

    def _cursor(self, whole_lines: bool) -> io.BytesIO | None:
        """A window cursor at ``self.loc`` over the rest of its window (for
        ``whole_lines``, up to the window's last newline: None when the
        window holds none).  None at the end of the object.  Once the file
        has its whole cursor, that cursor (it owns the position)."""
        if self._whole:
            return self._cur
        loc = self.loc
        buf, i = self._line_window()
        if not buf:
            return None
        if whole_lines and self._lines_at + len(buf) < self.size:
            cut = buf.rfind(b"\n", i) + 1
            if not cut:
                return None
            cur = io.BytesIO(buf[i:cut] if cut < len(buf) else buf)  # usually a whole window: no copy
            cur.seek(0 if cut < len(buf) else i)
        else:
            cur = io.BytesIO(buf)  # shares buf: no copy
            cur.seek(i)
        self.loc = loc  # detaches any previous cursor
        self._cur, self._cur_base = cur, loc - cur.tell()
        return cur

    def readline(self, size: int | None = -1) -> bytes:
        cur = self._cur
        if cur is not None and size == -1:
            # The windowed common case first, kept short: a whole line in the
            # window (an active cursor means the file is open).
            line = cur.readline()
            if line[-1:] == b"\n":
                return line
            return self._readline(-1, line)
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return self._readline(-1 if size is None or size < 0 else int(size))

    def _readline(self, want: int, head: bytes = b"") -> bytes:
        """A line (at most ``want`` bytes when ``want >= 0``) across windows;
        ``head``: its start, already taken from the current cursor (only
        with ``want == -1``)."""
        pieces: list[bytes] = [head] if head else []
        start = self.loc - len(head)
        try:
            while want:
                cur = self._cur or self._cursor(False)
                if cur is None:
                    break
                line = cur.readline(want)
                if self._whole:  # the cursor's end is the object's
                    pieces.append(line)
                    break
                if not line:  # the cursor's window is used up: the next one
                    self.loc = self.loc
                    if self.size <= LINE_WHOLE:
                        self._whole_cursor()  # reading on past a first window: all of it, once
                    continue
                pieces.append(line)
                if line[-1:] == b"\n":
                    break
                if want > 0:
                    want -= len(line)
        except BaseException:
            # A window that fails (damage, a target error) consumes nothing
            # of the line: a retry reads it whole, never its tail as a line.
            self.loc = start
            raise
        if not pieces:
            return b""
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def __iter__(self) -> Iterator[bytes]:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self._whole:
            return self._cur  # type: ignore[return-value]  # iterating the file is iterating it, in C
        # Whole windows of lines, each split in C; chain keeps the per-line
        # cost in C too.
        return itertools.chain.from_iterable(self._line_runs())

    def _line_runs(self) -> Iterator[Iterable[bytes]]:
        first = True
        while True:
            whole = cur = None
            try:
                if self.closed:
                    raise ValueError("I/O operation on closed file")
                if self._whole or (not first and self.size <= LINE_WHOLE):
                    # (an iterator made before another call switched the file
                    # to its whole cursor joins that cursor: never a window
                    # cursor beside it)
                    whole = self._whole_cursor()
                else:
                    cur = self._cursor(True)
                    line = b"" if cur is not None else self.readline()  # a line longer than the window, or the end
            except Exception as exc:  # noqa: BLE001 - re-raised by the run below
                # chain.from_iterable drops a source that raised, so a kept
                # iterator would then end as if at the end of the object
                # (a silent truncation after an IntegrityError).  Raised
                # from a run instead, the error leaves the source alive:
                # the next call tries again (and fails again on damage).
                yield _Raising(exc)
                del exc
                continue
            if whole is not None:
                # Iterating on past a first window: the rest from one buffer
                # (seeks inside the loop move it, so it is the only run left).
                yield whole
                return
            first = False
            if cur is not None:
                yield cur
                continue
            if not line:
                return
            yield (line,)

    def close(self) -> None:
        if not self.closed:
            self.reader.close()
            cur = self._cur
            if cur is not None:
                loc = self.loc
                # A bound readline or an iteration kept by the caller now
                # raises, as on a closed Python file.
                cur.close()
                self._cur, self._whole, self._loc = None, False, loc
                self.__dict__.pop("readline", None)
            self._lines = b""
        super().close()


class _Raising:
    """A run of lines that raises ``exc`` once, then ends (see
    EncryptedReadFile._line_runs)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc: BaseException | None = exc

    def __iter__(self) -> _Raising:
        return self

    def __next__(self) -> bytes:
        exc, self.exc = self.exc, None
        if exc is None:
            raise StopIteration
        raise exc


def _abandon(f: Any) -> None:
    """Close ``f`` without committing it (a write file is discarded)."""
    if isinstance(f, EncryptedWriteFile):
        f.discard()
    else:
        f.close()


def close_with(wrapper: Any, f: Any) -> Any:
    """Make closing ``wrapper`` (a compression file over ``f``) close ``f``
    too, as :func:`fsspec.open` does with its stack of files.

    A write is committed only by an explicit close (or ``with``): when the
    wrapper fails to close, or is closed by the garbage collector (io's
    finalizer sets ``_finalizing`` first), ``f`` is discarded, as an encfs
    write file nobody closed always is.  A wrapper that takes no attribute
    (a C type) is returned as it is, as fsspec returns it."""
    inner = wrapper.close

    def close() -> None:
        if getattr(wrapper, "_finalizing", False):
            # Collected, never closed: nothing is stored.  The write is
            # discarded before the wrapper's own close writes its trailer
            # into it, and that close's errors (a file the collector may
            # have finalized first) are not reported as "Exception ignored".
            if isinstance(f, EncryptedWriteFile) and not f.closed:
                warnings.warn(f"encfs file {f.path!r} was never closed; the write was discarded",
                              ResourceWarning, stacklevel=2)
                f.discard()
            with contextlib.suppress(Exception):
                inner()
            with contextlib.suppress(Exception):
                f.close()
            return
        try:
            inner()
        except BaseException:
            _abandon(f)
            raise
        f.close()

    with contextlib.suppress(AttributeError, TypeError):
        wrapper.close = close
    return wrapper


#: ``pipe_file`` values up to this size are sealed in one piece by
#: :func:`write_whole`; larger ones stream (memory stays bounded).
WHOLE_WRITE = 8 * 1024 * 1024


def _new_object(efs: EncryptedFileSystem, path: str,
                nbytes: int | None = None) -> tuple[HeaderPlan, SegmentCipher, list[WrappedKey]]:
    """A new object's header plan, segment cipher and wrapped data key: a
    data key (maybe cached), a random object id and the keys derived from
    both (FORMAT.md section 5).  No key outlives this call but inside them.
    ``nbytes``: the plaintext size when known now, accounted against the
    data key's ``max_bytes`` at once (docs/CACHE.md)."""
    context = efs._context_for(path)
    dek, wrapped = efs.keyring.new_data_key(context, nbytes)
    object_id = os.urandom(OBJECT_ID_BYTES)
    keys = derive_object_keys(dek, object_id, 1)
    plan = HeaderPlan(segment_size=efs.segment_size, object_id=object_id, context=context, keys=keys,
                      wrapped_keys=wrapped)
    cipher = SegmentCipher(keys.body_key)
    del dek, keys
    return plan, cipher, wrapped


def write_whole(efs: EncryptedFileSystem, path: str, data: Any, exclusive: bool = False) -> None:
    """Seal and store a whole in-memory value, all or nothing.

    The same object one ``write`` and ``close`` of :class:`EncryptedWriteFile`
    make, without the streaming machinery, which is most of a small object's
    cost (issue 11, benchmarks/bench_small_objects.py).  Callers keep values
    above ``WHOLE_WRITE`` on the streaming path.
    """
    view = memoryview(data).cast("B")
    if exclusive and efs.fs.exists(path):
        raise FileExistsError(path)
    # The size is known: accounted with the data key's hand-out (one cache
    # operation, not two; a write that then fails still counts its bytes,
    # as a failed commit always did).
    plan, cipher, _wrapped = _new_object(efs, path, len(view))
    seg = efs.segment_size
    n = segment_count(len(view), seg)
    if n == 1:
        body = cipher.seal(0, view, True)  # a small object: one final segment
    else:
        body = b"".join([cipher.seal(i, view[i * seg : (i + 1) * seg], i == n - 1) for i in range(n)])
    sink = efs.io.open_sink(path, exclusive)
    try:
        sink.write(plan.region(len(body)) + body)
        sink.commit()
    except BaseException:
        sink.discard()
        raise


class EncryptedWriteFile(io.IOBase):
    """Streams plaintext into sealed segments; all-or-nothing at the target."""

    def __init__(self, efs: EncryptedFileSystem, path: str, mode: str = "wb", autocommit: bool = True,
                 sink: Sink | None = None) -> None:
        super().__init__()
        self.fs, self.path, self.mode, self.autocommit = efs, path, mode, autocommit
        exclusive = "x" in mode
        if exclusive and efs.fs.exists(path):
            raise FileExistsError(path)
        self.segment_size = efs.segment_size
        # The header's region size depends on the body size (a compact v1.1
        # region for small objects, FORMAT.md section 3.1), so it is written
        # with the first segments once they prove the object too large for
        # one, or at close; until then at most COMPACT_MAX_BODY bytes of
        # sealed segments wait in ``_held``.
        plan, self._cipher, wrapped = _new_object(efs, path)
        self._plan: HeaderPlan | None = plan
        self._held: list[bytes] = []
        self._held_bytes = 0
        # Public wrapped entries name the data key when the size is reported
        # at close (the cache's max-bytes-per-data-key limit, docs/CACHE.md).
        self._wrapped = wrapped
        self._sink = sink or efs.io.open_sink(path, exclusive)
        self._buf = bytearray()
        self._index = 0
        self._written = 0
        self._finished = False
        self._committed = False
        self._discarded = False
        self._failed = False
        # An exception already being handled when the file was opened is not
        # a reason to discard it at close (see close()).
        self._exc_at_open = sys.exc_info()[1]

    def __repr__(self) -> str:
        return f"<EncryptedWriteFile {self.path!r} mode={self.mode!r}>"

    def __reduce__(self):
        raise TypeError("an open encfs write file cannot be pickled")

    # io.IOBase protocol
    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._written

    # Reads and seeks fail as on Python's own write-only, unseekable files
    # (io.IOBase already does so for seek, truncate and fileno).
    def read(self, size: int | None = -1) -> bytes:
        _refuse(self, "not readable")

    read1 = readall = peek = read

    def readinto(self, buffer: Any) -> int:
        _refuse(self, "not readable")

    readinto1 = readinto

    def readline(self, size: int | None = -1) -> bytes:
        _refuse(self, "not readable")

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        _refuse(self, "not readable")

    def seek(self, offset: int, whence: int = 0) -> int:
        _refuse(self, "not seekable")

    def _seal(self, data: bytes | memoryview, final: bool) -> None:
        sealed = self._cipher.seal(self._index, data, final)
        self._index += 1
        plan = self._plan
        if plan is not None:
            self._held.append(sealed)
            self._held_bytes += len(sealed)
            if not final and self._held_bytes <= COMPACT_MAX_BODY:
                return  # may still fit a compact region
            # The body size is known at the final segment; before it, the
            # body is already too large for any compact region.
            out = [plan.region(self._held_bytes if final else None), *self._held]
            self._plan, self._held = None, []
        else:
            out = [sealed]
        try:
            for chunk in out:
                self._sink.write(chunk)
        except BaseException:
            # The target may hold part of this segment: the object can never
            # be completed, whatever the caller does with the error.
            self._failed = True
            raise

    def write(self, data: Any) -> int:
        if self.closed or self._finished:
            raise ValueError("I/O operation on closed file")
        if self._failed:
            raise OSError(f"an earlier write to {self.path} failed; this object cannot be completed")
        view = memoryview(data).cast("B")
        n = len(view)
        seg = self.segment_size
        pos = 0
        # A segment is sealed only once a later byte exists: the last segment
        # must carry the final flag, and we do not know it is last until close.
        if self._buf:
            need = seg - len(self._buf)
            if n <= need:
                self._buf += view
                self._written += n
                return n
            self._buf += view[:need]
            self._seal(bytes(self._buf), False)
            self._buf.clear()
            pos = need
        while n - pos > seg:
            self._seal(view[pos : pos + seg], False)
            pos += seg
        self._buf += view[pos:]
        self._written += n
        return n

    def flush(self) -> None:
        """Nothing to do: ciphertext only becomes visible at commit."""

    def _finish(self) -> None:
        if not self._finished:
            self._seal(bytes(self._buf), True)
            self._buf.clear()
            self._finished = True
            self.fs.keyring.record_plaintext(self._wrapped, self._written)

    def _unwinding(self) -> bool:
        """Is close() being called by a context manager's ``__exit__`` while
        an exception raised since open() propagates?

        fsspec's ``OpenFile.__exit__`` (``with fsspec.open(url, "wb")``),
        pandas' handle cleanup and ``contextlib.closing`` close the file
        without passing the exception on; committing there would publish a
        truncated object.  An explicit ``close()`` in an ``except`` block
        (no ``__exit__`` on the way) still commits, as with ordinary files.
        """
        exc = sys.exc_info()[1]
        if exc is None or exc is self._exc_at_open:
            return False
        frame = sys._getframe(2)  # past _unwinding and close
        for _ in range(_EXIT_SEARCH_DEPTH):
            if frame is None:
                return False
            if frame.f_code.co_name == "__exit__" or _calls_exit_for_exception(frame):
                return True
            frame = frame.f_back
        return False

    def close(self) -> None:
        if self.closed:
            return
        if self._unwinding():
            self.discard()
            return
        if self._failed:
            # A write raised (target error) and the caller closed anyway, e.g.
            # pandas closes its handle in a ``finally``.  Never commit a
            # partial object; say so unless that error is still propagating.
            self.discard()
            if sys.exc_info()[1] is None:
                raise OSError(f"an earlier write to {self.path} failed; nothing was stored")
            return
        try:
            self._finish()
            if self.autocommit:
                self.commit()
        except BaseException:
            self.discard()
            raise
        finally:
            super().close()

    def commit(self) -> None:
        """Make the object visible (called by close, or by the transaction)."""
        if self._committed or self._discarded:
            # A write discarded inside a transaction (its exception was caught
            # and the transaction went on) stays discarded.
            return
        if self._failed:
            # A segment never reached the target (or only part of it did):
            # sealing the buffer as final would publish a shorter object
            # that authenticates.  A transaction commits files nobody closed.
            self.discard()
            raise OSError(f"an earlier write to {self.path} failed; nothing was stored")
        self._finish()
        self._sink.commit()
        self._committed = True

    def discard(self) -> None:
        """Drop everything written; nothing appears at the destination."""
        if not self._committed and not self._sink.done:
            self._sink.discard()
        self._discarded = not self._committed
        self._buf.clear()
        self._plan, self._held = None, []
        self._finished = True
        if not self.closed:
            super().close()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
        else:
            self.close()

    def __del__(self) -> None:
        # Never commit an object nobody closed: it may be truncated.
        if not getattr(self, "closed", True) and not getattr(self, "_committed", True):
            warnings.warn(f"encfs file {self.path!r} was never closed; the write was discarded",
                          ResourceWarning, stacklevel=1)
            # A finalizer must not raise; the sink's temp file is the only
            # thing left, and it is never listed.
            with contextlib.suppress(Exception):
                self.discard()
