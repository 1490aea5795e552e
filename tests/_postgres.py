"""A throwaway PostgreSQL server that the tests start and stop themselves.

Debian's `postgresql` package ships the server binaries under
/usr/lib/postgresql/<major>/bin; `initdb` and `postgres` refuse to run as
root, so when the tests run as root the cluster belongs to an unprivileged
user (`postgres`, which the package creates) and every server command runs
through `runuser`. The cluster lives in a temporary directory, listens on
127.0.0.1 and a free port only (and on a socket in that directory), trusts
local connections (it is reachable from this machine alone and is deleted at
the end), and is stopped with `pg_ctl stop -m immediate` plus a directory
removal.

Used as a pytest plugin (`postgres` fixture, module scope per requesting
module) and as a plain module by benchmarks.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

_RUN_AS = "postgres"


def _bindir() -> str | None:
    """The newest installed server's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def available() -> str | None:
    """None if a server can be started here, else the reason it cannot."""
    if _bindir() is None:
        return "PostgreSQL server binaries not found (Debian package `postgresql`)"
    if os.geteuid() == 0:
        try:
            import pwd
            pwd.getpwnam(_RUN_AS)
        except KeyError:
            return f"running as root and no unprivileged user {_RUN_AS!r} to own the cluster"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """One cluster in a temporary directory; `dsn` connects as superuser."""

    port: int = 0
    workdir: str = ""
    user: str = "postgres"
    database: str = "postgres"
    _as_other: list[str] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={self.database}"

    def url(self, database: str | None = None) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database or self.database}"

    @property
    def datadir(self) -> str:
        return os.path.join(self.workdir, "data")

    def _run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self._as_other, *argv], check=check, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def start(self) -> PostgresServer:
        reason = available()
        if reason:
            raise RuntimeError(reason)
        bindir = _bindir()
        assert bindir is not None
        self.workdir = tempfile.mkdtemp(prefix="encfs-pg-")
        if os.geteuid() == 0:
            # The server refuses root: hand the directory to the unprivileged
            # user and run every server command as that user.
            shutil.chown(self.workdir, user=_RUN_AS, group=_RUN_AS)
            self._as_other = ["runuser", "-u", _RUN_AS, "--"]
        else:
            import getpass
            self.user = getpass.getuser()
        self._run(os.path.join(bindir, "initdb"), "-D", self.datadir, "-U", self.user,
                  "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
        self.start_server()
        return self

    def start_server(self) -> None:
        """(Re)start the server on the same data directory and port."""
        bindir = _bindir()
        assert bindir is not None
        if not self.port:
            self.port = _free_port()
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.workdir} "
                "-c max_connections=200 -c shared_buffers=64MB")
        self._run(os.path.join(bindir, "pg_ctl"), "-D", self.datadir, "-l",
                  os.path.join(self.workdir, "server.log"), "-o", opts, "-w", "-t", "60", "start")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._run(os.path.join(bindir, "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                         check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not become ready: " + self.log_tail())

    def stop_server(self, mode: str = "fast") -> None:
        bindir = _bindir()
        assert bindir is not None
        self._run(os.path.join(bindir, "pg_ctl"), "-D", self.datadir, "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop_server(mode)
        self.start_server()

    def createdb(self, name: str) -> str:
        bindir = _bindir()
        assert bindir is not None
        self._run(os.path.join(bindir, "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", self.user, name)
        return self.url(name)

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(os.path.join(self.workdir, "server.log")) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no server log)"

    def close(self) -> None:
        if self.workdir:
            self.stop_server("immediate")
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = ""


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for this test module; skipped (saying why) only
    where the Debian package is not installed."""
    reason = available()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.close()
