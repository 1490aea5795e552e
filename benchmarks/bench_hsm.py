"""Data-key unwraps per second against SoftHSM2, with and without the cache.

Measures, in one process, against a PKCS#11 token (a throwaway SoftHSM2
token created in a temporary directory unless ``ENCFS_PKCS11_MODULE``,
``ENCFS_PKCS11_TOKEN`` and a PIN are already set):

- raw provider calls: ``Pkcs11Provider.unwrap`` and ``wrap`` per second, on
  one thread and on four (calls into one PKCS#11 module are serialised,
  docs/HSM.md "Sessions and threads", so threads add no throughput);
- reads of small objects through ``enc::memory://`` whose data keys sit in
  the HSM: objects opened per second and key-service unwraps per object,
  with the data-key cache off (every object costs one HSM unwrap) and on
  (a data key is unwrapped once and then served from the cache).

Objects are written with the cache off, so each has its own data key: the
worst case for a reader.  The cached reader reads the same set twice (a
warm re-read, as dashboards and repeated queries do); its first pass pays
one unwrap per object like the uncached one.  Reads are measured with the
audit log off and on (one fsync'd line per key-service call), since on a
small machine the fsync, not the HSM, dominates.

    python benchmarks/bench_hsm.py            # 400 objects, 5 rounds
    python benchmarks/bench_hsm.py --quick    # 100 objects, 2 rounds
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, Target, interleaved, parser, table, temp_dir

from encfs import EncryptedFileSystem
from encfs.providers import KeyRef

CTX = {"bench": "hsm"}


def _ensure_token(scratch: str) -> str:
    """Token label to use; creates a SoftHSM2 token when none is configured.
    Must run before the PKCS#11 module is first loaded (it reads SOFTHSM2_CONF)."""
    have_pin = os.environ.get("ENCFS_PKCS11_PIN") or os.environ.get("ENCFS_PKCS11_PIN_FILE")
    if os.environ.get("ENCFS_PKCS11_MODULE") and os.environ.get("ENCFS_PKCS11_TOKEN") and have_pin:
        return os.environ["ENCFS_PKCS11_TOKEN"]
    from encfs.cli.hsm import init_softhsm

    setup = init_softhsm(Path(scratch) / "softhsm", token="encfs-bench")
    os.environ.update(setup.environment())
    return setup.token


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    n_calls = 300 if args.quick else 2000
    n_objects = 100 if args.quick else 400
    rounds = 2 if args.quick else 5
    report = Report("hsm", params={"calls": n_calls, "objects": n_objects, "rounds": rounds, "object_bytes": 1024})

    with temp_dir() as scratch:
        os.environ["ENCFS_HOME"] = str(Path(scratch) / "home")  # never the user's keystore or audit log
        token = _ensure_token(scratch)
        from encfs.providers.pkcs11 import Pkcs11Provider

        provider = Pkcs11Provider()
        key_uri = provider.create_key(alias=f"{token}/bench-{uuid.uuid4().hex[:8]}").uri
        ref = KeyRef.parse(key_uri)
        dek = os.urandom(32)
        wrapped = provider.wrap(ref, dek, CTX)
        assert provider.unwrap(wrapped, CTX) == dek

        def unwraps() -> None:
            for _ in range(n_calls):
                provider.unwrap(wrapped, CTX)

        def wraps() -> None:
            for _ in range(n_calls):
                provider.wrap(ref, dek, CTX)

        def unwraps_4_threads() -> None:
            per = n_calls // 4
            threads = [threading.Thread(target=lambda: [provider.unwrap(wrapped, CTX) for _ in range(per)])
                       for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        raw = interleaved({"unwrap": unwraps, "wrap": wraps, "unwrap x4 threads": unwraps_4_threads}, rounds)

        # Objects under the HSM key, each with its own data key.
        from fsspec.implementations.memory import MemoryFileSystem

        mem = MemoryFileSystem(skip_instance_cache=True)
        mem.store, mem.pseudo_dirs = {}, [""]
        writer = EncryptedFileSystem(fs=mem, key=key_uri, cache=False, skip_instance_cache=True)
        paths = [f"/bench/obj-{i:05d}.bin" for i in range(n_objects)]
        payload = os.urandom(1024)
        for p in paths:
            writer.pipe_file(p, payload)

        # The same objects written again with the cache on: they share data
        # keys (up to the cache's per-key object limit), so a cold reader with
        # the cache on unwraps once per shared key, not once per object.
        shared_writer = EncryptedFileSystem(fs=mem, key=key_uri, cache=True, skip_instance_cache=True)
        shared = [f"/shared/obj-{i:05d}.bin" for i in range(n_objects)]
        for p in shared:
            shared_writer.pipe_file(p, payload)

        stats: dict[str, dict] = {}

        def read_shared() -> None:
            os.environ["ENCFS_AUDIT_LOG"] = "off"
            fs = EncryptedFileSystem(fs=mem, key=key_uri, cache=True, skip_instance_cache=True)
            for _ in range(2):
                for p in shared:
                    if fs.cat_file(p) != payload:
                        raise AssertionError(f"wrong plaintext for {p}")
            stats["shared"] = fs.cache_stats()

        def read_all(cache: bool, audit: bool) -> None:
            # The audit log (encfs/audit.py) appends and fsyncs one line per
            # key-service call; it is measured both ways so the HSM's share shows.
            os.environ["ENCFS_AUDIT_LOG"] = str(Path(scratch) / "audit.log") if audit else "off"
            fs = EncryptedFileSystem(fs=mem, key=key_uri, cache=cache, skip_instance_cache=True)
            for _ in range(2):
                for p in paths:
                    if fs.cat_file(p) != payload:
                        raise AssertionError(f"wrong plaintext for {p}")
            stats[f"{cache}-{audit}"] = fs.cache_stats()

        reads = interleaved({
            "cache off": lambda: read_all(False, False),
            "cache on": lambda: read_all(True, False),
            "cache off, audit log": lambda: read_all(False, True),
            "cache on, audit log": lambda: read_all(True, True),
            "cache on, shared data keys": read_shared,
        }, max(1, rounds // 2))
        os.environ.pop("ENCFS_AUDIT_LOG", None)

    opened = 2 * n_objects
    rows = [
        ["provider.unwrap, 1 thread", _rate(n_calls, raw["unwrap"]), "unwraps/s", "1"],
        ["provider.unwrap, 4 threads", _rate(n_calls // 4 * 4, raw["unwrap x4 threads"]), "unwraps/s", "1"],
        ["provider.wrap, 1 thread", _rate(n_calls, raw["wrap"]), "wraps/s", ""],
    ]
    for case in reads:
        cache, audit = not case.startswith("cache off"), case.endswith("audit log")
        st = stats["shared"] if case.endswith("shared data keys") else stats[f"{cache}-{audit}"]
        rows.append([f"enc::memory:// reads, {case}", _rate(opened, reads[case]), "objects/s",
                     f"{st['unwrap_calls'] / opened:.4f} ({st['unwrap_calls']}/{opened})"])
    for name, value, unit, per in rows:
        report.rows.append({"case": name, "value": round(value, 1), "unit": unit, "hsm_unwraps_per_object": per})
    speedup = reads["cache off"] / reads["cache on"]
    report.targets.append(Target("cached re-read / uncached (objects/s)", speedup, ">=", 1.0))
    report.targets.append(Target("HSM unwraps per object opened, cache on", stats["True-False"]["unwrap_calls"] / opened,
                                 "<=", 0.5, ""))
    report.notes.append(
        "SoftHSM2 runs in-process (no network, no hardware): a network HSM adds a round trip to every "
        "unwrap, which is what the cache saves."
    )
    report.notes.append("PKCS#11 calls into one module are serialised (C_Initialize(NULL)): threads do not scale.")

    print(f"PKCS#11 unwrap benchmark against token {token!r} ({n_calls} calls, {n_objects} objects, best of {rounds})")
    print(table(["case", "rate", "unit", "HSM unwraps per object"], [r for r in rows]))
    report.print_targets()
    report.save(args.json)


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"  ({time.perf_counter() - start:.1f} s)")
