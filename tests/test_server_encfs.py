"""encfs itself against the key server: enc::s3:// objects (moto S3) whose
data keys come from ``aws-kms://`` keys served by encfs's own key server,
with a principal the key policy limits to one dataset."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("s3fs")
from _kms_server import arn, client, make_config

from encfs import EncryptedFileSystem
from encfs.errors import AccessDeniedError
from encfs.server.app import ServerThread


@pytest.fixture(scope="module")
def kms_srv(tmp_path_factory):
    cfg = make_config(tmp_path_factory.mktemp("kms"), names=("admin", "etl", "intruder"))
    srv = ServerThread(cfg).start()
    srv.p = {p.name: p for p in cfg.principals}
    yield srv
    srv.stop()


def _profile(tmp_path, monkeypatch, name: str, principal) -> str:
    """A named profile in a private shared-credentials file: the aws-kms
    provider takes credentials from boto3's chain, never from options."""
    path = tmp_path / "credentials"
    text = path.read_text() if path.exists() else ""
    profile = f"encfs-kms-{name}-{id(principal)}"
    path.write_text(text + f"[{profile}]\naws_access_key_id = {principal.access_key_id}\n"
                           f"aws_secret_access_key = {principal.secret}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
    return profile


def test_encfs_writes_and_reads_s3_with_keys_from_the_server(kms_srv, moto_server, s3, tmp_path, monkeypatch):
    admin = client(kms_srv.endpoint, kms_srv.p["admin"])
    pol = {"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": arn("admin")}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": arn("etl")},
         "Action": ["kms:GenerateDataKey", "kms:Decrypt", "kms:Encrypt", "kms:DescribeKey"], "Resource": "*"}]}
    key = admin.create_key(Policy=json.dumps(pol))["KeyMetadata"]["KeyId"]
    admin.create_alias(AliasName="alias/lake-a", TargetKeyId=key)
    etl = _profile(tmp_path, monkeypatch, "etl", kms_srv.p["etl"])
    intruder = _profile(tmp_path, monkeypatch, "intruder", kms_srv.p["intruder"])

    def efs(profile: str) -> EncryptedFileSystem:
        return EncryptedFileSystem(
            target_protocol="s3", target_options=moto_server.target_options(skip_instance_cache=True),
            key="aws-kms://alias/lake-a", skip_instance_cache=True,
            providers={"aws-kms": {"endpoint_url": kms_srv.endpoint, "region_name": "us-east-1",
                                   "profile_name": profile, "max_attempts": 1}})

    fs = efs(etl)
    path = f"{s3.test_bucket}/a/data.bin"
    payload = b"rows " * 50_000
    fs.pipe_file(path, payload)
    assert payload[:1000] not in s3.cat_file(path)  # ciphertext at rest
    assert efs(etl).cat_file(path) == payload
    assert efs(etl).cat_file(path, start=1000, end=2000) == payload[1000:2000]
    with pytest.raises(AccessDeniedError):
        efs(intruder).cat_file(path)
    records = [json.loads(x) for x in kms_srv.cfg.audit_path.read_text().splitlines()]
    used = {(r["principal"].rsplit("/", 1)[-1], r["action"], r["outcome"]) for r in records
            if r.get("key", "").endswith(key)}
    assert {("etl", "GenerateDataKey", "success"), ("etl", "Decrypt", "success")} <= used
    assert {outcome for who, _, outcome in used if who == "intruder"} == {"denied"}
