"""Large reads from local disk land in the reader's reused ciphertext buffer
and are decrypted in place into the result (file.py ObjectReader._read_into
and _fetch_run, targets/local.py fetch_into; issue 11).  Objects here are
above encfs.file.SMALL_OBJECT, so the buffered path is the one taken: the
plaintext must be exact, and damage anywhere must fail the read with no
bytes released."""

from __future__ import annotations

import os
import random
import threading

import pytest

import encfs.file
import encfs.fs
from encfs.errors import IntegrityError
from encfs.format import HEADER_REGION

SEG = 64 * 1024
DATA = random.Random(11).randbytes(3 * 1024 * 1024 + 12_345)  # 49 segments, the last partial


@pytest.fixture
def obj(efs_local):
    efs, tmp = efs_local
    path = str(tmp / "big.bin")
    efs.pipe_file(path, DATA)
    assert os.path.getsize(path) > encfs.file.SMALL_OBJECT
    return efs, path


def _reads(efs, path):
    """Every way of reading the whole object that takes the in-place path."""
    yield "read()", lambda: efs.open(path, "rb").read()
    yield "cat_file", lambda: efs.cat_file(path)

    def chunks():
        out = []
        with efs.open(path, "rb") as f:
            while chunk := f.read(700_000):
                out.append(chunk)
        return b"".join(out)

    yield "read(700000) loop", chunks

    def lines():
        with efs.open(path, "rb") as f:
            return b"".join(f)

    yield "for line in f", lines


def test_every_large_read_is_exact(obj, monkeypatch):
    efs, path = obj
    calls = []
    real = type(efs.io).fetch_into
    monkeypatch.setattr(type(efs.io), "fetch_into", lambda self, *a: calls.append(a[1]) or real(self, *a))
    for name, read in _reads(efs, path):
        calls.clear()
        assert read() == DATA, name
        assert calls, f"{name} did not read into the reused buffer"
    rnd = random.Random(5)
    with efs.open(path, "rb") as f:
        for _ in range(60):
            a = rnd.randrange(len(DATA))
            b = min(len(DATA), a + rnd.choice([1, SEG - 1, SEG, SEG + 1, 5 * SEG + 7, 1_500_000]))
            f.seek(a)
            assert f.read(b - a) == DATA[a:b]
            assert efs.cat_file(path, start=a, end=b) == DATA[a:b]


@pytest.mark.parametrize("where", ["first body segment", "middle segment", "tag of a middle segment",
                                   "final segment", "truncated by one byte", "truncated by a segment",
                                   "extended by one byte"])
def test_damage_fails_every_large_read(obj, where):
    efs, path = obj
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    stride = SEG + 16
    if where == "first body segment":
        raw[HEADER_REGION + 100] ^= 1
    elif where == "middle segment":
        raw[HEADER_REGION + 20 * stride + 5] ^= 0x80
    elif where == "tag of a middle segment":
        raw[HEADER_REGION + 21 * stride - 3] ^= 1
    elif where == "final segment":
        raw[-20] ^= 1
    elif where == "truncated by one byte":
        del raw[-1]
    elif where == "truncated by a segment":
        del raw[-stride:]
    else:
        raw += b"\0"
    with open(path, "wb") as f:
        f.write(raw)
    for name, read in _reads(efs, path):
        with pytest.raises(IntegrityError):
            read()
            pytest.fail(f"{name} released plaintext of a damaged object")


def test_an_object_shrinking_under_an_open_reader_fails(obj):
    efs, path = obj
    with efs.open(path, "rb") as f:
        assert f.read(SEG) == DATA[:SEG]
        with open(path, "r+b") as raw:
            raw.truncate(os.path.getsize(path) - 3 * SEG)
        with pytest.raises(IntegrityError):
            f.read()


def test_concurrent_reads_of_one_open_file(obj):
    """Threads share one reader: one of them holds the reused buffer, the
    others fetch their own; every answer is exact."""
    efs, path = obj
    reader = efs.reader(path)
    errors: list[str] = []

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(40):
            a = rnd.randrange(len(DATA))
            b = min(len(DATA), a + rnd.randrange(1, 600_000))
            if reader.read(a, b) != DATA[a:b]:
                errors.append(f"{a}:{b}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_copy_whose_source_shrinks_midway_fails_and_stores_nothing(obj, monkeypatch):
    """cp re-binds the header and copies the body as ciphertext, in chunks:
    a source cut short between two chunks fails the copy there, instead of
    committing a copy that can never be read."""
    efs, path = obj
    monkeypatch.setattr(encfs.fs, "COPY_CHUNK", 256 * 1024)
    real = type(efs.io).fetch
    calls = []

    def fetch(self, p, start=None, end=None):
        calls.append(start)
        if len(calls) == 3:  # the header, one body chunk, then the file is cut
            with open(path, "r+b") as raw:
                raw.truncate(os.path.getsize(path) // 2)
        return real(self, p, start, end)

    monkeypatch.setattr(type(efs.io), "fetch", fetch)
    dst = path + ".copy"
    with pytest.raises(IntegrityError):
        efs.cp_file(path, dst)
    assert not os.path.exists(dst)
    assert [name for name in os.listdir(os.path.dirname(path)) if name != "big.bin"] == []
