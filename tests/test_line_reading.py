"""Line reading keeps Python's file semantics on both of its paths (issue 11,
item 6): lines come from a first window of encfs.file.LINE_WINDOW bytes;
an object up to encfs.file.LINE_WHOLE read on past it is decrypted whole
into one cursor whose C ``readline`` and iterator then serve the file;
larger ones stay windowed.  Each case runs on both paths against
io.BytesIO (small windows, so the switch happens early)."""

from __future__ import annotations

import io

import pytest

import encfs.file
from encfs import EncryptedFileSystem

DATA = b"".join(b"line %d %s\n" % (i, b"x" * (i % 37)) for i in range(400)) + b"tail without newline"


@pytest.fixture(params=["whole", "windowed"])
def f(request, memfs, encfs_home, monkeypatch):
    # Windows are at least a segment: 1 KiB segments and windows, so an
    # 11 KB object spans several.
    monkeypatch.setattr(encfs.file, "LINE_WINDOW", 1000)
    if request.param == "windowed":
        monkeypatch.setattr(encfs.file, "LINE_WHOLE", 0)
    efs = EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), segment_size=1024, skip_instance_cache=True)
    efs.pipe_file("/lines.txt", DATA)
    with efs.open("/lines.txt", "rb") as fh:
        yield fh


def test_a_bound_readline_stays_right_across_seek_and_read(f):
    oracle = io.BytesIO(DATA)
    f.readline()
    oracle.readline()
    rl, orl = f.readline, oracle.readline  # bound after the first line, as iter(f.readline, b"") does
    for step in range(30):
        if step % 7 == 3:
            assert f.seek(step * 211) == oracle.seek(step * 211)
        elif step % 7 == 5:
            assert f.read(step * 13) == oracle.read(step * 13)
        assert rl() == orl()
        assert f.tell() == oracle.tell()
    assert list(iter(rl, b"")) == list(iter(orl, b""))


def test_a_seek_inside_a_for_loop_continues_from_there(f):
    oracle = io.BytesIO(DATA)

    def walk(fh):
        out, jumped = [], False
        for line in fh:
            out.append(line)
            if len(out) == 5 and not jumped:
                jumped = True
                fh.seek(3000)
            if len(out) == 12:
                break
        return out, fh.tell()

    assert walk(f) == walk(oracle)
    assert f.read() == oracle.read()


def test_lines_and_reads_interleave(f):
    oracle = io.BytesIO(DATA)
    it, oit = iter(f), iter(oracle)
    for _ in range(50):
        assert next(it) == next(oit)
        assert f.read(17) == oracle.read(17)
        assert f.readline(9) == oracle.readline(9)
    assert f.readlines() == oracle.readlines()
    assert f.readline() == b""
    assert list(f) == []


def test_after_close_every_line_call_raises(f):
    rl = f.readline
    rl()
    it = iter(f)
    f.close()
    with pytest.raises(ValueError):
        f.readline()
    with pytest.raises(ValueError):
        iter(f)
    # A kept readline and iterator (the closed cursor's own, on the whole
    # path) raise too instead of answering from the closed file.
    with pytest.raises(ValueError):
        rl()
    with pytest.raises(ValueError):
        next(it)


def test_the_class_readline_agrees_with_the_installed_one(f):
    """Code that calls the method through the class (a subclass's super(),
    or the unbound function) gets the same lines, to the end."""
    oracle = io.BytesIO(DATA)
    rl = type(f).readline
    got = []
    while line := rl(f):
        got.append(line)
    assert got == oracle.readlines()
    assert rl(f) == b"" and rl(f, 5) == b""


def test_the_whole_cursor_takes_over_after_the_first_window(f):
    lines = [f.readline() for _ in range(5)]
    assert b"".join(lines) == DATA[: sum(map(len, lines))]
    assert "readline" not in f.__dict__  # a few lines: still the first window
    for _ in range(200):  # on past the first window (1,000 bytes here)
        f.readline()
    installed = "readline" in f.__dict__
    assert installed == (f.size <= encfs.file.LINE_WHOLE)
    at = f.tell()
    assert f.read(50) == DATA[at : at + 50]
    f.seek(0)
    assert list(f) == io.BytesIO(DATA).readlines()


def test_a_few_lines_of_a_large_object_decrypt_one_window(efs_mem, monkeypatch):
    """Reading a header line must not decrypt the whole object (a CSV
    sniffer, the head of a log): one window, however large the object."""
    data = b"".join(b"%08d,some,csv,columns\n" % i for i in range(200_000))  # 5.4 MB, under LINE_WHOLE
    assert len(data) <= encfs.file.LINE_WHOLE
    efs_mem.pipe_file("/big.csv", data)
    asked = []
    real = encfs.file.ObjectReader.read

    def spy(self, start, end, cut=None):
        asked.append((end if end is not None else self.size) - start)
        return real(self, start, end, cut)

    monkeypatch.setattr(encfs.file.ObjectReader, "read", spy)
    with efs_mem.open("/big.csv", "rb") as fh:
        assert fh.readline() == b"00000000,some,csv,columns\n"
        for line in fh:
            if line.startswith(b"00000009"):
                break
    assert sum(asked) <= encfs.file.LINE_WINDOW + 64 * 1024


def test_an_iterator_made_before_the_switch_follows_the_whole_cursor(f):
    """Found by hypothesis in CI: an iterator made before a readline
    switched the file to its whole cursor put a window cursor beside it, and
    the position went wrong (tell() 0 after a line).  It joins the cursor."""
    oracle = io.BytesIO(DATA)
    it, oit = iter(f), iter(oracle)
    end = len(DATA) - 3
    assert f.seek(end) == oracle.seek(end)
    assert f.readline() == oracle.readline()  # to the end: past its first window
    for _ in range(3):
        assert f.seek(0) == oracle.seek(0)
        assert next(it) == next(oit)
        assert f.tell() == oracle.tell()
        assert f.seek(0) == oracle.seek(0)
        assert f.readline() == oracle.readline()
        assert f.tell() == oracle.tell()
        assert [next(it) for _ in range(3)] == [next(oit) for _ in range(3)]
        assert f.tell() == oracle.tell()
