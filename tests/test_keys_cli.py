"""``encfs keys ...``: every verb on local keys (in process, through the
same ``main`` the console script runs), one-line errors, recovery,
export/import, and the same verbs on AWS KMS keys (moto)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from encfs import EncryptedFileSystem
from encfs.cli.main import main
from encfs.keystore.store import LocalKeystore


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def ok(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return out


def fails(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 1, (out, err)
    assert err.startswith("encfs: error: ") and err.count("\n") == 1, err
    return err


def _describe(capsys, key: str) -> dict:
    return json.loads(ok(capsys, "keys", "describe", "--json", key))


def test_create_list_describe(capsys, encfs_home):
    info = json.loads(ok(capsys, "keys", "create", "--alias", "lake", "--description", "sales lake",
                         "--tag", "team=data", "--tag", "env=prod", "--json"))
    kid = info["key_id"]
    assert kid.startswith("lk-") and info["aliases"] == ["lake"] and info["tags"] == {"team": "data", "env": "prod"}
    assert info["state"] == "Enabled" and info["kind"] == "customer" and info["usage"] == "ENCRYPT_DECRYPT"
    text = ok(capsys, "keys", "describe", "alias/lake")
    assert f"local://{kid}" in text and "sales lake" in text and "env=prod, team=data" in text
    assert _describe(capsys, f"local://{kid}")["key_id"] == kid
    listing = ok(capsys, "keys", "list")
    assert listing.splitlines()[0].split()[:3] == ["KEY", "STATE", "KIND"] and f"local://{kid}" in listing
    assert [k["key_id"] for k in json.loads(ok(capsys, "keys", "list", "--json"))] == [kid]
    assert "material" not in json.dumps(info) and "sealed" not in listing


def test_lifecycle_verbs_and_forbidden_transitions(capsys, encfs_home):
    ok(capsys, "keys", "create", "--alias", "lake")
    assert "disabled (state Disabled" in ok(capsys, "keys", "disable", "lake")
    assert "Disabled: cannot rotate" in fails(capsys, "keys", "rotate", "lake")
    ok(capsys, "keys", "enable", "lake")
    assert "current version 2" in ok(capsys, "keys", "rotate", "lake")
    assert "7..30" in fails(capsys, "keys", "schedule-deletion", "lake", "--days", "5")
    out = ok(capsys, "keys", "schedule-deletion", "lake", "--days", "7")
    assert "PendingDeletion, deletion on " in out
    assert "cancel the deletion first" in fails(capsys, "keys", "enable", "lake")
    assert "PendingDeletion" in fails(capsys, "keys", "disable", "lake")
    assert "already scheduled" in fails(capsys, "keys", "schedule-deletion", "lake")
    assert "state Disabled" in ok(capsys, "keys", "cancel-deletion", "lake")
    assert "no deletion is scheduled" in fails(capsys, "keys", "cancel-deletion", "lake")
    assert _describe(capsys, "lake")["state"] == "Disabled"
    assert "not found" in fails(capsys, "keys", "describe", "nope")


def test_rotation_settings(capsys, encfs_home):
    ok(capsys, "keys", "create", "--alias", "r", "--rotation-days", "90")
    assert _describe(capsys, "r")["rotation_period_days"] == 90
    status = json.loads(ok(capsys, "keys", "rotation", "r", "--period-days", "400"))
    assert status["enabled"] and status["period_days"] == 400
    status = json.loads(ok(capsys, "keys", "rotation", "r", "--disable"))
    assert status["enabled"] is False
    assert "90..2560" in fails(capsys, "keys", "rotation", "r", "--enable", "--period-days", "10")


def test_alias_and_tag_verbs(capsys, encfs_home):
    a = json.loads(ok(capsys, "keys", "create", "--alias", "a", "--json"))["key_id"]
    b = json.loads(ok(capsys, "keys", "create", "--json"))["key_id"]
    ok(capsys, "keys", "alias", "create", "alias/shared", "a")
    assert "already exists" in fails(capsys, "keys", "alias", "create", "shared", b)
    assert "reserved" in fails(capsys, "keys", "alias", "create", "encfs/mine", b)
    ok(capsys, "keys", "alias", "update", "shared", b)
    assert LocalKeystore(encfs_home).resolve("shared") == b
    assert "does not exist" in fails(capsys, "keys", "alias", "update", "ghost", b)
    ok(capsys, "keys", "alias", "delete", "shared")
    assert "not found" in fails(capsys, "keys", "describe", "shared")
    ok(capsys, "keys", "tag", "a", "x=1", "y=2")
    ok(capsys, "keys", "untag", "a", "x")
    ok(capsys, "keys", "set-description", "a", "new words")
    info = _describe(capsys, a)
    assert info["tags"] == {"y": "2"} and info["description"] == "new words"
    code, _, err = run(capsys, "keys", "tag", "a", "novalue")
    assert code == 2 and "KEY=VALUE" in err


def test_admin_actions_land_in_the_audit_log(capsys, encfs_home):
    kid = json.loads(ok(capsys, "keys", "create", "--alias", "lake", "--json"))["key_id"]
    ok(capsys, "keys", "disable", "lake")
    fails(capsys, "keys", "rotate", "lake")
    out = ok(capsys, "audit", "--key", "lake", "--json")
    recs = [json.loads(x) for x in out.splitlines()]
    assert [(r["action"], r["outcome"]) for r in recs] == [
        ("create-key", "success"), ("disable-key", "success"), ("rotate-key", "failure")]
    assert all(r["key"] == f"local://{kid}" for r in recs)
    assert "OK, 3 records" in ok(capsys, "audit", "verify")


def test_recover_corrupted_keystore(capsys, encfs_home, memfs):
    fs = EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), cache=False, skip_instance_cache=True)
    fs.pipe_file("/a", b"data")
    (encfs_home / "keystore.json").write_text('{"format": "encfs-keystore/1", "keys": ')
    err = fails(capsys, "keys", "list")
    assert "corrupted" in err and "encfs keys recover" in err
    assert "restored from backup (1 keys)" in ok(capsys, "keys", "recover")
    fs2 = EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), cache=False, skip_instance_cache=True)
    assert fs2.cat_file("/a") == b"data"


def test_export_import(capsys, encfs_home, tmp_path, monkeypatch, memfs):
    monkeypatch.setenv("ENCFS_EXPORT_PASSPHRASE", "bundle pass")
    kid = json.loads(ok(capsys, "keys", "create", "--alias", "lake", "--json"))["key_id"]
    fs = EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), key="local://lake", cache=False,
                             skip_instance_cache=True)
    fs.pipe_file("/rows", b"r1\nr2\n")
    bundle = tmp_path / "lake.keys"
    ok(capsys, "keys", "export", str(bundle), "lake")
    assert oct(bundle.stat().st_mode & 0o777) == "0o600"
    material = LocalKeystore(encfs_home)._material(kid, 1, for_wrap=False)[1]
    import base64

    assert base64.b64encode(material) not in bundle.read_bytes()
    other = tmp_path / "other-home"
    out = ok(capsys, "keys", "--keystore", str(other), "import", str(bundle))
    assert f"added: {kid}" in out
    fs2 = EncryptedFileSystem(fs=memfs, keystore=str(other), key="local://lake", cache=False, skip_instance_cache=True)
    assert fs2.cat_file("/rows") == b"r1\nr2\n"
    monkeypatch.setenv("ENCFS_EXPORT_PASSPHRASE", "wrong")
    assert "wrong passphrase" in fails(capsys, "keys", "--keystore", str(other), "import", str(bundle))
    assert "only local keys" in fails(capsys, "keys", "export", str(bundle), "aws-kms://alias/x")


def test_one_line_errors_in_a_real_process(tmp_path, encfs_home):
    env = {**os.environ, "ENCFS_HOME": str(encfs_home)}
    p = subprocess.run([sys.executable, "-m", "encfs.cli", "keys", "disable", "missing-key"], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 1 and p.stderr.startswith("encfs: error: local key 'missing-key' not found")
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_unknown_provider_is_a_clear_error(capsys):
    assert "unknown key provider scheme 'nope'" in fails(capsys, "keys", "describe", "nope://x")


# -- the same verbs on AWS KMS keys (moto) ---------------------------------------------
def test_kms_keys_through_the_same_verbs(capsys, moto_server, encfs_home):
    opts = ["-o", f"aws-kms.endpoint_url={moto_server.endpoint}", "-o", "aws-kms.region_name=us-east-1"]
    info = json.loads(ok(capsys, "keys", *opts, "create", "--provider", "aws-kms", "--alias", "kms-lake",
                         "--description", "lake in kms", "--json"))
    assert info["provider"] == "aws-kms" and "alias/kms-lake" in info["aliases"]
    key = "aws-kms://alias/kms-lake"
    ok(capsys, "keys", *opts, "disable", key)
    assert json.loads(ok(capsys, "keys", *opts, "describe", "--json", key))["state"] == "Disabled"
    ok(capsys, "keys", *opts, "enable", key)
    ok(capsys, "keys", *opts, "tag", key, "team=data")
    assert json.loads(ok(capsys, "keys", *opts, "describe", "--json", key))["tags"] == {"team": "data"}
    assert "PendingDeletion" in ok(capsys, "keys", *opts, "schedule-deletion", key, "--days", "7")
    assert "Disabled" in ok(capsys, "keys", *opts, "cancel-deletion", key)
    ok(capsys, "keys", *opts, "enable", key)
    ok(capsys, "keys", *opts, "alias", "create", "aws-kms://alias/kms-second", key)
    assert "already exists" in fails(capsys, "keys", *opts, "alias", "create", "aws-kms://alias/kms-second", key)
    other = json.loads(ok(capsys, "keys", *opts, "create", "--provider", "aws-kms", "--json"))["uri"]
    ok(capsys, "keys", *opts, "alias", "update", "aws-kms://alias/kms-second", other)
    assert json.loads(ok(capsys, "keys", *opts, "describe", "--json", "aws-kms://alias/kms-second"))["uri"] == other
    ok(capsys, "keys", *opts, "alias", "delete", "aws-kms://alias/kms-second")
    assert "not found" in fails(capsys, "keys", *opts, "describe", "aws-kms://alias/kms-second").lower()
    status = json.loads(ok(capsys, "keys", *opts, "rotation", key, "--enable", "--period-days", "180"))
    assert status["automatic"] is True
    assert "does not support" in fails(capsys, "keys", *opts, "set-description", key, "x")
    recs = [json.loads(x) for x in (encfs_home / "audit.log").read_text().splitlines()]
    assert [r["action"] for r in recs] == ["create-key", "disable-key", "enable-key", "tag-key",
                                           "schedule-deletion", "cancel-deletion", "enable-key", "set-alias",
                                           "create-key", "set-alias", "delete-alias", "set-rotation"]
    assert all(r["key"].startswith("aws-kms://arn:aws:kms:") for r in recs)
