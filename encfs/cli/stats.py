"""``encfs stats``: what the data-key cache saved, measured on real work.

Two modes, both honest about where the numbers come from:

* ``encfs stats PATH...`` reads the given encrypted objects (directories
  recursively) completely, authenticating every segment as ``cat`` would,
  and prints the cache counters and key-service calls *of this command*
  (differences of the filesystem's counters before and after).
* ``encfs stats`` with no path runs a demo workload: N small objects
  written and read back through a private ``enc::memory://`` target with the
  given root key, once with the cache and once without, side by side.  The
  key-service calls are real calls to the configured key service.

Cache limits come from ``-o enc.cache={"max_age": 60}`` (or ``--no-cache``),
the same storage option the filesystem takes (docs/CACHE.md).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import click

from ..cache import CACHE_COUNTERS
from ..errors import EncfsError
from ..fs import EncryptedFileSystem
from .main import _one_line, cli
from .util import echo, human_size, key_options, location, parse_options

#: Counters that are sums over the work done (differences are meaningful).
COUNTERS = ("generate_calls", "wrap_calls", "unwrap_calls", "key_service_errors", "key_service_calls",
            *CACHE_COUNTERS)
#: Plaintext bytes read per request while reading objects.
READ_CHUNK = 8 * 1024 * 1024


def counters_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Counters of the work between two ``stats()`` snapshots; sizes as of ``after``."""
    out = {k: v for k, v in after.items() if k not in COUNTERS}
    for k in COUNTERS:
        if k in after:
            out[k] = after[k] - before.get(k, 0)
    return out


def _limits_line(limits: Mapping[str, Any]) -> str:
    return (f"max_age {limits['max_age']:g} s, max_objects {limits['max_objects']}, "
            f"max_bytes {human_size(limits['max_bytes'])}, max_entries {limits['max_entries']}, "
            f"max_key_bytes {human_size(limits['max_key_bytes'])}")


def format_stats(s: Mapping[str, Any]) -> list[str]:
    """Human-readable lines for a ``Keyring.stats()`` dictionary (or a delta)."""
    lines = []
    if s.get("cache_enabled"):
        lines.append(f"data-key cache: on ({_limits_line(s['limits'])})")
    else:
        lines.append("data-key cache: off (one key-service call per object written or read)")
    lines.append(f"  key-service calls  {s['key_service_calls']}  (generate {s['generate_calls']}, "
                 f"wrap {s['wrap_calls']}, unwrap {s['unwrap_calls']}; failed {s['key_service_errors']})")
    if s.get("cache_enabled"):
        lines += [
            f"  encrypt            hits {s['encrypt_hits']}, misses {s['encrypt_misses']}",
            f"  decrypt            hits {s['decrypt_hits']}, misses {s['decrypt_misses']}",
            (f"  removed            expired {s['expirations']}, evicted {s['evictions']}, "
             f"retired at a limit {s['retirements']}"),
            (f"  held now           {s['entries']} {'entry' if s['entries'] == 1 else 'entries'} "
             f"({s['encryption_entries']} encryption, {s['decryption_entries']} decryption), "
             f"{s['key_bytes']} key bytes"),
        ]
    return lines


def _read_all(fs: EncryptedFileSystem, path: str) -> int:
    n = 0
    with fs.open(path, "rb", cache_type="none") as f:
        while True:
            chunk = f.read(READ_CHUNK)
            if not chunk:
                return n
            n += len(chunk)


def read_paths(urls: tuple[str, ...], keys: tuple[str, ...], keystore: str | None,
               options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Read every object under ``urls``; return a report with counter deltas."""
    report: dict[str, Any] = {"objects": 0, "bytes": 0, "failed": []}
    systems: dict[int, tuple[EncryptedFileSystem, dict[str, Any]]] = {}
    started = time.perf_counter()
    for url in urls:
        fs, path = location(url, force_encrypted=True, keys=keys, keystore=keystore, options=options).connect()
        assert isinstance(fs, EncryptedFileSystem)
        if id(fs) not in systems:
            systems[id(fs)] = (fs, fs.keyring.stats())
        paths = sorted(fs.find(path)) if fs.isdir(path) else [path]
        for p in paths:
            try:
                report["bytes"] += _read_all(fs, p)
                report["objects"] += 1
            except (EncfsError, OSError) as exc:
                report["failed"].append({"path": p, "error": _one_line(exc)})
    report["seconds"] = time.perf_counter() - started
    deltas = [counters_delta(before, fs.keyring.stats()) for fs, before in systems.values()]
    report["stats"] = _merge(deltas)
    return report


def _merge(deltas: list[dict[str, Any]]) -> dict[str, Any]:
    """One report over several filesystems (paths on different targets)."""
    if len(deltas) == 1:
        return deltas[0]
    # Limits may differ between the filesystems: show those of the first
    # one with a cache; the counters are summed over all.
    out: dict[str, Any] = dict(next((d for d in deltas if d.get("cache_enabled")), deltas[0]))
    for k in COUNTERS + ("entries", "encryption_entries", "decryption_entries", "key_bytes"):
        if any(k in d for d in deltas):
            out[k] = sum(d.get(k, 0) for d in deltas)
    return out


def demo_workload(count: int, size: int, keys: tuple[str, ...], keystore: str | None,
                  enc_options: Mapping[str, Any]) -> dict[str, Any]:
    """Write and read back ``count`` objects of ``size`` bytes with and without
    the cache; return both counter sets and timings."""
    from fsspec.implementations.memory import MemoryFileSystem

    results: dict[str, Any] = {"objects": count, "object_size": size, "keys": list(keys) or ["local://default"]}
    for label, cache in (("cache", enc_options.get("cache", True)), ("no_cache", False)):
        target = MemoryFileSystem(skip_instance_cache=True)
        target.store, target.pseudo_dirs = {}, [""]  # private: never the shared global store
        kwargs = {k: v for k, v in enc_options.items() if k != "cache"}
        fs = EncryptedFileSystem(fs=target, key=list(keys) or None, keystore=keystore, cache=cache,
                                 skip_instance_cache=True, **kwargs)
        payloads = [os.urandom(size) for _ in range(count)]
        t0 = time.perf_counter()
        for i, data in enumerate(payloads):
            fs.pipe_file(f"/stats-demo/{i:06d}", data)
        t1 = time.perf_counter()
        for i, data in enumerate(payloads):
            if fs.cat_file(f"/stats-demo/{i:06d}") != data:
                raise EncfsError(f"demo object {i} read back wrong")  # never expected: a real failure
        t2 = time.perf_counter()
        results[label] = {"write_seconds": t1 - t0, "read_seconds": t2 - t1, "stats": fs.keyring.stats()}
    return results


def _print_demo(r: dict[str, Any]) -> None:
    on, off = r["cache"]["stats"], r["no_cache"]["stats"]
    echo(f"demo: {r['objects']} objects of {r['object_size']} B written and read back through "
         f"enc::memory:// with {', '.join(r['keys'])}")
    click.echo(f"cache limits: {_limits_line(on['limits'])}")
    rows = [
        ("key-service calls", "key_service_calls"),
        ("  generate data key", "generate_calls"),
        ("  wrap (extra root keys)", "wrap_calls"),
        ("  unwrap", "unwrap_calls"),
        ("  failed", "key_service_errors"),
    ]
    click.echo(f"{'':26}{'cache on':>12}{'cache off':>12}")
    for title, key in rows:
        click.echo(f"{title:26}{on[key]:>12}{off[key]:>12}")
    for title, label in (("write objects/s", "write_seconds"), ("read objects/s", "read_seconds")):
        rate_on = r["objects"] / max(r["cache"][label], 1e-9)
        rate_off = r["objects"] / max(r["no_cache"][label], 1e-9)
        click.echo(f"{title:26}{rate_on:>12.0f}{rate_off:>12.0f}")
    click.echo("")
    for line in format_stats(on):
        click.echo(line)


@cli.command()
@click.argument("paths", nargs=-1, metavar="[PATH...]")
@click.option("-n", "--objects", "count", type=click.IntRange(min=1, max=1_000_000), default=1000, show_default=True,
              help="Demo only (no PATH): number of objects to write and read back.")
@click.option("--size", type=click.IntRange(min=0, max=16 * 1024 * 1024), default=1024, show_default=True,
              help="Demo only: plaintext bytes per object.")
@click.option("--no-cache", is_flag=True, help="Turn the data-key cache off (same as -o enc.cache=false).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@key_options
def stats(paths: tuple[str, ...], count: int, size: int, no_cache: bool, as_json: bool, keys: tuple[str, ...],
          keystore: str | None, options: tuple[str, ...]) -> None:
    """Data-key cache counters and key-service calls.

    With PATHs: read those encrypted objects (directories recursively) and
    print what it cost.  Without: a demo of many small objects, with and
    without the cache.
    """
    opts = parse_options(options)
    if no_cache:
        opts.setdefault("enc", {})["cache"] = False
    if not paths:
        if opts.get("enc", {}).get("cache", True) is False:
            raise click.UsageError("the demo always compares cache on and off; --no-cache is for PATHs")
        result = demo_workload(count, size, keys, keystore, opts.get("enc", {}))
        if as_json:
            click.echo(json.dumps(result, indent=2, sort_keys=True))
        else:
            _print_demo(result)
        return
    report = read_paths(paths, keys, keystore, opts)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo(f"read {report['objects']} object(s), {human_size(report['bytes'])} of plaintext, "
                   f"in {report['seconds']:.2f} s")
        for line in format_stats(report["stats"]):
            click.echo(line)
        for fail in report["failed"]:
            echo(f"encfs: error: {fail['error']}" if fail["path"] in fail["error"]
                       else f"encfs: error: {fail['path']}: {fail['error']}", err=True)
    if report["failed"]:
        click.get_current_context().exit(1)
