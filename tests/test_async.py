"""encfs under fsspec's async machinery (encfs/aio.py): on an async target
(s3fs against moto) ``fsspec.generic.rsync`` works, zarr v3's FsspecStore
uses encfs's coroutines, batches of ``_cat_file`` / ``cat`` overlap."""

from __future__ import annotations

import asyncio
import os
import threading

import fsspec
import fsspec.generic
import numpy as np
import pytest
from fsspec.asyn import sync

from encfs import EncryptedFileSystem
from encfs.format import MAGIC


@pytest.fixture
def efs(moto_server, s3, encfs_home, monkeypatch):
    monkeypatch.setenv("ENCFS_AUDIT_LOG", "off")
    return EncryptedFileSystem(fs=s3, keystore=str(encfs_home), skip_instance_cache=True)


def test_async_impl_follows_the_target(efs, efs_mem):
    assert efs.async_impl and not efs_mem.async_impl


def test_generic_rsync_on_enc_s3(efs, s3, tmp_path, monkeypatch):
    """Failed before: "Calling sync() from within a running loop"."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"a.txt": b"hello", "sub/b.bin": os.urandom(200_000)}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    b = s3.test_bucket
    monkeypatch.setitem(fsspec.generic._generic_fs, "file", fsspec.filesystem("file"))
    monkeypatch.setitem(fsspec.generic._generic_fs, "enc+s3", efs)
    opts = {"inst_kwargs": {"default_method": "generic"}}
    fsspec.generic.rsync(f"file://{src}", f"enc+s3://{b}/dst", **opts)
    for rel, data in files.items():
        assert efs.cat_file(f"{b}/dst/{rel}") == data
        assert s3.cat_file(f"{b}/dst/{rel}")[:4] == MAGIC  # ciphertext at rest
    # enc -> enc (re-bound copies), then an update of one file only
    fsspec.generic.rsync(f"enc+s3://{b}/dst", f"enc+s3://{b}/dst2", **opts)
    assert efs.cat_file(f"{b}/dst2/sub/b.bin") == files["sub/b.bin"]
    (src / "a.txt").write_bytes(b"hello, again")
    copied = fsspec.generic.rsync(f"file://{src}", f"enc+s3://{b}/dst", **opts)
    assert list(copied.values()) == [f"enc+s3://{b}/dst/a.txt"]
    assert efs.cat_file(f"{b}/dst/a.txt") == b"hello, again"


def test_coroutines_batch_on_the_targets_loop(efs, s3):
    b = s3.test_bucket
    blobs = {f"{b}/batch/{i}": os.urandom(1000 + i) for i in range(8)}

    async def work():
        await asyncio.gather(*(efs._pipe_file(p, d) for p, d in blobs.items()))
        got = await asyncio.gather(*(efs._cat_file(p) for p in blobs))
        ranges = await efs._cat_ranges(list(blobs), [10] * len(blobs), [20] * len(blobs))
        listed = await efs._find(f"{b}/batch", detail=True)
        return got, ranges, listed

    got, ranges, listed = sync(s3.loop, work)
    assert got == list(blobs.values())
    assert ranges == [d[10:20] for d in blobs.values()]
    assert {k: v["size"] for k, v in listed.items()} == {k: len(v) for k, v in blobs.items()}


def test_cat_of_many_objects_reads_them_concurrently(efs, s3, monkeypatch):
    b = s3.test_bucket
    blobs = {f"{b}/many/{i}": os.urandom(5000 + i) for i in range(5)}
    efs.pipe(blobs)
    barrier = threading.Barrier(2, timeout=30)
    real_reader = efs.reader
    opened: list[str] = []

    def reader(path):
        opened.append(path)
        if len(opened) <= 2:
            barrier.wait()  # a one-by-one cat can never pass this
        return real_reader(path)

    monkeypatch.setattr(efs, "reader", reader)
    out = efs.cat(list(blobs))
    assert out == blobs
    first = next(iter(blobs))
    assert efs.cat(first) == blobs[first]
    missing = efs.cat([*blobs, f"{b}/many/none"], on_error="omit")
    assert missing == blobs


def test_zarr_fsspec_store_over_enc_s3(moto_server, s3, encfs_home):
    zarr = pytest.importorskip("zarr")
    from zarr.storage import FsspecStore

    async_efs = EncryptedFileSystem(target_protocol="s3", target_options=moto_server.target_options(),
                                    keystore=str(encfs_home), asynchronous=True, skip_instance_cache=True)
    store = FsspecStore(fs=async_efs, path=f"{s3.test_bucket}/z.zarr")  # no wrapper: encfs's own coroutines
    arr = zarr.create_array(store, shape=(300,), chunks=(50,), dtype="f8")
    arr[:] = np.arange(300.0)
    again = zarr.open_array(FsspecStore(fs=async_efs, path=f"{s3.test_bucket}/z.zarr", read_only=True), mode="r")
    assert again[120:130].tolist() == list(range(120, 130))
    assert s3.cat_file(f"{s3.test_bucket}/z.zarr/zarr.json")[:4] == MAGIC
