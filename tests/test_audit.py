"""The audit trail: what is recorded for key use and administration, that
it never holds key material, that the hash chain catches edited, removed,
inserted and reordered records, and that concurrent writers (threads and
processes) never tear or fork the chain."""

from __future__ import annotations

import base64
import itertools
import json
import multiprocessing
import os
import threading
from datetime import datetime, timedelta, timezone

import pytest

from encfs import EncryptedFileSystem
from encfs.audit import (
    GENESIS,
    AuditedProvider,
    AuditLog,
    audited,
    get_log,
    log_path,
    parse_when,
    principal,
    record_hash,
)
from encfs.cli.main import main
from encfs.errors import ConfigurationError, KeyStateError
from encfs.keystore.store import LocalKeystore
from encfs.providers.base import KeyRef
from encfs.providers.local import LocalProvider


def _records(home) -> list[dict]:
    return [json.loads(line) for line in (home / "audit.log").read_text().splitlines()]


def _efs(memfs, home, **kw):
    return EncryptedFileSystem(fs=memfs, keystore=str(home), cache=False, skip_instance_cache=True, **kw)


def test_key_use_through_the_filesystem_is_recorded(memfs, encfs_home, monkeypatch):
    monkeypatch.setenv("ENCFS_PRINCIPAL", "etl@batch-7")
    fs = _efs(memfs, encfs_home, context={"dataset": "sales"})
    fs.pipe_file("/sales/a.csv", b"x,y\n")
    assert fs.cat_file("/sales/a.csv") == b"x,y\n"
    recs = _records(encfs_home)
    actions = [r["action"] for r in recs]
    assert actions == ["create-key", "generate", "unwrap"]
    kid = LocalKeystore(encfs_home).resolve("default")
    gen, unwrap = recs[1], recs[2]
    for r in (gen, unwrap):
        assert r["principal"] == "etl@batch-7" and r["outcome"] == "success" and r["error"] is None
        assert r["key"] == f"local://{kid}" and r["version"] == "1"
        assert r["context"] == {"dataset": "sales"}
        datetime.fromisoformat(r["time"])
    assert gen["ref"] == "local://default"
    assert recs[0]["automatic"] is True and recs[0]["alias"] == "default"
    assert get_log(encfs_home).verify().ok
    assert (encfs_home / "audit.log").stat().st_mode & 0o777 == 0o600


def test_default_principal_is_user_at_host(monkeypatch):
    import socket

    monkeypatch.delenv("ENCFS_PRINCIPAL", raising=False)
    user, _, host = principal().partition("@")
    assert user and host == socket.gethostname()


def test_failures_are_recorded_with_the_error(memfs, encfs_home):
    fs = _efs(memfs, encfs_home)
    fs.pipe_file("/a", b"1")
    ks = LocalKeystore(encfs_home)
    kid = ks.resolve("default")
    ks.disable(kid)
    with pytest.raises(KeyStateError):
        _efs(memfs, encfs_home).cat_file("/a")
    last = _records(encfs_home)[-1]
    assert last["action"] == "unwrap" and last["outcome"] == "failure"
    assert last["error"].startswith("KeyStateError: ") and kid in last["error"] and "Disabled" in last["error"]


def test_no_key_material_in_the_log(memfs, encfs_home):
    fs = _efs(memfs, encfs_home)
    for i in range(3):
        fs.pipe_file(f"/o{i}", b"z" * 100)
        fs.cat_file(f"/o{i}")
    ks = LocalKeystore(encfs_home)
    kid = ks.resolve("default")
    ks.rotate(kid)
    log = (encfs_home / "audit.log").read_bytes()
    material = ks._material(kid, 1, for_wrap=False)[1]
    secrets = [material, ks._material(kid, 2, for_wrap=False)[1]]
    for i in range(3):
        secrets += [w.wrapped for w in fs.header(f"/o{i}").wrapped_keys]
    for s in secrets:
        for form in (s, s.hex().encode(), base64.b64encode(s), base64.b64encode(s)[:20]):
            assert form not in log


def test_admin_actions_recorded_through_the_proxy(encfs_home):
    p = audited(LocalProvider(encfs_home))
    assert isinstance(p, AuditedProvider) and audited(p) is p
    info = p.create_key(alias="lake", description="d", tags={"secret-project": "apollo"})
    ref = KeyRef("local", "lake")
    p.disable_key(ref)
    with pytest.raises(KeyStateError):
        p.rotate_key(ref)
    p.enable_key(ref)
    p.rotate_key(ref)
    p.create_alias("lake2", ref)
    p.tag_key(ref, {"a": "b"})
    p.schedule_deletion(ref, 7)
    p.cancel_deletion(ref)
    recs = _records(encfs_home)
    assert [r["action"] for r in recs] == [
        "create-key", "disable-key", "rotate-key", "enable-key", "rotate-key", "create-alias", "tag-key",
        "schedule-deletion", "cancel-deletion"]
    assert all(r["key"] == info.uri for r in recs)
    assert recs[0]["tags"] == ["secret-project"] and "apollo" not in json.dumps(recs)  # tag names only
    assert recs[2]["outcome"] == "failure" and "Disabled" in recs[2]["error"]
    assert recs[4]["version"] == "2" and recs[7]["days"] == 7 and recs[5]["alias"] == "lake2"


# -- the chain ------------------------------------------------------------------------
@pytest.fixture
def log(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    for i in range(5):
        log.append("wrap", key=f"local://k{i}", version="1", context={"i": str(i)})
    return log


def test_chain_links(log):
    recs = list(log.records())
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0]["prev"] == GENESIS
    for a, b in itertools.pairwise(recs):
        assert b["prev"] == a["hash"] == record_hash(a)
    result = log.verify()
    assert result.ok and result.count == 5 and result.head == recs[-1]["hash"]


def _rewrite(log: AuditLog, lines: list[bytes]) -> None:
    log.path.write_bytes(b"".join(line + b"\n" for line in lines))


def test_edited_record_detected(log):
    lines = log.path.read_bytes().splitlines()
    lines[2] = lines[2].replace(b'"outcome":"success"', b'"outcome":"failure"')
    _rewrite(log, lines)
    result = log.verify()
    assert not result.ok and any("line 3" in p and "modified" in p for p in result.problems)


def test_edited_last_record_detected(log):
    lines = log.path.read_bytes().splitlines()
    lines[-1] = lines[-1].replace(b"local://k4", b"local://kX")
    _rewrite(log, lines)
    assert not log.verify().ok


def test_edit_with_recomputed_own_hash_still_breaks_the_next_link(log):
    lines = log.path.read_bytes().splitlines()
    rec = json.loads(lines[1])
    rec["principal"] = "someone-else"
    rec["hash"] = record_hash(rec)
    lines[1] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
    _rewrite(log, lines)
    result = log.verify()
    assert not result.ok and any("line 3" in p and "chain broken" in p for p in result.problems)


def test_removed_record_detected(log):
    lines = log.path.read_bytes().splitlines()
    del lines[1]
    _rewrite(log, lines)
    result = log.verify()
    assert not result.ok and any("removed" in p for p in result.problems)


def test_reordered_records_detected(log):
    lines = log.path.read_bytes().splitlines()
    lines[1], lines[3] = lines[3], lines[1]
    _rewrite(log, lines)
    assert not log.verify().ok


def test_garbage_line_detected(log):
    with open(log.path, "ab") as f:
        f.write(b"not json\n")
    result = log.verify()
    assert not result.ok and "line 6: not a valid audit record" in result.problems


def test_torn_tail_does_not_glue_the_next_record(log):
    with open(log.path, "ab") as f:
        f.write(b'{"action":"wr')  # a crash mid-append
    fresh = AuditLog(log.path)
    rec = fresh.append("unwrap", key="local://k")
    assert rec["seq"] == 6  # chained to the last complete record
    lines = log.path.read_bytes().splitlines()
    assert json.loads(lines[-1])["seq"] == 6 and lines[-2] == b'{"action":"wr'
    result = fresh.verify()
    assert result.problems == ["line 6: not a valid audit record"]


def test_another_writer_between_appends_is_seen(tmp_path):
    a, b = AuditLog(tmp_path / "l"), AuditLog(tmp_path / "l")
    a.append("x")
    b.append("y")
    a.append("z")  # a's cached tail is stale: it must re-read
    assert AuditLog(tmp_path / "l").verify().ok


# -- concurrency -------------------------------------------------------------------------------
def _append_many(path: str, n: int, start) -> None:
    start.wait()
    log = AuditLog(path)
    for i in range(n):
        log.append("wrap", key="local://k", version=str(i))


def test_concurrent_threads_and_processes(tmp_path):
    path = tmp_path / "audit.log"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_append_many, args=(str(path), 40, start)) for _ in range(2)]
    for p in procs:
        p.start()
    shared = AuditLog(path)
    threads = [threading.Thread(target=lambda: [shared.append("unwrap", key="local://t") for _ in range(25)])
               for _ in range(4)]
    start.set()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    result = AuditLog(path).verify()
    assert result.ok, result.problems[:3]
    assert result.count == 2 * 40 + 4 * 25


# -- configuration, queries ---------------------------------------------------------------------
def test_location_and_off_switch(monkeypatch, tmp_path, encfs_home):
    assert log_path() == encfs_home / "audit.log"
    monkeypatch.setenv("ENCFS_AUDIT_LOG", str(tmp_path / "elsewhere.log"))
    assert log_path() == tmp_path / "elsewhere.log"
    monkeypatch.setenv("ENCFS_AUDIT_LOG", "off")
    assert get_log() is None
    p = LocalProvider(encfs_home)
    assert audited(p) is p


def test_query_filters(tmp_path, monkeypatch):
    log = AuditLog(tmp_path / "a.log")
    monkeypatch.setenv("ENCFS_PRINCIPAL", "alice@h")
    log.append("wrap", key="local://lk-1", ref="local://lake")
    monkeypatch.setenv("ENCFS_PRINCIPAL", "bob@h")
    log.append("unwrap", key="local://lk-2")
    log.append("disable-key", key="aws-kms://arn:aws:kms:us-east-1:1:key/abc", ref="aws-kms://alias/lake")
    assert [r["action"] for r in log.query(principal="alice@h")] == ["wrap"]
    assert [r["action"] for r in log.query(key="lk-2")] == ["unwrap"]
    assert [r["action"] for r in log.query(key="lake")] == ["wrap"]  # bare: a local alias or id
    assert [r["action"] for r in log.query(key="alias/lake")] == ["wrap"]
    assert [r["action"] for r in log.query(key=["lk-2", "lk-1"])] == ["wrap", "unwrap"]
    assert [r["action"] for r in log.query(key="aws-kms://alias/lake")] == ["disable-key"]
    assert [r["action"] for r in log.query(action="unwrap")] == ["unwrap"]
    now = datetime.now(timezone.utc)
    assert len(list(log.query(since=now - timedelta(minutes=5)))) == 3
    assert list(log.query(until=now - timedelta(minutes=5))) == []
    assert list(log.query(since=now + timedelta(minutes=5))) == []


def test_parse_when():
    now = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
    assert parse_when("2d", now=lambda: now) == datetime(2026, 11, 28, 12, tzinfo=timezone.utc)
    assert parse_when("2026-11-01") == datetime(2026, 11, 1, tzinfo=timezone.utc)
    with pytest.raises(ConfigurationError):
        parse_when("yesterday")


# -- CLI ---------------------------------------------------------------------------------------
def _run(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_audit_filters_and_verify(memfs, encfs_home, capsys):
    fs = _efs(memfs, encfs_home)
    fs.pipe_file("/a", b"1")
    fs.cat_file("/a")
    code, out, _ = _run(["audit", "--action", "unwrap"], capsys)
    assert code == 0 and out.count("\n") == 1 and " unwrap " in out and "success" in out
    code, out, _ = _run(["audit", "--json", "--key", "default", "--since", "1h"], capsys)
    # "default" is an alias: the records carrying only the key id match too.
    assert code == 0 and [json.loads(x)["action"] for x in out.splitlines()] == ["create-key", "generate", "unwrap"]
    code, out, _ = _run(["audit", "--key", "default", "--action", "rotate-key"], capsys)
    assert code == 0 and out == ""  # known key, known action, no such record: an empty answer
    code, out, _ = _run(["audit", "verify"], capsys)
    assert code == 0 and "OK, 3 records" in out
    lines = (encfs_home / "audit.log").read_bytes().splitlines()
    (encfs_home / "audit.log").write_bytes(lines[0] + b"\n" + lines[2] + b"\n")
    code, out, err = _run(["audit", "verify"], capsys)
    assert code == 1 and "chain broken" in err and "failed verification" in err
    code, _, err = _run(["audit", "--since", "someday"], capsys)
    assert code == 1 and err.startswith("encfs: error: invalid time")


def test_cli_audit_rejects_unknown_filter_values(memfs, encfs_home, capsys):
    fs = _efs(memfs, encfs_home)
    fs.pipe_file("/a", b"1")
    fs.cat_file("/a")
    cases = {
        ("--action", "unwarp"): "unknown audit action 'unwarp' (did you mean 'unwrap'",
        ("--action", "frobnicate"): "unknown audit action 'frobnicate'; actions: ",
        ("--principal", "nobody@nowhere"): "no audit record by principal 'nobody@nowhere'",
        ("--key", "local://no-such-key"): "no audit record names key 'local://no-such-key'",
        ("--key", "aws-kms://alias/typo"): "no audit record names key 'aws-kms://alias/typo'",
        ("--since", "1h", "--until", "2h"): "is not before --until",
    }
    for args, message in cases.items():
        code, out, err = _run(["audit", *args], capsys)
        assert code == 1 and out == "", (args, out, err)
        assert err.startswith("encfs: error: ") and message in err and err.count("\n") == 1, (args, err)
    # Known values with no matching record are an empty answer, not an error:
    # an action encfs records but nobody performed yet, a key of the local
    # keystore (by id) that this log never saw, a filter combination.
    key_id = LocalKeystore(encfs_home).create_key(description="unused")
    (encfs_home / "audit.log").write_bytes(b"")  # as after rotating the log
    for args in (["--action", "disable-key"], ["--key", key_id], ["--key", f"local://{key_id}"]):
        code, out, err = _run(["audit", *args], capsys)
        assert (code, out, err) == (0, "", ""), (args, err)
    # Actions recorded by others (the key server) are accepted from the log itself.
    get_log(encfs_home).append("Decrypt", key="arn:aws:kms:x")
    code, out, _ = _run(["audit", "--action", "Decrypt"], capsys)
    assert code == 0 and " Decrypt " in out


def test_forked_child_can_append_while_a_parent_thread_holds_the_lock(tmp_path):
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    log = get_log(tmp_path)
    log.append("wrap")
    with log._lock:  # as if another parent thread were mid-append at fork time
        pid = os.fork()
        if pid == 0:  # child: must not deadlock on the inherited lock
            try:
                log.append("unwrap")
            finally:
                os._exit(0)
    import time

    deadline = time.monotonic() + 60  # a deadlocked child must fail the test, not hang it
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("forked child deadlocked on the audit log lock")
    assert done[1] == 0
    result = AuditLog(log.path).verify()
    assert result.ok and result.count == 2
