"""The data-key cache: every limit and counter, revocation latency with a
controllable clock, concurrency, fork safety, and the cost of many small
objects with and without the cache (issue 4, docs/CACHE.md)."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import pickle
import sys
import threading
from collections import Counter
from collections.abc import Mapping

import pytest

from encfs import EncryptedFileSystem, IntegrityError, KeyStateError
from encfs.cache import CacheLimits, DataKeyCache, partition_id, wrapped_digest
from encfs.errors import ConfigurationError
from encfs.format import PATH_KEY, WrappedKey
from encfs.keyring import Keyring
from encfs.providers.base import KeyInfo, KeyProvider, KeyRef

# -- helpers -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_audit_fsync(monkeypatch):
    # Each key-service call appends an fsync'd audit record (audit.py): right
    # for users, but 2,000 fsyncs would dominate the uncached test's run time
    # on a shared disk.  Auditing has its own tests.
    monkeypatch.setenv("ENCFS_AUDIT_LOG", "off")



class FakeClock:
    """A clock that only moves when told to: no sleeping, no timing flakiness."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingProvider(KeyProvider):
    """Delegates to a real provider and counts what reaches it, so the tests do
    not have to trust the keyring's own counters."""

    def __init__(self, inner: KeyProvider) -> None:
        self.inner = inner
        self.scheme = inner.scheme  # type: ignore[misc]
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _tick(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1

    def resolve(self, ref: KeyRef) -> str:
        return self.inner.resolve(ref)

    def generate_data_key(self, ref: KeyRef, context: Mapping[str, str]) -> tuple[bytes, WrappedKey]:
        self._tick("generate")
        return self.inner.generate_data_key(ref, context)

    def wrap(self, ref: KeyRef, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        self._tick("wrap")
        return self.inner.wrap(ref, dek, context)

    def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        self._tick("unwrap")
        return self.inner.unwrap(wrapped, context)

    def allows(self, wrapped: WrappedKey, refs: list[KeyRef]) -> bool:
        return self.inner.allows(wrapped, refs)

    def describe(self, ref: KeyRef) -> KeyInfo:
        return self.inner.describe(ref)


def make_fs(memfs, home, cache=True, **kw) -> tuple[EncryptedFileSystem, CountingProvider, FakeClock]:
    efs = EncryptedFileSystem(fs=memfs, keystore=str(home), skip_instance_cache=True, cache=cache, **kw)
    counting = CountingProvider(efs.keyring.provider("local"))
    efs.keyring._providers["local"] = counting
    clock = FakeClock()
    if efs.keyring.cache is not None:
        efs.keyring.cache.clock = clock
    return efs, counting, clock


def dek_id(efs: EncryptedFileSystem, path: str) -> bytes:
    """Which data key sealed ``path``: reused keys reuse their wrapped blob."""
    return efs.header(path).wrapped_keys[0].wrapped


def default_key_id(efs: EncryptedFileSystem) -> str:
    return efs.keyring.provider("local").resolve(KeyRef("local", "default"))


def keystore(efs: EncryptedFileSystem):
    return efs.keyring.provider("local").inner.keystore


# -- limits and options --------------------------------------------------------------


def test_defaults_are_the_documented_ones():
    lim = CacheLimits()
    assert (lim.max_age, lim.max_objects, lim.max_bytes, lim.max_entries, lim.max_key_bytes) == (
        300.0, 10_000, 2**36, 1000, 65536)
    assert CacheLimits.from_option(True) == lim and CacheLimits.from_option(None) == lim
    assert CacheLimits.from_option(False) is None
    assert CacheLimits.from_option({"max_age": 5}) == dataclasses.replace(lim, max_age=5)


@pytest.mark.parametrize("option", [
    {"max_agee": 1}, {"max_age": -1}, {"max_age": float("inf")}, {"max_age": "300"},
    {"max_objects": 0}, {"max_objects": 2**32 + 1}, {"max_bytes": 0}, {"max_entries": 0},
    {"max_key_bytes": 16}, {"max_objects": True}, "yes",
])
def test_bad_options_are_refused(option, memfs, encfs_home):
    with pytest.raises(ConfigurationError):
        EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), skip_instance_cache=True, cache=option)


def test_cache_options_travel_as_storage_options(encfs_home):
    efs = EncryptedFileSystem(target_protocol="memory", keystore=str(encfs_home), skip_instance_cache=True,
                              cache={"max_age": 7, "max_objects": 3})
    clone = pickle.loads(pickle.dumps(efs))
    assert clone.keyring.cache.limits == CacheLimits(max_age=7, max_objects=3)
    assert "cache" in efs.storage_options


def test_reuse_costs_one_generate_and_one_unwrap(memfs, encfs_home):
    efs, counting, _ = make_fs(memfs, encfs_home)
    for i in range(20):
        efs.pipe_file(f"/d/{i}", b"x%d" % i)
    assert len({dek_id(efs, f"/d/{i}") for i in range(20)}) == 1
    assert len({efs.header(f"/d/{i}").object_id for i in range(20)}) == 20  # own derived keys each
    for i in range(20):
        assert efs.cat_file(f"/d/{i}") == b"x%d" % i
    assert counting.calls == {"generate": 1, "unwrap": 1}
    s = efs.cache_stats()
    assert (s["encrypt_misses"], s["encrypt_hits"], s["decrypt_misses"], s["decrypt_hits"]) == (1, 19, 1, 19)
    assert (s["generate_calls"], s["unwrap_calls"], s["key_service_calls"]) == (1, 1, 2)
    assert (s["entries"], s["encryption_entries"], s["decryption_entries"], s["key_bytes"]) == (2, 1, 1, 64)
    assert s["plaintext_bytes"] == sum(len(b"x%d" % i) for i in range(20))


def test_max_objects_per_data_key(memfs, encfs_home):
    efs, counting, _ = make_fs(memfs, encfs_home, cache={"max_objects": 3})
    for i in range(10):
        efs.pipe_file(f"/o/{i}", b"v")
    groups = Counter(dek_id(efs, f"/o/{i}") for i in range(10))
    assert sorted(groups.values()) == [1, 3, 3, 3]
    assert counting.calls["generate"] == 4
    s = efs.cache_stats()
    assert s["retirements"] == 3 and s["encrypt_hits"] == 6 and s["encrypt_misses"] == 4
    assert s["encryption_entries"] == 1  # the spent keys were dropped at once


def test_max_objects_one_never_holds_a_key(memfs, encfs_home):
    efs, counting, _ = make_fs(memfs, encfs_home, cache={"max_objects": 1})
    for i in range(4):
        efs.pipe_file(f"/o/{i}", b"v")
    assert counting.calls["generate"] == 4
    assert efs.cache_stats()["encryption_entries"] == 0


def test_max_plaintext_bytes_accounted_at_close(memfs, encfs_home):
    efs, counting, _ = make_fs(memfs, encfs_home, cache={"max_bytes": 100})
    for i in range(4):
        efs.pipe_file(f"/b/{i}", b"a" * 60)
    # 60 < 100: reused once; 120 >= 100: retired, so objects 2 and 3 get a new key.
    ids = [dek_id(efs, f"/b/{i}") for i in range(4)]
    assert ids[0] == ids[1] != ids[2] == ids[3]
    assert counting.calls["generate"] == 2
    assert efs.cache_stats()["retirements"] == 2


def test_whole_values_are_accounted_when_their_key_is_handed_out(memfs, encfs_home):
    """pipe_file of a value in hand (write_whole) knows its size up front:
    accounted in the same cache step as the hand-out, on a fresh key and on
    a reused one, so a key is retired by the object that reaches the limit
    and never handed out past it."""
    efs, counting, _ = make_fs(memfs, encfs_home, cache={"max_bytes": 100})
    efs.pipe_file("/a", b"a" * 150)  # a fresh key, over the limit at once: retired
    s = efs.cache_stats()
    assert (s["plaintext_bytes"], s["retirements"], s["encryption_entries"]) == (150, 1, 0)
    for name in "bcd":
        efs.pipe_file(f"/{name}", b"b" * 40)  # 40, 80, then 120 at hand-out: retired
    efs.pipe_file("/e", b"e")
    ids = [dek_id(efs, f"/{n}") for n in "abcde"]
    assert ids[0] != ids[1] == ids[2] == ids[3] != ids[4] and ids[4] != ids[0]
    assert counting.calls["generate"] == 3
    s = efs.cache_stats()
    assert (s["plaintext_bytes"], s["retirements"]) == (150 + 3 * 40 + 1, 2)
    with pytest.raises(FileExistsError):
        efs.pipe_file("/e", b"x" * 50, mode="create")  # refused before any key is taken
    assert efs.cache_stats()["plaintext_bytes"] == 150 + 3 * 40 + 1
    assert [efs.cat_file(f"/{n}") for n in "abcde"] == [b"a" * 150, *[b"b" * 40] * 3, b"e"]


def test_one_object_larger_than_max_bytes_retires_its_key(memfs, encfs_home):
    efs, counting, _ = make_fs(memfs, encfs_home, cache={"max_bytes": 1000})
    with efs.open("/big", "wb") as f:
        for _ in range(10):
            f.write(b"z" * 500)
    efs.pipe_file("/next", b"small")
    assert dek_id(efs, "/big") != dek_id(efs, "/next")
    assert counting.calls["generate"] == 2


def test_max_bytes_overshoot_is_bounded_by_open_writers(memfs, encfs_home):
    """Documented behaviour: bytes are known at close, so writers open at the
    same time may share a key beyond max_bytes; the next writer does not."""
    efs, _counting, _ = make_fs(memfs, encfs_home, cache={"max_bytes": 100})
    f1, f2 = efs.open("/w1", "wb"), efs.open("/w2", "wb")
    f1.write(b"1" * 80)
    f2.write(b"2" * 80)
    f1.close()
    f2.close()
    efs.pipe_file("/w3", b"3")
    assert dek_id(efs, "/w1") == dek_id(efs, "/w2") != dek_id(efs, "/w3")
    assert efs.cat_file("/w2") == b"2" * 80


def test_discarded_write_counts_its_use_not_its_bytes(memfs, encfs_home):
    efs, _counting, _ = make_fs(memfs, encfs_home, cache={"max_objects": 2})
    with pytest.raises(RuntimeError), efs.open("/gone", "wb") as f:
        f.write(b"q" * 50)
        raise RuntimeError("boom")
    assert not memfs.exists("/gone")
    efs.pipe_file("/kept", b"k")
    efs.pipe_file("/kept2", b"k")
    assert dek_id(efs, "/kept") != dek_id(efs, "/kept2")  # the discarded object used one of two
    assert efs.cache_stats()["plaintext_bytes"] == 2


# -- age, revocation latency ---------------------------------------------------------


def test_max_age_expires_both_sides(memfs, encfs_home):
    efs, counting, clock = make_fs(memfs, encfs_home, cache={"max_age": 60})
    efs.pipe_file("/a", b"a")
    assert efs.cat_file("/a") == b"a"
    clock.advance(59)
    efs.pipe_file("/b", b"b")
    assert efs.cat_file("/b") == b"b"
    assert counting.calls == {"generate": 1, "unwrap": 1}
    assert dek_id(efs, "/a") == dek_id(efs, "/b")
    clock.advance(1)  # exactly max_age old: expired
    efs.pipe_file("/c", b"c")
    assert dek_id(efs, "/c") != dek_id(efs, "/a")
    assert efs.cat_file("/a") == b"a"
    assert counting.calls == {"generate": 2, "unwrap": 2}
    s = efs.cache_stats()
    assert s["expirations"] == 2 and s["entries"] == 2


def test_expired_entries_are_wiped_without_being_asked_for(memfs, encfs_home):
    efs, _, clock = make_fs(memfs, encfs_home, cache={"max_age": 10})
    efs.pipe_file("/a", b"a")
    cache = efs.keyring.cache
    (entry,) = list(cache._lru.values())
    assert any(entry.dek)
    clock.advance(10)
    assert cache.stats()["entries"] == 0  # any cache operation sweeps
    assert entry.dek == bytearray(32)


def test_age_zero_disables_reuse(memfs, encfs_home):
    efs, counting, _ = make_fs(memfs, encfs_home, cache={"max_age": 0})
    for i in range(5):
        efs.pipe_file(f"/z/{i}", b"z")
    for i in range(5):
        assert efs.cat_file(f"/z/{i}") == b"z"
    assert counting.calls == {"generate": 5, "unwrap": 5}
    assert len({dek_id(efs, f"/z/{i}") for i in range(5)}) == 5
    s = efs.cache_stats()
    assert s["entries"] == 0 and s["encrypt_hits"] == 0 and s["decrypt_hits"] == 0
    assert s["encrypt_misses"] == 5


def test_disabled_key_stops_working_once_the_age_limit_passes(memfs, encfs_home):
    efs, _counting, clock = make_fs(memfs, encfs_home, cache={"max_age": 300})
    efs.pipe_file("/before", b"secret")
    assert efs.cat_file("/before") == b"secret"
    keystore(efs).set_state(default_key_id(efs), "Disabled")

    # Within max_age the cached keys still work: the documented trade-off.
    clock.advance(299)
    efs.pipe_file("/during", b"still")
    assert efs.cat_file("/during") == b"still"
    assert efs.cat_file("/before") == b"secret"

    clock.advance(1)
    with pytest.raises(KeyStateError):
        efs.pipe_file("/after", b"nope")
    with pytest.raises(KeyStateError):
        efs.cat_file("/before")
    with pytest.raises(KeyStateError):
        efs.cat_file("/during")
    assert not memfs.exists("/after")
    assert efs.cache_stats()["key_service_errors"] == 3

    keystore(efs).set_state(default_key_id(efs), "Enabled")
    assert efs.cat_file("/during") == b"still"


def test_clear_cache_makes_revocation_immediate(memfs, encfs_home):
    efs, _, _ = make_fs(memfs, encfs_home)
    efs.pipe_file("/a", b"a")
    assert efs.cat_file("/a") == b"a"
    keystore(efs).set_state(default_key_id(efs), "Disabled")
    efs.keyring.clear_cache()
    with pytest.raises(KeyStateError):
        efs.cat_file("/a")
    with pytest.raises(KeyStateError):
        efs.pipe_file("/b", b"b")


def test_cache_off(memfs, encfs_home):
    efs, counting, _ = make_fs(memfs, encfs_home, cache=False)
    assert efs.keyring.cache is None
    for i in range(3):
        efs.pipe_file(f"/n/{i}", b"n")
        assert efs.cat_file(f"/n/{i}") == b"n"
    assert counting.calls == {"generate": 3, "unwrap": 3}
    s = efs.cache_stats()
    assert s["cache_enabled"] is False and "encrypt_hits" not in s and s["key_service_calls"] == 6


# -- capacity --------------------------------------------------------------------------


def _three_keys(memfs, home, **limits):
    """Three objects under three different data keys, and a fresh reader."""
    writer, _, _ = make_fs(memfs, home, cache={"max_objects": 1})
    for name in "abc":
        writer.pipe_file(f"/{name}", name.encode())
    return make_fs(memfs, home, cache=limits)


def test_max_entries_evicts_least_recently_used(memfs, encfs_home):
    efs, counting, _ = _three_keys(memfs, encfs_home, max_entries=2)
    assert efs.cat_file("/a") == b"a"
    assert efs.cat_file("/b") == b"b"
    assert efs.cat_file("/a") == b"a"  # a is now more recent than b
    assert efs.cat_file("/c") == b"c"  # evicts b
    assert counting.calls["unwrap"] == 3
    assert efs.cat_file("/a") == b"a"
    assert counting.calls["unwrap"] == 3
    assert efs.cat_file("/b") == b"b"
    assert counting.calls["unwrap"] == 4
    s = efs.cache_stats()
    assert s["evictions"] == 2 and s["entries"] == 2


def test_max_key_bytes_evicts(memfs, encfs_home):
    efs, counting, _ = _three_keys(memfs, encfs_home, max_key_bytes=64)
    for name in "abc":
        efs.cat_file(f"/{name}")
    s = efs.cache_stats()
    assert s["key_bytes"] == 64 and s["entries"] == 2 and s["evictions"] == 1
    efs.cat_file("/a")
    assert counting.calls["unwrap"] == 4


def test_evicted_key_bytes_are_zeroed():
    cache = DataKeyCache(CacheLimits(max_entries=1), clock=FakeClock())
    cache.put_decryption_key(b"1" * 32, b"\x01" * 32)
    (entry,) = cache._lru.values()
    cache.put_decryption_key(b"2" * 32, b"\x02" * 32)
    assert entry.dek == bytearray(32)
    (live,) = cache._lru.values()
    cache.clear()
    assert live.dek == bytearray(32) and cache.stats()["entries"] == 0


def test_partitions_by_root_keys_and_context():
    clock = FakeClock()
    cache = DataKeyCache(clock=clock)
    w = [WrappedKey("local", "k", "1", b"w1")]
    p1 = partition_id(["local://a"], {"tenant": "x"})
    assert p1 != partition_id(["local://b"], {"tenant": "x"})
    assert p1 != partition_id(["local://a", "local://b"], {"tenant": "x"})
    assert p1 != partition_id(["local://a"], {"tenant": "y"})
    assert p1 == partition_id(["local://a"], {"tenant": "x"})
    cache.put_encryption_key(p1, b"\x07" * 32, w)
    assert cache.take_encryption_key(partition_id(["local://a"], {"tenant": "y"})) is None
    assert cache.take_encryption_key(p1) == (b"\x07" * 32, tuple(w))


def test_digest_covers_every_wrapped_field_and_the_context():
    base = WrappedKey("local", "k", "1", b"blob")
    d = wrapped_digest(base, {"a": "1"})
    variants = [dataclasses.replace(base, provider="aws-kms"), dataclasses.replace(base, key_id="k2"),
                dataclasses.replace(base, version="2"), dataclasses.replace(base, wrapped=b"blob2")]
    assert all(wrapped_digest(v, {"a": "1"}) != d for v in variants)
    assert wrapped_digest(base, {"a": "2"}) != d and wrapped_digest(base, {}) != d
    assert len(d) == 32


def test_keyring_partitions_by_context_not_path(encfs_home):
    ring = Keyring("local://default", provider_options={"local": {"home": str(encfs_home)}})
    d1, w1 = ring.new_data_key({"tenant": "x", PATH_KEY: "/p1"})
    d2, w2 = ring.new_data_key({"tenant": "x", PATH_KEY: "/p2"})
    d3, _w3 = ring.new_data_key({"tenant": "y", PATH_KEY: "/p1"})
    assert d1 == d2 and w1 == w2 and d3 != d1
    assert ring.stats()["generate_calls"] == 2


def test_several_write_keys_are_reused_together(memfs, encfs_home):
    efs0 = EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), skip_instance_cache=True)
    keystore_ = efs0.keyring.provider("local").keystore
    keystore_.create_key(alias="second")
    efs, counting, _ = make_fs(memfs, encfs_home, key=["local://default", "local://second"])
    for i in range(5):
        efs.pipe_file(f"/m/{i}", b"m")
    assert counting.calls == {"generate": 1, "wrap": 1}
    s = efs.cache_stats()
    assert (s["generate_calls"], s["wrap_calls"], s["key_service_calls"]) == (1, 1, 2)
    assert len({efs.header(f"/m/{i}").wrapped_keys for i in range(5)}) == 1


def test_caller_cannot_alter_cached_entries(encfs_home):
    ring = Keyring("local://default", provider_options={"local": {"home": str(encfs_home)}})
    _, w1 = ring.new_data_key({})
    w1.append(WrappedKey("local", "evil", "1", b"x"))
    _, w2 = ring.new_data_key({})
    assert len(w2) == 1


def test_wrapped_entry_copied_from_another_object_fails_with_cache(memfs, encfs_home):
    efs, _, _ = make_fs(memfs, encfs_home, cache={"max_objects": 1})
    efs.pipe_file("/a", b"a")
    efs.pipe_file("/b", b"b")
    assert efs.cat_file("/a") == b"a"  # a's data key is now cached
    ha, hb = efs.header("/a"), efs.header("/b")
    forged = dataclasses.replace(hb, wrapped_keys=ha.wrapped_keys)
    with pytest.raises(IntegrityError):
        efs.keyring.unwrap(forged, "/b")


def test_no_key_material_in_repr_stats_or_pickle(memfs, encfs_home):
    efs, _, _ = make_fs(memfs, encfs_home)
    efs.pipe_file("/a", b"a")
    efs.cat_file("/a")
    cache = efs.keyring.cache
    deks = [bytes(e.dek) for e in cache._lru.values()]
    text = repr(cache) + repr(list(cache._lru.values())) + repr(efs.cache_stats()) + repr(efs.keyring)
    for dek in deks:
        assert dek.hex() not in text and repr(dek) not in text
    assert not any(isinstance(v, (bytes, bytearray)) for v in efs.cache_stats().values())
    with pytest.raises(TypeError):
        pickle.dumps(cache)
    blob = pickle.dumps(efs)
    assert not any(dek in blob for dek in deks)


# -- concurrency ------------------------------------------------------------------------


@pytest.fixture
def frequent_thread_switches():
    # Switch threads far more often than the default 5 ms, so the races the
    # lock and the single flight guard against actually get a chance to occur.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def test_many_threads_one_filesystem(memfs, encfs_home, frequent_thread_switches):
    limit, threads, per_thread = 7, 8, 25
    efs, counting, _ = make_fs(memfs, encfs_home, cache={"max_objects": limit})
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                path = f"/t/{t}/{i}"
                efs.pipe_file(path, f"{path}:payload".encode() * (1 + i % 3))
                # read back our own and a neighbour's latest objects
                assert efs.cat_file(path) == f"{path}:payload".encode() * (1 + i % 3)
                other = f"/t/{(t + 1) % threads}/{i}"
                if memfs.exists(other):
                    assert efs.cat_file(other) == f"{other}:payload".encode() * (1 + i % 3)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert not errors, errors
    total = threads * per_thread
    uses = Counter(dek_id(efs, f"/t/{t}/{i}") for t in range(threads) for i in range(per_thread))
    assert max(uses.values()) <= limit
    assert sum(uses.values()) == total
    # Single flight: only spent keys are replaced, so every key but the last
    # served exactly `limit` objects and no thread generated a spare.
    assert counting.calls["generate"] == math.ceil(total / limit) == len(uses)
    # Same on the read side: each data key is unwrapped once, however many
    # threads missed it together.
    assert counting.calls["unwrap"] == len(uses)
    s = efs.cache_stats()
    assert s["encrypt_hits"] + s["encrypt_misses"] == total
    assert s["generate_calls"] == counting.calls["generate"]
    assert s["unwrap_calls"] == counting.calls["unwrap"]


# -- fork -------------------------------------------------------------------------------


def _child_report(efs: EncryptedFileSystem, parent_entry, parent_provider) -> dict:
    # Before any cache operation: the at-fork hook itself must have run (the
    # per-operation pid check is only the fallback for forks it cannot see).
    hook_ran = efs.keyring.cache._pid == os.getpid() and not efs.keyring.cache._lru
    s = efs.cache_stats()
    report = {
        "hook_ran": hook_ran,
        "entries_at_start": s["entries"],
        "inherited_bytes_wiped": parent_entry.dek == bytearray(32),
        "same_provider": efs.keyring._providers.get("local") is parent_provider,
    }
    before = efs.cache_stats()
    ok = efs.cat_file("/p") == b"parent"
    efs.pipe_file("/child", b"child")
    after = efs.cache_stats()
    report.update(ok=ok, unwraps=after["unwrap_calls"] - before["unwrap_calls"],
                  generates=after["generate_calls"] - before["generate_calls"])
    return report


_FORK_STATE: dict = {}


def _pool_worker(_: int) -> dict:
    st = _FORK_STATE
    return _child_report(st["efs"], st["entry"], st["provider"])


@pytest.fixture
def parent_fs(memfs, encfs_home):
    efs = EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), skip_instance_cache=True)
    efs.pipe_file("/p", b"parent")
    assert efs.cat_file("/p") == b"parent"
    assert efs.cache_stats()["entries"] == 2
    entry = next(iter(efs.keyring.cache._lru.values()))
    return efs, entry, efs.keyring._providers["local"]


def _expect_clean_child(report: dict) -> None:
    assert report == {"hook_ran": True, "entries_at_start": 0, "inherited_bytes_wiped": True, "same_provider": False,
                      "ok": True, "unwraps": 1, "generates": 1}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_with_an_empty_cache(parent_fs):
    efs, entry, provider = parent_fs
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(r)
            os.write(w, pickle.dumps(_child_report(efs, entry, provider)))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    _expect_clean_child(pickle.loads(data))
    # The parent keeps its own keys.
    assert entry.dek != bytearray(32) and efs.cache_stats()["entries"] >= 2


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_multiprocessing_fork_workers_do_not_share_key_state(parent_fs):
    efs, entry, provider = parent_fs
    _FORK_STATE.update(efs=efs, entry=entry, provider=provider)
    try:
        # One task per worker: a reused worker would see its own earlier keys.
        with multiprocessing.get_context("fork").Pool(2, maxtasksperchild=1) as pool:
            reports = pool.map(_pool_worker, range(2))
    finally:
        _FORK_STATE.clear()
    for report in reports:
        _expect_clean_child(report)


def test_pid_check_catches_forks_that_bypass_the_hooks(parent_fs):
    efs, entry, _ = parent_fs
    cache = efs.keyring.cache
    cache._pid = -1  # as if this process were a fork the hooks never saw
    assert cache.stats()["entries"] == 0
    assert entry.dek == bytearray(32)


# -- many small objects ---------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_thousand_small_objects(memfs, encfs_home, cache):
    n = 1000
    efs, counting, _ = make_fs(memfs, encfs_home, cache=cache)
    for i in range(n):
        efs.pipe_file(f"/s/{i:04d}", b"%d" % i)
    for i in range(n):
        assert efs.cat_file(f"/s/{i:04d}") == b"%d" % i
    if cache:
        assert counting.calls["generate"] <= 2 and counting.calls["unwrap"] <= 2
    else:
        assert counting.calls == {"generate": n, "unwrap": n}
    s = efs.cache_stats()
    assert s["generate_calls"] == counting.calls["generate"] and s["unwrap_calls"] == counting.calls["unwrap"]


# -- encfs stats -------------------------------------------------------------------------


def _run_cli(args: list[str]):
    from click.testing import CliRunner

    from encfs.cli.main import _load_commands, cli

    _load_commands()
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_stats_demo_compares_cache_on_and_off(encfs_home):
    res = _run_cli(["stats", "-n", "40", "--size", "100", "--keystore", str(encfs_home), "--json"])
    assert res.exit_code == 0, res.output
    import json

    report = json.loads(res.output)
    on, off = report["cache"]["stats"], report["no_cache"]["stats"]
    assert (on["generate_calls"], on["unwrap_calls"], on["encrypt_hits"], on["decrypt_hits"]) == (1, 1, 39, 39)
    assert (off["generate_calls"], off["unwrap_calls"], off["cache_enabled"]) == (40, 40, False)
    text = _run_cli(["stats", "-n", "5", "--keystore", str(encfs_home)]).output
    assert "cache on" in text and "generate data key" in text


def test_stats_reads_paths_and_reports_this_commands_calls(efs_local, encfs_home):
    efs, root = efs_local
    (root / "d").mkdir()
    for i in range(5):
        efs.pipe_file(str(root / "d" / f"{i}.bin"), b"p" * (i + 1))
    import json

    res = _run_cli(["stats", str(root / "d"), "--keystore", str(encfs_home), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["objects"] == 5 and report["bytes"] == 15 and report["failed"] == []
    assert (report["stats"]["unwrap_calls"], report["stats"]["decrypt_hits"]) == (1, 4)
    # The counters are this command's: a second run on the same (cached)
    # filesystem instance reads everything from the cache.
    again = json.loads(_run_cli(["stats", str(root / "d"), "--keystore", str(encfs_home), "--json"]).output)
    assert (again["stats"]["unwrap_calls"], again["stats"]["decrypt_hits"]) == (0, 5)
    off = json.loads(_run_cli(["stats", "--no-cache", str(root / "d"), "--keystore", str(encfs_home),
                               "--json"]).output)
    assert off["stats"]["unwrap_calls"] == 5 and off["stats"]["cache_enabled"] is False
    age0 = json.loads(_run_cli(["stats", "-o", 'enc.cache={"max_age": 0}', str(root / "d"),
                                "--keystore", str(encfs_home), "--json"]).output)
    assert age0["stats"]["unwrap_calls"] == 5 and age0["stats"]["limits"]["max_age"] == 0
    bad = _run_cli(["stats", str(root / "d" / "0.bin"), str(root / "missing"), "--keystore", str(encfs_home)])
    assert bad.exit_code == 1 and "read 1 object(s)" in bad.output


# -- AWS KMS (moto in-process): the calls that reach the KMS API -------------------------


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
def test_kms_api_calls_with_and_without_cache(memfs, monkeypatch, cache):
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    n = 100
    with moto.mock_aws():
        arn = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["Arn"]
        efs = EncryptedFileSystem(fs=memfs, key=f"aws-kms://{arn}", providers={"aws-kms": {"region_name": "us-east-1"}},
                                  skip_instance_cache=True, cache=cache)
        calls: Counter[str] = Counter()
        client = efs.keyring.provider("aws-kms")._client(None)
        client.meta.events.register("provide-client-params.kms.*",
                                    lambda params, model, **_: calls.update([model.name]))
        for i in range(n):
            efs.pipe_file(f"/k/{i}", b"%d" % i)
        for i in range(n):
            assert efs.cat_file(f"/k/{i}") == b"%d" % i
    expected = 1 if cache else n
    assert (calls["GenerateDataKey"], calls["Decrypt"]) == (expected, expected)
    s = efs.cache_stats()
    assert (s["generate_calls"], s["unwrap_calls"]) == (expected, expected)
