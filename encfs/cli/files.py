"""File commands: ``encfs cp``, ``cat``, ``ls``, ``info`` and ``verify``.

``cp`` takes either side plain or ``enc::``; the others name encrypted
objects, with or without the ``enc::`` prefix (see util.py).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from ..errors import ConfigurationError, EncfsError
from ..format import PATH_KEY, plaintext_size, segment_count
from ..fs import EncryptedFileSystem
from . import copying
from .main import _one_line, cli
from .util import Location, echo, human_size, key_options, location, parse_options, printable

#: Plaintext bytes authenticated per request by ``verify``.
VERIFY_WINDOW = 8 * 1024 * 1024


def _enc(url: str, keys: tuple[str, ...], keystore: str | None, options: tuple[str, ...]
         ) -> tuple[EncryptedFileSystem, str, Location]:
    loc = location(url, force_encrypted=True, keys=keys, keystore=keystore, options=parse_options(options))
    fs, path = loc.connect()
    if not isinstance(fs, EncryptedFileSystem):  # e.g. enc::enc::..., or a plugin claiming "enc"
        raise ConfigurationError(f"{url} does not name encrypted storage")
    return fs, path, loc


# -- cp ---------------------------------------------------------------------------
@cli.command()
@click.argument("src")
@click.argument("dst")
@click.option("-r", "--recursive", is_flag=True, help="Copy directories and everything below them.")
@click.option("-j", "--jobs", type=click.IntRange(min=0), default=1, show_default=True,
              help="Worker processes for many files (0 = one per CPU).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@key_options
def cp(src: str, dst: str, recursive: bool, jobs: int, quiet: bool, progress: bool | None, keys: tuple[str, ...],
       keystore: str | None, options: tuple[str, ...]) -> None:
    """Copy SRC to DST; a side written enc::URL is encrypted, a plain path or URL is not.

    \b
      encfs cp -r ./raw enc::s3://lake/raw          encrypt a folder
      encfs cp enc::file:///data/x.parquet x.parquet decrypt one object
      encfs cp -r -j 4 enc::./a enc::s3://b/a       re-encrypt (new data keys, --key)
    """
    opts = parse_options(options)
    src_loc = location(src, keys=keys, keystore=keystore, options=opts)
    dst_loc = location(dst, keys=keys, keystore=keystore, options=opts)
    src_fs, src_path = src_loc.connect()
    dst_fs, dst_path = dst_loc.connect()
    refused: list[EncfsError] = []
    items = copying.plan(src_fs, src_path, dst_fs, dst_path, dst_is_dir_hint=dst_loc.dir_hint, recursive=recursive,
                         refused=refused)
    # One line per refused source name (outside the destination, or not a
    # regular file); the rest is copied, and the exit status says it.
    for exc in refused:
        click.echo(f"encfs: error: {printable(str(exc))}", err=True)
    jobs = jobs or os.cpu_count() or 1
    if progress is None:
        progress = sys.stderr.isatty()
    files, nbytes = copying.run(items, src_loc, dst_loc, src_fs, dst_fs, jobs=jobs, progress=progress and not quiet)
    if not quiet:
        click.echo(f"copied {files} file{'s' if files != 1 else ''} ({human_size(nbytes)})"
                   + (f", {len(refused)} refused" if refused else ""), err=True)
    if refused:
        raise SystemExit(1)


# -- cat ----------------------------------------------------------------------------
@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@key_options
def cat(paths: tuple[str, ...], keys: tuple[str, ...], keystore: str | None, options: tuple[str, ...]) -> None:
    """Decrypt objects to stdout (binary safe; each segment authenticated first)."""
    out = sys.stdout.buffer
    for url in paths:
        fs, path, _ = _enc(url, keys, keystore, options)
        reader = fs.reader(path)
        step = max(1, copying.CHUNK // reader.segment_size) * reader.segment_size
        for pos in range(0, reader.size, step):
            out.write(reader.read(pos, pos + step))
    out.flush()


# -- ls -------------------------------------------------------------------------------
@cli.command(name="ls")
@click.argument("url", metavar="PATH")
@click.option("-l", "--long", "long_", is_flag=True, help="Type, plaintext size, encrypted size and name.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable listing.")
@key_options
def ls_cmd(url: str, long_: bool, as_json: bool, keys: tuple[str, ...], keystore: str | None,
           options: tuple[str, ...]) -> None:
    """List encrypted objects with their plaintext sizes (no object is opened).

    A size of ? marks a file that cannot be an encfs object (its size fits no
    plaintext size); -l adds the type and the size at rest."""
    fs, path, _ = _enc(url, keys, keystore, options)
    entries = sorted(fs.ls(path, detail=True), key=lambda e: e["name"])
    if as_json:
        rows = [{"name": e["name"], "type": e.get("type"), "size": e.get("size"),
                 "encrypted_size": e.get("encrypted_size"), "encfs": e.get("encfs_valid", True)}
                for e in entries]
        click.echo(json.dumps(rows, indent=2))
        return
    for e in entries:
        name = e["name"] + ("/" if e.get("type") == "directory" else "")
        if not long_:  # plaintext size and name, like `aws s3 ls`
            size = "DIR" if e.get("type") != "file" else ("?" if e.get("encfs_valid") is False else e["size"])
            echo(f"{size:>14}  {name}")
        elif e.get("type") != "file":
            echo(f"{'dir':4} {'-':>14} {'-':>14}  {name}")
        elif e.get("encfs_valid") is False:
            echo(f"{'file':4} {'?':>14} {e.get('encrypted_size', 0):>14}  {name}  (not an encfs object)")
        else:
            echo(f"{'file':4} {e['size']:>14} {e.get('encrypted_size', 0):>14}  {name}")


# -- info -----------------------------------------------------------------------------
def describe_object(fs: EncryptedFileSystem, path: str) -> dict[str, Any]:
    """What ``encfs info`` reports: the header's public fields, sizes, and
    whether the header authenticates.  Nothing secret: no data key, no
    wrapped key blobs, no commitment or MAC.

    The header is parsed first and shown even if it cannot be authenticated
    (say the key is disabled: which key wraps it is exactly what one wants to
    know then); ``authenticated`` says whether it could.
    """
    header = fs.header(path)  # FormatError for anything that is not ours
    ct_size = int(fs.fs.size(fs._target_path(path)))
    size = plaintext_size(ct_size, header.segment_size, header.header_region)
    info: dict[str, Any] = {
        "path": fs._target_path(path),
        "format_version": header.version,
        "format_minor": header.minor,
        "suite": header.suite,
        "suite_name": header.suite_name,
        "segment_size": header.segment_size,
        "header_region": header.header_region,
        "object_id": header.object_id.hex(),
        "plaintext_size": size,
        "encrypted_size": ct_size,
        "segments": segment_count(size, header.segment_size) if size is not None else None,
        "wrapped_keys": [
            {"uri": f"{w.provider}://{w.key_id}", "provider": w.provider, "key_id": w.key_id, "version": w.version}
            for w in header.wrapped_keys
        ],
        "context": dict(header.context),
        "bound_path": header.context.get(PATH_KEY),
    }
    try:
        # Unwraps the data key, checks commitment, MAC, bound path and the
        # final segment (which proves the size).
        fs.reader(path)
        info["authenticated"] = True
    except EncfsError as exc:
        info["authenticated"] = False
        info["authentication_error"] = _one_line(exc)
    return info


def format_info(info: dict[str, Any]) -> list[str]:
    """The human-readable report, one logical line per item.  Header fields
    are unauthenticated text: each line goes through :func:`printable`."""
    size = info["plaintext_size"]
    lines = [
        f"path            {info['path']}",
        f"format          ENCF v{info['format_version']}.{info.get('format_minor', 0)}",
        f"suite           {info['suite']} ({info['suite_name']})",
        f"segment size    {info['segment_size']} bytes",
        f"object id       {info['object_id']}",
        f"plaintext size  {size if size is not None else 'invalid (truncated or extended)'}"
        + (f" ({human_size(size)})" if size else ""),
        f"encrypted size  {info['encrypted_size']} ({info['segments']} segment{'' if info['segments'] == 1 else 's'}"
        f" + {info['header_region']}-byte header)"
        if info["segments"] is not None else f"encrypted size  {info['encrypted_size']}",
    ]
    for i, w in enumerate(info["wrapped_keys"]):
        lines.append(("wrapped keys    " if i == 0 else " " * 16)
                     + f"{w['uri']} ({'version ' + w['version'] if w['version'] else 'no version recorded'})")
    if not info["wrapped_keys"]:
        lines.append("wrapped keys    ")
    for i, (k, v) in enumerate(sorted(info["context"].items())):
        lines.append(("context         " if i == 0 else " " * 16) + f"{k} = {v}")
    if not info["context"]:
        lines.append("context         ")
    if info["authenticated"]:
        lines.append("authenticated   yes (key commitment, header MAC, bound path, final segment)")
    else:
        lines.append(f"authenticated   NO: {info['authentication_error']}")
    return [printable(line) for line in lines]


@cli.command()
@click.argument("url", metavar="PATH")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@key_options
def info(url: str, as_json: bool, keys: tuple[str, ...], keystore: str | None, options: tuple[str, ...]) -> None:
    """Show an encrypted object's header: format, suite, segment size, object id,
    sizes, key ids and versions, encryption context.  Never any key material."""
    fs, path, _ = _enc(url, keys, keystore, options)
    if fs.isdir(path):
        raise ConfigurationError(f"{path} is a directory; encfs info describes one object (try encfs ls -l)")
    report = describe_object(fs, path)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        click.echo("\n".join(format_info(report)))


# -- verify ----------------------------------------------------------------------------
def verify_object(fs: EncryptedFileSystem, path: str) -> int:
    """Authenticate every segment of one object; return its plaintext size."""
    reader = fs.reader(path)
    step = max(1, VERIFY_WINDOW // reader.segment_size) * reader.segment_size
    for pos in range(0, reader.size, step):
        reader.read(pos, pos + step)
    return reader.size


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@key_options
def verify(paths: tuple[str, ...], keys: tuple[str, ...], keystore: str | None, options: tuple[str, ...]) -> None:
    """Authenticate whole objects (directories recursively).

    Prints OK or FAILED per object; exits 0 only if every object passed, 1 if
    any failed or a path does not exist.
    """
    ok = failed = 0
    for url in paths:
        fs, path, _ = _enc(url, keys, keystore, options)
        try:
            targets = fs.find(path) if fs.isdir(path) else [path]
        except Exception as exc:  # noqa: BLE001 - a path we cannot list fails; go on with the rest
            echo(f"FAILED  {path}: {_one_line(exc)}")
            failed += 1
            continue
        if not targets:
            echo(f"(no objects under {path})")
        for target in targets:
            try:
                if not fs.exists(target):
                    raise FileNotFoundError(2, "no such file", target)
                size = verify_object(fs, target)
            except Exception as exc:  # noqa: BLE001 - any failure is a FAILED line, never a crash
                echo(f"FAILED  {target}: {_one_line(exc)}")
                failed += 1
            else:
                echo(f"OK      {target} ({human_size(size)})")
                ok += 1
    click.echo(f"{ok} ok, {failed} failed")
    if failed:
        raise SystemExit(1)
