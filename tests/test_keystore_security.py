"""Issue 10, keystore findings: a sealed keystore authenticates all of its
content (3), import never takes over an existing key (4), a hand-edited
document is a KeystoreError naming the field (10), and a keystore others can
write is refused, one they can read warned about (13).

The attacker here can write ``keystore.json`` (and recompute its unkeyed
checksum) but does not know the passphrase."""

from __future__ import annotations

import base64
import json
import os
import stat
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from encfs import EncryptedFileSystem
from encfs.cli.main import main as cli_main
from encfs.errors import KeystoreError
from encfs.format import HEADER_REGION, parse_header
from encfs.keystore import LocalKeystore
from encfs.keystore import permissions as _permissions
from encfs.keystore.permissions import KeystorePermissionWarning
from encfs.keystore.storage import JsonFileStore
from encfs.keystore.transfer import open_bundle, seal_bundle

PASS = "correct horse battery staple"
# What encfs itself sees: tests/test_portable.py re-runs this module with an
# os module that lacks geteuid (as on Windows), where the checks are off.
posix_only = pytest.mark.skipif(os.name != "posix" or not hasattr(_permissions.os, "geteuid"),
                                reason="POSIX permission bits")


@pytest.fixture(autouse=True)
def _no_audit(monkeypatch):
    monkeypatch.setenv("ENCFS_AUDIT_LOG", "off")


def _efs(home: Path, memfs, key: str) -> EncryptedFileSystem:
    return EncryptedFileSystem(fs=memfs, keystore=str(home), key=key, cache=False, skip_instance_cache=True)


def _edit(home: Path, change) -> None:
    """What the attacker does: edit the JSON, recompute the unkeyed checksum."""
    path = home / "keystore.json"
    doc = json.loads(path.read_text())
    change(doc)
    doc.pop("checksum", None)
    doc["checksum"] = JsonFileStore.checksum(doc)
    path.write_text(json.dumps(doc))


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


# -- finding 3: a sealed keystore has integrity ------------------------------------------------
@pytest.fixture
def sealed(tmp_path, monkeypatch):
    monkeypatch.setattr("encfs.keystore.sealing.SCRYPT_N", 2**10)  # speed; the cost is not under test
    monkeypatch.setenv("ENCFS_PASSPHRASE", PASS)
    home = tmp_path / "sealed"
    ks = LocalKeystore(home)
    kid = ks.create_key(alias="lake")
    ks.rotate(kid)
    other = ks.create_key(alias="other")
    ks.disable(other)
    return home, kid, other


def test_planted_unsealed_version_is_refused(sealed, memfs):
    """The issue's attack: add an unsealed version and make it current."""
    home, kid, _ = sealed
    evil = b"\xee" * 32

    def plant(doc):
        rec = doc["keys"][kid]
        rec["versions"]["3"] = {"created": rec["created"], "material": _b64(evil)}
        rec["current_version"] = 3

    _edit(home, plant)
    with pytest.raises(KeystoreError, match="unsealed key material in a sealed keystore"):
        LocalKeystore(home).record(kid)
    with pytest.raises(KeystoreError):
        _efs(home, memfs, "local://lake").pipe_file("/x", b"rows")
    assert not memfs.exists("/x")


@pytest.mark.parametrize("change", [
    "current-version-rollback", "enable-disabled-key", "repoint-alias", "drop-version", "tags", "rotation",
    "cancel-deletion-record", "add-alias", "forget-deleted",
])
def test_any_metadata_change_is_detected(sealed, change):
    """Without the passphrase nothing in a sealed keystore can change: not
    the current version, states, aliases, tags, policies, nor can content be
    rolled back piecemeal."""
    home, kid, other = sealed

    def edit(doc):
        rec = doc["keys"][kid]
        if change == "current-version-rollback":
            rec["current_version"] = 1
        elif change == "enable-disabled-key":
            doc["keys"][other]["state"] = "Enabled"
        elif change == "repoint-alias":
            doc["aliases"]["lake"] = other
        elif change == "drop-version":
            del rec["versions"]["1"]
        elif change == "tags":
            rec["tags"] = {"owner": "mallory"}
        elif change == "rotation":
            rec["rotation"] = {"enabled": False}
        elif change == "cancel-deletion-record":
            doc["keys"][other]["description"] = "harmless"
        elif change == "add-alias":
            doc["aliases"]["new"] = kid
        elif change == "forget-deleted":
            doc["deleted"]["lk-" + "0" * 32] = "2026-01-01T00:00:00+00:00"

    before = LocalKeystore(home).record(kid)["current_version"]
    _edit(home, edit)
    with pytest.raises(KeystoreError, match="failed authentication"):
        LocalKeystore(home).list_ids()
    # The backup (written by encfs) restores the authentic state.
    LocalKeystore(home).recover_from_backup()
    assert LocalKeystore(home).record(kid)["current_version"] == before


def test_stripping_the_mac_is_detected(sealed):
    home, kid, _ = sealed

    def downgrade(doc):
        assert doc["format"] == "encfs-keystore/2" and doc["mac"]
        doc["format"] = "encfs-keystore/1"
        del doc["mac"]
        doc["keys"][kid]["current_version"] = 1

    _edit(home, downgrade)
    with pytest.raises(KeystoreError, match="MAC is missing"):
        LocalKeystore(home).list_ids()


def test_sealed_keystore_swapped_for_unsealed_is_refused(sealed, tmp_path, monkeypatch):
    """A whole unsealed keystore of the attacker's in place of the sealed one."""
    home, _, _ = sealed
    monkeypatch.delenv("ENCFS_PASSPHRASE")
    mallory = tmp_path / "mallory"
    LocalKeystore(mallory).create_key(alias="lake")
    (home / "keystore.json").write_bytes((mallory / "keystore.json").read_bytes())
    monkeypatch.setenv("ENCFS_PASSPHRASE", PASS)
    with pytest.raises(KeystoreError, match="not sealed but ENCFS_PASSPHRASE is set"):
        LocalKeystore(home).resolve("lake")


def _legacy_sealed_keystore(home: Path, passphrase: str) -> tuple[str, bytes]:
    """A format 1 sealed keystore as encfs wrote it before the document MAC
    (built with `cryptography` directly, not with the code under test)."""
    salt = os.urandom(16)
    key = Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(passphrase.encode())
    aead = AESGCM(key)

    def seal(data: bytes, aad: bytes) -> str:
        nonce = os.urandom(12)
        return _b64(nonce + aead.encrypt(nonce, data, aad))

    kid, material = "lk-" + "ab" * 16, os.urandom(32)
    now = "2026-01-01T00:00:00+00:00"
    doc = {
        "format": "encfs-keystore/1",
        "sealing": {"kdf": "scrypt", "salt": _b64(salt), "n": 2**14, "r": 8, "p": 1,
                    "check": seal(b"encfs keystore passphrase check", b"check")},
        "aliases": {"old": kid}, "deleted": {},
        "keys": {kid: {"id": kid, "created": now, "description": "", "tags": {}, "state": "Enabled",
                       "usage": "ENCRYPT_DECRYPT", "kind": "customer", "current_version": 1,
                       "versions": {"1": {"created": now, "sealed": seal(material, f"encfs-keystore/1|{kid}|1".encode())}},
                       "rotation": {"enabled": False}}},
    }
    doc["checksum"] = JsonFileStore.checksum(doc)
    home.mkdir(mode=0o700)
    (home / "keystore.json").write_text(json.dumps(doc))
    os.chmod(home / "keystore.json", 0o600)
    return kid, material


def test_legacy_sealed_keystore_is_read_and_upgraded(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCFS_PASSPHRASE", PASS)
    home = tmp_path / "legacy"
    kid, material = _legacy_sealed_keystore(home, PASS)
    legacy = json.loads((home / "keystore.json").read_text())
    ks = LocalKeystore(home)
    assert ks.resolve("old") == kid
    assert ks._material(kid, for_wrap=True) == (1, material)
    upgraded = json.loads((home / "keystore.json").read_text())
    assert upgraded["format"] == "encfs-keystore/2" and upgraded["mac"]
    assert upgraded["sealing"]["salt"] != legacy["sealing"]["salt"], "the upgrade re-seals under a fresh salt"
    assert "material" not in (home / "keystore.json").read_text()
    assert LocalKeystore(home)._material(kid, for_wrap=True) == (1, material)

    # Splicing the old (format 1) sealing back in to pass today's content off
    # as unauthenticated format 1 gains nothing: today's blobs do not open.
    def splice(doc):
        doc["format"], doc["sealing"] = "encfs-keystore/1", legacy["sealing"]
        del doc["mac"]
        doc["aliases"]["old"] = kid

    _edit(home, splice)
    with pytest.raises(KeystoreError):
        LocalKeystore(home)._material(kid, for_wrap=True)


# -- finding 4: import never takes over an existing key ------------------------------------------
def _takeover_bundle(kid: str, version: str, material: bytes) -> bytes:
    """A bundle the attacker builds: the victim's key id (from any object
    header) with one version of the attacker's own material."""
    now = "2026-01-01T00:00:00+00:00"
    records = {"keys": {kid: {"id": kid, "state": "Enabled", "created": now, "current_version": int(version),
                              "versions": {version: {"created": now, "material": _b64(material)}}}},
               "aliases": {"default": kid}}
    return seal_bundle(records, "bundle pass", n=2**10)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        cli_main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code or 0, out, err


def test_import_cannot_take_over_an_existing_key(encfs_home, memfs, tmp_path, capsys, monkeypatch):
    ks = LocalKeystore(encfs_home)
    kid = ks.create_key(alias="lake")
    efs = _efs(encfs_home, memfs, "local://lake")
    efs.pipe_file("/before", b"rows")
    evil = b"\xee" * 32
    bundle = tmp_path / "evil.keys"
    bundle.write_bytes(_takeover_bundle(kid, "2", evil))
    monkeypatch.setenv("ENCFS_EXPORT_PASSPHRASE", "bundle pass")

    code, out, err = _cli(capsys, "keys", "import", str(bundle))
    assert code != 0
    assert f"refused {kid}: the bundle adds version(s) 2" in err and "--add-versions" in err
    assert "refused alias/default" in err
    rec = LocalKeystore(encfs_home).record(kid)
    assert rec["current_version"] == 1 and set(rec["versions"]) == {"1"}

    # --add-versions: the version is kept (it unwraps) but does not wrap.
    code, out, err = _cli(capsys, "keys", "import", "--add-versions", str(bundle))
    assert f"added versions: {kid} 2 (current stays 1)" in out
    assert LocalKeystore(encfs_home).record(kid)["current_version"] == 1
    efs.pipe_file("/after", b"rows")
    assert parse_header(memfs.cat_file("/after")[:HEADER_REGION]).wrapped_keys[0].version == "1"

    # Only --make-current switches, and says so.
    code, out, err = _cli(capsys, "keys", "import", "--make-current", str(bundle))
    assert f"made current: {kid} version 2" in out
    assert LocalKeystore(encfs_home).record(kid)["current_version"] == 2


def test_import_reports_added_and_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ENCFS_EXPORT_PASSPHRASE", "bundle pass")
    a, b = LocalKeystore(tmp_path / "a"), LocalKeystore(tmp_path / "b")
    shared = a.create_key(alias="shared")
    fresh = a.create_key(alias="fresh")
    a.rotate(fresh)
    bundle = tmp_path / "a.keys"
    bundle.write_bytes(seal_bundle(a.export_records(), "bundle pass", n=2**10))
    b.import_records(open_bundle(bundle.read_bytes(), "bundle pass"))  # b already has both
    a.rotate(shared)
    conflicting = LocalKeystore(tmp_path / "c")
    clash = conflicting.create_key()
    records = a.export_records()
    records["keys"][clash] = dict(records["keys"][shared], id=clash)
    records["aliases"]["clash"] = clash
    bundle.write_bytes(seal_bundle(records, "bundle pass", n=2**10))

    code, out, err = _cli(capsys, "keys", "--keystore", str(tmp_path / "c"), "import", str(bundle))
    # c has none of a's keys: both are added with all versions; clash's version 1 differs.
    assert f"added: {shared} (versions 1, 2; current 2)" in out
    assert f"added: {fresh} (versions 1, 2; current 2)" in out
    assert "added alias: shared -> " in out and "added alias: fresh -> " in out
    assert f"refused {clash}: version 1 differs from the local one" in err
    assert "refused alias/clash: names" in err and code != 0

    code, out, err = _cli(capsys, "keys", "--keystore", str(tmp_path / "b"), "import", "--add-versions",
                          str(bundle))
    assert f"added versions: {shared} 2 (current stays 1)" in out
    assert f"unchanged: {fresh}" in out


def test_import_restoring_a_deleted_key_says_so(encfs_home):
    t = [1_800_000_000.0]
    ks = LocalKeystore(encfs_home, clock=lambda: t[0])
    kid = ks.create_key()
    backup = ks.export_records([kid])
    ks.schedule_deletion(kid, 7)
    t[0] += 8 * 86400
    assert kid not in ks.list_ids() and ks.deleted_on(kid)
    report = ks.import_records(backup)
    assert report["added"] == [kid] and kid in report["restored"]
    assert ks.deleted_on(kid) is None and ks._material(kid, for_wrap=True)[0] == 1


def test_import_of_malformed_records_is_keystore_error(encfs_home):
    ks = LocalKeystore(encfs_home)
    for records in ({"keys": []}, {"keys": {"lk-1": {"id": "lk-2"}}}, {"keys": {}, "aliases": {"a": 5}},
                    {"keys": {}, "extra": 1}, [], None):
        with pytest.raises(KeystoreError, match="malformed"):
            ks.import_records(records)


# -- finding 10: schema errors name the field --------------------------------------------------------
def _edits(kid: str):
    now = "2026-01-01T00:00:00+00:00"
    return {
        "deletion_date": (lambda d: d["keys"][kid].update(state="PendingDeletion"), f"keys.{kid}.deletion_date"),
        "id": (lambda d: d["keys"][kid].pop("id"), f"keys.{kid}.id"),
        "period_days-infinity": (lambda d: d["keys"][kid].update(
            rotation={"enabled": True, "period_days": float("inf"), "next": now}), "period_days"),
        "period_days-huge": (lambda d: d["keys"][kid].update(
            rotation={"enabled": True, "period_days": 10**30, "next": now}), "period_days"),
        "period_days-string": (lambda d: d["keys"][kid].update(
            rotation={"enabled": True, "period_days": "90", "next": now}), "period_days"),
        "tags-list": (lambda d: d["keys"][kid].update(tags=["a"]), f"keys.{kid}.tags"),
        "tag-value-int": (lambda d: d["keys"][kid].update(tags={"a": 1}), f"keys.{kid}.tags.a"),
        "created": (lambda d: d["keys"][kid].update(created="yesterday"), f"keys.{kid}.created"),
        "naive-date": (lambda d: d["keys"][kid].update(created="2026-01-01T00:00:00"), f"keys.{kid}.created"),
        "version-zero-padded": (lambda d: d["keys"][kid]["versions"].update({"01": d["keys"][kid]["versions"]["1"]}),
                                f"keys.{kid}.versions"),
        "current-bool": (lambda d: d["keys"][kid].update(current_version=True), "current_version"),
        "bad-id": (lambda d: d["keys"].update({"../x": d["keys"].pop(kid)}), "keys"),
        "deleted-date": (lambda d: d["deleted"].update({kid: 5}), f"deleted.{kid}"),
        "alias-control": (lambda d: d["aliases"].update({"a\x1b[2J": kid}), "aliases"),
        "unknown-field": (lambda d: d["keys"][kid].update(surprise=1), f"keys.{kid}.surprise"),
    }


@pytest.mark.parametrize("name", list(_edits("lk-x")))
def test_hand_edited_keystore_names_the_field(encfs_home, name):
    kid = LocalKeystore(encfs_home).create_key(alias="one")
    change, field = _edits(kid)[name]
    _edit(encfs_home, change)
    with pytest.raises(KeystoreError) as info:
        LocalKeystore(encfs_home).list_ids()
    assert field in str(info.value) and "corrupted" in str(info.value), str(info.value)


# -- finding 13: permissions ---------------------------------------------------------------------------
@posix_only
@pytest.mark.parametrize("target,mode", [("file", 0o666), ("file", 0o620), ("folder", 0o777), ("folder", 0o770)])
def test_keystore_writable_by_others_is_refused(encfs_home, memfs, target, mode, monkeypatch):
    kid = LocalKeystore(encfs_home).create_key(alias="lake")
    path = encfs_home / "keystore.json" if target == "file" else encfs_home
    os.chmod(path, mode)
    with pytest.raises(KeystoreError, match="writable by group or others"):
        LocalKeystore(encfs_home).list_ids()
    with pytest.raises(KeystoreError, match="writable by group or others"):
        LocalKeystore(encfs_home).create_key()  # not quietly made private first
    with pytest.raises(KeystoreError, match="writable by group or others"):
        _efs(encfs_home, memfs, "local://lake").pipe_file("/x", b"rows")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    monkeypatch.setenv("ENCFS_KEYSTORE_INSECURE", "1")
    with pytest.warns(KeystorePermissionWarning, match="used anyway"):
        assert LocalKeystore(encfs_home).list_ids() == [kid]


@posix_only
def test_keystore_readable_by_others_is_warned_about(encfs_home):
    kid = LocalKeystore(encfs_home).create_key()
    os.chmod(encfs_home / "keystore.json", 0o644)
    os.chmod(encfs_home, 0o755)
    with pytest.warns(KeystorePermissionWarning, match="readable by group or others"):
        assert LocalKeystore(encfs_home).list_ids() == [kid]
    os.chmod(encfs_home / "keystore.json", 0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LocalKeystore(encfs_home).list_ids() == [kid]


@posix_only
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_keystore_owned_by_another_user_is_refused(encfs_home):
    LocalKeystore(encfs_home).create_key()
    os.chown(encfs_home / "keystore.json", 12345, 12345)
    with pytest.raises(KeystoreError, match="owned by another user"):
        LocalKeystore(encfs_home).list_ids()


@posix_only
def test_cli_reports_permissions_in_one_line(encfs_home, capsys):
    LocalKeystore(encfs_home).create_key(alias="lake")
    os.chmod(encfs_home / "keystore.json", 0o644)
    code, out, err = _cli(capsys, "keys", "list")
    assert code == 0 and "lake" in out
    assert err.startswith("encfs: warning: keystore file") and err.count("\n") == 1, err
    os.chmod(encfs_home / "keystore.json", 0o666)
    code, out, err = _cli(capsys, "keys", "list")
    assert code == 1 and err.startswith("encfs: error: keystore file") and "writable by group or others" in err
    assert err.count("\n") == 1, err


def test_keystore_of_the_first_release_still_loads(encfs_home):
    """The schema accepts what every earlier encfs wrote: the first release's
    records had no rotation, the document no ``deleted`` and no checksum."""
    kid, now = "lk-" + "cd" * 16, "2026-01-01T00:00:00+00:00"
    material = os.urandom(32)
    doc = {"format": "encfs-keystore/1", "sealing": None, "aliases": {"default": kid},
           "keys": {kid: {"id": kid, "created": now, "description": "encfs default key", "tags": {},
                          "state": "Enabled", "usage": "ENCRYPT_DECRYPT", "kind": "encfs", "current_version": 1,
                          "versions": {"1": {"created": now, "material": _b64(material)}}}}}
    (encfs_home / "keystore.json").write_text(json.dumps(doc))
    os.chmod(encfs_home / "keystore.json", 0o600)
    ks = LocalKeystore(encfs_home)
    assert ks.resolve("default") == kid and ks._material(kid, for_wrap=True) == (1, material)
    assert ks.rotate(kid) == 2


def test_no_permission_check_without_posix_modes(encfs_home, monkeypatch):
    """Windows: mode bits mean nothing there (ACLs decide), so no check."""
    import types

    from encfs.keystore import permissions

    kid = LocalKeystore(encfs_home).create_key()
    os.chmod(encfs_home / "keystore.json", 0o666)
    monkeypatch.setattr(permissions, "os", types.SimpleNamespace(name="nt", environ=os.environ, stat=os.stat))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LocalKeystore(encfs_home).list_ids() == [kid]
