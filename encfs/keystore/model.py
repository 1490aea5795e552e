"""The keystore's vocabulary: formats, states, kinds, limits, and the small
helpers (dates, aliases, tags) every other keystore module shares.

Nothing here touches the disk, key material or the passphrase.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigurationError

#: Unsealed keystores keep the first format; a sealed keystore is written as
#: format 2, whose whole document is authenticated under the passphrase
#: (docs/SECURITY.md "The local keystore").  Format 1 sealed files written by
#: older encfs are read, then upgraded on their first write.
FORMAT = "encfs-keystore/1"
FORMAT_SEALED = "encfs-keystore/2"
FORMATS = (FORMAT, FORMAT_SEALED)
DEFAULT_ALIAS = "default"
MANAGED_PREFIX = "encfs/"
HOME_ENV = "ENCFS_HOME"
KEY_BYTES = 32
KEY_ID_RE = re.compile(r"lk-[A-Za-z0-9_-]{1,64}")
ENABLED, DISABLED, PENDING_DELETION = "Enabled", "Disabled", "PendingDeletion"
STATES = (ENABLED, DISABLED, PENDING_DELETION)
CUSTOMER, MANAGED = "customer", "encfs"
KINDS = (CUSTOMER, MANAGED)
USAGE = "ENCRYPT_DECRYPT"
DAY = 86400.0
MIN_DELETION_DAYS, MAX_DELETION_DAYS, DEFAULT_DELETION_DAYS = 7, 30, 30
MIN_ROTATION_DAYS, MAX_ROTATION_DAYS, DEFAULT_ROTATION_DAYS = 90, 2560, 365
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE, MAX_DESCRIPTION = 50, 128, 256, 8192
MAX_ALIAS = 256
#: Far more versions than any key will ever rotate through; bounds the
#: integers a hand-edited file can make us parse and loop over.
MAX_VERSION = 10**6


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or "~/.encfs").expanduser()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def key_uri(key_id: str) -> str:
    return f"local://{key_id}"


def normalize_alias(name: str) -> str:
    """Aliases may be written with or without AWS's ``alias/`` prefix."""
    name = name.removeprefix("alias/")
    if (not name or len(name) > MAX_ALIAS or name.startswith("/") or any(c.isspace() for c in name)
            or not name.isprintable()):
        raise ConfigurationError(f"invalid alias {name!r}")
    return name


def is_reserved_alias(alias: str) -> bool:
    """``default`` and ``encfs/...`` belong to encfs-managed keys (like AWS's
    ``alias/aws/...``): users cannot create, move or delete them."""
    return alias == DEFAULT_ALIAS or alias.startswith(MANAGED_PREFIX)


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str) or not 0 < len(k) <= MAX_TAG_KEY or len(v) > MAX_TAG_VALUE:
            raise ConfigurationError(f"invalid tag {k!r}: keys 1..{MAX_TAG_KEY} chars, values up to {MAX_TAG_VALUE}")
        out[k] = v
    return out


def check_rotation_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not MIN_ROTATION_DAYS <= days <= MAX_ROTATION_DAYS:
        raise ConfigurationError(f"rotation period must be {MIN_ROTATION_DAYS}..{MAX_ROTATION_DAYS} days")
