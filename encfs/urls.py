"""The single-scheme URL form ``enc+<target>://...`` (pure string functions).

``enc+s3://bucket/key`` means exactly what the chained ``enc::s3://bucket/key``
means: encrypted objects stored at ``s3://bucket/key``.  It exists because
clients decide by the URL's *scheme* whether a string is a remote URL and
which filesystem gets it:

- pandas 2 treats a string as an fsspec URL only if it matches
  ``^[A-Za-z][A-Za-z0-9+\\-+.]*://`` (pandas 3 also accepts ``::``), so a
  chained URL is taken for a local path there;
- DuckDB routes a path to a registered fsspec filesystem only when it starts
  with ``<protocol>://`` for one of the protocols the filesystem declares,
  including the paths it gets back from ``glob`` via ``unstrip_protocol``.

``enc+<target>`` is one fsspec protocol per target (encfs/forms.py holds the
classes, registered as entry points in pyproject.toml).  This module knows
only the names, so encfs/fs.py can use it without importing the classes.
"""

from __future__ import annotations

#: Scheme prefix of the single-scheme form.
PREFIX = "enc+"

#: Target protocols with an ``enc+<target>`` form.  Each name is spelled as
#: in the target's own URLs; keep in step with encfs/forms.py and the
#: ``fsspec.specs`` entry points in pyproject.toml.
TARGETS: tuple[str, ...] = ("file", "memory", "s3", "gs", "gcs", "abfs", "az", "http", "https")


def form_protocol(target: str) -> str:
    """``"s3"`` → ``"enc+s3"``."""
    return PREFIX + target


def to_form(target_url: str) -> str | None:
    """``"s3://b/k"`` → ``"enc+s3://b/k"``; None when the target's scheme
    has no ``enc+`` form (the caller then falls back to ``enc::<url>``)."""
    scheme, sep, _ = target_url.partition("://")
    if not sep or scheme not in TARGETS:
        return None
    return PREFIX + target_url


def target_url(url: str) -> str | None:
    """``"enc+s3://b/k"`` → ``"s3://b/k"``; None if ``url`` is not of the form."""
    if not url.startswith(PREFIX):
        return None
    scheme, sep, _ = url[len(PREFIX) :].partition("://")
    if not sep or not scheme:
        return None
    return url[len(PREFIX) :]
