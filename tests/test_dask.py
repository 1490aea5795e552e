"""dask.distributed with 2 worker processes reading and writing an
enc::s3:// Parquet dataset whose data keys are wrapped by (moto's) KMS.

The filesystem reaches the workers as constructor options only (key URIs,
endpoints); each worker process builds its own s3fs and KMS clients.
"""

from __future__ import annotations

import os
import pickle

import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")

from encfs import EncryptedFileSystem
from encfs.format import MAGIC


def _worker_state() -> dict:
    """Runs in each worker: which encfs filesystems and KMS clients it built."""
    from encfs import EncryptedFileSystem

    found = []
    for inst in list(EncryptedFileSystem._cache.values()):
        kms = inst.keyring._providers.get("aws-kms")
        found.append({"kms_clients": len(getattr(kms, "_clients", {})) if kms else 0})
    return {"pid": os.getpid(), "filesystems": found}


@pytest.fixture(scope="module")
def cluster(moto_server):
    # moto_server put moto's dummy credentials in os.environ, which the
    # spawned workers inherit (the boto3 default chain, as in production).
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as lc, distributed.Client(lc) as client:
        yield client


def test_dask_parquet_dataset_over_enc_s3_with_kms(moto_server, s3, kms_key, cluster):
    client = cluster
    # Credentials come from the environment, so the options (which dask
    # ships to workers in clear) hold no secret at all.
    opts = {
        "enc": {"key": kms_key, "providers": {"aws-kms": moto_server.kms_options()}},
        "s3": {"client_kwargs": {"endpoint_url": moto_server.endpoint, "region_name": "us-east-1"}},
    }
    url = f"enc::s3://{s3.test_bucket}/dataset"
    n = 20_000
    df = pd.DataFrame({"id": range(n), "amount": [i * 0.25 for i in range(n)], "region": [f"r{i % 5}" for i in range(n)]})
    ddf = dd.from_pandas(df, npartitions=4)
    ddf.to_parquet(url, storage_options=opts, write_index=False, compute=True)

    parts = sorted(p for p in s3.find(f"{s3.test_bucket}/dataset") if p.endswith(".parquet"))
    assert len(parts) == 4
    for p in parts:
        assert s3.cat_file(p, start=0, end=4) == MAGIC  # ciphertext at rest

    back = dd.read_parquet(url, storage_options=opts, columns=["amount"]).compute()
    assert sorted(back["amount"].tolist()) == df["amount"].tolist()
    full = dd.read_parquet(url, storage_options=opts).compute().sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(full, df, check_dtype=False)

    # Work happened in two other processes, each with its own KMS client.
    states = client.run(_worker_state)
    assert len(states) == 2 and os.getpid() not in {s["pid"] for s in states.values()}
    for state in states.values():
        assert any(fs["kms_clients"] >= 1 for fs in state["filesystems"]), state
    assert {r.operation for r in moto_server.requests("kms")} >= {"GenerateDataKey", "Decrypt"}

    # What travels: the filesystem pickles to its options; no credentials.
    efs = EncryptedFileSystem(fo=url, **opts["enc"], target_protocol="s3", target_options=opts["s3"])
    blob = pickle.dumps(efs)
    assert b"testing" not in blob and kms_key.encode() in blob
