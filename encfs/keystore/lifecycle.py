"""Key lifecycle on the document: new keys and versions, state transitions,
and the due work (automatic rotation, deletion at the end of the waiting
period), modelled on AWS KMS (docs/KEYS.md "States", "Rotation").

Functions here change a checked document in memory; store.py runs them
under the file lock and saves the result.  Key material comes straight from
``os.urandom`` and is handed to ``seal`` at once (sealed or base64 entry).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigurationError, KeyStateError
from .model import (
    DAY,
    DEFAULT_DELETION_DAYS,
    DISABLED,
    ENABLED,
    KEY_BYTES,
    MANAGED,
    MAX_DELETION_DAYS,
    MIN_DELETION_DAYS,
    PENDING_DELETION,
    USAGE,
    iso,
    key_uri,
    ts,
)

#: seal(key_id, version, material) -> the version entry's material field.
Seal = Callable[[str, int, bytes], dict[str, str]]
Event = tuple[str, str, dict[str, Any]]


def refuse(rec: Mapping[str, Any], op: str) -> None:
    raise KeyStateError(f"local key {rec['id']} is {rec['state']}: cannot {op}", key=key_uri(rec["id"]), operation=op)


# -- creation -------------------------------------------------------------------
def new_record(key_id: str, now: float, seal: Seal, *, description: str, tags: Mapping[str, str], kind: str,
               rotation_days: int | None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "id": key_id, "created": iso(now), "description": description, "tags": dict(tags),
        "state": ENABLED, "usage": USAGE, "kind": kind, "current_version": 1,
        "versions": {"1": {"created": iso(now), **seal(key_id, 1, os.urandom(KEY_BYTES))}},
        "rotation": {"enabled": False},
    }
    if rotation_days is not None:
        rec["rotation"] = {"enabled": True, "period_days": rotation_days, "next": iso(now + rotation_days * DAY)}
    return rec


def add_version(rec: dict[str, Any], now: float, seal: Seal) -> int:
    """A new version from the CSPRNG becomes current; old ones keep unwrapping."""
    v = max(int(x) for x in rec["versions"]) + 1
    rec["versions"][str(v)] = {"created": iso(now), **seal(rec["id"], v, os.urandom(KEY_BYTES))}
    rec["current_version"] = v
    return v


# -- due work -----------------------------------------------------------------------
def due_time(doc: Mapping[str, Any]) -> float:
    """When the next automatic action falls due (inf if none)."""
    due = float("inf")
    for rec in doc["keys"].values():
        if rec["state"] == PENDING_DELETION:
            due = min(due, ts(rec["deletion_date"]))
        rot = rec.get("rotation") or {}
        if rot.get("enabled") and rec["state"] == ENABLED:
            due = min(due, ts(rot["next"]))
    return due


def apply_due(doc: dict[str, Any], now: float, seal: Seal) -> list[Event]:
    """Run every rotation and deletion due at ``now``; return audit events."""
    events: list[Event] = []
    for key_id, rec in list(doc["keys"].items()):
        if rec["state"] == PENDING_DELETION and ts(rec["deletion_date"]) <= now:
            # End of the waiting period: every version goes, and its aliases.
            del doc["keys"][key_id]
            for alias in [a for a, k in doc["aliases"].items() if k == key_id]:
                del doc["aliases"][alias]
            doc["deleted"][key_id] = iso(now)
            events.append(("delete-key", key_id, {}))
            continue
        rot = rec.get("rotation") or {}
        if rot.get("enabled") and rec["state"] == ENABLED and ts(rot["next"]) <= now:
            v = add_version(rec, now, seal)
            rot["last"] = iso(now)
            # One rotation however many periods were missed (as KMS does):
            # the next one is a full period from now.
            rot["next"] = iso(now + int(rot["period_days"]) * DAY)
            events.append(("auto-rotate", key_id, {"version": str(v)}))
    return events


# -- state transitions --------------------------------------------------------------
def enable(rec: dict[str, Any]) -> None:
    """Disabled → Enabled (Enabled stays Enabled)."""
    if rec["state"] == PENDING_DELETION:
        refuse(rec, "enable (cancel the deletion first)")
    rec["state"] = ENABLED


def disable(rec: dict[str, Any]) -> None:
    """Enabled → Disabled (Disabled stays Disabled)."""
    if rec["state"] == PENDING_DELETION:
        refuse(rec, "disable")
    rec["state"] = DISABLED


def check_deletion_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not MIN_DELETION_DAYS <= days <= MAX_DELETION_DAYS:
        raise ConfigurationError(f"deletion waiting period must be {MIN_DELETION_DAYS}..{MAX_DELETION_DAYS} days")


def schedule_deletion(rec: dict[str, Any], now: float, days: int = DEFAULT_DELETION_DAYS) -> str:
    """Enabled/Disabled → PendingDeletion; returns the deletion date."""
    if rec["state"] == PENDING_DELETION:
        refuse(rec, "schedule deletion (already scheduled)")
    if rec.get("kind") == MANAGED:
        raise ConfigurationError(f"local key {rec['id']} is encfs-managed and cannot be deleted")
    rec["state"] = PENDING_DELETION
    rec["deletion_date"] = iso(now + days * DAY)
    return rec["deletion_date"]


def cancel_deletion(rec: dict[str, Any]) -> None:
    """PendingDeletion → Disabled (as in KMS: re-enable explicitly)."""
    if rec["state"] != PENDING_DELETION:
        refuse(rec, "cancel deletion (no deletion is scheduled)")
    rec["state"] = DISABLED
    rec.pop("deletion_date", None)


def rotate(rec: dict[str, Any], now: float, seal: Seal) -> int:
    """On-demand rotation of an Enabled key."""
    if rec["state"] != ENABLED:
        refuse(rec, "rotate")
    v = add_version(rec, now, seal)
    rot = rec.setdefault("rotation", {"enabled": False})
    rot["last"] = iso(now)
    return v


def enable_rotation(rec: dict[str, Any], now: float, period_days: int) -> None:
    if rec["state"] != ENABLED:
        refuse(rec, "enable automatic rotation")
    rot = rec.setdefault("rotation", {})
    rot.update(enabled=True, period_days=period_days, next=iso(now + period_days * DAY))


def disable_rotation(rec: dict[str, Any]) -> None:
    if rec["state"] == PENDING_DELETION:
        refuse(rec, "disable automatic rotation")
    if rec.get("kind") == MANAGED:
        raise ConfigurationError(f"local key {rec['id']} is encfs-managed: its rotation cannot be turned off")
    rec["rotation"] = {k: v for k, v in (rec.get("rotation") or {}).items() if k == "last"}
    rec["rotation"]["enabled"] = False
