"""One fsspec protocol per target: ``enc+s3``, ``enc+file``, ``enc+memory``, ...

``fsspec.open("enc+s3://bucket/key", **options)`` is
``fsspec.open("enc::s3://bucket/key", **options)`` (encfs/urls.py says why
the single-scheme form exists).  Options keep the chained form's convention:

- top-level options go to the enc layer (``key``, ``keystore``, ``cache``, ...);
  so do the entries of a nested ``"enc": {...}`` dict;
- the target's options go in a dict named after the target protocol as the
  URL spells it (``"s3": {"client_kwargs": {"endpoint_url": ...}}``), or in
  ``target_options``.

The classes hold no state beyond EncryptedFileSystem's constructor
arguments, so pickles, dask workers and ``to_json()`` carry the same
references-only options as the chained form (the nested target dict
included, exactly as given).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import fsspec

from .errors import ConfigurationError
from .fs import EncryptedFileSystem
from .urls import TARGETS, form_protocol


class TargetEncryptedFileSystem(EncryptedFileSystem):
    """EncryptedFileSystem whose target protocol is fixed by the class."""

    #: The target protocol, as spelled in the URL (``"s3"``, ``"gs"``, ...).
    target: ClassVar[str] = ""

    def __init__(
        self,
        fo: str | None = None,
        *,
        fs: Any = None,
        target_protocol: str | None = None,
        target_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # fsspec's _un_chain hands this class every top-level option,
        # including a nested "enc" dict that the chained form would have
        # routed to the enc layer (the target's own dict, "s3": {...}, is
        # taken by EncryptedFileSystem, encfs/chaining.py).
        nested_enc = kwargs.pop("enc", None) or {}
        kwargs = {**nested_enc, **kwargs}  # top level wins, as in fsspec's chaining
        if target_protocol is not None and target_protocol != self.target:
            raise ConfigurationError(
                f"{form_protocol(self.target)}:// stores on {self.target!r}, not {target_protocol!r}")
        if fs is not None:
            if target_options:
                raise ConfigurationError("give either fs= or target_options=, not both")
            super().__init__(fo, fs=fs, **kwargs)
        else:
            super().__init__(fo, target_protocol=self.target, target_options=target_options, **kwargs)

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        """``enc+s3://b/k`` → ``b/k``: the target's own path, which is what
        ``url_to_fs`` returns for ``enc::s3://b/k`` too (dask and pyarrow
        compare listed paths against it).  Trailing "/" are all kept, as in
        EncryptedFileSystem._target_path ("x/" and "x//" are other objects
        than "x" on S3; FORMAT.md section 4.1)."""
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        url = super()._strip_protocol(path)
        stripped = fsspec.get_filesystem_class(cls.target)._strip_protocol(url)
        trail = len(url) - len(url.rstrip("/"))
        if trail and stripped and url.rstrip("/"):
            stripped = stripped.rstrip("/") + "/" * trail
        return stripped


# One class per URL scheme (module-level names: pickles refer to them).
class EncFileFileSystem(TargetEncryptedFileSystem):
    """``enc+file:///path``: encrypted objects on the local disk."""

    protocol = ("enc+file",)
    target = "file"


class EncMemoryFileSystem(TargetEncryptedFileSystem):
    """``enc+memory://path``: encrypted objects in fsspec's memory store."""

    protocol = ("enc+memory",)
    target = "memory"


class EncS3FileSystem(TargetEncryptedFileSystem):
    """``enc+s3://bucket/key`` (needs s3fs)."""

    protocol = ("enc+s3",)
    target = "s3"


class EncGSFileSystem(TargetEncryptedFileSystem):
    """``enc+gs://bucket/key`` (needs gcsfs)."""

    protocol = ("enc+gs",)
    target = "gs"


class EncGCSFileSystem(TargetEncryptedFileSystem):
    """``enc+gcs://bucket/key`` (needs gcsfs)."""

    protocol = ("enc+gcs",)
    target = "gcs"


class EncABFSFileSystem(TargetEncryptedFileSystem):
    """``enc+abfs://container/path`` (needs adlfs)."""

    protocol = ("enc+abfs",)
    target = "abfs"


class EncAZFileSystem(TargetEncryptedFileSystem):
    """``enc+az://container/path`` (needs adlfs)."""

    protocol = ("enc+az",)
    target = "az"


class EncHTTPFileSystem(TargetEncryptedFileSystem):
    """``enc+http://host/path``: read-only (HTTP servers take no writes)."""

    protocol = ("enc+http",)
    target = "http"


class EncHTTPSFileSystem(TargetEncryptedFileSystem):
    """``enc+https://host/path``: read-only."""

    protocol = ("enc+https",)
    target = "https"


#: ``"enc+s3"`` → the class path fsspec imports lazily.
FORMS: dict[str, str] = {
    cls.protocol[0]: f"{__name__}.{cls.__name__}"
    for cls in (EncFileFileSystem, EncMemoryFileSystem, EncS3FileSystem, EncGSFileSystem, EncGCSFileSystem,
                EncABFSFileSystem, EncAZFileSystem, EncHTTPFileSystem, EncHTTPSFileSystem)
}
assert sorted(FORMS) == sorted(form_protocol(t) for t in TARGETS)


def register() -> None:
    """Register the forms with fsspec (the entry points do the same once
    encfs is installed; this covers running from a source tree)."""
    from fsspec.registry import known_implementations, registry

    for name, path in FORMS.items():
        if name not in known_implementations and name not in registry:
            fsspec.register_implementation(name, path)
