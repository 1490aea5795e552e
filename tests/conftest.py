"""Shared fixtures.  Every test gets its own throwaway ENCFS_HOME, so no test
touches the user's keystore and tests never see each other's keys."""

from __future__ import annotations

import fsspec
import pytest

from encfs import EncryptedFileSystem

# The moto server fixtures (S3/KMS over HTTP on 127.0.0.1); the name depends
# on whether tests/ is a package.
pytest_plugins = ["tests._servers" if __package__ else "_servers",
                  # SoftHSM2 token fixtures (hsm, hsm_key) for the PKCS#11 tests
                  "tests._softhsm" if __package__ else "_softhsm",
                  # a throwaway PostgreSQL server (postgres) for the key server's HA tests
                  "tests._postgres" if __package__ else "_postgres"]


@pytest.fixture(autouse=True)
def encfs_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("encfs-home")
    monkeypatch.setenv("ENCFS_HOME", str(home))
    monkeypatch.delenv("ENCFS_PASSPHRASE", raising=False)
    return home


@pytest.fixture
def memfs():
    """A fresh, private in-memory target (not fsspec's shared global store)."""
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem(skip_instance_cache=True)
    fs.store = {}
    fs.pseudo_dirs = [""]
    return fs


@pytest.fixture
def efs_mem(memfs, encfs_home):
    return EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), skip_instance_cache=True)


@pytest.fixture
def efs_local(tmp_path, encfs_home):
    return EncryptedFileSystem(target_protocol="file", keystore=str(encfs_home), skip_instance_cache=True), tmp_path


@pytest.fixture
def plain_local():
    return fsspec.filesystem("file")


@pytest.fixture
def prefetching(monkeypatch):
    """Turn an encfs over a memory target into one that reads like an async
    target (S3): the real Readahead and its futures, with requests run by a
    thread pool over the real MemoryIO, windows of two segments and splits
    from two segments on, so small test objects take the prefetch paths
    (several requests in flight, chunks decrypted in order)."""
    import concurrent.futures

    import encfs.file
    from encfs.format import HEADER_REGION
    from encfs.targets import MemoryIO

    pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="test-prefetch")

    class ConcurrentMemoryIO(MemoryIO):
        concurrent = True

        def submit(self, path, start, end):
            return pool.submit(lambda: bytes(self.fetch(path, start, end)))

    def make(efs, ranged=True):
        efs.io = ConcurrentMemoryIO(efs.fs)
        efs.read_block_size = 2 * efs.segment_size
        monkeypatch.setattr(encfs.file, "SPLIT_MIN", 2 * efs.segment_size)
        if ranged:  # the probe brings the header only: every segment is read by range
            monkeypatch.setattr(encfs.file, "SMALL_OBJECT", 0)
            monkeypatch.setattr(encfs.file, "PROBE_BYTES", HEADER_REGION)
        return efs

    yield make
    pool.shutdown(wait=True)
