"""fsspec's own conformance suite (``fsspec.tests.abstract``) over ``enc``.

The same five suites s3fs runs (copy, get, put, pipe, open) are run over an
encrypted filesystem on a memory target, on a local-disk target and on a
target with no dedicated sink (the generic temp-sibling path), the way
fsspec's own implementation tests subclass them: only the fixtures differ.
``get``/``put`` move data between plaintext local files and encfs objects,
so these tests also check that everything at rest is ciphertext.
"""

from __future__ import annotations

import os

import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

from encfs import EncryptedFileSystem
from encfs.format import MAGIC
from encfs.sinks import TEMP_MARK


def _assert_all_ciphertext(target, root: str) -> None:
    """Every file under ``root`` at the target is an encfs object, and no
    sink left a temp file behind."""
    for name, info in target.find(root, detail=True).items():
        assert TEMP_MARK not in name
        if info["type"] == "file":
            assert target.cat_file(name, start=0, end=4) == MAGIC, name


class EncMemoryFixtures(AbstractFixtures):
    @pytest.fixture
    def target(self):
        fs = MemoryFileSystem(skip_instance_cache=True)
        fs.store = {}
        fs.pseudo_dirs = [""]
        return fs

    @pytest.fixture
    def fs(self, target, encfs_home):
        efs = EncryptedFileSystem(fs=target, keystore=str(encfs_home), skip_instance_cache=True)
        yield efs
        _assert_all_ciphertext(target, "/")

    @pytest.fixture
    def fs_join(self):
        return lambda *args: "/".join(args)

    @pytest.fixture
    def fs_path(self):
        return "/enc-root"


class EncLocalFixtures(AbstractFixtures):
    @pytest.fixture
    def target(self):
        # auto_mkdir as fsspec's own local fixtures use: writes create parents.
        return LocalFileSystem(auto_mkdir=True)

    @pytest.fixture
    def fs(self, target, encfs_home, fs_path):
        efs = EncryptedFileSystem(fs=target, keystore=str(encfs_home), skip_instance_cache=True)
        yield efs
        _assert_all_ciphertext(target, fs_path)

    @pytest.fixture
    def fs_join(self):
        return os.path.join

    @pytest.fixture
    def fs_path(self, tmp_path):
        path = str(tmp_path / "enc-root")
        os.mkdir(path)
        return path


class EncGenericFixtures(EncMemoryFixtures):
    """A target with no dedicated sink (here DirFileSystem over memory):
    writes stream into a hidden temp sibling that is then moved into place."""

    @pytest.fixture
    def target(self):
        inner = MemoryFileSystem(skip_instance_cache=True)
        inner.store = {}
        inner.pseudo_dirs = [""]
        return DirFileSystem(path="/base", fs=inner)

    @pytest.fixture
    def fs(self, target, encfs_home):
        efs = EncryptedFileSystem(fs=target, keystore=str(encfs_home), skip_instance_cache=True)
        yield efs
        _assert_all_ciphertext(target.fs, "/")  # the inner store, temp siblings included

    @pytest.fixture
    def fs_path(self):
        return "enc-root"


class TestEncMemoryCopy(AbstractCopyTests, EncMemoryFixtures):
    pass


class TestEncMemoryGet(AbstractGetTests, EncMemoryFixtures):
    pass


class TestEncMemoryPut(AbstractPutTests, EncMemoryFixtures):
    pass


class TestEncMemoryPipe(AbstractPipeTests, EncMemoryFixtures):
    pass


class TestEncMemoryOpen(AbstractOpenTests, EncMemoryFixtures):
    pass


class TestEncLocalCopy(AbstractCopyTests, EncLocalFixtures):
    pass


class TestEncLocalGet(AbstractGetTests, EncLocalFixtures):
    pass


class TestEncLocalPut(AbstractPutTests, EncLocalFixtures):
    pass


class TestEncLocalPipe(AbstractPipeTests, EncLocalFixtures):
    pass


class TestEncLocalOpen(AbstractOpenTests, EncLocalFixtures):
    pass


class TestEncGenericCopy(AbstractCopyTests, EncGenericFixtures):
    pass


class TestEncGenericGet(AbstractGetTests, EncGenericFixtures):
    pass


class TestEncGenericPut(AbstractPutTests, EncGenericFixtures):
    pass


class TestEncGenericPipe(AbstractPipeTests, EncGenericFixtures):
    pass


class TestEncGenericOpen(AbstractOpenTests, EncGenericFixtures):
    pass
