"""Throwaway SoftHSM2 tokens for the PKCS#11 tests.

SoftHSM2 reads ``SOFTHSM2_CONF`` and scans its token directory when the
module is initialised, which python-pkcs11 does once per process.  So the
tokens of a test run are created once per process, before the module is
first loaded, in one temporary directory that is removed at exit; each test
then uses keys with labels of its own.  Importing this module has no effect;
:func:`softhsm` does the work on first call.

Tokens: ``encfs-test`` (the shared one) and ``encfs-pin`` (for PIN-error
tests, so that a failed login leaves the shared token alone).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

TOKEN = "encfs-test"
PIN_TOKEN = "encfs-pin"


@dataclass(frozen=True)
class SoftHsm:
    directory: Path
    conf: str
    module: str
    pins: dict[str, str]

    def env(self, token: str = TOKEN) -> dict[str, str]:
        return {"SOFTHSM2_CONF": self.conf, "ENCFS_PKCS11_MODULE": self.module,
                "ENCFS_PKCS11_PIN": self.pins[token], "ENCFS_PKCS11_TOKEN": token}


_lock = threading.Lock()
_instance: SoftHsm | None = None


def softhsm() -> SoftHsm:
    """The process's SoftHSM2 directory with its tokens (created on first call);
    skips the calling test when SoftHSM2 or python-pkcs11 is not installed."""
    global _instance
    pytest.importorskip("pkcs11", reason="python-pkcs11 is not installed (pip install -e '.[test]')")
    if shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (tests/run.sh installs the Debian package softhsm2)")
    with _lock:
        if _instance is None:
            from encfs.cli.hsm import init_softhsm

            root = Path(tempfile.mkdtemp(prefix="encfs-test-softhsm-"))
            atexit.register(shutil.rmtree, root, True)
            first = init_softhsm(root / "softhsm", token=TOKEN)
            pins = {TOKEN: first.pin_file.read_text().strip(), PIN_TOKEN: "4321-pin-token"}
            # SoftHSM2 has one token directory per config: the second token
            # goes into the same one.
            subprocess.run(
                ["softhsm2-util", "--init-token", "--free", "--label", PIN_TOKEN, "--pin", pins[PIN_TOKEN],
                 "--so-pin", "so-" + pins[PIN_TOKEN]],
                env={**os.environ, "SOFTHSM2_CONF": str(first.conf)}, check=True, capture_output=True,
            )
            os.environ["SOFTHSM2_CONF"] = str(first.conf)
            _instance = SoftHsm(directory=root, conf=str(first.conf), module=first.module, pins=pins)
        return _instance


def unique_label(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def hsm(monkeypatch):
    """The shared token, with the encfs environment variables of a user set."""
    h = softhsm()
    for name, value in h.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ENCFS_PKCS11_PIN_FILE", raising=False)
    return h


@pytest.fixture
def hsm_key(hsm):
    """A fresh root key in the shared token; returns its URI."""
    from encfs.providers.pkcs11 import Pkcs11Provider

    info = Pkcs11Provider().create_key(alias=f"{TOKEN}/{unique_label()}")
    return info.uri
