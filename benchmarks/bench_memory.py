"""Peak resident memory while streaming a large object through enc::file://.

A 2 GiB object is written from a generator in 1 MiB chunks, then read back
in 1 MiB chunks, each direction in its own fresh subprocess (so the peak of
one cannot hide the other's).  The child sets everything up first (imports,
keystore, filesystem), then measures the growth of its peak RSS over the
stream alone:

- on Linux it resets the kernel's high-water mark (``echo 5 >
  /proc/self/clear_refs``) right before streaming and reads ``VmHWM`` after;
- elsewhere it falls back to ``ru_maxrss`` after minus RSS before.

Both sides hash the plaintext (SHA-256) so the test also proves the 2 GiB
round trip.  Target (issue 4): growth <= 64 MiB both ways.  The object lives
in a temp dir (``$ENCFS_BENCH_TMP`` or the system's) and is deleted after.

    python benchmarks/bench_memory.py            # 2 GiB
    python benchmarks/bench_memory.py --quick    # 256 MiB
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MiB, Report, Target, mbps, parser, table, temp_dir

CHUNK = MiB


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def chunks(total: int) -> Iterator[bytes]:
    """``total`` bytes in 1 MiB pieces, made on the fly (never all in memory)."""
    block = bytearray(os.urandom(CHUNK))
    for i in range(-(-total // CHUNK)):
        block[:8] = i.to_bytes(8, "big")  # every chunk differs
        yield bytes(block[: min(CHUNK, total - i * CHUNK)])


def child(direction: str, path: str, keystore: str, size: int) -> dict[str, object]:
    from encfs.fs import EncryptedFileSystem

    efs = EncryptedFileSystem(target_protocol="file", key="local://default", keystore=keystore,
                              skip_instance_cache=True)
    digest = hashlib.sha256()
    if direction == "read":
        efs.info(path)  # warm the keystore and imports outside the measured stream
    else:
        efs.pipe_file(path + ".warm", b"x")
        efs.rm_file(path + ".warm")
    gen = chunks(size)
    rss_before = (_status_kib("VmRSS") or 0) * 1024
    hwm_reset = _reset_peak()
    if not hwm_reset:
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak so far
    t0 = time.perf_counter()
    n = 0
    if direction == "write":
        with efs.open(path, "wb") as f:
            for c in gen:
                digest.update(c)
                f.write(c)
                n += len(c)
    else:
        with efs.open(path, "rb") as f:
            while True:
                c = f.read(CHUNK)
                if not c:
                    break
                digest.update(c)
                n += len(c)
    seconds = time.perf_counter() - t0
    if hwm_reset:
        peak = (_status_kib("VmHWM") or 0) * 1024
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"direction": direction, "bytes": n, "seconds": seconds, "rss_before": rss_before, "peak": peak,
            "growth": max(0, peak - rss_before), "sha256": digest.hexdigest(),
            "method": "VmHWM reset via /proc/self/clear_refs" if hwm_reset else "ru_maxrss"}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=None, help="object size (default 2048, quick 256)")
    p.add_argument("--child", nargs=4, metavar=("DIRECTION", "PATH", "KEYSTORE", "SIZE"), help=argparse_hidden())
    args = p.parse_args(argv)
    if args.child:
        direction, path, keystore, size = args.child
        print(json.dumps(child(direction, path, keystore, int(size))))
        return 0
    size_mib = args.size_mib or (256 if args.quick else 2048)
    size = size_mib * MiB
    report = Report("memory", params={"size_MiB": size_mib, "chunk": "1 MiB", "target": "enc::file://"})
    results = {}
    with temp_dir() as ks, temp_dir() as work:
        path = os.path.join(work, "big.bin")
        for direction in ("write", "read"):
            print(f"{direction}: {size_mib} MiB through enc::file:// in a subprocess ...", flush=True)
            out = subprocess.run([sys.executable, __file__, "--child", direction, path, ks, str(size)],
                                 capture_output=True, text=True, check=True)
            results[direction] = json.loads(out.stdout.strip().splitlines()[-1])
        ct_size = os.path.getsize(path)
        os.unlink(path)
    w, r = results["write"], results["read"]
    assert w["bytes"] == r["bytes"] == size, "short stream"
    assert w["sha256"] == r["sha256"], "read back different bytes"
    for d in (w, r):
        report.rows.append({"direction": d["direction"], "MiB": size_mib, "MiB/s": mbps(size, d["seconds"]),
                            "RSS before MiB": d["rss_before"] / MiB, "peak MiB": d["peak"] / MiB,
                            "growth MiB": d["growth"] / MiB, "method": d["method"]})
        report.targets.append(Target(f"peak RSS growth, {size_mib} MiB {d['direction']}", d["growth"] / MiB,
                                     "<=", 64.0, unit=" MiB"))
    report.params["ciphertext_bytes"] = ct_size
    print(table(["direction", "MiB/s", "RSS before (MiB)", "peak (MiB)", "growth (MiB)"],
                [[x["direction"], x["MiB/s"], x["RSS before MiB"], x["peak MiB"], x["growth MiB"]] for x in report.rows]))
    return report.finish(args)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
