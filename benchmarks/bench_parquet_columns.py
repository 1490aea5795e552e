"""Bytes fetched for one Parquet column, against the bytes the column needs,
and what the segment size costs in throughput (issue 11 item 8).

A file of 400,000 rows x 6 random float64 columns in 8 row groups (about
19 MB) is written once as plaintext Parquet; its metadata gives each column
chunk's byte range.  What one column *needs* is its 8 column chunks plus the
footer (the 8-byte tail and the Thrift metadata).  The same plaintext bytes
are then stored through encfs with each segment size of the sweep, and one
column is read with ``pyarrow.parquet.read_table(f, columns=[...])`` on a
file opened with ``fs.open(path, "rb")`` (as pandas and dask do), every
column in turn.  Bytes are counted at the target (a memory filesystem whose
``cat_file`` counts what it returns; encfs reads it through the generic
target I/O, one request per range, as on S3).  Bytes are deterministic.
Readers' open probe is the header and one segment of the reader's
configured size (encfs/file.py ``PROBE_BYTES``), so each size is measured as
a dataset written and read with it.

Throughput per segment size: 32 MiB written and read sequentially through
``enc::memory://`` (1 MiB calls, as bench_throughput.py), CPU time, best of
interleaved rounds, as a ratio to raw AES-256-GCM over the same segments in
the same run (whose own MiB/s are printed too).

Target (issue 11 item 8): bytes fetched <= 1.10 x the column's bytes at the
default segment size.

    python benchmarks/bench_parquet_columns.py            # sweep 8..256 KiB
    python benchmarks/bench_parquet_columns.py --quick    # fewer rounds
"""

from __future__ import annotations

import io
import os
import struct
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import KiB, MiB, Report, Target, interleaved_wall_cpu, mbps, parser, table, temp_dir
from bench_throughput import read_stream, write_stream
from fsspec.implementations.memory import MemoryFileSystem

ROWS, COLUMNS, ROW_GROUPS = 400_000, 6, 8
SWEEP = [8 * KiB, 16 * KiB, 32 * KiB, 64 * KiB, 256 * KiB]


class CountingMemory(MemoryFileSystem):
    """A private memory store that counts the bytes ``cat_file`` returns."""

    def __init__(self) -> None:
        super().__init__(global_store=False, skip_instance_cache=True)
        self.fetched = 0
        self.requests = 0

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        out = super().cat_file(path, start=start, end=end, **kwargs)
        self.fetched += len(out)
        self.requests += 1
        return out


def parquet_file() -> tuple[bytes, list[int]]:
    """The plaintext Parquet bytes and, per column, the bytes it needs."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(11)
    tbl = pa.table({f"c{i}": rng.random(ROWS) for i in range(COLUMNS)})
    buf = io.BytesIO()
    pq.write_table(tbl, buf, row_group_size=ROWS // ROW_GROUPS)
    data = buf.getvalue()
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    assert meta.num_row_groups == ROW_GROUPS
    (footer_len,) = struct.unpack("<I", data[-8:-4])
    needs = []
    for c in range(COLUMNS):
        chunks = 0
        for g in range(meta.num_row_groups):
            col = meta.row_group(g).column(c)
            chunks += col.total_compressed_size
        needs.append(chunks + footer_len + 8)
    return data, needs


def column_ratio(plain: bytes, needs: list[int], segment_size: int, keystore: str) -> dict[str, Any]:
    """Bytes fetched per column read, as ratios to what each column needs."""
    import pyarrow.parquet as pq

    from encfs import EncryptedFileSystem

    target = CountingMemory()
    efs = EncryptedFileSystem(fs=target, keystore=keystore, segment_size=segment_size, skip_instance_cache=True)
    efs.pipe_file("/lake/t.parquet", plain)
    ratios, requests = [], []
    for c in range(COLUMNS):
        target.fetched = target.requests = 0
        with efs.open("/lake/t.parquet", "rb") as f:
            got = pq.read_table(f, columns=[f"c{c}"])
        assert got.num_rows == ROWS
        ratios.append(target.fetched / needs[c])
        requests.append(target.requests)
    return {"segment_KiB": segment_size // KiB, "ratio_max": max(ratios), "ratio_mean": sum(ratios) / len(ratios),
            "requests": max(requests), "bytes_needed": needs[0]}


def throughput(segment_sizes: list[int], keystore: str, size: int, rounds: int) -> dict[int, dict[str, float]]:
    """Write/read MiB/s per segment size and as ratios to raw AES-GCM."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from encfs import EncryptedFileSystem

    payload = memoryview(os.urandom(size))
    aead = AESGCM(AESGCM.generate_key(256))
    cases: dict[str, Any] = {}
    for s in segment_sizes:
        efs = EncryptedFileSystem(fs=MemoryFileSystem(global_store=False, skip_instance_cache=True),
                                  keystore=keystore, segment_size=s, skip_instance_cache=True)
        write_stream(efs, "/t", payload)
        n = -(-size // s)
        sealed = [aead.encrypt(struct.pack(">QI", i, 0), payload[i * s : (i + 1) * s], None) for i in range(n)]
        cases[f"w{s}"] = lambda efs=efs: write_stream(efs, "/t", payload)
        cases[f"r{s}"] = lambda efs=efs: read_stream(efs, "/t")
        cases[f"rawr{s}"] = lambda s=s, sealed=sealed: [aead.decrypt(struct.pack(">QI", i, 0), c, None)
                                                         for i, c in enumerate(sealed)]
        cases[f"raww{s}"] = lambda s=s, n=n: [aead.encrypt(struct.pack(">QI", i, 0), payload[i * s : (i + 1) * s], None)
                                               for i in range(n)]
    _wall, cpu = interleaved_wall_cpu(cases, rounds)
    return {s: {"write MiB/s": mbps(size, cpu[f"w{s}"]), "read MiB/s": mbps(size, cpu[f"r{s}"]),
                "raw read MiB/s": mbps(size, cpu[f"rawr{s}"]), "raw write MiB/s": mbps(size, cpu[f"raww{s}"]),
                "read vs raw": cpu[f"rawr{s}"] / cpu[f"r{s}"], "write vs raw": cpu[f"raww{s}"] / cpu[f"w{s}"]}
            for s in segment_sizes}


def main(argv: list[str] | None = None) -> int:
    from encfs.format import DEFAULT_SEGMENT

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--no-throughput", action="store_true", help="bytes only (deterministic, fast)")
    args = p.parse_args(argv)
    rounds = 2 if args.quick else 4
    plain, needs = parquet_file()
    report = Report("parquet_columns", params={"rows": ROWS, "columns": COLUMNS, "row_groups": ROW_GROUPS,
                                               "file_MB": round(len(plain) / 1e6, 2),
                                               "default_segment_KiB": DEFAULT_SEGMENT // KiB})
    print(f"Parquet: {ROWS} rows x {COLUMNS} float64 columns, {ROW_GROUPS} row groups, {len(plain) / 1e6:.1f} MB; "
          f"one column needs {needs[0]:,} bytes (8 column chunks + footer)", flush=True)
    with temp_dir() as ks:
        rows = {s: column_ratio(plain, needs, s, ks) for s in SWEEP}
        speed = {} if args.no_throughput else throughput(SWEEP, ks, 32 * MiB, rounds)
    out = []
    for s in SWEEP:
        row = {**rows[s], **speed.get(s, {})}
        report.rows.append(row)
        mark = " (default)" if s == DEFAULT_SEGMENT else ""
        out.append([f"{s // KiB} KiB{mark}", f"{row['ratio_max']:.3f}", f"{row['ratio_mean']:.3f}", row["requests"],
                    row.get("write MiB/s", "-"), row.get("read MiB/s", "-"),
                    f"{row['read vs raw']:.2f}x" if "read vs raw" in row else "-"])
    print(table(["segment", "bytes fetched / needed (worst column)", "mean", "requests per read",
                 "write MiB/s", "read MiB/s", "read vs raw AES-GCM"], out))
    if speed:
        raw = speed[SWEEP[0]]
        print(f"  raw AES-256-GCM in this run: {raw['raw read MiB/s']:.0f} MiB/s decrypt, "
              f"{raw['raw write MiB/s']:.0f} MiB/s encrypt ({SWEEP[0] // KiB} KiB segments)")
    report.targets.append(Target(f"one Parquet column, bytes fetched / needed ({DEFAULT_SEGMENT // KiB} KiB segments)",
                                 rows[DEFAULT_SEGMENT]["ratio_max"], "<=", 1.10))
    return report.finish(args)


if __name__ == "__main__":
    sys.exit(main())
