"""What reaches S3 for small random reads and for a single-column Parquet
read through ``enc::s3://``, as ratios to the same reads of the plaintext
object.

A moto server (S3 and KMS) runs on 127.0.0.1 in this process, wrapped by the
test suite's request log (tests/_servers.py): every request and every body
byte the server sends or receives is counted there, at the server, so the
numbers do not depend on what the client believes it asked for.

(a) A 256 MiB object (plaintext and encrypted copies).  For random offsets,
    a 4 KiB read: plaintext is one ranged GET of 4 KiB; through encfs the
    file is opened once (counted separately) and the read must be one
    ranged GET of at most 2 segments of ciphertext.
(b) A Parquet file of 8 row groups x 4 random float columns (about 25 MB),
    read with ``pyarrow.parquet.read_table(columns=[one])`` on a file opened
    with ``cache_type="none"`` (as dask does), plaintext vs encrypted: the
    ciphertext bytes must be at most 1.15 x the plaintext bytes.

Targets (issue 3): (a) one ranged GET after open and <= 2 segments of
ciphertext per 4 KiB read; (b) <= 1.15 x plaintext bytes.

    python benchmarks/bench_s3.py            # 256 MiB object, 50 reads
    python benchmarks/bench_s3.py --quick    # 32 MiB object, 10 reads
"""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import KiB, MiB, Report, Target, parser, table
from _servers import CREDENTIALS, MotoServer

BUCKET = "bench"


def _s3(server: MotoServer) -> list[Any]:
    return [r for r in server.requests("s3") if r.status[:1] in "23"]


def _count(server: MotoServer) -> tuple[int, int, int]:
    """(requests, GETs, bytes sent by S3) since the log was cleared."""
    reqs = _s3(server)
    return len(reqs), sum(r.method == "GET" for r in reqs), sum(r.bytes_out for r in reqs)


def bench_random_reads(server: MotoServer, efs: Any, s3: Any, size: int, reads: int, report: Report) -> None:
    plain, enc = f"{BUCKET}/plain.bin", f"{BUCKET}/enc.bin"
    rng = random.Random(1234)
    block = os.urandom(MiB)
    with s3.open(plain, "wb") as fp, efs.open(enc, "wb") as fe:
        for i in range(size // MiB):
            chunk = bytes([i & 0xFF]) + block[1:]  # every MiB differs
            fp.write(chunk)
            fe.write(chunk)
    stride = efs.header(enc).segment_size + 16
    s3.invalidate_cache()
    offsets = [rng.randrange(0, size - 4 * KiB) for _ in range(reads)]

    server.clear_log()
    plain_data = [s3.cat_file(plain, start=o, end=o + 4 * KiB) for o in offsets]
    p_req, _, p_bytes = _count(server)

    server.clear_log()
    f = efs.open(enc, "rb", cache_type="none")
    o_req, _, o_bytes = _count(server)
    per_read: list[tuple[int, int, int]] = []
    for o, expect in zip(offsets, plain_data):
        server.clear_log()
        f.seek(o)
        assert f.read(4 * KiB) == expect
        per_read.append(_count(server))
    f.close()
    e_req = sum(r[0] for r in per_read)
    e_bytes = sum(r[2] for r in per_read)
    max_req = max(r[0] for r in per_read)
    max_segments = max(r[2] for r in per_read) / stride
    report.rows.append({"case": "4 KiB random read", "object_MiB": size // MiB, "reads": reads,
                        "plain_requests_per_read": p_req / reads, "plain_bytes_per_read": p_bytes / reads,
                        "enc_open_requests": o_req, "enc_open_bytes": o_bytes,
                        "enc_requests_per_read": e_req / reads, "enc_max_requests_per_read": max_req,
                        "enc_bytes_per_read": e_bytes / reads, "enc_max_segments_per_read": max_segments,
                        "bytes_ratio": e_bytes / p_bytes, "requests_ratio": e_req / p_req})
    report.targets.append(Target("(a) requests per 4 KiB read after open", max_req, "<=", 1, ""))
    report.targets.append(Target("(a) ciphertext segments per 4 KiB read", max_segments, "<=", 2, ""))
    print(table(["", "requests/read", "bytes/read"],
                [["plaintext", p_req / reads, p_bytes / reads],
                 ["encfs (after open)", e_req / reads, e_bytes / reads],
                 ["encfs open (once)", o_req, o_bytes]]))


def bench_parquet(server: MotoServer, efs: Any, s3: Any, rows: int, report: Report) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    table_ = pa.table({f"c{i}": rng.random(rows) for i in range(4)})
    plain, enc = f"{BUCKET}/plain.parquet", f"{BUCKET}/enc.parquet"
    with s3.open(plain, "wb") as f:
        pq.write_table(table_, f, row_group_size=rows // 8)
    with efs.open(enc, "wb") as f:
        pq.write_table(table_, f, row_group_size=rows // 8)
    s3.invalidate_cache()
    meta = pq.ParquetFile(s3.open(plain, "rb")).metadata
    column_bytes = sum(meta.row_group(g).column(1).total_compressed_size for g in range(meta.num_row_groups))

    results = {}
    for name, fs, path in (("plain", s3, plain), ("enc", efs, enc)):
        server.clear_log()
        with fs.open(path, "rb", cache_type="none") as f:
            got = pq.read_table(f, columns=["c1"])
        assert got.column("c1").equals(table_.column("c1"))
        results[name] = _count(server)
    ratio = results["enc"][2] / results["plain"][2]
    report.rows.append({"case": "Parquet single column", "file_MB": round(s3.size(plain) / 1e6, 2),
                        "row_groups": meta.num_row_groups, "column_chunk_bytes": column_bytes,
                        "plain_requests": results["plain"][0], "plain_bytes": results["plain"][2],
                        "enc_requests": results["enc"][0], "enc_bytes": results["enc"][2],
                        "bytes_ratio": ratio, "requests_ratio": results["enc"][0] / results["plain"][0]})
    report.targets.append(Target("(b) single-column Parquet bytes vs plaintext", ratio, "<=", 1.15))
    print(table(["", "requests", "bytes"],
                [["plaintext", results["plain"][0], results["plain"][2]],
                 ["encfs (incl. open)", results["enc"][0], results["enc"][2]]]))


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    size = (32 if args.quick else 256) * MiB
    reads = 10 if args.quick else 50
    rows = 625_000  # 4 random float64 columns, 8 row groups: about 25 MB of Parquet
    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = MotoServer().start()
    try:
        from encfs import EncryptedFileSystem

        kms = server.boto3("kms")
        arn = kms.create_key(Description="bench")["KeyMetadata"]["Arn"]
        server.boto3("s3").create_bucket(Bucket=BUCKET)
        s3 = server.s3fs()
        efs = EncryptedFileSystem(fs=s3, key=f"aws-kms://{arn}", providers={"aws-kms": server.kms_options()},
                                  skip_instance_cache=True)
        report = Report("s3", params={"object_MiB": size // MiB, "reads": reads, "parquet_rows": rows,
                                      "segment_KiB": efs.segment_size // KiB})
        bench_random_reads(server, efs, s3, size, reads, report)
        bench_parquet(server, efs, s3, rows, report)
        report.notes.append("counted at the moto server (S3 requests and response body bytes); "
                            "KMS calls are not S3 requests and are not counted")
        report.print_targets()
        report.save(args.json)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
