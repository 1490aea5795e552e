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
import threading
import time
import uuid

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

    def __init__(self, tmp_path, url: str) -> None:
        self.cfg_a = make_config(tmp_path / "a")
        self.cfg_a.storage = {"type": "postgresql", "url": url}
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
