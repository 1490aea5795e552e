"""encfs without the POSIX-only parts of the operating system (issue 14).

Windows has no ``fcntl``, ``pwd``, ``os.fchmod``, ``os.getuid`` or
``O_NOFOLLOW``, and cannot open a directory to fsync it.  The fallbacks live
in encfs/portable.py; these tests check each one in-process, then run the
keystore, audit, keys-CLI and local-target test modules once more in a
Python whose encfs sees no such functions (tests/nonposix/sitecustomize.py).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import encfs.audit as audit_module
from encfs import portable
from encfs.keystore.storage import JsonFileStore, atomic_write_bytes

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: The modules run again without POSIX-only functions (keystore, audit log,
#: key administration, and the local-disk target with its atomic sink).
RERUN = ["test_keystore.py", "test_keystore_security.py", "test_audit.py", "test_keys_cli.py", "test_fs.py",
         "test_transactions.py"]


def _nonposix_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(HERE / "nonposix"), str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("ENCFS_AUDIT_LOG", None)
    return env


# -- each fallback, in this process ---------------------------------------------------
def test_fsync_dir_skips_where_directories_cannot_be_opened(tmp_path, monkeypatch):
    assert portable.fsync_dir(tmp_path) is True  # POSIX: really synced

    def windows_open(path, flags, mode=0o777, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "open", windows_open)
    assert portable.fsync_dir(tmp_path) is False


def test_fsync_dir_still_raises_real_io_errors(tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError) as err:
        portable.fsync_dir(tmp_path)
    assert err.value.errno == errno.EIO


def test_atomic_write_without_fchmod_or_directory_fsync(tmp_path, monkeypatch):
    real_open = os.open

    def windows_open(path, flags, mode=0o777, **kw):
        if os.path.isdir(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, mode, **kw)

    monkeypatch.delattr(os, "fchmod")
    monkeypatch.setattr(os, "open", windows_open)
    target = tmp_path / "doc.json"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert (target.stat().st_mode & 0o777) == 0o600  # chmod by path instead of fchmod
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]  # no temp file left


def test_current_uid(monkeypatch):
    assert portable.current_uid() == os.getuid()
    monkeypatch.delattr(os, "getuid")
    assert portable.current_uid() is None


def test_principal_without_user_database_or_uid(monkeypatch):
    # Windows with no USERNAME: getpass.getuser() fails importing pwd
    # (OSError on Python 3.13+), and there is no uid to fall back to.
    monkeypatch.delenv(audit_module.PRINCIPAL_ENV, raising=False)

    def no_user():
        raise ImportError("No module named 'pwd'")

    monkeypatch.setattr(audit_module.getpass, "getuser", no_user)
    monkeypatch.delattr(os, "getuid")
    assert audit_module.principal().startswith("unknown@")


def test_keystore_lock_excludes_other_holders(tmp_path):
    from filelock import FileLock, Timeout

    store = JsonFileStore(tmp_path / "keystore.json")
    with store.locked(), pytest.raises(Timeout):
        FileLock(str(store.lock_path)).acquire(timeout=0.05)
    with FileLock(str(store.lock_path)).acquire(timeout=1):
        pass  # released when the block ended


def test_audit_lock_excludes_other_holders(tmp_path):
    from filelock import FileLock

    log = audit_module.AuditLog(tmp_path / "audit.log")
    log.append("wrap", key="local://k")
    held = FileLock(str(log.lock_path))
    held.acquire()
    try:
        code = (
            "import sys\nfrom encfs.audit import AuditLog\n"
            "AuditLog(sys.argv[1]).append('unwrap', key='local://k')\n"
        )
        proc = subprocess.Popen([sys.executable, "-c", code, str(log.path)])
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)  # waits for the lock
        assert len(list(log.records())) == 1
    finally:
        held.release()
    assert proc.wait(timeout=60) == 0
    assert [r["seq"] for r in log.records()] == [1, 2] and log.verify().ok


# -- the whole of it, in a Python without them -------------------------------------------
def test_encfs_imports_and_runs_without_posix_functions(tmp_path):
    script = r"""
import os, sys
try:
    import fcntl
except ImportError:
    pass
else:
    raise SystemExit("fcntl is importable: the sitecustomize hook is not active")
import encfs, encfs.audit, encfs.keystore.storage as storage, encfs.portable as portable
for name in ("fchmod", "getuid", "O_NOFOLLOW"):
    assert not hasattr(storage.os, name), name
assert portable.fsync_dir(sys.argv[1]) is False and portable.current_uid() is None
from encfs import EncryptedFileSystem
fs = EncryptedFileSystem(target_protocol="file", skip_instance_cache=True)
path = os.path.join(sys.argv[1], "obj.bin")
fs.pipe_file(path, b"hello windows")
assert fs.cat_file(path) == b"hello windows"
assert open(path, "rb").read(4) == b"ENCF"
log = encfs.audit.get_log()
assert log.verify().ok and log.verify().count >= 2, log.verify()
assert b"\r" not in log.path.read_bytes()
print("ok")
"""
    env = _nonposix_env()
    env["ENCFS_HOME"] = str(tmp_path / "home")
    for name in ("USER", "LOGNAME", "USERNAME", "LNAME", "ENCFS_PRINCIPAL"):
        env.pop(name, None)  # getpass.getuser() then needs pwd, which is gone
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.timeout(600)
def test_keystore_audit_and_local_tests_pass_without_posix_functions(tmp_path):
    report = tmp_path / "report.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", f"--junitxml={report}",
           "--rootdir", str(REPO), *[str(HERE / name) for name in RERUN]]
    proc = subprocess.run(cmd, cwd=REPO, env=_nonposix_env(), capture_output=True, text=True, timeout=580,
                          check=False)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
    assert proc.returncode == 0, tail
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None, tail
    tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    assert failures == 0 and errors == 0, tail
    assert tests - skipped >= 100, tail  # the modules really ran, not just collected
