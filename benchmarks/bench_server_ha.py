"""The key server, highly available: two replicas on one PostgreSQL against
one SQLite server, in the same run (``python benchmarks/bench_server.py --ha``).

Each deployment serves GenerateDataKey and Decrypt to 16 concurrent clients
of bench_server.py's light load generator (aiohttp, keep-alive, requests
SigV4-signed by botocore shortly ahead); with two replicas the clients
alternate endpoints (no load balancer), 8 per replica.  Both deployments run
at once and are measured in interleaved rounds (medians reported), so the
machine's changing load affects both alike.  Reported: requests/s, p50/p99
latency, errors, server CPU per request, and the ratio to the SQLite
server's own figure.
PostgreSQL is Debian's, started for the run in a temporary directory
(tests/_postgres.py) with its defaults (``synchronous_commit`` on: every
audit batch is a durable commit).  Both deployments use the local-keystore
master key so that the comparison is about storage and audit; an HSM master
key costs one HSM call per cache miss only (unwraps are cached).

Everything shares the machine's cores (PostgreSQL, both replicas and the
load generator): on 2 cores the replicas compete with each other and with
the database, so this measures overhead, not the scaling extra hosts give.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import Report, Target, table, temp_dir
from bench_server import CLIENTS, Signer, _free_port, _wait, boto_client, encfs_server, tree_cpu


@contextmanager
def pg_replicas(scratch: Path, n: int = 2) -> Any:
    """PostgreSQL in a temporary directory and ``n`` key server processes on it."""
    from _postgres import PostgresServer, available

    from encfs.server.config import new_access_key

    reason = available()
    if reason:
        raise SystemExit(f"cannot start PostgreSQL here: {reason}")
    pg = PostgresServer().start()
    procs: list[subprocess.Popen] = []
    try:
        url = pg.createdb("bench")
        akid, secret = new_access_key()
        ports = [_free_port() for _ in range(n)]
        cfg = scratch / "kms-ha.toml"
        cfg.write_text(f'[server]\nhost = "127.0.0.1"\nport = 0\ndata_dir = "data-ha"\nshutdown_timeout = 2\n\n'
                       f'[storage]\nurl = "{url}"\n\n'
                       f'[master_key]\ntype = "local"\nkeystore = "{scratch / "keystore-ha"}"\n\n'
                       f'[[principals]]\nname = "bench"\naccess_key_id = "{akid}"\n'
                       f'secret_access_key_env = "BENCH_KMS_SECRET"\naccount_actions = ["kms:*"]\n')
        env = {**os.environ, "BENCH_KMS_SECRET": secret, "ENCFS_HOME": str(scratch / "home-ha")}
        for port in ports:  # one after the other: the first one creates the master key
            proc = subprocess.Popen([sys.executable, "-m", "encfs.cli", "server", "--config", str(cfg), "--port",
                                     str(port)], env=env, stderr=subprocess.DEVNULL)
            procs.append(proc)
            _wait(f"http://127.0.0.1:{port}/health", proc)
        yield {"name": f"{n} replicas, PostgreSQL", "endpoints": [f"http://127.0.0.1:{p}" for p in ports],
               "endpoint": f"http://127.0.0.1:{ports[0]}", "akid": akid, "secret": secret,
               "pids": [p.pid for p in procs]}
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.close()


async def _load(srv: dict[str, Any], operation: str, body: bytes, seconds: float, presigned: int) -> dict[str, Any]:
    """bench_server's generator, its clients spread over the endpoints."""
    import aiohttp

    endpoints = srv.get("endpoints") or [srv["endpoint"]]
    signers = [Signer({**srv, "endpoint": e}) for e in endpoints]
    queues = [[s.sign(operation, body) for _ in range(presigned // len(signers))] for s in signers]
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=CLIENTS, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            nonlocal errors
            signer, queue = signers[i % len(signers)], queues[i % len(signers)]
            while time.perf_counter() < stop_at:
                headers = queue.pop() if queue else signer.sign(operation, body)
                t0 = time.perf_counter()
                try:
                    async with session.post(signer.url, data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(CLIENTS)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    n = len(latencies)
    return {"requests": n, "rps": n / elapsed, "p50_ms": latencies[n // 2] * 1000 if n else 0,
            "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000 if n else 0, "errors": errors}


def prepare(srv: dict[str, Any]) -> dict[str, bytes]:
    """A key and the two request bodies; then a warm-up second."""
    ctx = {"dataset": "bench"}
    kms = boto_client(srv)
    key = kms.create_key(Description="bench")["KeyMetadata"]["KeyId"]
    blob = kms.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=ctx)["CiphertextBlob"]
    bodies = {
        "GenerateDataKey": json.dumps({"KeyId": key, "KeySpec": "AES_256", "EncryptionContext": ctx}).encode(),
        "Decrypt": json.dumps({"CiphertextBlob": base64.b64encode(blob).decode(), "EncryptionContext": ctx}).encode(),
    }
    run(_load(srv, "GenerateDataKey", bodies["GenerateDataKey"], 1.0, 600))
    return bodies


def phase(srv: dict[str, Any], op: str, body: bytes, seconds: float) -> dict[str, Any]:
    pids = srv.get("pids") or [srv["pid"]]
    before = sum(tree_cpu(p) for p in pids)
    r = run(_load(srv, op, body, seconds, int(2500 * seconds)))
    r["server_cpu_us"] = (sum(tree_cpu(p) for p in pids) - before) / max(r["requests"], 1) * 1e6
    return r


def median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def run(coro: Any) -> Any:
    try:
        import uvloop
    except ModuleNotFoundError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run_ha(args: argparse.Namespace) -> int:
    seconds = 2.0 if args.quick else 4.0
    rounds = 2 if args.quick else 4
    report = Report("server-ha", params={"clients": CLIENTS, "seconds_per_round": seconds, "rounds": rounds,
                                         "replicas": 2, "load_avg_at_start": os.getloadavg()[0]})
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with temp_dir() as scratch_s:
        scratch = Path(scratch_s)
        (scratch / "sqlite").mkdir()
        (scratch / "pg").mkdir()
        with encfs_server(scratch / "sqlite") as one, pg_replicas(scratch / "pg") as two:
            one["name"] = "1 server, SQLite"
            deployments = [one, two]
            bodies = {srv["name"]: prepare(srv) for srv in deployments}
            # Interleaved rounds (both deployments up, the idle one costs
            # nothing): the machine's load changes affect both alike.
            for op in ("GenerateDataKey", "Decrypt"):
                for i in range(rounds):
                    for srv in deployments:
                        r = phase(srv, op, bodies[srv["name"]][op], seconds)
                        runs.setdefault((srv["name"], op), []).append(r)
                        print(f"  round {i + 1} {srv['name']:22s} {op:16s} {r['rps']:8.0f} req/s  p99 "
                              f"{r['p99_ms']:7.2f} ms  errors {r['errors']}  server CPU {r['server_cpu_us']:5.0f} "
                              "us/req", flush=True)
    report.params["load_avg_at_end"] = os.getloadavg()[0]
    results = {key: {"rps": median([r["rps"] for r in rs]), "p50_ms": median([r["p50_ms"] for r in rs]),
                     "p99_ms": median([r["p99_ms"] for r in rs]), "errors": sum(r["errors"] for r in rs),
                     "server_cpu_us": median([r["server_cpu_us"] for r in rs])} for key, rs in runs.items()}
    rows = []
    for (name, op), r in results.items():
        base = results[("1 server, SQLite", op)]
        rows.append([name, op, r["rps"], r["p50_ms"], r["p99_ms"], r["errors"], r["server_cpu_us"],
                     r["rps"] / base["rps"]])
        report.rows.append({"deployment": name, "operation": op, **r})
    print(f"medians of {rounds} interleaved rounds of {seconds:g} s, 16 clients:")
    print(table(["deployment", "operation", "req/s", "p50 ms", "p99 ms", "errors", "server CPU us/req",
                 "req/s vs SQLite"], rows))
    ha_gdk = results[("2 replicas, PostgreSQL", "GenerateDataKey")]
    report.targets += [
        Target("errors under load (both deployments)", sum(r["errors"] for r in results.values()), "<=", 0, ""),
        Target("2 replicas on PostgreSQL: GenerateDataKey p99 at 16 clients", ha_gdk["p99_ms"], "<=", 50, " ms"),
    ]
    for op in ("GenerateDataKey", "Decrypt"):
        base, ha = results[("1 server, SQLite", op)], results[("2 replicas, PostgreSQL", op)]
        report.notes.append(f"{op}: the SQLite server's own figure {base['rps']:.0f} req/s, p99 {base['p99_ms']:.1f} "
                            f"ms; 2 PostgreSQL replicas {ha['rps']:.0f} req/s ({ha['rps'] / base['rps']:.2f}x), "
                            f"p99 {ha['p99_ms']:.1f} ms; server CPU per request {ha['server_cpu_us']:.0f} vs "
                            f"{base['server_cpu_us']:.0f} us")
    report.notes.append(f"load average {report.params['load_avg_at_start']:.2f} at start, "
                        f"{report.params['load_avg_at_end']:.2f} at end (PostgreSQL, replicas and the generator "
                        "share the cores)")
    return report.finish(args)


if __name__ == "__main__":
    from _common import parser

    sys.exit(run_ha(parser(__doc__.splitlines()[0]).parse_args()))
