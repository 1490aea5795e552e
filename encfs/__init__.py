"""encfs: transparent envelope encryption for any fsspec filesystem.

>>> import pandas as pd
>>> df.to_parquet("enc+file:///data/lake/sales.parquet")       # doctest: +SKIP
>>> pd.read_parquet("enc+file:///data/lake/sales.parquet")     # doctest: +SKIP
"""

from __future__ import annotations

from .errors import (
    AccessDeniedError,
    ConfigurationError,
    ContextMismatchError,
    EncfsError,
    FormatError,
    HeaderTooLargeError,
    IntegrityError,
    KeyNotFoundError,
    KeyServiceError,
    KeyStateError,
    KeystoreError,
    KeyUnavailableError,
    NotRegularFileError,
    NoUsableKeyError,
    UnsafePathError,
    UnsupportedVersionError,
)
from .forms import register as _register_forms
from .fs import EncryptedFileSystem
from .keystore import LocalKeystore

_register_forms()  # enc+s3://, enc+file://, ... (also entry points once installed)

__version__ = "0.1.0"

__all__ = [
    "EncryptedFileSystem",
    "LocalKeystore",
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
    "__version__",
]
