"""Line iteration over binary files: ``for line in f`` and a ``readline()``
loop on a JSON-lines object opened ``"rb"``, through ``enc::`` and through
plain fsspec on the same target (memory and local disk), in one run.

Target (issue 11 item 6): enc within 2x of plain fsspec (enc / plain time
<= 2).  Before the fix every line rebuilt a 1 MiB block: 500x slower.

    python benchmarks/bench_lines.py            # 4.2 MB object, 7 rounds
    python benchmarks/bench_lines.py --quick    # 1 MB, 3 rounds
    python benchmarks/bench_lines.py --mib 32   # a 32 MiB object: the windowed path

Objects up to encfs.file.LINE_WHOLE (8 MiB) are decrypted whole into one
buffer whose C readline/iterator serve the file; larger ones are read in
windows of LINE_WINDOW with a Python call per ``readline()``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MiB, Report, Target, interleaved_wall_cpu, parser, table, temp_dir
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from encfs.fs import EncryptedFileSystem


def jsonl(nbytes: int) -> bytes:
    lines, n, i = [], 0, 0
    while n < nbytes:
        line = b'{"id": %d, "name": "user-%d", "text": "%s"}\n' % (i, i * 7, b"x" * (i % 90))
        lines.append(line)
        n += len(line)
        i += 1
    return b"".join(lines)


def iterate(fs: Any, path: str) -> int:
    with fs.open(path, "rb") as f:
        return sum(1 for _ in f)


def readlines_loop(fs: Any, path: str) -> int:
    n = 0
    with fs.open(path, "rb") as f:
        while f.readline():
            n += 1
    return n


def main() -> int:
    ap = parser(__doc__.split("\n")[0])
    ap.add_argument("--mib", type=float, default=None,
                    help="object size in MiB (default 4.2; above encfs.file.LINE_WHOLE, 8 MiB, lines go through "
                         "windows instead of one buffer)")
    args = ap.parse_args()
    size = (args.mib or (1 if args.quick else 4.2)) * MiB
    rounds = 3 if args.quick else 7
    data = jsonl(int(size))
    report = Report("lines", params={"bytes": len(data), "lines": data.count(b"\n"), "rounds": rounds})
    rows = []
    with temp_dir() as tmp:
        keystore = str(Path(tmp) / "keys")
        mem = MemoryFileSystem(global_store=False, skip_instance_cache=True)
        targets = {"memory": (mem, "/lines"), "local": (LocalFileSystem(), str(Path(tmp) / "lines"))}
        for tname, (plain_fs, root) in targets.items():
            enc = EncryptedFileSystem(fs=plain_fs, key="local://default", keystore=keystore, skip_instance_cache=True)
            plain_fs.makedirs(root, exist_ok=True)
            plain_fs.pipe_file(f"{root}/plain.jsonl", data)
            enc.pipe_file(f"{root}/enc.jsonl", data)
            expect = data.count(b"\n")
            for how, fn in (("for line in f", iterate), ("readline loop", readlines_loop)):
                assert fn(plain_fs, f"{root}/plain.jsonl") == expect == fn(enc, f"{root}/enc.jsonl")
                wall, cpu = interleaved_wall_cpu({
                    "plain": lambda fn=fn, fs=plain_fs, p=f"{root}/plain.jsonl": fn(fs, p),
                    "enc": lambda fn=fn, fs=enc, p=f"{root}/enc.jsonl": fn(fs, p),
                }, rounds)
                ratio = cpu["enc"] / cpu["plain"]
                rows.append([tname, how, f"{cpu['plain'] * 1000:.1f} ms", f"{cpu['enc'] * 1000:.1f} ms",
                             f"{ratio:.2f}x"])
                report.rows.append({"target": tname, "case": how, "plain ms": round(cpu["plain"] * 1e3, 2),
                                    "enc ms": round(cpu["enc"] * 1e3, 2), "enc / plain": round(ratio, 2),
                                    "plain wall ms": round(wall["plain"] * 1e3, 2),
                                    "enc wall ms": round(wall["enc"] * 1e3, 2)})
                report.targets.append(Target(f"{tname}, {how}: enc / plain time", ratio, "<=", 2.0))
    nlines = data.count(b"\n")
    print(f"{len(data) / 1e6:.1f} MB, {nlines:,} lines; best CPU time of {rounds} interleaved rounds")
    print(table(["target", "case", "plain fsspec", "enc", "enc / plain"], rows))
    report.notes.append("shared 2-core machine: times are noisy; CPU time of this process")
    return report.finish(args)


if __name__ == "__main__":
    sys.exit(main())
