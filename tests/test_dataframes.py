"""Dataframe libraries through encfs: pandas (Parquet, CSV), pyarrow
(``pq.read_table``, ``pyarrow.dataset`` over ``PyFileSystem(FSSpecHandler)``),
polars and dask, over ``enc::memory://`` and ``enc::file://`` URLs.

Each round trip also checks that the bytes at rest are ciphertext, so a test
would fail if a library found a way around encryption.
"""

from __future__ import annotations

import uuid

import fsspec
import numpy as np
import pandas as pd
import pytest

from encfs import EncryptedFileSystem
from encfs.format import MAGIC

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    n = 5000
    return pd.DataFrame({
        "id": np.arange(n, dtype="int64"),
        "amount": rng.normal(100, 20, n).round(2),
        "region": rng.choice(["eu", "us", "apac"], n),
        "note": [f"order {i} of customer {i % 97}" for i in range(n)],
    })


@pytest.fixture(params=["memory", "file"])
def base_url(request, tmp_path):
    """A fresh root URL and the plain target filesystem holding its bytes."""
    if request.param == "memory":
        # fsspec's memory store is global: a unique root, removed afterwards.
        root = f"/encfs-test-{uuid.uuid4().hex}"
        plain = fsspec.filesystem("memory")
        yield f"enc::memory://{root}", plain, root
        if plain.exists(root):
            plain.rm(root, recursive=True)
    else:
        yield f"enc::file://{tmp_path}", fsspec.filesystem("file"), str(tmp_path)


@pytest.fixture
def so(encfs_home) -> dict[str, str]:
    return {"keystore": str(encfs_home)}


def _assert_ciphertext(plain, path: str, marker: bytes) -> None:
    raw = plain.cat_file(path)
    assert raw[:4] == MAGIC
    assert marker not in raw


def test_pandas_parquet_roundtrip_and_single_column(base_url, so, frame):
    url, plain, root = base_url
    frame.to_parquet(f"{url}/sales.parquet", storage_options=so)
    _assert_ciphertext(plain, f"{root}/sales.parquet", b"order 4999 of customer")
    back = pd.read_parquet(f"{url}/sales.parquet", storage_options=so)
    pd.testing.assert_frame_equal(back, frame)
    one = pd.read_parquet(f"{url}/sales.parquet", columns=["amount"], storage_options=so)
    pd.testing.assert_frame_equal(one, frame[["amount"]])


def test_pandas_csv_roundtrip(base_url, so, frame):
    url, plain, root = base_url
    frame.to_csv(f"{url}/sales.csv", index=False, storage_options=so)
    _assert_ciphertext(plain, f"{root}/sales.csv", b"order 4999")
    back = pd.read_csv(f"{url}/sales.csv", storage_options=so)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    # compression on top of encryption.  pandas infers no compression from
    # chained URLs ("a::b", also fsspec's own simplecache::), so name it.
    frame.to_csv(f"{url}/sales.csv.gz", index=False, storage_options=so, compression="gzip")
    back = pd.read_csv(f"{url}/sales.csv.gz", storage_options=so, compression="gzip")
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)


def test_pq_read_table_through_the_fsspec_filesystem(base_url, so, frame):
    url, _, _ = base_url
    fs, root = fsspec.url_to_fs(url, **so)
    assert isinstance(fs, EncryptedFileSystem)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    # several row groups, so column reads are ranged reads inside the object
    pq.write_table(table, f"{root}/t.parquet", filesystem=fs, row_group_size=1000)
    assert pq.read_table(f"{root}/t.parquet", filesystem=fs).equals(table)
    amount = pq.read_table(f"{root}/t.parquet", filesystem=fs, columns=["amount"])
    assert amount.column("amount").to_pylist() == frame["amount"].tolist()
    assert pq.ParquetFile(fs.open(f"{root}/t.parquet", "rb")).metadata.num_row_groups == 5


def test_pyarrow_dataset_partitioned(base_url, so, frame):
    ds = pytest.importorskip("pyarrow.dataset")
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    url, plain, _ = base_url
    fs, root = fsspec.url_to_fs(url, **so)
    pafs = PyFileSystem(FSSpecHandler(fs))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    ds.write_dataset(table, f"{root}/lake", format="parquet", filesystem=pafs,
                     partitioning=ds.partitioning(pa.schema([("region", pa.string())]), flavor="hive"))
    files = [p for p in fs.find(f"{root}/lake") if p.endswith(".parquet")]
    assert {p.split("/")[-2] for p in files} == {"region=eu", "region=us", "region=apac"}
    for p in files:
        assert plain.cat_file(p, start=0, end=4) == MAGIC
    dataset = ds.dataset(f"{root}/lake", format="parquet", filesystem=pafs, partitioning="hive")
    got = dataset.to_table().to_pandas().sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[frame.columns.tolist()], frame, check_dtype=False,
                                  check_categorical=False)
    eu = dataset.to_table(columns=["id", "amount"], filter=ds.field("region") == "eu")
    assert sorted(eu.column("id").to_pylist()) == frame.loc[frame.region == "eu", "id"].tolist()


def test_polars_through_file_objects(base_url, so, frame):
    pl = pytest.importorskip("polars")
    url, plain, root_plain = base_url
    fs, root = fsspec.url_to_fs(url, **so)
    pdf = pl.from_pandas(frame)
    # polars resolves URLs itself and knows no fsspec chains: it is given
    # encfs file objects.
    with fs.open(f"{root}/p.parquet", "wb") as f:
        pdf.write_parquet(f)
    assert plain.cat_file(f"{root_plain}/p.parquet", start=0, end=4) == MAGIC
    with fs.open(f"{root}/p.parquet", "rb") as f:
        assert pl.read_parquet(f).equals(pdf)
    with fs.open(f"{root}/p.parquet", "rb") as f:
        assert pl.read_parquet(f, columns=["amount"])["amount"].to_list() == frame["amount"].tolist()
    with fs.open(f"{root}/p.csv", "wb") as f:
        pdf.write_csv(f)
    with fs.open(f"{root}/p.csv", "rb") as f:
        assert pl.read_csv(f).equals(pdf)


def test_url_to_fs_gives_the_inner_path_for_dask(tmp_path, so, frame):
    fs, path = fsspec.url_to_fs(f"enc::file://{tmp_path}/lake/part.parquet", **so)
    assert isinstance(fs, EncryptedFileSystem)
    assert path == f"{tmp_path}/lake/part.parquet"


def test_dask_roundtrip(tmp_path, so, frame):
    dd = pytest.importorskip("dask.dataframe")
    url = f"enc::file://{tmp_path}/dk"
    dd.from_pandas(frame, npartitions=3).to_parquet(url, storage_options=so)
    parts = sorted(p.name for p in (tmp_path / "dk").iterdir())
    assert len([p for p in parts if p.endswith(".parquet")]) == 3
    for p in (tmp_path / "dk").iterdir():
        assert p.read_bytes()[:4] == MAGIC
    back = dd.read_parquet(url, storage_options=so, columns=["id", "amount"]).compute()
    pd.testing.assert_frame_equal(back.sort_values("id").reset_index(drop=True),
                                  frame[["id", "amount"]], check_dtype=False, check_index_type=False)


class _FailsAt:
    """A cell that cannot be formatted: pandas fails part-way through a write."""

    def __init__(self, i: int, bad: int) -> None:
        self.i, self.bad = i, bad

    def __str__(self) -> str:
        if self.i == self.bad:
            raise RuntimeError("cannot format this row")
        return f"v{self.i}"

    __repr__ = __str__


def test_pandas_write_failing_midway_leaves_nothing(tmp_path, so):
    """pandas closes its handle in ``__exit__`` without passing the error
    on; encfs must still discard, not commit the rows written so far."""
    n = 1000
    df = pd.DataFrame({"a": range(n), "b": [_FailsAt(i, 900) for i in range(n)], "pad": ["x" * 200] * n})
    with pytest.raises(RuntimeError, match="cannot format"):
        df.to_csv(f"enc::file://{tmp_path}/x.csv", chunksize=10, storage_options=so)
    assert list(tmp_path.iterdir()) == []
