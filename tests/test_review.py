"""Adversarial review findings (security-critical paths), one test each.

Every test here failed before its fix.
"""

from __future__ import annotations

import os

from encfs import EncryptedFileSystem
from encfs.format import HEADER_REGION, WrappedKey, parse_header, replace_wrapped_keys
from encfs.keystore.store import LocalKeystore
from encfs.rewrap import FAILED, rewrap


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
