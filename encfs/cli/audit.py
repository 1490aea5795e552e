"""``encfs audit``: read, filter and verify the hash-chained audit log."""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Iterable

import click

from ..audit import ACTIONS, AuditLog, _key_matches, get_log, parse_when
from ..errors import ConfigurationError, EncfsError
from .main import cli
from .util import echo


def _log(path: str | None, keystore: str | None) -> AuditLog:
    if path and path.startswith(("postgresql://", "postgres://")):
        # The key server's shared trail (encfs/server/audit_pg.py).
        from ..server.audit_pg import DatabaseAuditLog

        return DatabaseAuditLog(path)
    if path:
        return AuditLog(path)
    log = get_log(keystore)
    if log is None:
        raise ConfigurationError("auditing is turned off (ENCFS_AUDIT_LOG=off)")
    return log


def _line(rec: dict) -> str:
    key = rec.get("key") or "-"
    if rec.get("version"):
        key += f"#v{rec['version']}"
    extra = ""
    if rec.get("path"):
        extra += f" path={rec['path']}"
    if rec.get("alias"):
        extra += f" alias={rec['alias']}"
    if rec.get("automatic"):
        extra += " (automatic)"
    err = f" error={rec['error']}" if rec.get("error") else ""
    return f"{rec.get('time')}  {rec.get('principal')}  {rec.get('action')}  {key}  {rec.get('outcome')}{extra}{err}"


def _key_names(key: str, keystore: str | None) -> list[str]:
    """The key as typed plus, for a local alias, the key id it names now
    (records of key use carry the id, not the alias)."""
    names = [key]
    if "://" not in key or key.startswith("local://"):
        from ..keystore.store import LocalKeystore, normalize_alias

        name = key.split("://", 1)[-1]
        try:
            key_id = LocalKeystore(keystore).aliases().get(normalize_alias(name))
        except EncfsError:
            key_id = None  # no or unreadable keystore: filter by the name only
        if key_id:
            names.append(f"local://{key_id}")
    return names


def _did_you_mean(value: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(value, sorted(choices), n=3)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _check_filters(log: AuditLog, keystore: str | None, key: str | None, keys: list[str] | None,
                   action: str | None, principal: str | None) -> None:
    """Called when nothing matched: a filter value that names nothing in the
    log (a typo) is an error, not an empty answer.  Known actions and keys of
    the local keystore are fine even when the log has no record of them yet."""
    seen_actions: set[str] = set()
    seen_principals: set[str] = set()
    key_seen = False
    for rec in log.records():
        seen_actions.add(str(rec.get("action")))
        seen_principals.add(str(rec.get("principal")))
        key_seen = key_seen or bool(keys and _key_matches(keys, rec))
    if action and action not in ACTIONS | seen_actions:
        hint = _did_you_mean(action, ACTIONS | seen_actions) or f"; actions: {', '.join(sorted(ACTIONS))}"
        raise ConfigurationError(f"unknown audit action {action!r}{hint}")
    if principal and principal not in seen_principals:
        raise ConfigurationError(
            f"no audit record by principal {principal!r} in {log.path}{_did_you_mean(principal, seen_principals)}")
    # A local alias that resolved to a key id gave two names: the key exists.
    if key and keys and not key_seen and len(keys) == 1 and not _is_local_key(key, keystore):
        raise ConfigurationError(f"no audit record names key {key!r} in {log.path}")


def _is_local_key(key: str, keystore: str | None) -> bool:
    if "://" in key and not key.startswith("local://"):
        return False
    from ..keystore.store import LocalKeystore

    name = key.split("://", 1)[-1]
    try:
        return name in LocalKeystore(keystore).list_ids()
    except EncfsError:
        return False


@cli.group("audit", invoke_without_command=True)
@click.option("--log", "log_path", metavar="FILE", default=None,
              help="Audit log to read (default $ENCFS_AUDIT_LOG or $ENCFS_HOME/audit.log), or a key "
                   "server's PostgreSQL URL (its shared trail).")
@click.option("--keystore", metavar="DIR", default=None, help="Keystore directory whose audit.log to read.")
@click.option("--key", default=None, help="Only records about this key (id, alias or URI).")
@click.option("--action", default=None, help="Only this action (wrap, unwrap, generate, rewrap, disable-key, ...).")
@click.option("--principal", default=None, help="Only this principal (user@host).")
@click.option("--since", default=None, help="From this time: ISO 8601 or an age such as 2h, 7d.")
@click.option("--until", default=None, help="Before this time: ISO 8601 or an age.")
@click.option("--json", "as_json", is_flag=True, help="Print the matching records as JSON Lines.")
@click.pass_context
def audit(ctx: click.Context, log_path: str | None, keystore: str | None, key: str | None, action: str | None,
          principal: str | None, since: str | None, until: str | None, as_json: bool) -> None:
    """Show audit records (every key use and admin action), filtered.

    'encfs audit verify' checks the hash chain.
    """
    ctx.obj = (log_path, keystore)
    if ctx.invoked_subcommand is not None:
        return
    log = _log(log_path, keystore)
    start = parse_when(since) if since else None
    end = parse_when(until) if until else None
    if start and end and start >= end:
        raise ConfigurationError(f"--since {since} is not before --until {until}: no record can match")
    keys = _key_names(key, keystore) if key else None
    shown = 0
    for rec in log.query(key=keys, action=action, principal=principal, since=start, until=end):
        shown += 1
        if as_json:
            click.echo(json.dumps(rec, sort_keys=True))
        else:
            echo(_line(rec))  # records hold paths and key ids from objects
    if not shown:
        _check_filters(log, keystore, key, keys, action, principal)


@audit.command("verify")
@click.pass_context
def verify(ctx: click.Context) -> None:
    """Check the hash chain: detects edited, removed, inserted and reordered records."""
    log_path, keystore = ctx.obj or (None, None)
    log = _log(log_path, keystore)
    result = log.verify()
    if result.ok:
        click.echo(f"audit log {log.path}: OK, {result.count} records, head {result.head}")
        return
    for problem in result.problems:
        echo(f"encfs: audit: {problem}", err=True)
    click.echo(f"encfs: error: audit log {log.path} failed verification ({len(result.problems)} problem(s))", err=True)
    sys.exit(1)
