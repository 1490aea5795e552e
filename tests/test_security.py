"""Security hardening (issue 10): each test reproduces one finding of the
adversarial review and fails without its fix."""

from __future__ import annotations

import ntpath
import os
import posixpath
import stat
import tempfile
from pathlib import Path

import fsspec
import pytest

from encfs import EncryptedFileSystem
from encfs.cli import copying, main
from encfs.cli.util import printable
from encfs.errors import (
    ContextMismatchError,
    IntegrityError,
    NotRegularFileError,
    NoUsableKeyError,
    UnsafePathError,
)
from encfs.format import HEADER_REGION, WrappedKey, parse_header, replace_wrapped_keys
from encfs.paths import join_inside, local_bound_path, unsafe_reason
from encfs.targets import TEMP_MARK

#: Source keys a malicious bucket can hold (issue 10, finding 1), below "data/".
BAD_KEYS = ["data/../../../victim", "data/sub\\..\\..\\..\\bs-victim", "data//empty", "data/C:drive",
            "data/./dot"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def files_under(root) -> set[str]:
    out = set()
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


# -- finding 1: copies stay inside their destination ----------------------------------------------
def test_unsafe_reason_rules():
    for ok in ["a", "a/b.txt", "2026-01-01T00:00:00Z.json", "x..y", "..hidden", "a/b c/d"]:
        assert unsafe_reason(ok) is None, ok
    for bad in ["", "/abs", "..", "../x", "a/../../x", "a/./b", "a//b", "a\\b", "C:x", "d:/x", "a/c:", "a\x00b",
                "a/"]:
        assert unsafe_reason(bad) is not None, bad
    assert join_inside("/dst/", "a/b") == "/dst/a/b"
    with pytest.raises(UnsafePathError):
        join_inside("/dst", "../x")


@pytest.fixture
def evil_bucket(moto_server, s3):
    """A plain bucket with one good object and the escaping keys under data/."""
    client = moto_server.boto3("s3")
    for key in BAD_KEYS:
        client.put_object(Bucket=s3.test_bucket, Key=key, Body=b"attacker")
    client.put_object(Bucket=s3.test_bucket, Key="data/ok.txt", Body=b"good data")
    client.put_object(Bucket=s3.test_bucket, Key="data/sub/deep.txt", Body=b"deep")
    s3.invalidate_cache()
    return s3.test_bucket


@pytest.mark.parametrize("encrypted_dst", [False, True], ids=["plain-to-plain", "s3-to-enc-local"])
def test_cp_r_refuses_keys_that_escape_and_copies_the_rest(moto_server, evil_bucket, tmp_path, capsys,
                                                            encrypted_dst):
    top = tmp_path / "top"
    dst = top / "a" / "b" / "dst"
    (top / "a" / "b").mkdir(parents=True)
    (top / "victim").write_bytes(b"precious")  # where data/../../../victim would land
    before = files_under(tmp_path)
    dst_url = ("enc::" if encrypted_dst else "") + str(dst)
    code, _out, err = run_cli(capsys, "cp", "-r", "-q", "-o", f"s3.endpoint_url={moto_server.endpoint}",
                              f"s3://{evil_bucket}/data", dst_url)
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("encfs: error: refusing to copy")]
    assert len(errors) == len(BAD_KEYS), err
    assert (top / "victim").read_bytes() == b"precious"
    after = files_under(tmp_path)
    new = {p for p in after - before}
    assert all(p.startswith(os.path.join("top", "a", "b", "dst") + os.sep) for p in new), new
    assert files_under(dst) == {"ok.txt", os.path.join("sub", "deep.txt")}
    if encrypted_dst:
        efs = EncryptedFileSystem(target_protocol="file", skip_instance_cache=True)
        assert efs.cat_file(str(dst / "ok.txt")) == b"good data"
    else:
        assert (dst / "ok.txt").read_bytes() == b"good data"


def test_cp_of_a_single_dotdot_source_is_refused(moto_server, evil_bucket, tmp_path, capsys):
    (tmp_path / "into").mkdir()
    code, _out, err = run_cli(capsys, "cp", "-r", "-q", "-o", f"s3.endpoint_url={moto_server.endpoint}",
                              f"s3://{evil_bucket}/data/..", str(tmp_path / "into") + "/")
    assert code == 1 and "refusing to copy" in err and "Traceback" not in err


def test_fs_get_refuses_escaping_keys_and_copies_the_rest(moto_server, s3, tmp_path):
    efs = EncryptedFileSystem(fs=s3, skip_instance_cache=True)
    b = s3.test_bucket
    efs.pipe_file(f"{b}/data/ok.txt", b"fine")
    efs.pipe_file(f"{b}/data/sub\\..\\..\\evil", b"evil")  # a literal key on S3; a path elsewhere
    dst = tmp_path / "out"
    with pytest.raises(UnsafePathError, match="backslash"):
        efs.get(f"{b}/data", str(dst), recursive=True)
    assert files_under(tmp_path) == {os.path.join("out", "ok.txt")}
    efs.pipe_file(f"{b}/data/../../victim", b"evil")
    with pytest.raises((UnsafePathError, ValueError)):
        efs.get(f"{b}/data", str(tmp_path / "out2"), recursive=True)
    assert "victim" not in files_under(tmp_path)
    with pytest.raises(UnsafePathError):  # one object, named directly
        efs.get_file(f"{b}/data/../../victim", str(tmp_path / "v"))


# -- finding 2: exact object keys are bound on object stores ---------------------------------------
def test_trailing_slash_copies_made_without_keys_fail_on_s3(moto_server, s3):
    efs = EncryptedFileSystem(fs=s3, skip_instance_cache=True)
    b = s3.test_bucket
    efs.pipe_file(f"{b}/x", b"secret")
    client = moto_server.boto3("s3")
    for key in ("x/", "x//"):
        client.copy_object(Bucket=b, Key=key, CopySource={"Bucket": b, "Key": "x"})
    client.delete_object(Bucket=b, Key="x")
    s3.invalidate_cache()
    listed = efs.find(b)
    assert f"{b}/x/" in listed and f"{b}/x//" in listed
    for path in (f"{b}/x/", f"{b}/x//"):
        assert efs._target_path(path) == path  # the key that is really read
        with pytest.raises(IntegrityError):
            efs.cat_file(path)


def test_objects_without_trailing_slash_keep_their_binding(moto_server, s3, memfs, encfs_home):
    efs = EncryptedFileSystem(fs=s3, skip_instance_cache=True)
    b = s3.test_bucket
    efs.pipe_file(f"{b}/d/f", b"v")
    assert efs.header(f"{b}/d/f").context["encfs:path"] == f"{b}/d/f"
    efs.cp_file(f"{b}/d/f", f"{b}/e/g")  # cp through encfs still re-binds
    assert efs.cat_file(f"{b}/e/g") == b"v"
    mem = EncryptedFileSystem(fs=memfs, skip_instance_cache=True)
    mem.pipe_file("/m/f", b"m")
    assert mem.cat_file("/m/f/") == b"m"  # memory strips "/" itself: one object


def test_local_binding_posix_unchanged():
    assert local_bound_path("/d/./x/../f", posixpath) == "/d/f"
    assert local_bound_path("/d//f", posixpath) == "/d/f"
    assert local_bound_path("/D/F", posixpath) == "/D/F"  # POSIX is case-sensitive


def test_local_binding_windows_rules_with_ntpath():
    same = ["C:/Data/Lake/F.csv", "c:\\data\\lake\\f.csv", "C:\\Data\\x\\..\\Lake\\.\\F.CSV", "c:/data//lake/f.csv"]
    bound = {local_bound_path(p, ntpath) for p in same}
    assert bound == {"c:/data/lake/f.csv"}
    assert local_bound_path("D:/Data/Lake/F.csv", ntpath) != "c:/data/lake/f.csv"  # drive letters differ
    assert local_bound_path("\\\\server\\share\\F", ntpath) == "//server/share/f"  # UNC
    assert local_bound_path("C:/a/b", ntpath) != local_bound_path("C:/a/c", ntpath)


# -- finding 8: terminal escapes ------------------------------------------------------------------
def test_printable_escapes_controls_and_bidi():
    evil = "a\x1b[2Kb\rc\nd\x9be\x7ff\u202eg\u2066h\x00"
    out = printable(evil)
    assert out == "a\\x1b[2Kb\\x0dc\\x0ad\\x9be\\x7ff\\u202eg\\u2066h\\x00"
    assert printable("plain ünïcode ok") == "plain ünïcode ok"


def _plant_entries(efs: EncryptedFileSystem, tpath: str, entries: list[WrappedKey]) -> None:
    raw = efs.fs.cat_file(tpath)
    header = parse_header(raw[:HEADER_REGION], tpath)
    efs.fs.pipe_file(tpath, replace_wrapped_keys(raw, header, entries) + raw[header.header_region:])


def test_cli_output_escapes_crafted_header_strings(tmp_path, capsys, encfs_home):
    efs = EncryptedFileSystem(target_protocol="file", skip_instance_cache=True)
    obj = str(tmp_path / "obj")
    efs.pipe_file(obj, b"data")
    forged = "\x1b[2K\rOK      all-good (1 KiB)\n1 ok, 0 failed\x1b]0;title\x07"
    _plant_entries(efs, obj, [WrappedKey("aws-kms", forged, "1\x1b[31m", b"x" * 16)])
    for args in (["verify", obj], ["info", obj], ["cat", obj]):
        _code, out, err = run_cli(capsys, *args)
        text = out + err
        assert "\x1b" not in text and "\r" not in text and "\x07" not in text, args
        assert "\\x1b" in text, args
    named = tmp_path / "name\x1b[31mred\u202e"
    efs.pipe_file(str(named), b"n")
    _code, out, _err = run_cli(capsys, "ls", str(tmp_path))
    assert "\x1b" not in out and "\u202e" not in out and "\\x1b[31mred\\u202e" in out


# -- finding 9: FIFOs and other special files ----------------------------------------------------
@pytest.mark.timeout(60)
def test_fifo_is_refused_not_opened(tmp_path, capsys, encfs_home):
    efs = EncryptedFileSystem(target_protocol="file", skip_instance_cache=True)
    tree = tmp_path / "tree"
    tree.mkdir()
    efs.pipe_file(str(tree / "good"), b"good")
    fifo = tree / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError):
        efs.cat_file(str(fifo))
    with pytest.raises(NotRegularFileError):
        efs.open(str(fifo), "rb")
    for args in (["cat", str(fifo)], ["info", str(fifo)]):
        code, _out, err = run_cli(capsys, *args)
        assert code == 1 and "not a regular file" in err, args
    code, out, _err = run_cli(capsys, "verify", str(tree))
    assert code == 1 and "OK      " + str(tree / "good") in out and "not a regular file" in out
    code, _out, err = run_cli(capsys, "cp", "-r", "-q", "enc::" + str(tree), str(tmp_path / "plain"))
    assert code == 1 and "not a regular file" in err
    assert (tmp_path / "plain" / "good").read_bytes() == b"good"
    code, _out, err = run_cli(capsys, "cp", "-q", str(fifo), "enc::" + str(tmp_path / "x"))
    assert code == 1 and "not a regular file" in err


# -- finding 11: the configured context is required on read ----------------------------------------
def test_configured_context_is_checked_on_read(memfs, encfs_home):
    def fs(context=None):
        return EncryptedFileSystem(fs=memfs, context=context, skip_instance_cache=True)

    fs({"tenant": "evil"}).pipe_file("/evil", b"e")
    fs().pipe_file("/none", b"n")
    fs({"tenant": "acme", "extra": "1"}).pipe_file("/more", b"m")
    acme = fs({"tenant": "acme"})
    acme.pipe_file("/good", b"g")
    assert acme.cat_file("/good") == b"g"
    assert acme.cat_file("/more") == b"m"  # a superset carries every configured pair
    for path in ("/evil", "/none"):
        with pytest.raises(ContextMismatchError, match="tenant"):
            acme.cat_file(path)
        with pytest.raises(ContextMismatchError):
            acme.open(path, "rb")
        with pytest.raises(ContextMismatchError):
            acme.cp_file(path, path + "-copy")
        assert not memfs.exists(path + "-copy")
    assert fs().cat_file("/evil") == b"e"  # a filesystem without a context requires none


# -- finding 12: decrypted plaintext is staged next to the destination -------------------------------
def test_decrypting_copy_stages_next_to_destination(tmp_path, monkeypatch, encfs_home):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    monkeypatch.setattr(copying, "CHUNK", 64 * 1024)
    efs = EncryptedFileSystem(target_protocol="file", skip_instance_cache=True)
    src = str(tmp_path / "src.bin")
    efs.pipe_file(src, os.urandom(300_000))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    seen: list[tuple[list[str], list[int], list[str]]] = []

    def snapshot(_n: int) -> None:
        names = [n for n in os.listdir(out_dir) if TEMP_MARK in n]
        modes = [stat.S_IMODE(os.stat(out_dir / n).st_mode) for n in names]
        seen.append((names, modes, os.listdir(tmpdir)))

    dst = str(out_dir / "plain.bin")
    plain = fsspec.filesystem("file")
    copying.copy_file(efs, src, plain, dst, snapshot)
    assert seen and all(len(names) == 1 and modes == [0o600] and not tmp for names, modes, tmp in seen)
    assert Path(dst).read_bytes() == efs.cat_file(src)
    assert os.listdir(out_dir) == ["plain.bin"] and not os.listdir(tmpdir)
    # A failure midway leaves nothing, in either place.
    raw = bytearray(Path(src).read_bytes())
    raw[-40] ^= 1
    Path(src).write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        copying.copy_file(efs, src, plain, str(out_dir / "broken.bin"))
    assert os.listdir(out_dir) == ["plain.bin"] and not os.listdir(tmpdir)


# -- findings 5, 6, 7: only configured keys and services are consulted ---------------------------------
KMS_REGION = "us-east-1"
KMS_ACCOUNT = "123456789012"  # moto's default account


@pytest.fixture
def kms_moto(monkeypatch):
    from moto import mock_aws

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": KMS_REGION}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        import boto3

        client = boto3.client("kms", region_name=KMS_REGION)

        def new_key(alias: str) -> str:
            arn = client.create_key()["KeyMetadata"]["Arn"]
            client.create_alias(AliasName=f"alias/{alias}", TargetKeyId=arn)
            return arn

        yield new_key


def _kms_efs(memfs, key, **provider_opts):
    return EncryptedFileSystem(fs=memfs, key=key, cache=False, skip_instance_cache=True,
                               providers={"aws-kms": {"region_name": KMS_REGION, **provider_opts}})


def _record(provider, region=None) -> list[tuple[str, dict]]:
    calls: list[tuple[str, dict]] = []
    provider._client(region).meta.events.register(
        "provide-client-params.kms.*", lambda params, model, **_: calls.append((model.name, dict(params))))
    return calls


def _mentions(calls, arn: str) -> list[str]:
    key_id = arn.rsplit("/", 1)[-1]
    return [name for name, params in calls if any(key_id in str(v) for v in params.values())]


def test_rewrap_never_contacts_unconfigured_keys(kms_moto, memfs, encfs_home):
    from encfs.rewrap import FAILED, UP_TO_DATE, rewrap

    kms_moto("owner")
    foreign = kms_moto("foreign")
    _kms_efs(memfs, "aws-kms://alias/owner").pipe_file("/lake/ok", b"ok")
    _kms_efs(memfs, "aws-kms://alias/foreign").pipe_file("/lake/foreign-only", b"forged")
    # A planted entry for the unconfigured key, in front of the valid one.
    owner_fs = _kms_efs(memfs, "aws-kms://alias/owner")
    raw = memfs.cat_file("/lake/ok")
    header = parse_header(raw[:HEADER_REGION])
    planted = WrappedKey("aws-kms", foreign, "", os.urandom(64))
    memfs.pipe_file("/lake/ok", replace_wrapped_keys(raw, header,
                                                     [planted, *header.wrapped_keys]) + raw[header.header_region:])
    calls = _record(owner_fs.keyring.provider("aws-kms"))
    report = rewrap(owner_fs, "/lake", jobs=1)
    by_path = {r.path: r for r in report.results}
    assert by_path["/lake/foreign-only"].status == FAILED
    assert by_path["/lake/ok"].status != FAILED, by_path["/lake/ok"].error
    assert _mentions(calls, foreign) == []  # no DescribeKey, ListAliases, ..., Decrypt, Encrypt
    assert calls  # the configured key was used
    after = parse_header(memfs.cat_file("/lake/ok")[:HEADER_REGION])
    assert planted in after.wrapped_keys  # kept verbatim, never vouched for
    assert owner_fs.cat_file("/lake/ok") == b"ok"
    assert rewrap(owner_fs, "/lake/ok").results[0].status == UP_TO_DATE
    assert _mentions(calls, foreign) == []


def test_kms_only_reader_never_touches_the_local_keystore(kms_moto, memfs, encfs_home):
    kms_moto("lake")
    reader = _kms_efs(memfs, "aws-kms://alias/lake")
    reader.pipe_file("/o", b"kms data")
    EncryptedFileSystem(fs=memfs, skip_instance_cache=True).pipe_file("/local-only", b"local data")
    raw = memfs.cat_file("/o")
    header = parse_header(raw[:HEADER_REGION])
    planted = WrappedKey("local", "k-planted", "1", os.urandom(60))
    memfs.pipe_file("/o", replace_wrapped_keys(raw, header,
                                               [planted, *header.wrapped_keys]) + raw[header.header_region:])
    # A keystore that cannot be opened: touching it would raise KeystoreError
    # (or, sealed, prompt for a passphrase on a terminal).
    for name in os.listdir(encfs_home):
        if name.endswith(".json"):
            (encfs_home / name).write_text("{ not json")
    fresh = _kms_efs(memfs, "aws-kms://alias/lake")
    assert fresh.cat_file("/o") == b"kms data"
    with pytest.raises(NoUsableKeyError):
        fresh.cat_file("/local-only")  # no fallback to the local keystore
    assert "local" not in fresh.keyring._providers


def test_discovery_never_opens_clients_in_regions_objects_name(kms_moto, memfs, encfs_home):
    from encfs.providers import aws_kms

    kms_moto("a")
    kms_moto("b")
    _kms_efs(memfs, "aws-kms://alias/a").pipe_file("/x", b"data")
    raw = memfs.cat_file("/x")
    header = parse_header(raw[:HEADER_REGION])
    for i in range(40):
        arn = f"arn:aws:kms:zz-planted-{i}:{KMS_ACCOUNT}:key/{i:08d}-0000-0000-0000-000000000000"
        entries = [WrappedKey("aws-kms", arn, "", os.urandom(64)), *header.wrapped_keys]
        memfs.pipe_file(f"/p/{i}", replace_wrapped_keys(raw, header, entries) + raw[header.header_region:])
    reader = _kms_efs(memfs, "aws-kms://alias/b", discovery=True, discovery_accounts=[KMS_ACCOUNT])
    provider = reader.keyring.provider("aws-kms")
    for i in range(40):
        with pytest.raises(IntegrityError):  # bound to /x; what matters is which clients exist
            reader.cat_file(f"/p/{i}")
    assert list(provider._clients) == [KMS_REGION]
    # The cache itself is bounded whatever regions the configuration names.
    wide = aws_kms.AwsKmsProvider(region_name=KMS_REGION, discovery=True, discovery_accounts=[KMS_ACCOUNT],
                                  discovery_regions=[f"zz-{i}" for i in range(40)])
    for i in range(40):
        wide._client(f"zz-{i}")
    assert len(wide._clients) <= aws_kms.MAX_CLIENTS


def test_keys_audit_and_rewrap_output_is_escaped(tmp_path, capsys, encfs_home):
    evil = "\x1b[2K\rfake\u202e"
    code, _out, err = run_cli(capsys, "keys", "create", "--alias", "esc", "--description", evil, "--tag", f"t={evil}")
    assert code == 0, err
    for args in (["keys", "describe", "esc"], ["keys", "list"]):
        code, out, err = run_cli(capsys, *args)
        assert code == 0 and "\x1b" not in out and "\u202e" not in out, args
    code, out, _err = run_cli(capsys, "keys", "describe", "esc")
    assert "\\x1b[2K\\x0dfake\\u202e" in out
    efs = EncryptedFileSystem(target_protocol="file", skip_instance_cache=True)
    name = tmp_path / f"obj{evil}"
    efs.pipe_file(str(name), b"x")
    code, out, err = run_cli(capsys, "rewrap", "-v", "--to", "local://alias/esc", str(tmp_path))
    assert code == 0 and "\x1b" not in out + err and "\\x1b" in out, err
    code, out, err = run_cli(capsys, "audit", "--action", "rewrap")
    assert code == 0 and "\\x1b[2K" in out and "\x1b" not in out and "\u202e" not in out
    code, out, _err = run_cli(capsys, "audit", "--action", "rewrap", "--json")
    assert "\\u001b" in out  # JSON keeps its own escaping


def test_cp_r_skips_symlinks_quietly_and_reports_only_special_files(tmp_path, capsys, encfs_home):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "real").write_bytes(b"r")
    (tree / "link").symlink_to(tree / "real")
    code, _out, err = run_cli(capsys, "cp", "-r", "-q", str(tree), "enc::" + str(tmp_path / "enc"))
    assert code == 0 and err == ""
