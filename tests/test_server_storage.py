"""The key server's two seams on their own: SQLite storage (migrations,
transactions, durability across reopen) and the local-keystore master key."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from encfs.server.masterkey import LocalKeystoreMasterKey, MasterKeyError, material_aad, secret_aad
from encfs.server.sqlite import MIGRATIONS, SQLiteStorage
from encfs.server.storage import AccessKey, AlreadyExists, GrantRecord, KeyRecord, KeyVersion, StorageError


def run(coro):
    return asyncio.run(coro)


def _key(key_id: str = "k1") -> KeyRecord:
    return KeyRecord(key_id=key_id, arn=f"arn:aws:kms:us-east-1:111122223333:key/{key_id}", created=time.time(),
                     policy="{}", creator="arn:aws:iam::111122223333:user/a")


def test_migrations_and_reopen_keep_everything(tmp_path):
    path = tmp_path / "kms.db"

    async def write():
        st = SQLiteStorage(path)
        await st.open()
        assert await st.schema_version() == len(MIGRATIONS)
        async with st.transaction(write=True) as tx:
            await tx.insert_key(_key())
            await tx.insert_version(KeyVersion("k1", 1, 0.0, "INITIAL", b"wrapped", "m"))
            await tx.insert_grant(GrantRecord("g1", "k1", "arn:b", ["Decrypt"], 0.0, "111122223333", "arn:a",
                                              constraints={"EncryptionContextEquals": {"a": "1"}}))
        await st.close()

    async def read():
        st = SQLiteStorage(path)
        await st.open()
        async with st.transaction() as tx:
            assert (await tx.get_key("k1")).creator.endswith("user/a")
            assert (await tx.get_version("k1", 1)).wrapped == b"wrapped"
            grants = await tx.grants_for("k1", "arn:b")
            assert grants[0].constraints == {"EncryptionContextEquals": {"a": "1"}}
            await tx.destroy_key("k1")
        async with st.transaction() as tx:
            assert await tx.get_key("k1") is None and await tx.list_versions("k1") == []
            assert await tx.get_grant("g1") is None
        await st.close()

    run(write())
    run(read())
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failed_transaction_leaves_nothing(tmp_path):
    async def go():
        st = SQLiteStorage(tmp_path / "kms.db")
        await st.open()
        with pytest.raises(AlreadyExists):
            async with st.transaction(write=True) as tx:
                await tx.insert_key(_key("k2"))
                await tx.insert_key(_key("k2"))
        async with st.transaction() as tx:
            assert await tx.get_key("k2") is None
        await st.close()

    run(go())


def test_second_server_on_one_file_is_refused(tmp_path):
    async def go():
        a = SQLiteStorage(tmp_path / "kms.db")
        await a.open()
        with pytest.raises(StorageError, match="in use"):
            await SQLiteStorage(tmp_path / "kms.db").open()
        await a.close()

    run(go())


def test_newer_schema_is_refused(tmp_path):
    async def go():
        st = SQLiteStorage(tmp_path / "kms.db")
        await st.open()
        async with st.transaction(write=True) as tx:
            await tx.set_meta("schema_version", "99")
        await st.close()
        with pytest.raises(StorageError, match="schema version 99"):
            await SQLiteStorage(tmp_path / "kms.db").open()

    run(go())


def test_storage_holds_no_clear_secret(tmp_path, encfs_home):
    mk = LocalKeystoreMasterKey(encfs_home, create=True)
    secret = b"s3cr3t-access-key-0123456789abcdefghijkl"
    sealed = mk.wrap(secret, secret_aad("AKIA1"))

    async def go():
        st = SQLiteStorage(tmp_path / "kms.db")
        await st.open()
        async with st.transaction(write=True) as tx:
            await tx.put_access_key(AccessKey("AKIA1", "arn:aws:iam::111122223333:user/a", sealed, mk.key_id))
        await st.close()

    run(go())
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("kms.db*"))
    assert b"AKIA1" in stored and secret not in stored


def test_master_key_binds_what_it_wraps(encfs_home):
    mk = LocalKeystoreMasterKey(encfs_home, create=True)
    blob = mk.wrap(b"k" * 32, material_aad("key1", 1))
    assert mk.unwrap(blob, material_aad("key1", 1)) == b"k" * 32
    with pytest.raises(MasterKeyError):
        mk.unwrap(blob, material_aad("key1", 2))  # moved to another row
    with pytest.raises(MasterKeyError):
        mk.unwrap(blob[:-1] + bytes([blob[-1] ^ 1]), material_aad("key1", 1))
    # The same keystore opens it again (another process); rotation keeps it readable.
    again = LocalKeystoreMasterKey(encfs_home)
    again._provider.keystore.rotate(again._ref.name)
    assert again.unwrap(blob, material_aad("key1", 1)) == b"k" * 32
    assert "k" * 8 not in repr(mk)


def test_another_keystore_opens_nothing(tmp_path, encfs_home):
    blob = LocalKeystoreMasterKey(encfs_home, create=True).wrap(b"x" * 32, b"aad")
    other = LocalKeystoreMasterKey(tmp_path / "other", create=True)
    with pytest.raises(MasterKeyError):
        other.unwrap(blob, b"aad")


@pytest.mark.parametrize("sync", ["request", "interval"])
def test_group_commit_batches_and_keeps_the_chain(tmp_path, sync):
    from encfs.audit import AuditLog
    from encfs.server.audit import FileAuditSink, GroupCommitter

    async def go():
        sink = FileAuditSink(tmp_path / "audit.log", sync=sync, interval=0.01)
        committer = GroupCommitter(sink)
        await asyncio.gather(*(committer.submit({"time": "t", "principal": "p", "action": "A", "outcome": "success",
                                                 "n": i}) for i in range(200)))
        assert committer.records == 200 and committer.batches < 50  # grouped, not one write per record
        await sink.close()

    run(go())
    log = AuditLog(tmp_path / "audit.log")
    assert log.verify().ok and [r["n"] for r in log.records()] == list(range(200))


def test_a_failed_audit_write_fails_every_waiting_request():
    from encfs.server.audit import AuditSink, GroupCommitter

    class Broken(AuditSink):
        async def write(self, records):
            raise OSError("disk full")

    async def go():
        committer = GroupCommitter(Broken())
        results = await asyncio.gather(*(committer.submit({"n": i}) for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, OSError) for r in results)

    run(go())
