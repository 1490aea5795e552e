"""Every client a data team uses, through encfs (issue 9.4).

pandas (Parquet, CSV with compression, JSON lines), pyarrow datasets (hive
partitions, filtered reads), polars (encfs.polars), DuckDB
(``register_filesystem``), dask on a 2-process LocalCluster, zarr v3 and
xarray, each over four URL styles: ``enc::file://``, ``enc+file://``,
``enc::s3://`` and ``enc+s3://`` (moto server on 127.0.0.1).

Every test checks the values read back and that the objects at rest are
ciphertext: each starts with the encfs magic and none holds the plaintext
marker, while at least one object decrypts to text holding it (so the
check can fail).  Data is small and the expensive fixtures (keystore,
bucket, LocalCluster) are shared by the module.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pytest
from fsspec.implementations.local import LocalFileSystem

from encfs import EncryptedFileSystem
from encfs.format import MAGIC
from encfs.forms import EncFileFileSystem

try:
    from tests._servers import REGION, unique
except ImportError:  # tests/ is not a package
    from _servers import REGION, unique

pa = pytest.importorskip("pyarrow")

MARKER = "clients-plaintext-marker"
STYLES = ["enc::file", "enc+file", "enc::s3", "enc+s3"]


@dataclass
class Site:
    """A fresh root in one URL style, its options and the plain target under it."""

    style: str
    url: str  # root URL in that style
    so: dict[str, Any]  # storage options, as a user passes them
    raw: Any  # the plain target filesystem
    root: str  # the root's path on the target

    def u(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def efs(self) -> EncryptedFileSystem:
        return fsspec.url_to_fs(self.url, **self.so)[0]

    @property
    def duckdb_url(self) -> str:
        """DuckDB routes by scheme: ``enc+<target>://`` as is, and the chained
        style's filesystem (protocol ``enc``) through ``enc://<path>``."""
        return self.url if "+" in self.style else f"enc://{self.root}"

    def assert_sealed(self, rel: str, *, expect_marker: bool = True) -> list[str]:
        """Every object under ``rel`` is ciphertext; returns their target paths."""
        self.raw.invalidate_cache()
        paths = [p for p in self.raw.find(f"{self.root}/{rel}") if "/." not in p]
        assert paths, f"nothing written under {rel}"
        efs, marker, seen = self.efs(), MARKER.encode(), False
        for p in paths:
            raw = self.raw.cat_file(p)
            assert raw[:4] == MAGIC, p
            assert marker not in raw, p
            seen = seen or marker in efs.cat_file(p)
        if expect_marker:
            assert seen, "no object decrypted to the marker: the check could not have failed"
        return paths


@pytest.fixture(scope="module")
def keystore(tmp_path_factory) -> str:
    ks = str(tmp_path_factory.mktemp("clients-keystore"))
    # Create the default root key now, not concurrently in two dask workers.
    EncryptedFileSystem(target_protocol="memory", keystore=ks, skip_instance_cache=True).pipe_file(
        f"/clients-{uuid.uuid4().hex}", b"x")
    return ks


@pytest.fixture(scope="module")
def bucket(moto_server) -> str:
    name = unique("clients")
    moto_server.boto3("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def raw_s3(moto_server):
    return moto_server.s3fs()


def _site(style: str, request, keystore: str) -> Site:
    name = uuid.uuid4().hex[:12]
    if style.endswith("file"):
        root = str(request.getfixturevalue("tmp_path") / name)
        # Local directories are made on write, as for any fsspec file:// URL.
        so = {"keystore": keystore, "file": {"auto_mkdir": True}}
        raw = fsspec.filesystem("file")
        url = f"enc+file://{root}" if style == "enc+file" else f"enc::file://{root}"
    else:
        moto = request.getfixturevalue("moto_server")
        root = f"{request.getfixturevalue('bucket')}/{name}"
        # Credentials come from the environment (moto's dummies), so the
        # options hold no secret.
        so = {"keystore": keystore,
              "s3": {"client_kwargs": {"endpoint_url": moto.endpoint, "region_name": REGION}}}
        raw = request.getfixturevalue("raw_s3")
        url = f"enc+s3://{root}" if style == "enc+s3" else f"enc::s3://{root}"
    return Site(style=style, url=url, so=so, raw=raw, root=root)


@pytest.fixture(params=STYLES)
def site(request, keystore) -> Site:
    return _site(request.param, request, keystore)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(9)
    n = 3000
    return pd.DataFrame({
        "id": np.arange(n, dtype="int64"),
        "amount": rng.normal(100, 20, n).round(2),
        "region": rng.choice(["eu", "us", "apac"], n),
        "note": [f"{MARKER} {i}" for i in range(n)],
    })


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values("id").reset_index(drop=True)


# -- pandas ----------------------------------------------------------------------------------------
def test_pandas_parquet_csv_json(site, frame):
    so = site.so
    frame.to_parquet(site.u("t.parquet"), storage_options=so, compression=None)
    back = pd.read_parquet(site.u("t.parquet"), columns=["id", "note"], storage_options=so)
    pd.testing.assert_frame_equal(back, frame[["id", "note"]])
    site.assert_sealed("t.parquet")

    # Compression on top of encryption; the single-scheme form lets pandas
    # infer it from the name (it infers nothing from a chained URL).
    gz = {} if "+" in site.style else {"compression": "gzip"}
    frame.to_csv(site.u("t.csv.gz"), index=False, storage_options=so, **gz)
    pd.testing.assert_frame_equal(pd.read_csv(site.u("t.csv.gz"), storage_options=so, **gz), frame)
    site.assert_sealed("t.csv.gz", expect_marker=False)  # the plaintext is gzip
    assert site.efs().cat_file(f"{site.root}/t.csv.gz")[:2] == b"\x1f\x8b"

    frame.to_json(site.u("t.jsonl"), orient="records", lines=True, storage_options=so)
    back = pd.read_json(site.u("t.jsonl"), orient="records", lines=True, storage_options=so)
    pd.testing.assert_frame_equal(back, frame)
    site.assert_sealed("t.jsonl")


# -- pyarrow ---------------------------------------------------------------------------------------
def test_pyarrow_dataset_hive_write_and_filtered_read(site, frame):
    ds = pytest.importorskip("pyarrow.dataset")
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, root = fsspec.url_to_fs(site.u("lake"), **site.so)
    pafs = PyFileSystem(FSSpecHandler(fs))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    ds.write_dataset(table, root, format="parquet", filesystem=pafs,
                     partitioning=ds.partitioning(pa.schema([("region", pa.string())]), flavor="hive"),
                     file_options=ds.ParquetFileFormat().make_write_options(compression="none"))
    paths = site.assert_sealed("lake")
    assert {p.split("/")[-2] for p in paths} == {"region=eu", "region=us", "region=apac"}
    dataset = ds.dataset(root, format="parquet", filesystem=pafs, partitioning="hive")
    eu = dataset.to_table(columns=["id", "amount"], filter=ds.field("region") == "eu").to_pandas()
    expected = frame.loc[frame.region == "eu", ["id", "amount"]]
    pd.testing.assert_frame_equal(_sorted(eu), _sorted(expected))


# -- polars ----------------------------------------------------------------------------------------
def test_polars_helper(site, frame):
    pl = pytest.importorskip("polars")
    from encfs import polars as epl

    pdf = pl.from_pandas(frame)
    epl.write_parquet(pdf, site.u("p.parquet"), storage_options=site.so, compression="uncompressed",
                      row_group_size=500)
    site.assert_sealed("p.parquet")
    got = (epl.scan_parquet(site.u("p.parquet"), storage_options=site.so)
           .filter(pl.col("region") == "us").select("id", "amount").collect())
    expected = pdf.filter(pl.col("region") == "us").select("id", "amount")
    assert got.sort("id").equals(expected)
    assert epl.read_parquet(site.u("p.parquet"), columns=["note"], storage_options=site.so).equals(
        pdf.select("note"))

    epl.write_csv(pdf, site.u("p.csv.gz"), storage_options=site.so)
    site.assert_sealed("p.csv.gz", expect_marker=False)
    assert epl.read_csv(site.u("p.csv.gz"), storage_options=site.so).equals(pdf)


# -- DuckDB ----------------------------------------------------------------------------------------
def test_duckdb_parquet_csv_json_globs_and_hive(site, frame):
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    con.register_filesystem(site.efs())
    con.register("frame", frame)
    url = site.duckdb_url

    # Writes: a hive-partitioned Parquet tree, gzip CSV, JSON.  A partitioned
    # COPY checks that its directory is empty, by listing it; an object store
    # has no empty directories (fsspec raises FileNotFoundError for the
    # listing, as for plain s3fs), so there the check is waived.
    waive = ", OVERWRITE_OR_IGNORE true" if site.style.endswith("s3") else ""
    con.sql(f"COPY frame TO '{url}/hive' (FORMAT parquet, COMPRESSION uncompressed, PARTITION_BY (region){waive})")
    con.sql(f"COPY (SELECT * FROM frame WHERE id < 1500) TO '{url}/csv/a.csv.gz' (FORMAT csv, COMPRESSION gzip)")
    con.sql(f"COPY (SELECT * FROM frame WHERE id >= 1500) TO '{url}/csv/b.csv.gz' (FORMAT csv, COMPRESSION gzip)")
    con.sql(f"COPY frame TO '{url}/rows.json' (FORMAT json)")
    paths = site.assert_sealed("hive")
    assert {p.split("/")[-2] for p in paths} == {"region=eu", "region=us", "region=apac"}
    site.assert_sealed("csv", expect_marker=False)
    site.assert_sealed("rows.json")

    # Reads: globs, hive partitions (with pruning by the filter), CSV, JSON.
    eu = con.sql(f"SELECT id, amount, region FROM read_parquet('{url}/hive/*/*.parquet', hive_partitioning=true) "
                 "WHERE region = 'eu' ORDER BY id").df()
    expected = frame.loc[frame.region == "eu", ["id", "amount", "region"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(eu, expected, check_dtype=False)
    assert con.sql(f"SELECT count(*), sum(id) FROM read_csv('{url}/csv/*.csv.gz')").fetchall()[0] == (
        len(frame), int(frame.id.sum()))
    notes = con.sql(f"SELECT note FROM read_json('{url}/*.json') ORDER BY id").df()["note"]
    assert notes.tolist() == frame.note.tolist()
    # Glob results come back in the target's single-scheme form, which the
    # registered filesystem declares (that is how DuckDB routes them).
    found = [row[0] for row in con.sql(f"SELECT file FROM glob('{url}/hive/*/*.parquet')").fetchall()]
    form = "enc+file://" if site.style.endswith("file") else "enc+s3://"
    assert len(found) == 3 and all(f.startswith(form) for f in found), found


# -- dask ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(request) -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    # Workers inherit the environment, including moto's dummy credentials
    # once the server is up (set by the moto_server fixture): start it first.
    request.getfixturevalue("moto_server")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as lc, distributed.Client(lc) as client:
        yield client


def test_dask_on_a_two_process_cluster(site, frame, cluster):
    dd = pytest.importorskip("dask.dataframe")
    ddf = dd.from_pandas(frame, npartitions=3)
    ddf.to_parquet(site.u("dk"), storage_options=site.so, write_index=False, compression=None)
    paths = site.assert_sealed("dk")
    assert len([p for p in paths if p.endswith(".parquet")]) == 3
    back = dd.read_parquet(site.u("dk"), storage_options=site.so, columns=["id", "amount"]).compute()
    pd.testing.assert_frame_equal(_sorted(back), frame[["id", "amount"]], check_dtype=False,
                                  check_index_type=False)
    ddf.to_csv(site.u("csv/part-*.csv"), storage_options=site.so, index=False)
    site.assert_sealed("csv")
    back = dd.read_csv(site.u("csv/part-*.csv"), storage_options=site.so).compute()
    pd.testing.assert_frame_equal(_sorted(back), frame, check_dtype=False, check_index_type=False)
    # The work ran in the two worker processes.
    assert len(cluster.scheduler_info()["workers"]) == 2


# -- zarr v3 and xarray ----------------------------------------------------------------------------
def _zarr_store(site: Site, rel: str) -> Any:
    """xarray (2026.9) tells URLs from paths with ``^[a-zA-Z][a-zA-Z0-9]*(://|::)``,
    which takes ``enc+s3://`` for a local path: a mapper carries that form."""
    if "+" in site.style:
        return fsspec.get_mapper(site.u(rel), **site.so)
    return site.u(rel)


def test_zarr_and_xarray(site):
    zarr = pytest.importorskip("zarr")
    xr = pytest.importorskip("xarray")
    assert int(zarr.__version__.split(".")[0]) >= 3

    # zarr itself takes either URL style.
    arr = zarr.create_array(site.u("raw.zarr"), shape=(1000,), chunks=(100,), dtype="int32",
                            storage_options=site.so, attributes={"note": MARKER})
    arr[:] = np.arange(1000, dtype="int32")
    again = zarr.open_array(site.u("raw.zarr"), mode="r", storage_options=site.so)
    assert again[250:260].tolist() == list(range(250, 260)) and again.attrs["note"] == MARKER
    site.assert_sealed("raw.zarr")

    ds = xr.Dataset({"t": (("x", "y"), np.arange(600.0).reshape(30, 20))},
                    coords={"x": np.arange(30)}, attrs={"note": MARKER})
    store = _zarr_store(site, "ds.zarr")
    so = {} if "+" in site.style else {"storage_options": site.so}
    ds.chunk({"x": 10}).to_zarr(store, mode="w", consolidated=False, **so)
    site.assert_sealed("ds.zarr")
    back = xr.open_zarr(_zarr_store(site, "ds.zarr"), consolidated=False, **so)
    assert back.attrs["note"] == MARKER
    xr.testing.assert_equal(back.load(), ds)


# -- reads stay ranged -------------------------------------------------------------------------------
class _CountingLocal(LocalFileSystem):
    """A local target that counts the bytes encfs fetches from it."""

    fetched = 0

    def cat_file(self, path, start=None, end=None, **kwargs):
        data = super().cat_file(path, start=start, end=end, **kwargs)
        type(self).fetched += len(data)
        return data


@pytest.fixture(scope="module")
def wide() -> pd.DataFrame:
    """8 columns of 8-byte numbers in 4 row groups: 9.6 MB of values, 11.9 MB encrypted."""
    rng = np.random.default_rng(3)
    n = 150_000
    return pd.DataFrame({"id": np.arange(n), **{f"c{i}": rng.normal(size=n) for i in range(7)}})


@pytest.mark.parametrize("target", ["file", "s3"])
def test_one_column_reads_fetch_a_fraction_of_the_object(target, wide, keystore, request):
    duckdb = pytest.importorskip("duckdb")
    pl = pytest.importorskip("polars")
    from encfs import polars as epl

    if target == "file":
        root = str(request.getfixturevalue("tmp_path"))
        efs = EncFileFileSystem(fs=_CountingLocal(skip_instance_cache=True), keystore=keystore,
                                skip_instance_cache=True)
        url = f"enc+file://{root}/wide.parquet"

        def fetched() -> int:
            return _CountingLocal.fetched

        def reset() -> None:
            _CountingLocal.fetched = 0
    else:
        moto = request.getfixturevalue("moto_server")
        root = f"{request.getfixturevalue('bucket')}/{uuid.uuid4().hex[:12]}"
        so = {"keystore": keystore, "s3": {"client_kwargs": {"endpoint_url": moto.endpoint, "region_name": REGION}}}
        efs = fsspec.filesystem("enc+s3", **so)
        url = f"enc+s3://{root}/wide.parquet"

        def fetched() -> int:
            return sum(r.bytes_out for r in moto.requests("s3", "GET"))

        reset = moto.clear_log
    with efs.open(url, "wb") as f:
        wide.to_parquet(f, row_group_size=37_500, compression=None)
    size = efs.info(url)["encrypted_size"]
    assert size > 9_000_000

    reads = {}
    con = duckdb.connect()
    con.register_filesystem(efs)
    reset()
    assert con.sql(f"SELECT sum(c3) FROM read_parquet('{url}')").fetchall()[0][0] == pytest.approx(wide.c3.sum())
    reads["duckdb, one column"] = fetched()
    reset()
    got = epl.scan_parquet(url, filesystem=efs).select("c3").collect()
    assert got["c3"].to_list() == wide.c3.tolist()
    reads["polars, one column"] = fetched()
    reset()
    epl.scan_parquet(url, filesystem=efs).select("id", "c5").collect()
    reads["polars, two columns"] = fetched()
    reset()
    got = epl.scan_parquet(url, filesystem=efs).filter(pl.col("id") < 100).select("c5").collect()
    assert got["c5"].to_list() == wide.c5[:100].tolist()
    reads["polars, the same two columns of one row group"] = fetched()
    reset()
    got = pd.read_parquet(efs._strip_protocol(url), columns=["c1"], filesystem=efs)
    assert got.c1.tolist() == wide.c1.tolist()
    reads["pandas, one column"] = fetched()

    # One column is 1/8 of the data: allow for the footer, segment rounding
    # and each open's reads of the header and the last segment.
    for what, n in reads.items():
        limit = 0.25 if "one column" in what else 0.4
        assert 0 < n < limit * size, f"{what}: fetched {n} of {size} bytes"
    # The filter's statistics rule out 3 of the 4 row groups, which are skipped.
    assert reads["polars, the same two columns of one row group"] < 0.6 * reads["polars, two columns"], reads


def test_http_form_reads_objects_published_over_http(moto_server, bucket, keystore):
    """``enc+http://`` reads (HTTP takes no writes).  Objects are bound to the
    path they were written for (here the S3 key), so reading them at an
    HTTP URL needs ``bind_path=False``; with binding on, encfs refuses."""
    from encfs import IntegrityError

    key = f"{uuid.uuid4().hex[:12]}/pub.bin"
    data = np.random.default_rng(5).bytes(300_000)
    so = {"keystore": keystore, "s3": {"client_kwargs": {"endpoint_url": moto_server.endpoint, "region_name": REGION}}}
    fsspec.filesystem("enc+s3", **so).pipe_file(f"{bucket}/{key}", data)
    moto_server.boto3("s3").put_object_acl(Bucket=bucket, Key=key, ACL="public-read")
    url = f"enc+{moto_server.endpoint}/{bucket}/{key}"
    assert url.startswith("enc+http://")
    with pytest.raises(IntegrityError):
        fsspec.open(url, "rb", keystore=keystore).open().read()
    fs, path = fsspec.url_to_fs(url, keystore=keystore, bind_path=False)
    assert fs.size(path) == len(data)
    assert fs.cat_file(path, start=123_456, end=123_500) == data[123_456:123_500]
    assert fsspec.open(url, "rb", keystore=keystore, bind_path=False).open().read() == data
