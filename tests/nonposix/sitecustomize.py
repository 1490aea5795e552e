"""Run encfs as if on Windows, as far as encfs can tell (tests/test_portable.py).

Put this directory first on ``PYTHONPATH`` and in every Python process
started with it (the test run and the subprocesses its tests start):

- ``import fcntl`` and ``import pwd`` raise ImportError, for everyone (so
  ``getpass.getuser()`` fails as on Windows when no user variable is set);
- encfs's own modules get an ``os`` without ``fchmod``, ``fchown``,
  ``getuid``/``geteuid``/``getgid``/``getegid``, ``O_NOFOLLOW`` and
  ``O_DIRECTORY``, whose ``open`` of a directory raises PermissionError, as
  on Windows.  Other libraries keep the real ``os``: on Windows they would
  take their own Windows code paths (filelock's ``msvcrt`` lock instead of
  its ``flock`` one, for instance), which no patch can imitate here.

``filelock`` is imported first, while ``fcntl`` still exists: on Windows it
locks with ``msvcrt.locking``, a native lock the OS releases when the holder
dies; its ``flock`` backend is the closest equivalent here, whereas hiding
``fcntl`` from it too would test its soft-lock fallback, which Windows never
uses.  encfs itself must never need ``fcntl``.

(A ``sitecustomize`` found first on the path shadows any other one, such as
a distribution's; only the test processes started with this path see that.)
"""

from __future__ import annotations

import builtins
import os
import sys
import types
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import filelock  # noqa: F401  (binds its native lock before fcntl goes)

for _module in ("fcntl", "pwd"):
    sys.modules[_module] = None  # type: ignore[assignment]  # "import fcntl" -> ImportError

HIDDEN = frozenset({"fchmod", "fchown", "getuid", "geteuid", "getgid", "getegid", "O_NOFOLLOW", "O_DIRECTORY"})


class _WindowsLikeOs(types.ModuleType):
    """The ``os`` module as encfs would see it on Windows."""

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        if name in HIDDEN:
            raise AttributeError(f"module 'os' has no attribute {name!r}")
        return getattr(os, name)

    def __dir__(self):  # type: ignore[no-untyped-def]
        return sorted(set(dir(os)) - HIDDEN)

    @staticmethod
    def open(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if dir_fd is None and os.path.isdir(path):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return os.open(path, flags, mode, dir_fd=dir_fd)


OS = _WindowsLikeOs("os")
_real_import = builtins.__import__


def _import(name, globals=None, locals=None, fromlist=(), level=0):  # type: ignore[no-untyped-def]
    module = _real_import(name, globals, locals, fromlist, level)
    if module is os and level == 0 and globals:
        importer = globals.get("__name__", "")
        if importer == "encfs" or importer.startswith("encfs."):
            return OS
    return module


builtins.__import__ = _import
os.environ["ENCFS_TEST_NONPOSIX"] = "1"
