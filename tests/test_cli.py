"""The ``encfs`` command line, run as a user runs it: in a subprocess.

Each test gets its own ENCFS_HOME (conftest) and passes it to the child, so
the user's keystore is never touched.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from encfs.format import DEFAULT_SEGMENT, HEADER_REGION, MAGIC, parse_header


def run(args: list[str], home: Path, cwd: Path, *, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ENCFS_HOME": str(home)}
    env.pop("ENCFS_DEBUG", None)
    env.pop("ENCFS_KEY", None)
    return subprocess.run([sys.executable, "-m", "encfs.cli", *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, timeout=120, check=False)


def assert_one_error_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode()
    assert proc.returncode != 0
    assert "Traceback" not in err and "Traceback" not in proc.stdout.decode()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("encfs: error: "), err
    return lines[0]


def key_materials(home: Path) -> list[bytes]:
    """Every root key's raw material in the keystore (to prove it never leaks)."""
    doc = json.loads((home / "keystore.json").read_text())
    out = []
    for rec in doc["keys"].values():
        for version in rec["versions"].values():
            out.append(base64.b64decode(version["material"]))
    assert out
    return out


def leak_forms(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).decode().rstrip("=")]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small plaintext tree: nested dirs, an empty file, a multi-segment
    binary file and text with NUL and CRLF bytes."""
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(300_000))  # five 64 KiB segments
    (src / "empty").write_bytes(b"")
    (src / "sub" / "notes.txt").write_bytes(b"hello\r\nworld\x00\xff secret-plaintext-marker\n")
    (src / "sub" / "deeper" / "seg.bin").write_bytes(os.urandom(DEFAULT_SEGMENT))  # exactly one segment
    return src


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_writes_ciphertext(tmp_path: Path, encfs_home: Path) -> None:
    proc = run(["demo", "--dir", "demo"], encfs_home, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "Traceback" not in proc.stderr.decode()
    assert (encfs_home / "keystore.json").exists()
    for name in ("sales.parquet", "sales.csv"):
        raw = (tmp_path / "demo" / name).read_bytes()
        assert raw[:4] == MAGIC
        body = raw[HEADER_REGION:]
        assert b"product_id" not in body and b"PAR1" not in raw[:8] and b"Central" not in body
    assert "encfs info" in out and "encfs verify" in out  # shows info and what to try next
    assert "authenticated   yes" in out
    for secret in key_materials(encfs_home):
        assert not any(form in out for form in leak_forms(secret))
    verify = run(["verify", "demo"], encfs_home, tmp_path)
    assert verify.returncode == 0 and verify.stdout.decode().count("OK ") == 2


def test_cp_round_trip_recursive_with_jobs(tmp_path: Path, encfs_home: Path, tree: Path) -> None:
    proc = run(["cp", "-r", "-q", "src", "enc::enc"], encfs_home, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    at_rest = read_tree(tmp_path / "enc")
    assert set(at_rest) == set(read_tree(tree))
    plain = read_tree(tree)
    for name, raw in at_rest.items():
        assert raw[:4] == MAGIC
        assert len(raw) > parse_header(raw).header_region + len(plain[name])
        if plain[name]:
            assert plain[name][:32] not in raw
    assert b"secret-plaintext-marker" not in at_rest["sub/notes.txt"]

    proc = run(["cp", "-r", "-q", "--jobs", "2", "enc::enc", "back"], encfs_home, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert read_tree(tmp_path / "back") == plain

    # Into an existing directory (POSIX cp): lands under the source's name.
    (tmp_path / "into").mkdir()
    proc = run(["cp", "-r", "-q", "-j", "2", "enc::enc/sub", "into"], encfs_home, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (tmp_path / "into" / "sub" / "notes.txt").read_bytes() == plain["sub/notes.txt"]


def test_cp_single_file_and_summary(tmp_path: Path, encfs_home: Path, tree: Path) -> None:
    proc = run(["cp", "src/big.bin", "enc::one.bin"], encfs_home, tmp_path)
    assert proc.returncode == 0
    assert "copied 1 file" in proc.stderr.decode()
    assert (tmp_path / "one.bin").read_bytes()[:4] == MAGIC
    proc = run(["cp", "enc::one.bin", "out/"], encfs_home, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (tmp_path / "out" / "one.bin").read_bytes() == (tree / "big.bin").read_bytes()


def test_cp_directory_needs_recursive(tmp_path: Path, encfs_home: Path, tree: Path) -> None:
    line = assert_one_error_line(run(["cp", "src", "enc::x"], encfs_home, tmp_path))
    assert "-r" in line
    assert not (tmp_path / "x").exists()


def test_cp_refuses_to_overwrite_its_source(tmp_path: Path, encfs_home: Path, tree: Path) -> None:
    before = read_tree(tree)
    assert "itself" in assert_one_error_line(run(["cp", "-r", "src", "enc::src/sub"], encfs_home, tmp_path))
    assert "same object" in assert_one_error_line(run(["cp", "src/big.bin", "enc::src/big.bin"], encfs_home, tmp_path))
    assert read_tree(tree) == before


def test_cat_is_binary_safe(tmp_path: Path, encfs_home: Path, tree: Path) -> None:
    run(["cp", "-r", "-q", "src", "enc::enc"], encfs_home, tmp_path)
    proc = run(["cat", "enc/big.bin"], encfs_home, tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == (tree / "big.bin").read_bytes()
    proc = run(["cat", "enc::enc/sub/notes.txt", "enc/empty"], encfs_home, tmp_path)
    assert proc.stdout == (tree / "sub" / "notes.txt").read_bytes()


def test_cat_into_a_closed_pipe_exits_quietly(tmp_path: Path, encfs_home: Path) -> None:
    """`encfs cat big | head -c 10`: like coreutils, no message and status 141
    (128 + SIGPIPE), never click's silent 1 or a traceback."""
    (tmp_path / "huge.bin").write_bytes(os.urandom(9_000_000))  # several of cat's 4 MiB writes
    run(["cp", "-q", "huge.bin", "enc::big.bin"], encfs_home, tmp_path)
    env = {**os.environ, "ENCFS_HOME": str(encfs_home)}
    env.pop("ENCFS_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "encfs.cli", "cat", "big.bin"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == (tmp_path / "huge.bin").read_bytes()[:10]
    proc.stdout.close()  # the rest does not fit in a pipe buffer: the writer hits EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


def test_ls_reports_plaintext_sizes(tmp_path: Path, encfs_home: Path, tree: Path) -> None:
    run(["cp", "-r", "-q", "src", "enc::enc"], encfs_home, tmp_path)
    proc = run(["ls", "-l", "enc"], encfs_home, tmp_path)
    assert proc.returncode == 0
    rows = {line.split()[-1].rstrip("/").rsplit("/", 1)[-1]: line.split() for line in proc.stdout.decode().splitlines()}
    assert rows["big.bin"][1] == "300000"
    assert int(rows["big.bin"][2]) == (tmp_path / "enc" / "big.bin").stat().st_size
    assert rows["empty"][1] == "0"
    assert rows["sub"][0] == "dir"
    short = run(["ls", "enc::enc"], encfs_home, tmp_path).stdout.decode().split()
    assert short[short.index(str(tmp_path / "enc" / "big.bin")) - 1] == "300000"
    listing = json.loads(run(["ls", "--json", "enc::enc/sub"], encfs_home, tmp_path).stdout)
    sizes = {Path(e["name"]).name: e["size"] for e in listing}
    assert sizes == {"notes.txt": len((tree / "sub" / "notes.txt").read_bytes()), "deeper": sizes["deeper"]}
    # A file that is not an encfs object is flagged, not given a made-up size.
    (tmp_path / "enc" / "stray.txt").write_bytes(b"plain")
    assert "not an encfs object" in run(["ls", "-l", "enc"], encfs_home, tmp_path).stdout.decode()


def test_info_shows_header_and_no_key_material(tmp_path: Path, encfs_home: Path, tree: Path) -> None:
    run(["cp", "-q", "src/big.bin", "enc::obj.bin"], encfs_home, tmp_path)
    raw = (tmp_path / "obj.bin").read_bytes()
    header = parse_header(raw[:HEADER_REGION])
    proc = run(["info", "--json", "obj.bin"], encfs_home, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    info = json.loads(proc.stdout)
    default_id = json.loads((encfs_home / "keystore.json").read_text())["aliases"]["default"]
    assert info["format_version"] == 1
    assert info["suite_name"] == header.suite_name
    assert info["segment_size"] == DEFAULT_SEGMENT
    assert info["object_id"] == header.object_id.hex()
    assert info["plaintext_size"] == 300_000 and info["encrypted_size"] == len(raw)
    assert info["wrapped_keys"] == [{"uri": f"local://{default_id}", "provider": "local",
                                     "key_id": default_id, "version": "1"}]
    assert info["context"]["encfs:path"] == str(tmp_path / "obj.bin")
    assert info["authenticated"] is True
    text = run(["info", "enc::obj.bin"], encfs_home, tmp_path).stdout.decode()
    assert "ENCF v1" in text and default_id in text and header.object_id.hex() in text
    secrets = key_materials(encfs_home) + [w.wrapped for w in header.wrapped_keys] + [header.commitment]
    for out in (proc.stdout.decode(), text):
        for secret in secrets:
            assert not any(form in out for form in leak_forms(secret))


def test_info_segment_size_option(tmp_path: Path, encfs_home: Path, tree: Path) -> None:
    proc = run(["cp", "-q", "-o", "enc.segment_size=4096", "src/big.bin", "enc::small-seg.bin"], encfs_home, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    info = json.loads(run(["info", "--json", "small-seg.bin"], encfs_home, tmp_path).stdout)
    assert info["segment_size"] == 4096 and info["segments"] == -(-300_000 // 4096)


def test_info_text_for_one_segment_and_a_key_without_version(tmp_path: Path, encfs_home: Path) -> None:
    from encfs.cli.files import format_info

    (tmp_path / "one.txt").write_bytes(b"hi")
    run(["cp", "-q", "one.txt", "enc::one.bin"], encfs_home, tmp_path)
    report = json.loads(run(["info", "--json", "one.bin"], encfs_home, tmp_path).stdout)
    text = "\n".join(format_info(report))
    assert "(1 segment + 496-byte header)" in text  # a compact v1.1 header (FORMAT.md 3.1)
    assert "ENCF v1.1" in text
    assert "(version 1)" in text
    # KMS answers without KeyMaterialId (moto, keys never rotated on demand) leave the version empty.
    report["wrapped_keys"] = [{"uri": "aws-kms://arn:aws:kms:eu-west-1:123456789012:key/k", "version": ""}]
    line = next(x for x in format_info(report) if x.startswith("wrapped keys"))
    assert line.endswith("key/k (no version recorded)") and "version )" not in line


def test_verify_passes_then_names_the_tampered_object(tmp_path: Path, encfs_home: Path, tree: Path) -> None:
    run(["cp", "-r", "-q", "src", "enc::enc"], encfs_home, tmp_path)
    proc = run(["verify", "enc"], encfs_home, tmp_path)
    assert proc.returncode == 0, proc.stdout.decode()
    assert proc.stdout.decode().count("OK ") == 4

    victim = tmp_path / "enc" / "big.bin"
    data = bytearray(victim.read_bytes())
    data[HEADER_REGION + 3 * (DEFAULT_SEGMENT + 16) + 100] ^= 0x01  # one bit in the fourth segment
    victim.write_bytes(bytes(data))
    proc = run(["verify", "enc"], encfs_home, tmp_path)
    out = proc.stdout.decode()
    assert proc.returncode == 1
    assert f"FAILED  {victim}" in out
    assert out.count("OK ") == 3
    assert "Traceback" not in proc.stderr.decode()

    # Only the named object: the others pass, this one fails.
    assert run(["verify", "enc/sub/notes.txt"], encfs_home, tmp_path).returncode == 0
    assert run(["verify", "enc/sub/notes.txt", "enc/big.bin"], encfs_home, tmp_path).returncode == 1


def test_verify_detects_truncation_and_a_moved_object(tmp_path: Path, encfs_home: Path, tree: Path) -> None:
    run(["cp", "-r", "-q", "src", "enc::enc"], encfs_home, tmp_path)
    seg = tmp_path / "enc" / "sub" / "deeper" / "seg.bin"
    seg.write_bytes(seg.read_bytes()[:-1])
    # Copying ciphertext behind encfs's back: the header is bound to the old path.
    (tmp_path / "enc" / "moved.bin").write_bytes((tmp_path / "enc" / "big.bin").read_bytes())
    proc = run(["verify", "enc"], encfs_home, tmp_path)
    out = proc.stdout.decode()
    assert proc.returncode == 1
    assert f"FAILED  {seg}" in out and f"FAILED  {tmp_path / 'enc' / 'moved.bin'}" in out
    assert f"OK      {tmp_path / 'enc' / 'big.bin'}" in out
    # ...while encfs cp re-binds it, so a copy through encfs verifies.
    assert run(["cp", "-q", "enc::enc/big.bin", "enc::enc/copied.bin"], encfs_home, tmp_path).returncode == 0
    assert run(["verify", "enc/copied.bin"], encfs_home, tmp_path).returncode == 0


def test_no_usable_key_says_how_to_name_one(tmp_path: Path, encfs_home: Path) -> None:
    (tmp_path / "plain.txt").write_bytes(b"x")
    proc = run(["cp", "-q", "--keystore", str(tmp_path / "other-ks"), "plain.txt", "enc::o.bin"], encfs_home, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    line = assert_one_error_line(run(["cat", "o.bin"], encfs_home, tmp_path))
    assert "no root key this filesystem may use" in line and "--key" in line and "--keystore" in line
    assert run(["cat", "--keystore", str(tmp_path / "other-ks"), "o.bin"], encfs_home, tmp_path).stdout == b"x"


def test_verify_missing_path_fails(tmp_path: Path, encfs_home: Path) -> None:
    proc = run(["verify", "nothing-here"], encfs_home, tmp_path)
    assert proc.returncode == 1 and "FAILED" in proc.stdout.decode()


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["cat", "missing.bin"], "missing.bin"),
        (["cat", "."], "is a directory"),
        (["stats", "missing.bin"], "no such file or directory"),
        (["info", "plain.txt"], "not an encfs object"),
        (["cat", "plain.txt"], "not an encfs object"),
        (["cp", "plain.txt", "enc::out.bin", "--key", "not-a-uri"], "not-a-uri"),
        (["cp", "plain.txt", "enc::out.bin", "--key", "local://no-such-key"], "no-such-key"),
        (["cp", "plain.txt", "enc::out.bin", "--key", "nope://x"], "nope"),
        (["cp", "missing.bin", "enc::out.bin"], "missing.bin"),
        (["cp", "plain.txt"], "DST"),
        (["cp", "-o", "enc.key=local://default", "plain.txt", "enc::o"], "unknown enc option"),
        (["ls", "-l", "--bogus", "."], "--bogus"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, encfs_home: Path, args: list[str], expect: str) -> None:
    (tmp_path / "plain.txt").write_bytes(b"just some plaintext, not an encfs object" * 200)
    line = assert_one_error_line(run(args, encfs_home, tmp_path))
    assert expect in line
    assert not (tmp_path / "out.bin").exists()  # a failed cp leaves nothing behind


def test_cp_to_s3_with_kms_and_layer_options(tmp_path: Path, encfs_home: Path, tree: Path, moto_server, s3,
                                             kms_key: str) -> None:
    """The CLI on the cloud path: enc::s3:// under an AWS KMS key (moto on
    127.0.0.1), target and provider options given with -o, two workers."""
    opts = ["--key", kms_key,
            "-o", f"s3.endpoint_url={moto_server.endpoint}",
            "-o", "enc.providers=" + json.dumps({"aws-kms": moto_server.kms_options()})]
    url = f"enc::s3://{s3.test_bucket}/data"
    proc = run(["cp", "-r", "-q", "-j", "2", *opts, "src", url], encfs_home, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    raw = s3.cat_file(f"{s3.test_bucket}/data/big.bin")
    assert raw[:4] == MAGIC and (tree / "big.bin").read_bytes()[:64] not in raw

    info = json.loads(run(["info", "--json", *opts, f"{url}/big.bin"], encfs_home, tmp_path).stdout)
    assert [w["provider"] for w in info["wrapped_keys"]] == ["aws-kms"]
    assert info["wrapped_keys"][0]["key_id"].startswith("arn:aws:kms:")
    assert info["authenticated"] is True

    verify = run(["verify", *opts, url], encfs_home, tmp_path)
    assert verify.returncode == 0, verify.stdout.decode() + verify.stderr.decode()
    proc = run(["cp", "-r", "-q", *opts, url, "back"], encfs_home, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert read_tree(tmp_path / "back") == read_tree(tree)


def test_provider_options_via_o_reach_the_enc_layer(encfs_home: Path) -> None:
    """`-o aws-kms.region_name=...` works for file commands as it does for `encfs keys`."""
    from encfs.cli.util import location, parse_options

    opts = parse_options(["aws-kms.region_name=eu-west-1", "enc.providers={\"aws-kms\": {\"max_attempts\": 2}}",
                          "pkcs11.max_sessions=2"])
    fs, _ = location("enc::memory://p/x", options=opts).connect()
    assert fs.storage_options["providers"] == {"aws-kms": {"max_attempts": 2, "region_name": "eu-west-1"},
                                               "pkcs11": {"max_sessions": 2}}


def test_hsm_init_hint_is_a_working_command(tmp_path: Path, encfs_home: Path) -> None:
    """The "# Use it:" line of `encfs hsm init` names options that exist."""
    pytest.importorskip("pkcs11")
    import shutil

    if shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 not installed (tests/run.sh installs it)")
    proc = run(["hsm", "init", str(tmp_path / "hsm")], encfs_home, tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    env = dict(line[len("export "):].split("=", 1) for line in proc.stdout.decode().splitlines())
    hint = next(line for line in proc.stderr.decode().splitlines() if line.startswith("# Use it: "))
    command = hint[len("# Use it: "):].split(",")[0].replace("LABEL", "hinted").split()
    assert command[0] == "encfs"
    child = {**os.environ, "ENCFS_HOME": str(encfs_home), **env}
    created = subprocess.run([sys.executable, "-m", "encfs.cli", *command[1:]], cwd=tmp_path, env=child,
                             capture_output=True, timeout=120, check=False)
    assert created.returncode == 0, created.stderr.decode()
    assert "pkcs11://encfs/hinted" in created.stdout.decode()
    assert "never_extractable: True" in created.stdout.decode()  # long field names keep a space


def test_worker_recipe_holds_references_only(tmp_path: Path, encfs_home: Path) -> None:
    """What cp --jobs hands a worker: a Location (URL, key URIs, options).
    It pickles without any key material and rebuilds a working filesystem."""
    import pickle

    from encfs.cli.util import location, parse_options

    loc = location(f"enc::{tmp_path}/w", keys=("local://default",), keystore=str(encfs_home),
                   options=parse_options(["enc.segment_size=4096"]))
    fs, path = loc.connect()
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/a.bin", b"worker data")
    blob = pickle.dumps(loc)
    for secret in key_materials(encfs_home):
        assert secret not in blob and not any(form.encode() in blob for form in leak_forms(secret))
    fs2, path2 = pickle.loads(blob).connect()
    assert path2 == path and fs2.segment_size == 4096
    assert fs2.cat_file(f"{path2}/a.bin") == b"worker data"
