"""Key metadata on the document: aliases, tags and descriptions
(docs/KEYS.md "Naming keys", "Metadata").

Like lifecycle.py, functions here change a checked document in memory;
store.py runs them under the file lock.  ``not_found(doc, key_id)`` raises
the keystore's KeyNotFoundError (it names the keystore folder).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigurationError, KeyNotFoundError
from .lifecycle import refuse
from .model import MAX_DESCRIPTION, MAX_TAGS, PENDING_DELETION, check_tags, is_reserved_alias, normalize_alias

NotFound = Callable[[dict[str, Any], str], None]


def user_alias(name: str) -> str:
    """A normalized alias that users may create, move or delete."""
    alias = normalize_alias(name)
    if is_reserved_alias(alias):
        raise ConfigurationError(f"alias {alias!r} is reserved for encfs-managed keys")
    return alias


def check_description(description: str) -> str:
    if len(description) > MAX_DESCRIPTION:
        raise ConfigurationError(f"description longer than {MAX_DESCRIPTION} characters")
    return description


def _alias_target(doc: dict[str, Any], key_id: str, not_found: NotFound) -> None:
    rec = doc["keys"].get(key_id)
    if rec is None:
        not_found(doc, key_id)
    if rec["state"] == PENDING_DELETION:
        refuse(rec, "take an alias")


def create_alias(doc: dict[str, Any], alias: str, key_id: str, not_found: NotFound) -> None:
    if alias in doc["aliases"]:
        raise ConfigurationError(f"alias {alias!r} already exists (use 'alias update')")
    _alias_target(doc, key_id, not_found)
    doc["aliases"][alias] = key_id


def update_alias(doc: dict[str, Any], alias: str, key_id: str, not_found: NotFound) -> None:
    if alias not in doc["aliases"]:
        raise KeyNotFoundError(f"alias {alias!r} does not exist", key=f"local://alias/{alias}")
    _alias_target(doc, key_id, not_found)
    doc["aliases"][alias] = key_id


def delete_alias(doc: dict[str, Any], alias: str) -> None:
    if doc["aliases"].pop(alias, None) is None:
        raise KeyNotFoundError(f"alias {alias!r} does not exist", key=f"local://alias/{alias}")


def tag(rec: dict[str, Any], tags: Mapping[str, str]) -> None:
    if rec["state"] == PENDING_DELETION:
        refuse(rec, "tag")
    merged = {**rec.get("tags", {}), **check_tags(tags)}
    if len(merged) > MAX_TAGS:
        raise ConfigurationError(f"a key holds at most {MAX_TAGS} tags")
    rec["tags"] = merged


def untag(rec: dict[str, Any], names: list[str]) -> None:
    if rec["state"] == PENDING_DELETION:
        refuse(rec, "untag")
    for name in names:
        rec.get("tags", {}).pop(name, None)


def set_description(rec: dict[str, Any], description: str) -> None:
    if rec["state"] == PENDING_DELETION:
        refuse(rec, "change its description")
    rec["description"] = check_description(description)
