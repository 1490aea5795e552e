"""The key server, highly available: replicas on one PostgreSQL (started by
the tests from Debian's package, tests/_postgres.py; skipped, saying so,
only where it cannot be started).

Storage on its own (migrations, transactions, no clear secret), then two
replicas on one database driven by boto3 with clients alternating
endpoints: a change made through one replica is enforced by the other at
once (docs/SERVER.md, "High availability": the revocation bound), and
concurrent administrative calls on both lose no update.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")
boto3 = pytest.importorskip("boto3")
from _kms_server import arn, client, make_config
from botocore.exceptions import ClientError

from encfs.server.app import ServerThread
from encfs.server.postgres import MIGRATIONS, PostgresStorage
from encfs.server.storage import AlreadyExists, GrantRecord, KeyRecord, KeyVersion, StorageError


def run(coro):
    return asyncio.run(coro)


def _key(key_id: str) -> KeyRecord:
    return KeyRecord(key_id=key_id, arn=f"arn:aws:kms:us-east-1:111122223333:key/{key_id}", created=time.time(),
                     policy="{}", creator="arn:aws:iam::111122223333:user/a")


@pytest.fixture(scope="module")
def pg_url(postgres):
    """A fresh database per test module's first use; tests make their own names inside it."""
    return postgres.createdb("ha_" + uuid.uuid4().hex[:8])


# -- storage ---------------------------------------------------------------------------


def test_storage_migrates_once_and_keeps_everything(postgres):
    url = postgres.createdb("st_" + uuid.uuid4().hex[:8])

    async def go():
        a, b = PostgresStorage(url), PostgresStorage(url)
        await asyncio.gather(a.open(), b.open())  # two replicas starting together migrate once
        assert await a.schema_version() == await b.schema_version() == len(MIGRATIONS)
        async with a.transaction(write=True) as tx:
            await tx.insert_key(_key("k1"))
            await tx.insert_version(KeyVersion("k1", 1, 0.0, "INITIAL", b"wrapped", "m"))
            await tx.insert_grant(GrantRecord("g1", "k1", "arn:b", ["Decrypt"], 0.0, "111122223333", "arn:a",
                                              constraints={"EncryptionContextEquals": {"a": "1"}}))
            await tx.set_meta("x", "1")
            await tx.set_meta("x", "2")
        with pytest.raises(AlreadyExists):
            async with a.transaction(write=True) as tx:
                await tx.insert_key(_key("k1"))
        with pytest.raises(RuntimeError):  # a failed transaction leaves nothing
            async with b.transaction(write=True) as tx:
                await tx.insert_key(_key("k2"))
                raise RuntimeError("boom")
        await a.close()
        async with b.transaction() as tx:  # what replica A committed, replica B reads
            assert (await tx.get_key("k1")).creator.endswith("user/a")
            assert await tx.get_key("k2") is None
            assert (await tx.get_version("k1", 1)).wrapped == b"wrapped"
            assert (await tx.grants_for("k1", "arn:b"))[0].constraints == {"EncryptionContextEquals": {"a": "1"}}
            assert await tx.get_meta("x") == "2"
        async with b.transaction(write=True) as tx:
            await tx.destroy_key("k1")
        async with b.transaction() as tx:
            assert await tx.get_key("k1") is None and await tx.list_versions("k1") == []
            assert await tx.get_grant("g1") is None
        async with b.transaction(write=True) as tx:
            await tx.set_meta("schema_version", str(len(MIGRATIONS) + 1))
        await b.close()
        with pytest.raises(StorageError, match="schema version"):
            await PostgresStorage(url).open()

    run(go())


def test_config_chooses_postgresql_and_refuses_a_password_in_the_url(tmp_path):
    from encfs.errors import ConfigurationError
    from encfs.server import config

    cfg = config.from_dict({"storage": {"url": "postgresql://kms@db.internal:5432/kms"}}, base=tmp_path)
    assert cfg.storage["type"] == "postgresql"
    with pytest.raises(ConfigurationError, match="PGPASSWORD"):
        config.from_dict({"storage": {"url": "postgresql://kms:hunter2@db/kms"}}, base=tmp_path)
    with pytest.raises(ConfigurationError, match="unknown type"):
        config.from_dict({"storage": {"type": "mysql"}}, base=tmp_path)


def test_unreachable_database_is_a_storage_error():
    async def go():
        st = PostgresStorage("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)
        with pytest.raises(StorageError, match="cannot open"):
            await st.open()

    run(go())


# -- two replicas ----------------------------------------------------------------------------


class Replicas:
    """Two key servers (threads, each its own event loop and pool) on one database."""

    def __init__(self, tmp_path, url: str, master: dict | None = None) -> None:
        self.cfg_a = make_config(tmp_path / "a")
        self.cfg_a.storage = {"type": "postgresql", "url": url}
        if master is not None:
            self.cfg_a.master_key = master
        # Replicas share one config (principals) and one master key.
        self.cfg_b = make_config(tmp_path / "b")
        self.cfg_b.principals = self.cfg_a.principals
        self.cfg_b.storage = dict(self.cfg_a.storage)
        self.cfg_b.master_key = dict(self.cfg_a.master_key)
        self.a = ServerThread(self.cfg_a).start()
        self.b = ServerThread(self.cfg_b).start()
        self.p = {p.name: p for p in self.cfg_a.principals}

    def clients(self, name: str):
        return client(self.a.endpoint, self.p[name]), client(self.b.endpoint, self.p[name])

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, pg_url):
    r = Replicas(tmp_path_factory.mktemp("replicas"), pg_url)
    yield r
    r.stop()


def test_two_replicas_serve_the_same_keys_alternating(replicas):
    admin = itertools.cycle(replicas.clients("admin"))
    alice_a, alice_b = replicas.clients("alice")
    key = next(admin).create_key(Description="shared")["KeyMetadata"]["KeyId"]
    next(admin).create_alias(AliasName=f"alias/ha-{key[:8]}", TargetKeyId=key)
    grant = next(admin).create_grant(KeyId=key, GranteePrincipal=arn("alice"),
                                     Operations=["GenerateDataKey", "Decrypt"])
    alice = itertools.cycle((alice_a, alice_b))
    for _ in range(6):  # every data key made on one replica opens on the other
        dk = next(alice).generate_data_key(KeyId=f"alias/ha-{key[:8]}", KeySpec="AES_256",
                                           EncryptionContext={"d": "x"})
        assert next(alice).decrypt(CiphertextBlob=dk["CiphertextBlob"],
                                   EncryptionContext={"d": "x"})["Plaintext"] == dk["Plaintext"]
    next(admin).rotate_key_on_demand(KeyId=key)
    dk = alice_b.generate_data_key(KeyId=key, KeySpec="AES_256")
    assert alice_a.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]

    # The revocation bound: the revoke's answer on A is the moment B refuses.
    replicas.clients("admin")[0].revoke_grant(KeyId=key, GrantId=grant["GrantId"])
    with pytest.raises(ClientError) as err:
        alice_b.decrypt(CiphertextBlob=dk["CiphertextBlob"])
    assert err.value.response["Error"]["Code"] == "AccessDeniedException"

    # A new policy on B is enforced on A; a key disabled on A is refused on B.
    admin_a, admin_b = replicas.clients("admin")
    pol = json.loads(admin_a.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
    pol["Statement"].append({"Effect": "Allow", "Principal": {"AWS": arn("alice")}, "Action": "kms:Encrypt",
                             "Resource": "*", "Condition": {"StringEquals": {"kms:EncryptionContext:d": "A"}}})
    admin_b.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(pol))
    alice_a.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"d": "A"})
    with pytest.raises(ClientError):
        alice_a.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"d": "B"})
    admin_a.disable_key(KeyId=key)
    with pytest.raises(ClientError) as err:
        alice_b.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"d": "A"})
    assert err.value.response["Error"]["Code"] == "DisabledException"
    admin_b.enable_key(KeyId=key)
    alice_a.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"d": "A"})


def test_concurrent_admin_calls_on_two_replicas_lose_no_update(replicas):
    admin_a, admin_b = replicas.clients("admin")
    key = admin_a.create_key()["KeyMetadata"]["KeyId"]
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def tagger(kms, prefix: str) -> None:
        try:
            start.wait()
            for i in range(10):  # read-modify-write of the key row, racing the other replica
                kms.tag_resource(KeyId=key, Tags=[{"TagKey": f"{prefix}{i}", "TagValue": "v"}])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=tagger, args=(kms, f"{n}-"))
               for n, kms in enumerate((admin_a, admin_b, *replicas.clients("admin")))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    tags = {t["TagKey"] for t in admin_b.list_resource_tags(KeyId=key, Limit=100)["Tags"]}
    assert tags == {f"{n}-{i}" for n in range(4) for i in range(10)}


def test_the_hot_path_reads_the_database_once_per_request(replicas, monkeypatch):
    """GenerateDataKey, Encrypt and Decrypt through an alias and a grant (the
    policy alone does not allow): alias, key, key version and grants come in
    one statement, read afresh by every request (besides the access key,
    reused for at most access_key_cache_seconds, and the audit batch)."""
    from encfs.server import postgres

    admin_a, _ = replicas.clients("admin")
    alice_a, alice_b = replicas.clients("alice")
    key = admin_a.create_key()["KeyMetadata"]["KeyId"]
    alias = f"alias/rt-{key[:8]}"
    admin_a.create_alias(AliasName=alias, TargetKeyId=key)
    grant = admin_a.create_grant(KeyId=key, GranteePrincipal=arn("alice"),
                                 Operations=["GenerateDataKey", "Encrypt", "Decrypt"])
    dk = alice_a.generate_data_key(KeyId=alias, KeySpec="AES_256")
    statements: list[str] = []

    def counting(method):
        async def wrapper(self, sql, args):
            if "FROM access_keys" not in sql:
                statements.append(sql)
            return await method(self, sql, args)
        return wrapper

    monkeypatch.setattr(postgres._Tx, "_one", counting(postgres._Tx._one))
    monkeypatch.setattr(postgres._Tx, "_all", counting(postgres._Tx._all))
    for call in (lambda kms: kms.generate_data_key(KeyId=alias, KeySpec="AES_256"),
                 lambda kms: kms.encrypt(KeyId=key, Plaintext=b"x"),
                 lambda kms: kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])):
        for kms in (alice_a, alice_b):
            statements.clear()
            call(kms)
            assert len(statements) == 1, statements
    # Still read afresh: the revoke is enforced by the next request.
    admin_a.revoke_grant(KeyId=key, GrantId=grant["GrantId"])
    with pytest.raises(ClientError, match="AccessDenied"):
        alice_b.decrypt(CiphertextBlob=dk["CiphertextBlob"])


def test_a_replica_with_an_older_config_neither_revokes_nor_resurrects_principals(postgres, tmp_path):
    """Principals live in the database; a replica whose config differs from
    it refuses to start unless told to sync (docs/SERVER.md, "Configuration reference")."""
    import dataclasses

    from encfs.errors import ConfigurationError
    from encfs.server.config import Principal, new_access_key

    url = postgres.createdb("pr_" + uuid.uuid4().hex[:8])
    old = make_config(tmp_path / "a")
    old.storage = {"type": "postgresql", "url": url}
    a = ServerThread(old).start()
    p = {q.name: q for q in old.principals}
    carol = Principal("carol", arn("carol"), *new_access_key(), ("kms:ListKeys",))
    # The new config: carol added, mallory removed, alice loses kms:ListKeys.
    alice = dataclasses.replace(p["alice"], account_actions=())
    new = dataclasses.replace(make_config(tmp_path / "b"), storage=dict(old.storage), master_key=dict(old.master_key),
                              principals=[p["admin"], alice, p["bob"], carol])
    b = None
    try:
        with pytest.raises(ClientError, match="AccessDenied"):  # mallory is known (authenticated) before
            client(a.endpoint, p["mallory"]).list_keys()
        with pytest.raises(ConfigurationError, match="differs from the database") as err:
            ServerThread(new).start()  # not told to sync: refuses, changes nothing
        msg = str(err.value)
        assert p["mallory"].access_key_id in msg and carol.access_key_id in msg and "account_actions" in msg
        assert p["mallory"].secret not in msg and carol.secret not in msg
        with pytest.raises(ClientError, match="UnrecognizedClient"):
            client(a.endpoint, carol).list_keys()
        client(a.endpoint, p["alice"]).list_keys()

        b = ServerThread(dataclasses.replace(new, sync_principals=True)).start()
        # Applied on every replica, A included (its own config is older),
        # within the principal revocation bound: an access key read from the
        # database is reused for at most access_key_cache_seconds (1 s on
        # PostgreSQL; A has just used mallory's and alice's).
        assert a.server.access_key_ttl == b.server.access_key_ttl == 1.0
        client(a.endpoint, carol).list_keys()  # a new principal: at once (unknown keys are never cached)
        time.sleep(a.server.access_key_ttl)
        for endpoint in (a.endpoint, b.endpoint):
            client(endpoint, carol).list_keys()
            for who, code in ((p["mallory"], "UnrecognizedClientException"), (alice, "AccessDeniedException")):
                with pytest.raises(ClientError) as denied:
                    client(endpoint, who).list_keys()
                assert denied.value.response["Error"]["Code"] == code

        # A restarted with its older config: refused; carol keeps working,
        # mallory stays revoked.
        a.stop()
        with pytest.raises(ConfigurationError, match="differs from the database"):
            ServerThread(old).start()
        client(b.endpoint, carol).list_keys()
        with pytest.raises(ClientError, match="UnrecognizedClient"):
            client(b.endpoint, p["mallory"]).list_keys()
        # With the current config it starts (and writes nothing).
        a = ServerThread(dataclasses.replace(new, data_dir=tmp_path / "a", audit_path=tmp_path / "a" / "audit.log"))
        a.start()
        client(a.endpoint, carol).list_keys()

        async def generation():
            st = PostgresStorage(url)
            await st.open()
            try:
                async with st.transaction() as tx:
                    return await tx.get_meta("principals_generation")
            finally:
                await st.close()

        assert run(generation()) == "2"  # the first start, then the one sync
    finally:
        a.stop()
        if b is not None:
            b.stop()


# -- the master key in an HSM ----------------------------------------------------------------

ENCFS = [sys.executable, "-m", "encfs.cli"]


@pytest.fixture(scope="module")
def hsm_env():
    """SoftHSM2's shared token with the variables a server operator sets
    (module, token, PIN: from the environment, never the config)."""
    from _softhsm import softhsm

    h = softhsm()
    mp = pytest.MonkeyPatch()
    for name, value in h.env().items():
        mp.setenv(name, value)
    mp.delenv("ENCFS_PKCS11_PIN_FILE", raising=False)
    yield h
    mp.undo()


def hsm_master(label: str | None = None) -> dict:
    from _softhsm import TOKEN, unique_label

    return {"type": "pkcs11", "key": f"pkcs11://{TOKEN}/{label or unique_label('kms-master')}", "create": True}


@pytest.fixture(scope="module")
def hsm_replicas(tmp_path_factory, postgres, hsm_env):
    r = Replicas(tmp_path_factory.mktemp("hsm"), postgres.createdb("hsm_" + uuid.uuid4().hex[:8]),
                 master=hsm_master())
    yield r
    r.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(endpoint: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(endpoint + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("server did not become healthy")


def write_config(path: Path, *, url: str, master: dict, principals, data_dir: Path, extra: str = "") -> Path:
    """A replica's TOML config: secrets by environment variable name only."""
    lines = [f'[server]\nhost = "127.0.0.1"\nport = 0\ndata_dir = "{data_dir}"\n{extra}',
             f'[storage]\nurl = "{url}"\n',
             "[master_key]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in master.items())]
    for p in principals:
        actions = json.dumps(list(p.account_actions))
        lines.append(f'[[principals]]\nname = "{p.name}"\naccess_key_id = "{p.access_key_id}"\n'
                     f'secret_access_key_env = "HA_SECRET_{p.name.upper()}"\naccount_actions = {actions}\n')
    path.write_text("\n".join(lines))
    return path


def secrets_env(principals) -> dict[str, str]:
    return {f"HA_SECRET_{p.name.upper()}": p.secret for p in principals}


def test_master_key_in_the_hsm_rotates_and_rewraps_without_downtime(hsm_replicas, tmp_path):
    from encfs.server.masterkey_pkcs11 import Pkcs11MasterKey
    from encfs.server.rewrap import rewrap_stored

    r = hsm_replicas
    assert "Pkcs11MasterKey" in repr(r.a.server.master)
    admin_a, admin_b = r.clients("admin")
    keys = [admin_a.create_key()["KeyMetadata"]["KeyId"] for _ in range(4)]
    admin_b.rotate_key_on_demand(KeyId=keys[0])
    made = [(k, admin_b.generate_data_key(KeyId=k, KeySpec="AES_256")) for k in keys]
    stop, errors, calls = threading.Event(), [], [0]

    def load(kms) -> None:  # both replicas keep serving through the rotation and the rewrap
        try:
            while not stop.is_set():
                for k, dk in made:
                    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
                    new = kms.generate_data_key(KeyId=k, KeySpec="AES_256")
                    assert kms.decrypt(CiphertextBlob=new["CiphertextBlob"])["Plaintext"] == new["Plaintext"]
                    calls[0] += 3
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(kms,)) for kms in r.clients("admin")]
    for t in threads:
        t.start()
    try:
        # What `encfs server-master rotate` does, from a third process's view.
        cfg_path = write_config(tmp_path / "kms.toml", url=r.cfg_a.storage["url"], master=r.cfg_a.master_key,
                                principals=r.cfg_a.principals, data_dir=tmp_path)
        env = {**os.environ, **secrets_env(r.cfg_a.principals)}
        master = Pkcs11MasterKey(r.cfg_a.master_key["key"])
        v1 = master.current_version()
        out = subprocess.run([*ENCFS, "server-master", "rotate", "--config", str(cfg_path)], check=False, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert f"current version {v1 + 1}" in out.stdout and "re-wrapped 5 key versions" in out.stdout, out.stdout
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors and calls[0] > 0
    status = subprocess.run([*ENCFS, "server-master", "status", "--config", str(cfg_path)], check=False, env=env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and f"v{v1 + 1}: " in status.stdout and f"v{v1}: " not in status.stdout, \
        status.stdout + status.stderr
    for kms in r.clients("admin"):  # old ciphertexts open after the rewrap, on both replicas
        for k, dk in made:
            assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]

    async def recheck():
        st = PostgresStorage(r.cfg_a.storage["url"])
        await st.open()
        try:
            return await rewrap_stored(st, master, dry_run=True)
        finally:
            await st.close()

    report = run(recheck())
    assert set(report.versions) == {v1 + 1} and report.material_rewrapped == 0


def test_a_database_dump_and_the_config_decrypt_nothing_without_the_hsm(hsm_replicas, postgres, tmp_path):
    """pg_dump, restored elsewhere, served with the same config by someone
    with no access to the HSM (no PIN; or a token of their own with the
    same labels): no key material and no secret comes out."""
    from _postgres import _bindir
    from _softhsm import TOKEN

    from encfs.cli.hsm import init_softhsm

    r = hsm_replicas
    admin_a, _ = r.clients("admin")
    key = admin_a.create_key()["KeyMetadata"]["KeyId"]
    dk = admin_a.generate_data_key(KeyId=key, KeySpec="AES_256")
    dump = subprocess.run([os.path.join(_bindir(), "pg_dump"), "--no-owner", r.cfg_a.storage["url"]],
                          capture_output=True, check=True, timeout=60).stdout
    assert b"key_versions" in dump and b"access_keys" in dump
    for p in r.cfg_a.principals:
        assert p.secret.encode() not in dump
    url = postgres.createdb("stolen_" + uuid.uuid4().hex[:8])
    subprocess.run([os.path.join(_bindir(), "psql"), "-q", "-v", "ON_ERROR_STOP=1", url], input=dump,
                   capture_output=True, check=True, timeout=60)
    cfg_path = write_config(tmp_path / "kms.toml", url=url, master=r.cfg_a.master_key,
                            principals=r.cfg_a.principals, data_dir=tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith("ENCFS_PKCS11_PIN")}
    base.update(secrets_env(r.cfg_a.principals))

    # No PIN: the server does not start, and says why in one line.
    out = subprocess.run([*ENCFS, "server", "--config", str(cfg_path)], check=False, env=base, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "encfs: error:" in out.stderr and "PIN" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr

    # A token of the attacker's own, same token and key labels: it starts
    # when told to sync the principals (the stored secrets do not unseal, so
    # the config's are re-sealed under the attacker's key), but nothing
    # stored opens.
    other = init_softhsm(tmp_path / "other-hsm", token=TOKEN)
    env = {**base, "SOFTHSM2_CONF": str(other.conf), "ENCFS_PKCS11_PIN": other.pin_file.read_text().strip()}
    port = _free_port()
    proc = subprocess.Popen([*ENCFS, "server", "--config", str(cfg_path), "--port", str(port), "--sync-principals"],
                            env=env, stderr=subprocess.PIPE)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        _wait_healthy(endpoint, proc)
        thief = client(endpoint, r.p["admin"])
        assert thief.describe_key(KeyId=key)["KeyMetadata"]["KeyId"] == key  # metadata is not secret
        for call in (lambda: thief.decrypt(CiphertextBlob=dk["CiphertextBlob"]),
                     lambda: thief.generate_data_key(KeyId=key, KeySpec="AES_256")):
            with pytest.raises(ClientError) as err:
                call()
            assert err.value.response["Error"]["Code"] == "KMSInternalException"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- audit across replicas -----------------------------------------------------------------


def test_audit_batches_keep_every_character_of_their_records(postgres):
    """A batch travels as one JSON array literal: quotes, backslashes,
    escapes, non-ASCII and control characters come back byte for byte, and
    the chain verifies."""
    from encfs.audit import canonical
    from encfs.server.audit_pg import DatabaseAuditLog, PostgresAuditSink

    url = postgres.createdb("au_" + uuid.uuid4().hex[:8])
    values = ['"quoted" \\ back\\slash', "caf\u00e9 \U0001f600 \u2028", "nul \x00 tab \t \\u0000", "'; DROP TABLE x; --"]

    async def go():
        st = PostgresStorage(url)
        await st.open()
        sink = PostgresAuditSink(st, replica="r1")
        batches = [[{"action": "A", "v": v, "i": i} for i, v in enumerate(values)], [{"action": "B", "v": values[0]}]]
        for batch in batches:
            await sink.write(batch)
        await st.close()
        return [r for b in batches for r in b]

    written = run(go())
    log = DatabaseAuditLog(url)
    assert [line for _, line in log.lines()] == [canonical(r) for r in written]
    result = log.verify()
    assert result.ok and result.count == 5, result.problems


def test_every_request_on_any_replica_lands_in_one_verified_chain(tmp_path, postgres):
    import psycopg

    url = postgres.createdb("audit_" + uuid.uuid4().hex[:8])
    r = Replicas(tmp_path, url)
    try:
        admin_a, admin_b = r.clients("admin")
        key = admin_a.create_key()["KeyMetadata"]["KeyId"]
        errors: list[BaseException] = []

        def work(kms) -> None:
            try:
                for _ in range(10):
                    dk = kms.generate_data_key(KeyId=key, KeySpec="AES_256")
                    kms.decrypt(CiphertextBlob=dk["CiphertextBlob"])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(kms,))
                   for _ in range(4) for kms in r.clients("admin")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        with pytest.raises(ClientError):
            client(r.b.endpoint, r.p["mallory"]).decrypt(CiphertextBlob=dk_blob(admin_b, key))
        calls = 1 + 8 * 20 + 2  # CreateKey, the workers, GenerateDataKey + a denied Decrypt
        committers = [r.a.server.audit, r.b.server.audit]
        assert sum(c.records for c in committers) == calls
        # Grouped: concurrent requests share a batch (one transaction each).
        assert sum(c.batches for c in committers) < calls
    finally:
        r.stop()
    out = subprocess.run([*ENCFS, "audit", "--log", url, "verify"], check=False, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and f"OK, {calls} records" in out.stdout, out.stdout + out.stderr
    with psycopg.connect(url) as conn:
        rows = [json.loads(rec) for (rec,) in conn.execute("SELECT record FROM audit_log ORDER BY seq")]
    assert len({rec["replica"] for rec in rows}) == 2
    assert len({rec["request_id"] for rec in rows}) == calls  # one record per request
    assert [rec["outcome"] for rec in rows].count("denied") == 1
    shown = subprocess.run([*ENCFS, "audit", "--log", url, "--action", "CreateKey"], check=False,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 1, shown.stderr

    # Tampering: an edited record, then a removed tail.
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE audit_log SET record = replace(record, 'denied', 'success') WHERE seq = %s",
                     (rows[-1]["seq"],))
    out = subprocess.run([*ENCFS, "audit", "--log", url, "verify"], check=False, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "modified" in out.stderr, out.stderr
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM audit_log WHERE seq = %s", (rows[-1]["seq"],))
    out = subprocess.run([*ENCFS, "audit", "--log", url, "verify"], check=False, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "removed from the end" in out.stderr, out.stderr


def dk_blob(kms, key: str) -> bytes:
    return kms.generate_data_key(KeyId=key, KeySpec="AES_256")["CiphertextBlob"]


# -- failures: a replica killed, PostgreSQL restarted --------------------------------------------


class ProcReplicas:
    """Two ``encfs server --config`` processes on one database, master key in the HSM."""

    def __init__(self, tmp_path: Path, url: str, hsm_env) -> None:
        self.cfg = make_config(tmp_path / "cfg", names=("admin", "etl", "mallory"))
        self.p = {p.name: p for p in self.cfg.principals}
        self.env = {**os.environ, **hsm_env.env(), **secrets_env(self.cfg.principals)}
        self.env.pop("ENCFS_PKCS11_PIN_FILE", None)
        self.config = write_config(tmp_path / "kms.toml", url=url, master=hsm_master(), principals=self.cfg.principals,
                                   data_dir=tmp_path / "data", extra="shutdown_timeout = 2\n")
        self.ports = [_free_port(), _free_port()]
        self.procs: list[subprocess.Popen | None] = [None, None]
        for i in range(2):
            self.start(i)

    def endpoint(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    @property
    def endpoints(self) -> list[str]:
        return [self.endpoint(0), self.endpoint(1)]

    def start(self, i: int) -> None:
        self.procs[i] = subprocess.Popen([*ENCFS, "server", "--config", str(self.config), "--port",
                                          str(self.ports[i])], env=self.env, stderr=subprocess.PIPE)
        _wait_healthy(self.endpoint(i), self.procs[i])

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def proc_replicas(tmp_path_factory, postgres, hsm_env):
    r = ProcReplicas(tmp_path_factory.mktemp("proc"), postgres.createdb("proc_" + uuid.uuid4().hex[:8]), hsm_env)
    yield r
    r.stop()


def test_a_replica_killed_while_encfs_writes_and_reads_s3_loses_no_object(proc_replicas, moto_server, s3, tmp_path,
                                                                          monkeypatch):
    """No load balancer: the aws-kms provider lists both replicas
    (``endpoint_url=[A, B]``) and moves to the next one when a call cannot
    reach the first.  A is SIGKILLed mid-run; every object is written and
    reads back."""
    from encfs import EncryptedFileSystem

    r = proc_replicas
    admin = client(r.endpoint(0), r.p["admin"])
    pol = {"Statement": [
        {"Effect": "Allow", "Principal": {"AWS": arn("admin")}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": arn("etl")},
         "Action": ["kms:GenerateDataKey", "kms:Decrypt", "kms:DescribeKey"], "Resource": "*"}]}
    key = admin.create_key(Policy=json.dumps(pol))["KeyMetadata"]["KeyId"]
    admin.create_alias(AliasName="alias/ha-lake", TargetKeyId=key)
    creds = tmp_path / "credentials"
    creds.write_text(f"[etl]\naws_access_key_id = {r.p['etl'].access_key_id}\n"
                     f"aws_secret_access_key = {r.p['etl'].secret}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))

    def efs() -> EncryptedFileSystem:
        # cache=False: every object asks the key server (GenerateDataKey, Decrypt).
        return EncryptedFileSystem(
            target_protocol="s3", target_options=moto_server.target_options(skip_instance_cache=True),
            key="aws-kms://alias/ha-lake", skip_instance_cache=True, cache=False,
            providers={"aws-kms": {"endpoint_url": r.endpoints, "region_name": "us-east-1",
                                   "profile_name": "etl", "max_attempts": 6, "connect_timeout": 2}})

    writer, reader = efs(), efs()
    written: list[tuple[str, bytes]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    killed = threading.Event()

    def write() -> None:
        for i in range(60):
            path, data = f"{s3.test_bucket}/t/part-{i:03d}.bin", os.urandom(2048) + str(i).encode()
            try:
                writer.pipe_file(path, data)
            except BaseException as exc:  # noqa: BLE001 - a failed object
                failures.append(exc)
                continue
            with lock:
                written.append((path, data))
            if i == 15:
                killed.wait(30)

    def read() -> None:
        n = 0
        while n < 60 and not failures:
            with lock:
                todo = written[n:]
            if not todo:
                time.sleep(0.01)
                continue
            for path, data in todo:
                try:
                    assert reader.cat_file(path) == data
                except BaseException as exc:  # noqa: BLE001 - a failed object
                    failures.append(exc)
                n += 1

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(written) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    r.kill(0)  # mid-run, with requests in flight on A
    killed.set()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures[:3]
    assert len(written) == 60
    fresh = efs()  # a new client, A still dead: straight through to B
    for path, data in written:
        assert fresh.cat_file(path) == data
    r.start(0)  # back again


def test_postgresql_restarted_under_load_loses_no_acknowledged_change(proc_replicas, postgres):
    """Clients alternate replicas creating aliases (one committed change
    each) while PostgreSQL is stopped like a crash (``-m immediate``) and
    started again.  Every alias whose CreateAlias was acknowledged exists
    afterwards, on both replicas; errors meanwhile are retryable ones."""
    from botocore.config import Config

    r = proc_replicas
    admin = client(r.endpoint(0), r.p["admin"])
    key = admin.create_key()["KeyMetadata"]["KeyId"]
    acked: set[str] = set()
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def load(n: int) -> None:
        import boto3

        kms = [boto3.client("kms", endpoint_url=e, region_name="us-east-1",
                            aws_access_key_id=r.p["admin"].access_key_id,
                            aws_secret_access_key=r.p["admin"].secret,
                            config=Config(retries={"mode": "standard", "total_max_attempts": 8}))
               for e in r.endpoints]
        i = 0
        while not stop.is_set():
            name = f"alias/restart-{n}-{i}"
            for attempt in range(20):  # the client's own retry loop, over both endpoints
                try:
                    kms[(i + attempt) % 2].create_alias(AliasName=name, TargetKeyId=key)
                except ClientError as exc:
                    code = exc.response["Error"]["Code"]
                    if code == "AlreadyExistsException":
                        # An earlier attempt (ours or botocore's) committed, its
                        # answer lost with the connection: the change is there.
                        break
                    with lock:
                        errors.append(code)
                    time.sleep(0.2)
                    continue
                except Exception as exc:  # noqa: BLE001 - connection errors: retried
                    with lock:
                        errors.append(type(exc).__name__)
                    time.sleep(0.2)
                    continue
                break
            else:
                continue
            with lock:
                acked.add(name)
            i += 1

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before = len(acked)
    postgres.stop_server("immediate")
    time.sleep(1.0)
    postgres.start_server()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert before > 0 and len(acked) > before  # the load ran before and after the restart
    assert set(errors) <= {"DependencyTimeoutException", "KMSInternalException"}, set(errors)
    for endpoint in r.endpoints:
        kms = client(endpoint, r.p["admin"])
        names, marker = set(), None
        while True:
            page = kms.list_aliases(KeyId=key, **({"Marker": marker} if marker else {}))
            names |= {a["AliasName"] for a in page["Aliases"]}
            if not page.get("Truncated"):
                break
            marker = page["NextMarker"]
        assert acked <= names, sorted(acked - names)[:5]
    out = subprocess.run([*ENCFS, "audit", "--log", r.cfg.storage.get("url") or proc_url(r), "verify"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def proc_url(r: ProcReplicas) -> str:
    text = r.config.read_text()
    return text.split('url = "', 1)[1].split('"', 1)[0]


def test_aws_kms_provider_moves_to_the_next_endpoint(moto_server):
    """How encfs fails over without a load balancer: ``endpoint_url=[A, B]``."""
    from encfs.errors import ConfigurationError
    from encfs.providers.aws_kms import AwsKmsProvider
    from encfs.providers.base import KeyRef

    key = moto_server.boto3("kms").create_key()["KeyMetadata"]["Arn"]
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    sleeps: list[float] = []
    provider = AwsKmsProvider(region_name="us-east-1", endpoint_url=[dead, moto_server.endpoint],
                              sleep=sleeps.append, connect_timeout=2)
    dek, entry = provider.generate_data_key(KeyRef("aws-kms", key), {"a": "1"})
    assert provider.unwrap(entry, {"a": "1"}) == dek
    assert len(sleeps) == 1  # one failed attempt, then every call on the live endpoint
    assert "endpoint_url=" in repr(provider)
    with pytest.raises(ConfigurationError):
        AwsKmsProvider(endpoint_url=["http://a", ""])
