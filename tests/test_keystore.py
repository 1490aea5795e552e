"""The local keystore: permissions, key generation, the default key under a
multi-process race, aliases, rotation, passphrase sealing, crash safety and
corruption handling."""

from __future__ import annotations

import base64
import json
import os
import pickle
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import encfs.keystore.store as store_module
from encfs import EncryptedFileSystem
from encfs.errors import ConfigurationError, KeyNotFoundError, KeystoreError
from encfs.format import HEADER_REGION, parse_header
from encfs.keystore import LocalKeystore

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_audit(monkeypatch):
    # The audit trail is tested elsewhere; here it would only add fsyncs.
    monkeypatch.setenv("ENCFS_AUDIT_LOG", "off")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _material(ks: LocalKeystore, key_id: str, version: int | None = None) -> bytes:
    return ks._material(key_id, version, for_wrap=False)[1]


def _efs(home: Path, memfs, **kwargs) -> EncryptedFileSystem:
    return EncryptedFileSystem(fs=memfs, keystore=str(home), segment_size=1024, skip_instance_cache=True, **kwargs)


# -- permissions and key generation ------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_owner_only_permissions(tmp_path: Path, umask: int) -> None:
    home = tmp_path / "home"
    old = os.umask(umask)
    try:
        ks = LocalKeystore(home)
        ks.create_key(description="x")
        ks.create_key(description="y")
    finally:
        os.umask(old)
    assert _mode(home) == 0o700
    files = [p for p in home.iterdir() if p.name.startswith("keystore")]
    assert home / "keystore.json" in files
    for p in files:
        assert _mode(p) == 0o600, (p.name, oct(_mode(p)))


def test_existing_home_is_made_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    LocalKeystore(home).create_key()
    assert _mode(home) == 0o700


def test_keys_come_from_os_urandom(tmp_path: Path, monkeypatch) -> None:
    real = os.urandom
    drawn: list[bytes] = []

    def spy(n: int) -> bytes:
        out = real(n)
        if n == 32:
            drawn.append(out)
        return out

    monkeypatch.setattr(store_module.os, "urandom", spy)
    ks = LocalKeystore(tmp_path / "home")
    ids = [ks.create_key() for _ in range(20)]
    materials = [_material(ks, k) for k in ids]
    assert all(len(m) == 32 for m in materials)
    assert len(set(materials)) == len(materials)
    assert all(m in drawn for m in materials), "root key material must come straight from os.urandom"
    assert len(set(ids)) == len(ids) and all(k.startswith("lk-") for k in ids)


def test_reprs_and_pickles_hold_no_material(tmp_path: Path) -> None:
    ks = LocalKeystore(tmp_path / "home")
    key_id = ks.create_key()
    m = _material(ks, key_id)
    blobs = [repr(ks).encode(), pickle.dumps(ks)]
    for blob in blobs:
        for form in (m, m.hex().encode(), base64.b64encode(m)):
            assert form not in blob
    assert pickle.loads(pickle.dumps(ks)).list_ids() == [key_id]


# -- the default key -----------------------------------------------------------------


def test_default_key_created_on_first_use_once(tmp_path: Path, memfs) -> None:
    home = tmp_path / "home"
    assert not (home / "keystore.json").exists()
    efs = _efs(home, memfs)
    efs.pipe_file("/d/a", b"one")
    ks = LocalKeystore(home)
    (default_id,) = ks.list_ids()
    assert ks.aliases()["default"] == default_id
    efs.pipe_file("/d/b", b"two")
    _efs(home, memfs).pipe_file("/d/c", b"three")
    assert LocalKeystore(home).list_ids() == [default_id]
    for p in ("/d/a", "/d/b", "/d/c"):
        assert parse_header(memfs.cat_file(p)[:HEADER_REGION]).wrapped_keys[0].key_id == default_id
    assert ks.resolve("default") == ks.resolve("alias/default") == default_id


_RACE = textwrap.dedent("""
    import os, sys, time
    from encfs.keystore import LocalKeystore
    go = sys.argv[2]
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.001)
    print(LocalKeystore(sys.argv[1]).ensure_default(), flush=True)
""")


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_default_key_race_between_processes(tmp_path: Path, monkeypatch, sealed: bool) -> None:
    """Four processes ask for the default key at the same instant: exactly one
    key is created and every process gets it (also when the new keystore is
    sealed, where each racer would pick its own scrypt salt)."""
    home, go = tmp_path / "home", tmp_path / "go"
    if sealed:
        monkeypatch.setenv("ENCFS_PASSPHRASE", "race")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(home), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, text=True) for _ in range(4)]
    # Start them together: each has imported encfs and spins on the flag.
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    ids = {out.strip() for out, _ in results}
    assert len(ids) == 1, ids
    ks = LocalKeystore(home)
    assert ks.list_ids() == sorted(ids)
    assert ks.aliases()["default"] in ids
    assert len(_material(ks, ids.pop())) == 32
    assert bool(json.loads((home / "keystore.json").read_text())["sealing"]) is sealed


# -- aliases and rotation ----------------------------------------------------------------


def test_aliases(tmp_path: Path, memfs) -> None:
    home = tmp_path / "home"
    ks = LocalKeystore(home)
    a = ks.create_key(alias="team/sales")
    b = ks.create_key(alias="alias/team/ops")
    assert ks.resolve("team/sales") == ks.resolve("alias/team/sales") == a
    assert ks.resolve("team/ops") == b and ks.resolve(a) == a
    assert ks.aliases_of(a) == ["team/sales"]
    with pytest.raises(ConfigurationError):
        ks.create_key(alias="team/sales")
    with pytest.raises(ConfigurationError):
        ks.create_key(alias="default")  # reserved for the encfs-managed default
    with pytest.raises(ConfigurationError):
        ks.create_key(alias="has space")
    with pytest.raises(KeyNotFoundError):
        ks.resolve("team/none")

    efs = _efs(home, memfs, key="local://team/sales")
    efs.pipe_file("/al/x", b"via alias")
    # The header names the key id, so moving or deleting the alias does not
    # strand the object.
    ks.set_alias("team/sales", b)
    assert ks.resolve("team/sales") == b
    ks.delete_alias("team/sales")
    with pytest.raises(KeyNotFoundError):
        ks.resolve("team/sales")
    fresh = _efs(home, memfs, key=f"local://{a}", cache=False)
    assert fresh.cat_file("/al/x") == b"via alias"
    assert parse_header(memfs.cat_file("/al/x")[:HEADER_REGION]).wrapped_keys[0].key_id == a


def test_rotation_keeps_old_versions_unwrapping(tmp_path: Path, memfs) -> None:
    home = tmp_path / "home"
    ks = LocalKeystore(home)
    key_id = ks.create_key(alias="rot")
    written = {}
    for round_ in range(3):
        efs = _efs(home, memfs, key="local://rot", cache=False)
        path = f"/rot/v{round_ + 1}"
        efs.pipe_file(path, f"written under version {round_ + 1}".encode())
        written[path] = str(round_ + 1)
        if round_ < 2:
            assert ks.rotate(key_id) == round_ + 2
    materials = {_material(ks, key_id, v) for v in (1, 2, 3)}
    assert len(materials) == 3
    assert ks.record(key_id)["current_version"] == 3
    reader = _efs(home, memfs, key="local://rot", cache=False)
    for path, version in written.items():
        assert parse_header(memfs.cat_file(path)[:HEADER_REGION]).wrapped_keys[0].version == version
        assert reader.cat_file(path) == f"written under version {version}".encode()


# -- passphrase sealing ---------------------------------------------------------------------


def test_passphrase_sealing(tmp_path: Path, memfs, monkeypatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("ENCFS_PASSPHRASE", "correct horse battery staple")
    ks = LocalKeystore(home)
    key_id = ks.create_key(alias="sealed")
    ks.rotate(key_id)
    efs = _efs(home, memfs, key="local://sealed")
    efs.pipe_file("/s/x", b"sealed at rest")
    materials = [_material(ks, key_id, v) for v in (1, 2)] + [_material(ks, ks.resolve("default"))]
    for name in ("keystore.json", "keystore.json.bak"):
        path = home / name
        if not path.exists():
            continue
        raw = path.read_bytes()
        doc = json.loads(raw)
        assert doc["sealing"] and doc["sealing"]["kdf"] == "scrypt"
        for m in materials:
            for form in (m, m.hex().encode(), base64.b64encode(m), base64.urlsafe_b64encode(m)):
                assert form not in raw, f"key material in clear in {name}"
        for rec in doc["keys"].values():
            assert all("material" not in v and "sealed" in v for v in rec["versions"].values())

    # Wrong passphrase: a KeystoreError, from the keystore and through the filesystem.
    monkeypatch.setenv("ENCFS_PASSPHRASE", "wrong")
    with pytest.raises(KeystoreError, match="passphrase"):
        _material(LocalKeystore(home), key_id)
    with pytest.raises(KeystoreError):
        _efs(home, memfs, key="local://sealed", cache=False).cat_file("/s/x")
    # No passphrase and no terminal: a KeystoreError that says what to set.
    monkeypatch.delenv("ENCFS_PASSPHRASE")
    with pytest.raises(KeystoreError, match="ENCFS_PASSPHRASE"):
        _efs(home, memfs, key="local://sealed", cache=False).cat_file("/s/x")
    monkeypatch.setenv("ENCFS_PASSPHRASE", "correct horse battery staple")
    assert _efs(home, memfs, key="local://sealed", cache=False).cat_file("/s/x") == b"sealed at rest"


def test_sealed_blobs_cannot_be_swapped_between_keys(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("ENCFS_PASSPHRASE", "pw")
    ks = LocalKeystore(home)
    a, b = ks.create_key(), ks.create_key()

    def swap(doc):
        va, vb = doc["keys"][a]["versions"]["1"], doc["keys"][b]["versions"]["1"]
        va["sealed"], vb["sealed"] = vb["sealed"], va["sealed"]

    ks._update(swap)
    with pytest.raises(KeystoreError):
        _material(LocalKeystore(home), a)


# -- crash safety and corruption ----------------------------------------------------------------

_CRASH_WORKER = textwrap.dedent("""
    import random, sys
    from encfs.keystore import LocalKeystore
    ks = LocalKeystore(sys.argv[1])
    rnd = random.Random(int(sys.argv[2]))
    ids = ks.list_ids()
    while True:
        if ids and rnd.random() < 0.3:
            key_id = rnd.choice(ids)
            v = ks.rotate(key_id)
            print("rotated", key_id, v, flush=True)
        else:
            key_id = ks.create_key(description="crash test")
            ids.append(key_id)
            print("created", key_id, flush=True)
""")


def test_keystore_survives_sigkill_mid_write(tmp_path: Path) -> None:
    """A process creating and rotating keys is killed at random moments; the
    keystore always loads, with every key and version it reported."""
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rnd = random.Random(1234)
    created: set[str] = set()
    rotated: dict[str, int] = {}
    for round_ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _CRASH_WORKER, str(home), str(round_)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        # Wait until it is writing, then kill it at a random moment.
        first = proc.stdout.readline()
        assert first, proc.stderr.read()
        time.sleep(rnd.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        for line in [first, *out.splitlines()]:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "created":
                created.add(parts[1])
            elif len(parts) == 3 and parts[0] == "rotated":
                rotated[parts[1]] = max(rotated.get(parts[1], 1), int(parts[2]))
        ks = LocalKeystore(home)  # a fresh process's view
        ids = set(ks.list_ids())
        assert created <= ids, f"round {round_}: lost keys {created - ids}"
        for key_id in ids:
            rec = ks.record(key_id)
            assert int(rec["current_version"]) >= rotated.get(key_id, 1)
            for v in rec["versions"]:
                assert len(_material(ks, key_id, int(v))) == 32
    assert len(created) >= 6
    # Temp files a kill left behind were private from their first byte.
    for leftover in home.glob(".keystore.json*"):
        assert _mode(leftover) == 0o600, leftover.name


def test_corrupted_keystore_names_backup_and_recovers(tmp_path: Path, memfs) -> None:
    home = tmp_path / "home"
    ks = LocalKeystore(home)
    a = ks.create_key(alias="one")
    b = ks.create_key(alias="two")
    efs = _efs(home, memfs, key="local://one")
    efs.pipe_file("/c/x", b"before corruption")
    good = (home / "keystore.json").read_bytes()
    for garbage in (b"{not json", good[: len(good) // 2], b"\xff\xfe\x00garbage", b"[]",
                    good.replace(b'"Enabled"', b'"Enabeld"', 1) if b'"Enabled"' in good else b"{}x"):
        (home / "keystore.json").write_bytes(garbage)
        with pytest.raises(KeystoreError) as info:
            LocalKeystore(home).list_ids()
        assert "keystore.json.bak" in str(info.value), str(info.value)
        with pytest.raises(KeystoreError):
            _efs(home, memfs, key="local://one", cache=False).cat_file("/c/x")
    LocalKeystore(home).recover_from_backup()
    ks = LocalKeystore(home)
    assert set(ks.list_ids()) >= {a, b}
    assert ks.resolve("one") == a
    assert _efs(home, memfs, key="local://one", cache=False).cat_file("/c/x") == b"before corruption"


def test_corrupted_keystore_without_backup(tmp_path: Path) -> None:
    home = tmp_path / "home"
    LocalKeystore(home).create_key()
    (home / "keystore.json.bak").unlink(missing_ok=True)
    (home / "keystore.json").write_bytes(b"\x00" * 10)
    with pytest.raises(KeystoreError, match="corrupted"):
        LocalKeystore(home).list_ids()
    with pytest.raises(KeystoreError, match="backup"):
        LocalKeystore(home).recover_from_backup()


def _malformed_docs(key_id: str, record: dict) -> dict[str, dict]:
    """Valid JSON, wrong shape: what a hand edit or a damaged write leaves."""
    import copy

    def with_record(change) -> dict:
        rec = copy.deepcopy(record)
        change(rec)
        return {"format": "encfs-keystore/1", "sealing": None, "aliases": {"one": key_id}, "keys": {key_id: rec}}

    return {
        "no-keys": {"format": "encfs-keystore/1", "aliases": {}},
        "keys-is-list": {"format": "encfs-keystore/1", "keys": [], "aliases": {}},
        "record-is-string": {"format": "encfs-keystore/1", "keys": {key_id: "x"}, "aliases": {}},
        "no-versions": with_record(lambda r: r.pop("versions")),
        "version-not-object": with_record(lambda r: r["versions"].__setitem__("1", "AAAA")),
        "no-material": with_record(lambda r: r["versions"]["1"].pop("material")),
        "current-version-missing": with_record(lambda r: r.__setitem__("current_version", 7)),
        "unknown-state": with_record(lambda r: r.__setitem__("state", "Enabeld")),
        "bad-rotation-date": with_record(lambda r: r.__setitem__("rotation", {"enabled": True, "next": "soon",
                                                                              "period_days": 1})),
        "alias-to-number": {"format": "encfs-keystore/1", "keys": {key_id: record}, "aliases": {"one": 5}},
    }


def test_malformed_keystore_is_keystore_error(tmp_path: Path, memfs) -> None:
    home = tmp_path / "home"
    ks = LocalKeystore(home)
    key_id = ks.create_key(alias="one")
    efs = _efs(home, memfs, key="local://one")
    efs.pipe_file("/m/x", b"kept")
    record = ks.record(key_id)
    for name, doc in _malformed_docs(key_id, record).items():
        (home / "keystore.json").write_text(json.dumps(doc))
        for attempt in (lambda: LocalKeystore(home).list_ids(),
                        lambda: LocalKeystore(home).create_key(),
                        lambda: _efs(home, memfs, key="local://one", cache=False).cat_file("/m/x")):
            with pytest.raises(KeystoreError) as info:
                attempt()
            assert "keystore.json.bak" in str(info.value), (name, str(info.value))
    LocalKeystore(home).recover_from_backup()
    assert _efs(home, memfs, key="local://one", cache=False).cat_file("/m/x") == b"kept"


@pytest.mark.parametrize("material", [b"", b"\x01" * 16, b"\x01" * 31, b"\x01" * 33, "not base64!"],
                         ids=["empty", "16-bytes", "31-bytes", "33-bytes", "not-base64"])
def test_malformed_key_material_is_never_used(tmp_path: Path, material) -> None:
    """Root key material must be exactly 32 bytes: a 16-byte value must not
    quietly become an AES-128 key, garbage must not crash with a base64 error."""
    home = tmp_path / "home"
    ks = LocalKeystore(home)
    key_id = ks.create_key()
    text = material if isinstance(material, str) else base64.b64encode(material).decode()

    def damage(doc):
        doc["keys"][key_id]["versions"]["1"]["material"] = text

    ks._update(damage)
    with pytest.raises(KeystoreError, match="malformed"):
        _material(LocalKeystore(home), key_id)


def test_malformed_sealing_parameters(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("ENCFS_PASSPHRASE", "pw")
    ks = LocalKeystore(home)
    key_id = ks.create_key()
    ks._update(lambda doc: doc["sealing"].pop("salt"))
    with pytest.raises(KeystoreError, match="sealing"):
        _material(LocalKeystore(home), key_id)
