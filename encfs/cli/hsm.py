"""``encfs hsm``: a throwaway SoftHSM2 token for trying PKCS#11 root keys.

``encfs hsm init`` creates a SoftHSM2 configuration, token directory, token
and a random user PIN (kept in a 0600 file, never printed) in a directory,
then prints the ``export`` lines that point encfs at it, so that
``eval "$(encfs hsm init)"`` is all a shell needs.  Notes go to stderr so
stdout stays eval-able.  docs/HSM.md walks through it.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

from ..errors import ConfigurationError
from .main import cli

#: Where distributions install the SoftHSM2 module.
SOFTHSM_MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",  # Debian, Ubuntu
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",  # Fedora, RHEL
    "/usr/local/lib/softhsm/libsofthsm2.so",  # source builds
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",  # macOS (Homebrew)
)


def find_softhsm_module(explicit: str | None = None) -> str:
    """The SoftHSM2 PKCS#11 module: ``explicit``, else a known install path."""
    if explicit:
        if not os.path.isfile(explicit):
            raise ConfigurationError(f"PKCS#11 module {explicit!r} does not exist")
        return os.path.abspath(explicit)
    for path in SOFTHSM_MODULE_PATHS:
        if os.path.isfile(path):
            return path
    raise ConfigurationError(
        "SoftHSM2 is not installed (no libsofthsm2.so found): apt-get install softhsm2, or pass --module"
    )


@dataclass(frozen=True)
class SoftHsmSetup:
    """A SoftHSM2 token in a directory; holds file paths, not the PIN itself."""

    directory: Path
    conf: Path
    module: str
    token: str
    pin_file: Path

    def environment(self) -> dict[str, str]:
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "ENCFS_PKCS11_MODULE": self.module,
            "ENCFS_PKCS11_TOKEN": self.token,
            "ENCFS_PKCS11_PIN_FILE": str(self.pin_file),
        }


def _write_secret(path: Path, text: str) -> None:
    # Created 0600 from the start: the file never exists with wider permissions.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")


def init_softhsm(directory: str | os.PathLike[str], *, token: str = "encfs", module: str | None = None,
                 pin: str | None = None) -> SoftHsmSetup:
    """Create a SoftHSM2 config, token directory and initialised token in
    ``directory`` (which must be empty or absent).  The user PIN (random
    unless given) goes to ``user.pin`` and the SO PIN to ``so.pin``, both 0600."""
    util = shutil.which("softhsm2-util")
    if util is None:
        raise ConfigurationError("softhsm2-util not found: apt-get install softhsm2")
    if not token or len(token.encode("utf-8")) > 32:
        raise ConfigurationError("a token label is 1 to 32 bytes")
    module_path = find_softhsm_module(module)
    root = Path(directory).resolve()
    if root.exists() and any(root.iterdir()):
        raise ConfigurationError(f"{root} is not empty; give a new directory")
    tokens = root / "tokens"
    tokens.mkdir(parents=True, mode=0o700)
    os.chmod(root, 0o700)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"# written by encfs hsm init\ndirectories.tokendir = {tokens}\n"
        "objectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        encoding="utf-8",
    )
    user_pin = pin or secrets.token_hex(16)
    so_pin = secrets.token_hex(16)
    pin_file, so_file = root / "user.pin", root / "so.pin"
    _write_secret(pin_file, user_pin)
    _write_secret(so_file, so_pin)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    # softhsm2-util takes PINs only as arguments or from a terminal prompt;
    # for a throwaway token the brief exposure in the process list is accepted
    # (docs/HSM.md says so).  Its output is not echoed: it holds no PIN, but
    # there is no need to show it either.
    proc = subprocess.run(
        [util, "--init-token", "--free", "--label", token, "--pin", user_pin, "--so-pin", so_pin],
        env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ConfigurationError(
            f"softhsm2-util could not initialise token {token!r}: {detail[-1] if detail else proc.returncode}"
        )
    return SoftHsmSetup(directory=root, conf=conf, module=module_path, token=token, pin_file=pin_file)


@cli.group()
def hsm() -> None:
    """PKCS#11 helpers: a throwaway SoftHSM2 token for trying pkcs11:// keys."""


@hsm.command("init")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
@click.option("--token", "token", default="encfs", show_default=True, help="Token label.")
@click.option("--module", default=None, help="Path of libsofthsm2.so (default: the usual install paths).")
@click.option("--key", "key_label", default=None,
              help="Also generate a root key with this label (pkcs11://TOKEN/LABEL).")
def hsm_init(directory: str | None, token: str, module: str | None, key_label: str | None) -> None:
    """Create a SoftHSM2 token in DIRECTORY (default: a new temporary one)
    and print the environment to export:  eval "$(encfs hsm init)"."""
    if directory is None:
        directory = tempfile.mkdtemp(prefix="encfs-softhsm-")
    setup = init_softhsm(directory, token=token, module=module)
    env = setup.environment()
    if key_label:
        # The module reads SOFTHSM2_CONF when first loaded: set it before.
        os.environ.update(env)
        from ..providers.pkcs11 import Pkcs11Provider

        info = Pkcs11Provider(setup.module, token=token).create_key(alias=f"{token}/{key_label}")
        click.echo(f"# created root key {info.uri} (version {info.current_version}) in the token", err=True)
    for name, value in env.items():
        click.echo(f"export {name}={shlex.quote(value)}")
    click.echo(
        f"# SoftHSM2 token {token!r} in {setup.directory}; user PIN in {setup.pin_file} (0600).\n"
        f"# Use it: encfs keys create --provider pkcs11 --alias {token}/LABEL, then key='pkcs11://{token}/LABEL'.\n"
        f"# Remove it: rm -rf {shlex.quote(str(setup.directory))}",
        err=True,
    )


#: What ``encfs hsm check`` requires of a root key (attribute -> value).
KEY_POLICY = {"sensitive": True, "always_sensitive": True, "extractable": False, "never_extractable": True}


@hsm.command("check")
@click.argument("key")
@click.option("--module", default=None, help="PKCS#11 module (default $ENCFS_PKCS11_MODULE).")
def hsm_check(key: str, module: str | None) -> None:
    """Check that KEY (pkcs11://TOKEN/LABEL) is usable: the module loads, the
    token is there, the PIN works, every version of the key stays inside the
    token, and a data key round-trips through it."""
    from ..providers.base import KeyRef
    from ..providers.pkcs11 import Pkcs11Provider

    ref = KeyRef.parse(key)
    if ref.scheme != "pkcs11":
        raise ConfigurationError(f"{key} is not a pkcs11:// key")
    provider = Pkcs11Provider(module)
    info = provider.describe(ref)
    click.echo(f"key:              {info.uri}\nmodule:           {provider.module_path}")
    click.echo(f"versions:         {', '.join(info.versions)} (current {info.current_version})")
    if info.extra.get("provisioned", "encfs") != "encfs":
        click.echo(f"provisioned:      {info.extra['provisioned']}")
    bad = [f"{attr}={info.extra.get(attr)}" for attr, want in KEY_POLICY.items() if info.extra.get(attr) is not want]
    context = {"check": "encfs hsm check"}
    dek = os.urandom(32)
    wrapped = provider.wrap(ref, dek, context)
    if provider.unwrap(wrapped, context) != dek:
        raise ConfigurationError(f"{info.uri}: a wrapped data key did not come back unchanged")
    click.echo(f"round trip:       ok (version {wrapped.version})")
    if bad:
        raise ConfigurationError(f"{info.uri} can leave the token or be read: {', '.join(bad)}")
    click.echo("attributes:       sensitive, never extractable")
