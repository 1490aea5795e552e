"""Random reads against a plaintext oracle (hypothesis).

Objects of random sizes (0 to several segments, small segment sizes) are
written through ``enc`` on a memory target, by ``pipe_file`` or by random
chunked writes, then read back by random sequences of seek/read/tell on
open files (every fsspec cache type), ``cat_file(start, end)`` with
negative and out-of-range bounds, and ``cat_ranges``.  Every answer must be
exactly the oracle's: Python slicing of the plaintext.
"""

from __future__ import annotations

import contextlib
import io
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import encfs.file
from encfs import EncryptedFileSystem
from encfs.format import HEADER_REGION

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SEGMENT_SIZES = [1024, 1100, 2048]
# ("parts" is left out: fsspec's KnownPartsOfAFile serves only pre-supplied parts.)
CACHE_TYPES = ["readahead", "none", "bytes", "first", "blockcache", "mmap", "all", "background"]


@pytest.fixture(autouse=True)
def _no_audit(monkeypatch):
    # Not what is under test here; each key-service call would fsync a record.
    monkeypatch.setenv("ENCFS_AUDIT_LOG", "off")


def _efs(memfs: Any, home: Any, segment_size: int, ranged: Any = False, prefetching: Any = None
         ) -> EncryptedFileSystem:
    efs = EncryptedFileSystem(fs=memfs, keystore=str(home), segment_size=segment_size, skip_instance_cache=True)
    return prefetching(efs, ranged=False) if ranged == "prefetch" else efs


@st.composite
def objects(draw: Any) -> tuple[int, bytes, list[int] | None, bool]:
    seg = draw(st.sampled_from(SEGMENT_SIZES))
    size = draw(st.one_of(
        st.integers(0, 6 * seg),
        st.sampled_from([0, 1, seg - 1, seg, seg + 1, 2 * seg, 3 * seg + 1]),
    ))
    data = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    # None: pipe_file; else sizes of successive write() calls.
    chunks = draw(st.one_of(st.none(), st.lists(st.integers(1, 3 * seg), max_size=12)))
    # False: whole object at open; True: ranged reads; "prefetch": ranged
    # reads through the Readahead, as on S3 (conftest's prefetching).
    ranged = draw(st.sampled_from([False, True, "prefetch"]))
    return seg, data, chunks, ranged


def _store(efs: EncryptedFileSystem, path: str, data: bytes, chunks: list[int] | None) -> None:
    if chunks is None:
        efs.pipe_file(path, data)
        return
    with efs.open(path, "wb") as f:
        pos = 0
        for n in chunks:
            if pos >= len(data):
                break
            assert f.write(data[pos : pos + n]) == len(data[pos : pos + n])
            pos += n
        f.write(data[pos:])
        assert f.tell() == len(data)


class _Ranged:
    """Force the ranged-read path (header first, then segment ranges) or not."""

    def __init__(self, on: bool) -> None:
        self.on, self.saved = on, (encfs.file.SMALL_OBJECT, encfs.file.PROBE_BYTES)

    def __enter__(self) -> None:
        if self.on:  # True or "prefetch"
            # The opening probe brings the header only: every segment is a
            # ranged read, the final one authenticated when a read reaches it.
            encfs.file.SMALL_OBJECT, encfs.file.PROBE_BYTES = 0, HEADER_REGION

    def __exit__(self, *exc: object) -> None:
        encfs.file.SMALL_OBJECT, encfs.file.PROBE_BYTES = self.saved


bounds = st.one_of(st.none(), st.integers(-8000, 16000))

file_ops = st.lists(
    st.one_of(
        st.tuples(st.just("seek"), st.integers(-200, 16000), st.sampled_from([0, 1, 2])),
        st.tuples(st.just("read"), st.one_of(st.just(-1), st.integers(0, 5000)), st.just(0)),
        st.tuples(st.just("tell"), st.just(0), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)


@SETTINGS
@given(obj=objects(), ops=file_ops, cache_type=st.sampled_from(CACHE_TYPES),
       block_size=st.sampled_from([None, 100, 1024, 5000]))
def test_random_seek_read(memfs, encfs_home, prefetching, obj, ops, cache_type, block_size) -> None:
    seg, data, chunks, ranged = obj
    efs = _efs(memfs, encfs_home, seg, ranged, prefetching)
    with _Ranged(ranged):
        _store(efs, "/h/obj.bin", data, chunks)
        assert efs.info("/h/obj.bin")["size"] == len(data)
        kwargs = {"cache_type": cache_type}
        if block_size is not None:
            kwargs["block_size"] = block_size
        with efs.open("/h/obj.bin", "rb", **kwargs) as f:
            assert f.size == len(data)
            loc = 0
            for op, a, whence in ops:
                if op == "seek":
                    target = {0: a, 1: loc + a, 2: len(data) + a}[whence]
                    if target < 0:
                        with pytest.raises((ValueError, OSError)):
                            f.seek(a, whence)
                        continue
                    assert f.seek(a, whence) == target
                    loc = target
                elif op == "read":
                    expect = data[loc:] if a < 0 else data[loc : loc + a]
                    assert f.read(a) == expect
                    loc += len(expect)
                else:
                    assert f.tell() == loc


@SETTINGS
@given(obj=objects(), spans=st.lists(st.tuples(bounds, bounds), min_size=1, max_size=12))
def test_random_cat_file(memfs, encfs_home, prefetching, obj, spans) -> None:
    seg, data, chunks, ranged = obj
    efs = _efs(memfs, encfs_home, seg, ranged, prefetching)
    with _Ranged(ranged):
        _store(efs, "/h/cat.bin", data, chunks)
        assert efs.cat_file("/h/cat.bin") == data
        for start, end in spans:
            # fsspec semantics are Python slice semantics (negative = from the end).
            assert efs.cat_file("/h/cat.bin", start=start, end=end) == data[start:end], (start, end)


@SETTINGS
@given(a=objects(), b=objects(), spans=st.lists(st.tuples(st.booleans(), bounds, bounds), min_size=1, max_size=12))
def test_random_cat_ranges_over_two_objects(memfs, encfs_home, prefetching, a, b, spans) -> None:
    # Both objects must share the filesystem's segment size.
    seg = a[0]
    efs = _efs(memfs, encfs_home, seg, a[3], prefetching)
    with _Ranged(a[3]):
        _store(efs, "/h/a.bin", a[1], a[2])
        _store(efs, "/h/b.bin", b[1], b[2])
        oracle = {"/h/a.bin": a[1], "/h/b.bin": b[1]}
        paths = ["/h/a.bin" if first else "/h/b.bin" for first, _, _ in spans]
        starts = [s for _, s, _ in spans]
        ends = [e for _, _, e in spans]
        out = efs.cat_ranges(paths, starts, ends, on_error="raise")
        assert out == [oracle[p][s:e] for p, s, e in zip(paths, starts, ends)]


@pytest.mark.parametrize("mode", [False, "prefetch"])
def test_concurrent_range_reads_match_oracle(memfs, encfs_home, prefetching, mode) -> None:
    """Many threads reading random ranges of one object through one filesystem."""
    efs = _efs(memfs, encfs_home, 1024, mode, prefetching)
    rnd = random.Random(7)
    data = rnd.randbytes(40_000)
    efs.pipe_file("/h/conc.bin", data)
    spans = [(s, s + rnd.randint(0, 5000)) for s in (rnd.randint(0, 40_000) for _ in range(400))]

    def read(span: tuple[int, int]) -> bool:
        return efs.cat_file("/h/conc.bin", start=span[0], end=span[1]) == data[span[0] : span[1]]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, spans))

    def read_file(seed: int) -> bool:
        r = random.Random(seed)
        with efs.open("/h/conc.bin", "rb", block_size=2048) as f:
            for _ in range(30):
                pos, n = r.randint(0, 41_000), r.randint(0, 3000)
                f.seek(pos)
                if f.read(n) != data[pos : pos + n]:
                    return False
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read_file, range(16)))


line_ops = st.lists(
    st.one_of(
        st.tuples(st.just("readline"), st.one_of(st.just(-1), st.integers(0, 3000))),
        st.tuples(st.just("iterate"), st.integers(0, 40)),  # take up to n lines from ``for line in f``
        st.tuples(st.just("seek"), st.integers(0, 9000)),
        st.tuples(st.just("read"), st.integers(0, 2500)),
        st.tuples(st.just("tell"), st.just(0)),
    ),
    min_size=1,
    max_size=20,
)


def _line_windows(mode: str) -> Any:
    """How line reading is cut: "default"; "switch": small first windows,
    then the whole rest in one buffer (encfs.file.LINE_WHOLE) as objects
    read on past their first window are; "windows": small windows only (as
    objects above LINE_WHOLE), with local reads fetched in small runs."""
    patches: dict[str, int] = {}
    if mode != "default":
        patches["LINE_WINDOW"] = 700
    if mode == "windows":
        patches.update(LINE_WHOLE=0, FETCH_RUN=2048)
    return mock.patch.multiple(encfs.file, **patches) if patches else contextlib.nullcontext()


@SETTINGS
@given(lines=st.lists(st.integers(0, 2500), max_size=12), tail=st.booleans(), ops=line_ops,
       ranged=st.sampled_from([False, True, "prefetch"]), windows=st.sampled_from(["default", "switch", "windows"]))
def test_random_line_reads(memfs, encfs_home, prefetching, lines, tail, ops, ranged, windows) -> None:
    """readline, ``for line in f`` (stopped early), seek, read and tell in
    any order agree with io.BytesIO: lines longer than the line window, a
    last line without a newline, seeks in the middle of an iteration; in
    one window, in small windows, and switching from a first window to the
    whole object in one buffer (its C readline serving the file)."""
    rnd = random.Random(len(lines) * 7919 + sum(lines))
    data = b"".join(bytes(rnd.choice(b"abcxyz") for _ in range(n)) + b"\n" for n in lines)
    if tail:
        data += b"no newline at the end"
    efs = _efs(memfs, encfs_home, 1024, ranged, prefetching)
    with _Ranged(bool(ranged)), _line_windows(windows):
        efs.pipe_file("/h/lines.txt", data)
        oracle = io.BytesIO(data)
        with efs.open("/h/lines.txt", "rb") as f:
            for op, arg in ops:
                if op == "readline":
                    assert f.readline(arg) == oracle.readline(arg)
                elif op == "iterate":
                    got, want = [], []
                    for line in f:
                        got.append(line)
                        if len(got) >= arg:
                            break
                    for line in oracle:
                        want.append(line)
                        if len(want) >= arg:
                            break
                    assert got == want
                elif op == "seek":
                    assert f.seek(arg) == oracle.seek(arg)
                elif op == "read":
                    assert f.read(arg) == oracle.read(arg)
                assert f.tell() == oracle.tell()
