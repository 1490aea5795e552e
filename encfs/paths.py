"""Pure path rules: where a copied key may land, and which local path an
object binds (docs/SECURITY.md "Copies stay inside their destination",
docs/FORMAT.md section 4.1).

Nothing here touches a filesystem, so every rule is testable on any
platform (the Windows rules run on Linux through ``ntpath``).
"""

from __future__ import annotations

import ntpath
import os
import posixpath
import re
from types import ModuleType

from .errors import UnsafePathError

#: A component that Windows reads as a drive ("C:", "c:x") or that NTFS reads
#: as an alternate data stream of a one-letter file: refused everywhere, so a
#: tree copied on Linux copies the same way on Windows.
_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_reason(rel: str) -> str | None:
    """Why the relative key ``rel`` may not be joined below a destination
    root, or None if it may.

    ``rel`` is the part of a source key below the source root, with ``/``
    separators.  Refused: an absolute key (leading ``/``), empty components
    (``a//b``: on disk the same file as ``a/b``), ``.`` and ``..``,
    backslashes (path separators on Windows), drive letters, and NUL.
    """
    if not rel:
        return "empty name"
    if "\x00" in rel:
        return "NUL byte in the name"
    if rel.startswith("/"):
        return "absolute path"
    if "\\" in rel:
        return "backslash in the name"
    for part in rel.split("/"):
        if part == "":
            return "empty path component"
        if part in (".", ".."):
            return f"{part!r} path component"
        if _DRIVE.match(part):
            return "drive letter in the name"
    return None


def join_inside(root: str, rel: str, *, source: str | None = None) -> str:
    """``root/rel``, refusing any ``rel`` that could land outside ``root``."""
    reason = unsafe_reason(rel)
    if reason is not None:
        raise UnsafePathError(source if source is not None else rel, reason)
    return f"{root.rstrip('/')}/{rel}" if root.rstrip("/") else f"{root}{rel}"


def local_bound_path(path: str, flavour: ModuleType | None = None) -> str:
    """The canonical spelling of a local path that an object binds.

    POSIX (``posixpath``): ``normpath``, so ``d/./f``, ``d//f`` and
    ``d/x/../f`` bind ``d/f`` (unchanged since format v1).

    Windows (``ntpath``): the same file can be spelled with ``/`` or ``\\``,
    with any case of letters (NTFS is case-insensitive by default) and with
    ``.``/``..`` components; all of them bind one string:
    ``normcase(normpath(path))`` with ``/`` separators, e.g.
    ``C:\\Data\\..\\Lake\\F.csv`` and ``c:/lake/f.csv`` both bind
    ``c:/lake/f.csv``.
    """
    flavour = flavour or os.path
    if flavour is ntpath:
        return ntpath.normcase(ntpath.normpath(path)).replace("\\", "/")
    return posixpath.normpath(path)


__all__ = ["join_inside", "local_bound_path", "unsafe_reason"]
