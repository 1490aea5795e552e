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
