"""Adversarial review of the read and write paths of issue 11 (in-place
local/memory reads, the whole-object line cursor, read_whole, BufferSink).

Each test states a property that must hold whatever the storage does:

* damage anywhere (a flipped byte in the first, an interior, a boundary or
  the last segment, a tag, truncation, extension, swapped, duplicated or
  foreign segments, another path's object) fails EVERY read path with
  IntegrityError on memory and local disk, for objects above
  ``encfs.file.SMALL_OBJECT`` (in-place reads into the reused ciphertext
  buffer) and small ones, with the whole-object line cursor and with small
  line windows and fetch runs; bytes released before the error are the
  original's, and a file that raised never serves anything but the
  original's bytes afterwards (or raises again): no half-filled buffer, no
  silent end of an iteration;
* an object replaced, shrunk or grown under an open reader yields the
  original's bytes or IntegrityError, never a mix;
* random interleavings of seek/read/readline/iteration/tell/readinto agree
  with io.BytesIO (hypothesis), including objects of exactly LINE_WHOLE and
  LINE_WHOLE + 1 bytes, empty and one-byte objects, and one reader shared
  by threads on local disk (the reused ciphertext buffer is never shared);
* the whole-object cursor keeps Python's file semantics (pickling, text
  mode with newline variants, gzip, close);
* BufferSink stores all or nothing, honours ``xb`` and transactions, and
  never keeps a view of the caller's buffer;
* no key or plaintext in reprs and pickles of the new objects.

What tests/test_tamper.py, test_data_adversarial.py, test_local_reads.py and
test_line_reading.py already cover is not repeated here.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import gzip
import io
import os
import pickle
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import encfs.file
import encfs.fs
from encfs import EncryptedFileSystem
from encfs.errors import IntegrityError
from encfs.format import HEADER_REGION, TAG_BYTES, ObjectKeys, derive_object_keys
from encfs.format.kdf import OBJECT_ID_BYTES

SEG = 1024
STRIDE = SEG + TAG_BYTES


@pytest.fixture(autouse=True)
def _no_audit(monkeypatch):
    # Not what is under test; every key-service call would fsync a record.
    monkeypatch.setenv("ENCFS_AUDIT_LOG", "off")


def _lines(seed: int, size: int) -> bytes:
    """``size`` bytes of lines of varied lengths (some longer than a line
    window), ending without a newline."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        n = rnd.choice([0, 1, 5, 40, 200, 1023, 1024, 3500])
        out += bytes(rnd.choice(b"abcdefgh \r") for _ in range(n)) + b"\n"
    return bytes(out[:size])


class Store:
    """One encfs over a target with raw access to the stored ciphertext."""

    def __init__(self, kind: str, home: Path, root: Path, **opts: Any) -> None:
        self.kind = kind
        options: dict[str, Any] = {"keystore": str(home), "segment_size": SEG, "skip_instance_cache": True, **opts}
        if kind == "memory":
            mem = MemoryFileSystem(skip_instance_cache=True)
            mem.store, mem.pseudo_dirs = {}, [""]
            self.raw_fs, self.root = mem, "/t"
            self.efs = EncryptedFileSystem(fs=mem, **options)
        else:
            self.efs = EncryptedFileSystem(target_protocol="file", **options)
            self.raw_fs, self.root = self.efs.fs, str(root)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def get(self, path: str) -> bytes:
        return bytes(self.raw_fs.cat_file(path))

    def put(self, path: str, data: bytes) -> None:
        if self.kind == "local":
            with open(path, "wb") as f:  # in place, as an attacker with disk access would
                f.write(data)
        else:
            self.raw_fs.pipe_file(path, data)


@pytest.fixture(params=["memory", "local"])
def store(request, encfs_home, tmp_path) -> Store:
    return Store(request.param, encfs_home, tmp_path)


#: Module constants a mode patches: "default" leaves them (objects above
#: SMALL_OBJECT take _fetch_run, lines the whole cursor); "windows" forces
#: line windows and fetch runs of a few segments; "ranged" makes every
#: object read by ranges (the probe brings the header only) in short runs.
MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "windows": {"LINE_WHOLE": 0, "LINE_WINDOW": 3000, "FETCH_RUN": 4 * SEG},
    "ranged": {"SMALL_OBJECT": 0, "PROBE_BYTES": HEADER_REGION, "FETCH_RUN": 5000, "LINE_WINDOW": 2500},
}
#: Plaintext sizes: "big" has a ciphertext above SMALL_OBJECT (1 MiB);
#: "mid" is held whole after its first read; "small" comes whole with the probe.
SIZES = {"big": 1024 * 1024 + 3 * SEG + 333, "mid": 60 * SEG + 77, "small": 20 * SEG + 5}


def _apply(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    for name, value in MODES[mode].items():
        monkeypatch.setattr(encfs.file, name, value)


# -- damage -------------------------------------------------------------------

def _seg(ct: bytes, i: int) -> bytes:
    return ct[HEADER_REGION + i * STRIDE : HEADER_REGION + (i + 1) * STRIDE]


def _replace_seg(ct: bytes, i: int, new: bytes) -> bytes:
    return ct[: HEADER_REGION + i * STRIDE] + new + ct[HEADER_REGION + (i + 1) * STRIDE :]


def _flip(ct: bytes, pos: int) -> bytes:
    bad = bytearray(ct)
    bad[pos] ^= 0x10
    return bytes(bad)


#: kind -> (damaged ciphertext, index of the first damaged plaintext segment)
#: for a ciphertext ``ct`` of ``n`` segments; ``other`` is a valid object of
#: the same size at another path, ``old`` an earlier object at this path.
DAMAGE: dict[str, Callable[[bytes, int, bytes, bytes], tuple[bytes, int]]] = {
    "flip first segment": lambda ct, n, other, old: (_flip(ct, HEADER_REGION + 3), 0),
    "flip second segment": lambda ct, n, other, old: (_flip(ct, HEADER_REGION + STRIDE + 1000), 1),
    "flip interior segment": lambda ct, n, other, old: (_flip(ct, HEADER_REGION + (n // 2) * STRIDE + 9), n // 2),
    "flip interior tag": lambda ct, n, other, old: (_flip(ct, HEADER_REGION + (n // 2 + 1) * STRIDE - 2), n // 2),
    "flip segment before last": lambda ct, n, other, old: (_flip(ct, HEADER_REGION + (n - 2) * STRIDE + 4), n - 2),
    "flip last segment": lambda ct, n, other, old: (_flip(ct, len(ct) - TAG_BYTES - 2), n - 1),
    "flip last tag": lambda ct, n, other, old: (_flip(ct, len(ct) - 1), n - 1),
    "truncate 1 byte": lambda ct, n, other, old: (ct[:-1], n - 1),
    "truncate final segment": lambda ct, n, other, old: (ct[: HEADER_REGION + (n - 1) * STRIDE], n - 2),
    "extend 1 byte": lambda ct, n, other, old: (ct + b"\0", n - 1),
    "extend by a segment": lambda ct, n, other, old: (ct + _seg(ct, n // 2), n - 1),
    "swap interior segments": lambda ct, n, other, old: (
        _replace_seg(_replace_seg(ct, n // 2, _seg(ct, n // 2 + 1)), n // 2 + 1, _seg(ct, n // 2)), n // 2),
    "duplicate a segment": lambda ct, n, other, old: (_replace_seg(ct, n // 2, _seg(ct, n // 2 - 1)), n // 2),
    "segment of another object": lambda ct, n, other, old: (_replace_seg(ct, n // 2, _seg(other, n // 2)), n // 2),
    "segment of an older version": lambda ct, n, other, old: (_replace_seg(ct, n // 2, _seg(old, n // 2)), n // 2),
    "body of an older version": lambda ct, n, other, old: (ct[:HEADER_REGION] + old[HEADER_REGION:], 0),
    "another path's object": lambda ct, n, other, old: (other, 0),
}


def _read_paths(efs: EncryptedFileSystem, path: str, size: int, d: int
                ) -> Iterator[tuple[str, int, Callable[[list[bytes]], Any]]]:
    """(name, plaintext offset the read starts at, read) for every read path
    over damaged segment ``d``; ``read(got)`` appends what it released and
    returns the open file, if any, for the after-error checks."""
    lo = max(0, d * SEG - SEG // 2 - 3)

    def cat(got):
        got.append(efs.cat_file(path))

    def cat_range(got):
        got.append(efs.cat_file(path, start=lo, end=min(size, (d + 3) * SEG + 7)))

    def cat_tail(got):
        got.append(efs.cat_file(path, start=lo))

    def cat_ranges(got):
        got.extend(efs.cat_ranges([path, path], [lo, lo + 5], [None, min(size, lo + 3 * SEG)], on_error="raise"))

    yield "cat_file", 0, cat
    yield "cat_file(range)", lo, cat_range
    yield "cat_file(start=)", lo, cat_tail
    yield "cat_ranges", lo, cat_ranges

    def opened(body: Callable[[Any, list[bytes]], None], seek: int = 0, mode: str = "rb") -> Callable:
        def run(got):
            f = efs.open(path, mode)
            f.seek(seek)
            run.file = f
            body(f, got)
        return run

    def read_all(f, got):
        got.append(f.read())

    def read_chunks(f, got):
        while chunk := f.read(3 * SEG + 11):
            got.append(chunk)

    def read_boundaries(f, got):  # reads that start and end exactly at segment boundaries
        while chunk := f.read(2 * SEG):
            got.append(chunk)

    def readinto(f, got):
        buf = bytearray(5000)
        while n := f.readinto(buf):
            got.append(bytes(buf[:n]))

    def readlines(f, got):
        while line := f.readline():
            got.append(line)

    def iterate(f, got):
        f.it = iter(f)
        for line in f.it:
            got.append(line)

    def readlines_all(f, got):
        got.extend(f.readlines())

    def line_then_read(f, got):
        got.append(f.readline())
        got.append(f.read())

    yield "read()", 0, opened(read_all)
    yield "seek+read()", lo, opened(read_all, lo)
    yield "read(n) loop", 0, opened(read_chunks)
    yield "read(2*SEG) at boundaries", d * SEG, opened(read_boundaries, d * SEG)
    yield "readinto loop", 0, opened(readinto)
    yield "readline loop", 0, opened(readlines)
    yield "readline loop from the damage", lo, opened(readlines, lo)
    yield "for line in f", 0, opened(iterate)
    yield "readlines()", 0, opened(readlines_all)
    yield "readline then read()", 0, opened(line_then_read)


def _after_error(f: Any, data: bytes) -> list[str]:
    """What an open file that raised IntegrityError does next: every call
    must raise IntegrityError again or return exactly the original's bytes
    at its position.  A kept iterator that ends while bytes remain is a
    silent truncation."""
    problems: list[str] = []
    it = getattr(f, "it", None)
    calls: list[tuple[str, Callable[[], Any], Callable[[io.BytesIO], Any]]] = [
        ("readline()", f.readline, lambda o: o.readline()),
        ("readline(50)", lambda: f.readline(50), lambda o: o.readline(50)),
        ("next(iter(f))", lambda: next(iter(f)), lambda o: next(o)),
        ("read(100)", lambda: f.read(100), lambda o: o.read(100)),
        ("read()", f.read, lambda o: o.read()),
    ]
    if it is not None:
        calls.insert(0, ("next(kept iterator)", lambda: next(it), lambda o: next(o)))
    for name, call, oracle_call in calls:
        pos = f.tell()
        oracle = io.BytesIO(data)
        oracle.seek(pos)
        try:
            want: Any = oracle_call(oracle)
        except StopIteration:
            want = StopIteration
        try:
            got: Any = call()
        except IntegrityError:
            continue
        except StopIteration:
            got = StopIteration
        if got != want:
            shown = got if got is StopIteration else f"{len(got)} bytes"
            problems.append(f"{name} at {pos} gave {shown}, not the original's")
    return problems


def _damage_matrix(store: Store, size_name: str, kinds: list[str]) -> list[str]:
    efs = store.efs
    size = SIZES[size_name]
    path, other_path = store.path(f"d-{size_name}.txt"), store.path(f"o-{size_name}.txt")
    data = _lines(1, size)
    efs.pipe_file(path, _lines(2, size))
    old = store.get(path)
    efs.pipe_file(path, data)
    efs.pipe_file(other_path, _lines(3, size))
    ct, other = store.get(path), store.get(other_path)
    if size_name == "big":
        assert len(ct) > encfs.file.SMALL_OBJECT or encfs.file.SMALL_OBJECT == 0
    n = -(-size // SEG)
    problems: list[str] = []
    for kind in kinds:
        bad, d = DAMAGE[kind](ct, n, other, old)
        store.put(path, bad)
        for name, start, read in _read_paths(efs, path, size, d):
            got: list[bytes] = []
            try:
                read(got)
                problems.append(f"{kind}: {name} returned without an error")
            except IntegrityError:
                released = b"".join(got)
                if data[start : start + len(released)] != released:
                    problems.append(f"{kind}: {name} released WRONG BYTES")
            f = getattr(read, "file", None)
            if f is not None:
                problems += [f"{kind}: {name}, then {p}" for p in _after_error(f, data)]
                f.close()
    store.put(path, ct)
    assert efs.cat_file(path) == data  # the undamaged object still reads (the matrix can pass)
    return problems


@pytest.mark.parametrize("mode", list(MODES))
def test_damage_fails_every_read_path_of_a_large_object(store: Store, mode: str, monkeypatch) -> None:
    _apply(monkeypatch, mode)
    assert _damage_matrix(store, "big", list(DAMAGE)) == []


@pytest.mark.parametrize("size_name", ["mid", "small"])
@pytest.mark.parametrize("mode", list(MODES))
def test_damage_fails_every_read_path_of_smaller_objects(store: Store, mode: str, size_name: str,
                                                         monkeypatch) -> None:
    _apply(monkeypatch, mode)
    assert _damage_matrix(store, size_name, list(DAMAGE)) == []


def test_a_kept_line_iterator_raises_again_after_an_error(store: Store, monkeypatch) -> None:
    """Windowed ``for line in f``: a kept iterator that raised IntegrityError
    raises again when called again (it ended silently, as at the end of the
    object, when the generator behind itertools.chain was dropped), and
    iterates the rest once the damage is repaired."""
    _apply(monkeypatch, "windows")
    efs, path = store.efs, store.path("it.txt")
    data = _lines(4, SIZES["big"])  # above SMALL_OBJECT: not held whole, so a repair is seen
    efs.pipe_file(path, data)
    ct = store.get(path)
    store.put(path, _flip(ct, HEADER_REGION + 200 * STRIDE + 5))
    with efs.open(path, "rb") as f:
        it = iter(f)
        got: list[bytes] = []
        with pytest.raises(IntegrityError):
            for line in it:
                got.append(line)  # noqa: PERF402 - what came before the error is checked
        assert got and data.startswith(b"".join(got))
        for _ in range(3):
            with pytest.raises(IntegrityError):
                next(it)
        store.put(path, ct)  # repaired behind the reader's back: the original's bytes
        assert b"".join(got) + b"".join(it) == data
    with efs.open(path, "rb") as f:
        it = iter(f)
        next(it)
        f.close()
        for _ in range(2):  # closed: ValueError every time, never a quiet end
            with pytest.raises(ValueError):
                next(it)


# -- an object changing under an open reader -----------------------------------

@pytest.mark.parametrize("size_name", ["big", "mid", "small"])
@pytest.mark.parametrize("change", ["replaced", "another path's object", "shrunk by a segment", "shrunk to the header",
                                    "grown by a segment", "grown by 1 byte", "removed"])
@pytest.mark.parametrize("mode", ["default", "windows"])
def test_an_object_changing_under_an_open_reader(store: Store, size_name: str, change: str, mode: str,
                                                 monkeypatch) -> None:
    """Every read of a file opened before the change returns the original's
    bytes or raises (IntegrityError; FileNotFoundError once removed): never
    the new object's bytes, never a mix."""
    _apply(monkeypatch, mode)
    efs, size = store.efs, SIZES[size_name]
    path, other = store.path("c.txt"), store.path("c-other.txt")
    data, new = _lines(5, size), _lines(6, size)
    efs.pipe_file(path, data)
    efs.pipe_file(other, new)
    ct = store.get(path)
    files = [efs.open(path, "rb") for _ in range(6)]
    reader = efs.reader(path)
    files[1].readline()  # whole cursor (default mode) or a first window
    files[2].seek(size // 2)
    files[2].read(10)  # caches a segment
    if change == "replaced":
        efs.pipe_file(path, new)
    elif change == "another path's object":
        store.put(path, store.get(other))
    elif change == "shrunk by a segment":
        store.put(path, ct[:-STRIDE])
    elif change == "shrunk to the header":
        store.put(path, ct[:HEADER_REGION])
    elif change == "grown by a segment":
        store.put(path, ct + _seg(ct, 1))
    elif change == "grown by 1 byte":
        store.put(path, ct + b"x")
    else:
        store.raw_fs.rm_file(path)
    problems = []
    for name, start, read in [
        ("read()", 0, lambda: files[0].read()),
        ("lines after a first line", len(data.split(b"\n")[0]) + 1, lambda: b"".join(files[1])),
        ("read() from the middle", size // 2 + 10, lambda: files[2].read()),
        ("readline loop", 0, lambda: b"".join(iter(files[3].readline, b""))),
        ("for line in f", 0, lambda: b"".join(files[4])),
        ("read(n) from segment boundaries", 2 * SEG, lambda: files[5].seek(2 * SEG) and b"".join(
            iter(lambda: files[5].read(3 * SEG), b""))),
        ("reader.read", 1, lambda: reader.read(1, size)),
        ("reader.read to a boundary", SEG, lambda: reader.read(SEG, 4 * SEG)),
    ]:
        try:
            got = read()
        except (IntegrityError, FileNotFoundError):
            continue
        if got != data[start : start + len(got)] or start + len(got) not in (size, 4 * SEG):
            problems.append(f"{name} returned {len(got)} bytes that are not the original's")
    for f in files:
        f.close()
    assert problems == []


# -- exactness against io.BytesIO ------------------------------------------------

#: LINE_WHOLE for the exactness tests: small, so objects of exactly it and
#: one more byte are cheap.
SMALL_WHOLE = 3 * SEG + 100

exact_ops = st.lists(
    st.one_of(
        st.tuples(st.just("seek"), st.integers(0, 9 * SEG), st.sampled_from([0, 1, 2])),
        st.tuples(st.just("seek to boundary"), st.integers(0, 10), st.just(0)),
        st.tuples(st.just("read"), st.sampled_from([-1, 0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 3000, 5 * SEG]),
                  st.just(0)),
        st.tuples(st.just("readline"), st.sampled_from([-1, -1, 0, 1, 7, SEG, 3000]), st.just(0)),
        st.tuples(st.just("iterate"), st.integers(1, 6), st.just(0)),
        st.tuples(st.just("next kept"), st.just(0), st.just(0)),
        st.tuples(st.just("bound readline"), st.just(0), st.just(0)),
        st.tuples(st.just("readinto"), st.integers(0, 4 * SEG), st.just(0)),
        st.tuples(st.just("cat range"), st.integers(0, 9 * SEG), st.integers(0, 4 * SEG)),
    ),
    min_size=1,
    max_size=18,
)

sizes = st.one_of(
    st.sampled_from([0, 1, 2, SEG - 1, SEG, SEG + 1, 2 * SEG, SMALL_WHOLE - 1, SMALL_WHOLE, SMALL_WHOLE + 1,
                     8 * SEG, 8 * SEG + 1]),
    st.integers(0, 9 * SEG),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(target=st.sampled_from(["memory", "local"]), size=sizes, density=st.sampled_from([b"\n", b"ab\n", b"abcdefgh" * 40 + b"\n"]),
       mode=st.sampled_from(["whole", "windows", "ranged"]), ops=exact_ops, seed=st.integers(0, 2**16))
def test_random_interleavings_agree_with_bytesio(encfs_home, tmp_path, target, size, density, mode, ops,
                                                 seed) -> None:
    rnd = random.Random(seed)
    data = bytes(rnd.choice(density) for _ in range(size))
    patches = {"LINE_WHOLE": SMALL_WHOLE, "FETCH_RUN": 3 * SEG, "LINE_WINDOW": 1500}
    if mode == "windows":
        patches["LINE_WHOLE"] = 0
    if mode == "ranged":
        patches.update(SMALL_OBJECT=0, PROBE_BYTES=HEADER_REGION)
    with mock.patch.multiple(encfs.file, **patches):
        store = Store(target, encfs_home, tmp_path)
        path = store.path(f"x-{seed}-{size}.txt")
        store.efs.pipe_file(path, data)
        oracle = io.BytesIO(data)
        with store.efs.open(path, "rb") as f:
            it, oit = iter(f), iter(oracle)
            rl, orl = f.readline, oracle.readline
            for op, a, b in ops:
                if op == "seek":
                    if b == 2:
                        a = -min(a, size)
                    elif b == 1:
                        a = max(a - 4 * SEG, -oracle.tell())
                    assert f.seek(a, b) == oracle.seek(a, b)
                elif op == "seek to boundary":
                    assert f.seek(a * SEG) == oracle.seek(a * SEG)
                elif op == "read":
                    assert f.read(a) == oracle.read(a)
                elif op == "readline":
                    assert f.readline(a) == oracle.readline(a)
                elif op == "iterate":
                    got, want = [], []
                    for line in f:
                        got.append(line)
                        if len(got) == a:
                            break
                    for line in oracle:
                        want.append(line)
                        if len(want) == a:
                            break
                    assert got == want
                elif op == "next kept":
                    line = next(it, None)
                    assert line == next(oit, None)
                    if line is None:
                        # An ended iterator may stay ended (the iterator
                        # protocol; the windowed one does, io.BytesIO's
                        # does not): a seek after it needs a new one.
                        it, oit = iter(f), iter(oracle)
                elif op == "bound readline":
                    assert rl() == orl()
                elif op == "readinto":
                    buf, obuf = bytearray(a), bytearray(a)
                    assert f.readinto(buf) == oracle.readinto(obuf)
                    assert buf == obuf
                elif op == "cat range":
                    assert store.efs.cat_file(path, start=a, end=a + b) == data[a : a + b]
                assert f.tell() == oracle.tell()
            assert f.read() == oracle.read()


@pytest.mark.parametrize("run", [64 * 1024, 3 * 64 * 1024, encfs.file.FETCH_RUN])
def test_one_reader_shared_by_threads_on_local_disk(efs_local, monkeypatch, run: int) -> None:
    """Many threads read ranges through ONE ObjectReader of an object above
    SMALL_OBJECT: exactly one at a time may use the reused ciphertext
    buffer, the others fetch their own.  Every answer is exact and no read
    raises (a shared buffer shows up as IntegrityError: the tag catches
    ciphertext overwritten by another thread); the buffer is free again
    after a read that failed."""
    monkeypatch.setattr(encfs.file, "FETCH_RUN", run)
    efs, tmp = efs_local  # 64 KiB segments
    path = str(tmp / "shared.bin")
    data = random.Random(3).randbytes(2 * 1024 * 1024 + 777)
    efs.pipe_file(path, data)
    reader = efs.reader(path)
    seg = reader.segment_size
    errors: list[str] = []
    start = threading.Barrier(4)

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        start.wait()
        for _ in range(30):
            a = rnd.randrange(len(data))
            if rnd.random() < 0.3:
                a -= a % seg  # starts on a segment boundary
            b = min(len(data), a + rnd.choice([2 * seg, 5 * seg + 1, 300_000, 1_200_000]))
            try:
                got = reader.read(a, b)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{a}:{b} raised {exc!r}")
                continue
            if got != data[a:b]:
                errors.append(f"{a}:{b} wrong bytes")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not reader._sealed_lock.locked()
    # A read that fails hands the buffer back: the next one still uses it.
    with open(path, "r+b") as raw:
        raw.seek(HEADER_REGION + 3 * (seg + TAG_BYTES) + 5)
        byte = raw.read(1)
        raw.seek(-1, 1)
        raw.write(bytes([byte[0] ^ 1]))
    with pytest.raises(IntegrityError):
        reader.read(seg + 5, 20 * seg)
    assert not reader._sealed_lock.locked()
    assert reader.read(10 * seg + 3, 40 * seg) == data[10 * seg + 3 : 40 * seg]


@pytest.mark.parametrize("how", ["readline", "readline(n)", "for line in f"])
@pytest.mark.parametrize("mode", ["default", "windows"])
def test_a_line_read_that_fails_consumes_nothing(store: Store, monkeypatch, how: str, mode: str) -> None:
    """A quarter of the plaintext reads fail (a target error, or damage
    repaired since): retrying each failed call yields exactly the original's lines.
    A readline that failed in a later window of a long line used to keep
    the position past the line's first part, so the retry returned the
    line's tail as a line."""
    _apply(monkeypatch, mode)
    monkeypatch.setattr(encfs.file, "LINE_WINDOW", 700)
    data = _lines(7, 30_000) + b"x" * 2500 + b"\n" + b"end"
    efs, path = store.efs, store.path("retry.txt")  # 1 KiB segments: windows of one segment
    efs.pipe_file(path, data)
    real = encfs.file.ObjectReader.read
    rnd = random.Random(8)

    def flaky(self, start, end, cut=None):
        if rnd.random() < 0.25:
            raise OSError("connection reset")
        return real(self, start, end, cut)

    monkeypatch.setattr(encfs.file.ObjectReader, "read", flaky)
    oracle = io.BytesIO(data)
    want = [oracle.readline(100) for _ in range(2000)] if how == "readline(n)" else oracle.readlines()
    want = [line for line in want if line]
    got: list[bytes] = []
    failures = 0
    with efs.open(path, "rb") as f:
        it = None
        for _ in range(10_000):
            try:
                if how == "for line in f":
                    if it is None:
                        it = iter(f)  # the whole cursor is filled here: may fail too
                    line = next(it, b"")
                else:
                    line = f.readline(100) if how == "readline(n)" else f.readline()
            except OSError:
                failures += 1
                continue
            if not line:
                break
            got.append(line)
    assert got == want
    assert failures or mode == "default"


# -- Python file semantics of the whole-object cursor ------------------------------

LINE_DATA = b"".join(b"row %d,%s\r\n" % (i, b"v" * (i % 50)) if i % 7 else b"row %d\rcr only\n" % i
                     for i in range(3000)) + b"last line"


@pytest.fixture(params=["whole", "windowed"])
def line_store(request, encfs_home, tmp_path, monkeypatch) -> Store:
    if request.param == "windowed":
        _apply(monkeypatch, "windows")
    store = Store("local", encfs_home, tmp_path)  # local: a file pickles with its filesystem
    store.efs.pipe_file(store.path("lines.txt"), LINE_DATA)
    return store


@pytest.mark.parametrize("first", ["readline", "iterate", "read", "nothing"])
def test_pickled_open_file_reads_on_from_the_same_position(line_store: Store, first: str) -> None:
    path = line_store.path("lines.txt")
    oracle = io.BytesIO(LINE_DATA)
    with line_store.efs.open(path, "rb") as f:
        for _ in range(5):
            if first == "readline":
                assert f.readline() == oracle.readline()
            elif first == "iterate":
                assert next(iter(f)) == next(oracle)
            elif first == "read":
                assert f.read(333) == oracle.read(333)
        blob = pickle.dumps(f)
        assert b"row 1," not in blob  # no plaintext travels with it
        g = pickle.loads(blob)
        h = copy.copy(f)  # the same reduction
        assert g.tell() == h.tell() == oracle.tell()
        rest = oracle.getvalue()[oracle.tell():]
        assert g.readline() == h.readline() == f.readline() == oracle.readline()
        assert list(g) == list(h) == list(f) == io.BytesIO(rest).readlines()[1:]
        g.close()
        h.close()


@pytest.mark.parametrize("newline", [None, "", "\n", "\r", "\r\n"])
def test_text_mode_over_the_line_paths(line_store: Store, newline: str | None) -> None:
    path = line_store.path("lines.txt")
    text = LINE_DATA.decode()

    def oracle() -> io.TextIOWrapper:
        return io.TextIOWrapper(io.BytesIO(LINE_DATA), encoding="utf-8", newline=newline)

    with line_store.efs.open(path, "rt", encoding="utf-8", newline=newline) as f:
        o = oracle()
        assert [f.readline() for _ in range(20)] == [o.readline() for _ in range(20)]
        cookie, ocookie = f.tell(), o.tell()
        assert f.readline(7) == o.readline(7)
        f.seek(cookie)
        o.seek(ocookie)
        assert f.read() == o.read()
        if newline == "":  # untranslated
            f.seek(0)
            assert f.read() == text
    with line_store.efs.open(path, "r", encoding="utf-8", newline=newline) as f:
        assert list(f) == list(oracle())
    # A binary file with whole-object lines under a text wrapper made by hand.
    with line_store.efs.open(path, "rb") as b:
        b.readline()
        b.seek(0)
        assert list(io.TextIOWrapper(b, encoding="utf-8", newline=newline)) == list(oracle())


def test_gzip_over_the_line_paths(line_store: Store) -> None:
    efs = line_store.efs
    path = line_store.path("lines.txt.gz")
    with efs.open(path, "wb", compression="gzip") as f:
        f.write(LINE_DATA)
    with efs.open(path, "rb", compression="gzip") as f:
        assert f.readline() == LINE_DATA.split(b"\n")[0] + b"\n"
        assert b"".join(f) == LINE_DATA[len(LINE_DATA.split(b"\n")[0]) + 1 :]
    with efs.open(path, "rt", compression="gzip", encoding="utf-8", newline="") as f:
        assert f.read() == LINE_DATA.decode()
    # The compressed bytes themselves read by lines through the raw file.
    raw = gzip.compress(LINE_DATA, mtime=0)
    efs.pipe_file(path, raw)
    with efs.open(path, "rb") as f:
        assert b"".join(f) == raw
        f.seek(0)
        with gzip.GzipFile(fileobj=f) as g:
            assert g.read() == LINE_DATA


@pytest.mark.parametrize("codec", ["gzip", "bz2", "xz"])
def test_compressed_writes_through_fs_open_are_all_or_nothing(wstore: Store, codec: str) -> None:
    """``fs.open(p, "wb", compression=...)``: fsspec's wrapper leaves the
    encfs file open, so closing it committed nothing (the object was
    silently lost).  Closing the wrapper commits; an exception inside the
    ``with``, or a wrapper left to the garbage collector, stores nothing."""
    efs = wstore.efs
    path = wstore.path(f"w.{codec}")
    with efs.open(path, "wb", compression=codec) as f:
        f.write(LINE_DATA)
    with efs.open(path, "rb", compression=codec) as f:
        assert f.read() == LINE_DATA
    with efs.open(path, "rt", compression=codec, encoding="utf-8", newline="\n") as f:
        assert f.readline() == LINE_DATA.decode().split("\n")[0] + "\n"
    with efs.open(path, "wt", compression=codec, encoding="utf-8") as f:
        f.write("text\n")
    assert efs.open(path, "rb", compression=codec).read() == b"text\n"
    with pytest.raises(RuntimeError), efs.open(wstore.path("failed"), "wb", compression=codec) as f:
        f.write(LINE_DATA)
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError), efs.open(wstore.path("failed"), "wt", compression=codec) as f:
        f.write("x")
        raise RuntimeError("interrupted")
    f = efs.open(wstore.path("dropped"), "wb", compression=codec)
    f.write(LINE_DATA)
    del f
    with pytest.warns(ResourceWarning):
        gc.collect()  # (closing the wrapper refers to it: a cycle)
    assert not efs.exists(wstore.path("failed")) and not efs.exists(wstore.path("dropped"))
    assert _stored_names(wstore) == [path]
    r = efs.open(path, "rb", compression=codec)
    inner = r.fileobj if codec == "gzip" else None
    r.close()
    assert inner is None or inner.closed


def test_every_call_after_close_raises(line_store: Store) -> None:
    path = line_store.path("lines.txt")
    f = line_store.efs.open(path, "rb")
    f.readline()
    rl, it = f.readline, iter(f)
    next(it)
    f.close()
    calls: dict[str, Callable[[], Any]] = {
        "readline": f.readline, "readline(5)": lambda: f.readline(5), "kept readline": rl,
        "kept iterator": lambda: next(it), "iter": lambda: iter(f), "next(f)": lambda: next(f),
        "read": f.read, "read(5)": lambda: f.read(5), "readinto": lambda: f.readinto(bytearray(5)),
        "readlines": f.readlines, "class readline": lambda: type(f).readline(f),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"{name} answered after close")
    f.close()  # twice is fine


# -- BufferSink ---------------------------------------------------------------------

@pytest.fixture(params=["memory", "local"])
def wstore(request, encfs_home, tmp_path) -> Store:
    return Store(request.param, encfs_home, tmp_path)


def _stored_names(store: Store) -> list[str]:
    return sorted(store.raw_fs.find(store.root))


@pytest.mark.parametrize("size", [0, 100, 3 * SEG + 1, 40 * SEG])
@pytest.mark.parametrize("kind", ["bytearray", "memoryview", "memoryview of ints", "transaction", "open().write"])
def test_a_value_mutated_after_the_write_does_not_change_the_object(wstore: Store, size: int, kind: str) -> None:
    efs, path = wstore.efs, wstore.path("m.bin")
    data = random.Random(size).randbytes(size)
    buf = bytearray(data)
    value: Any = {"bytearray": buf, "memoryview": memoryview(buf), "transaction": memoryview(buf),
                  "open().write": buf, "memoryview of ints": memoryview(buf).cast("B").cast("c")}[kind]
    if kind == "transaction":
        with efs.transaction:
            efs.pipe_file(path, value)
            buf[:] = bytes(len(buf))  # mutated while the write waits for the commit
    elif kind == "open().write":
        with efs.open(path, "wb") as f:
            f.write(value)
            buf[:] = b"\xff" * len(buf)  # mutated before close: the write took its bytes
    else:
        efs.pipe_file(path, value)
    for i in range(len(buf)):
        buf[i] ^= 0x5A
    assert efs.cat_file(path) == data


def test_mutating_a_large_value_after_pipe_file(wstore: Store, monkeypatch) -> None:
    monkeypatch.setattr(encfs.fs, "WHOLE_WRITE", 4 * SEG)  # the streaming path for larger values
    efs, path = wstore.efs, wstore.path("big.bin")
    data = random.Random(9).randbytes(50 * SEG + 3)
    buf = bytearray(data)
    efs.pipe_file(path, memoryview(buf))
    buf[:] = bytes(len(buf))
    assert efs.cat_file(path) == data


class _FailingMemory(MemoryFileSystem):
    """A memory target whose stores fail (pipe_file is its own, so
    BufferSink goes through it, not MemoryFileSystem._open)."""

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        raise OSError("store failed")


def test_a_failed_or_discarded_memory_write_stores_nothing(encfs_home) -> None:
    mem = _FailingMemory(skip_instance_cache=True)
    mem.store, mem.pseudo_dirs = {}, [""]
    efs = EncryptedFileSystem(fs=mem, keystore=str(encfs_home), skip_instance_cache=True)
    for write in [lambda: efs.pipe_file("/a/x", b"small"), lambda: efs.pipe_file("/a/x", b"v" * 300_000),
                  lambda: efs.open("/a/x", "wb").__enter__().write(b"y" * 200_000) and None]:
        with pytest.raises(OSError):
            write()
            efs.open("/a/x", "wb").close()  # (the third one commits at close)
        assert mem.store == {}
    ok = MemoryFileSystem(skip_instance_cache=True)
    ok.store, ok.pseudo_dirs = {}, [""]
    efs = EncryptedFileSystem(fs=ok, keystore=str(encfs_home), skip_instance_cache=True)
    with pytest.raises(RuntimeError), efs.open("/b/x", "wb") as f:
        f.write(b"z" * 200_000)
        raise RuntimeError("interrupted")
    with pytest.raises(FileExistsError):  # a file where a parent directory must be
        efs.pipe_file("/file", b"1")
        efs.pipe_file("/file/child", b"2")
    assert sorted(ok.store) == ["/file"]
    ok.mkdir("/dir")
    with pytest.raises(IsADirectoryError):  # a directory at the path (the direct store's own check)
        efs.pipe_file("/dir", b"3")
    assert sorted(ok.store) == ["/file"] and ok.isdir("/dir")
    f = efs.open("/c", "wb")
    f.write(b"q" * 100)
    f.discard()
    f.close()
    assert sorted(ok.store) == ["/file"]


def test_exclusive_writes_on_memory(efs_mem, memfs) -> None:
    efs_mem.pipe_file("/x", b"first")
    before = memfs.cat_file("/x")
    with pytest.raises(FileExistsError):
        efs_mem.pipe_file("/x", b"second", mode="create")
    with pytest.raises(FileExistsError):
        efs_mem.open("/x", "xb")
    f = efs_mem.open("/y", "xb")  # the path appears between open and commit
    f.write(b"mine" * 100)
    efs_mem.pipe_file("/y", b"theirs")
    with pytest.raises(FileExistsError):
        f.close()
    assert memfs.cat_file("/x") == before
    assert efs_mem.cat_file("/y") == b"theirs"
    with efs_mem.transaction:
        efs_mem.pipe_file("/z", b"t", mode="create")
        assert not memfs.exists("/z")
    assert efs_mem.cat_file("/z") == b"t"


def test_the_targets_own_transaction_defers_the_store(efs_mem, memfs) -> None:
    """The direct store (MemoryFileSystem._open) is taken only outside a
    transaction of the target itself: inside one, fsspec defers the file."""
    with memfs.transaction:
        efs_mem.pipe_file("/deferred", b"d" * 500)
        assert "/deferred" not in memfs.store
    assert efs_mem.cat_file("/deferred") == b"d" * 500
    with pytest.raises(RuntimeError), memfs.transaction:
        efs_mem.pipe_file("/dropped", b"x")
        raise RuntimeError
    assert "/dropped" not in memfs.store


# -- secrets -------------------------------------------------------------------------

def test_no_key_or_plaintext_in_reprs_and_pickles(efs_local) -> None:
    efs, tmp = efs_local
    path = str(tmp / "s.txt")
    secret_text = b"SECRET-PLAINTEXT-" * 1000 + b"\nsecond line\n"
    efs.pipe_file(path, secret_text)
    reader = efs.reader(path)
    reader.read(0, reader.size)
    header = reader.header
    dek, keys = efs.keyring.unwrap(header, path)
    secrets = [dek, keys.body_key, keys.mac_key, dek.hex().encode(), keys.body_key.hex().encode(),
               keys.mac_key.hex().encode()]
    f = efs.open(path, "rb")
    f.readline()  # the whole cursor holds the plaintext
    for obj in (keys, reader, f, reader._cipher, header):
        text = (repr(obj) + str(obj)).encode()
        assert not any(s in text for s in secrets), type(obj)
        assert b"SECRET-PLAINTEXT" not in text
    for obj in (keys, reader, reader._cipher):
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError):
                pickle.dumps(obj, protocol=protocol)
    for obj in (keys, reader._cipher):
        with pytest.raises(TypeError):
            copy.copy(obj)
        with pytest.raises(TypeError):
            copy.deepcopy(obj)
    blob = pickle.dumps(f)
    assert not any(s in blob for s in secrets) and b"SECRET-PLAINTEXT" not in blob
    f.close()
    with pytest.raises(AttributeError):
        keys.body_key = b"x" * 32
    with pytest.raises(AttributeError):
        keys.__dict__  # noqa: B018 - slots only: no instance dict to dump
    fresh = derive_object_keys(os.urandom(32), os.urandom(OBJECT_ID_BYTES), 1)
    assert isinstance(fresh, ObjectKeys) and repr(fresh) == "ObjectKeys(<keys hidden>)"


# -- nothing unauthenticated left reachable ------------------------------------------

def _reachable_buffers(exc: BaseException) -> Iterator[bytes]:
    """The bytes every encfs frame of ``exc``'s tracebacks (and of its
    context and cause) still holds: what a caller that keeps the error (a
    log, Jupyter's last traceback, a debugger) can reach."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        todo += [e.__context__, e.__cause__]
        tb = e.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if f"{os.sep}encfs{os.sep}" in frame.f_code.co_filename:
                for value in frame.f_locals.values():
                    if isinstance(value, io.BytesIO) and not value.closed:
                        yield value.getvalue()
                    elif isinstance(value, (bytes, bytearray)):
                        yield bytes(value)
                    elif isinstance(value, memoryview):
                        with contextlib.suppress(ValueError):  # released
                            yield value.tobytes()
            tb = tb.tb_next


@pytest.mark.parametrize("size_name", ["big", "mid"])
def test_a_failed_segment_leaves_no_plaintext_in_the_error(store: Store, size_name: str, monkeypatch) -> None:
    """AES-GCM ``decrypt_into`` writes a segment's plaintext before its tag
    fails: the in-place read's buffer then holds the damaged segment's
    unauthenticated bytes, and the IntegrityError's traceback keeps that
    frame alive.  Nothing of it may be reachable from the error."""
    _apply(monkeypatch, "ranged" if size_name == "mid" else "default")
    efs, path = store.efs, store.path("u.bin")
    size = SIZES[size_name]
    data = random.Random(12).randbytes(size)
    efs.pipe_file(path, data)
    ct = store.get(path)
    d = (size // SEG) // 2
    store.put(path, _flip(ct, HEADER_REGION + d * STRIDE + 9))
    needle = data[d * SEG + 100 : d * SEG + 200]  # of the damaged segment, away from the flipped byte
    reads: dict[str, Callable[[], Any]] = {
        "reader.read": lambda: efs.reader(path).read(SEG + 5, size - SEG),
        "cat_file(range)": lambda: efs.cat_file(path, start=(d - 3) * SEG + 1, end=(d + 4) * SEG),
        "read()": lambda: efs.open(path, "rb").read(),
        "read from a boundary": lambda: efs.open(path, "rb").read(),
        "cat_file": lambda: efs.cat_file(path),
        "lines": lambda: list(efs.open(path, "rb")),
    }
    leaks = []
    for name, read in reads.items():
        with pytest.raises(IntegrityError) as info:
            read()
        if any(needle in buf for buf in _reachable_buffers(info.value)):
            leaks.append(name)
    assert leaks == []


# -- local disk: a FIFO swapped in under an open reader ------------------------------

def _finishes(call: Callable[[], Any], seconds: float = 10.0) -> tuple[bool, Any]:
    """Run ``call`` in a thread: (finished in time, its result or error)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed back
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    return (not t.is_alive()), (out[0] if out else None)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("size_name", ["big", "mid", "small"])
def test_a_fifo_swapped_in_under_an_open_reader_never_blocks(efs_local, size_name: str, monkeypatch) -> None:
    """Storage is attacker-controlled: a FIFO put in place of an object
    after encfs checked the path (an open file, a reader, or between the
    check and the open) must fail the read, not block it forever
    (docs/SECURITY.md: nothing blocks on a FIFO)."""
    from encfs.errors import NotRegularFileError

    efs, tmp = efs_local
    path = str(tmp / "f.bin")
    data = random.Random(13).randbytes(SIZES[size_name])
    efs.pipe_file(path, data)
    f = efs.open(path, "rb")
    assert f.read(10) == data[:10]
    reader = efs.reader(path)
    os.unlink(path)
    os.mkfifo(path)
    try:
        monkeypatch.setattr(type(efs), "_check_regular", lambda self, p: None)  # the swap won the race
        for name, call in [("read()", f.read), ("reader.read", lambda: reader.read(SEG, len(data))),
                           ("open", lambda: efs.open(path, "rb")), ("cat_file", lambda: efs.cat_file(path)),
                           ("cat_file(range)", lambda: efs.cat_file(path, start=5, end=len(data) - 5))]:
            done, result = _finishes(call)
            assert done, f"{name} blocked on a FIFO"
            if size_name == "big" or name not in ("read()", "reader.read"):
                assert isinstance(result, NotRegularFileError), (name, type(result))
            else:  # an object the opening probe brought whole: held since open
                assert result in (data[10:], data[SEG:]), name
    finally:
        # Release any reader still blocked in open() (a regression), then clean up.
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        f.close()


# -- edges, deterministic ----------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, SMALL_WHOLE - 1, SMALL_WHOLE, SMALL_WHOLE + 1, 4 * SEG, 4 * SEG + 1])
@pytest.mark.parametrize("mode", ["default", "ranged"])
def test_objects_at_the_line_whole_edge(store: Store, size: int, mode: str, monkeypatch) -> None:
    """Objects of 0, 1, LINE_WHOLE - 1, LINE_WHOLE and LINE_WHOLE + 1 bytes
    (LINE_WHOLE made small) and of whole segments: lines, reads at segment
    boundaries and at the end agree with io.BytesIO whichever line path
    serves them."""
    _apply(monkeypatch, mode)
    monkeypatch.setattr(encfs.file, "LINE_WHOLE", SMALL_WHOLE)
    monkeypatch.setattr(encfs.file, "LINE_WINDOW", 1500)
    data = _lines(size, size)
    path = store.path(f"edge-{size}.txt")
    store.efs.pipe_file(path, data)
    assert store.efs.cat_file(path) == data
    for script in ("lines", "iterate", "mixed"):
        oracle = io.BytesIO(data)
        with store.efs.open(path, "rb") as f:
            if script == "lines":
                assert list(iter(f.readline, b"")) == list(iter(oracle.readline, b""))
                assert f.readline() == b"" and f.read() == b"" and f.tell() == size
            elif script == "iterate":
                assert list(f) == list(oracle)
                assert list(f) == [] and f.read(1) == b""
            else:
                for pos in (0, SEG, size - 1, size, size + 5, 2 * SEG, 1):
                    pos = max(0, pos)
                    assert f.seek(pos) == oracle.seek(pos)
                    assert f.readline() == oracle.readline()
                    assert f.read(SEG) == oracle.read(SEG)
                    assert next(iter(f), None) == next(oracle, None)
                    assert f.tell() == oracle.tell()


def test_reads_spanning_cached_segments(store: Store, monkeypatch) -> None:
    """A read whose range holds a segment the reader kept (the boundary
    segment of an earlier read) takes it from the cache and fetches the runs
    around it: exact bytes; damage in a fetched neighbour still fails; the
    kept segment's own ciphertext no longer matters (its bytes were
    authenticated when it was read)."""
    monkeypatch.setattr(encfs.file, "FETCH_RUN", 3 * SEG)
    efs, path = store.efs, store.path("cached.bin")
    data = random.Random(14).randbytes(SIZES["big"])
    efs.pipe_file(path, data)
    reader = efs.reader(path)
    k = 300
    assert reader.read(k * SEG - 2 * SEG, k * SEG + 17) == data[k * SEG - 2 * SEG : k * SEG + 17]
    assert k in reader._cache  # the last, partly read segment is kept
    for a, b in [(k * SEG - 5 * SEG + 3, k * SEG + 6 * SEG - 1), (k * SEG, (k + 1) * SEG),
                 (k * SEG + 5, (k + 9) * SEG), ((k - 7) * SEG, k * SEG + 1)]:
        assert reader.read(a, b) == data[a:b]
        assert k in reader._cache or reader.read(k * SEG, k * SEG + 17) == data[k * SEG : k * SEG + 17]
    ct = store.get(path)
    bad = _flip(ct, HEADER_REGION + k * STRIDE + 50)  # the kept segment itself
    bad = _flip(bad, HEADER_REGION + (k + 1) * STRIDE + 50)  # and its fetched neighbour
    store.put(path, bad)
    fresh = efs.reader  # a reader opened now sees the damage in both
    with pytest.raises(IntegrityError):
        fresh(path).read(k * SEG + 1, k * SEG + 20)
    assert reader.read(k * SEG + 1, k * SEG + 20) == data[k * SEG + 1 : k * SEG + 20]  # kept: authentic
    with pytest.raises(IntegrityError):
        reader.read(k * SEG - 3 * SEG, (k + 3) * SEG)
    with pytest.raises(IntegrityError):
        reader.read(k * SEG + 5, (k + 2) * SEG)
    store.put(path, ct)
    assert reader.read(k * SEG - 3 * SEG, (k + 3) * SEG) == data[k * SEG - 3 * SEG : (k + 3) * SEG]


damage_edits = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(0, 7)),
        st.tuples(st.just("truncate"), st.integers(0, 2**31), st.just(0)),
        st.tuples(st.just("extend"), st.integers(1, 2 * STRIDE), st.just(0)),
        st.tuples(st.just("swap"), st.integers(0, 2**31), st.integers(0, 2**31)),
    ),
    min_size=1,
    max_size=3,
)


def _apply_edits(ct: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(ct)
    for op, a, b in edits:
        body = max(1, len(data) - HEADER_REGION)
        if op == "flip" and len(data) > HEADER_REGION:
            data[HEADER_REGION + a % body] ^= 1 << b  # the body: header damage is test_tamper's
        elif op == "truncate":
            del data[HEADER_REGION + a % body :]
        elif op == "extend":
            data += bytes(a)
        else:
            n = (len(data) - HEADER_REGION) // STRIDE
            if n >= 2:
                i, j = a % n, b % n
                si = data[HEADER_REGION + i * STRIDE : HEADER_REGION + (i + 1) * STRIDE]
                sj = data[HEADER_REGION + j * STRIDE : HEADER_REGION + (j + 1) * STRIDE]
                data[HEADER_REGION + i * STRIDE : HEADER_REGION + (i + 1) * STRIDE] = sj
                data[HEADER_REGION + j * STRIDE : HEADER_REGION + (j + 1) * STRIDE] = si
    return bytes(data)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(target=st.sampled_from(["memory", "local"]), mode=st.sampled_from(["whole", "windows", "ranged"]),
       edits=damage_edits, ops=exact_ops, seed=st.integers(0, 2**16))
def test_random_damage_under_random_interleavings(encfs_home, tmp_path, target, mode, edits, ops, seed) -> None:
    """Random body damage, then random seek/read/readline/iteration/readinto:
    every call returns exactly the original's bytes at the file's position
    or raises IntegrityError, before and after other calls failed."""
    data = _lines(seed, 12 * SEG + seed % SEG)
    patches = {"LINE_WHOLE": 20 * SEG if mode != "windows" else 0, "FETCH_RUN": 3 * SEG, "LINE_WINDOW": 1500}
    if mode == "ranged":
        patches.update(SMALL_OBJECT=0, PROBE_BYTES=HEADER_REGION)
    with mock.patch.multiple(encfs.file, **patches):
        store = Store(target, encfs_home, tmp_path)
        path = store.path(f"dmg-{seed}.txt")
        store.efs.pipe_file(path, data)
        store.put(path, _apply_edits(store.get(path), edits))
        try:
            f = store.efs.open(path, "rb")
        except IntegrityError:
            return
        oracle = io.BytesIO(data)
        with f:
            it = None
            for op, a, b in ops:
                pos = f.tell()
                assert pos <= len(data) or op == "seek"
                oracle.seek(pos)
                try:
                    if op == "seek":
                        where = {0: a, 1: pos + a - 4 * SEG, 2: len(data) - min(a, len(data))}[b]
                        assert f.seek(max(0, where)) == max(0, where)
                    elif op == "seek to boundary":
                        f.seek(a * SEG)
                    elif op == "read":
                        assert f.read(a) == oracle.read(a)
                    elif op in ("readline", "bound readline"):
                        assert f.readline(a if op == "readline" else -1) == oracle.readline(a if op == "readline"
                                                                                            else -1)
                    elif op in ("iterate", "next kept"):
                        if it is None or op == "iterate":
                            it = iter(f)
                        for _ in range(a if op == "iterate" else 1):
                            line = next(it, None)
                            assert line == next(oracle, None)
                            if line is None:
                                it = None
                                break
                    elif op == "readinto":
                        buf = bytearray(a)
                        n = f.readinto(buf)
                        assert bytes(buf[:n]) == oracle.read(a)
                    elif op == "cat range":
                        got = store.efs.cat_file(path, start=a, end=a + b)
                        assert got == data[a : a + b]
                except IntegrityError:
                    continue


@pytest.mark.parametrize("mode", ["default", "windows"])
def test_damage_fails_every_read_path_through_overlapping_requests(encfs_home, tmp_path, prefetching, mode: str,
                                                                   monkeypatch) -> None:
    """The same matrix where reads go through the Readahead, as on S3
    (conftest's ``prefetching``: several ranged requests in flight)."""
    _apply(monkeypatch, mode)
    store = Store("memory", encfs_home, tmp_path)
    prefetching(store.efs)
    problems = _damage_matrix(store, "mid", list(DAMAGE))
    assert problems == []
