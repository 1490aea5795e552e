"""Small objects: per-object CPU against the AWS Encryption SDK, bytes stored,
and what the data-key cache saves under an AWS KMS key.

Per-object CPU (issue 11 item 5): ``pipe_file`` + ``cat_file`` of 1 KiB
objects through ``enc::memory://`` with a cached data key (local key, default
cache), against the AWS Encryption SDK's ``encrypt`` + ``decrypt`` of the
same 1 KiB with its ``CachingCryptoMaterialsManager`` (raw AES-256 wrapping
key; the committing, non-signing suite AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
its fastest), run in this process, interleaved, best CPU time per round.
Target: encfs >= 3x faster.  Bytes stored for a 1 KiB object are printed
next to the v1.0 layout's (4096-byte header region) and the SDK's message.

10,000 objects of 1 KiB are written (``pipe_file``) and read back
(``cat_file``, checked against what was written) through ``enc::memory://``
with ``key="aws-kms://<key ARN>"``, on a moto KMS server on 127.0.0.1 that
this script starts itself, once with the data-key cache (default limits)
and once with ``cache=False`` (1,000 objects by default: without the cache
every object costs a KMS round trip, so 10,000 would take many minutes on a
loaded machine, and the calls per object are what matter).

KMS calls are counted on the wire: a botocore ``before-send`` hook on the
provider's KMS client counts every HTTP request by its ``X-Amz-Target``
(GenerateDataKey, Decrypt, ...), independently of encfs's own counters
(``fs.cache_stats()``), which are reported next to them.

Targets (issue 4): with the cache, <= 10 GenerateDataKey and <= 10 Decrypt
calls for 10,000 objects (without it, one of each per object).

    python benchmarks/bench_small_objects.py              # 10,000 objects
    python benchmarks/bench_small_objects.py --quick      # 1,000 objects
    python benchmarks/bench_small_objects.py --cpu-only   # only the per-object CPU comparison
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, final

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import KiB, Report, Target, interleaved_wall_cpu, parser, table, temp_dir
from bench_throughput import enc_over, private_memory

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@final
class KmsServer:
    """A moto KMS server on 127.0.0.1 (and moto's fake credentials)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # moto accepts any credentials; set dummy ones so boto3 never looks
        # for real ones (and never sends real ones to the local server).
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
            os.environ[k] = v
        os.environ.pop("AWS_PROFILE", None)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access-log line per request

    def __enter__(self) -> KmsServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def create_key(self) -> str:
        import boto3

        kms = boto3.client("kms", endpoint_url=self.url, region_name=REGION)
        return str(kms.create_key(Description="encfs small-object benchmark")["KeyMetadata"]["Arn"])


def count_kms_requests(efs: Any) -> collections.Counter[str]:
    """Count the HTTP requests the filesystem's KMS client sends, by API."""
    counter: collections.Counter[str] = collections.Counter()
    client = efs.keyring.provider("aws-kms")._client()  # the client encfs really uses

    def on_send(request: Any, **_: Any) -> None:
        target = request.headers.get("X-Amz-Target", b"")
        target = target.decode() if isinstance(target, bytes) else str(target)
        counter[target.rsplit(".", 1)[-1] or "?"] += 1

    client.meta.events.register("before-send.kms", on_send)
    return counter


def run_case(server: KmsServer, arn: str, n: int, size: int, cache: bool) -> dict[str, Any]:
    from encfs.fs import EncryptedFileSystem

    efs = EncryptedFileSystem(fs=private_memory(), key=f"aws-kms://{arn}", cache=cache,
                              providers={"aws-kms": {"endpoint_url": server.url, "region_name": REGION}},
                              skip_instance_cache=True)
    wire = count_kms_requests(efs)
    payloads = [i.to_bytes(8, "big") + os.urandom(size - 8) for i in range(n)]
    t0 = time.perf_counter()
    for i, data in enumerate(payloads):
        efs.pipe_file(f"/small/obj-{i:05d}", data)
    t_write = time.perf_counter() - t0
    after_write = collections.Counter(wire)
    # A second filesystem object reads (as another process or a dask worker
    # would), so read-side numbers do not profit from the writer's cache.
    reader = EncryptedFileSystem(fs=efs.fs, key=f"aws-kms://{arn}", cache=cache,
                                 providers={"aws-kms": {"endpoint_url": server.url, "region_name": REGION}},
                                 skip_instance_cache=True)
    rwire = count_kms_requests(reader)
    t0 = time.perf_counter()
    for i, data in enumerate(payloads):
        if reader.cat_file(f"/small/obj-{i:05d}") != data:
            raise AssertionError(f"object {i} read back wrong")
    t_read = time.perf_counter() - t0
    return {
        "cache": cache, "objects": n,
        "write ops/s": n / t_write, "read ops/s": n / t_read,
        "GenerateDataKey": after_write["GenerateDataKey"], "Decrypt": rwire["Decrypt"],
        "other KMS calls": sum(after_write.values()) - after_write["GenerateDataKey"]
        + sum(rwire.values()) - rwire["Decrypt"],
        "encfs counters (writer)": _counters(efs), "encfs counters (reader)": _counters(reader),
    }


def aws_sdk_cached(payload: bytes) -> tuple[Any, Any, str] | None:
    """(encrypt, decrypt) callables of the AWS Encryption SDK with its data-key
    cache, or None when it is not installed (it is not an encfs dependency)."""
    try:
        import aws_encryption_sdk
        from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy, EncryptionKeyType, WrappingAlgorithm
        from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
        from aws_encryption_sdk.key_providers.raw import RawMasterKey, RawMasterKeyConfig
    except ImportError:
        return None
    wrapping = WrappingKey(wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                           wrapping_key=os.urandom(32), wrapping_key_type=EncryptionKeyType.SYMMETRIC)
    master = RawMasterKey(config=RawMasterKeyConfig(key_id=b"bench-key", provider_id="bench", wrapping_key=wrapping))
    cmm = aws_encryption_sdk.CachingCryptoMaterialsManager(
        master_key_provider=master, cache=aws_encryption_sdk.LocalCryptoMaterialsCache(capacity=100),
        max_age=600.0, max_messages_encrypted=2**32 - 1)
    client = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    alg = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY

    def encrypt() -> bytes:
        return bytes(client.encrypt(source=payload, materials_manager=cmm, algorithm=alg)[0])

    message = encrypt()

    def decrypt() -> bytes:
        return bytes(client.decrypt(source=message, materials_manager=cmm)[0])

    assert decrypt() == payload
    return encrypt, decrypt, aws_encryption_sdk.__version__


def per_object_cpu(report: Report, n: int, rounds: int) -> None:
    """encfs pipe_file + cat_file vs the SDK's encrypt + decrypt, per object."""
    from encfs.format import HEADER_REGION, ciphertext_size

    payload = os.urandom(KiB)
    sdk = aws_sdk_cached(payload)
    with temp_dir() as ks:
        efs = enc_over(private_memory(), ks)
        efs.pipe_file("/warm", payload)  # creates the key; the data key is cached from here on
        assert efs.cat_file("/warm") == payload
        # New objects every round (as an ingest would write them), each read
        # back once after the round's writes.
        rounds_paths = iter([[f"/small/r{r}/obj-{i:05d}" for i in range(n)] for r in range(rounds)])
        paths: list[str] = []

        def enc_write() -> None:
            paths[:] = next(rounds_paths)
            for p in paths:
                efs.pipe_file(p, payload)

        def enc_read() -> None:
            for p in paths:
                efs.cat_file(p)

        cases: dict[str, Any] = {"encfs pipe_file": enc_write, "encfs cat_file": enc_read}
        if sdk is not None:
            encrypt, decrypt, version = sdk
            cases["SDK encrypt"] = lambda: [encrypt() for _ in range(n)]
            cases["SDK decrypt"] = lambda: [decrypt() for _ in range(n)]
            report.params["aws-encryption-sdk"] = version
        print(f"per-object CPU: {n} x 1 KiB, {rounds} rounds, interleaved ...", flush=True)
        _wall, cpu = interleaved_wall_cpu(cases, rounds)
        assert efs.cat_file(paths[0]) == payload
        stored = len(efs.fs.cat_file(paths[0]))
        stats = efs.cache_stats()
    us = {k: v / n * 1e6 for k, v in cpu.items()}
    enc_total = us["encfs pipe_file"] + us["encfs cat_file"]
    row: dict[str, Any] = {"case": "per-object CPU, 1 KiB, cached data key", "objects": n,
                           "encfs pipe_file us": us["encfs pipe_file"], "encfs cat_file us": us["encfs cat_file"],
                           "encfs bytes stored": stored,
                           "v1.0 bytes stored": ciphertext_size(KiB, efs.segment_size, HEADER_REGION),
                           "encfs key-service calls": stats["key_service_calls"]}
    rows = [["encfs pipe_file + cat_file", us["encfs pipe_file"], us["encfs cat_file"], enc_total, stored]]
    if sdk is not None:
        sdk_total = us["SDK encrypt"] + us["SDK decrypt"]
        row.update({"SDK encrypt us": us["SDK encrypt"], "SDK decrypt us": us["SDK decrypt"],
                    "SDK bytes stored": len(sdk[0]()), "speed-up vs SDK": sdk_total / enc_total})
        rows.append(["AWS Encryption SDK, caching CMM", us["SDK encrypt"], us["SDK decrypt"], sdk_total,
                     row["SDK bytes stored"]])
    report.rows.append(row)
    print(table(["per object (CPU)", "write us", "read us", "total us", "bytes stored"], rows))
    print(f"  bytes stored for 1 KiB: {stored} (v1.0 layout: {row['v1.0 bytes stored']})")
    if sdk is not None:
        print(f"  encfs is {row['speed-up vs SDK']:.2f}x faster than the AWS Encryption SDK with its cache "
              f"(write {us['SDK encrypt'] / us['encfs pipe_file']:.2f}x, read {us['SDK decrypt'] / us['encfs cat_file']:.2f}x)")
        report.targets.append(Target("encfs pipe+cat vs AWS SDK encrypt+decrypt (cached keys, 1 KiB, CPU)",
                                     row["speed-up vs SDK"], ">=", 3.0))
    else:
        report.notes.append("aws-encryption-sdk is not installed (pip install aws-encryption-sdk): no SDK figures")


def _counters(efs: Any) -> dict[str, Any]:
    stats = efs.cache_stats()
    return {k: v for k, v in stats.items() if isinstance(v, (int, float, bool))}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=None, help="number of objects (default 10000, quick 1000)")
    p.add_argument("--uncached-objects", type=int, default=None,
                   help="objects for the cache=False case (default: 1000; one KMS round trip per object "
                        "makes 10,000 take many minutes on moto, and calls per object do not change)")
    p.add_argument("--cpu-only", action="store_true", help="only the per-object CPU comparison (no KMS server)")
    args = p.parse_args(argv)
    n = args.objects or (1000 if args.quick else 10_000)
    size = 1 * KiB
    report = Report("small_objects", params={"objects": n, "object_size": "1 KiB", "target": "enc::memory://",
                                             "key service": "moto KMS server on 127.0.0.1"})
    per_object_cpu(report, 500 if args.quick else 2000, 3 if args.quick else 5)
    if args.cpu_only:
        return report.finish(args)
    with KmsServer() as server:
        arn = server.create_key()
        for cache in (True, False):
            count = n if cache else (args.uncached_objects or min(n, 1000))
            print(f"{count} x 1 KiB objects, cache={'on' if cache else 'off'} ...", flush=True)
            report.rows.append(run_case(server, arn, count, size, cache))
    on, off = report.rows[-2:]
    print(table(["cache", "write ops/s", "read ops/s", "GenerateDataKey", "Decrypt", "other KMS calls"],
                [["on" if r["cache"] else "off", r["write ops/s"], r["read ops/s"], r["GenerateDataKey"],
                  r["Decrypt"], r["other KMS calls"]] for r in (on, off)]))
    report.params["write_speedup_with_cache"] = on["write ops/s"] / off["write ops/s"]
    report.params["read_speedup_with_cache"] = on["read ops/s"] / off["read ops/s"]
    print(f"  the cache makes writes {report.params['write_speedup_with_cache']:.1f}x and reads "
          f"{report.params['read_speedup_with_cache']:.1f}x faster (local moto; a real KMS round trip is slower)")
    report.targets.append(Target(f"GenerateDataKey calls with cache, {n} objects", on["GenerateDataKey"], "<=", 10,
                                 unit=""))
    report.targets.append(Target(f"Decrypt calls with cache, {n} objects", on["Decrypt"], "<=", 10, unit=""))
    if off["GenerateDataKey"] != off["objects"] or off["Decrypt"] != off["objects"]:
        report.notes.append(f"without the cache expected {off['objects']} GenerateDataKey and Decrypt, "
                            f"saw {off['GenerateDataKey']} and {off['Decrypt']}")
    return report.finish(args)


if __name__ == "__main__":
    sys.exit(main())
