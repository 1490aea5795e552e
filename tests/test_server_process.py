"""The key server as a process: ``encfs server --config`` killed with
SIGKILL and restarted keeps every key, alias, grant and policy; ``--dev``
prints working export lines and shuts down cleanly; TLS; config errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")
boto3 = pytest.importorskip("boto3")
from _kms_server import arn, client
from botocore.exceptions import ClientError

from encfs.server.config import new_access_key

ENCFS = [sys.executable, "-m", "encfs.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(endpoint: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(endpoint + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def _write_config(tmp: Path, port: int, principals: dict[str, tuple[str, str]], extra: str = "") -> Path:
    lines = [f'[server]\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "data"\n{extra}',
             f'[master_key]\ntype = "local"\nkeystore = "{tmp / "keystore"}"\n']
    for name, (akid, secret) in principals.items():
        actions = '["kms:*"]' if name == "admin" else "[]"
        lines.append(f'[[principals]]\nname = "{name}"\naccess_key_id = "{akid}"\n'
                     f'secret_access_key_env = "TEST_SECRET_{name.upper()}"\naccount_actions = {actions}\n')
    path = tmp / "kms.toml"
    path.write_text("\n".join(lines))
    return path


def test_sigkill_and_restart_keeps_every_key_grant_and_policy(tmp_path):
    port = _free_port()
    creds = {"admin": new_access_key(), "alice": new_access_key()}
    env = {**os.environ, **{f"TEST_SECRET_{n.upper()}": c[1] for n, c in creds.items()}}
    cfg_path = _write_config(tmp_path, port, creds)
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*ENCFS, "server", "--config", str(cfg_path)], env=env, stderr=subprocess.PIPE)
    try:
        _wait_healthy(endpoint, proc)
        principals = {n: _P(n, *c) for n, c in creds.items()}
        admin, alice = client(endpoint, principals["admin"]), client(endpoint, principals["alice"])
        pol = json.dumps({"Statement": [
            {"Effect": "Allow", "Principal": {"AWS": arn("admin")}, "Action": "kms:*", "Resource": "*"},
            {"Effect": "Allow", "Principal": {"AWS": arn("alice")}, "Action": "kms:Encrypt", "Resource": "*"}]})
        key = admin.create_key(Policy=pol, Tags=[{"TagKey": "t", "TagValue": "v"}])["KeyMetadata"]["KeyId"]
        admin.create_alias(AliasName="alias/durable", TargetKeyId=key)
        admin.rotate_key_on_demand(KeyId=key)
        grant = admin.create_grant(KeyId=key, GranteePrincipal=arn("alice"), Operations=["Decrypt"])
        blob = alice.encrypt(KeyId="alias/durable", Plaintext=b"kept", EncryptionContext={"a": "1"})["CiphertextBlob"]
        admin.enable_key_rotation(KeyId=key, RotationPeriodInDays=180)  # the last change before the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = subprocess.Popen([*ENCFS, "server", "--config", str(cfg_path)], env=env, stderr=subprocess.PIPE)
        _wait_healthy(endpoint, proc)
        admin, alice = client(endpoint, principals["admin"]), client(endpoint, principals["alice"])
        assert alice.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "1"})["Plaintext"] == b"kept"
        assert admin.describe_key(KeyId="alias/durable")["KeyMetadata"]["KeyId"] == key
        assert json.loads(admin.get_key_policy(KeyId=key, PolicyName="default")["Policy"]) == json.loads(pol)
        assert [g["GrantId"] for g in admin.list_grants(KeyId=key)["Grants"]] == [grant["GrantId"]]
        assert admin.list_resource_tags(KeyId=key)["Tags"] == [{"TagKey": "t", "TagValue": "v"}]
        assert len(admin.list_key_rotations(KeyId=key)["Rotations"]) == 1
        assert admin.get_key_rotation_status(KeyId=key)["RotationPeriodInDays"] == 180
        with pytest.raises(ClientError):
            alice.generate_data_key(KeyId=key, KeySpec="AES_256")  # still only what the policy says
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    db = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("kms.db*"))
    assert creds["admin"][1].encode() not in db and creds["alice"][1].encode() not in db
    out = subprocess.run([*ENCFS, "audit", "--log", str(tmp_path / "data" / "audit.log"), "verify"],
                         check=False, capture_output=True, text=True)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


class _P:
    def __init__(self, name: str, akid: str, secret: str) -> None:
        self.name, self.access_key_id, self.secret = name, akid, secret


def test_dev_mode_prints_exports_and_stops_cleanly(tmp_path, monkeypatch):
    proc = subprocess.Popen([*ENCFS, "server", "--dev", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        exports = dict(proc.stdout.readline().strip().removeprefix("export ").split("=", 1) for _ in range(4))
        assert set(exports) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                "AWS_ENDPOINT_URL_KMS"}
        for name, value in exports.items():  # exactly what `eval` of the lines would set
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        kms = boto3.session.Session().client("kms")  # endpoint from AWS_ENDPOINT_URL_KMS
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        dk = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
        assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        err = proc.stderr.read()
        assert exports["AWS_SECRET_ACCESS_KEY"] not in err  # logs carry no secret
        assert '"event": "stopped"' in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_config_errors_are_one_line(tmp_path):
    akid, secret = new_access_key()
    cfg = _write_config(tmp_path, 8443, {"admin": (akid, secret)}).read_text().replace(
        'host = "127.0.0.1"', 'host = "0.0.0.0"')
    (tmp_path / "public.toml").write_text(cfg)
    out = subprocess.run([*ENCFS, "server", "--config", str(tmp_path / "public.toml")], check=False, capture_output=True, text=True,
                         env={**os.environ, "TEST_SECRET_ADMIN": secret})
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0
    assert "plain HTTP is only allowed on loopback" in out.stderr
    out = subprocess.run([*ENCFS, "server", "--config", str(tmp_path / "kms.toml")], check=False, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "TEST_SECRET_ADMIN"})
    assert out.returncode != 0 and "TEST_SECRET_ADMIN is not set" in out.stderr
    out = subprocess.run([*ENCFS, "server"], check=False, capture_output=True, text=True)
    assert out.returncode != 0 and "--dev" in out.stderr


def test_tls(tmp_path):
    import datetime as dt

    from _kms_server import make_config
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from encfs.server.app import ServerThread

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    import ipaddress
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5))
            .not_valid_after(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    cfg = make_config(tmp_path / "data", names=("admin",), tls_cert=str(tmp_path / "cert.pem"),
                      tls_key=str(tmp_path / "key.pem"))
    srv = ServerThread(cfg).start()
    try:
        assert srv.endpoint.startswith("https://")
        kms = client(srv.endpoint, cfg.principals[0], verify=str(tmp_path / "cert.pem"))
        assert kms.generate_random(NumberOfBytes=8)["Plaintext"]
    finally:
        srv.stop()


def test_removed_principal_is_revoked_and_another_master_key_is_refused(tmp_path):
    import dataclasses

    from _kms_server import make_config

    from encfs.errors import ConfigurationError
    from encfs.server.app import ServerThread
    from encfs.server.masterkey import material_aad

    cfg = make_config(tmp_path / "data", names=("admin", "alice"))
    srv = ServerThread(cfg).start()
    try:
        admin, alice = (client(srv.endpoint, p) for p in cfg.principals)
        key = admin.create_key()["KeyMetadata"]["KeyId"]
        alice.list_keys()

        async def material():
            async with srv.server.storage.transaction() as tx:
                ver = await tx.get_version(key, 1)
            return ver.wrapped, srv.server.master.unwrap(ver.wrapped, material_aad(key, 1))
        wrapped, plain = srv.call(material())
        assert len(plain) == 32 and plain not in wrapped
    finally:
        srv.stop()
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("kms.db*"))
    assert plain not in stored  # root key material only wrapped

    fewer = dataclasses.replace(cfg, principals=cfg.principals[:1])
    srv = ServerThread(fewer).start()
    try:
        with pytest.raises(ClientError) as exc:
            client(srv.endpoint, cfg.principals[1]).list_keys()
        assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"
        assert client(srv.endpoint, cfg.principals[0]).describe_key(KeyId=key)["KeyMetadata"]["KeyId"] == key
    finally:
        srv.stop()

    other = dataclasses.replace(cfg, master_key={"type": "local", "keystore": str(tmp_path / "other"), "create": True})
    with pytest.raises(ConfigurationError, match="storage was written under"):
        ServerThread(other).start()
    ServerThread(cfg).start().stop()  # the failed start released the database


def test_two_workers_share_keys_grants_and_one_audit_chain(tmp_path):
    from encfs.audit import AuditLog

    port = _free_port()
    creds = {"admin": new_access_key(), "alice": new_access_key()}
    env = {**os.environ, **{f"TEST_SECRET_{n.upper()}": c[1] for n, c in creds.items()}}
    cfg_path = _write_config(tmp_path, port, creds, extra="workers = 2\n")
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([*ENCFS, "server", "--config", str(cfg_path)], env=env, stderr=subprocess.PIPE)
    try:
        _wait_healthy(endpoint, proc)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2
        principals = {n: _P(n, *c) for n, c in creds.items()}
        admin = client(endpoint, principals["admin"])
        key = admin.create_key()["KeyMetadata"]["KeyId"]
        grant = admin.create_grant(KeyId=key, GranteePrincipal=arn("alice"), Operations=["GenerateDataKey"])
        # Fresh clients, fresh connections: the requests spread over both workers.
        alices = [client(endpoint, principals["alice"]) for _ in range(6)]
        calls = 3  # create_key, create_grant, revoke_grant
        for kms in alices:
            kms.generate_data_key(KeyId=key, KeySpec="AES_256")
            calls += 1
        admin.revoke_grant(KeyId=key, GrantId=grant["GrantId"])
        for kms in alices:  # refused at once, whichever worker answers
            with pytest.raises(ClientError):
                kms.generate_data_key(KeyId=key, KeySpec="AES_256")
            calls += 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = AuditLog(tmp_path / "data" / "audit.log")
    result = log.verify()
    assert result.ok and result.count == calls, result.problems
    assert {r.get("source") for r in log.records()} == {"127.0.0.1"}


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_workers_stop_when_the_supervisor_is_killed(tmp_path):
    port = _free_port()
    creds = {"admin": new_access_key()}
    env = {**os.environ, "TEST_SECRET_ADMIN": creds["admin"][1]}
    cfg_path = _write_config(tmp_path, port, creds, extra="workers = 2\n")
    proc = subprocess.Popen([*ENCFS, "server", "--config", str(cfg_path)], env=env, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        children = [int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.1)
        assert not any(_alive(c) for c in children)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(not __import__("shutil").which("aws"), reason="the AWS CLI is not installed")
def test_the_aws_cli_works_unchanged(tmp_path):
    proc = subprocess.Popen([*ENCFS, "server", "--dev", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        exports = dict(proc.stdout.readline().strip().removeprefix("export ").split("=", 1) for _ in range(4))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(exports, AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))

        def aws(*args: str) -> str:
            out = subprocess.run(["aws", "kms", *args, "--output", "text"], env=env, capture_output=True, text=True,
                                 check=False, timeout=60)
            assert out.returncode == 0, out.stderr
            return out.stdout.strip()

        key = aws("create-key", "--query", "KeyMetadata.KeyId")
        (tmp_path / "plain").write_bytes(b"hello")
        blob = aws("encrypt", "--key-id", key, "--plaintext", f"fileb://{tmp_path / 'plain'}",
                   "--encryption-context", "team=a", "--query", "CiphertextBlob")
        (tmp_path / "blob").write_bytes(__import__("base64").b64decode(blob))
        assert aws("decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'blob'}", "--encryption-context", "team=a",
                   "--query", "Plaintext") == "aGVsbG8="
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
