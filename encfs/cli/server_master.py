"""``encfs server-master``: the key server's master key in an HSM: show it,
rotate it, re-wrap stored key material under its current version while the
servers keep serving (docs/SERVER.md, "High availability")."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from ..errors import ConfigurationError
from .main import cli


@cli.group("server-master")
def server_master() -> None:
    """The key server's master key: status, rotate, rewrap (no downtime)."""


def _run(config_path: str, action: str, dry_run: bool = False) -> Any:
    from ..server import app, config
    from ..server.rewrap import rewrap_stored

    cfg = config.load(config_path)

    async def go() -> Any:
        storage = app.open_storage(cfg)
        await storage.open()
        try:
            master = await app._check_master(storage, cfg, create=False)
            if not hasattr(master, "version_of"):
                raise ConfigurationError(f"master_key: {master.key_id} has no versions to rotate or re-wrap "
                                         "(use type = \"pkcs11\")")
            if action == "rotate":
                master.rotate()
            return master, await rewrap_stored(storage, master, dry_run=dry_run)
        finally:
            await storage.close()

    return asyncio.run(go())


def _print(master: Any, report: Any) -> None:
    left = {v: n for v, n in sorted(report.versions.items()) if v != report.current_version}
    click.echo(f"master key {master.key_id}: current version {report.current_version}; {report.keys} keys; "
               f"re-wrapped {report.material_rewrapped} key versions and {report.secrets_rewrapped} secrets")
    by_version = ", ".join(f"v{v}: {n}" for v, n in sorted(report.versions.items())) or "none"
    click.echo(f"stored blobs by master-key version: {by_version}")
    if left:
        click.echo("blobs remain under older versions: run 'encfs server-master rewrap'")


@server_master.command("status")
@click.option("--config", "config_path", metavar="FILE", required=True, help="The server's TOML config.")
def status(config_path: str) -> None:
    """How many stored blobs each master-key version wraps."""
    _print(*_run(config_path, "status", dry_run=True))


@server_master.command("rotate")
@click.option("--config", "config_path", metavar="FILE", required=True, help="The server's TOML config.")
def rotate(config_path: str) -> None:
    """Add a master-key version in the HSM, then re-wrap everything under it."""
    _print(*_run(config_path, "rotate"))


@server_master.command("rewrap")
@click.option("--config", "config_path", metavar="FILE", required=True, help="The server's TOML config.")
def rewrap(config_path: str) -> None:
    """Re-wrap stored blobs still under an older master-key version."""
    _print(*_run(config_path, "rewrap"))
