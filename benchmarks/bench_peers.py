"""encfs against the libraries people use today (DESIGN.md section 6).

- AWS Encryption SDK for Python, with a raw AES-256 wrapping key
  (``RawMasterKey``; no KMS involved, so only the data path is measured):
  the non-signing committing suite AES_256_GCM_HKDF_SHA512_COMMIT_KEY at
  4 KiB and 64 KiB frames, and its default suite (committing + ECDSA P-384
  signature, 4 KiB frames).  One-shot ``encrypt``/``decrypt`` on bytes, its
  fastest API.  Installed into the current environment when that changes no
  installed package; run in the same process, interleaved with encfs.
- fsspec-encrypted (unauthenticated AES-CBC, whole object): it pins an older
  cryptography and fsspec and registers the same ``enc`` protocol, so it runs
  in benchmarks/.venv-peers (created here) as a subprocess printing JSON.
  Its numbers come from another process; they are also given as a ratio to
  raw AES-GCM measured in that venv.

encfs is measured as in bench_throughput.py: ``enc::memory://``, 64 KiB
segments, 1 MiB write/read calls.  Target (issue 4): encfs >= 3x the fastest
AWS Encryption SDK configuration, for writes and for reads, on CPU time (all
cases are single-threaded computation; wall-time ratios are shown too).

    python benchmarks/bench_peers.py            # 256 MiB, 3 rounds
    python benchmarks/bench_peers.py --quick    # 16 MiB, 2 rounds
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import venv
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, MiB, Report, Target, interleaved_wall_cpu, mbps, parser, table, temp_dir
from bench_throughput import enc_over, private_memory, read_stream, write_stream

VENV = HERE / ".venv-peers"
PIP_QUIET = ["-q", "--disable-pip-version-check"]


# -- where a peer runs ---------------------------------------------------------
def _would_change_installed(dist: str) -> list[str]:
    """Installed distributions that ``pip install dist`` would replace."""
    from importlib.metadata import PackageNotFoundError, version

    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--report", "-", *PIP_QUIET, dist],
                         capture_output=True, text=True, check=True).stdout
    changed = []
    for item in json.loads(out).get("install", []):
        name, ver = item["metadata"]["name"], item["metadata"]["version"]
        try:
            if version(name) != ver:
                changed.append(f"{name} {version(name)} -> {ver}")
        except PackageNotFoundError:
            pass
    return changed


def ensure_in_current_env(dist: str, module: str) -> tuple[bool, str]:
    """Make ``module`` importable here if that conflicts with nothing."""
    if importlib.util.find_spec(module) is not None:
        return True, "already installed"
    try:
        changed = _would_change_installed(dist)
    except (subprocess.CalledProcessError, json.JSONDecodeError) as exc:
        return False, f"pip could not resolve {dist}: {exc}"
    if changed:
        return False, "conflicts with installed packages: " + ", ".join(changed)
    subprocess.run([sys.executable, "-m", "pip", "install", *PIP_QUIET, dist], check=True)
    importlib.invalidate_caches()
    return importlib.util.find_spec(module) is not None, "installed into the current environment"


def venv_python(dists: list[str]) -> Path:
    """benchmarks/.venv-peers with ``dists`` installed (created on first use)."""
    py = VENV / "bin" / "python"
    if not py.exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    missing = [d for d in dists
               if subprocess.run([str(py), "-m", "pip", "show", "-q", d], capture_output=True, check=False).returncode != 0]
    if missing:
        subprocess.run([str(py), "-m", "pip", "install", *PIP_QUIET, *missing], check=True)
    return py


# -- the AWS Encryption SDK ------------------------------------------------------
def aws_sdk_cases(payload: bytes) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], Any]], str]:
    import aws_encryption_sdk
    from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy, EncryptionKeyType, WrappingAlgorithm
    from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
    from aws_encryption_sdk.key_providers.raw import RawMasterKey, RawMasterKeyConfig

    wrapping = WrappingKey(wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
                           wrapping_key=os.urandom(32), wrapping_key_type=EncryptionKeyType.SYMMETRIC)
    master = RawMasterKey(config=RawMasterKeyConfig(key_id=b"bench-key", provider_id="bench", wrapping_key=wrapping))
    client = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    configs: dict[str, dict[str, Any]] = {
        "AWS SDK commit, 4 KiB frames": {"algorithm": Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY, "frame_length": 4096},
        "AWS SDK commit, 64 KiB frames": {"algorithm": Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
                                          "frame_length": 65536},
        "AWS SDK default suite (ECDSA P-384, 4 KiB)": {},
    }
    writes: dict[str, Callable[[], Any]] = {}
    reads: dict[str, Callable[[], Any]] = {}
    for name, kw in configs.items():
        ct, _ = client.encrypt(source=payload, key_provider=master, **kw)
        pt, _ = client.decrypt(source=ct, key_provider=master)
        assert pt == payload
        writes[name] = partial(client.encrypt, source=payload, key_provider=master, **kw)
        reads[name] = partial(client.decrypt, source=ct, key_provider=master)
    return writes, reads, aws_encryption_sdk.__version__


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--size-mib", type=int, default=None, help="payload size (default 256, quick 16)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved repetitions (default 3, quick 2)")
    p.add_argument("--no-venv", action="store_true", help="skip peers that need benchmarks/.venv-peers")
    args = p.parse_args(argv)
    size_mib = args.size_mib or (16 if args.quick else 256)
    size = size_mib * MiB
    rounds = args.rounds or (2 if args.quick else 3)
    report = Report("peers", params={"size_MiB": size_mib, "rounds": rounds})
    payload = os.urandom(size)
    view = memoryview(payload)

    with temp_dir() as ks:
        efs = enc_over(private_memory(), ks)
        writes: dict[str, Callable[[], Any]] = {"encfs enc::memory:// (64 KiB)": lambda: write_stream(efs, "/e", view)}
        reads: dict[str, Callable[[], Any]] = {"encfs enc::memory:// (64 KiB)": lambda: read_stream(efs, "/e")}
        ok, how = ensure_in_current_env("aws-encryption-sdk", "aws_encryption_sdk")
        report.notes.append(f"aws-encryption-sdk: {how}")
        if ok:
            w, r, ver = aws_sdk_cases(payload)
            writes.update(w)
            reads.update(r)
            report.params["aws-encryption-sdk"] = ver
        print(f"writes: {size_mib} MiB x {rounds} rounds, interleaved ...", flush=True)
        wt, wc = interleaved_wall_cpu(writes, rounds)
        print(f"reads: {size_mib} MiB x {rounds} rounds, interleaved ...", flush=True)
        rt, rc = interleaved_wall_cpu(reads, rounds)

    enc_name = "encfs enc::memory:// (64 KiB)"
    for name in writes:
        report.rows.append({"case": name, "write MiB/s": mbps(size, wt[name]), "read MiB/s": mbps(size, rt[name]),
                            "encfs write speed-up": wc[name] / wc[enc_name], "encfs read speed-up": rc[name] / rc[enc_name],
                            "encfs write speed-up (wall)": wt[name] / wt[enc_name],
                            "encfs read speed-up (wall)": rt[name] / rt[enc_name], "same process": True})

    if not args.no_venv:
        try:
            py = venv_python(["fsspec-encrypted"])
            res = subprocess.run([str(py), str(HERE / "_peer_worker.py"), "fsspec-encrypted", str(size_mib), str(rounds)],
                                 capture_output=True, text=True, timeout=1800, check=False)
            peer = json.loads(res.stdout.strip().splitlines()[-1])
        except Exception as exc:  # noqa: BLE001  # a peer that does not install is reported, not fatal
            peer = {"error": f"{type(exc).__name__}: {exc}"}
        if "error" in peer:
            report.notes.append(f"fsspec-encrypted: not measured ({peer['error']})")
        else:
            report.notes.append(f"fsspec-encrypted ran in {VENV.name} ({peer['versions']}); its numbers come from "
                                "another process. It is AES-CBC without authentication (not a like-for-like peer).")
            report.rows.append({
                "case": "fsspec-encrypted (AES-CBC, whole object, venv)",
                "write MiB/s": mbps(size, peer["write_s"]), "read MiB/s": mbps(size, peer["read_s"]),
                "encfs write speed-up": peer["cpu_s"]["write"] / wc[enc_name],
                "encfs read speed-up": peer["cpu_s"]["read"] / rc[enc_name],
                "encfs write speed-up (wall)": peer["write_s"] / wt[enc_name],
                "encfs read speed-up (wall)": peer["read_s"] / rt[enc_name], "same process": False, "peer write vs its raw AES-GCM": peer["raw_write_s"] / peer["write_s"],
                "peer read vs its raw AES-GCM": peer["raw_read_s"] / peer["read_s"]})

    print(table(["case", "write MiB/s", "read MiB/s", "encfs x faster, write (CPU/wall)", "encfs x faster, read (CPU/wall)"],
                [[r["case"], r["write MiB/s"], r["read MiB/s"],
                  f"{r['encfs write speed-up']:.2f}x / {r['encfs write speed-up (wall)']:.2f}x",
                  f"{r['encfs read speed-up']:.2f}x / {r['encfs read speed-up (wall)']:.2f}x"] for r in report.rows]))
    sdk = [n for n in writes if n.startswith("AWS SDK")]
    if sdk:
        # CPU time, as in bench_throughput.py: every case here is one thread
        # computing, and wall time would also count waits for a core.
        fastest_w = min(sdk, key=lambda n: wc[n])
        fastest_r = min(sdk, key=lambda n: rc[n])
        report.targets.append(Target(f"encfs write / fastest AWS SDK encrypt ({fastest_w}, CPU time)",
                                     wc[fastest_w] / wc[enc_name], ">=", 3.0))
        report.targets.append(Target(f"encfs read / fastest AWS SDK decrypt ({fastest_r}, CPU time)",
                                     rc[fastest_r] / rc[enc_name], ">=", 3.0))
        report.notes.append(f"wall-time ratios to the fastest AWS SDK configuration: write "
                            f"{min(wt[n] for n in sdk) / wt[enc_name]:.2f}x, read {min(rt[n] for n in sdk) / rt[enc_name]:.2f}x")
    return report.finish(args)


if __name__ == "__main__":
    sys.exit(main())
