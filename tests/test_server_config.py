"""The key server's TOML config: paths, secrets, refusals (one line each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from encfs.errors import ConfigurationError
from encfs.server.config import dev_config, load


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etc" / "kms.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = '''
[server]
data_dir = "data"
[master_key]
keystore = "keystore"
[[principals]]
name = "etl"
access_key_id = "AKIAETL0000000000001"
secret_access_key_file = "etl.secret"
account_actions = ["kms:ListKeys"]
'''


def test_paths_are_relative_to_the_config_and_secrets_come_from_files_or_env(tmp_path, monkeypatch):
    path = _write(tmp_path, BASE + '''
[[principals]]
name = "admin"
arn = "arn:aws:iam::111122223333:role/admin"
access_key_id = "AKIAADMIN00000000001"
secret_access_key_env = "KMS_ADMIN_SECRET"
''')
    (path.parent / "etl.secret").write_text("etl-secret-0123456789\n")
    monkeypatch.setenv("KMS_ADMIN_SECRET", "admin-secret-0123456789")
    cfg = load(path)
    etc = path.parent
    assert cfg.data_dir == etc / "data" and cfg.storage["path"] == str(etc / "data" / "kms.db")
    assert cfg.master_key["keystore"] == str(etc / "keystore") and cfg.audit_path == etc / "data" / "audit.log"
    etl, admin = cfg.principals
    assert etl.arn == "arn:aws:iam::111122223333:user/etl" and etl.secret == "etl-secret-0123456789"
    assert admin.arn.endswith("role/admin") and admin.secret == "admin-secret-0123456789"
    assert etl.secret not in repr(etl) and admin.secret not in repr(cfg)  # reprs hide secrets
    assert cfg.endpoint == "http://127.0.0.1:8443"


@pytest.mark.parametrize(("section", "line", "message"), [
    ("[server]", 'host = "0.0.0.0"', "plain HTTP is only allowed on loopback"),
    ("[server]", 'tls_cert = "c.pem"', "tls_cert and tls_key go together"),
    ("[server]", "bogus = 1", "unknown setting"),
    ("[server]", "workers = 0", "workers must be between"),
    ("[server]", 'hostnames = "kms.internal"', "hostnames must be a list"),
    ("[server]", 'hostnames = ["kms internal"]', "not a host name"),
    ("[server]", 'hostnames = ["https://kms.internal"]', "not a host name"),
    ("[master_key]", "", None),
])
def test_refusals(tmp_path, section, line, message):
    text = BASE.replace(section + "\n", f"{section}\n{line}\n") if line else BASE + '[audit]\nsync = "never"\n'
    path = _write(tmp_path, text)
    (path.parent / "etl.secret").write_text("etl-secret-0123456789")
    with pytest.raises(ConfigurationError, match=message or "sync must be"):
        load(path)


def test_missing_or_short_secrets_are_refused(tmp_path, monkeypatch):
    path = _write(tmp_path, BASE)
    with pytest.raises(ConfigurationError, match="cannot read secret_access_key_file"):
        load(path)
    (path.parent / "etl.secret").write_text("short")
    with pytest.raises(ConfigurationError, match="shorter than 16"):
        load(path)
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load(_write(tmp_path, "[server"))


def test_dev_config_has_one_admin(tmp_path):
    cfg = dev_config(tmp_path, 0)
    (admin,) = cfg.principals
    assert admin.account_actions == ("kms:*",) and admin.access_key_id.startswith("AKIA") and len(admin.secret) == 40
    assert cfg.host == "127.0.0.1"


@pytest.mark.parametrize(("entry", "message"), [
    ("kms:CreateKey:alias/team-a/*", "applies only to kms:CreateAlias"),
    ("kms:List*:alias/team-a/*", "applies only to kms:CreateAlias"),
    ("kms:CreateAlias:alias/team a", "an alias pattern holds only"),
    ("kms:CreateAlias:alias/", "an alias pattern holds only"),
])
def test_bad_alias_patterns_are_refused(tmp_path, entry, message):
    path = _write(tmp_path, BASE.replace('["kms:ListKeys"]', f'["kms:ListKeys", "{entry}"]'))
    (path.parent / "etl.secret").write_text("etl-secret-0123456789")
    with pytest.raises(ConfigurationError, match=message):
        load(path)


def test_alias_patterns_and_hostnames_are_read(tmp_path):
    from encfs.server.service import Caller

    actions = '["kms:CreateKey", "kms:CreateAlias:alias/team-a/*", "kms:*Alias:alias/shared/?"]'
    path = _write(tmp_path, BASE.replace('["kms:ListKeys"]', actions)
                  .replace("[server]\n", '[server]\nhostnames = ["kms.internal", "[::1]:8443"]\n'))
    (path.parent / "etl.secret").write_text("etl-secret-0123456789")
    cfg = load(path)
    assert cfg.hostnames == ("kms.internal", "[::1]:8443")
    (etl,) = cfg.principals
    caller = Caller(etl.arn, etl.access_key_id, etl.account_actions)
    assert caller.may("CreateKey") and not caller.may("CreateAlias") and not caller.may("ListKeys")
    assert caller.may("CreateAlias", "alias/team-a/x") and caller.may("CreateAlias", "alias/team-a/x/y")
    assert not caller.may("CreateAlias", "alias/team-ab") and not caller.may("CreateAlias", "alias/Team-A/x")
    assert not caller.may("UpdateAlias", "alias/team-a/x") and not caller.may("DeleteAlias", "alias/team-a/x")
    assert caller.may("DeleteAlias", "alias/shared/1") and not caller.may("DeleteAlias", "alias/shared/12")
    # a pattern never widens a non-alias action; an entry without one covers every name
    assert not Caller("a", "k", ("kms:*:alias/x",)).may("CreateKey")
    assert Caller("a", "k", ("kms:*",)).may("UpdateAlias", "alias/anything")
