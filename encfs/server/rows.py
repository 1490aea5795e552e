"""Rows of the SQL storage backends <-> storage records.

SQLite (``sqlite3.Row``) and PostgreSQL (psycopg's ``dict_row``) share one
schema (encfs/server/sqlite.py and postgres.py keep their migrations in
step), and both rows read by column name, so one mapping serves both.
JSON columns hold tags, grant operations and constraints, and account
actions; ``*_values`` give the parameter tuples of the UPDATE statements.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .storage import AccessKey, AliasRecord, GrantRecord, KeyRecord, KeyVersion


def key_from_row(row: Mapping[str, Any]) -> KeyRecord:
    return KeyRecord(
        key_id=row["key_id"], arn=row["arn"], created=row["created"], policy=row["policy"], creator=row["creator"],
        description=row["description"], state=row["state"], usage=row["usage"], spec=row["spec"],
        current_version=row["current_version"], deletion_date=row["deletion_date"],
        rotation_enabled=bool(row["rotation_enabled"]), rotation_period_days=row["rotation_period_days"],
        next_rotation=row["next_rotation"], tags=json.loads(row["tags"]),
    )


def key_values(r: KeyRecord) -> tuple[Any, ...]:
    """The columns of ``keys`` after the key id, then the key id (UPDATE ... WHERE key_id = ?)."""
    return (r.arn, r.created, r.policy, r.creator, r.description, r.state, r.usage, r.spec, r.current_version,
            r.deletion_date, int(r.rotation_enabled), r.rotation_period_days, r.next_rotation,
            json.dumps(r.tags, sort_keys=True), r.key_id)


def version_from_row(row: Mapping[str, Any]) -> KeyVersion:
    return KeyVersion(key_id=row["key_id"], version=row["version"], created=row["created"],
                      rotation_type=row["rotation_type"], wrapped=bytes(row["wrapped"]),
                      master_key_id=row["master_key_id"])


def grant_from_row(row: Mapping[str, Any]) -> GrantRecord:
    return GrantRecord(
        grant_id=row["grant_id"], key_id=row["key_id"], grantee=row["grantee"], retiring=row["retiring"],
        operations=json.loads(row["operations"]), constraints=json.loads(row["constraints"]), name=row["name"],
        created=row["created"], issuing_account=row["issuing_account"], creator=row["creator"],
    )


def alias_from_row(row: Mapping[str, Any]) -> AliasRecord:
    return AliasRecord(name=row["name"], key_id=row["key_id"], created=row["created"], updated=row["updated"])


def actions_text(actions: tuple[str, ...] | None) -> str | None:
    return None if actions is None else json.dumps(list(actions))


def access_key_from_row(row: Mapping[str, Any]) -> AccessKey:
    actions = row["account_actions"]
    return AccessKey(access_key_id=row["access_key_id"], principal_arn=row["principal_arn"],
                     sealed_secret=bytes(row["sealed_secret"]), master_key_id=row["master_key_id"],
                     created=row["created"], account_actions=None if actions is None else tuple(json.loads(actions)))
