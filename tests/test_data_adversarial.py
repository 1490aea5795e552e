"""Adversarial review of the data path over S3 (issue 11's I/O layer).

The attacker controls the storage server: here a moto server on 127.0.0.1
whose responses a test may rewrite on the wire (``LyingS3``: a wrong
Content-Range, a ranged GET answering fewer or more bytes, bytes from
another offset, an object replaced between requests), as well as the stored
ciphertext itself.  Every read, on every path issue 11 added (the one-request
probe, ranged GETs, overlapping prefetch through the Readahead, line
iteration, the async twins, ``cat_ranges`` over several objects), must then
either raise ``IntegrityError`` or return exactly the original bytes; a read
that reaches the end of the object must fail when the tail is damaged
(FORMAT.md section 7); a prefetched segment that fails must surface on the
read that needs it, never as an early end of file.

Writes: a failed or interrupted concurrent multipart upload leaves no object
and no upload behind; ``xb`` creates once under a race.  Reads keep memory
bounded.  Objects are small, with 1 KiB segments, and the probe and small-object
limits are lowered so the ranged and prefetch paths are taken.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import random
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import encfs.file
import encfs.fs
from encfs import EncryptedFileSystem
from encfs.errors import IntegrityError
from encfs.format import HEADER_REGION, TAG_BYTES, plaintext_size
from encfs.format.layout import region_for_size

try:
    from ._servers import MotoServer, serving, unique
except ImportError:  # tests/ is not a package
    from _servers import MotoServer, serving, unique

SEG = 1024
STRIDE = SEG + TAG_BYTES
NSEG = 8
SIZE = (NSEG - 1) * SEG + 300
MiB = 1024 * 1024


# -- a storage server that lies -----------------------------------------------------------------
Hook = Callable[[dict, str, list, bytes], tuple[str, list, bytes]]


class LyingS3(MotoServer):
    """moto, with a hook that may rewrite the status, headers and body of
    every GET answer (Content-Length is fixed up to match the body, as a
    server in the attacker's hands would)."""

    hook: Hook | None = None
    #: Called before moto handles any request (e.g. to make uploads slow).
    before: Callable[[dict], None] | None = None

    def _app(self, app: Any) -> Any:
        inner = super()._app(app)

        def lying(environ: dict, start_response: Any) -> Any:
            if self.before is not None:
                self.before(environ)
            hook = self.hook
            if hook is None or environ["REQUEST_METHOD"] != "GET" or environ.get("PATH_INFO", "").startswith("/moto-api"):
                return inner(environ, start_response)
            got: dict[str, Any] = {}

            def start(status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
                got["status"], got["headers"] = status, headers
                return lambda _b: None

            body = b"".join(inner(environ, start))
            status, headers, body = hook(environ, got["status"], list(got["headers"]), body)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            start_response(status, [*headers, ("Content-Length", str(len(body)))])
            return [body]

        return lying


@pytest.fixture(scope="module")
def server() -> Iterator[LyingS3]:
    with serving(LyingS3()) as srv:
        yield srv


@pytest.fixture(scope="module")
def raw(server: LyingS3) -> Any:
    """Plain s3fs on the lying server, and one bucket for the module."""
    fs = server.s3fs()
    bucket = unique("adv")
    server.boto3("s3").create_bucket(Bucket=bucket)
    fs.test_bucket = bucket
    return fs


@pytest.fixture(autouse=True)
def _honest(server: LyingS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ENCFS_AUDIT_LOG", "off")
    server.hook = server.before = None
    yield
    server.hook = server.before = None


@pytest.fixture(params=["probe-header", "probe-default"])
def efs(request: pytest.FixtureRequest, raw: Any, encfs_home: Any, monkeypatch: pytest.MonkeyPatch) -> EncryptedFileSystem:
    """enc over the lying S3, every segment read by range: the probe brings
    the header only ("probe-header") or the header and the first ~66
    segments ("probe-default"); read windows of two segments, reads of more
    than two segments split into overlapping requests."""
    monkeypatch.setattr(encfs.file, "SMALL_OBJECT", 0)
    monkeypatch.setattr(encfs.file, "SPLIT_MIN", 2 * SEG)
    # cat_file(start, end) of up to two segments sends its ranged GET along
    # with the probe, on a guess of the layout (fs.py)
    monkeypatch.setattr(encfs.fs, "SMALL_OBJECT", 0)
    monkeypatch.setattr(encfs.fs, "SPLIT_MIN", 2 * SEG)
    if request.param == "probe-header":
        monkeypatch.setattr(encfs.file, "PROBE_BYTES", HEADER_REGION)
    raw.invalidate_cache()
    return EncryptedFileSystem(fs=raw, keystore=str(encfs_home), segment_size=SEG, read_block_size=2 * SEG,
                               skip_instance_cache=True)


def _plain(seed: int, size: int = SIZE) -> bytes:
    # Lines of random length, so line iteration crosses segment boundaries.
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rnd.randbytes(rnd.randint(0, 300)).replace(b"\n", b".") + b"\n"
    return bytes(out[:size])


def _path(raw: Any, name: str) -> str:
    return f"{raw.test_bucket}/{name}-{random.getrandbits(32):08x}"


# -- every way of reading, and the oracle -------------------------------------------------------
#: (start, end) as given to cat_file: the first bytes, across a boundary,
#: the tail, exactly at EOF, beyond EOF, negative offsets.
RANGES = [(0, 10), (SEG - 5, SEG + 5), (-10, None), (SIZE, None), (SIZE + 5, SIZE + 50), (0, -1),
          (SIZE - 1, SIZE + 1)]
#: The ranges also read by seek() and read() on an open file.
SEEK_RANGES = [(SEG - 5, SEG + 5), (3 * SEG, 6 * SEG + 7), (SIZE - 10, SIZE), (SIZE, SIZE)]


def _norm(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    s = 0 if start is None else (max(0, size + start) if start < 0 else start)
    e = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
    return s, e


def _seq(efs: EncryptedFileSystem, path: str, got: list[bytes]) -> bytes:
    with efs.open(path, "rb") as f:
        while chunk := f.read(700):
            got.append(chunk)
    return b"".join(got)


def _lines(efs: EncryptedFileSystem, path: str, got: list[bytes]) -> bytes:
    with efs.open(path, "rb") as f:
        got.extend(f)  # the lines before a failure stay in ``got``
    return b"".join(got)


def _readline(efs: EncryptedFileSystem, path: str, got: list[bytes]) -> bytes:
    with efs.open(path, "rb") as f:
        while line := f.readline():
            got.append(line)
    return b"".join(got)


def _seek_read(efs: EncryptedFileSystem, path: str, start: int, end: int) -> bytes:
    with efs.open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def whole_reads(efs: EncryptedFileSystem, path: str) -> Iterator[tuple[str, Callable[[list[bytes]], bytes]]]:
    """Reads of the whole object; each appends what it released so far to ``got``."""
    yield "cat_file", lambda got: efs.cat_file(path)
    yield "open.read()", lambda got: efs.open(path, "rb").read()
    yield "sequential read(700)", lambda got: _seq(efs, path, got)
    yield "for line in f", lambda got: _lines(efs, path, got)
    yield "readline loop", lambda got: _readline(efs, path, got)
    yield "async _cat_file", lambda got: asyncio.run(efs._cat_file(path))
    yield "cat", lambda got: efs.cat([path, path + "-missing"], on_error="return")[path]


def range_reads(efs: EncryptedFileSystem, path: str, size: int
                ) -> Iterator[tuple[str, int | None, int | None, Callable[[], bytes]]]:
    for a, b in RANGES:
        yield "cat_file", a, b, lambda a=a, b=b: efs.cat_file(path, start=a, end=b)
    for a, b in SEEK_RANGES:
        s, e = _norm(size, a, b)
        yield "open.seek.read", s, max(s, e), lambda s=s, e=e: _seek_read(efs, path, s, max(s, e))

    def ranges(which: Callable[..., Any]) -> list[Any]:
        return which([path] * len(RANGES), [a for a, _ in RANGES], [b for _, b in RANGES])

    yield "cat_ranges", None, None, lambda: ranges(lambda p, s, e: efs.cat_ranges(p, s, e, on_error="return"))
    yield "async _cat_ranges", None, None, lambda: ranges(
        lambda p, s, e: asyncio.run(efs._cat_ranges(p, s, e, on_error="return")))


def check_object(efs: EncryptedFileSystem, path: str, plain: bytes, claimed: int | None, *,
                 damaged_tail: bool) -> list[str]:
    """Problems found reading ``path`` in every way (empty: all behaved).

    ``plain`` is the original plaintext, ``claimed`` the plaintext size the
    stored (or served) ciphertext size maps to (None: maps to none).  A read
    must raise IntegrityError or return ``plain``'s bytes; with
    ``damaged_tail`` every read that reaches the claimed end must raise, and
    a whole read may release only a prefix of ``plain`` before it does."""
    problems: list[str] = []
    for label, read in whole_reads(efs, path):
        got: list[bytes] = []
        try:
            out = read(got)
        except IntegrityError:
            released = b"".join(got)
            if plain[: len(released)] != released:
                problems.append(f"{label}: released WRONG BYTES before failing")
            continue
        except Exception as exc:  # noqa: BLE001 - any other error is a finding
            problems.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        if isinstance(out, BaseException):
            if not isinstance(out, IntegrityError):
                problems.append(f"{label}: returned {type(out).__name__}: {out}")
        elif damaged_tail or out != plain:
            problems.append(f"{label}: returned {len(out)} bytes ({'equal' if out == plain else 'WRONG'})")
    for label, a, b, read in range_reads(efs, path, len(plain) if claimed is None else claimed):
        try:
            out = read()
        except IntegrityError:
            continue
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{label}[{a}:{b}]: {type(exc).__name__}: {exc}")
            continue
        results = out if isinstance(out, list) else [out]
        spans = RANGES if isinstance(out, list) else [(a, b)]
        for (ra, rb), got_bytes in zip(spans, results):
            if isinstance(got_bytes, BaseException):
                if not isinstance(got_bytes, IntegrityError):
                    problems.append(f"{label}[{ra}:{rb}]: {type(got_bytes).__name__}: {got_bytes}")
                continue
            if claimed is None:
                problems.append(f"{label}[{ra}:{rb}] succeeded on an object whose size maps to none")
                continue
            s, e = _norm(claimed, ra, rb)
            if got_bytes != plain[s:max(s, e)]:
                problems.append(f"{label}[{ra}:{rb}] returned WRONG BYTES")
            elif damaged_tail and e >= claimed:
                problems.append(f"{label}[{ra}:{rb}] reached the end of a damaged object and succeeded")
    return problems


def _claimed(ct_size: int) -> int | None:
    region = region_for_size(ct_size)
    return None if region is None else plaintext_size(ct_size, SEG, region)


# -- truncation and extension at every boundary -------------------------------------------------
def _tail_damage(ct: bytes) -> dict[str, bytes]:
    H = HEADER_REGION
    cuts = {"header only": H, "header+1": H + 1, "header+16": H + 16, "mid segment 0": H + 500,
            "minus 1 byte": len(ct) - 1, "minus 16 bytes": len(ct) - 16, "mid final segment": len(ct) - 100}
    for k in range(1, NSEG):
        cuts[f"at boundary {k}"] = H + k * STRIDE
    for k in (1, NSEG - 1):
        cuts[f"boundary {k} + 16"] = H + k * STRIDE + 16
    out = {name: ct[:n] for name, n in cuts.items()}
    body = ct[H:]
    out["final segment removed"] = ct[: H + (NSEG - 1) * STRIDE]
    out["segment 0 appended"] = ct + body[:STRIDE]
    out["final segment appended again"] = ct + body[(NSEG - 1) * STRIDE :]
    out["random segment appended"] = ct + os.urandom(STRIDE)
    out["one byte appended"] = ct + b"\0"
    out["tag appended"] = ct + body[-TAG_BYTES:]
    return out


def test_truncation_and_extension_at_every_boundary(efs: EncryptedFileSystem, raw: Any) -> None:
    plain = _plain(1)
    path = _path(raw, "trunc")
    efs.pipe_file(path, plain)
    assert not check_object(efs, path, plain, SIZE, damaged_tail=False)  # positive control
    ct = raw.cat_file(path)
    problems: dict[str, list[str]] = {}
    for name, damaged in _tail_damage(ct).items():
        raw.pipe_file(path, damaged)
        found = check_object(efs, path, plain, _claimed(len(damaged)), damaged_tail=True)
        if found:
            problems[name] = found
    assert not problems


# -- a server that lies about sizes and ranges -------------------------------------------------------
def _content_range_off_by(delta: int) -> Hook:
    def hook(environ: dict, status: str, headers: list, body: bytes) -> tuple[str, list, bytes]:
        out = []
        for k, v in headers:
            if k.lower() == "content-range":
                head, _, total = v.rpartition("/")
                v = f"{head}/{int(total) + delta}"
            out.append((k, v))
        return status, out, body
    return hook


def _body(change: Callable[[bytes], bytes], only_ranged_after_probe: bool = True) -> Hook:
    def hook(environ: dict, status: str, headers: list, body: bytes) -> tuple[str, list, bytes]:
        rng = environ.get("HTTP_RANGE", "")
        if only_ranged_after_probe and (not rng or rng.startswith("bytes=0-")):
            return status, headers, body  # the probe stays honest
        return status, headers, change(body)
    return hook


#: name: (hook, the Content-Range size error, or None when the sizes are told right)
LIES: dict[str, tuple[Hook, int | None]] = {
    "Content-Range size -1": (_content_range_off_by(-1), -1),
    "Content-Range size +1": (_content_range_off_by(1), 1),
    "Content-Range size - one segment": (_content_range_off_by(-STRIDE), -STRIDE),
    "Content-Range size + one segment": (_content_range_off_by(STRIDE), STRIDE),
    "Content-Range size + 1 MiB": (_content_range_off_by(MiB), MiB),
    "ranged GET one byte short": (_body(lambda b: b[:-1]), None),
    "ranged GET one byte long": (_body(lambda b: b + b"\0"), None),
    "ranged GET one segment long": (_body(lambda b: b + b[:STRIDE]), None),
    "ranged GET empty": (_body(lambda b: b""), None),
    "ranged GET shifted by one segment": (_body(lambda b: b[STRIDE:] + b[:STRIDE]), None),
    "ranged GET one bit flipped": (_body(lambda b: bytes([b[0] ^ 1]) + b[1:]), None),
    "ranged GET answered with the whole object": (None, None),  # see below
}


def _whole_object(environ: dict, status: str, headers: list, body: bytes) -> tuple[str, list, bytes]:
    return status, headers, body


@pytest.mark.parametrize("lie", list(LIES))
def test_lying_server(efs: EncryptedFileSystem, raw: Any, server: LyingS3, lie: str) -> None:
    """A server that lies about the object size or answers ranged GETs with
    other bytes: never anything but the original's bytes; a read that
    reaches the (claimed) end fails when the size is a lie."""
    plain = _plain(2)
    path = _path(raw, "lie")
    efs.pipe_file(path, plain)
    ct = raw.cat_file(path)
    hook, delta = LIES[lie]
    if hook is None:  # the ranges asked for after the probe, answered with the whole object
        hook = _body(lambda b: ct)
    server.hook = hook
    claimed = SIZE if delta is None else _claimed(len(ct) + delta)
    assert not check_object(efs, path, plain, claimed, damaged_tail=delta is not None)


# -- a damaged segment further on fails the read that needs it, not an earlier one ----------------
def _sequential_until_failure(efs: EncryptedFileSystem, path: str, step: int) -> tuple[bytes, int | None]:
    """Read ``path`` by ``step`` bytes; return what was read and the offset
    of the read that raised IntegrityError (None: none did)."""
    got = bytearray()
    with efs.open(path, "rb") as f:
        while True:
            try:
                chunk = f.read(step)
            except IntegrityError:
                return bytes(got), len(got)
            if not chunk:
                return bytes(got), None
            got += chunk


@pytest.mark.parametrize("target", ["memory", "local", "memory-prefetch", "s3-prefetch"])
@pytest.mark.parametrize("step", [256, 700, 3000])
def test_damage_ahead_fails_only_the_read_that_needs_it(target: str, step: int, raw: Any, memfs: Any,
                                                        tmp_path: Any, encfs_home: Any, prefetching: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads ahead (sequential windows, overlapping prefetched chunks)
    decrypt segments nobody asked for yet: one of them failing must not fail
    the reads before it, and must fail the read that covers it (never end
    the file early)."""
    opts: dict[str, Any] = {"keystore": str(encfs_home), "segment_size": SEG, "skip_instance_cache": True}
    if target == "s3-prefetch":
        monkeypatch.setattr(encfs.file, "SMALL_OBJECT", 0)
        monkeypatch.setattr(encfs.file, "PROBE_BYTES", HEADER_REGION)
        efs = EncryptedFileSystem(fs=raw, read_block_size=2 * SEG, **opts)
        path = _path(raw, "ahead")
    elif target == "local":
        efs = EncryptedFileSystem(target_protocol="file", **opts)
        path = str(tmp_path / "ahead.bin")
    else:
        efs = EncryptedFileSystem(fs=memfs, **opts)
        if target == "memory-prefetch":
            efs = prefetching(efs)
        path = "/ahead.bin"
    data = os.urandom(40 * SEG)
    efs.pipe_file(path, data)
    ct = bytearray(efs.fs.cat_file(path))
    bad = 20
    ct[HEADER_REGION + bad * STRIDE + 7] ^= 0x10
    efs.fs.pipe_file(path, bytes(ct))
    got, failed_at = _sequential_until_failure(efs, path, step)
    assert got == data[: len(got)]
    assert failed_at is not None, "the damaged segment was never reported"
    # the read that failed is the one that covers segment 20
    assert failed_at > bad * SEG - step, f"failed at {failed_at}, {bad * SEG - failed_at} bytes before the damage"
    # a random read behind the damage after a sequential run still works
    reader = efs.reader(path)
    for pos in range(0, bad * SEG - step, step):
        assert reader.read(pos, pos + step) == data[pos : pos + step]
    with pytest.raises(IntegrityError):
        reader.read(bad * SEG, bad * SEG + 1)


# -- the object replaced between requests --------------------------------------------------------
@pytest.mark.parametrize("other", ["same size", "larger", "smaller", "compact"])
def test_object_replaced_after_open(efs: EncryptedFileSystem, raw: Any, other: str) -> None:
    """Another valid object (same path, same root key, the data key from the
    cache) replaces the one opened: reads through the open file or reader
    return the first object's bytes or fail; never the second's, never a
    mix (its segments fail under the first object's body key)."""
    a = _plain(3)
    b = {"same size": _plain(4), "larger": _plain(4, SIZE + 3 * SEG), "smaller": _plain(4, 2 * SEG + 1),
         "compact": b"tiny"}[other]
    path = _path(raw, "swap")
    efs.pipe_file(path, a)
    f = efs.open(path, "rb")
    reader = efs.reader(path)
    lines = efs.open(path, "rb")
    first = lines.readline()
    efs.pipe_file(path, b)  # the same cached data key, a new object id
    outcomes: list[str] = []
    for label, read in [("read()", f.read), ("reader ranges", lambda: b"".join(
            reader.read(p, p + 333) for p in range(0, SIZE, 333))), ("lines", lambda: first + b"".join(lines))]:
        try:
            out = read()
        except IntegrityError:
            outcomes.append("failed")
            continue
        assert out == a, f"{label} returned bytes of neither object alone"
        outcomes.append("first object")
    if efs.io.concurrent and encfs.file.PROBE_BYTES == HEADER_REGION:
        # nothing but the header came with the probe (the line reader holds a
        # window of the first object, authenticated before the swap)
        assert outcomes[:2] == ["failed"] * 2
    for handle in (f, lines):
        handle.close()


def test_object_replaced_during_prefetch(efs: EncryptedFileSystem, raw: Any) -> None:
    """The object is replaced while a sequential read has ranged GETs in
    flight: the bytes released are a prefix of the first object, and the
    read that reaches the second object's segments fails."""
    a, b = _plain(5, 120 * SEG), _plain(6, 120 * SEG)  # past the default probe too
    path = _path(raw, "swap-prefetch")
    efs.pipe_file(path, a)
    swapped = threading.Event()
    real_submit = efs.io.submit
    calls = []

    def submit(p: str, start: int, end: int) -> concurrent.futures.Future[bytes]:
        calls.append(start)
        if len(calls) == 3 and not swapped.is_set():
            efs.pipe_file(path, b)  # same path, same cached data key
            swapped.set()
        return real_submit(p, start, end)

    efs.io.submit = submit  # type: ignore[method-assign]
    try:
        got, failed_at = _sequential_until_failure(efs, path, 700)
    finally:
        del efs.io.submit
    assert swapped.is_set() and calls
    assert got == a[: len(got)]
    assert failed_at is not None and failed_at < len(a)


# -- splicing, reordering and duplicating segments under one cached data key ----------------------
def test_splice_reorder_duplicate_over_s3(efs: EncryptedFileSystem, raw: Any) -> None:
    """Two objects of one size under the same cached data key: a segment of
    one in the other, two segments swapped, one duplicated over the next.
    Reads covering the damaged segments fail; all others return exact bytes."""
    a, b = _plain(7), _plain(8)
    pa, pb = _path(raw, "splice-a"), _path(raw, "splice-b")
    efs.pipe_file(pa, a)
    efs.pipe_file(pb, b)
    assert efs.cache_stats()["cache"]["hits"] >= 1 if "cache" in efs.cache_stats() else True
    ca, cb = raw.cat_file(pa), raw.cat_file(pb)

    def seg(ct: bytes, i: int) -> bytes:
        return ct[HEADER_REGION + i * STRIDE : HEADER_REGION + (i + 1) * STRIDE]

    def with_segments(ct: bytes, repl: dict[int, bytes]) -> bytes:
        out = bytearray(ct)
        for i, s in repl.items():
            out[HEADER_REGION + i * STRIDE : HEADER_REGION + i * STRIDE + len(s)] = s
        return bytes(out)

    cases = {
        "segment 3 from the other object": (with_segments(ca, {3: seg(cb, 3)}), {3}),
        "segments 2 and 3 swapped": (with_segments(ca, {2: seg(ca, 3), 3: seg(ca, 2)}), {2, 3}),
        "segment 2 duplicated over 3": (with_segments(ca, {3: seg(ca, 2)}), {3}),
        "header of the other object": (cb[:HEADER_REGION] + ca[HEADER_REGION:], set(range(NSEG))),
    }
    problems = []
    for name, (damaged, bad) in cases.items():
        raw.pipe_file(pa, damaged)
        header_swap = name.startswith("header")
        for start in range(0, SIZE, 600):
            for end in (start + 1, start + 1500, SIZE):
                touched = set(range(start // SEG, (min(end, SIZE) - 1) // SEG + 1))
                try:
                    out = efs.cat_file(pa, start=start, end=end)
                except IntegrityError:
                    if not touched & bad and not header_swap:
                        problems.append(f"{name}: [{start}:{end}] failed without touching a damaged segment")
                    continue
                if out != a[start:end]:
                    problems.append(f"{name}: [{start}:{end}] returned WRONG BYTES")
                elif touched & bad:
                    problems.append(f"{name}: [{start}:{end}] covers a damaged segment and succeeded")
        got: list[bytes] = []
        try:
            _seq(efs, pa, got)
            problems.append(f"{name}: a sequential read succeeded")
        except IntegrityError:
            assert b"".join(got) == a[: len(b"".join(got))]
    assert not problems


# -- v1.0 / v1.1 header confusion and region tampering over S3 --------------------------------------
def test_compact_lane_and_region_confusion_over_s3(efs: EncryptedFileSystem, raw: Any) -> None:
    import struct

    small = b"a compact object"
    path = _path(raw, "compact")
    efs.pipe_file(path, small)
    ct = raw.cat_file(path)
    (region,) = struct.unpack_from(">I", ct, 8)
    assert region == 496 and ct[4] == 0x11
    body = ct[region:]
    variants = {
        "region field says 4096, body moved after 4096": ct[:8] + struct.pack(">I", HEADER_REGION) + ct[12:region]
        + bytes(HEADER_REGION - region) + body,
        "body moved after 4096, field unchanged": ct[:region] + bytes(HEADER_REGION - region) + body,
        "version byte says 1.0": ct[:4] + b"\x01" + ct[5:],
        "padded into the 1536 lane": ct + bytes(1552 - len(ct)),
        "padded into the v1.0 sizes": ct + bytes(4112 - len(ct)),
        "cut below the smallest lane": ct[:511],
    }
    for name, damaged in variants.items():
        raw.pipe_file(path, damaged)
        for read in (lambda: efs.cat_file(path), lambda: efs.cat_file(path, start=0, end=2),
                     lambda: efs.open(path, "rb").readline()):
            with pytest.raises((IntegrityError,)) as info:
                read()
            assert info.type is IntegrityError or name.startswith("cut"), name


# -- exact-key path binding, through both URL forms --------------------------------------------------
def test_exact_key_binding_over_s3_url_forms(efs: EncryptedFileSystem, raw: Any, server: LyingS3) -> None:
    bucket = raw.test_bucket
    name = f"bind-{random.getrandbits(32):08x}"
    efs.pipe_file(f"enc+s3://{bucket}/{name}/x", b"bound to d/x")
    assert efs.cat_file(f"enc::s3://{bucket}/{name}/x") == b"bound to d/x"
    assert efs.cat_file(f"{bucket}/{name}/x") == b"bound to d/x"
    client = server.boto3("s3")
    refused = []
    for key in (f"{name}/x/", f"{name}/x//", f"{name}//x", f"{name}/./x", f"{name}/y/../x", f"{name}/X"):
        client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": f"{name}/x"})
        for url in (f"enc+s3://{bucket}/{key}", f"enc::s3://{bucket}/{key}"):
            try:
                out = efs.cat_file(url)
            except IntegrityError:
                refused.append(key)
                continue
            except FileNotFoundError:
                continue  # the client's path handling names another key: nothing read
            raise AssertionError(f"{url} read a copy made without keys: {out!r}")
    assert {f"{name}/x/", f"{name}/x//", f"{name}/X"} <= set(refused)


# -- memory stays bounded ----------------------------------------------------------------------------
def test_sequential_read_of_a_large_object_keeps_memory_bounded(memfs: Any, encfs_home: Any) -> None:
    """64 MiB read through ``read(1 MiB)`` and ``for line in f`` on a memory
    target (default segments and windows): the reader never holds more than
    a few windows, whatever the object size."""
    efs = EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), skip_instance_cache=True)
    size = 64 * MiB
    line = b"x" * 4095 + b"\n"
    with efs.open("/big.bin", "wb") as f:
        for _ in range(size // MiB):
            f.write(line * (MiB // len(line)))
    tracemalloc.start()
    try:
        n = 0
        with efs.open("/big.bin", "rb") as f:
            while chunk := f.read(MiB):
                n += len(chunk)
                del chunk
        _, peak_read = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        lines = 0
        with efs.open("/big.bin", "rb") as f:
            for got in f:
                lines += 1
        _, peak_lines = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == size and lines == size // len(line) and got == line
    assert peak_read < 8 * MiB, f"read(1 MiB) loop peaked at {peak_read / MiB:.1f} MiB"
    assert peak_lines < 8 * MiB, f"line iteration peaked at {peak_lines / MiB:.1f} MiB"


def test_s3_prefetch_bytes_in_flight_are_bounded(raw: Any, encfs_home: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most READ_AHEAD_REQUESTS windows of ciphertext requested and not
    yet consumed, over S3, for a sequential read and a large random one."""
    from encfs.readahead import READ_AHEAD_REQUESTS

    monkeypatch.setattr(encfs.file, "SMALL_OBJECT", 0)
    monkeypatch.setattr(encfs.file, "PROBE_BYTES", HEADER_REGION)
    monkeypatch.setattr(encfs.file, "SPLIT_MIN", 2 * SEG)
    efs = EncryptedFileSystem(fs=raw, keystore=str(encfs_home), segment_size=SEG, read_block_size=2 * SEG,
                              skip_instance_cache=True)
    data = os.urandom(100 * SEG)
    path = _path(raw, "inflight")
    efs.pipe_file(path, data)
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    real_submit = efs.io.submit

    def submit(p: str, start: int, end: int) -> concurrent.futures.Future[bytes]:
        with lock:
            state["now"] += end - start
            state["peak"] = max(state["peak"], state["now"])
        fut = real_submit(p, start, end)

        def settle(_f: Any) -> None:  # cancelled or answered: no longer held
            with lock:
                state["now"] -= end - start
        fut.add_done_callback(settle)
        return fut

    efs.io.submit = submit  # type: ignore[method-assign]
    with efs.open(path, "rb") as f:
        assert b"".join(iter(lambda: f.read(500), b"")) == data
    assert efs.cat_file(path, start=SEG, end=90 * SEG) == data[SEG : 90 * SEG]
    assert 0 < state["peak"] <= READ_AHEAD_REQUESTS * 2 * STRIDE


# -- random read plans over S3 with the prefetch path ------------------------------------------------
@st.composite
def plans(draw: Any) -> tuple[int, list[tuple[Any, ...]]]:
    size = draw(st.one_of(st.integers(0, 14 * SEG), st.sampled_from([0, 1, SEG - 1, SEG, SEG + 1, 5 * SEG])))
    pos = st.integers(-100, size + 200)
    ops = draw(st.lists(st.one_of(
        st.tuples(st.just("seek"), pos),
        st.tuples(st.just("read"), st.one_of(st.just(-1), st.integers(0, 4 * SEG))),
        st.tuples(st.just("readline"), st.one_of(st.just(-1), st.integers(0, 500))),
        st.tuples(st.just("lines"), st.integers(1, 20)),
        st.tuples(st.just("cat"), st.one_of(st.none(), pos, st.integers(-size - 5, 0)),
                  st.one_of(st.none(), pos, st.integers(-size - 5, 0))),
    ), min_size=1, max_size=12))
    return size, ops


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(plan=plans(), seed=st.integers(0, 2**16))
def test_random_read_plans_over_s3_prefetch(efs: EncryptedFileSystem, raw: Any, plan: Any, seed: int) -> None:
    """Random seek/read/readline/iteration/cat_file plans on S3 through the
    probe, ranged GETs and the Readahead, against Python's own BytesIO."""
    path = _path(raw, "plan")
    _run_plan(efs, path, plan, seed)
    raw.rm_file(path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(plan=plans(), seed=st.integers(0, 2**16), local=st.booleans(), window=st.sampled_from([None, 3000]))
def test_random_read_plans_over_memory_and_local(memfs: Any, tmp_path: Any, encfs_home: Any, plan: Any,
                                                 seed: int, local: bool, window: int | None) -> None:
    """The same plans where reads decrypt in place (local and memory:
    line windows cut after their last newline in the scratch buffer), with
    line windows of the default size and of a few segments."""
    opts: dict[str, Any] = {"keystore": str(encfs_home), "segment_size": SEG, "skip_instance_cache": True}
    if local:
        efs, path = EncryptedFileSystem(target_protocol="file", **opts), str(tmp_path / "plan.bin")
    else:
        efs, path = EncryptedFileSystem(fs=memfs, **opts), "/plan.bin"
    saved = encfs.file.LINE_WINDOW
    if window:
        encfs.file.LINE_WINDOW = window
    try:
        _run_plan(efs, path, plan, seed)
    finally:
        encfs.file.LINE_WINDOW = saved


def _run_plan(efs: EncryptedFileSystem, path: str, plan: Any, seed: int) -> None:
    import itertools

    size, ops = plan
    data = _plain(seed, size)
    efs.pipe_file(path, data)
    oracle = io.BytesIO(data)
    with efs.open(path, "rb") as f:
        for op in ops:
            kind = op[0]
            if kind == "seek":
                target = max(0, op[1])
                assert f.seek(target) == oracle.seek(target)
            elif kind == "read":
                assert f.read(op[1]) == oracle.read(op[1]), op
            elif kind == "readline":
                assert f.readline(op[1]) == oracle.readline(op[1]), op
            elif kind == "lines":
                assert list(itertools.islice(f, op[1])) == list(itertools.islice(oracle, op[1])), op
            else:
                a, b = op[1], op[2]
                s, e = _norm(size, a, b)
                assert efs.cat_file(path, start=a, end=b) == data[s:max(s, e)], op
            assert f.tell() == oracle.tell(), op


# -- writes: failed, interrupted and racing -----------------------------------------------------------
def _uploads(server: LyingS3, raw: Any) -> list[Any]:
    return server.boto3("s3").list_multipart_uploads(Bucket=raw.test_bucket).get("Uploads", [])


def _failing_part(monkeypatch: pytest.MonkeyPatch, number: int, exc: BaseException, sync: bool = False) -> None:
    """Part ``number`` of every multipart upload fails: in flight (its
    request fails on the loop) or, with ``sync``, as it is handed over (an
    interrupt in the writing thread while earlier parts are in flight)."""
    from encfs.targets.s3 import S3MultipartSink

    real = S3MultipartSink._submit

    def submit(self: Any, method: str, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if method == "upload_part" and kwargs["PartNumber"] == number:
            if sync:
                raise exc

            async def fail() -> Any:
                raise exc
            return asyncio.run_coroutine_threadsafe(fail(), self.fs.loop)
        return real(self, method, **kwargs)

    monkeypatch.setattr(S3MultipartSink, "_submit", submit)


def test_pipe_file_with_a_failed_part_stores_nothing(raw: Any, server: LyingS3, encfs_home: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``pipe_file`` of a value sealed whole (write_whole) that still takes
    a multipart upload: a failed part, no object, no upload left."""
    efs = EncryptedFileSystem(fs=raw, keystore=str(encfs_home), skip_instance_cache=True)
    path = _path(raw, "whole")
    _failing_part(monkeypatch, 1, OSError("injected part failure"))
    with pytest.raises(OSError, match="injected part failure"):
        efs.pipe_file(path, os.urandom(8 * MiB))  # at most WHOLE_WRITE: sealed whole, one part
    assert not raw.exists(path) and not _uploads(server, raw)
    monkeypatch.undo()
    efs.pipe_file(path, b"then it works")
    assert efs.cat_file(path) == b"then it works"


@pytest.mark.parametrize("how", ["in the with block", "while handing over a part", "in a part, explicit close"])
def test_interrupt_during_a_concurrent_upload_stores_nothing(raw: Any, server: LyingS3, encfs_home: Any,
                                                             monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    efs = EncryptedFileSystem(fs=raw, keystore=str(encfs_home), skip_instance_cache=True)
    path = _path(raw, "interrupt")
    block = os.urandom(MiB)
    if how == "in the with block":
        with pytest.raises(KeyboardInterrupt), efs.open(path, "wb") as f:
            for _ in range(14):  # two parts in flight
                f.write(block)
            raise KeyboardInterrupt
    elif how == "while handing over a part":
        _failing_part(monkeypatch, 3, KeyboardInterrupt(), sync=True)
        with pytest.raises(KeyboardInterrupt), efs.open(path, "wb") as f:
            for _ in range(30):
                f.write(block)
    else:
        _failing_part(monkeypatch, 2, OSError("injected part failure"))
        f = efs.open(path, "wb")
        with pytest.raises(OSError):
            try:
                for _ in range(30):
                    f.write(block)
            finally:
                f.close()  # as pandas does: never commits what failed
    assert not raw.exists(path)
    assert not _uploads(server, raw)


def test_aborted_upload_outlives_no_part_in_flight(raw: Any, server: LyingS3, encfs_home: Any) -> None:
    """A write that fails while parts are uploading: the abort is sent only
    once every part request in flight has been answered.  (A part request
    cancelled on the client side may still be stored by S3 after the abort;
    S3 then keeps that part's storage until the upload is aborted again.)"""
    import time

    efs = EncryptedFileSystem(fs=raw, keystore=str(encfs_home), skip_instance_cache=True)
    path = _path(raw, "abort-order")
    events: list[tuple[str, float]] = []
    lock = threading.Lock()

    def before(environ: dict) -> None:
        query = environ.get("QUERY_STRING", "")
        if environ["REQUEST_METHOD"] == "PUT" and "partNumber" in query:
            time.sleep(0.3)  # a slow upload: still in flight when the writer fails
            with lock:
                events.append(("part answered", time.monotonic()))
        elif environ["REQUEST_METHOD"] == "DELETE" and "uploadId" in query:
            with lock:
                events.append(("abort", time.monotonic()))

    server.before = before
    with pytest.raises(RuntimeError), efs.open(path, "wb") as f:
        for _ in range(20):  # two parts sent, both slow
            f.write(os.urandom(MiB))
        raise RuntimeError("fail while parts upload")
    time.sleep(0.5)  # let any part request the client gave up on finish on the server
    server.before = None
    aborts = [t for name, t in events if name == "abort"]
    assert aborts, events
    late = [t - aborts[0] for name, t in events if name == "part answered" and t > aborts[0]]
    assert not late, f"{len(late)} part request(s) still running when the upload was aborted"
    assert not raw.exists(path) and not _uploads(server, raw)


@pytest.mark.parametrize("target", ["memory", "local", "s3"])
def test_xb_race_creates_once(target: str, raw: Any, memfs: Any, tmp_path: Any, encfs_home: Any,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers open the same new path with ``xb`` (both pass the early
    check) and close at the same moment: one object, the other writer gets
    FileExistsError, the object is the winner's."""
    import time

    opts: dict[str, Any] = {"keystore": str(encfs_home), "skip_instance_cache": True}
    if target == "s3":
        efs, path = EncryptedFileSystem(fs=raw, **opts), _path(raw, "xb")
    elif target == "local":
        efs, path = EncryptedFileSystem(target_protocol="file", **opts), str(tmp_path / "xb.bin")
    else:
        efs, path = EncryptedFileSystem(fs=memfs, **opts), "/xb.bin"
    real_exists = type(efs.fs).exists

    def slow_exists(self: Any, p: str, **kw: Any) -> bool:
        found = real_exists(self, p, **kw)
        time.sleep(0.05)  # widen the window between the check and the create
        return found

    monkeypatch.setattr(type(efs.fs), "exists", slow_exists)
    files = [efs.open(path, "xb") for _ in range(2)]
    for i, f in enumerate(files):
        f.write(b"writer %d" % i)
    start = threading.Barrier(2)
    results: list[Any] = [None, None]

    def close(i: int) -> None:
        start.wait()
        try:
            files[i].close()
            results[i] = "ok"
        except FileExistsError:
            results[i] = "exists"

    threads = [threading.Thread(target=close, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.undo()
    assert sorted(results) == ["exists", "ok"], results
    assert efs.cat_file(path) == b"writer %d" % results.index("ok")


def test_failed_transaction_on_s3_leaves_nothing(raw: Any, server: LyingS3, encfs_home: Any) -> None:
    efs = EncryptedFileSystem(fs=raw, keystore=str(encfs_home), skip_instance_cache=True)
    big, small = _path(raw, "tx-big"), _path(raw, "tx-small")
    with pytest.raises(RuntimeError), efs.transaction:
        efs.pipe_file(big, os.urandom(11 * MiB))  # a multipart upload, parts sent
        efs.pipe_file(small, b"small")
        with efs.open(big + "-2", "wb") as f:
            f.write(b"closed inside")
        raise RuntimeError("roll back")
    for p in (big, small, big + "-2"):
        assert not raw.exists(p)
    assert not _uploads(server, raw)


def test_cat_file_layout_guess_with_another_segment_size(raw: Any, encfs_home: Any, server: LyingS3,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """cat_file(start, end) fetches its segments with the probe, placed by
    the reading filesystem's segment size: an object written with another
    segment size (or a lying answer to that early GET) still reads exactly,
    or fails."""
    monkeypatch.setattr(encfs.fs, "SMALL_OBJECT", 0)
    monkeypatch.setattr(encfs.file, "PROBE_BYTES", HEADER_REGION)
    used = []
    real_fetch = encfs.file.ObjectReader._fetch

    def fetch(self: Any, start: int, end: int) -> Any:
        if self._guess is not None and self._guess[0] == start:
            used.append(start)
        return real_fetch(self, start, end)

    monkeypatch.setattr(encfs.file.ObjectReader, "_fetch", fetch)
    writer = EncryptedFileSystem(fs=raw, keystore=str(encfs_home), segment_size=SEG, skip_instance_cache=True)
    data = _plain(11, 30 * SEG + 5)
    path = _path(raw, "guess")
    writer.pipe_file(path, data)
    for seg in (SEG, 2 * SEG, 3 * SEG):
        reader = EncryptedFileSystem(fs=raw, keystore=str(encfs_home), segment_size=seg, skip_instance_cache=True)
        for start in range(0, len(data), 2900):
            assert reader.cat_file(path, start=start, end=start + 1500) == data[start : start + 1500]
    assert used, "the guessed range was never the one read"
    server.hook = _body(lambda b: bytes([b[0] ^ 1]) + b[1:])
    for start in range(0, len(data), 2900):
        with pytest.raises(IntegrityError):
            writer.cat_file(path, start=start, end=start + 1500)


def test_get_file_of_a_truncated_object_leaves_no_local_file(efs: EncryptedFileSystem, raw: Any,
                                                             tmp_path: Any) -> None:
    plain = _plain(12)
    path = _path(raw, "get")
    efs.pipe_file(path, plain)
    raw.pipe_file(path, raw.cat_file(path)[: HEADER_REGION + (NSEG - 1) * STRIDE])  # final segment removed
    dest = tmp_path / "out.bin"
    with pytest.raises(IntegrityError):
        efs.get_file(path, str(dest))
    assert list(tmp_path.iterdir()) == []


# -- random damage, random reads over S3 prefetch: never a wrong byte ---------------------------------
body_edits = st.lists(st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 12 * STRIDE), st.integers(0, 7)),
    st.tuples(st.just("truncate"), st.integers(0, 12 * STRIDE), st.just(0)),
    st.tuples(st.just("append"), st.integers(1, 2 * STRIDE), st.integers(0, 1)),
    st.tuples(st.just("swap"), st.integers(0, 11), st.integers(0, 11)),
    st.tuples(st.just("copy"), st.integers(0, 11), st.integers(0, 11)),
), min_size=1, max_size=3)


def _damage_body(ct: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    head, body = ct[:HEADER_REGION], bytearray(ct[HEADER_REGION:])
    n = len(body) // STRIDE
    for op, a, b in ops:
        if op == "flip" and a < len(body):
            body[a] ^= 1 << b
        elif op == "truncate":
            del body[a:]
        elif op == "append":
            body += os.urandom(a) if b else body[:a]
        elif op in ("swap", "copy") and n:
            i, j = a % n, b % n
            si, sj = body[i * STRIDE : (i + 1) * STRIDE], body[j * STRIDE : (j + 1) * STRIDE]
            body[j * STRIDE : (j + 1) * STRIDE] = si
            if op == "swap":
                body[i * STRIDE : (i + 1) * STRIDE] = sj
    return head + bytes(body)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(ops=body_edits, plan=plans(), seed=st.integers(0, 2**16))
def test_random_body_damage_over_s3_prefetch_never_yields_wrong_bytes(efs: EncryptedFileSystem, raw: Any,
                                                                      ops: Any, plan: Any, seed: int) -> None:
    size, reads = plan
    size = max(size, 3 * SEG)
    data = _plain(seed, size)
    path = _path(raw, "fuzz")
    efs.pipe_file(path, data)
    ct = raw.cat_file(path)
    bad = _damage_body(ct, ops)
    raw.pipe_file(path, bad)
    try:
        f = efs.open(path, "rb")
    except IntegrityError:
        return
    pos = 0
    with f:
        for op in [*reads, ("read", -1)]:
            try:
                if op[0] == "seek":
                    pos = f.seek(max(0, op[1]))
                    continue
                if op[0] == "cat":
                    s, e = _norm(f.size, op[1], op[2])
                    assert efs.cat_file(path, start=op[1], end=op[2]) == data[s:max(s, e)], op
                    continue
                if op[0] == "read":
                    got = f.read(op[1])
                elif op[0] == "readline":
                    got = f.readline(op[1])
                else:
                    got = b"".join(next(f, b"") for _ in range(op[1]))
                assert got == data[pos : pos + len(got)], op
                pos += len(got)
            except IntegrityError:
                pos = f.seek(pos)
    if bad != ct:
        with pytest.raises(IntegrityError):
            efs.cat_file(path)
    raw.rm_file(path)


@pytest.mark.parametrize("local", [False, True])
def test_line_reading_of_damaged_tails_on_memory_and_local(memfs: Any, tmp_path: Any, encfs_home: Any,
                                                           local: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``for line in f`` and ``readline`` where reads decrypt in place (line
    windows cut in the scratch buffer), with windows of a few segments:
    a truncated or extended object fails before the iteration ends, and the
    lines released before are the original's."""
    monkeypatch.setattr(encfs.file, "LINE_WINDOW", 3000)
    opts: dict[str, Any] = {"keystore": str(encfs_home), "segment_size": SEG, "skip_instance_cache": True}
    if local:
        efs, path = EncryptedFileSystem(target_protocol="file", **opts), str(tmp_path / "lines.bin")
    else:
        efs, path = EncryptedFileSystem(fs=memfs, **opts), "/lines.bin"
    plain = _plain(13)
    efs.pipe_file(path, plain)
    ct = efs.fs.cat_file(path)
    problems = []
    for name, damaged in _tail_damage(ct).items():
        efs.fs.pipe_file(path, damaged)
        for label, read in [("for line in f", _lines), ("readline loop", _readline)]:
            got: list[bytes] = []
            try:
                read(efs, path, got)
                problems.append(f"{name}: {label} ended without an error")
            except IntegrityError:
                if plain[: len(b"".join(got))] != b"".join(got):
                    problems.append(f"{name}: {label} released WRONG BYTES")
    assert not problems


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(plan=plans(), seed=st.integers(0, 2**16), lies=st.lists(st.sampled_from([None, *LIES]), min_size=1,
                                                                max_size=6))
def test_random_lies_per_request_never_yield_wrong_bytes(efs: EncryptedFileSystem, raw: Any, server: LyingS3,
                                                         plan: Any, seed: int, lies: list[str | None]) -> None:
    """Each GET answered with the next lie of a random list (None: the
    truth), under a random read plan: every answer is the original's bytes
    or IntegrityError."""
    size, ops = plan
    data = _plain(seed, max(size, 1))
    path = _path(raw, "lies")
    efs.pipe_file(path, data)
    ct = raw.cat_file(path)
    turn = iter(range(10**6))

    def hook(environ: dict, status: str, headers: list, body: bytes) -> tuple[str, list, bytes]:
        lie = lies[next(turn) % len(lies)]
        if lie is None:
            return status, headers, body
        chosen = LIES[lie][0] or _body(lambda b: ct)
        return chosen(environ, status, headers, body)

    server.hook = hook
    try:
        f = efs.open(path, "rb")
    except IntegrityError:
        return
    pos = 0
    with f:
        for op in [*ops, ("read", -1)]:
            try:
                if op[0] == "seek":
                    pos = f.seek(max(0, op[1]))
                    continue
                if op[0] == "cat":
                    # bounds from the end would depend on the size each lie claims
                    a, b = (None if x is None or x < 0 else x for x in op[1:])
                    got = efs.cat_file(path, start=a, end=b)
                    assert got == data[a:b], op  # the whole range: a lie never shortens an answer
                    continue
                if op[0] == "read":
                    got = f.read(op[1])
                    want = data[pos:] if op[1] < 0 else data[pos : pos + op[1]]
                elif op[0] == "readline":
                    got = f.readline(op[1])
                    want = io.BytesIO(data[pos:]).readline(op[1])
                else:
                    got = b"".join(next(f, b"") for _ in range(op[1]))
                    rest = io.BytesIO(data[pos:])
                    want = b"".join(rest.readline() for _ in range(op[1]))
                assert got == want, op
                pos += len(got)
            except IntegrityError:
                pos = f.seek(pos)


def test_discard_on_the_s3fs_loop_does_not_hang(raw: Any, server: LyingS3, encfs_home: Any) -> None:
    """A write file discarded on s3fs's own event loop (a finalizer the
    garbage collector runs there) cannot wait for that loop: it gives up its
    parts in flight instead of hanging the loop forever."""
    import time

    efs = EncryptedFileSystem(fs=raw, keystore=str(encfs_home), skip_instance_cache=True)
    path = _path(raw, "discard-on-loop")
    server.before = lambda environ: time.sleep(0.2) if "partNumber" in environ.get("QUERY_STRING", "") else None
    f = efs.open(path, "wb")
    for _ in range(12):
        f.write(os.urandom(MiB))  # one part in flight
    sink = f._sink
    assert sink._pending

    async def discard_here() -> None:
        sink.discard()  # the abort itself cannot run here either; the upload stays invisible

    try:
        asyncio.run_coroutine_threadsafe(discard_here(), raw.loop).result(timeout=20)
    except NotImplementedError:
        pass  # fsspec refuses sync() inside its own loop: the abort is left to a lifecycle rule
    server.before = None
    f.discard()
    assert not raw.exists(path)
    client = server.boto3("s3")
    for upload in _uploads(server, raw):  # the module's bucket is shared
        client.abort_multipart_upload(Bucket=raw.test_bucket, Key=upload["Key"], UploadId=upload["UploadId"])
