"""What encfs needs from the operating system where POSIX and Windows differ.

Everything platform-specific that the keystore and the audit log use goes
through here, so ``import encfs`` works where ``fcntl``, ``os.fchmod``,
``os.getuid`` or ``O_NOFOLLOW`` do not exist (Windows), and each fallback
is documented once (docs/SECURITY.md "Windows").

- :func:`file_lock`: an exclusive inter-process lock from ``filelock``
  (``flock`` on POSIX, ``msvcrt.locking`` on Windows; both are released by
  the operating system when the holder dies, so a crash never leaves the
  keystore locked).
- :func:`fsync_dir`: makes a rename durable on POSIX; Windows cannot open a
  directory, and NTFS journals the rename itself, so there it is skipped.
- :func:`restrict_to_owner`: mode 0600 on POSIX; on Windows ``chmod`` can
  only set the read-only flag, so the file keeps the ACL it inherits from
  its directory (under the user profile: the user, SYSTEM, Administrators).
- :func:`current_uid`: the numeric user id, ``None`` where there is none.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from filelock import FileLock

#: Open flags that exist only on some platforms: 0 where they do not, so
#: ``flags | O_NOFOLLOW`` is always valid.  Windows needs O_BINARY, or
#: ``os.write`` on a descriptor from ``os.open`` turns "\n" into "\r\n".
O_BINARY: int = getattr(os, "O_BINARY", 0)
O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)

#: errno values of an fsync that the platform or filesystem does not support
#: on a directory (nothing to make durable that way), as opposed to an I/O error.
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.EBADF, getattr(errno, "ENOTSUP", errno.EINVAL),
                          getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


def file_lock(path: str | os.PathLike[str]) -> FileLock:
    """A new exclusive lock on the side file ``path`` (created 0600).

    One object per use, as each ``with`` opens its own descriptor: threads
    and processes exclude each other alike, as ``flock`` on separate opens did.
    Not thread-local, so a lock held for a long time (the key server's
    database) may be released from another thread than the one that took it.
    """
    return FileLock(os.fspath(path), mode=0o600, thread_local=False)


def fsync_dir(path: str | os.PathLike[str]) -> bool:
    """Flush directory ``path`` so a rename inside it survives a power loss.

    Returns False where directories cannot be opened or synced (Windows:
    ``os.open`` of a directory fails with EACCES; NTFS journals metadata
    such as renames, so ``os.replace`` is durable once it returns).  A real
    I/O error while syncing still raises.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in _DIR_FSYNC_UNSUPPORTED:
            return False
        raise
    finally:
        os.close(fd)
    return True


def restrict_to_owner(fd: int, path: str | os.PathLike[str], mode: int = 0o600) -> None:
    """Give the open file ``fd`` (at ``path``) ``mode``; ``fchmod`` where it
    exists, else ``chmod`` by path (Windows: only the read-only bit; the ACL
    inherited from the directory is what protects the file)."""
    fchmod = getattr(os, "fchmod", None)
    if fchmod is not None:
        fchmod(fd, mode)
    else:
        os.chmod(Path(path), mode)


def current_uid() -> int | None:
    """The real user id, or None on platforms without one (Windows)."""
    getuid = getattr(os, "getuid", None)
    return getuid() if getuid is not None else None


__all__ = ["O_BINARY", "O_CLOEXEC", "O_NOFOLLOW", "current_uid", "file_lock", "fsync_dir", "restrict_to_owner"]
