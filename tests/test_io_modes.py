"""encfs files answer the io protocol as Python's own files do (issue 9, item 5):
a write-only file raises io.UnsupportedOperation for reads and seeks, a
read-only one for writes, and readable()/writable()/seekable() say so.
Libraries such as h5py probe files this way."""

from __future__ import annotations

import io

import numpy as np
import pytest

WRITE_ONLY_CALLS = {
    "read": lambda f: f.read(),
    "read(n)": lambda f: f.read(4),
    "read1": lambda f: f.read1(4),
    "readinto": lambda f: f.readinto(bytearray(4)),
    "readinto1": lambda f: f.readinto1(bytearray(4)),
    "readline": lambda f: f.readline(),
    "readlines": lambda f: f.readlines(),
    "iterate": lambda f: next(iter(f)),
}
#: A streaming encrypted write is also unseekable (as a pipe is), and has no
#: OS-level descriptor.
UNSEEKABLE_CALLS = {
    "readall": lambda f: f.readall(),
    "seek": lambda f: f.seek(0),
    "seek current": lambda f: f.seek(0, io.SEEK_CUR),
    "seek end": lambda f: f.seek(0, io.SEEK_END),
    "truncate": lambda f: f.truncate(0),
    "fileno": lambda f: f.fileno(),
}
READ_ONLY_CALLS = {
    "write": lambda f: f.write(b"x"),
    "writelines": lambda f: f.writelines([b"x"]),
    "truncate": lambda f: f.truncate(0),
}


@pytest.fixture(params=["encfs", "python"])
def open_file(request, efs_local):
    """Open a path in binary mode through encfs, or with Python's open() for
    comparison: both must behave the same."""
    efs, tmp = efs_local
    if request.param == "encfs":
        return (lambda name, mode: efs.open(str(tmp / name), mode)), efs, tmp
    return (lambda name, mode: open(tmp / name, mode)), None, tmp


@pytest.mark.parametrize("call", sorted(WRITE_ONLY_CALLS))
def test_write_only_file_refuses_reads(open_file, call):
    opener, efs, tmp = open_file
    with opener("w.bin", "wb") as f:
        assert (f.readable(), f.writable()) == (False, True)
        f.write(b"hello ")
        with pytest.raises(io.UnsupportedOperation):
            WRITE_ONLY_CALLS[call](f)
        f.write(b"world")  # the refused call changed nothing
    if efs is not None:
        assert efs.cat_file(str(tmp / "w.bin")) == b"hello world"


@pytest.mark.parametrize("call", sorted(UNSEEKABLE_CALLS))
def test_write_only_encfs_file_is_not_seekable(efs_local, call):
    efs, tmp = efs_local
    with efs.open(str(tmp / "w.bin"), "wb") as f:
        assert (f.readable(), f.writable(), f.seekable()) == (False, True, False)
        f.write(b"abc")
        with pytest.raises(io.UnsupportedOperation):
            UNSEEKABLE_CALLS[call](f)
        assert f.tell() == 3
    assert efs.cat_file(str(tmp / "w.bin")) == b"abc"


def test_unsupported_operation_is_also_value_and_os_error(efs_local):
    efs, tmp = efs_local
    with efs.open(str(tmp / "w.bin"), "wb") as f:
        with pytest.raises(io.UnsupportedOperation) as err:
            f.read()
        assert isinstance(err.value, OSError) and isinstance(err.value, ValueError)
        assert "not readable" in str(err.value) and "'wb'" in str(err.value)


@pytest.mark.parametrize("call", sorted(READ_ONLY_CALLS))
def test_read_only_file_refuses_writes(open_file, call):
    opener, efs, tmp = open_file
    if efs is not None:
        efs.pipe_file(str(tmp / "r.bin"), b"hello world")
    else:
        (tmp / "r.bin").write_bytes(b"hello world")
    with opener("r.bin", "rb") as f:
        assert (f.readable(), f.writable(), f.seekable()) == (True, False, True)
        assert f.read(5) == b"hello"
        with pytest.raises(io.UnsupportedOperation):
            READ_ONLY_CALLS[call](f)
        assert f.read() == b" world"
    if efs is not None:
        assert efs.cat_file(str(tmp / "r.bin")) == b"hello world"


def test_text_modes(efs_local):
    efs, tmp = efs_local
    with efs.open(str(tmp / "t.txt"), "w") as f:
        f.write("line\n")
        with pytest.raises(io.UnsupportedOperation):
            f.read()
    with efs.open(str(tmp / "t.txt"), "r") as f:
        with pytest.raises(io.UnsupportedOperation):
            f.write("x")
        assert f.read() == "line\n"


def test_closed_files_say_closed(efs_local):
    efs, tmp = efs_local
    f = efs.open(str(tmp / "c.bin"), "wb")
    f.close()
    with pytest.raises(ValueError, match="closed"):
        f.read()  # (io.UnsupportedOperation is a ValueError too; the message says which)


def test_h5py_gets_unsupported_operation_and_nothing_is_stored(efs_local):
    h5py = pytest.importorskip("h5py")
    efs, tmp = efs_local
    path = str(tmp / "data.h5")
    # HDF5 reads back what it writes, so it needs a readable, seekable file:
    # a streaming encrypted write cannot be one, and says so as Python does.
    with pytest.raises(io.UnsupportedOperation), efs.open(path, "wb") as f, h5py.File(f, "w") as h:
        h["a"] = np.arange(10)
    assert not efs.exists(path)
    # Written elsewhere and stored, it reads back through encfs.
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h:
        h["a"] = np.arange(10)
    efs.pipe_file(path, buf.getvalue())
    with efs.open(path, "rb") as f, h5py.File(f, "r") as h:
        assert list(h["a"][:]) == list(range(10))
