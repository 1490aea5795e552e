"""Fast end-to-end checks of the basic promise: ciphertext at rest, plaintext back."""

import os

from encfs.format import HEADER_REGION


def test_roundtrip_memory(efs_mem, memfs):
    data = os.urandom(200_000)
    efs_mem.pipe_file("/a/b.bin", data)
    raw = memfs.cat_file("/a/b.bin")
    assert raw[:4] == b"ENCF" and data[:64] not in raw
    assert len(raw) > HEADER_REGION + len(data)
    assert efs_mem.cat_file("/a/b.bin") == data
    assert efs_mem.info("/a/b.bin")["size"] == len(data)


def test_roundtrip_local(efs_local):
    efs, root = efs_local
    p = str(root / "x.bin")
    efs.pipe_file(p, b"hello world")
    assert efs.cat_file(p) == b"hello world"
    assert b"hello" not in (root / "x.bin").read_bytes()
