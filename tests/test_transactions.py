"""fsspec transactions over encfs: nothing is visible until the transaction
ends, and an exception leaves nothing at all (writes, pipes and copies)."""

from __future__ import annotations

import os

import pytest

from encfs.sinks import TEMP_MARK


def _raw_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture(params=["memory", "local", "s3"])
def efs_and_root(request, efs_mem, efs_local, encfs_home):
    if request.param == "memory":
        return efs_mem, "/tx"
    if request.param == "s3":
        # Multipart parts of 8 MiB uploading concurrently (the "huge" write below).
        # The CI smoke venvs (3.10, 3.13) hold no moto/s3fs: skip there.
        pytest.importorskip("moto")
        pytest.importorskip("s3fs")
        from encfs import EncryptedFileSystem

        s3 = request.getfixturevalue("s3")
        return EncryptedFileSystem(fs=s3, keystore=str(encfs_home), skip_instance_cache=True), f"{s3.test_bucket}/tx"
    efs, root = efs_local
    return efs, str(root)


def test_nothing_visible_until_the_end(efs_and_root):
    efs, root = efs_and_root
    efs.pipe_file(f"{root}/existing", b"old")
    with efs.transaction:
        with efs.open(f"{root}/a", "wb") as f:
            f.write(b"alpha")
        efs.pipe_file(f"{root}/b", b"beta")
        efs.pipe_file(f"{root}/existing", b"new")
        efs.cp_file(f"{root}/existing", f"{root}/copy")
        assert not efs.exists(f"{root}/a")
        assert not efs.exists(f"{root}/b")
        assert not efs.exists(f"{root}/copy")
        assert efs.cat_file(f"{root}/existing") == b"old"
        assert sorted(os.path.basename(p) for p in efs.find(root)) == ["existing"]
    assert efs.cat_file(f"{root}/a") == b"alpha"
    assert efs.cat_file(f"{root}/b") == b"beta"
    assert efs.cat_file(f"{root}/existing") == b"new"
    # the copy was taken from what was visible when it ran
    assert efs.cat_file(f"{root}/copy") == b"old"


def test_exception_leaves_nothing(efs_and_root):
    efs, root = efs_and_root
    efs.pipe_file(f"{root}/existing", b"old")
    with pytest.raises(RuntimeError), efs.transaction:
        efs.pipe_file(f"{root}/a", b"alpha")
        efs.pipe_file(f"{root}/existing", b"new")
        efs.cp_file(f"{root}/existing", f"{root}/copy")
        with efs.open(f"{root}/big", "wb") as f:
            f.write(os.urandom(300_000))
        with efs.open(f"{root}/huge", "wb") as f:  # several concurrent parts on S3
            for _ in range(5):
                f.write(os.urandom(4 * 1024 * 1024))
        raise RuntimeError("abort")
    assert sorted(os.path.basename(p) for p in efs.find(root)) == ["existing"]
    assert efs.cat_file(f"{root}/existing") == b"old"
    if hasattr(efs.fs, "test_bucket"):  # no multipart upload left behind
        import boto3

        client = boto3.client("s3", region_name="us-east-1",
                              endpoint_url=efs.fs.client_kwargs["endpoint_url"])
        assert not client.list_multipart_uploads(Bucket=efs.fs.test_bucket).get("Uploads")


def test_no_temp_files_left_after_transactions(efs_local):
    efs, root = efs_local
    with efs.transaction:
        efs.pipe_file(str(root / "a"), b"1")
        assert any(TEMP_MARK in n for n in _raw_files(root))  # staged, hidden
        assert efs.ls(str(root), detail=False) == []
    with pytest.raises(ValueError), efs.transaction:
        efs.pipe_file(str(root / "b"), b"2")
        raise ValueError
    assert _raw_files(root) == ["a"]


def test_caught_write_error_inside_transaction_stays_discarded(efs_mem, memfs):
    with efs_mem.transaction:
        try:
            with efs_mem.open("/tx/bad", "wb") as f:
                f.write(b"partial")
                raise OSError("source failed")
        except OSError:
            pass
        efs_mem.pipe_file("/tx/good", b"ok")
    assert not efs_mem.exists("/tx/bad")
    assert efs_mem.cat_file("/tx/good") == b"ok"
    assert memfs.find("/") == ["/tx/good"]


def test_exclusive_create_inside_transaction(efs_local):
    efs, root = efs_local
    p = str(root / "x")
    with pytest.raises(FileExistsError), efs.transaction:
        efs.pipe_file(p, b"first", mode="create")
        # someone else creates it before the transaction commits
        (root / "x").write_bytes(b"other")
    assert (root / "x").read_bytes() == b"other"
    assert _raw_files(root) == ["x"]


def test_mv_inside_a_transaction_is_all_or_nothing(efs_and_root):
    efs, root = efs_and_root
    efs.makedirs(f"{root}/src/b", exist_ok=True)
    efs.pipe({f"{root}/src/a": b"1", f"{root}/src/b/c": b"2"})
    with pytest.raises(RuntimeError), efs.transaction:
        efs.mv(f"{root}/src", f"{root}/dst", recursive=True)
        raise RuntimeError("roll back")
    # rolled back: the sources are still there, nothing arrived
    assert efs.cat_file(f"{root}/src/b/c") == b"2"
    assert not efs.exists(f"{root}/dst/a")
    # (directories the rolled-back copy made stay: they hold no object, and
    # fsspec would nest a move into an existing "dst", so use a new name)
    with efs.transaction:
        efs.mv(f"{root}/src", f"{root}/moved", recursive=True)
        assert efs.cat_file(f"{root}/src/a") == b"1"
        assert not efs.exists(f"{root}/moved/a")
    assert not efs.exists(f"{root}/src/a") and not efs.exists(f"{root}/src/b/c")
    assert efs.cat_file(f"{root}/moved/a") == b"1" and efs.cat_file(f"{root}/moved/b/c") == b"2"
