"""EncryptedFileSystem behaviour as an fsspec filesystem.

Every test here checks one promise of issue 2 item 4: fsspec semantics
(modes, ranges, copies, listings, get/put), request economy (counted on a
spying target), all-or-nothing writes and clear errors.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections import Counter

import fsspec
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from encfs import EncryptedFileSystem
from encfs.errors import FormatError, IntegrityError
from encfs.file import SMALL_OBJECT, probe_size
from encfs.format import DEFAULT_SEGMENT, HEADER_REGION, MAGIC, covering_segments, segment_offset
from encfs.sinks import TEMP_MARK, LocalSink

SEG = 1024  # small segments: many-segment objects stay small and fast


class SpyMemoryFS(MemoryFileSystem):
    """A private memory target that records every call made to it."""

    protocol = "spymem"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.store = {}
        self.pseudo_dirs = [""]
        self.calls: list[tuple[str, tuple, dict]] = []

    def _rec(self, name, *args, **kwargs):
        self.calls.append((name, args, kwargs))

    def counts(self) -> Counter:
        return Counter(name for name, _, _ in self.calls)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._rec("cat_file", path, start=start, end=end)
        return super().cat_file(path, start=start, end=end, **kwargs)

    def info(self, path, **kwargs):
        self._rec("info", path)
        return super().info(path, **kwargs)

    def ls(self, path, detail=True, **kwargs):
        self._rec("ls", path)
        return super().ls(path, detail=detail, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        self._rec("_open", path, mode)
        return super()._open(path, mode=mode, **kwargs)


@pytest.fixture
def spy():
    return SpyMemoryFS(skip_instance_cache=True)


@pytest.fixture
def efs_spy(spy, encfs_home):
    return EncryptedFileSystem(fs=spy, keystore=str(encfs_home), segment_size=SEG, skip_instance_cache=True)


@pytest.fixture
def efs_seg(memfs, encfs_home):
    return EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), segment_size=SEG, skip_instance_cache=True)


def _raw_files(root) -> list[str]:
    """Every file under a local directory, hidden ones included."""
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# -- modes -----------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 5 * SEG + 7])
def test_open_binary_roundtrip_at_segment_boundaries(efs_seg, memfs, size):
    data = os.urandom(size)
    with efs_seg.open("/d/f.bin", "wb") as f:
        f.write(data)
    raw = memfs.cat_file("/d/f.bin")
    assert raw[:4] == MAGIC
    assert efs_seg.info("/d/f.bin")["size"] == size
    with efs_seg.open("/d/f.bin", "rb") as f:
        assert f.read() == data


def test_text_modes_through_fsspec(efs_local):
    efs, root = efs_local
    url = f"enc::file://{root}/t.txt"
    with fsspec.open(url, "w", encoding="utf-8", keystore=efs.keyring and os.environ["ENCFS_HOME"]) as f:
        f.write("héllo\nwörld\n")
    assert "héllo".encode() not in (root / "t.txt").read_bytes()
    with fsspec.open(url, "r", encoding="utf-8", keystore=os.environ["ENCFS_HOME"]) as f:
        assert f.readlines() == ["héllo\n", "wörld\n"]
    with efs.open(str(root / "t2.txt"), "w") as f:
        f.write("abc")
    with efs.open(str(root / "t2.txt"), "r") as f:
        assert f.read() == "abc"


@pytest.mark.parametrize("mode", ["ab", "r+b", "w+b", "a", "r+"])
def test_unsupported_modes_are_refused_clearly(efs_mem, mode):
    efs_mem.pipe_file("/x", b"abc")
    with pytest.raises(ValueError, match="'rb', 'wb' or 'xb'"):
        efs_mem.open("/x", mode)
    assert efs_mem.cat_file("/x") == b"abc"


def test_xb_fails_at_open_when_path_exists(efs_mem, efs_local):
    efs_mem.pipe_file("/x", b"old")
    with pytest.raises(FileExistsError):
        efs_mem.open("/x", "xb")
    efs, root = efs_local
    p = str(root / "x")
    efs.pipe_file(p, b"old")
    with pytest.raises(FileExistsError):
        efs.open(p, "xb")
    assert efs.cat_file(p) == b"old"
    with efs.open(str(root / "new"), "xb") as f:
        f.write(b"new")
    assert efs.cat_file(str(root / "new")) == b"new"


def test_xb_is_atomic_at_commit_on_local(efs_local):
    efs, root = efs_local
    p = root / "race"
    f = efs.open(str(p), "xb")
    f.write(b"mine")
    p.write_bytes(b"someone else's")  # appears between open and commit
    with pytest.raises(FileExistsError):
        f.close()
    assert p.read_bytes() == b"someone else's"
    assert _raw_files(root) == ["race"]


def test_xb_is_checked_at_commit_on_memory(efs_mem, memfs):
    f = efs_mem.open("/race", "xb")
    f.write(b"mine")
    memfs.pipe_file("/race", b"other")
    with pytest.raises(FileExistsError):
        f.close()
    assert memfs.cat_file("/race") == b"other"


def test_pipe_file_create_mode(efs_mem):
    efs_mem.pipe_file("/p", b"1", mode="create")
    with pytest.raises(FileExistsError):
        efs_mem.pipe_file("/p", b"2", mode="create")
    assert efs_mem.cat_file("/p") == b"1"
    efs_mem.pipe_file("/p", b"3")
    assert efs_mem.cat_file("/p") == b"3"


# -- ranges ------------------------------------------------------------------------
RANGES = [(None, None), (0, 1), (5, 5), (7, 3), (SEG - 1, SEG + 1), (0, -1), (-10, None), (-10, -3),
          (-100000, 5), (3 * SEG, None), (100000, None), (2, 100000), (None, -SEG)]


@pytest.mark.parametrize("start,end", RANGES)
def test_cat_file_ranges_match_python_slicing(efs_seg, start, end):
    data = os.urandom(4 * SEG + 100)
    efs_seg.pipe_file("/r", data)
    # fsspec's convention: negative offsets count from the end (as slicing).
    assert efs_seg.cat_file("/r", start=start, end=end) == data[start:end]
    assert efs_seg.cat("/r", start=start, end=end) == data[start:end]


def test_cat_ranges_reads_each_object_once(efs_spy, spy):
    a, b = os.urandom(3 * SEG), os.urandom(10)
    efs_spy.pipe_file("/a", a)
    efs_spy.pipe_file("/b", b)
    spy.calls.clear()
    got = efs_spy.cat_ranges(["/a", "/b", "/a", "/missing", "/a"], [0, 2, -5, 0, SEG], [4, None, None, 1, 2 * SEG])
    assert got[:3] == [a[:4], b[2:], a[-5:]] and got[4] == a[SEG : 2 * SEG]
    assert isinstance(got[3], FileNotFoundError)
    # each object is opened once, not once per range: small objects are
    # fetched whole by the opening probe, with no size lookup at all
    infos = [args[0] for name, args, _ in spy.calls if name == "info"]
    assert len(infos) == len(set(infos)) and set(infos) <= {"/missing"}
    assert sorted(args[0] for name, args, _ in spy.calls if name == "cat_file") == ["/a", "/b", "/missing"]
    with pytest.raises(FileNotFoundError):
        efs_spy.cat_ranges(["/missing"], [0], [1], on_error="raise")


def test_random_access_one_ranged_read_and_only_covering_segments(efs_spy, spy):
    data = os.urandom(SMALL_OBJECT + 300 * SEG + 123)  # above the fetch-whole threshold
    efs_spy.pipe_file("/big", data)
    reader = efs_spy.reader("/big")
    decrypted: list[int] = []

    class CountingCipher:
        def __init__(self, inner):
            self.inner = inner

        def open(self, index, sealed, final):
            decrypted.append(index)
            return self.inner.open(index, sealed, final)

    reader._cipher = CountingCipher(reader._cipher)
    for k, n in [(100 * SEG + 5, 3 * SEG), (500 * SEG + 17, 1), (77, SEG)]:
        spy.calls.clear()
        decrypted.clear()
        assert reader.read(k, k + n) == data[k : k + n]
        segs = covering_segments(k, k + n, SEG)
        assert decrypted == list(segs)
        if segment_offset(segs[-1] + 1, SEG) <= probe_size(SEG):
            assert spy.calls == []  # the opening probe already holds these segments
            continue
        assert spy.calls == [("cat_file", ("/big",), {
            "start": segment_offset(segs[0], SEG),
            "end": segment_offset(segs[-1] + 1, SEG),
        })]


def test_open_read_seek_makes_one_ranged_request(efs_spy, spy):
    data = os.urandom(SMALL_OBJECT + 50 * SEG)
    efs_spy.pipe_file("/big", data)
    with efs_spy.open("/big", "rb", cache_type="none") as f:
        spy.calls.clear()
        f.seek(200 * SEG + 3)  # past the opening probe's bytes
        assert f.read(SEG) == data[200 * SEG + 3 : 201 * SEG + 3]
        assert [name for name, _, _ in spy.calls] == ["cat_file"]
        spy.calls.clear()
        f.seek(-5, 2)
        assert f.read() == data[-5:]
        # the final segment: authenticated when a read reaches it, then kept
        assert [name for name, _, _ in spy.calls] == ["cat_file"]
        spy.calls.clear()
        f.seek(-3, 2)
        assert f.read() == data[-3:]
        assert spy.calls == []


def test_open_costs_one_request(efs_spy, spy):
    efs_spy.pipe_file("/big", os.urandom(SMALL_OBJECT + 10 * SEG))
    spy.calls.clear()
    with efs_spy.open("/big", "rb"):
        # the probe: header and first bytes; the size from a listing entry
        assert [name for name, _, _ in spy.calls if name != "info"] == ["cat_file"]


@pytest.mark.parametrize("damage", ["flip-last-byte", "drop-last-segment"])
def test_a_read_reaching_the_end_authenticates_the_final_segment(efs_seg, memfs, damage):
    data = os.urandom(SMALL_OBJECT + 10 * SEG)
    efs_seg.pipe_file("/big", data)
    raw = bytearray(memfs.cat_file("/big"))
    if damage == "flip-last-byte":
        raw[-1] ^= 1
    else:
        del raw[-(len(data) % SEG + 16):]
    memfs.pipe_file("/big", bytes(raw))
    with efs_seg.open("/big", "rb") as f:
        # the final segment is not needed yet: authentic bytes only
        assert f.read(10) == data[:10]
        f.seek(-1, 2)
        with pytest.raises(IntegrityError):
            f.read()
        f.seek(0, 2)
        with pytest.raises(IntegrityError):
            f.read()  # even an empty read at the end proves the size first
    with efs_seg.open("/big", "rb") as f, pytest.raises(IntegrityError):
        f.read()
    for start, end in [(0, None), (-1, None), (len(data) - 5, len(data) + 5)]:
        with pytest.raises(IntegrityError):
            efs_seg.cat_file("/big", start=start, end=end)


# -- copies and moves ------------------------------------------------------------------
def test_cp_file_rebinds_header_and_keeps_body(efs_seg, memfs):
    data = os.urandom(3 * SEG + 5)
    efs_seg.pipe_file("/src/a", data)
    efs_seg.cp_file("/src/a", "/dst/b")
    src_raw, dst_raw = memfs.cat_file("/src/a"), memfs.cat_file("/dst/b")
    assert src_raw[HEADER_REGION:] == dst_raw[HEADER_REGION:]  # body copied, not re-encrypted
    assert src_raw[:HEADER_REGION] != dst_raw[:HEADER_REGION]
    assert efs_seg.header("/dst/b").context["encfs:path"] == "/dst/b"
    assert efs_seg.cat_file("/dst/b") == data == efs_seg.cat_file("/src/a")


def test_copy_recursive(efs_mem):
    files = {"/s/a": b"1", "/s/sub/b": b"22", "/s/sub/deep/c": b"333"}
    efs_mem.pipe(files)
    efs_mem.copy("/s", "/t", recursive=True)
    for path, value in files.items():
        assert efs_mem.cat_file(path.replace("/s/", "/t/", 1)) == value
        assert efs_mem.header(path.replace("/s/", "/t/", 1)).context["encfs:path"] == path.replace("/s/", "/t/", 1)


@pytest.mark.parametrize("where", ["memory", "local"])
def test_mv_rebinds_without_reencrypting(efs_seg, memfs, efs_local, where):
    if where == "memory":
        efs, raw_cat, a, b = efs_seg, memfs.cat_file, "/m/a", "/m/n/b"
    else:
        efs, root = efs_local
        a, b = str(root / "a"), str(root / "n" / "b")
        efs.makedirs(str(root / "n"))
        raw_cat = fsspec.filesystem("file").cat_file
    data = os.urandom(5 * SEG + 1)
    efs.pipe_file(a, data)
    body = raw_cat(a)[HEADER_REGION:]
    efs.mv(a, b)
    assert not efs.exists(a)
    assert raw_cat(b)[HEADER_REGION:] == body
    assert efs.cat_file(b) == data
    assert efs.header(b).context["encfs:path"] == efs._bound_path(b)


def test_mv_recursive(efs_mem):
    efs_mem.pipe({"/s/a": b"1", "/s/sub/b": b"2"})
    efs_mem.mv("/s", "/t", recursive=True)
    assert not efs_mem.exists("/s/a") and not efs_mem.exists("/s/sub/b")
    assert efs_mem.cat_file("/t/sub/b") == b"2"


def test_move_behind_encfs_back_is_detected(efs_mem, memfs):
    efs_mem.pipe_file("/a", b"secret")
    memfs.mv("/a", "/b")
    with pytest.raises(IntegrityError):
        efs_mem.cat_file("/b")
    with pytest.raises(IntegrityError):
        efs_mem.cp_file("/b", "/c")
    assert not memfs.exists("/c")


def test_rm_recursive(efs_mem, memfs):
    efs_mem.pipe({"/r/a": b"1", "/r/s/b": b"2", "/keep": b"3"})
    efs_mem.rm("/r", recursive=True)
    assert not efs_mem.exists("/r/a") and not efs_mem.exists("/r/s/b")
    assert efs_mem.cat_file("/keep") == b"3"
    efs_mem.rm("/keep")
    assert memfs.find("/") == []


# -- listings ------------------------------------------------------------------------
def test_listings_report_plaintext_sizes(efs_seg):
    sizes = {"/l/a": 0, "/l/b": SEG, "/l/s/c": 3 * SEG + 1}
    efs_seg.pipe({p: os.urandom(n) for p, n in sizes.items()})
    assert {e["name"]: e["size"] for e in efs_seg.ls("/l") if e["type"] == "file"} == {"/l/a": 0, "/l/b": SEG}
    assert efs_seg.info("/l/s/c")["size"] == 3 * SEG + 1
    assert efs_seg.size("/l/s/c") == 3 * SEG + 1
    assert {p: i["size"] for p, i in efs_seg.find("/l", detail=True).items()} == sizes
    assert efs_seg.du("/l") == sum(sizes.values())
    assert efs_seg.du("/l", total=False) == sizes
    assert efs_seg.glob("/l/**/c") == ["/l/s/c"]
    assert efs_seg.glob("/l/*", detail=True)["/l/b"]["size"] == SEG
    walked = {d: files for d, _, files in efs_seg.walk("/l", detail=True)}
    assert walked["/l/s"]["c"]["size"] == 3 * SEG + 1


@pytest.mark.parametrize("op", ["ls", "find", "du", "glob", "walk", "info-dir", "exists"])
def test_listings_make_no_request_per_object(efs_spy, spy, op):
    def run(n: int) -> Counter:
        spy.store.clear()
        spy.pseudo_dirs[:] = [""]
        efs_spy.pipe({f"/d/f{i}": os.urandom(i) for i in range(n)})
        spy.calls.clear()
        {
            "ls": lambda: efs_spy.ls("/d"),
            "find": lambda: efs_spy.find("/d", detail=True),
            "du": lambda: efs_spy.du("/d"),
            "glob": lambda: efs_spy.glob("/d/f*"),
            "walk": lambda: list(efs_spy.walk("/d", detail=True)),
            "info-dir": lambda: efs_spy.info("/d"),
            "exists": lambda: efs_spy.exists("/d/f1"),
        }[op]()
        return spy.counts()

    few, many = run(3), run(30)
    assert few == many
    assert few["cat_file"] == 0 and few["_open"] == 0


def test_temp_files_never_listed(efs_local):
    efs, root = efs_local
    efs.pipe_file(str(root / "done"), b"x")
    f = efs.open(str(root / "pending"), "wb")
    f.write(b"y" * 5000)
    assert any(TEMP_MARK in name for name in _raw_files(root))  # the sink's temp exists...
    for listing in (efs.ls(str(root), detail=False), efs.find(str(root)), efs.glob(str(root / "*")),
                    list(efs.du(str(root), total=False)), [n for _, _, fs in efs.walk(str(root)) for n in fs]):
        assert not any(TEMP_MARK in n for n in listing)  # ...but is never shown
        assert any(n.endswith("done") for n in listing)
    f.discard()
    assert _raw_files(root) == ["done"]


def test_mixed_directory_of_encfs_and_plaintext_files(efs_local):
    efs, root = efs_local
    efs.pipe_file(str(root / "enc.bin"), b"encrypted")
    (root / "plain.txt").write_bytes(b"just text")
    (root / "big-plain.bin").write_bytes(b"z" * (HEADER_REGION + 100))
    entries = {os.path.basename(e["name"]): e for e in efs.ls(str(root))}
    assert entries["enc.bin"]["size"] == len(b"encrypted")
    assert entries["plain.txt"]["encfs_valid"] is False
    assert efs.info(str(root / "plain.txt"))["type"] == "file"
    assert efs.cat_file(str(root / "enc.bin")) == b"encrypted"
    for name in ("plain.txt", "big-plain.bin"):
        with pytest.raises(FormatError, match=name):
            efs.cat_file(str(root / name))
        with pytest.raises(FormatError, match=name):
            efs.open(str(root / name), "rb")


def test_large_plaintext_file_is_a_format_error(efs_mem, memfs):
    memfs.pipe_file("/plain.bin", b"P" * (SMALL_OBJECT + 10))
    with pytest.raises(FormatError, match="/plain.bin"):
        efs_mem.cat_file("/plain.bin", start=0, end=10)


def test_touch_and_mkdir(efs_mem, efs_local):
    efs_mem.mkdir("/dir/sub")
    assert efs_mem.isdir("/dir/sub")
    efs_mem.touch("/dir/sub/t")
    assert efs_mem.cat_file("/dir/sub/t") == b"" and efs_mem.info("/dir/sub/t")["size"] == 0
    efs_mem.pipe_file("/dir/keep", b"data")
    efs_mem.touch("/dir/keep")
    assert efs_mem.cat_file("/dir/keep") == b""
    efs, root = efs_local
    efs.makedirs(str(root / "a" / "b"), exist_ok=True)
    efs.touch(str(root / "a" / "b" / "t"))
    assert efs.isfile(str(root / "a" / "b" / "t"))
    assert (root / "a" / "b" / "t").read_bytes()[:4] == MAGIC
    keep = root / "a" / "keep"
    efs.pipe_file(str(keep), b"data")
    os.utime(keep, (1_000_000, 1_000_000))
    efs.touch(str(keep), truncate=False)  # only the timestamp changes
    assert efs.cat_file(str(keep)) == b"data" and keep.stat().st_mtime > 1_000_000


# -- get / put -------------------------------------------------------------------
def test_put_and_get_local_plaintext(efs_mem, memfs, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha" * 1000)
    (src / "sub" / "b.txt").write_bytes(b"beta")
    efs_mem.put(str(src), "/up", recursive=True)
    assert memfs.cat_file("/up/a.txt")[:4] == MAGIC
    assert efs_mem.cat_file("/up/sub/b.txt") == b"beta"
    efs_mem.get("/up", str(tmp_path / "down"), recursive=True)
    assert (tmp_path / "down" / "a.txt").read_bytes() == b"alpha" * 1000
    assert (tmp_path / "down" / "sub" / "b.txt").read_bytes() == b"beta"


def test_get_of_tampered_object_leaves_no_local_file(efs_seg, memfs, tmp_path):
    data = os.urandom(SMALL_OBJECT + 20 * SEG)
    efs_seg.pipe_file("/obj", data)
    raw = bytearray(memfs.cat_file("/obj"))
    raw[segment_offset(3, SEG) + 10] ^= 1  # an early segment: the read fails part-way
    memfs.pipe_file("/obj", bytes(raw))
    with pytest.raises(IntegrityError):
        efs_seg.get_file("/obj", str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


# -- failed writes ---------------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_inside_with_leaves_nothing(efs_mem, memfs, efs_local, exc):
    efs, root = efs_local
    for fs, path in ((efs_mem, "/w"), (efs, str(root / "w"))):
        with pytest.raises(type(exc)), fs.open(path, "wb") as f:
            f.write(b"partial" * 50000)
            raise exc
        assert not fs.exists(path)
    assert memfs.find("/") == []
    assert _raw_files(root) == []


def test_exception_inside_fsspec_open_leaves_nothing(efs_local):
    efs, root = efs_local
    url = f"enc::file://{root}/w.txt"
    with pytest.raises(RuntimeError), fsspec.open(url, "w", keystore=os.environ["ENCFS_HOME"]) as f:
        f.write("partial")
        raise RuntimeError
    assert _raw_files(root) == []
    # a file opened while another exception is being handled still commits
    try:
        raise KeyError("unrelated")
    except KeyError:
        with fsspec.open(url, "wb", keystore=os.environ["ENCFS_HOME"]) as f:
            f.write(b"complete")
    assert efs.cat_file(str(root / "w.txt")) == b"complete"
    # contextlib.closing discards too; an explicit close() in an except block commits
    with pytest.raises(ValueError), contextlib.closing(efs.open(str(root / "c"), "wb")) as f:
        f.write(b"partial")
        raise ValueError
    assert not efs.exists(str(root / "c"))
    f = efs.open(str(root / "c"), "wb")
    try:
        f.write(b"first try")
        raise ValueError
    except ValueError:
        f.write(b", fallback")
        f.close()
    assert efs.cat_file(str(root / "c")) == b"first try, fallback"


def test_target_error_mid_write_on_local_leaves_nothing(efs_local, monkeypatch):
    efs, root = efs_local
    real_write = LocalSink.write
    written = []

    def failing_write(self, data):
        written.append(len(data))
        if sum(written) > 3 * 65536:
            raise OSError(28, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(LocalSink, "write", failing_write)
    with pytest.raises(OSError, match="No space"), efs.open(str(root / "w"), "wb") as f:
        for _ in range(20):
            f.write(os.urandom(65536))
    assert _raw_files(root) == []


def test_write_error_poisons_the_file(efs_local, monkeypatch):
    """After a target error in write(), closing (from a finally, or after the
    caller swallowed the error) must not commit the partial object."""
    efs, root = efs_local
    failing = [False]
    real_write = LocalSink.write

    def write(self, data):
        if failing[0]:
            raise OSError(28, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(LocalSink, "write", write)
    f = efs.open(str(root / "p1"), "wb")
    f.write(os.urandom(5 * 65536))
    failing[0] = True
    with pytest.raises(OSError, match="No space"):
        try:
            f.write(os.urandom(5 * 65536))
        finally:
            f.close()  # while the error propagates: discard quietly
    failing[0] = False
    f = efs.open(str(root / "p2"), "wb")
    f.write(os.urandom(2 * 65536))
    failing[0] = True
    with contextlib.suppress(OSError):
        f.write(os.urandom(5 * 65536))
    failing[0] = False
    with pytest.raises(OSError, match="earlier write"):
        f.write(b"more")
    with pytest.raises(OSError, match="nothing was stored"):
        f.close()
    assert _raw_files(root) == []


def test_target_error_at_commit_on_local_leaves_nothing(efs_local, monkeypatch):
    efs, root = efs_local

    real_replace = os.replace

    def failing_replace(src, dst, **kwargs):
        if str(dst).startswith(str(root)):  # the keystore's own writes go on
            raise OSError(5, "Input/output error")
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output"):
        efs.pipe_file(str(root / "w"), b"data")
    assert _raw_files(root) == []


def test_target_error_mid_write_on_generic_target_leaves_nothing(memfs, encfs_home):
    """A target without a special sink streams into a hidden temp sibling."""

    class FailingDirFS(DirFileSystem):
        budget = 3 * 65536

        def open(self, path, mode="rb", **kwargs):
            f = super().open(path, mode, **kwargs)
            if "w" in mode:
                real = f.write
                spent = [0]

                def write(data):
                    spent[0] += len(data)
                    if spent[0] > self.budget:
                        raise ConnectionError("target went away")
                    return real(data)

                f.write = write
            return f

    target = FailingDirFS(path="/base", fs=memfs)
    efs = EncryptedFileSystem(fs=target, keystore=str(encfs_home), skip_instance_cache=True)
    with pytest.raises(ConnectionError), efs.open("w", "wb") as f:
        for _ in range(10):
            f.write(os.urandom(65536))
    assert memfs.find("/") == []
    target.budget = 10**9
    efs.pipe_file("ok", b"fine")
    assert memfs.find("/") == ["/base/ok"]
    assert efs.cat_file("ok") == b"fine"


def test_unclosed_write_is_never_committed(efs_mem, memfs):
    f = efs_mem.open("/orphan", "wb")
    f.write(b"half")
    with pytest.warns(ResourceWarning):
        f.__del__()
    assert memfs.find("/") == []


# -- memory -----------------------------------------------------------------------------
def test_streaming_write_keeps_memory_bounded(tmp_path, encfs_home):
    """256 MiB written in 1 MiB chunks through enc::file:// must not grow the
    peak RSS by more than ~32 MiB (measured in a fresh process)."""
    script = textwrap.dedent(
        f"""
        import os, resource, fsspec
        url = "enc::file://{tmp_path}/big.bin"
        opts = dict(keystore={str(encfs_home)!r})
        chunk = os.urandom(1 << 20)
        with fsspec.open(url + ".warm", "wb", **opts) as f:   # imports, keys, first segments
            f.write(chunk)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with fsspec.open(url, "wb", **opts) as f:
            for _ in range(256):
                f.write(chunk)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fs, path = fsspec.url_to_fs(url, **opts)
        assert fs.size(path) == 256 << 20
        print((after - before) * 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth = int(out.stdout.strip().splitlines()[-1])
    assert growth < 32 << 20, f"peak RSS grew by {growth >> 20} MiB"


# -- paths and URLs ---------------------------------------------------------------------------
def test_url_to_fs_returns_inner_path_and_shares_instances(tmp_path, encfs_home):
    opts = {"keystore": str(encfs_home)}
    fs1, p1 = fsspec.url_to_fs(f"enc::file://{tmp_path}/a.parquet", **opts)
    fs2, p2 = fsspec.url_to_fs(f"enc::file://{tmp_path}/b.parquet", **opts)
    assert isinstance(fs1, EncryptedFileSystem)
    assert p1 == f"{tmp_path}/a.parquet" and p2 == f"{tmp_path}/b.parquet"
    assert fs1 is fs2  # fsspec's instance cache ignores the chained path (fo)
    fs3, _ = fsspec.url_to_fs(f"enc::file://{tmp_path}/a", keystore=str(tmp_path))
    assert fs3 is not fs1  # different options, different instance
    fs4 = EncryptedFileSystem(target_protocol="file", keystore=str(encfs_home), skip_instance_cache=True)
    assert fs4 is not fs1


def test_strip_protocol_and_unstrip(efs_mem, tmp_path):
    strip = EncryptedFileSystem._strip_protocol
    assert strip("enc::memory://x/a") == "memory://x/a"
    assert strip("enc:///x/a") == "/x/a"
    assert efs_mem._target_path("enc::memory://x/a") == "/x/a"
    assert efs_mem._target_path("/x/dir/") == "/x/dir/"  # the trailing "/" is kept
    assert efs_mem._bound_path("/x/dir/") == "/x/dir"
    efs_mem.pipe_file("/u/v", b"payload")
    url = efs_mem.unstrip_protocol("/u/v")
    assert url == "enc+memory:///u/v"  # the single-scheme form (encfs/urls.py)
    fs, path = fsspec.url_to_fs(url, memory={"skip_instance_cache": True})
    assert fs._target_path(path) == "/u/v"


def test_paths_given_as_enc_urls(efs_local):
    efs, root = efs_local
    efs.pipe_file(f"enc::file://{root}/u.bin", b"via url")
    assert efs.cat_file(str(root / "u.bin")) == b"via url"
    assert efs.cat_file(f"enc::file://{root}/u.bin") == b"via url"


def test_missing_paths_raise_file_not_found(efs_mem):
    for call in (lambda: efs_mem.cat_file("/nope"), lambda: efs_mem.open("/nope", "rb"),
                 lambda: efs_mem.info("/nope"), lambda: efs_mem.cp_file("/nope", "/x"),
                 lambda: efs_mem.ls("/nope")):
        with pytest.raises(FileNotFoundError):
            call()


def test_mapper_head_tail_and_open_files(efs_mem, memfs):
    m = efs_mem.get_mapper("/store")
    m["a/b"] = b"value"
    m["c"] = b"other"
    assert memfs.cat_file("/store/a/b")[:4] == MAGIC
    assert dict(m) == {"a/b": b"value", "c": b"other"}
    del m["c"]
    assert list(m) == ["a/b"]
    data = os.urandom(3 * SEG)
    efs_mem.pipe_file("/ht", data)
    assert efs_mem.head("/ht", 10) == data[:10]
    assert efs_mem.tail("/ht", 10) == data[-10:]
    assert efs_mem.read_block("/ht", SEG - 5, 10) == data[SEG - 5 : SEG + 5]


def test_instance_cache_follows_encfs_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCFS_HOME", str(tmp_path / "home-a"))
    a1 = fsspec.filesystem("enc", target_protocol="memory")
    assert fsspec.filesystem("enc", target_protocol="memory") is a1
    monkeypatch.setenv("ENCFS_HOME", str(tmp_path / "home-b"))
    b = fsspec.filesystem("enc", target_protocol="memory")
    assert b is not a1
    b.pipe_file("/home-b-object", b"x")
    assert (tmp_path / "home-b").is_dir() and not (tmp_path / "home-a").exists()
    b.rm("/home-b-object")


def test_copying_a_plaintext_file_is_refused(efs_mem, memfs):
    memfs.pipe_file("/plain.txt", b"not encrypted, not ours" * 300)
    with pytest.raises(FormatError, match="/plain.txt"):
        efs_mem.cp_file("/plain.txt", "/copy.txt")
    assert not memfs.exists("/copy.txt")


@pytest.mark.parametrize("size", [0, 1, DEFAULT_SEGMENT - 1, DEFAULT_SEGMENT, DEFAULT_SEGMENT + 1, 2 * DEFAULT_SEGMENT,
                                  16 * DEFAULT_SEGMENT + 5])
def test_open_probe_boundaries(efs_mem, efs_local, size):
    """The opening probe (header + one default segment) is exact at its edges:
    an object exactly as long as the probe, or one byte longer, reads right."""
    data = os.urandom(size)
    local, root = efs_local
    for fs, path in ((efs_mem, "/probe.bin"), (local, str(root / "probe.bin"))):
        fs.pipe_file(path, data)
        assert fs.cat_file(path) == data
        assert fs.cat_file(path, start=size // 2) == data[size // 2 :]
        with fs.open(path, "rb") as f:
            assert f.size == size and f.read() == data
