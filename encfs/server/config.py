"""The key server's configuration (TOML) and dev mode.

See docs/SERVER.md for the reference; in short::

    [server]
    host = "127.0.0.1"            # plain HTTP only on loopback; else tls_cert + tls_key
    port = 8443
    region = "us-east-1"
    account = "111122223333"
    data_dir = "/var/lib/encfs-kms"   # kms.db (SQLite) and audit.log by default

    [master_key]
    type = "local"                # a key in encfs's local keystore
    keystore = "/etc/encfs-kms/keystore"
    alias = "encfs-server/master"

    [[principals]]
    name = "etl"                  # arn:aws:iam::<account>:user/etl unless arn = "..."
    access_key_id = "AKIA..."
    secret_access_key_env = "ETL_SECRET"   # or secret_access_key_file, or (dev only) secret_access_key
    account_actions = ["kms:ListKeys", "kms:CreateAlias:alias/etl/*"]
    # actions not about one key (CreateKey, ListKeys, ListAliases, GenerateRandom),
    # and alias operations (Create/Update/DeleteAlias), optionally only on
    # alias names matching a pattern after the action

Secrets are read once at startup, sealed under the master key into storage,
and never logged or echoed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (the server extra installs tomli there)
    import tomli as tomllib

DEFAULT_ACCOUNT = "111122223333"
DEFAULT_REGION = "us-east-1"


@dataclass
class Principal:
    name: str
    arn: str
    access_key_id: str
    secret: str = field(repr=False)
    account_actions: tuple[str, ...] = ()


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    region: str = DEFAULT_REGION
    account: str = DEFAULT_ACCOUNT
    data_dir: Path = Path(".")
    storage: dict[str, Any] = field(default_factory=dict)
    master_key: dict[str, Any] = field(default_factory=dict)
    audit_path: Path | None = None
    audit_sync: str = "interval"
    audit_sync_interval: float = 0.05
    tls_cert: str | None = None
    tls_key: str | None = None
    principals: list[Principal] = field(default_factory=list)
    max_body_bytes: int = 65536
    max_inflight: int = 1024
    clock_skew_seconds: int = 300
    min_deletion_days: int = 7
    sweep_seconds: float = 60.0
    shutdown_timeout: float = 10.0
    log_requests: bool = False
    workers: int = 1
    #: How long a server may reuse an access key it read from storage (its
    #: principal, sealed secret and account_actions): the bound within which
    #: a principal revoked by a sync is refused everywhere.  None: 1 s on
    #: PostgreSQL (a round trip per request saved), 0 (no cache) on SQLite.
    access_key_cache_seconds: float | None = None
    #: The names clients reach this server by (``host`` or ``host:port``):
    #: when set, a request whose signed Host header names another server is
    #: refused (a request captured on its way to one server cannot be
    #: replayed against another that shares the principal's access key).
    hostnames: tuple[str, ...] = ()
    #: ``encfs server --sync-principals``: store this config's principals even
    #: where other replicas share the database (never from the file: a
    #: one-off act, see encfs/server/principals.py).
    sync_principals: bool = False

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def check(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigurationError("server: tls_cert and tls_key go together")
        if not self.tls and not _loopback(self.host):
            raise ConfigurationError(f"server: plain HTTP is only allowed on loopback; {self.host} needs "
                                     "tls_cert and tls_key")
        seen: set[str] = set()
        for p in self.principals:
            if p.access_key_id in seen:
                raise ConfigurationError(f"principals: access key {p.access_key_id} is listed twice")
            seen.add(p.access_key_id)
            if len(p.secret) < 16:
                raise ConfigurationError(f"principals: the secret of {p.name} is shorter than 16 characters")
            for entry in p.account_actions:
                _check_account_action(p.name, entry)
        for name in self.hostnames:
            if not _HOSTNAME.fullmatch(name):
                raise ConfigurationError(f"server: hostnames: {name!r} is not a host name or host:port")
        if not 1 <= self.workers <= 64:
            raise ConfigurationError("server: workers must be between 1 and 64")
        if self.access_key_cache_seconds is not None and not 0 <= self.access_key_cache_seconds <= 10:
            raise ConfigurationError("server: access_key_cache_seconds must be between 0 and 10")
        if not (0 < self.max_body_bytes <= 1 << 20):
            raise ConfigurationError("server: max_body_bytes must be between 1 and 1048576")


_HOSTNAME = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_ALIAS_PATTERN = re.compile(r"alias/[A-Za-z0-9/_*?-]+")


def _check_account_action(principal: str, entry: str) -> None:
    """account_actions entries: "kms:<Action>" (wildcards allowed), or
    "kms:<Action>:alias/<pattern>" for an alias operation on matching names."""
    from .policy import _like
    from .service import ALIAS_ACTIONS, split_account_action

    action, names = split_account_action(entry)
    if names is None:
        return
    if not _ALIAS_PATTERN.fullmatch(names):
        raise ConfigurationError(f"principals: {principal}: {entry!r}: an alias pattern holds only letters, "
                                 "digits, / _ - and the wildcards * ?")
    if not any(_like(action, f"kms:{op}", ignore_case=True) for op in ALIAS_ACTIONS):
        raise ConfigurationError(f"principals: {principal}: {entry!r}: an alias pattern applies only to "
                                 "kms:CreateAlias, kms:UpdateAlias and kms:DeleteAlias")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret(entry: dict[str, Any], where: str, base: Path) -> str:
    if entry.get("secret_access_key_env"):
        value = os.environ.get(entry["secret_access_key_env"])
        if not value:
            raise ConfigurationError(f"{where}: environment variable {entry['secret_access_key_env']} is not set")
        return value
    if entry.get("secret_access_key_file"):
        try:
            return (base / Path(entry["secret_access_key_file"]).expanduser()).read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"{where}: cannot read secret_access_key_file: {exc.strerror}") from None
    if entry.get("secret_access_key"):
        return str(entry["secret_access_key"])
    raise ConfigurationError(f"{where}: needs secret_access_key_env, secret_access_key_file or secret_access_key")


def _path(base: Path, value: Any) -> str | None:
    return None if value is None else str(base / Path(str(value)).expanduser())


def load(path: str | os.PathLike[str]) -> ServerConfig:
    p = Path(path).expanduser()
    try:
        doc = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigurationError(f"cannot read config {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config {p} is not valid TOML: {exc}") from None
    return from_dict(doc, base=p.parent)


def from_dict(doc: dict[str, Any], base: Path = Path(".")) -> ServerConfig:
    srv = dict(doc.get("server") or {})
    known = {"host", "port", "region", "account", "data_dir", "tls_cert", "tls_key", "max_body_bytes",
             "max_inflight", "clock_skew_seconds", "min_deletion_days", "sweep_seconds", "shutdown_timeout",
             "log_requests", "workers", "access_key_cache_seconds",
             "hostnames"}
    unknown = set(srv) - known
    if unknown:
        raise ConfigurationError(f"server: unknown setting(s) {', '.join(sorted(unknown))}")
    data_dir = base / Path(str(srv.get("data_dir", "."))).expanduser()
    cfg = ServerConfig(
        host=str(srv.get("host", "127.0.0.1")), port=int(srv.get("port", 8443)),
        region=str(srv.get("region", DEFAULT_REGION)), account=str(srv.get("account", DEFAULT_ACCOUNT)),
        data_dir=data_dir, tls_cert=_path(base, srv.get("tls_cert")), tls_key=_path(base, srv.get("tls_key")),
        max_body_bytes=int(srv.get("max_body_bytes", 65536)), max_inflight=int(srv.get("max_inflight", 1024)),
        clock_skew_seconds=int(srv.get("clock_skew_seconds", 300)),
        min_deletion_days=int(srv.get("min_deletion_days", 7)), sweep_seconds=float(srv.get("sweep_seconds", 60)),
        shutdown_timeout=float(srv.get("shutdown_timeout", 10)), log_requests=bool(srv.get("log_requests", False)),
        workers=int(srv.get("workers", 1)), hostnames=_hostnames(srv.get("hostnames", [])),
        access_key_cache_seconds=(None if srv.get("access_key_cache_seconds") is None
                                  else float(srv["access_key_cache_seconds"])),
    )
    cfg.storage = dict(doc.get("storage") or {"type": "sqlite"})
    if "url" in cfg.storage:  # [storage] url = "postgresql://..." (encfs/server/postgres.py)
        cfg.storage.setdefault("type", "postgresql")
        _check_database_url(str(cfg.storage["url"]))
    cfg.storage.setdefault("type", "sqlite")
    if cfg.storage["type"] not in ("sqlite", "postgresql"):
        raise ConfigurationError(f"storage: unknown type {cfg.storage['type']!r} (sqlite or postgresql)")
    if cfg.storage["type"] == "postgresql" and not cfg.storage.get("url"):
        raise ConfigurationError("storage: type postgresql needs url = \"postgresql://user@host:port/dbname\"")
    if cfg.storage["type"] == "sqlite":
        cfg.storage["path"] = _path(base, cfg.storage.get("path", data_dir / "kms.db"))
    cfg.master_key = dict(doc.get("master_key") or {"type": "local"})
    if cfg.master_key.get("keystore"):  # like every path here: relative to the config file
        cfg.master_key["keystore"] = _path(base, cfg.master_key["keystore"])
    audit = dict(doc.get("audit") or {})
    cfg.audit_path = Path(_path(base, audit.get("path", data_dir / "audit.log")) or "")
    cfg.audit_sync = str(audit.get("sync", "interval"))
    cfg.audit_sync_interval = float(audit.get("sync_interval", 0.05))
    if cfg.audit_sync not in ("request", "interval"):
        raise ConfigurationError("audit: sync must be 'request' or 'interval'")
    for i, entry in enumerate(doc.get("principals") or []):
        where = f"principals[{i}]"
        name = entry.get("name")
        akid = entry.get("access_key_id")
        if not name or not akid:
            raise ConfigurationError(f"{where}: needs name and access_key_id")
        cfg.principals.append(Principal(
            name=str(name), arn=str(entry.get("arn") or f"arn:aws:iam::{cfg.account}:user/{name}"),
            access_key_id=str(akid), secret=_secret(entry, where, base),
            account_actions=tuple(str(a) for a in entry.get("account_actions", ())),
        ))
    cfg.check()
    return cfg


def _hostnames(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigurationError("server: hostnames must be a list of host names (or host:port)")
    return tuple(value)


def _check_database_url(url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError("storage: url must be postgresql://user@host:port/dbname")
    if parts.password is not None:
        # Secrets never come from the config: libpq reads these itself.
        raise ConfigurationError("storage: url must not hold a password; set PGPASSWORD or PGPASSFILE "
                                 "(or use certificate or peer authentication)")


def new_access_key() -> tuple[str, str]:
    """A fresh (access key id, secret access key) pair, AWS-shaped."""
    akid = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(16))
    secret = secrets.token_urlsafe(30)[:40]
    return akid, secret


def dev_config(data_dir: Path, port: int = 0) -> ServerConfig:
    """A throwaway server: SQLite and a keystore (the master key) in
    ``data_dir``, one admin principal allowed everything."""
    akid, secret = new_access_key()
    cfg = ServerConfig(host="127.0.0.1", port=port, data_dir=data_dir, audit_path=data_dir / "audit.log",
                       storage={"type": "sqlite", "path": str(data_dir / "kms.db")},
                       master_key={"type": "local", "keystore": str(data_dir / "keystore"), "create": True},
                       principals=[Principal("admin", f"arn:aws:iam::{DEFAULT_ACCOUNT}:user/admin", akid, secret,
                                             ("kms:*",))])
    cfg.check()
    return cfg
