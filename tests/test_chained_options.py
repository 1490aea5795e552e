"""Target options nested in the enc options under caching chains (issue 9,
item 7): ``simplecache::enc::s3://`` with the s3 options inside the ``enc``
dict reaches the moto server, and nothing ever goes to the real AWS."""

from __future__ import annotations

import socket

import fsspec
import pytest
from _servers import unique

from encfs.errors import ConfigurationError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@pytest.fixture
def no_remote_hosts(monkeypatch):
    """Fail any name lookup or connection that leaves the machine, and record
    the hosts tried (botocore/aiohttp resolve every endpoint through these)."""
    tried: list[str] = []
    real_getaddrinfo, real_create = socket.getaddrinfo, socket.create_connection

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, bytes):
            host = host.decode()
        if host not in LOOPBACK:
            tried.append(str(host))
            raise OSError(f"test guard: no requests to {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    def create_connection(address, *args, **kwargs):
        if address[0] not in LOOPBACK:
            tried.append(str(address[0]))
            raise OSError(f"test guard: no connection to {address[0]}")
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    # Should anything still pick the default endpoint, make it a dead local port.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    return tried


@pytest.fixture
def bucket(s3, moto_server):
    return s3.test_bucket


def _enc(moto_server, encfs_home, **extra):
    # The s3 options nested in the enc layer's options, as the issue tried.
    return {"key": "local://default", "keystore": str(encfs_home), "s3": moto_server.target_options(), **extra}


@pytest.mark.parametrize("cache", ["simplecache", "filecache", "blockcache"])
def test_nested_s3_options_reach_the_target(cache, s3, bucket, moto_server, encfs_home, tmp_path, no_remote_hosts):
    path = f"{bucket}/{unique('obj')}.bin"
    data = b"nested options " * 1000
    enc = _enc(moto_server, encfs_home)
    with fsspec.open(f"enc::s3://{path}", "wb", enc=enc) as f:
        f.write(data)
    raw = s3.cat_file(path)
    assert raw[:4] == b"ENCF" and data[:32] not in raw  # ciphertext in the bucket
    moto_server.clear_log()
    url = f"{cache}::enc::s3://{path}"
    options = {"enc": enc, cache: {"cache_storage": str(tmp_path / "cache")}}
    with fsspec.open(url, "rb", **options) as f:
        assert f.read() == data
    assert moto_server.requests("s3"), "the read went to the moto server"
    assert no_remote_hosts == []


def test_write_through_simplecache(s3, bucket, moto_server, encfs_home, tmp_path, no_remote_hosts):
    path = f"{bucket}/{unique('obj')}.bin"
    url = f"simplecache::enc::s3://{path}"
    options = {"enc": _enc(moto_server, encfs_home), "simplecache": {"cache_storage": str(tmp_path / "c")}}
    with fsspec.open(url, "wb", **options) as f:
        f.write(b"written through the cache")
    assert s3.cat_file(path)[:4] == b"ENCF"
    with fsspec.open(f"enc::s3://{path}", "rb", enc=_enc(moto_server, encfs_home)) as f:
        assert f.read() == b"written through the cache"
    assert no_remote_hosts == []


def test_top_level_and_nested_target_options_agree_or_fail(s3, bucket, moto_server, encfs_home, no_remote_hosts):
    path = f"{bucket}/{unique('obj')}.bin"
    enc = _enc(moto_server, encfs_home)
    # Both places, same values: fine.
    fs, _ = fsspec.url_to_fs(f"simplecache::enc::s3://{path}", enc=enc, s3=moto_server.target_options())
    # Different values: which endpoint was meant is unknowable, so neither is used.
    other = moto_server.target_options(client_kwargs={"endpoint_url": "http://127.0.0.1:9"})
    with pytest.raises(ConfigurationError, match="'client_kwargs' of the s3:// target is given twice"):
        fsspec.url_to_fs(f"simplecache::enc::s3://{path}", enc=enc, s3=other)
    assert no_remote_hosts == []


def test_options_for_another_layer_are_refused(encfs_home, tmp_path, no_remote_hosts):
    enc = {"keystore": str(encfs_home), "s3": {"endpoint_url": "http://127.0.0.1:9"}}
    with pytest.raises(ConfigurationError, match=r"options for s3:// but stores on file://"):
        fsspec.url_to_fs(f"simplecache::enc::file://{tmp_path}/x", enc=enc)
    from encfs import EncryptedFileSystem

    with pytest.raises(ConfigurationError, match="given as fs="):
        EncryptedFileSystem(fs=fsspec.filesystem("memory"), s3={"anon": True}, skip_instance_cache=True)
    assert no_remote_hosts == []


def test_nested_options_survive_pickling_and_json(moto_server, encfs_home, bucket, no_remote_hosts):
    import pickle

    from encfs import EncryptedFileSystem

    fs = EncryptedFileSystem(target_protocol="s3", keystore=str(encfs_home), skip_instance_cache=True,
                             s3=moto_server.target_options())
    path = f"{bucket}/{unique('obj')}.bin"
    fs.pipe_file(path, b"x" * 10)
    for again in (pickle.loads(pickle.dumps(fs)), fsspec.AbstractFileSystem.from_json(fs.to_json())):
        assert again.cat_file(path) == b"x" * 10
    assert no_remote_hosts == []
