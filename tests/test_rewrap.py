"""Rewrap: header-only re-wrapping of data keys on memory, local and S3
targets; bodies untouched, idempotent, safe after interruption, refuses
tampered objects, and "rewrap then disable the old key"."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from encfs import EncryptedFileSystem
from encfs.errors import KeyStateError
from encfs.format import HEADER_REGION, parse_header
from encfs.keystore.store import LocalKeystore
from encfs.rewrap import FAILED, REWRAPPED, SKIPPED, UP_TO_DATE, WOULD_REWRAP, Rewrapper, rewrap
from encfs.sinks import BufferSink


def _efs(target, home, key="local://default", **kw):
    return EncryptedFileSystem(fs=target, keystore=str(home), key=key, cache=False, skip_instance_cache=True, **kw)


def _versions(fs, path):
    return [(w.key_id, w.version) for w in fs.header(path).wrapped_keys]


def _body(tfs, path):
    raw = tfs.cat_file(path)
    return raw[parse_header(raw).header_region :]


@pytest.fixture(params=["memory", "local"])
def target(request, memfs, tmp_path):
    if request.param == "memory":
        return memfs, "/lake"
    import fsspec

    return fsspec.filesystem("file", skip_instance_cache=True), str(tmp_path / "lake")


def _populate(fs, root, n=5):
    data = {}
    for i in range(n):
        path = f"{root}/{'sub/' if i % 2 else ''}part-{i}.bin"
        payload = os.urandom(1000 + 70_000 * i)  # several segments for the larger ones
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, payload)
        data[path] = payload
    return data


def test_rotate_then_rewrap_to_current_version(target, encfs_home):
    tfs, root = target
    fs = _efs(tfs, encfs_home)
    data = _populate(fs, root)
    ks = LocalKeystore(encfs_home)
    kid = ks.resolve("default")
    bodies = {p: _body(tfs, p) for p in data}
    assert {parse_header(tfs.cat_file(p)).header_region for p in data} == {496, HEADER_REGION}  # v1.1 and v1.0
    ks.rotate(kid)

    dry = rewrap(fs, root, dry_run=True)
    assert dry.count(WOULD_REWRAP) == 5 and all(_versions(fs, p) == [(kid, "1")] for p in data)

    report = rewrap(fs, root, jobs=4)
    assert report.count(REWRAPPED) == 5 and not report.failed
    for p, payload in data.items():
        assert _versions(fs, p) == [(kid, "2")]
        assert _body(tfs, p) == bodies[p]  # body bytes untouched
        assert fs.cat_file(p) == payload
    assert not [p for p in tfs.find(root) if ".encfs-tmp-" in p]  # no temp files left

    again = rewrap(fs, root)
    assert again.count(UP_TO_DATE) == 5 and again.count(REWRAPPED) == 0


def test_rewrap_to_another_key_then_disable_the_old_one(target, encfs_home):
    tfs, root = target
    fs = _efs(tfs, encfs_home)
    data = _populate(fs, root, n=3)
    ks = LocalKeystore(encfs_home)
    old, new = ks.resolve("default"), ks.create_key(alias="new-lake")
    report = rewrap(fs, [root], to=["local://alias/new-lake"])
    assert report.count(REWRAPPED) == 3
    assert report.results[0].before == [f"local://{old}#v1"] and report.results[0].after == [f"local://{new}#v1"]
    ks.disable(old)
    for p, payload in data.items():
        assert _versions(fs, p) == [(new, "1")]
        assert _efs(tfs, encfs_home, "local://new-lake").cat_file(p) == payload


def test_without_rewrap_disabling_the_old_key_locks_objects(memfs, encfs_home):
    fs = _efs(memfs, encfs_home)
    fs.pipe_file("/a", b"x")
    ks = LocalKeystore(encfs_home)
    ks.create_key(alias="new")
    ks.disable(ks.resolve("default"))
    with pytest.raises(KeyStateError):
        fs.cat_file("/a")
    before = memfs.cat_file("/a")
    report = rewrap(fs, "/a", to=["local://new"])  # cannot unwrap: reported, object untouched
    assert memfs.cat_file("/a") == before
    assert report.count(FAILED) == 1 and "Disabled" in report.failed[0].error


def test_several_target_keys_and_path_list(memfs, encfs_home):
    fs = _efs(memfs, encfs_home)
    fs.pipe_file("/x/a", b"a")
    fs.pipe_file("/y/b", b"b")
    ks = LocalKeystore(encfs_home)
    k1, k2 = ks.create_key(), ks.create_key()
    report = rewrap(fs, ["/x", "/y/b"], to=[f"local://{k1}", f"local://{k2}"])
    assert report.count(REWRAPPED) == 2
    assert _versions(fs, "/x/a") == [(k1, "1"), (k2, "1")]
    ks.disable(k1)
    assert _efs(memfs, encfs_home, f"local://{k2}").cat_file("/y/b") == b"b"


def test_interrupted_run_is_safe_to_rerun(memfs, encfs_home, monkeypatch):
    fs = _efs(memfs, encfs_home)
    data = _populate(fs, "/lake", n=4)
    ks = LocalKeystore(encfs_home)
    kid = ks.resolve("default")
    ks.rotate(kid)
    real_commit = BufferSink.commit
    calls = {"n": 0}

    def crashing_commit(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("simulated crash")
        return real_commit(self)

    monkeypatch.setattr(BufferSink, "commit", crashing_commit)
    first = rewrap(fs, "/lake", jobs=1)
    assert first.count(REWRAPPED) == 3 and first.count(FAILED) == 1
    monkeypatch.setattr(BufferSink, "commit", real_commit)
    for p, payload in data.items():
        assert fs.cat_file(p) == payload  # the failed object is the old, intact one
    second = rewrap(fs, "/lake")
    assert second.count(REWRAPPED) == 1 and second.count(UP_TO_DATE) == 3
    assert all(_versions(fs, p) == [(kid, "2")] for p in data)


def test_tampered_or_moved_objects_are_not_rewrapped(memfs, encfs_home):
    fs = _efs(memfs, encfs_home)
    fs.pipe_file("/t/a", b"a" * 100)
    fs.pipe_file("/t/b", b"b" * 100)
    raw = bytearray(memfs.cat_file("/t/a"))
    raw[60] ^= 1  # inside the MAC-covered header part
    memfs.pipe_file("/t/a", bytes(raw))
    memfs.mv("/t/b", "/t/c")  # moved behind encfs's back: path binding fails
    memfs.pipe_file("/t/plain.txt", b"not encrypted at all, but long enough? no")
    ks = LocalKeystore(encfs_home)
    ks.rotate(ks.resolve("default"))
    report = rewrap(fs, "/t")
    status = {r.path.rsplit("/", 1)[-1]: r.status for r in report.results}
    assert status == {"a": FAILED, "c": FAILED, "plain.txt": SKIPPED}
    assert bytes(raw) == memfs.cat_file("/t/a")


def test_compact_object_outgrowing_its_region_is_rewritten_whole(memfs, encfs_home):
    """FORMAT.md section 4.2: a v1.1 object whose new wrapped keys do not fit
    its region is rewritten whole in the region they need (the next lane, or
    v1.0), body bytes unchanged; keys that fit keep the region and size."""
    fs = _efs(memfs, encfs_home)
    small, mid = os.urandom(1024), os.urandom(2000)
    fs.pipe_file("/c/small", small)
    fs.pipe_file("/c/mid", mid)
    assert [len(memfs.cat_file(p)) for p in ("/c/small", "/c/mid")] == [1536, 1536 + 2016]
    bodies = {p: _body(memfs, p) for p in ("/c/small", "/c/mid")}
    ks = LocalKeystore(encfs_home)
    keys = [ks.create_key() for _ in range(14)]
    steps = [("/c/small", 2, 496), ("/c/small", 4, 1536), ("/c/small", 14, HEADER_REGION), ("/c/small", 1, HEADER_REGION),
             ("/c/mid", 4, 1536), ("/c/mid", 14, HEADER_REGION)]
    for path, n, region in steps:
        report = rewrap(fs, path, to=[f"local://{k}" for k in keys[:n]])
        assert report.count(REWRAPPED) == 1, report.results
        raw = memfs.cat_file(path)
        header = parse_header(raw)
        assert header.header_region == region and len(header.wrapped_keys) == n, (path, n)
        assert len(raw) == region + len(bodies[path]) and _body(memfs, path) == bodies[path]
        assert fs.info(path)["size"] == fs.ls("/c", detail=True)[[e["name"] for e in fs.ls("/c")].index(path)]["size"]
        assert fs.info(path)["size"] == len(small if path == "/c/small" else mid)
        for k in (keys[0], keys[n - 1]):  # any of the new keys reads it
            assert _efs(memfs, encfs_home, f"local://{k}").cat_file(path) == (small if path == "/c/small" else mid)
    assert not [p for p in memfs.find("/") if ".encfs-tmp-" in p]


def test_whole_rewrite_refuses_a_damaged_body(memfs, encfs_home):
    """The whole-object rewrite authenticates every segment first: damage in
    the body is never re-published under a fresh header MAC."""
    fs = _efs(memfs, encfs_home, segment_size=1024)
    fs.pipe_file("/d", b"z" * 1500)  # two segments, 1536-byte region
    raw = bytearray(memfs.cat_file("/d"))
    raw[-5] ^= 1
    memfs.pipe_file("/d", bytes(raw))
    ks = LocalKeystore(encfs_home)
    keys = [ks.create_key() for _ in range(14)]
    report = rewrap(fs, "/d", to=[f"local://{k}" for k in keys])
    assert report.count(FAILED) == 1 and "authentication" in report.failed[0].error
    assert memfs.cat_file("/d") == bytes(raw)


def test_concurrent_replacement_is_not_overwritten(memfs, encfs_home, monkeypatch):
    fs = _efs(memfs, encfs_home)
    fs.pipe_file("/r", b"old" * 1000)
    ks = LocalKeystore(encfs_home)
    ks.rotate(ks.resolve("default"))
    worker = Rewrapper(fs)
    real = fs.keyring.rewrap

    def rewrap_and_race(*a, **kw):
        out = real(*a, **kw)
        _efs(memfs, encfs_home).pipe_file("/r", b"new" * 1000)  # another writer wins meanwhile
        return out

    monkeypatch.setattr(fs.keyring, "rewrap", rewrap_and_race)
    result = worker.rewrap_object("/r")
    assert result.status == FAILED and "changed during rewrap" in result.error
    assert fs.cat_file("/r") == b"new" * 1000


def test_rewrap_is_audited(memfs, encfs_home):
    fs = _efs(memfs, encfs_home)
    fs.pipe_file("/a", b"1")
    ks = LocalKeystore(encfs_home)
    ks.rotate(ks.resolve("default"))
    rewrap(fs, "/a")
    recs = [json.loads(x) for x in (encfs_home / "audit.log").read_text().splitlines()]
    rw = [r for r in recs if r["action"] == "rewrap"]
    assert len(rw) == 1 and rw[0]["path"] == "/a" and rw[0]["outcome"] == "success"
    assert rw[0]["keys"][0].endswith("#v1") and rw[0]["to"].endswith("#v2")
    assert [r["action"] for r in recs[-3:]] == ["unwrap", "wrap", "rewrap"]


def test_rewrap_on_s3(moto_server, s3, encfs_home):
    fs = _efs(s3, encfs_home)
    root = s3.test_bucket + "/lake"
    data = _populate(fs, root, n=3)
    ks = LocalKeystore(encfs_home)
    kid = ks.resolve("default")
    ks.rotate(kid)
    report = rewrap(fs, root, jobs=2)
    assert report.count(REWRAPPED) == 3, report.failed
    s3.invalidate_cache()
    for p, payload in data.items():
        assert _versions(fs, p) == [(kid, "2")] and fs.cat_file(p) == payload
    assert not [p for p in s3.find(s3.test_bucket) if ".encfs-tmp-" in p]
    assert rewrap(fs, root).count(UP_TO_DATE) == 3


def test_cli_rewrap_subprocess(tmp_path, encfs_home):
    env = {**os.environ, "ENCFS_HOME": str(encfs_home)}
    lake = tmp_path / "lake"
    fs = EncryptedFileSystem(target_protocol="file", keystore=str(encfs_home), skip_instance_cache=True)
    fs.makedirs(str(lake / "d"), exist_ok=True)
    fs.pipe_file(str(lake / "d" / "x.csv"), b"a,b\n")
    ks = LocalKeystore(encfs_home)
    ks.create_key(alias="next")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "encfs.cli", *args], env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    p = run("rewrap", "--dry-run", "--to", "next", str(lake))
    assert p.returncode == 0 and "dry run: 1 would-rewrap" in p.stdout
    p = run("rewrap", "--to", "alias/next", "--no-progress", "-v", str(lake))
    assert p.returncode == 0 and "1 rewrapped" in p.stdout and "->" in p.stdout
    p = run("rewrap", "--to", "next", str(lake / "missing"))
    assert p.returncode == 1 and p.stderr.startswith("encfs: error: ") and "Traceback" not in p.stderr
