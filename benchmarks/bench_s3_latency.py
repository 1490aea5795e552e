"""enc::s3 against plain s3fs under an S3-like latency model.

A moto server (S3) runs in a child process; a loopback proxy in another
(benchmarks/_latency_proxy.py) delays every request by 20 ms before
forwarding it and paces each connection to 100 MB/s in each direction,
which is what one request to real S3 costs (10-30 ms to the first byte,
about 100 MB/s per connection).  Plain s3fs and encfs over s3fs talk to the
same proxy in the same run, cases interleaved (plain, enc, plain, enc...),
best of the rounds; requests are counted at the proxy.

Cases (sizes configurable):

- sequential read: ``open()`` then ``read(4 MiB)`` to the end (what pandas
  and pyarrow do), a 64 MiB object, and a 256 MiB one (``--big``);
- whole-object ``cat_file`` of the 64 MiB object;
- sequential write: ``open("wb")`` and ``write(4 MiB)`` calls, 64 MiB;
- 100 bytes from the middle of the 64 MiB object with ``cat_file(start, end)``,
  and an ``open()`` alone (requests: encfs's open is its probe);
- ``pd.read_parquet(columns=[one])`` of a file of 8 row groups x 6 float64
  columns;
- many 1 KiB objects: ``pipe_file`` each, ``cat_file`` each.

moto keeps objects in memory for this run (MOTO_S3_DEFAULT_KEY_BUFFER_SIZE)
and serves them without copying the whole object for each GET (the child
process patches FakeKey.value), so a ranged GET costs moto the range, as
it costs S3; unpatched, every ranged GET of a 256 MiB object would copy
256 MiB inside moto.

Targets (issue 11): enc / plain >= 1.0x for sequential read, cat, write and
read_parquet; >= 2x for the 256 MiB sequential read; open = 1 request; the
100-byte read = 1 request after the open.

    python benchmarks/bench_s3_latency.py            # 64 MiB + 256 MiB, 3 rounds
    python benchmarks/bench_s3_latency.py --quick    # 16 MiB, no 256 MiB case, 1 round
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import KiB, MiB, Report, Target, interleaved, parser, table
from _servers import CREDENTIALS, REGION

BUCKET = "latency"
CHUNK = 4 * MiB

_MOTO = """
import sys
sys.path.insert(0, {tests!r})
import moto.s3.models
from _servers import MotoServer

def _value(self):
    # S3 serves a range at the cost of the range; moto copies the whole
    # object for every GET, ranged or not (BytesIO.read()).  getvalue()
    # shares the in-memory buffer instead (objects stay in memory: see
    # MOTO_S3_DEFAULT_KEY_BUFFER_SIZE), so a ranged GET costs its range.
    with self.lock:
        buf = self._value_buffer
        if not getattr(buf, "_rolled", True):
            return buf._file.getvalue()
        buf.seek(0)
        return buf.read()

moto.s3.models.FakeKey.value = moto.s3.models.FakeKey.value.setter(moto.s3.models.FakeKey.value.fset).getter(_value)
server = MotoServer().start()
print(server.port, flush=True)
sys.stdin.read()
server.stop()
"""


class Servers:
    """moto and the latency proxy, each in its own process (the benchmark's
    own process then holds only the clients, as a user's would)."""

    def __init__(self, delay_ms: float, rate_mbps: float) -> None:
        env = {**os.environ, **CREDENTIALS, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(8 * 1024**3)}
        self.moto = subprocess.Popen([sys.executable, "-c", _MOTO.format(tests=str(HERE.parent / "tests"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        self.moto_port = int(self.moto.stdout.readline())
        self.proxy = subprocess.Popen([sys.executable, str(HERE / "_latency_proxy.py"), str(self.moto_port),
                                       str(delay_ms), str(rate_mbps)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.proxy_port = int(self.proxy.stdout.readline())

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def _control(self, method: str) -> dict[str, Any]:
        req = urllib.request.Request(f"{self.endpoint}/__proxy/{'reset' if method == 'POST' else 'stats'}",
                                     method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        self._control("POST")

    def requests(self) -> int:
        return int(self._control("GET")["requests"])

    def stop(self) -> None:
        for p in (self.proxy, self.moto):
            p.stdin.close()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def s3fs_client(endpoint: str) -> Any:
    import s3fs

    return s3fs.S3FileSystem(key="testing", secret="testing", token=None, skip_instance_cache=True,
                             client_kwargs={"endpoint_url": endpoint, "region_name": REGION})


def counted(servers: Servers, fn: Callable[[], Any]) -> int:
    """Requests one untimed run of ``fn`` sends."""
    servers.reset()
    fn()
    return servers.requests()


def read_seq(fs: Any, path: str) -> int:
    n = 0
    with fs.open(path, "rb") as f:
        while data := f.read(CHUNK):
            n += len(data)
    return n


def write_seq(fs: Any, path: str, payload: memoryview) -> None:
    with fs.open(path, "wb") as f:
        for i in range(0, len(payload), CHUNK):
            f.write(payload[i : i + CHUNK])


def parquet_bytes(rows: int) -> bytes:
    import io

    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(11)
    df = pd.DataFrame({f"c{i}": rng.random(rows) for i in range(6)})
    buf = io.BytesIO()
    df.to_parquet(buf, row_group_size=-(-rows // 8), index=False)
    return buf.getvalue()


def main() -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=None, help="object size of the 64 MiB cases")
    p.add_argument("--big-mib", type=int, default=None, help="object size of the big sequential read (0: skip)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--small", type=int, default=None, help="number of 1 KiB objects")
    p.add_argument("--rows", type=int, default=None, help="rows of the Parquet file")
    p.add_argument("--delay-ms", type=float, default=20.0)
    p.add_argument("--rate-mbps", type=float, default=100.0, help="per connection, MB/s")
    args = p.parse_args()
    q = args.quick
    size = (args.size_mib or (16 if q else 64)) * MiB
    big = (args.big_mib if args.big_mib is not None else (0 if q else 256)) * MiB
    rounds = args.rounds or (1 if q else 3)
    nsmall = args.small or (20 if q else 100)
    rows = args.rows or (100_000 if q else 400_000)

    os.environ.update(CREDENTIALS)
    os.environ.setdefault("ENCFS_HOME", tempfile.mkdtemp(prefix="encfs-bench-"))
    os.environ["ENCFS_AUDIT_LOG"] = "off"
    import pandas as pd

    from encfs import EncryptedFileSystem

    servers = Servers(args.delay_ms, args.rate_mbps)
    report = Report("s3_latency", params={"size": size, "big": big, "rounds": rounds, "small_objects": nsmall,
                                          "parquet_rows": rows, "delay_ms": args.delay_ms,
                                          "rate_mbps_per_connection": args.rate_mbps})
    try:
        import boto3

        boto3.client("s3", region_name=REGION, endpoint_url=f"http://127.0.0.1:{servers.moto_port}",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        s3 = s3fs_client(servers.endpoint)
        efs = EncryptedFileSystem(fs=s3, key="local://default", skip_instance_cache=True)
        payload = memoryview(os.urandom(size))
        plain_obj, enc_obj = f"{BUCKET}/plain.bin", f"{BUCKET}/enc.bin"
        write_seq(s3, plain_obj, payload)
        write_seq(efs, enc_obj, payload)
        assert efs.cat_file(enc_obj) == payload and s3.cat_file(plain_obj) == payload
        results: list[tuple[str, float, float, int, int]] = []

        def pair(name: str, plain: Callable[[], Any], enc: Callable[[], Any],
                 setup: dict[str, Callable[[], Any]] | None = None) -> tuple[float, float]:
            t = interleaved({"plain": plain, "enc": enc}, rounds, setup)
            rp, re_ = counted(servers, plain), counted(servers, enc)
            results.append((name, t["plain"], t["enc"], rp, re_))
            print(f"  {name}: plain {t['plain']:.3f} s ({rp} requests), enc {t['enc']:.3f} s ({re_} requests),"
                  f" enc/plain speed {t['plain'] / t['enc']:.2f}x", flush=True)
            return t["plain"], t["enc"]

        tp, te = pair(f"sequential read {size // MiB} MiB (open + read(4 MiB))",
                      lambda: read_seq(s3, plain_obj), lambda: read_seq(efs, enc_obj))
        report.targets.append(Target("sequential read, enc / plain speed", tp / te, ">=", 1.0))
        tp, te = pair(f"cat_file {size // MiB} MiB", lambda: s3.cat_file(plain_obj), lambda: efs.cat_file(enc_obj))
        report.targets.append(Target("whole-object cat_file, enc / plain speed", tp / te, ">=", 1.0))
        tp, te = pair(f"sequential write {size // MiB} MiB (write(4 MiB))",
                      lambda: write_seq(s3, f"{BUCKET}/w-plain.bin", payload),
                      lambda: write_seq(efs, f"{BUCKET}/w-enc.bin", payload))
        report.targets.append(Target("sequential write, enc / plain speed", tp / te, ">=", 1.0))
        mid = size // 2 + 12345
        pair("100 bytes from the middle (cat_file start/end)",
             lambda: s3.cat_file(plain_obj, start=mid, end=mid + 100),
             lambda: efs.cat_file(enc_obj, start=mid, end=mid + 100))
        assert efs.cat_file(enc_obj, start=mid, end=mid + 100) == payload[mid : mid + 100]

        def open_only(fs: Any, path: str) -> None:
            with fs.open(path, "rb"):
                pass

        opened = counted(servers, lambda: open_only(efs, enc_obj))
        with efs.open(enc_obj, "rb") as f:
            f.seek(mid)
            ranged = counted(servers, lambda: f.read(100))
        report.targets.append(Target("requests to open an object", opened, "<=", 1, unit=""))
        report.targets.append(Target("requests for a 100-byte read after open", ranged, "<=", 1, unit=""))

        pq = parquet_bytes(rows)
        s3.pipe_file(f"{BUCKET}/plain.parquet", pq)
        efs.pipe_file(f"{BUCKET}/enc.parquet", pq)
        tp, te = pair(f"read_parquet(columns=[one]), {len(pq) / MiB:.1f} MiB file, 8 row groups",
                      lambda: pd.read_parquet(f"{BUCKET}/plain.parquet", columns=["c3"], filesystem=s3),
                      lambda: pd.read_parquet(f"{BUCKET}/enc.parquet", columns=["c3"], filesystem=efs))
        report.targets.append(Target("read_parquet one column, enc / plain speed", tp / te, ">=", 1.0))

        small = os.urandom(KiB)
        pair(f"{nsmall} x 1 KiB pipe_file",
             lambda: [s3.pipe_file(f"{BUCKET}/sp/{i}", small) for i in range(nsmall)],
             lambda: [efs.pipe_file(f"{BUCKET}/se/{i}", small) for i in range(nsmall)])
        pair(f"{nsmall} x 1 KiB cat_file",
             lambda: [s3.cat_file(f"{BUCKET}/sp/{i}") for i in range(nsmall)],
             lambda: [efs.cat_file(f"{BUCKET}/se/{i}") for i in range(nsmall)])
        pair(f"{nsmall} x 1 KiB in one cat([...])",
             lambda: s3.cat([f"{BUCKET}/sp/{i}" for i in range(nsmall)]),
             lambda: efs.cat([f"{BUCKET}/se/{i}" for i in range(nsmall)]))

        if big:
            for p in (plain_obj, enc_obj, f"{BUCKET}/w-plain.bin", f"{BUCKET}/w-enc.bin"):
                s3.rm_file(p)
            del payload
            payload = memoryview(os.urandom(big))
            write_seq(s3, f"{BUCKET}/big-plain.bin", payload)
            write_seq(efs, f"{BUCKET}/big-enc.bin", payload)
            del payload
            tp, te = pair(f"sequential read {big // MiB} MiB (open + read(4 MiB))",
                          lambda: read_seq(s3, f"{BUCKET}/big-plain.bin"),
                          lambda: read_seq(efs, f"{BUCKET}/big-enc.bin"))
            report.targets.append(Target(f"sequential read {big // MiB} MiB, enc / plain speed", tp / te, ">=", 2.0))

        print()
        print(f"latency model: {args.delay_ms:g} ms per request, {args.rate_mbps:g} MB/s per connection;"
              f" best of {rounds} interleaved rounds")
        print(table(["case", "plain s3fs", "enc::s3", "enc/plain speed", "requests plain", "requests enc"],
                    [[n, f"{a:.3f} s", f"{b:.3f} s", f"{a / b:.2f}x", str(rp), str(re_)]
                     for n, a, b, rp, re_ in results]))
        for n, a, b, rp, re_ in results:
            report.rows.append({"case": n, "plain_s": a, "enc_s": b, "ratio": a / b,
                                "requests_plain": rp, "requests_enc": re_})
        report.notes.append("the machine is shared and small (2 cores): absolute times move between runs")
    finally:
        servers.stop()
    return report.finish(args)


if __name__ == "__main__":
    sys.exit(main())
