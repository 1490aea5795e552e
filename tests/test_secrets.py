"""No key material leaves encfs through its everyday surfaces.

The secrets are taken from the real objects of the test: the root key
material read from the keystore's internals, the data key unwrapped from a
written object's header, and the keys derived from it.  Each is searched,
raw and in the usual text encodings, in ``to_json()``, pickles, reprs,
``storage_options``, exception texts of failed reads and every log record
emitted at DEBUG while encfs works.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle

import fsspec
import pytest

from encfs import EncryptedFileSystem
from encfs.errors import EncfsError
from encfs.format import derive_object_keys
from encfs.keystore import LocalKeystore


def _encodings(secret: bytes) -> list[bytes]:
    """The forms a leaked key usually takes in text or pickles."""
    forms = [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
        repr(secret).encode(),
        repr(list(secret)).encode(),
    ]
    # a key in the middle of a longer base64 blob: every alignment
    for shift in (1, 2):
        forms.append(base64.b64encode(b"\0" * shift + secret)[4:-4])
    return forms


class Secrets:
    def __init__(self, named: dict[str, bytes]) -> None:
        assert all(len(v) >= 16 for v in named.values())
        self.named = named

    def assert_absent(self, where: str, blob: str | bytes) -> None:
        data = blob.encode("utf-8", "surrogateescape") if isinstance(blob, str) else bytes(blob)
        for name, secret in self.named.items():
            for form in _encodings(secret):
                assert form not in data, f"{name} leaked into {where}"


@pytest.fixture
def setup(efs_local, encfs_home):
    efs, root = efs_local
    path = str(root / "secret.bin")
    plaintext = os.urandom(300_000)
    efs.pipe_file(path, plaintext)
    header = efs.header(path)
    dek, keys = efs.keyring.unwrap(header, path)
    assert derive_object_keys(dek, header.object_id, header.suite) == keys
    store = LocalKeystore(str(encfs_home))
    named = {"data key": dek, "body key": keys.body_key, "header MAC key": keys.mac_key}
    for key_id in store.list_ids():
        record = store.record(key_id)
        for version in record["versions"]:
            _, material = store._material(key_id, int(version), for_wrap=False)
            named[f"root key {key_id} v{version}"] = material
    assert any(name.startswith("root key") for name in named)
    return efs, root, path, plaintext, Secrets(named)


def test_the_search_finds_a_planted_secret(setup):
    """The checker itself must be able to fail."""
    _, _, _, _, secrets = setup
    name, secret = next(iter(secrets.named.items()))
    for form in _encodings(secret):
        with pytest.raises(AssertionError, match=name):
            secrets.assert_absent("a planted text", b"prefix " + form + b" suffix")


def test_serialised_filesystem_holds_no_key(setup):
    efs, _, path, plaintext, secrets = setup
    secrets.assert_absent("to_json()", efs.to_json())
    secrets.assert_absent("repr(fs)", repr(efs))
    secrets.assert_absent("str(fs)", str(efs))
    secrets.assert_absent("storage_options", str(efs.storage_options))
    secrets.assert_absent("fs.__dict__", repr(vars(efs)))
    blob = pickle.dumps(efs)
    secrets.assert_absent("pickle.dumps(fs)", blob)
    clone = pickle.loads(blob)
    assert isinstance(clone, EncryptedFileSystem)
    assert clone.cat_file(path) == plaintext
    again = fsspec.AbstractFileSystem.from_json(efs.to_json())
    assert again.cat_file(path) == plaintext


def test_objects_in_use_hold_no_key_in_repr_or_pickle(setup):
    efs, root, path, _, secrets = setup
    reader = efs.reader(path)
    header = efs.header(path)
    provider = efs.keyring.provider("local")
    with efs.open(path, "rb") as rf:
        rf.read(10)
        wf = efs.open(str(root / "w.bin"), "wb")
        wf.write(b"x" * 5000)
        for name, obj in {"reader": reader, "header": header, "keyring": efs.keyring, "provider": provider,
                          "keystore": provider.keystore, "read file": rf, "write file": wf,
                          "wrapped keys": header.wrapped_keys, "cipher": reader._cipher}.items():
            secrets.assert_absent(f"repr({name})", repr(obj))
            secrets.assert_absent(f"str({name})", str(obj))
        # pickling either refuses or carries no key
        for name, obj in {"reader": reader, "write file": wf, "cipher": reader._cipher}.items():
            with pytest.raises(TypeError):
                pickle.dumps(obj)
        for name, obj in {"header": header, "keyring": efs.keyring, "provider": provider, "read file": rf}.items():
            try:
                blob = pickle.dumps(obj)
            except TypeError:
                continue
            secrets.assert_absent(f"pickle({name})", blob)
        wf.discard()


def test_failed_reads_and_logs_hold_no_key(setup, caplog, encfs_home):
    efs, root, path, plaintext, secrets = setup
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    # tampered body, tampered header, truncation, wrong path, wrong keystore
    raw = bytearray((root / "secret.bin").read_bytes())
    cases = {}
    body = bytearray(raw)
    body[-100] ^= 1
    cases["body"] = bytes(body)
    head = bytearray(raw)
    head[200] ^= 1
    cases["header"] = bytes(head)
    cases["truncated"] = bytes(raw[:-5000])
    for name, data in cases.items():
        bad = root / f"bad-{name}"
        (root / "secret.bin").write_bytes(data)
        os.replace(root / "secret.bin", bad)
        (root / "secret.bin").write_bytes(bytes(raw))
        with pytest.raises(EncfsError) as info:
            efs.cat_file(str(bad))
        messages += [str(info.value), repr(info.value), repr(info.value.__cause__), repr(info.value.__context__)]
    other_home = root / "other-home"
    other = EncryptedFileSystem(target_protocol="file", keystore=str(other_home), skip_instance_cache=True)
    with pytest.raises(EncfsError) as info:
        other.cat_file(path)
    messages += [str(info.value), repr(info.value)]
    # everyday work, logged at DEBUG
    efs.cp_file(path, str(root / "copy.bin"))
    efs.mv(str(root / "copy.bin"), str(root / "moved.bin"))
    assert efs.cat_file(str(root / "moved.bin"), start=5, end=50) == plaintext[5:50]
    efs.ls(str(root))
    for i, text in enumerate(messages):
        secrets.assert_absent(f"exception text {i}: {text[:60]}", text)
    assert caplog.records is not None
    for record in caplog.records:
        secrets.assert_absent(f"log record from {record.name}", record.getMessage())
        secrets.assert_absent(f"log args from {record.name}", repr(record.args))
    audit = encfs_home / "audit.log"
    if audit.exists():
        secrets.assert_absent("audit log", audit.read_bytes())
    for dirpath, _, files in os.walk(root):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                secrets.assert_absent(f"stored object {f}", fh.read())
