"""``encfs keys``: root keys and their lifecycle (docs/KEYS.md).

KEY is a key id, an alias (``lake`` or ``alias/lake``) or a full key URI;
bare ids and aliases name local keys (``local://``).  Every verb calls the
provider's administrative method, so the same command works on
``aws-kms://`` and ``pkcs11://`` keys where their service supports it, and
every call goes through the auditing proxy (one audit record each).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..audit import audited, get_log
from ..errors import ConfigurationError, EncfsError, KeystoreError
from ..keystore.store import DEFAULT_DELETION_DAYS, LocalKeystore
from ..providers import KeyInfo, KeyProvider, KeyRef, make_provider
from .main import cli
from .util import echo, parse_options, printable


def key_ref(key: str) -> KeyRef:
    """A CLI key argument as a reference: URIs as given, anything else local."""
    if "://" in key:
        return KeyRef.parse(key)
    if not key:
        raise ConfigurationError("empty key name")
    return KeyRef("local", key)


class _Ctx:
    def __init__(self, keystore: str | None, options: tuple[str, ...]) -> None:
        self.keystore = keystore
        self.options = parse_options(options)
        self._providers: dict[str, KeyProvider] = {}

    def provider(self, scheme: str) -> KeyProvider:
        if scheme not in self._providers:
            opts = dict(self.options.get(scheme, {}))
            if scheme == "local" and self.keystore:
                opts["home"] = self.keystore
            self._providers[scheme] = audited(make_provider(scheme, opts), self.keystore)
        return self._providers[scheme]

    def local_keystore(self) -> LocalKeystore:
        return LocalKeystore(self.keystore)


pass_ctx = click.make_pass_decorator(_Ctx)


@cli.group("keys")
@click.option("--keystore", metavar="DIR", default=None, help="Local keystore directory (default $ENCFS_HOME or ~/.encfs).")
@click.option("-o", "--option", "options", multiple=True, metavar="SCHEME.NAME=VALUE",
              help="Provider option, e.g. aws-kms.region_name=eu-west-1 or aws-kms.endpoint_url=http://127.0.0.1:5000.")
@click.pass_context
def keys_group(ctx: click.Context, keystore: str | None, options: tuple[str, ...]) -> None:
    """Root keys: create, list, describe, enable/disable, rotate, delete, aliases, tags.

    KEY is a key id, an alias or a key URI (aws-kms://..., pkcs11://...);
    bare ids and aliases are local keys.
    """
    ctx.obj = _Ctx(keystore, options)


# -- output -------------------------------------------------------------------------
def _info_lines(info: KeyInfo) -> list[str]:
    d = info.to_dict()
    lines = [
        f"key:              {info.uri}",
        f"state:            {info.state}",
        f"kind:             {d.get('kind', '-')}",
        f"usage:            {d.get('usage', 'ENCRYPT_DECRYPT')}",
        f"created:          {info.created or '-'}",
        f"description:      {info.description or '-'}",
        f"aliases:          {', '.join(info.aliases) or '-'}",
        f"current version:  {info.current_version or '-'}",
        f"versions:         {', '.join(info.versions) or '-'}",
        f"tags:             {', '.join(f'{k}={v}' for k, v in sorted(info.tags.items())) or '-'}",
    ]
    if "rotation_enabled" in d:
        rot = (f"every {d.get('rotation_period_days')} days, next {d.get('next_rotation')}"
               if d["rotation_enabled"] else "off")
        lines.append(f"auto rotation:    {rot}")
    if d.get("last_rotation"):
        lines.append(f"last rotation:    {d['last_rotation']}")
    if d.get("deletion_date"):
        lines.append(f"deletion date:    {d['deletion_date']}")
    shown = {"uri", "key_id", "provider", "state", "current_version", "versions", "aliases", "description", "created",
             "tags", "kind", "usage", "rotation_enabled", "rotation_period_days", "next_rotation", "last_rotation",
             "deletion_date"}
    for k, v in d.items():
        if k not in shown and v not in (None, "", [], {}):
            lines.append(f"{k + ':':<17} {v}")  # a space even after a long name
    return lines


def _show(info: KeyInfo, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=1, sort_keys=True))
    else:
        for line in _info_lines(info):
            echo(line)  # names, descriptions and tags are free text


def _parse_tags(pairs: tuple[str, ...]) -> dict[str, str]:
    tags = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="tag")
        tags[k] = v
    return tags


# -- create / list / describe ------------------------------------------------------------
@keys_group.command("create")
@click.option("--alias", default=None, help="Alias for the new key (unique), e.g. lake or alias/lake.")
@click.option("--description", default="", help="Free-text description.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Tag (repeatable).")
@click.option("--provider", "scheme", default="local", show_default=True,
              help="Key service: local, aws-kms or pkcs11.")
@click.option("--rotation-days", type=int, default=None,
              help="Turn on automatic rotation every N days (90..2560).")
@click.option("--json", "as_json", is_flag=True, help="Print the new key as JSON.")
@pass_ctx
def create(obj: _Ctx, alias: str | None, description: str, tags: tuple[str, ...], scheme: str,
           rotation_days: int | None, as_json: bool) -> None:
    """Create a customer-managed root key."""
    provider = obj.provider(scheme)
    kwargs: dict[str, Any] = {"alias": alias, "description": description, "tags": _parse_tags(tags)}
    if rotation_days is not None and scheme == "local":
        kwargs["rotation_days"] = rotation_days
    info = provider.create_key(**kwargs)
    if rotation_days is not None and scheme != "local":
        provider.set_rotation(KeyRef(scheme, info.key_id), True, rotation_days)
        info = provider.describe(KeyRef(scheme, info.key_id))
    _show(info, as_json)


@keys_group.command("list")
@click.option("--provider", "scheme", default="local", show_default=True, help="Key service to list.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable listing.")
@pass_ctx
def list_cmd(obj: _Ctx, scheme: str, as_json: bool) -> None:
    """List root keys with state, kind, current version and aliases."""
    infos = obj.provider(scheme).list_keys()
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in infos], indent=1, sort_keys=True))
        return
    if not infos:
        click.echo("no keys", err=True)
        return
    rows = [("KEY", "STATE", "KIND", "VER", "CREATED", "ALIASES")]
    for i in infos:
        row = (i.uri, i.state, str(i.extra.get("kind", "-")), i.current_version or "-", i.created or "-",
               ", ".join(i.aliases) or "-")
        rows.append(tuple(printable(v) for v in row))  # escaped before the widths are measured
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])


@keys_group.command("describe")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_ctx
def describe(obj: _Ctx, key: str, as_json: bool) -> None:
    """Show a key's metadata: state, kind, versions, aliases, tags, rotation (never key material)."""
    ref = key_ref(key)
    _show(obj.provider(ref.scheme).describe(ref), as_json)


# -- state ---------------------------------------------------------------------------------
def _after(obj: _Ctx, ref: KeyRef, what: str) -> None:
    info = obj.provider(ref.scheme).describe(ref)
    echo(f"{info.uri}: {what} (state {info.state}, version {info.current_version or '-'})")


@keys_group.command("enable")
@click.argument("key")
@pass_ctx
def enable(obj: _Ctx, key: str) -> None:
    """Enable a disabled key (it wraps and unwraps again)."""
    ref = key_ref(key)
    obj.provider(ref.scheme).enable_key(ref)
    _after(obj, ref, "enabled")


@keys_group.command("disable")
@click.argument("key")
@pass_ctx
def disable(obj: _Ctx, key: str) -> None:
    """Disable a key: it neither wraps nor unwraps until enabled again."""
    ref = key_ref(key)
    obj.provider(ref.scheme).disable_key(ref)
    _after(obj, ref, "disabled")


@keys_group.command("rotate")
@click.argument("key")
@pass_ctx
def rotate(obj: _Ctx, key: str) -> None:
    """Rotate now: a new version wraps new data keys; old versions keep unwrapping."""
    ref = key_ref(key)
    info = obj.provider(ref.scheme).rotate_key(ref)
    click.echo(f"{info.uri}: rotated, current version {info.current_version or '-'}")


@keys_group.command("rotation")
@click.argument("key")
@click.option("--enable/--disable", "enabled", default=None, help="Turn automatic rotation on or off.")
@click.option("--period-days", type=int, default=None, help="Rotation period in days (90..2560, default 365).")
@pass_ctx
def rotation(obj: _Ctx, key: str, enabled: bool | None, period_days: int | None) -> None:
    """Show or change automatic rotation of a key."""
    ref = key_ref(key)
    provider = obj.provider(ref.scheme)
    if enabled is None and period_days is not None:
        enabled = True
    status = provider.set_rotation(ref, enabled, period_days) if enabled is not None else provider.rotation_status(ref)
    click.echo(json.dumps(status, indent=1, sort_keys=True, default=str))


@keys_group.command("schedule-deletion")
@click.argument("key")
@click.option("--days", type=int, default=DEFAULT_DELETION_DAYS, show_default=True,
              help="Waiting period (7..30 days) before the key and all its versions are deleted.")
@pass_ctx
def schedule_deletion(obj: _Ctx, key: str, days: int) -> None:
    """Schedule deletion: the key stops working now and is deleted after the waiting period."""
    ref = key_ref(key)
    info = obj.provider(ref.scheme).schedule_deletion(ref, days)
    when = info.extra.get("deletion_date") or f"in {days} days"
    click.echo(f"{info.uri}: {info.state}, deletion on {when}")


@keys_group.command("cancel-deletion")
@click.argument("key")
@pass_ctx
def cancel_deletion(obj: _Ctx, key: str) -> None:
    """Cancel a scheduled deletion; the key becomes Disabled (enable it explicitly)."""
    ref = key_ref(key)
    info = obj.provider(ref.scheme).cancel_deletion(ref)
    click.echo(f"{info.uri}: deletion cancelled, state {info.state}")


# -- aliases --------------------------------------------------------------------------------
@keys_group.group("alias")
def alias_group() -> None:
    """Create, update or delete aliases (each alias names one key)."""


def _alias_name(alias: str, scheme: str) -> str:
    if "://" in alias:
        alias_scheme, _, name = alias.partition("://")
        if alias_scheme != scheme:
            raise ConfigurationError(f"alias {alias!r} and the key belong to different providers")
        return name
    return alias


@alias_group.command("create")
@click.argument("alias")
@click.argument("key")
@pass_ctx
def alias_create(obj: _Ctx, alias: str, key: str) -> None:
    """Create ALIAS for KEY (fails if the alias exists)."""
    ref = key_ref(key)
    provider = obj.provider(ref.scheme)
    name = _alias_name(alias, ref.scheme)
    create_alias = getattr(provider, "create_alias", None)
    if create_alias is not None:
        create_alias(name, ref)
    else:
        try:
            provider.resolve(KeyRef(ref.scheme, name if name.startswith("alias/") else "alias/" + name))
        except EncfsError:  # no such alias yet: create it
            provider.set_alias(name, ref)
        else:
            raise ConfigurationError(f"alias {name!r} already exists (use 'alias update')")
    click.echo(f"alias {name} -> {provider.resolve(ref)}")


@alias_group.command("update")
@click.argument("alias")
@click.argument("key")
@pass_ctx
def alias_update(obj: _Ctx, alias: str, key: str) -> None:
    """Point the existing ALIAS at KEY."""
    ref = key_ref(key)
    provider = obj.provider(ref.scheme)
    name = _alias_name(alias, ref.scheme)
    update_alias = getattr(provider, "update_alias", None)
    (update_alias or provider.set_alias)(name, ref)
    click.echo(f"alias {name} -> {provider.resolve(ref)}")


@alias_group.command("delete")
@click.argument("alias")
@pass_ctx
def alias_delete(obj: _Ctx, alias: str) -> None:
    """Delete ALIAS (the key itself is not touched)."""
    ref = key_ref(alias)
    obj.provider(ref.scheme).delete_alias(ref.name)
    click.echo(f"alias {ref.name} deleted")


# -- tags and description ---------------------------------------------------------------------
@keys_group.command("tag")
@click.argument("key")
@click.argument("tags", nargs=-1, required=True, metavar="KEY=VALUE...")
@pass_ctx
def tag(obj: _Ctx, key: str, tags: tuple[str, ...]) -> None:
    """Add or change tags of a key."""
    ref = key_ref(key)
    obj.provider(ref.scheme).tag_key(ref, _parse_tags(tags))
    _after(obj, ref, "tagged")


@keys_group.command("untag")
@click.argument("key")
@click.argument("names", nargs=-1, required=True, metavar="TAG...")
@pass_ctx
def untag(obj: _Ctx, key: str, names: tuple[str, ...]) -> None:
    """Remove tags from a key."""
    ref = key_ref(key)
    obj.provider(ref.scheme).untag_key(ref, list(names))
    _after(obj, ref, "untagged")


@keys_group.command("set-description")
@click.argument("key")
@click.argument("description")
@pass_ctx
def set_description(obj: _Ctx, key: str, description: str) -> None:
    """Replace a key's description."""
    ref = key_ref(key)
    provider = obj.provider(ref.scheme)
    fn = getattr(provider, "set_description", None)
    if fn is None:
        raise ConfigurationError(f"key provider {ref.scheme!r} does not support changing descriptions")
    fn(ref, description)
    _after(obj, ref, "description set")


# -- keystore maintenance ---------------------------------------------------------------------
@keys_group.command("recover")
@pass_ctx
def recover(obj: _Ctx) -> None:
    """Restore a corrupted local keystore from its automatic backup."""
    ks = obj.local_keystore()
    log = get_log(ks.home)
    try:
        ks.recover_from_backup()
    except Exception as exc:
        if log is not None:
            log.append("recover-keystore", outcome="failure", error=str(exc).splitlines()[0])
        raise
    if log is not None:
        log.append("recover-keystore", keystore=str(ks.home))
    click.echo(f"keystore {ks.home} restored from backup ({len(ks.list_ids())} keys)")


@keys_group.command("export")
@click.argument("dest", metavar="FILE")
@click.argument("keys", nargs=-1, metavar="[KEY...]")
@pass_ctx
def export(obj: _Ctx, dest: str, keys: tuple[str, ...]) -> None:
    """Write local keys (default: all) to FILE sealed under a passphrase.

    The passphrase comes from ENCFS_EXPORT_PASSPHRASE, else ENCFS_PASSPHRASE,
    else a prompt.  FILE '-' writes to stdout.
    """
    from ..keystore.storage import atomic_write_bytes
    from ..keystore.transfer import export_passphrase, seal_bundle

    ks = obj.local_keystore()
    ids = None
    if keys:
        refs = [key_ref(k) for k in keys]
        if any(r.scheme != "local" for r in refs):
            raise ConfigurationError("only local keys can be exported (KMS and HSM keys never leave their service)")
        ids = sorted({ks.resolve(r.name) for r in refs})
    records = ks.export_records(ids)
    data = seal_bundle(records, export_passphrase(confirm=True))
    log = get_log(ks.home)
    if log is not None:
        log.append("export-keys", keys=sorted(records["keys"]), dest=dest)
    if dest == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        path = Path(dest).expanduser().absolute()
        atomic_write_bytes(path, data)  # 0600: the bundle is only as strong as its passphrase
        click.echo(f"exported {len(records['keys'])} key(s) to {path}", err=True)


@keys_group.command("import")
@click.argument("src", metavar="FILE")
@click.option("--add-versions", is_flag=True,
              help="Accept versions the bundle adds to keys this keystore already has (they stay non-current).")
@click.option("--make-current", is_flag=True,
              help="Also make the bundle's current version current here, and take free encfs-managed aliases "
                   "(default, encfs/...); implies --add-versions.")
@pass_ctx
def import_cmd(obj: _Ctx, src: str, add_versions: bool, make_current: bool) -> None:
    """Import keys from an export FILE ('-' reads stdin) into the local keystore.

    New keys are added.  A key this keystore already has is never changed
    silently: versions the bundle adds need --add-versions, and which version
    is current changes only with --make-current.  Prints what was added and
    what was refused; exits non-zero if anything was refused.
    """
    from ..keystore.transfer import export_passphrase, open_bundle

    data = sys.stdin.buffer.read() if src == "-" else Path(src).expanduser().read_bytes()
    records = open_bundle(data, export_passphrase(confirm=False))
    ks = obj.local_keystore()
    report = ks.import_records(records, add_versions=add_versions, make_current=make_current)
    log = get_log(ks.home)
    if log is not None:
        log.append("import-keys", keys=sorted(records["keys"]), source=src,
                   versions_added=report["versions_added"] or None,
                   made_current=report["made_current"] or None,
                   refused=sorted(report["refused"]) or None,
                   alias_conflicts=report["alias_conflicts"] or None)
    for key_id in report["added"]:
        rec = records["keys"][key_id]
        versions = ", ".join(sorted(rec["versions"], key=int))
        restored = f"; deleted here on {report['restored'][key_id]}, restored" if key_id in report["restored"] else ""
        click.echo(f"added: {key_id} (versions {versions}; current {rec['current_version']}{restored})")
    for key_id, versions in report["versions_added"].items():
        current = ks.record(key_id)["current_version"]
        now = "is now" if key_id in report["made_current"] else "stays"
        click.echo(f"added versions: {key_id} {', '.join(map(str, versions))} (current {now} {current})")
    for key_id, version in report["made_current"].items():
        if key_id not in report["versions_added"]:
            click.echo(f"made current: {key_id} version {version}")
    if report["unchanged"]:
        click.echo(f"unchanged: {', '.join(report['unchanged'])}")
    for alias in report["aliases_added"]:
        click.echo(f"added alias: {alias} -> {records['aliases'][alias]}")
    for alias in report["alias_conflicts"]:
        click.echo(f"encfs: warning: alias {alias!r} already names another key here; not imported", err=True)
    for what, why in report["refused"].items():
        click.echo(f"encfs: warning: refused {what}: {why}", err=True)
    if report["refused"]:
        raise KeystoreError(f"{len(report['refused'])} item(s) of the bundle not imported (see the warnings above)")