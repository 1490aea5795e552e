"""Durable JSON file storage for the local keystore.

Writes are atomic (temp file in the same directory, fsync, rename, fsync of
the directory) so a crash at any point leaves either the old or the new file,
never a torn one.  Read-modify-write cycles hold an exclusive lock on a
side lock file (``filelock``: ``flock`` on POSIX, ``msvcrt.locking`` on
Windows) so concurrent processes never lose each other's updates.  Where the
platform lacks a directory fsync or ``fchmod`` (Windows) the fallbacks of
encfs/portable.py apply; docs/SECURITY.md "Windows" says what then holds.

Corruption (a bad disk block, a hand edit, a truncated copy) is detected by
a SHA-256 ``checksum`` field over the canonical JSON of the rest of the
document, on top of JSON and shape checks.  Every successful write is also
copied to ``<name>.bak`` (after the main file, so the backup is always a
complete good document, at most one write behind after a crash) and
``encfs keys recover`` restores it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import KeystoreError
from ..portable import file_lock, fsync_dir, restrict_to_owner


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` owner-only (0700) if missing."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably, mode 0600."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        restrict_to_owner(fd, tmp, 0o600)  # mkstemp already makes it 0600 on POSIX; say so explicitly
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class JsonFileStore:
    """One JSON document on disk, updated under an inter-process lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.backup = self.path.with_name(self.path.name + ".bak")
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def __repr__(self) -> str:
        return f"JsonFileStore({str(self.path)!r})"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        ensure_private_dir(self.path.parent)
        with file_lock(self.lock_path):
            yield

    @staticmethod
    def checksum(doc: dict[str, Any]) -> str:
        body = {k: v for k, v in doc.items() if k != "checksum"}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()

    def _parse(self, path: Path) -> dict[str, Any]:
        raw = path.read_bytes()
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("top level is not an object")  # noqa: TRY004 - reported as corruption
        if "checksum" in doc and doc["checksum"] != self.checksum(doc):
            raise ValueError("checksum mismatch")
        if not isinstance(doc.get("keys", {}), dict) or not isinstance(doc.get("aliases", {}), dict):
            raise ValueError("keys or aliases is not an object")  # noqa: TRY004 - reported as corruption
        return doc

    def read(self) -> dict[str, Any] | None:
        """The current document, ``None`` if the file does not exist yet."""
        if not self.path.exists():
            if self.backup.exists():
                # Never start a fresh keystore (and then overwrite the backup
                # with it) because the main file went missing.
                raise KeystoreError(
                    f"keystore file {self.path} is missing but a backup exists at {self.backup} "
                    "(run 'encfs keys recover')"
                )
            return None
        try:
            return self._parse(self.path)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.corrupted(_why(exc)) from None

    def corrupted(self, reason: str) -> KeystoreError:
        """The error for a damaged file, pointing at the backup when there is one."""
        hint = f"; a backup exists at {self.backup} (run 'encfs keys recover')" if self.backup.exists() else ""
        return KeystoreError(f"keystore file {self.path} is corrupted ({reason}){hint}")

    def read_backup(self) -> dict[str, Any]:
        try:
            return self._parse(self.backup)
        except FileNotFoundError:
            raise KeystoreError(f"no keystore backup at {self.backup}") from None
        except (ValueError, UnicodeDecodeError):
            raise KeystoreError(f"keystore backup {self.backup} is corrupted too") from None

    def write(self, doc: dict[str, Any]) -> None:
        """Replace the document (caller holds :meth:`locked`), then its backup."""
        ensure_private_dir(self.path.parent)
        doc["checksum"] = self.checksum(doc)
        data = json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")
        atomic_write_bytes(self.path, data)
        atomic_write_bytes(self.backup, data)


def _why(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at line {exc.lineno}"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(exc)
