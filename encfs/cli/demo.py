"""``encfs demo``: a guided first run on the embedded default (local keystore).

It writes a realistic sales table as encrypted Parquet and CSV, reads a
column back through ``enc+file://``, shows the bytes at rest, what
``encfs info`` says, the data-key cache counters, and what to try next.
Every claim it prints is checked; a failed check exits non-zero.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import click
from fsspec.implementations.local import LocalFileSystem

from ..errors import EncfsError
from ..file import SMALL_OBJECT
from ..format import HEADER_REGION, MAGIC
from ..keystore import LocalKeystore
from .main import cli

REGIONS = ("North", "South", "East", "West", "Central", "Online")
#: Strings that occur in the plaintext Parquet and CSV and must not occur in
#: the bodies at rest (long enough that ciphertext never holds them by chance).
PLAINTEXT_MARKERS = (b"order_id,date,region", b"product_id", b"unit_price", b"Central", b"Online")


def sales_frame(rows: int, seed: int = 2026) -> Any:
    """A year of synthetic sales: one row per order line."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    day = np.sort(rng.integers(0, 365, rows))
    quantity = rng.integers(1, 20, rows).astype("int32")
    unit_price = np.round(rng.gamma(2.0, 15.0, rows) + 0.99, 2)
    return pd.DataFrame({
        "order_id": np.arange(1, rows + 1, dtype="int64"),
        "date": pd.Timestamp("2025-01-01") + pd.to_timedelta(day, unit="D"),
        "region": pd.Categorical(rng.choice(REGIONS, rows, p=(0.2, 0.15, 0.2, 0.15, 0.1, 0.2)), categories=REGIONS),
        "store_id": rng.integers(1, 121, rows).astype("int16"),
        "product_id": pd.Series(rng.integers(0, 5000, rows)).map("P-{:05d}".format),
        "quantity": quantity,
        "unit_price": unit_price,
        "amount": np.round(quantity * unit_price, 2),
    })


def hexdump(data: bytes, offset: int = 0) -> list[str]:
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"  {offset + i:08x}  {chunk.hex(' '):<47}  {text}")
    return lines


def _step(n: int, title: str) -> None:
    click.echo()
    click.secho(f"[{n}] {title}", bold=True, fg="cyan")


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise EncfsError(f"demo check failed: {what}")
    click.echo(click.style("  ✓ ", fg="green") + what)


class _CountingLocal(LocalFileSystem):
    """A local target that counts the ciphertext bytes encfs asks it for."""

    fetched = 0

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        data = super().cat_file(path, start=start, end=end, **kwargs)
        self.fetched += len(data)
        return data


def _column_read_cost(path: str, column: str, options: dict[str, Any]) -> tuple[int, int]:
    """Ciphertext bytes fetched to read one Parquet column, and the object's size."""
    import pyarrow.parquet as pq

    from ..fs import EncryptedFileSystem

    target = _CountingLocal(skip_instance_cache=True)
    efs = EncryptedFileSystem(fs=target, skip_instance_cache=True, **options)
    # No read-ahead: pyarrow asks for exact column-chunk ranges, so what is
    # fetched is what encfs needs (the covering segments), nothing more.
    with efs.open(path, "rb", cache_type="none") as f:
        pq.read_table(f, columns=[column])
    return target.fetched, int(target.size(path))


@cli.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False), default="encfs-demo", show_default=True,
              help="Folder for the demo files (created; only the demo's own files are overwritten).")
@click.option("--rows", type=click.IntRange(min=1000), default=200_000, show_default=True,
              help="Rows of the sales table.")
@click.option("--keystore", metavar="DIR", default=None,
              help="Local keystore directory (default $ENCFS_HOME or ~/.encfs).")
def demo(directory: str, rows: int, keystore: str | None) -> None:
    """Encrypt a pandas DataFrame as Parquet and CSV, read it back, show the bytes at rest."""
    try:
        import pandas as pd
        import pyarrow.parquet as pq
    except ModuleNotFoundError as exc:
        raise EncfsError(f"the demo needs pandas and pyarrow ({exc.name} is missing): pip install 'encfs[data]'") \
            from exc
    from fsspec.core import url_to_fs

    from .files import describe_object, format_info

    started = time.perf_counter()
    folder = Path(directory).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # Options are references only (a keystore directory, a key URI): they
    # travel in clear in storage_options, pickles and dask task graphs.
    options: dict[str, Any] = {"key": "local://default"}
    if keystore:
        options["keystore"] = str(Path(keystore).expanduser().resolve())

    _step(1, "Local keystore (the embedded default key service)")
    store = LocalKeystore(options.get("keystore"))
    existed = (store.home / "keystore.json").exists()
    key_id = store.ensure_default()
    click.echo(f"  keystore    {store.home} ({'existing' if existed else 'created now'}, owner-only)")
    click.echo(f"  root key    local://default -> local://{key_id}")

    _step(2, f"A sales table: {rows:,} rows")
    df = sales_frame(rows)
    click.echo("  " + df.head(3).to_string().replace("\n", "\n  "))

    # The single-scheme form: pandas 2 takes "enc::..." for a local path (docs/CLIENTS.md).
    parquet_url = f"enc+file://{folder / 'sales.parquet'}"
    csv_url = f"enc+file://{folder / 'sales.csv'}"
    _step(3, "Write it encrypted: Parquet and CSV through enc+file://")
    t0 = time.perf_counter()
    df.to_parquet(parquet_url, row_group_size=max(1, rows // 8), index=False, storage_options=options)
    df.to_csv(csv_url, index=False, storage_options=options)
    click.echo(f"  df.to_parquet({parquet_url!r}, ...)")
    click.echo(f"  df.to_csv({csv_url!r}, ...)")
    efs, ppath = url_to_fs(parquet_url, **options)
    for name in ("sales.parquet", "sales.csv"):
        st = efs.info(str(folder / name))
        click.echo(f"  {name:<14} plaintext {st['size']:>11,} B   at rest {st['encrypted_size']:>11,} B")
    click.echo(f"  written in {time.perf_counter() - t0:.2f} s")

    _step(4, "Read one column back: pd.read_parquet(..., columns=['amount'])")
    back = pd.read_parquet(parquet_url, columns=["amount"], storage_options=options)
    with efs.open(ppath, "rb") as f:
        groups = pq.ParquetFile(f).metadata.num_row_groups
    _check(back["amount"].equals(df["amount"]), f"'amount' column equals the original ({len(back):,} values)")
    fetched, at_rest = _column_read_cost(ppath, "region", options)
    if at_rest > SMALL_OBJECT:
        _check(groups > 1 and fetched < at_rest / 2,
               f"{groups} row groups; pyarrow reading column 'region' (cache_type='none') fetched "
               f"{fetched:,} of {at_rest:,} bytes at rest: only the segments covering its ranges")
    else:  # encfs reads objects this small in one request: fewer round trips
        _check(groups > 1, f"{groups} row groups; the object is small ({at_rest:,} bytes at rest), "
               "so encfs fetched it in one request")
    head = pd.read_csv(csv_url, nrows=1000, storage_options=options, parse_dates=["date"])
    _check(head["amount"].equals(df["amount"].head(1000)), "CSV decrypts to the same rows")

    _step(5, "The bytes at rest are ciphertext")
    raw = (folder / "sales.parquet").read_bytes()
    click.echo(f"  header region (first 48 of {HEADER_REGION} bytes: magic, version, suite, sizes, object id):")
    for line in hexdump(raw[:48]):
        click.echo(line)
    click.echo(f"  body (offset {HEADER_REGION}: AES-256-GCM segments):")
    for line in hexdump(raw[HEADER_REGION : HEADER_REGION + 32], HEADER_REGION):
        click.echo(line)
    _check(raw[:4] == MAGIC, "starts with the ENCF magic, not Parquet's PAR1")
    raw_csv = (folder / "sales.csv").read_bytes()
    plain_head = efs.cat_file(str(folder / "sales.csv"), start=0, end=65536)
    _check(all(m in plain_head for m in PLAINTEXT_MARKERS), "the plaintext CSV holds the marker strings below")
    # Only the bodies are searched: the header holds the path in clear (names
    # are not hidden, see the security model).
    leaked = [m.decode() for m in PLAINTEXT_MARKERS
              if m in raw[HEADER_REGION:] or m in raw_csv[HEADER_REGION:]]
    _check(not leaked, "no column name or value found at rest (searched for "
           + ", ".join(repr(m.decode()) for m in PLAINTEXT_MARKERS) + ")")
    try:
        pd.read_parquet(folder / "sales.parquet")
        readable = True
    except Exception as exc:  # noqa: BLE001 - whatever pandas raises is what anyone without the key gets
        readable = False
        reason = str(exc).splitlines()[0].rsplit("': ", 1)[-1].split(". ")[0] if str(exc) else ""
        click.echo(f"  plain pandas on the file at rest: {type(exc).__name__}: {reason[:80]}")
    _check(not readable, "without encfs the file is unreadable")

    _step(6, f"encfs info {shlex.quote(str(folder / 'sales.parquet'))}")
    report = describe_object(efs, ppath)
    for line in format_info(report):
        click.echo("  " + line)
    _check(report["authenticated"], "header authenticated under the default key")

    stats = efs.cache_stats() if hasattr(efs, "cache_stats") else None
    if stats is not None:
        _step(7, "Data-key cache (key-service calls saved)")
        if stats.get("cache_enabled"):
            click.echo(f"  encrypt: {stats.get('encrypt_hits', 0)} hits, {stats.get('encrypt_misses', 0)} misses;"
                       f"  decrypt: {stats.get('decrypt_hits', 0)} hits, {stats.get('decrypt_misses', 0)} misses")
        click.echo(f"  key-service calls: {stats['generate_calls']} generate, {stats['wrap_calls']} wrap, "
                   f"{stats['unwrap_calls']} unwrap")

    _step(8, "Try next")
    q = shlex.quote
    commands = [
        f"encfs ls -l {q(str(folder))}",
        f"encfs info {q(str(folder / 'sales.parquet'))}",
        f"encfs cat {q(str(folder / 'sales.csv'))} | head -5",
        f"encfs verify {q(str(folder))}",
        f"encfs cp -r enc::{q(str(folder))} {q(str(folder) + '-plain')}",
    ]
    if "keys" in cli.commands:  # registered by encfs/cli/keys.py when installed
        commands.append("encfs keys list")
    for cmd in commands:
        click.echo(f"  $ {cmd}")
    click.echo(f"  python: pd.read_parquet({parquet_url!r}, columns=['region', 'amount'])")
    click.echo()
    click.secho(f"demo done in {time.perf_counter() - started:.1f} s", fg="green", bold=True)
