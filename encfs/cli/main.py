"""The ``encfs`` command: a thin layer over the public API.

Every command runs inside :func:`main`, which turns any encfs, storage or
usage error into one line on stderr and a non-zero exit code — never a
traceback (set ``ENCFS_DEBUG=1`` to see one).

Sub-commands live in sibling modules, each registering itself on ``cli``:
files.py (cp, cat, ls, info, verify), demo.py, keys.py, and the modules of
later features.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import click

from ..errors import EncfsError, NoUsableKeyError
from .util import printable

#: Modules that add commands to ``cli``; a missing one is skipped so that a
#: partially installed tree still runs.
COMMAND_MODULES = ("files", "demo", "keys", "audit", "rewrap", "hsm", "stats", "server", "server_master")


class _BrokenPipe(Exception):
    """The reader of stdout went away (``encfs cat x | head``)."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        # click would turn EPIPE into a silent exit 1; surface it to main().
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            if not _stdout_gone():  # a broken connection to storage or a key service: a real error
                raise ConnectionError(f"broken pipe: {exc}") from exc
            raise _BrokenPipe() from exc


def _stdout_gone() -> bool:
    """Whether stdout's reader has closed its end (poll reports POLLERR)."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() (Windows) or no real stdout
        return True


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="encfs")
def cli() -> None:
    """encfs: envelope-encrypted storage for any fsspec filesystem."""


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(f"encfs.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"encfs.cli.{name}":
                raise


def _one_line(exc: BaseException) -> str:
    """The error as one terminal-safe line (texts can quote object names and
    key ids from unauthenticated headers: control characters are escaped)."""
    return printable(_first_line(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return f"no such file or directory: {exc.filename or text}" if exc.filename else f"not found: {text}"
    if isinstance(exc, IsADirectoryError):
        return f"is a directory: {exc.filename or text}"
    if isinstance(exc, FileExistsError):
        return f"already exists: {exc.filename or text}"
    if isinstance(exc, NoUsableKeyError):
        # aws-kms:// and pkcs11:// keys are used only when named (strict allow-list).
        return f"{text} (name its key with --key; local ones need a local:// key and their --keystore)"
    if isinstance(exc, EncfsError):
        return text
    return f"{type(exc).__name__}: {text}"


#: click >= 8.2 raises this for a bare group; older clicks print help themselves.
_NO_ARGS_IS_HELP: type[Exception] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """encfs's own warnings (a keystore readable by others, ...) as one
    ``encfs: warning:`` line; anyone else's as Python shows them."""
    if category.__module__.startswith("encfs."):
        click.echo(f"encfs: warning: {printable(str(message))}", err=True)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


_SHOW_WARNING = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    with warnings.catch_warnings():  # restores the hook when an in-process caller gets control back
        warnings.showwarning = _show_warning
        _main(argv)


def _main(argv: list[str] | None) -> None:
    _load_commands()
    try:
        # Without standalone mode click *returns* the code of ctx.exit(n).
        rc = cli.main(args=argv, prog_name="encfs", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except _BrokenPipe:
        # Like cat under SIGPIPE: no message, status 128 + SIGPIPE.  Point
        # stdout at /dev/null so the interpreter's final flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except click.exceptions.Abort:
        click.echo("encfs: aborted", err=True)
        sys.exit(130)
    except _NO_ARGS_IS_HELP as exc:
        exc.show()  # bare `encfs` / `encfs keys`: the help text is the answer
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # Usage errors too are one line (click's own format spans four).
        text = (exc.format_message().strip().splitlines() or [type(exc).__name__])[0]
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if isinstance(exc, click.UsageError) and ctx else ""
        click.echo(f"encfs: error: {printable(text.rstrip('.') if hint else text)}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("encfs: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # the one place every failure becomes one line
        if os.environ.get("ENCFS_DEBUG"):
            raise
        click.echo(f"encfs: error: {_one_line(exc)}", err=True)
        sys.exit(1)
