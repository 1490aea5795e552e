"""The whole encfs error tree.

Every error encfs raises on purpose derives from :class:`EncfsError`.  Storage
errors of the target filesystem (``FileNotFoundError``, ``FileExistsError``,
...) pass through unchanged, as fsspec users expect.

No message built here ever contains key material: key errors name the key
(URI, id, version) and the operation, nothing more.
"""

from __future__ import annotations


class EncfsError(Exception):
    """Base class of every error raised by encfs."""


class IntegrityError(EncfsError):
    """Authentication failed: the object was tampered with, truncated,
    reordered, spliced, moved behind encfs's back, or does not match the key.

    The message is fixed on purpose: telling an attacker *which* check failed
    would give them an oracle (DESIGN.md section 2).
    """

    MESSAGE = "encrypted object failed authentication"

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{self.MESSAGE}: {path}" if path else self.MESSAGE)


class FormatError(EncfsError):
    """The bytes are not an encfs object, or its header is malformed."""


class UnsupportedVersionError(FormatError):
    """An encfs object of a format version or suite this release cannot read."""


class HeaderTooLargeError(EncfsError):
    """The header (context plus wrapped keys) does not fit its fixed region."""


class KeyServiceError(EncfsError):
    """Base of errors about root keys and the services that hold them.

    Attributes ``key`` (a key URI or id) and ``operation`` say what failed.
    """

    def __init__(self, message: str, *, key: str | None = None, operation: str | None = None) -> None:
        self.key = key
        self.operation = operation
        super().__init__(message)


class KeyNotFoundError(KeyServiceError):
    """The root key does not exist (or is not visible to the caller)."""


class KeyStateError(KeyServiceError):
    """The root key exists but its state forbids the operation
    (disabled, pending deletion)."""


class AccessDeniedError(KeyServiceError):
    """The caller is not allowed to use the root key for this operation."""


class KeyUnavailableError(KeyServiceError):
    """The key service could not be reached or failed transiently."""


class NoUsableKeyError(KeyServiceError):
    """None of the wrapped data keys of an object can be unwrapped with the
    root keys this filesystem is allowed to use."""


class ConfigurationError(EncfsError):
    """Invalid option, unknown key URI scheme, missing optional dependency."""


class UnsafePathError(EncfsError):
    """A copy, get or put would write outside its destination: the source
    key holds ``..``, an absolute path, a drive letter, a backslash or an
    empty component (docs/SECURITY.md)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"refusing to copy {key!r}: {reason} (it would land outside the destination)")


class ContextMismatchError(EncfsError):
    """An object's encryption context lacks or differs in a pair the
    filesystem was configured with (``context=``): it was written for
    another tenant or purpose, so it is not read (docs/SECURITY.md)."""


class NotRegularFileError(EncfsError):
    """A local path names a FIFO, socket, device or other non-regular file,
    which encfs never opens (reading one could block forever)."""


class KeystoreError(EncfsError):
    """The local keystore is unreadable, corrupted or locked by a passphrase."""


__all__ = [
    "EncfsError",
    "IntegrityError",
    "FormatError",
    "UnsupportedVersionError",
    "HeaderTooLargeError",
    "KeyServiceError",
    "KeyNotFoundError",
    "KeyStateError",
    "AccessDeniedError",
    "KeyUnavailableError",
    "NoUsableKeyError",
    "ConfigurationError",
    "KeystoreError",
    "UnsafePathError",
    "ContextMismatchError",
    "NotRegularFileError",
]
