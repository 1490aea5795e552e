"""The keystore document's schema, checked whole on every load.

A hand-edited, damaged or hostile ``keystore.json`` (or export bundle) must
be reported as corruption naming the offending field, never crash later with
KeyError, TypeError, ValueError or OverflowError where some code indexes it.
Everything the rest of the keystore reads without further checks is checked
here: types, required fields, ranges, parseable timezone-aware dates, ids and
aliases, base64 material of the right length, and that a sealed keystore
holds no unsealed material (docs/SECURITY.md "The local keystore").

Hand-written on purpose: the schema is small and a validation library would
be a new dependency for the core package.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime
from typing import Any

from .model import (
    FORMAT,
    FORMAT_SEALED,
    FORMATS,
    KEY_BYTES,
    KEY_ID_RE,
    KINDS,
    MAX_ALIAS,
    MAX_DESCRIPTION,
    MAX_ROTATION_DAYS,
    MAX_TAG_KEY,
    MAX_TAG_VALUE,
    MAX_TAGS,
    MAX_VERSION,
    MIN_ROTATION_DAYS,
    PENDING_DELETION,
    STATES,
    USAGE,
)

#: AES-GCM nonce + sealed 32-byte key + tag (sealing.py).
SEALED_BYTES = 12 + KEY_BYTES + 16
TOP_FIELDS = {"format", "sealing", "aliases", "keys", "deleted", "checksum", "mac"}
RECORD_FIELDS = {"id", "created", "description", "tags", "state", "usage", "kind", "current_version", "versions",
                 "rotation", "deletion_date"}
ROTATION_FIELDS = {"enabled", "period_days", "next", "last"}
SEALING_FIELDS = {"kdf", "salt", "n", "r", "p", "check"}
#: scrypt needs 128*n*r bytes: bound what a planted file can make us allocate.
MAX_SCRYPT_MEMORY = 1 << 30
MAX_DATE = 64


class SchemaError(ValueError):
    """The document breaks the schema at ``field``."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}" if field else problem)


def _obj(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SchemaError(field, "not an object")
    return value


def _str(value: Any, field: str, *, max_len: int = MAX_DESCRIPTION) -> str:
    if not isinstance(value, str):
        raise SchemaError(field, "not a string")
    if len(value) > max_len:
        raise SchemaError(field, f"longer than {max_len} characters")
    return value


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    # bool is an int in Python, and JSON floats (even 90.0, Infinity, NaN)
    # are not integers: refuse both.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(field, "not an integer")
    if not lo <= value <= hi:
        raise SchemaError(field, f"out of range {lo}..{hi}")
    return value


def _only(obj: dict[str, Any], allowed: set[str], field: str) -> None:
    extra = set(obj) - allowed
    if extra:
        raise SchemaError(f"{field}.{min(map(str, extra))}", "unknown field")


def check_date(value: Any, field: str) -> float:
    """An ISO 8601 date with a timezone, as the keystore writes them."""
    text = _str(value, field, max_len=MAX_DATE)
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            raise SchemaError(field, "date without a timezone")
        stamp = when.timestamp()
    except (ValueError, OverflowError, OSError):
        raise SchemaError(field, f"not an ISO 8601 date: {text!r}") from None
    if not math.isfinite(stamp):
        raise SchemaError(field, "date out of range")
    return stamp


def b64_bytes(value: Any, field: str, *, size: int | None = None, min_size: int = 0, max_size: int = 4096) -> bytes:
    text = _str(value, field, max_len=4 * max_size)
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise SchemaError(field, "malformed base64") from None
    if (size is not None and len(raw) != size) or not min_size <= len(raw) <= max_size:
        raise SchemaError(field, "malformed (wrong length)")
    return raw


def check_key_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not KEY_ID_RE.fullmatch(value):
        raise SchemaError(field, f"malformed key id {str(value)[:80]!r}")
    return value


def check_alias_name(value: Any, field: str) -> str:
    if (not isinstance(value, str) or not value or len(value) > MAX_ALIAS or value.startswith(("/", "alias/"))
            or any(c.isspace() for c in value) or not value.isprintable()):
        raise SchemaError(field, f"malformed alias {str(value)[:80]!r}")
    return value


def check_sealing(params: Any, field: str = "sealing") -> None:
    params = _obj(params, field)
    _only(params, SEALING_FIELDS, field)
    if params.get("kdf") != "scrypt":
        raise SchemaError(f"{field}.kdf", "unsupported key derivation (only scrypt)")
    b64_bytes(params.get("salt"), f"{field}.salt", min_size=16, max_size=64)
    n = _int(params.get("n"), f"{field}.n", 2, 1 << 20)
    if n & (n - 1):
        raise SchemaError(f"{field}.n", "not a power of two")
    r = _int(params.get("r"), f"{field}.r", 1, 32)
    _int(params.get("p"), f"{field}.p", 1, 16)
    if 128 * n * r > MAX_SCRYPT_MEMORY:
        raise SchemaError(f"{field}.n", "scrypt parameters need too much memory")
    b64_bytes(params.get("check"), f"{field}.check", min_size=12 + 16, max_size=256)


def check_material_entry(entry: Any, field: str, *, sealed: bool) -> None:
    entry = _obj(entry, field)
    _only(entry, {"created", "material", "sealed"}, field)
    if entry.get("created"):  # exports of older keystores may carry ""
        check_date(entry["created"], f"{field}.created")
    elif "created" in entry:
        _str(entry["created"], f"{field}.created")
    if sealed:
        if "material" in entry:
            # Finding 3: whoever can write the file but lacks the passphrase
            # could otherwise plant a key of their own next to sealed ones.
            raise SchemaError(f"{field}.material", "unsealed key material in a sealed keystore")
        b64_bytes(entry.get("sealed"), f"{field}.sealed", size=SEALED_BYTES)
    else:
        if "sealed" in entry:
            raise SchemaError(f"{field}.sealed", "sealed key material in a keystore without sealing parameters")
        try:
            b64_bytes(entry.get("material"), f"{field}.material", size=KEY_BYTES)
        except SchemaError as exc:
            raise SchemaError(exc.field, "key material is malformed") from None


def check_record(key_id: str, rec: Any, field: str, *, sealed: bool) -> None:
    rec = _obj(rec, field)
    _only(rec, RECORD_FIELDS, field)
    if rec.get("id") != key_id:
        raise SchemaError(f"{field}.id", "missing or not the key's own id")
    if rec.get("state") not in STATES:
        raise SchemaError(f"{field}.state", f"not one of {', '.join(STATES)}")
    if "created" in rec:
        check_date(rec["created"], f"{field}.created")
    if "description" in rec:
        _str(rec["description"], f"{field}.description", max_len=MAX_DESCRIPTION)
    if "usage" in rec and rec["usage"] != USAGE:
        raise SchemaError(f"{field}.usage", f"not {USAGE}")
    if "kind" in rec and rec["kind"] not in KINDS:
        raise SchemaError(f"{field}.kind", f"not one of {', '.join(KINDS)}")
    if "tags" in rec:
        tags = _obj(rec["tags"], f"{field}.tags")
        if len(tags) > MAX_TAGS:
            raise SchemaError(f"{field}.tags", f"more than {MAX_TAGS} tags")
        for k, v in tags.items():
            if not 0 < len(k) <= MAX_TAG_KEY:
                raise SchemaError(f"{field}.tags", f"tag names are 1..{MAX_TAG_KEY} characters")
            _str(v, f"{field}.tags.{k}", max_len=MAX_TAG_VALUE)
    if rec["state"] == PENDING_DELETION or "deletion_date" in rec:
        check_date(rec.get("deletion_date"), f"{field}.deletion_date")
    versions = _obj(rec.get("versions"), f"{field}.versions")
    if not versions:
        raise SchemaError(f"{field}.versions", "no versions")
    for v, entry in versions.items():
        if not (v.isascii() and v.isdigit() and not v.startswith("0") and len(v) <= 7 and int(v) <= MAX_VERSION):
            raise SchemaError(f"{field}.versions", f"malformed version number {v[:20]!r}")
        check_material_entry(entry, f"{field}.versions.{v}", sealed=sealed)
    current = _int(rec.get("current_version"), f"{field}.current_version", 1, MAX_VERSION)
    if str(current) not in versions:
        raise SchemaError(f"{field}.current_version", "names no version of the key")
    if "rotation" in rec:
        rot = _obj(rec["rotation"], f"{field}.rotation")
        _only(rot, ROTATION_FIELDS, f"{field}.rotation")
        if not isinstance(rot.get("enabled", False), bool):
            raise SchemaError(f"{field}.rotation.enabled", "not true or false")
        if rot.get("enabled") or "period_days" in rot:
            _int(rot.get("period_days"), f"{field}.rotation.period_days", MIN_ROTATION_DAYS, MAX_ROTATION_DAYS)
        if rot.get("enabled") or "next" in rot:
            check_date(rot.get("next"), f"{field}.rotation.next")
        if "last" in rot:
            check_date(rot["last"], f"{field}.rotation.last")


def check_aliases(aliases: Any, field: str = "aliases") -> dict[str, str]:
    aliases = _obj(aliases, field)
    for alias, key_id in aliases.items():
        check_alias_name(alias, field)
        check_key_id(key_id, f"{field}.{alias}")
    return aliases


def check_document(doc: Any) -> None:
    """Raise :class:`SchemaError` unless ``doc`` is a well-formed keystore
    document (format 1 or 2, sealed or not)."""
    doc = _obj(doc, "")
    _only(doc, TOP_FIELDS, "")
    if doc.get("format") not in FORMATS:
        raise SchemaError("format", f"not one of {', '.join(FORMATS)}")
    sealed = doc.get("sealing") is not None
    if sealed:
        check_sealing(doc["sealing"])
    if doc["format"] == FORMAT_SEALED and not sealed:
        raise SchemaError("sealing", f"missing in a {FORMAT_SEALED} keystore")
    if doc["format"] == FORMAT_SEALED:
        _str(doc.get("mac"), "mac", max_len=128)
    elif "mac" in doc:
        raise SchemaError("mac", f"present in a {FORMAT} keystore")
    if "checksum" in doc:
        _str(doc["checksum"], "checksum", max_len=128)
    keys = _obj(doc.get("keys"), "keys")
    for key_id, rec in keys.items():
        check_key_id(key_id, "keys")
        check_record(key_id, rec, f"keys.{key_id}", sealed=sealed)
    check_aliases(doc.get("aliases"))
    for key_id, when in _obj(doc.get("deleted", {}), "deleted").items():
        check_key_id(key_id, "deleted")
        check_date(when, f"deleted.{key_id}")


def check_bundle_records(records: Any) -> dict[str, Any]:
    """The plaintext of an export bundle (transfer.py): key records with
    unsealed material, and their aliases."""
    records = _obj(records, "")
    _only(records, {"keys", "aliases"}, "")
    for key_id, rec in _obj(records.get("keys"), "keys").items():
        check_key_id(key_id, "keys")
        check_record(key_id, rec, f"keys.{key_id}", sealed=False)
    check_aliases(records.get("aliases", {}))
    return records
