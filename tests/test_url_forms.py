"""The single-scheme URL form ``enc+<target>://`` (encfs/urls.py, encfs/forms.py).

pandas 2 accepts a string as an fsspec URL only if it matches
``^[A-Za-z][A-Za-z0-9+\\-+.]*://``; ``enc::file://`` does not, ``enc+file://``
does.  This module is part of CI's smoke subset on Python 3.10 with pandas 2
and on 3.13: it needs only pandas, pyarrow, fsspec and encfs's core, and uses
local and in-memory targets.
"""

from __future__ import annotations

import json
import pickle
import re
import uuid

import fsspec
import pandas as pd
import pytest

from encfs import ConfigurationError, EncryptedFileSystem
from encfs.format import MAGIC
from encfs.forms import FORMS, EncFileFileSystem, EncMemoryFileSystem
from encfs.urls import TARGETS

pytest.importorskip("pyarrow")

# pandas 2.x's test (pandas/io/common.py, _RFC_3986_PATTERN)
PANDAS2_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+\-+.]*://")
MARKER = "plaintext-marker-7d1c"


@pytest.fixture
def frame() -> pd.DataFrame:
    n = 3000
    return pd.DataFrame({
        "id": range(n),
        "amount": [round(i * 0.37, 2) for i in range(n)],
        "note": [f"{MARKER} {i}" for i in range(n)],
    })


@pytest.fixture
def so(encfs_home) -> dict:
    return {"keystore": str(encfs_home)}


@pytest.fixture
def mem_root():
    root = f"/url-forms-{uuid.uuid4().hex}"
    yield root
    plain = fsspec.filesystem("memory")
    if plain.exists(root):
        plain.rm(root, recursive=True)


def _ciphertext(raw: bytes) -> None:
    assert raw[:4] == MAGIC
    assert MARKER.encode() not in raw


def test_every_form_is_registered_and_passes_pandas2s_url_test():
    for target in TARGETS:
        proto = f"enc+{target}"
        assert proto in FORMS
        assert PANDAS2_URL.match(f"{proto}://bucket/key")
    assert not PANDAS2_URL.match("enc::file:///tmp/x")  # why the form exists
    assert fsspec.get_filesystem_class("enc+file") is EncFileFileSystem
    assert fsspec.get_filesystem_class("enc+memory") is EncMemoryFileSystem
    from pandas.io.common import is_fsspec_url

    assert is_fsspec_url("enc+s3://bucket/key") and is_fsspec_url("enc+file:///tmp/x")


@pytest.mark.parametrize("target", ["file", "memory"])
def test_pandas_parquet_and_csv_round_trips(target, frame, so, tmp_path, mem_root):
    if target == "file":
        base, plain, root = f"enc+file://{tmp_path}", fsspec.filesystem("file"), str(tmp_path)
    else:
        base, plain, root = f"enc+memory://{mem_root}", fsspec.filesystem("memory"), mem_root
        plain.mkdir(root)

    url = f"{base}/sales.parquet"
    frame.to_parquet(url, storage_options=so)
    back = pd.read_parquet(url, columns=["id", "note"], storage_options=so)
    pd.testing.assert_frame_equal(back, frame[["id", "note"]])
    _ciphertext(plain.cat_file(f"{root}/sales.parquet"))

    for name, kwargs in (("sales.csv", {}), ("sales.csv.gz", {"compression": "gzip"})):
        url = f"{base}/{name}"
        frame.to_csv(url, index=False, storage_options=so, **kwargs)
        back = pd.read_csv(url, storage_options=so)  # compression inferred from the name
        pd.testing.assert_frame_equal(back, frame)
        _ciphertext(plain.cat_file(f"{root}/{name}"))

    # One object, two spellings: the chained form reads what the new one wrote.
    chained = base.replace(f"enc+{target}://", f"enc::{target}://")
    assert fsspec.open(f"{chained}/sales.csv", "rb", **so).open().read() == frame.to_csv(index=False).encode()


def test_json_lines_round_trip(frame, so, tmp_path):
    url = f"enc+file://{tmp_path}/rows.jsonl"
    frame.to_json(url, orient="records", lines=True, storage_options=so)
    back = pd.read_json(url, orient="records", lines=True, storage_options=so)
    pd.testing.assert_frame_equal(back, frame)
    _ciphertext((tmp_path / "rows.jsonl").read_bytes())


def test_url_to_fs_and_open_match_the_chained_form(so, tmp_path):
    fs, path = fsspec.url_to_fs(f"enc+file://{tmp_path}/a.bin", **so)
    cfs, cpath = fsspec.url_to_fs(f"enc::file://{tmp_path}/a.bin", **so)
    assert isinstance(fs, EncFileFileSystem) and path == cpath == f"{tmp_path}/a.bin"
    with fsspec.open(f"enc+file://{tmp_path}/a.bin", "wb", **so) as f:
        f.write(b"hello")
    assert cfs.cat_file(cpath) == b"hello"
    assert (tmp_path / "a.bin").read_bytes()[:4] == MAGIC
    # Full URLs name the form, and reopen the same object.
    assert fs.unstrip_protocol(path) == f"enc+file://{tmp_path}/a.bin"
    assert cfs.unstrip_protocol(cpath) == f"enc+file://{tmp_path}/a.bin"
    assert fsspec.open(fs.unstrip_protocol(path), "rb", **so).open().read() == b"hello"
    # Paths in any of the spellings reach the same object.
    for p in (f"enc+file://{tmp_path}/a.bin", f"enc::file://{tmp_path}/a.bin", f"{tmp_path}/a.bin"):
        assert fs.cat_file(p) == b"hello"
    # Globs come back in a form the filesystem declares (DuckDB routes by it).
    (fs.pipe_file(f"{tmp_path}/b.bin", b"x"))
    assert fs.glob(f"enc+file://{tmp_path}/*.bin") == [f"{tmp_path}/a.bin", f"{tmp_path}/b.bin"]
    files = fsspec.open_files(f"enc+file://{tmp_path}/*.bin", "rb", **so)
    assert [f.full_name for f in files] == [f"enc+file://{tmp_path}/a.bin", f"enc+file://{tmp_path}/b.bin"]
    assert fs.protocol == ("enc+file",) and "enc+file" in cfs.protocol and "enc" in cfs.protocol


def test_filesystem_constructor_and_option_routing(so, tmp_path, encfs_home):
    fs = fsspec.filesystem("enc+file", **so)
    assert fs.fs.protocol[0] == "file" and fs.keyring.write_refs
    # Target options: a dict named after the target (as for enc::file://), or target_options.
    deep = tmp_path / "new" / "dir" / "x.bin"
    with pytest.raises(FileNotFoundError):
        fs.open(f"enc+file://{deep}", "wb")
    made, path = fsspec.url_to_fs(f"enc+file://{deep}", file={"auto_mkdir": True}, **so)
    assert made.fs.auto_mkdir
    with made.open(path, "wb") as f:
        f.write(b"made its directory")
    assert deep.read_bytes()[:4] == MAGIC
    assert fsspec.filesystem("enc+file", target_options={"auto_mkdir": True}, **so).fs.auto_mkdir
    # enc options in a nested "enc" dict work too (the chained form's convention).
    nested = fsspec.filesystem("enc+file", enc={"keystore": str(encfs_home), "segment_size": 4096},
                               skip_instance_cache=True)
    assert nested.segment_size == 4096
    with pytest.raises(ConfigurationError):
        fsspec.filesystem("enc+file", target_protocol="memory")
    with pytest.raises(ConfigurationError):
        EncFileFileSystem(fs=fsspec.filesystem("file"), file={"auto_mkdir": True})


def test_pickle_and_to_json_hold_constructor_arguments_only(so, tmp_path):
    fs = fsspec.filesystem("enc+memory", key="local://default", memory={"skip_instance_cache": True},
                           cache={"max_age": 60}, **so)
    fs.pipe_file("/p/x", b"data")
    blob = pickle.dumps(fs)
    assert b"skip_instance_cache" in blob  # the options, nothing else
    clone = pickle.loads(blob)
    assert isinstance(clone, EncMemoryFileSystem) and clone.storage_options == fs.storage_options
    doc = json.loads(fs.to_json())
    assert doc["protocol"] == "enc+memory" and doc["cls"] == "encfs.forms:EncMemoryFileSystem"
    assert set(doc) - {"cls", "protocol", "args"} == {"key", "memory", "cache", "keystore"}
    rebuilt = fsspec.AbstractFileSystem.from_json(fs.to_json())
    assert isinstance(rebuilt, EncMemoryFileSystem) and rebuilt.segment_size == fs.segment_size
    # Nothing secret in any of it: the root key's material stays in the keystore.
    from encfs import LocalKeystore

    store = LocalKeystore(so["keystore"])
    materials = [store._material(key_id, int(v), for_wrap=False)[1]
                 for key_id in store.list_ids() for v in store.record(key_id)["versions"]]
    assert materials
    for material in materials:
        for form in (material, material.hex().encode()):
            assert form not in blob and form not in fs.to_json().encode()


def test_unknown_target_falls_back_to_the_chained_form(so):
    from fsspec.implementations.dirfs import DirFileSystem

    inner = DirFileSystem(path="/srv", fs=fsspec.filesystem("memory"))
    efs = EncryptedFileSystem(fs=inner, skip_instance_cache=True, **so)
    assert efs.protocol == ("enc",)
    assert efs.unstrip_protocol("a/b").startswith("enc::dir://")


def test_cli_takes_the_form(tmp_path):
    from click.testing import CliRunner

    from encfs.cli.main import _load_commands, cli

    _load_commands()
    src = tmp_path / "plain.txt"
    src.write_bytes(f"{MARKER} cli".encode())
    runner = CliRunner()
    done = runner.invoke(cli, ["cp", str(src), f"enc+file://{tmp_path}/sealed.txt"])
    assert done.exit_code == 0, done.output
    _ciphertext((tmp_path / "sealed.txt").read_bytes())
    shown = runner.invoke(cli, ["cat", f"enc+file://{tmp_path}/sealed.txt"])
    assert shown.exit_code == 0 and shown.output == f"{MARKER} cli"


def test_trailing_slashes_map_as_in_the_chained_form(so):
    form = fsspec.filesystem("enc+memory", **so)
    chained = fsspec.filesystem("enc", target_protocol="memory", **so)
    for url in ("/a/x", "/a/x/", "/a/x//", "/"):
        assert form._target_path(f"enc+memory://{url}") == chained._target_path(f"enc::memory://{url}"), url
    assert EncMemoryFileSystem._strip_protocol("enc+memory:///a/x//") == "/a/x//"


def test_demo_runs(tmp_path):
    """README's quick start (``encfs demo``) goes through pandas with URLs, so
    it must use a form pandas 2 accepts."""
    from click.testing import CliRunner

    from encfs.cli.main import _load_commands, cli

    _load_commands()
    done = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path / "demo"), "--rows", "3000"])
    assert done.exit_code == 0, done.output
    assert "enc+file://" in done.output
    assert (tmp_path / "demo" / "sales.parquet").read_bytes()[:4] == MAGIC
