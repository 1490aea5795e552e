"""Refuse a keystore others can change; warn about one others can read.

As ssh does for private keys (docs/KEYS.md "Keystore permissions"):

- a keystore folder or file writable by group or others, or owned by
  another user (not root), is refused with a KeystoreError: whoever can write
  it can plant key versions, repoint aliases or re-enable keys, and an
  unsealed keystore has nothing else protecting it (docs/SECURITY.md);
- a keystore file readable by group or others only gets a warning
  (:class:`KeystorePermissionWarning`): refusing would not take back what may
  already have been read, and stopping every job until the owner reacts does
  more harm than telling them to ``chmod 600`` and, for an unsealed keystore,
  to rotate its keys.

``ENCFS_KEYSTORE_INSECURE=1`` turns the refusal into a warning (shared CI
folders whose modes one cannot change).  Platforms without POSIX permission
bits (Windows) skip the check.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path

from ..errors import KeystoreError

INSECURE_ENV = "ENCFS_KEYSTORE_INSECURE"


class KeystorePermissionWarning(UserWarning):
    """The keystore's permissions let others read it (or, with
    ``ENCFS_KEYSTORE_INSECURE=1``, change it)."""


def _owner_ok(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def check_permissions(home: Path, files: Iterable[Path]) -> None:
    """Check the keystore folder ``home`` and its ``files`` (those that exist)."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return  # Windows: ACLs, not mode bits; nothing reliable to read here
    refuse: list[str] = []
    warn: list[str] = []
    for path, is_dir in ((home, True), *((f, False) for f in files)):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        what = "folder" if is_dir else "file"
        if not _owner_ok(st.st_uid):
            refuse.append(f"keystore {what} {path} is owned by another user (uid {st.st_uid})")
        elif mode & 0o022:
            fix = "chmod 700" if is_dir else "chmod 600"
            refuse.append(f"keystore {what} {path} is writable by group or others (mode {mode:04o}; {fix} it)")
        elif not is_dir and mode & 0o044:
            warn.append(f"keystore file {path} is readable by group or others (mode {mode:04o}): chmod 600 it, "
                        "and rotate its keys if it is not sealed with a passphrase")
    if refuse and os.environ.get(INSECURE_ENV) == "1":
        warn = [f"{msg} (used anyway: {INSECURE_ENV}=1)" for msg in refuse] + warn
        refuse = []
    for msg in warn:
        warnings.warn(msg, KeystorePermissionWarning, stacklevel=2)
    if refuse:
        raise KeystoreError(f"{refuse[0]}; refusing to use it (set {INSECURE_ENV}=1 to override)")
