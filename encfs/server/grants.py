"""Grants: allow-only permissions on one key for one grantee.

A grant allows its ``Operations`` when its constraints hold:
``EncryptionContextEquals`` needs the request's encryption context to equal
it exactly, ``EncryptionContextSubset`` needs each of its pairs in the
request's context.  Constraints are ignored for DescribeKey and RetireGrant
(which carry no context).  A grant that allows CreateGrant may only create
grants at least as strict as itself.  Grant tokens name a grant; they are
not secrets.  This server's storage is read on every request, so a new grant
is usable at once and a token adds nothing but is validated (docs/SERVER.md).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping

from .protocol import KMSError, clean_text, validation
from .storage import GrantRecord

EQUALS = "EncryptionContextEquals"
SUBSET = "EncryptionContextSubset"
#: Operations whose requests carry an encryption context.
CONTEXT_OPERATIONS = {"Encrypt", "Decrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
                      "ReEncryptTo", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext"}
MAX_CONSTRAINT_PAIRS = 8
MAX_GRANT_TOKENS = 10


def allows(grant: GrantRecord, operation: str, context: Mapping[str, str] | None) -> bool:
    if operation not in grant.operations:
        return False
    if operation in ("DescribeKey", "RetireGrant") or not grant.constraints:
        return True
    if operation == "CreateGrant":
        return True  # checked against the new grant by at_least_as_strict
    ctx = dict(context or {})
    if EQUALS in grant.constraints:
        return ctx == grant.constraints[EQUALS]
    if SUBSET in grant.constraints:
        return all(ctx.get(k) == v for k, v in grant.constraints[SUBSET].items())
    return False


def check_new(operations: list[str], constraints: Mapping[str, Mapping[str, str]] | None) -> dict[str, dict[str, str]]:
    if not operations:
        raise validation("Operations must name at least one operation")
    out: dict[str, dict[str, str]] = {}
    for name in (EQUALS, SUBSET):
        pairs = (constraints or {}).get(name)
        if pairs is not None:
            if len(pairs) > MAX_CONSTRAINT_PAIRS:
                raise validation(f"{name} holds at most {MAX_CONSTRAINT_PAIRS} pairs")
            out[name] = dict(pairs)
    if len(out) > 1:
        raise validation(f"use either {EQUALS} or {SUBSET}, not both")
    if out and not set(operations) <= CONTEXT_OPERATIONS | {"CreateGrant", "RetireGrant", "DescribeKey"}:
        raise validation("grant constraints are only valid with cryptographic operations")
    return out


def at_least_as_strict(parent: GrantRecord, operations: list[str], constraints: Mapping[str, Mapping[str, str]]) -> bool:
    """Whether a grant created through ``parent`` gives nothing ``parent`` does not."""
    if not set(operations) <= set(parent.operations):
        return False
    p = parent.constraints
    if not p:
        return True
    if EQUALS in p:
        return constraints.get(EQUALS) == p[EQUALS]
    need = p[SUBSET]
    have = constraints.get(EQUALS) or constraints.get(SUBSET)
    return have is not None and all(have.get(k) == v for k, v in need.items())


def new_grant_id() -> str:
    return os.urandom(32).hex()


def make_token(grant: GrantRecord) -> str:
    raw = json.dumps({"g": grant.grant_id, "k": grant.key_id, "n": os.urandom(8).hex()}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def token_grant(token: str) -> tuple[str, str]:
    """(grant id, key id) named by a grant token (InvalidGrantTokenException)."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        grant_id, key_id = str(raw["g"]), str(raw["k"])
        if not (clean_text(grant_id) and clean_text(key_id)):  # (reaches storage and the audit record)
            raise ValueError
        return grant_id, key_id
    except (ValueError, KeyError, TypeError, RecursionError):
        raise KMSError("InvalidGrantTokenException", "The grant token is not valid.") from None


def check_tokens(tokens: list[str] | None) -> None:
    if tokens is None:
        return
    if len(tokens) > MAX_GRANT_TOKENS:
        raise validation(f"at most {MAX_GRANT_TOKENS} grant tokens")
    for t in tokens:
        token_grant(t)
