"""Runs inside benchmarks/.venv-peers (peers whose pins conflict with encfs's).

Measures one peer's write/read throughput on an in-memory target, plus raw
AES-256-GCM from the cryptography release installed *in that venv*, so the
peer's number can also be read as a ratio to the cipher it runs on.  Prints
one JSON object on stdout.  Standard library + the peer only: it must not
import encfs or benchmarks/_common.py (different environment).

    .venv-peers/bin/python _peer_worker.py fsspec-encrypted SIZE_MIB ROUNDS
"""

from __future__ import annotations

import gc
import json
import os
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

MiB = 1024 * 1024
_NONCE = struct.Struct(">QI")


#: Best CPU time (user + system) of each measured function, by name.
CPU: dict[str, float] = {}


def best(fn: Callable[[], Any], rounds: int, name: str = "") -> float:
    """Best wall time over ``rounds``; the best CPU time goes to CPU[name]."""
    t = c = float("inf")
    for _ in range(rounds):
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
        c = min(c, time.process_time() - c0)
    if name:
        CPU[name] = c
    return t


def raw_gcm(payload: memoryview, rounds: int, seg: int = 64 * 1024) -> dict[str, float]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(AESGCM.generate_key(256))
    nseg = -(-len(payload) // seg)
    sealed = [aead.encrypt(_NONCE.pack(i, i == nseg - 1), payload[i * seg : (i + 1) * seg], None) for i in range(nseg)]

    def enc() -> None:
        for i in range(nseg):
            aead.encrypt(_NONCE.pack(i, i == nseg - 1), payload[i * seg : (i + 1) * seg], None)

    def dec() -> None:
        for i in range(nseg):
            aead.decrypt(_NONCE.pack(i, i == nseg - 1), sealed[i], None)

    return {"raw_write_s": best(enc, rounds, "raw_write"), "raw_read_s": best(dec, rounds, "raw_read")}


def fsspec_encrypted(payload: memoryview, rounds: int) -> dict[str, Any]:
    import fsspec
    from fsspec_encrypted import EncryptedFS

    efs = EncryptedFS(encryption_key=os.urandom(32))
    data = bytes(payload)
    # Its public API: writebytes/readbytes on a full URL (open() for writing
    # is broken in 0.8: it produces empty objects, DESIGN.md section 6).
    w = best(lambda: efs.writebytes("memory://peer/obj", data), rounds, "write")
    r = best(lambda: efs.readbytes("memory://peer/obj"), rounds, "read")
    ok = efs.readbytes("memory://peer/obj") == data
    fs = fsspec.filesystem("memory")
    return {"write_s": w, "read_s": r, "roundtrip_ok": ok, "ciphertext_bytes": fs.size("/peer/obj"),
            "versions": {"fsspec-encrypted": _version("fsspec-encrypted"), "fsspec": fsspec.__version__,
                         "cryptography": _version("cryptography")}}


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


PEERS: dict[str, Callable[[memoryview, int], dict[str, Any]]] = {"fsspec-encrypted": fsspec_encrypted}


def main() -> int:
    name, size_mib, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    payload = memoryview(os.urandom(size_mib * MiB))
    out: dict[str, Any] = {"peer": name, "size_MiB": size_mib}
    try:
        out.update(PEERS[name](payload, rounds))
        out.update(raw_gcm(payload, rounds))
        out["cpu_s"] = dict(CPU)
    except Exception as exc:  # noqa: BLE001  # reported, not raised: the parent prints it
        out["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
