"""``encfs server``: run the KMS-compatible key server (docs/SERVER.md)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import click

from ..errors import ConfigurationError
from .main import cli


@cli.command("server")
@click.option("--config", "config_path", metavar="FILE", default=None, help="The server's TOML config.")
@click.option("--dev", is_flag=True, help="A throwaway server on 127.0.0.1 with an admin principal (prints exports).")
@click.option("--port", type=int, default=None, help="Port (dev mode default 8200; overrides the config's).")
@click.option("--sync-principals", is_flag=True,
              help="Store this config's principals in the shared database even though they differ from the "
                   "database's (revokes the access keys the config lacks; docs/SERVER.md, Configuration reference).")
def server(config_path: str | None, dev: bool, port: int | None, sync_principals: bool) -> None:
    """Serve the AWS KMS API with SigV4, key policies, grants and audit."""
    try:
        import aiohttp  # noqa: F401
    except ModuleNotFoundError:
        raise ConfigurationError("the key server needs aiohttp: pip install 'encfs[server]'") from None
    from ..server import app, config

    if dev == bool(config_path):
        raise click.UsageError("give exactly one of --config FILE and --dev")
    app.setup_logging()
    if config_path:
        cfg = config.load(config_path)
        if port is not None:
            cfg.port = port
        cfg.sync_principals = sync_principals
        sys.exit(app.run(cfg))
    tmp = Path(tempfile.mkdtemp(prefix="encfs-server-dev-"))
    try:
        cfg = config.dev_config(tmp, 8200 if port is None else port)
        admin = cfg.principals[0]

        def ready(endpoint: str) -> None:
            lines = [
                f"export AWS_ACCESS_KEY_ID={admin.access_key_id}",
                f"export AWS_SECRET_ACCESS_KEY={admin.secret}",
                f"export AWS_DEFAULT_REGION={cfg.region}",
                f"export AWS_ENDPOINT_URL_KMS={endpoint}",
            ]
            click.echo("\n".join(lines))
            click.echo(f"# encfs key server (dev mode): {endpoint}, data in {tmp} (deleted on exit); "
                       f"audit: encfs audit --log {cfg.audit_path}", err=True)
            sys.stdout.flush()

        app.run(cfg, on_ready=ready)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
