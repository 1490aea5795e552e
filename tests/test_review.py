"""Adversarial review findings (security-critical paths), one test each.

Every test here failed before its fix.
"""

from __future__ import annotations

import io
import os

import pytest

from encfs import EncryptedFileSystem
from encfs.errors import NoUsableKeyError
from encfs.file import EncryptedWriteFile
from encfs.format import HEADER_REGION, WrappedKey, parse_header, replace_wrapped_keys
from encfs.keystore.store import LocalKeystore
from encfs.providers.local import LocalProvider
from encfs.rewrap import FAILED, rewrap
from encfs.sinks import BufferSink


def _efs(target, home, key="local://default", **kw):
    return EncryptedFileSystem(fs=target, keystore=str(home), key=key, cache=False, skip_instance_cache=True, **kw)


def test_rewrap_does_not_wrap_the_data_key_under_an_injected_key(memfs, encfs_home):
    """The wrapped-key section is outside the header MAC, so anyone with
    write access to the store can append an entry naming a root key *they*
    can decrypt with (e.g. a KMS key of their own whose policy lets anyone
    Encrypt).  Rewrap in "current version" mode must not take the root keys
    to wrap under from unauthenticated entries: it would hand the attacker
    the object's data key."""
    fs = _efs(memfs, encfs_home)
    fs.pipe_file("/t/a", b"secret" * 100)
    ks = LocalKeystore(encfs_home)
    owner = ks.resolve("default")
    attacker = ks.create_key(alias="attacker")  # stands for a key the attacker can decrypt with
    raw = memfs.cat_file("/t/a")
    header = parse_header(raw[:HEADER_REGION])
    forged = WrappedKey("local", attacker, "0", os.urandom(60))  # stale version: forces a rewrite
    region = replace_wrapped_keys(raw[:HEADER_REGION], header, [*header.wrapped_keys, forged])
    memfs.pipe_file("/t/a", region + raw[HEADER_REGION:])

    report = rewrap(fs, "/t")

    assert [r.status for r in report.results] == [FAILED]
    assert memfs.cat_file("/t/a") == region + raw[HEADER_REGION:]  # the forged entry stays garbage
    after = parse_header(memfs.cat_file("/t/a")[:HEADER_REGION])
    assert [w for w in after.wrapped_keys if w.key_id == attacker] == [forged]
    assert owner in {w.key_id for w in after.wrapped_keys}


class _FailingSink(BufferSink):
    """Fails (atomically: nothing written) on the ``fail_at``-th write."""

    def __init__(self, fs, path, exclusive, fail_at):
        super().__init__(fs, path, exclusive)
        self.writes, self.fail_at = 0, fail_at

    def write(self, data):
        self.writes += 1
        if self.writes == self.fail_at:
            raise OSError("target unavailable")
        super().write(data)


def test_commit_after_a_failed_segment_write_stores_nothing(memfs, encfs_home):
    """A segment whose write to the target failed is lost; a later commit
    (explicit, or by a transaction the file was enrolled in while the caller
    caught the write error and never closed it) sealed the buffered bytes as
    the final segment and published a shorter object that authenticates."""
    fs = _efs(memfs, encfs_home, segment_size=1024)
    tpath = fs._target_path("/w/obj")
    sink = _FailingSink(memfs, tpath, False, fail_at=3)  # header, segment 0, then segment 1 fails
    f = EncryptedWriteFile(fs, tpath, "wb", autocommit=False, sink=sink)
    f.write(b"a" * 1024)
    with pytest.raises(OSError):
        # Seals segments 0-2; the third proves the object too large for a
        # compact header (FORMAT.md 3.1), so the header and the held
        # segments go out: header, segment 0, then segment 1 fails.
        f.write(b"b" * 4096)
    with pytest.raises(OSError):
        f.commit()
    assert not memfs.exists(tpath)


def test_transaction_does_not_publish_a_file_whose_write_failed(memfs, encfs_home, monkeypatch):
    fs = _efs(memfs, encfs_home, segment_size=1024)
    real = BufferSink.write
    calls = []

    def flaky(self, data):
        calls.append(len(data))
        if len(calls) == 3:
            raise OSError("target unavailable")
        real(self, data)

    monkeypatch.setattr(BufferSink, "write", flaky)
    with pytest.raises(OSError), fs.transaction:
        f = fs.open("/w/tx", "wb")
        f.write(b"a" * 1024)
        try:
            f.write(b"b" * 4096)
        except OSError:
            pass  # caught; the file is never closed
    assert not memfs.exists(fs._target_path("/w/tx"))


class _AllowListedLocal(LocalProvider):
    """A local provider with an allow-list, as AWS KMS and PKCS#11 have."""

    def allows(self, wrapped, refs):
        return any(r.scheme == self.scheme and self.resolve(r) == wrapped.key_id for r in refs)


def test_rewrap_to_other_keys_does_not_bless_an_object_under_a_foreign_key(memfs, encfs_home):
    """An attacker writes a complete object under a root key of their own
    (which the administrator's principal can use, e.g. a KMS key whose policy
    lets anyone Decrypt).  Readers refuse it: the key is not on their
    allow-list.  ``rewrap --to`` used to fall back to "the keys the object
    names", unwrap the attacker's data key and wrap it under the owner's
    key, so every reader then accepted the attacker's content."""
    ks = LocalKeystore(encfs_home)
    ks.create_key(alias="attacker")  # stands for the attacker's own key
    attacker = _efs(memfs, encfs_home, key="local://alias/attacker")
    attacker.pipe_file("/t/forged", b"attacker's content")
    fs = _efs(memfs, encfs_home)
    fs.keyring._providers["local"] = _AllowListedLocal(encfs_home)
    with pytest.raises(NoUsableKeyError):
        fs.cat_file("/t/forged")

    report = rewrap(fs, "/t", to=["local://default"])

    assert [r.status for r in report.results] == [FAILED]
    with pytest.raises(NoUsableKeyError):
        fs.cat_file("/t/forged")


def test_text_mode_write_interrupted_by_an_exception_stores_nothing(memfs, encfs_home):
    """``with fs.open(p, "w")`` (what pandas' to_csv does) wraps the file in
    io.TextIOWrapper, whose __exit__ is C code with no frame of its own: the
    look-up for an ``__exit__`` frame missed it and close() committed the
    truncated object as a valid one."""
    fs = _efs(memfs, encfs_home)
    with pytest.raises(RuntimeError), fs.open("/w/t.csv", "w") as f:
        f.write("a,b\n1,2\n")
        raise RuntimeError("the producer failed half way")
    assert not fs.exists("/w/t.csv")
    with pytest.raises(RuntimeError), io.BufferedWriter(fs.open("/w/b.bin", "wb")) as f:
        f.write(b"partial")
        raise RuntimeError("the producer failed half way")
    assert not fs.exists("/w/b.bin")
    # An explicit close() in an except block still commits, as documented.
    f = fs.open("/w/ok.txt", "w")
    try:
        f.write("whole")
        raise ValueError("handled")
    except ValueError:
        f.close()
    assert fs.cat_file("/w/ok.txt") == b"whole"


def test_mv_onto_another_spelling_of_the_same_object_keeps_it(memfs, encfs_home, tmp_path):
    """fsspec's mv skips identical strings only; "d/./f" (local disk) or
    "memory://x" name the same object as "d/f" and "/x", so the re-binding
    copy replaced the object with itself and the removal then deleted it."""
    fs = _efs(memfs, encfs_home)
    fs.pipe_file("/x", b"data")
    fs.mv("/x", "memory://x")
    assert fs.cat_file("/x") == b"data"
    local = EncryptedFileSystem(target_protocol="file", keystore=str(encfs_home), cache=False,
                                skip_instance_cache=True)
    (tmp_path / "d").mkdir()
    f = str(tmp_path / "d" / "f")
    local.pipe_file(f, b"data")
    local.mv(f, str(tmp_path / "d" / "." / "f"))
    assert local.cat_file(f) == b"data"


def test_one_reader_shared_by_threads(memfs, encfs_home):
    """ObjectReader's segment cache (an OrderedDict) was evicted by several
    threads at once: "OrderedDict mutated during iteration" and KeyError
    from concurrent reads of one reader (fs.reader() is public)."""
    import random
    import sys
    import threading

    fs = _efs(memfs, encfs_home, segment_size=1024, read_block_size=1024)  # cache of 8 segments: constant eviction
    data = os.urandom(1024 * 200)
    fs.pipe_file("/r/o", data)
    reader = fs.reader("/r/o")
    errors: list[str] = []

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(1500):
                a = rnd.randrange(len(data))
                b = min(len(data), a + rnd.randrange(1, 4000))
                if reader.read(a, b) != data[a:b]:
                    errors.append("wrong plaintext")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(exc))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
