"""``encfs rewrap PATH...``: new wrapped data keys, same ciphertext bodies."""

from __future__ import annotations

import sys

import click

from ..errors import ConfigurationError
from ..fs import EncryptedFileSystem
from ..rewrap import FAILED, REWRAPPED, WOULD_REWRAP, RewrapReport, rewrap
from .main import cli
from .util import echo, location, parse_options


def _uri(key: str) -> str:
    return key if "://" in key else f"local://{key}"


@cli.command("rewrap")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--to", "to", multiple=True, metavar="KEY",
              help="Wrap under this root key instead (id, alias or URI; repeatable). "
                   "Default: each object's own keys at their current version.")
@click.option("-k", "--key", "keys", multiple=True, metavar="URI", envvar="ENCFS_KEY",
              help="Root key whose wrapped entries may be unwrapped and rewrapped (repeatable; env ENCFS_KEY; "
                   "default local://default).  Entries of keys not named here are never sent to their service.")
@click.option("-n", "--dry-run", is_flag=True, help="Only report what would be rewrapped.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=8, show_default=True, help="Parallel threads.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option("-v", "--verbose", is_flag=True, help="One line per object.")
@click.option("--keystore", metavar="DIR", default=None, help="Local keystore directory.")
@click.option("-o", "--option", "options", multiple=True, metavar="PROTO.NAME=VALUE",
              help="Storage option, e.g. s3.endpoint_url=http://127.0.0.1:5000; key-service options go in "
                   "enc.providers='{\"aws-kms\": {\"region_name\": \"eu-west-1\"}}'.")
def rewrap_cmd(paths: tuple[str, ...], to: tuple[str, ...], keys: tuple[str, ...], dry_run: bool, jobs: int, progress: bool | None,
               verbose: bool, keystore: str | None, options: tuple[str, ...]) -> None:
    """Re-wrap the data keys of encrypted objects (recursively) without re-encrypting them.

    \b
      encfs rewrap ./lake                       current version of each object's keys
      encfs rewrap --to alias/new-key ./lake    move every object to another root key
      encfs rewrap -n enc::s3://bucket/data     dry run

    Safe to interrupt and run again: objects already up to date are skipped.
    """
    opts = parse_options(options)
    targets = [_uri(k) for k in to]
    # The allow-list of reads (docs/SECURITY.md): the --key keys, plus the
    # --to keys (a rewrap may read what it has already rewrapped).
    allowed = list(dict.fromkeys([*(_uri(k) for k in keys), *targets]))
    total = RewrapReport()
    show = sys.stderr.isatty() if progress is None else progress
    for url in paths:
        fs, path = location(url, force_encrypted=True, keys=allowed, keystore=keystore, options=opts).connect()
        if not isinstance(fs, EncryptedFileSystem):
            raise ConfigurationError(f"{url} is not an encrypted location")
        report = rewrap(fs, [path], to=targets or None, dry_run=dry_run, jobs=jobs, progress=show)
        total.results.extend(report.results)
    for r in total.results:
        if r.status == FAILED:
            echo(f"encfs: error: rewrap failed: {r.path}: {r.error}", err=True)
        elif verbose and r.status in (REWRAPPED, WOULD_REWRAP):
            echo(f"{r.status}: {r.path}: {', '.join(r.before)} -> {', '.join(r.after)}")
        elif verbose:
            echo(f"{r.status}: {r.path}")
    click.echo(("dry run: " if dry_run else "") + total.summary())
    if total.failed:
        sys.exit(1)
