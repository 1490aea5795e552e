"""Key lifecycle of the local keystore with a controllable clock: states and
every forbidden transition, scheduled deletion, managed keys, metadata,
rotation (on demand and automatic), durability (processes racing, a
corrupted file, backup recovery) and sealed export/import."""

from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from encfs import EncryptedFileSystem
from encfs.errors import ConfigurationError, KeyNotFoundError, KeyStateError, KeystoreError
from encfs.keystore.store import DAY, LocalKeystore, _ts
from encfs.keystore.transfer import open_bundle, seal_bundle
from encfs.providers.base import KeyRef
from encfs.providers.local import LocalProvider

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, days: float) -> None:
        self.t += days * DAY


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ks(encfs_home, clock):
    return LocalKeystore(encfs_home, clock=clock)


@pytest.fixture
def prov(ks):
    return LocalProvider(keystore=ks)


def _efs(memfs, home, key="local://default"):
    # cache=False: these tests are about the key service's answers, not the cache's.
    return EncryptedFileSystem(fs=memfs, keystore=str(home), key=key, cache=False, skip_instance_cache=True)


def _wrap_unwrap(prov: LocalProvider, name: str) -> bytes:
    dek = os.urandom(32)
    w = prov.wrap(KeyRef("local", name), dek, {"k": "v"})
    return prov.unwrap(w, {"k": "v"})


# -- states ------------------------------------------------------------------------
def test_enabled_disabled_enabled(ks, prov):
    kid = ks.create_key(alias="lake")
    w = prov.wrap(KeyRef("local", "lake"), b"\x01" * 32, {})
    ks.disable(kid)
    assert ks.record(kid)["state"] == "Disabled"
    with pytest.raises(KeyStateError) as e:
        prov.wrap(KeyRef("local", "lake"), b"\x01" * 32, {})
    assert kid in str(e.value) and "Disabled" in str(e.value) and e.value.key == f"local://{kid}"
    with pytest.raises(KeyStateError, match=f"{kid} is Disabled: cannot unwrap"):
        prov.unwrap(w, {})
    ks.disable(kid)  # idempotent, as KMS's DisableKey
    ks.enable(kid)
    assert prov.unwrap(w, {}) == b"\x01" * 32
    ks.enable(kid)  # idempotent


def test_pending_deletion_refuses_everything_then_cancel_gives_disabled(ks, prov, clock):
    kid = ks.create_key(alias="lake")
    w = prov.wrap(KeyRef("local", "lake"), b"\x02" * 32, {})
    date = ks.schedule_deletion(kid, 7)
    assert date == "2027-01-22T08:00:00+00:00"  # T0 + 7 days, from the injected clock
    rec = ks.record(kid)
    assert rec["state"] == "PendingDeletion" and rec["deletion_date"] == date
    with pytest.raises(KeyStateError, match="PendingDeletion"):
        prov.unwrap(w, {})
    with pytest.raises(KeyStateError, match="PendingDeletion"):
        prov.wrap(KeyRef("local", kid), b"\x02" * 32, {})
    # Forbidden transitions out of PendingDeletion.
    for op in (ks.enable, ks.disable, ks.rotate, lambda k: ks.schedule_deletion(k, 10),
               lambda k: ks.tag(k, {"a": "b"}), lambda k: ks.untag(k, ["a"]),
               lambda k: ks.enable_rotation(k, 365), lambda k: ks.set_description(k, "x"),
               lambda k: ks.create_alias("other", k)):
        with pytest.raises(KeyStateError, match=f"{kid} is PendingDeletion"):
            op(kid)
    ks.cancel_deletion(kid)
    rec = ks.record(kid)
    assert rec["state"] == "Disabled" and "deletion_date" not in rec
    clock.advance(30)  # the cancelled date passes: nothing happens
    assert ks.record(kid)["state"] == "Disabled"
    ks.enable(kid)
    assert prov.unwrap(w, {}) == b"\x02" * 32


@pytest.mark.parametrize("state", ["Enabled", "Disabled"])
def test_cancel_without_scheduled_deletion_is_forbidden(ks, state):
    kid = ks.create_key()
    if state == "Disabled":
        ks.disable(kid)
    with pytest.raises(KeyStateError, match=f"{kid} is {state}: cannot cancel deletion"):
        ks.cancel_deletion(kid)
    assert ks.record(kid)["state"] == state


def test_rotate_disabled_key_is_forbidden(ks):
    kid = ks.create_key()
    ks.disable(kid)
    with pytest.raises(KeyStateError, match="Disabled: cannot rotate"):
        ks.rotate(kid)
    assert ks.record(kid)["current_version"] == 1


@pytest.mark.parametrize("days", [0, 6, 31, 365, "7"])
def test_deletion_window_bounds(ks, days):
    kid = ks.create_key()
    with pytest.raises(ConfigurationError, match="7..30"):
        ks.schedule_deletion(kid, days)
    assert ks.record(kid)["state"] == "Enabled"


def test_set_state_cannot_jump_to_pending_deletion(ks):
    kid = ks.create_key()
    with pytest.raises(ConfigurationError):
        ks.set_state(kid, "PendingDeletion")


def test_deletion_only_after_waiting_period_removes_all_versions(ks, prov, clock, encfs_home):
    kid = ks.create_key(alias="old")
    ks.rotate(kid)
    ks.rotate(kid)
    ks.schedule_deletion(kid)  # default 30 days
    clock.advance(30)
    clock.t -= 1
    assert ks.record(kid)["state"] == "PendingDeletion"  # one second before: still there
    clock.t += 1
    with pytest.raises(KeyNotFoundError, match=f"{kid} was deleted on 2027-02-14"):
        ks.record(kid)
    assert "old" not in ks.aliases()
    doc = json.loads((encfs_home / "keystore.json").read_text())
    assert kid not in doc["keys"] and kid not in json.dumps(doc["aliases"])
    bak = json.loads((encfs_home / "keystore.json.bak").read_text())
    assert kid not in bak["keys"]  # the backup does not resurrect it either
    with pytest.raises(KeyNotFoundError):
        prov.describe(KeyRef("local", kid))
    with pytest.raises(KeyNotFoundError):
        ks.enable(kid)
    with pytest.raises(KeyNotFoundError):
        ks.cancel_deletion(kid)
    with pytest.raises(KeyNotFoundError):
        prov.resolve(KeyRef("local", "old"))


def test_deleted_key_makes_objects_unreadable_and_disabled_key_errors_name_it(memfs, encfs_home, clock):
    admin = LocalKeystore(encfs_home, clock=clock)
    kid = admin.create_key(alias="lake")
    fs = _efs(memfs, encfs_home, "local://lake")
    fs.pipe_file("/d/a", b"payload")
    admin.disable(kid)
    with pytest.raises(KeyStateError, match=f"{kid} is Disabled"):
        _efs(memfs, encfs_home, "local://lake").cat_file("/d/a")
    admin.schedule_deletion(kid, 7)
    clock.advance(7)
    admin.list_ids()  # any use of the keystore applies the due deletion
    with pytest.raises(KeyNotFoundError, match="deleted"):
        _efs(memfs, encfs_home, "local://default").cat_file("/d/a")


# -- managed keys -------------------------------------------------------------------------
def test_managed_key_created_on_first_write_and_rotated_automatically(memfs, encfs_home, clock):
    fs = _efs(memfs, encfs_home, "local://alias/encfs/sales")
    fs.pipe_file("/sales/2026.csv", b"a,b\n1,2\n")
    admin = LocalKeystore(encfs_home, clock=clock)
    kid = admin.resolve("alias/encfs/sales")
    rec = admin.record(kid)
    assert rec["kind"] == "encfs" and rec["rotation"]["enabled"] and rec["rotation"]["period_days"] == 365
    assert admin.aliases_of(kid) == ["encfs/sales"]
    assert LocalKeystore(encfs_home).managed_key("sales") == kid  # same key, not a second one
    # A year later any use of the keystore rotates it; old objects still read.
    clock.t = _ts(rec["rotation"]["next"])
    assert admin.record(kid)["current_version"] == 2
    fs2 = _efs(memfs, encfs_home, "local://alias/encfs/sales")
    assert fs2.cat_file("/sales/2026.csv") == b"a,b\n1,2\n"
    fs2.pipe_file("/sales/2027.csv", b"x")
    assert fs2.header("/sales/2027.csv").wrapped_keys[0].version == "2"
    assert fs2.header("/sales/2026.csv").wrapped_keys[0].version == "1"


def test_managed_keys_are_protected(ks, prov):
    kid = ks.managed_key("lake")
    with pytest.raises(ConfigurationError, match="encfs-managed"):
        ks.schedule_deletion(kid, 7)
    with pytest.raises(ConfigurationError, match="encfs-managed"):
        ks.disable_rotation(kid)
    for alias in ("encfs/x", "alias/encfs/x", "default"):
        with pytest.raises(ConfigurationError, match="reserved"):
            ks.create_alias(alias, kid)
        with pytest.raises(ConfigurationError, match="reserved"):
            ks.create_key(alias=alias)
    with pytest.raises(ConfigurationError, match="reserved"):
        ks.delete_alias("encfs/lake")
    with pytest.raises(ConfigurationError, match="reserved"):
        ks.update_alias("default", kid)
    assert prov.describe(KeyRef("local", "alias/encfs/lake")).extra["kind"] == "encfs"
    assert prov.managed_key("lake").key_id == kid


# -- metadata ----------------------------------------------------------------------------
def test_aliases_unique_update_delete(ks, prov):
    a = ks.create_key(alias="a")
    b = ks.create_key()
    with pytest.raises(ConfigurationError, match="already exists"):
        ks.create_key(alias="alias/a")
    with pytest.raises(ConfigurationError, match="already exists"):
        ks.create_alias("a", b)
    ks.create_alias("alias/second", a)
    assert ks.aliases_of(a) == ["a", "second"]
    ks.update_alias("second", b)
    assert ks.resolve("second") == b and ks.aliases_of(a) == ["a"]
    with pytest.raises(KeyNotFoundError):
        ks.update_alias("missing", b)
    with pytest.raises(KeyNotFoundError):
        ks.create_alias("c", "lk-doesnotexist")
    ks.delete_alias("alias/second")
    with pytest.raises(KeyNotFoundError):
        ks.resolve("second")
    with pytest.raises(KeyNotFoundError):
        ks.delete_alias("second")
    prov.set_alias("x", KeyRef("local", a))  # create-or-update
    prov.set_alias("x", KeyRef("local", b))
    assert ks.resolve("x") == b


def test_tags_description_dates_usage(ks, prov, clock):
    kid = ks.create_key(description="lake", tags={"team": "data"})
    ks.tag(kid, {"env": "prod", "team": "ml"})
    ks.untag(kid, ["env", "absent"])
    ks.set_description(kid, "the lake")
    info = prov.describe(KeyRef("local", kid))
    assert info.tags == {"team": "ml"} and info.description == "the lake"
    assert info.created == "2027-01-15T08:00:00+00:00" and info.extra["usage"] == "ENCRYPT_DECRYPT"
    assert info.extra["kind"] == "customer"
    with pytest.raises(ConfigurationError):
        ks.tag(kid, {"": "x"})
    with pytest.raises(ConfigurationError):
        ks.tag(kid, {f"k{i}": "v" for i in range(60)})


# -- rotation ----------------------------------------------------------------------------
def test_rotation_on_demand_old_objects_still_decrypt(memfs, encfs_home, clock):
    admin = LocalKeystore(encfs_home, clock=clock)
    kid = admin.create_key(alias="lake")
    fs = _efs(memfs, encfs_home, "local://lake")
    fs.pipe_file("/v1", b"one")
    assert admin.rotate(kid) == 2
    fs.pipe_file("/v2", b"two")
    assert [fs.header(p).wrapped_keys[0].version for p in ("/v1", "/v2")] == ["1", "2"]
    assert fs.cat_file("/v1") == b"one" and fs.cat_file("/v2") == b"two"
    assert admin.record(kid)["rotation"]["last"] == "2027-01-15T08:00:00+00:00"


def test_automatic_rotation_with_clock(ks, prov, clock):
    kid = ks.create_key(rotation_days=90)
    w1 = prov.wrap(KeyRef("local", kid), b"\x03" * 32, {})
    clock.advance(89)
    assert ks.record(kid)["current_version"] == 1
    clock.advance(1)
    assert ks.record(kid)["current_version"] == 2
    clock.advance(1000)  # many missed periods: one rotation, next a full period later
    assert ks.record(kid)["current_version"] == 3
    assert ks.record(kid)["rotation"]["next"] == "2030-04-09T08:00:00+00:00"
    assert prov.unwrap(w1, {}) == b"\x03" * 32
    # A disabled key is not rotated while disabled; it catches up when enabled.
    ks.disable(kid)
    clock.advance(200)
    assert ks.record(kid)["current_version"] == 3
    ks.enable(kid)
    assert ks.record(kid)["current_version"] == 4
    ks.disable_rotation(kid)
    clock.advance(5000)
    assert ks.record(kid)["current_version"] == 4
    status = prov.rotation_status(KeyRef("local", kid))
    assert status["enabled"] is False and status["last_rotation"]


@pytest.mark.parametrize("days", [89, 2561, 0])
def test_rotation_period_bounds(ks, days):
    kid = ks.create_key()
    with pytest.raises(ConfigurationError, match="90..2560"):
        ks.enable_rotation(kid, days)
    with pytest.raises(ConfigurationError, match="90..2560"):
        ks.create_key(rotation_days=days)
    ks.enable_rotation(kid, 2560)
    ks.enable_rotation(kid, 90)


def test_auto_rotation_is_audited(ks, clock, encfs_home):
    kid = ks.create_key(rotation_days=90)
    clock.advance(90)
    ks.list_ids()
    recs = [json.loads(x) for x in (encfs_home / "audit.log").read_text().splitlines()]
    auto = [r for r in recs if r["action"] == "auto-rotate"]
    assert len(auto) == 1 and auto[0]["key"] == f"local://{kid}" and auto[0]["version"] == "2" and auto[0]["automatic"]


# -- durability ----------------------------------------------------------------------------
def _rotate_many(home: str, key_id: str, n: int, start) -> None:
    start.wait()
    ks = LocalKeystore(home)
    for _ in range(n):
        ks.rotate(key_id)
        ks.create_key(description=f"by {os.getpid()}")


def test_two_processes_rotating_at_once_lose_nothing(encfs_home):
    ks = LocalKeystore(encfs_home)
    kid = ks.create_key()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_rotate_many, args=(str(encfs_home), kid, 10, start)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    fresh = LocalKeystore(encfs_home)
    rec = fresh.record(kid)
    assert sorted(int(v) for v in rec["versions"]) == list(range(1, 22))
    assert rec["current_version"] == 21
    assert len(fresh.list_ids()) == 1 + 20


def test_corrupted_keystore_detected_and_recovered(encfs_home, memfs):
    fs = _efs(memfs, encfs_home)
    fs.pipe_file("/x", b"data")
    path = encfs_home / "keystore.json"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(KeystoreError, match="corrupted .*keys recover"):
        LocalKeystore(encfs_home).list_ids()
    with pytest.raises(KeystoreError, match="corrupted"):
        LocalKeystore(encfs_home).create_key()  # never writes over a corrupted file
    LocalKeystore(encfs_home).recover_from_backup()
    assert _efs(memfs, encfs_home).cat_file("/x") == b"data"


def test_valid_json_with_flipped_material_is_detected(encfs_home):
    ks = LocalKeystore(encfs_home)
    kid = ks.create_key()
    path = encfs_home / "keystore.json"
    doc = json.loads(path.read_text())
    m = doc["keys"][kid]["versions"]["1"]["material"]
    doc["keys"][kid]["versions"]["1"]["material"] = ("B" if m[0] != "B" else "C") + m[1:]
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreError, match="checksum mismatch"):
        LocalKeystore(encfs_home).record(kid)


def test_recover_without_backup_is_a_clear_error(encfs_home):
    with pytest.raises(KeystoreError, match="no keystore backup"):
        LocalKeystore(encfs_home).recover_from_backup()


# -- export / import ----------------------------------------------------------------------
def test_export_import_moves_keys_between_machines(tmp_path, memfs, monkeypatch):
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    a = LocalKeystore(home_a)
    kid = a.create_key(alias="lake", tags={"t": "1"})
    a.rotate(kid)
    fs_a = _efs(memfs, home_a, "local://lake")
    fs_a.pipe_file("/obj", b"secret rows")
    bundle = seal_bundle(a.export_records([kid]), "correct horse", n=2**12)
    assert b"material" not in bundle and kid.encode() in bundle
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        open_bundle(bundle, "wrong")
    tampered = json.loads(bundle)
    tampered["keys"] = ["lk-" + "0" * 32]
    with pytest.raises(KeystoreError):
        open_bundle(json.dumps(tampered).encode(), "correct horse")
    b = LocalKeystore(home_b)
    other = b.create_key(alias="lake")  # alias taken on the other machine
    report = b.import_records(open_bundle(bundle, "correct horse"))
    assert report["added"] == [kid] and report["alias_conflicts"] == ["lake"]
    assert b.resolve("lake") == other
    assert _efs(memfs, home_b, f"local://{kid}").cat_file("/obj") == b"secret rows"
    assert b.import_records(open_bundle(bundle, "correct horse"))["unchanged"] == [kid]


def test_sealed_keystore_export_reseals(tmp_path, monkeypatch, memfs):
    monkeypatch.setenv("ENCFS_PASSPHRASE", "pw-a")
    home = tmp_path / "sealed"
    ks = LocalKeystore(home)
    kid = ks.create_key()
    raw = (home / "keystore.json").read_text()
    assert '"sealed"' in raw and '"material"' not in raw
    records = ks.export_records()
    monkeypatch.setenv("ENCFS_PASSPHRASE", "")
    plain = LocalKeystore(tmp_path / "plain")
    plain.import_records(records)
    assert plain.export_records([kid])["keys"][kid]["versions"] == records["keys"][kid]["versions"]


def test_read_only_keystore_still_serves_and_never_unlocks_a_deleted_key(ks, prov, clock, monkeypatch):
    kid = ks.create_key(rotation_days=90)
    doomed = ks.create_key()
    w = prov.wrap(KeyRef("local", kid), b"\x04" * 32, {})
    wd = prov.wrap(KeyRef("local", doomed), b"\x05" * 32, {})
    ks.schedule_deletion(doomed, 7)

    def read_only(doc):
        raise PermissionError(13, "Read-only file system")

    writable = ks._file.write
    monkeypatch.setattr(ks._file, "write", read_only)
    clock.advance(100)  # rotation and deletion both due, but nothing can be written
    assert prov.unwrap(w, {}) == b"\x04" * 32
    assert ks.record(kid)["current_version"] == 1
    with pytest.raises(KeyStateError, match="PendingDeletion"):
        prov.unwrap(wd, {})
    monkeypatch.setattr(ks._file, "write", writable)
    clock.advance(1 / 1440 + 1 / 86400)  # the retry a minute later succeeds
    assert ks.record(kid)["current_version"] == 2
    with pytest.raises(KeyNotFoundError, match="deleted"):
        prov.unwrap(wd, {})


def test_missing_keystore_with_backup_is_not_silently_replaced(encfs_home):
    kid = LocalKeystore(encfs_home).create_key(alias="keep")
    (encfs_home / "keystore.json").unlink()
    with pytest.raises(KeystoreError, match="missing but a backup exists"):
        LocalKeystore(encfs_home).resolve("default")  # would otherwise create a new default key
    with pytest.raises(KeystoreError, match="missing"):
        LocalKeystore(encfs_home).create_key()
    ks = LocalKeystore(encfs_home)
    ks.recover_from_backup()
    assert ks.resolve("keep") == kid
