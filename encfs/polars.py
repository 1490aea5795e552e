"""Polars over encfs: scans that read only the columns and row groups asked for.

Polars' own readers (``pl.read_parquet``, ``pl.scan_parquet``, ``pl.read_csv``
given a URL) go to its Rust object-store layer, which knows no fsspec
protocol: it takes ``enc::s3://...`` for a local path and does not know
``enc+s3://``.  Handed an open file object instead, polars reads the whole
object even for one column.

Here polars scans a pyarrow dataset over encfs (``pl.scan_pyarrow_dataset``):
polars pushes the selected columns and the filter down to pyarrow, which
fetches only those column chunks, skips row groups whose statistics rule
the filter out, and skips hive partitions by their directory names; encfs
turns each of those byte ranges into one ranged request of the covering
segments.

>>> from encfs import polars as epl
>>> lf = epl.scan_parquet("enc+s3://lake/sales/", storage_options={"key": "aws-kms://alias/lake"})
>>> lf.filter(pl.col("region") == "eu").select("amount").collect()           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fsspec
import polars as pl
import pyarrow.dataset as pads
from pyarrow.fs import FSSpecHandler, PyFileSystem

__all__ = ["dataset", "read_csv", "read_parquet", "scan_parquet", "write_csv", "write_parquet"]


def _resolve(source: str, storage_options: Mapping[str, Any] | None, filesystem: Any) -> tuple[Any, str]:
    if filesystem is not None:
        if storage_options:
            raise ValueError("give either filesystem= or storage_options=, not both")
        # The target's own path, the form the filesystem's listings use.
        to_path = getattr(filesystem, "_target_path", filesystem._strip_protocol)
        return filesystem, to_path(source).rstrip("/") or "/"
    fs, path = fsspec.url_to_fs(source, **dict(storage_options or {}))
    return fs, path.rstrip("/") or "/"


def dataset(source: str, *, storage_options: Mapping[str, Any] | None = None, filesystem: Any = None,
            format: str = "parquet", partitioning: Any = "hive", **kwargs: Any) -> pads.Dataset:
    """A pyarrow dataset (one file or a directory tree) read through encfs.

    ``source`` is an encfs URL (``enc+s3://...``, ``enc::file://...``) with
    ``storage_options`` as for pandas, or a path on ``filesystem``, an
    encfs filesystem instance.  Other keywords go to ``pyarrow.dataset.dataset``.
    """
    fs, path = _resolve(source, storage_options, filesystem)
    return pads.dataset(path, filesystem=PyFileSystem(FSSpecHandler(fs)), format=format,
                        partitioning=partitioning, **kwargs)


def scan_parquet(source: str, *, storage_options: Mapping[str, Any] | None = None, filesystem: Any = None,
                 partitioning: Any = "hive", **kwargs: Any) -> pl.LazyFrame:
    """A LazyFrame over encrypted Parquet: ``select``/``filter`` before
    ``collect()`` decide which bytes are fetched."""
    ds = dataset(source, storage_options=storage_options, filesystem=filesystem, format="parquet",
                 partitioning=partitioning, **kwargs)
    return pl.scan_pyarrow_dataset(ds)


def read_parquet(source: str, *, columns: list[str] | None = None, storage_options: Mapping[str, Any] | None = None,
                 filesystem: Any = None, partitioning: Any = "hive") -> pl.DataFrame:
    """``scan_parquet(...).select(columns).collect()``."""
    lf = scan_parquet(source, storage_options=storage_options, filesystem=filesystem, partitioning=partitioning)
    return (lf.select(columns) if columns is not None else lf).collect()


def write_parquet(df: pl.DataFrame, dest: str, *, storage_options: Mapping[str, Any] | None = None,
                  **kwargs: Any) -> None:
    """Write one encrypted Parquet object (keywords go to ``DataFrame.write_parquet``)."""
    with fsspec.open(dest, "wb", **dict(storage_options or {})) as f:
        df.write_parquet(f, **kwargs)


def read_csv(source: str, *, storage_options: Mapping[str, Any] | None = None, compression: str | None = "infer",
             **kwargs: Any) -> pl.DataFrame:
    """Read a whole encrypted CSV (``.gz`` and other suffixes decompressed by
    fsspec); keywords go to ``pl.read_csv``."""
    with fsspec.open(source, "rb", compression=compression, **dict(storage_options or {})) as f:
        return pl.read_csv(f, **kwargs)


def write_csv(df: pl.DataFrame, dest: str, *, storage_options: Mapping[str, Any] | None = None,
              compression: str | None = "infer", **kwargs: Any) -> None:
    """Write an encrypted CSV (compressed by the name's suffix, e.g. ``.csv.gz``)."""
    with fsspec.open(dest, "wb", compression=compression, **dict(storage_options or {})) as f:
        df.write_csv(f, **kwargs)
