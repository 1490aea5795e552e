"""Key-policy evaluation: the subset of the IAM policy language KMS key
policies use.

Default deny.  A statement applies when its Principal, Action and Resource
match and all of its conditions hold; an applicable ``Deny`` anywhere wins,
otherwise one applicable ``Allow`` (from the key policy or a grant, see
grants.py) is needed.

Supported: ``Principal`` (``"*"``, ``{"AWS": arn | [arns]}``, wildcards),
``NotPrincipal``, ``Action``/``NotAction`` (``kms:*``, ``kms:Generate*``),
``Resource``/``NotResource``; condition operators StringEquals,
StringNotEquals, StringEqualsIgnoreCase, StringNotEqualsIgnoreCase,
StringLike, StringNotLike, Bool and Null, each with ``IfExists`` and the
``ForAllValues:``/``ForAnyValue:`` set qualifiers.  Condition keys are
case-insensitive; the request supplies ``kms:EncryptionContext:<key>``
(single-valued), ``kms:EncryptionContextKeys`` (multi-valued),
``kms:CallerAccount``, ``aws:PrincipalArn``, ``kms:GrantOperations``,
``kms:GranteePrincipal``, ``kms:RetiringPrincipal`` and ``kms:KeyOrigin``.
An unknown operator makes the statement not apply (an Allow grants nothing);
PutKeyPolicy refuses a policy that uses one, so a Deny cannot be silently
disabled.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .protocol import KMSError

MAX_POLICY_BYTES = 32768
_OPERATORS = {
    "stringequals", "stringnotequals", "stringequalsignorecase", "stringnotequalsignorecase", "stringlike",
    "stringnotlike", "bool", "null",
}
#: Multi-valued condition keys (lower case).
_MULTI = {"kms:encryptioncontextkeys", "kms:grantoperations"}


@dataclass
class Request:
    """What a policy is evaluated against."""

    principal: str  # the caller's ARN
    account: str
    action: str  # "kms:Decrypt"
    resource: str  # the key ARN ("*" for account-level actions)
    context: Mapping[str, str] | None = None  # the encryption context, None when the operation has none
    extra: dict[str, list[str]] = field(default_factory=dict)  # further condition keys (lower case)

    def values(self, key: str) -> list[str] | None:
        """The request's values for condition key ``key`` (None: absent)."""
        k = key.lower()
        if k.startswith("kms:encryptioncontext:"):
            if self.context is None:
                return None
            wanted = k[len("kms:encryptioncontext:"):]
            hits = [v for ck, v in self.context.items() if ck.lower() == wanted]
            return hits or None
        if k == "kms:encryptioncontextkeys":
            return None if self.context is None else list(self.context)
        if k == "kms:calleraccount":
            return [self.account]
        if k == "aws:principalarn":
            return [self.principal]
        return self.extra.get(k)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str, ignore_case: bool) -> tuple[tuple[re.Pattern[str], ...], int]:
    """The pattern's pieces between its ``*``s, each a fixed-length regex
    (``?`` is any one character), and the length of the last piece.  No
    piece has a quantifier, so matching never backtracks (one ``.*`` per
    ``*`` in a single regex is polynomial in the value's length: a
    StringLike with three ``*`` against a 60 kB encryption-context value
    held the event loop for hours)."""
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    pieces = pattern.split("*")
    return (tuple(re.compile("".join("." if c == "?" else re.escape(c) for c in piece), flags) for piece in pieces),
            len(pieces[-1]))


def _like(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """IAM wildcard match: ``*`` any run, ``?`` any one character (fnmatch
    would also read ``[...]`` as a class).  The pieces between ``*``s have
    fixed lengths, so placing each at its leftmost match is always right:
    at worst O(len(value) * len(pattern)), no backtracking."""
    pieces, last_len = _glob(pattern, ignore_case)
    if len(pieces) == 1:
        return pieces[0].fullmatch(value) is not None
    head = pieces[0].match(value)
    if head is None:
        return False
    start, end = head.end(), len(value) - last_len
    if end < start or pieces[-1].fullmatch(value, end) is None:
        return False
    for piece in pieces[1:-1]:
        found = piece.search(value, start, end)
        if found is None:
            return False
        start = found.end()
    return True


def _principal_matches(spec: Any, principal: str, account: str) -> bool:
    if spec == "*":
        return True
    if not isinstance(spec, dict):
        return False
    for p in _as_list(spec.get("AWS", [])):
        p = str(p)
        if p == "*" or _like(p, principal):
            return True
        # The account root: in AWS this delegates to IAM policies; here there
        # is no IAM, so it names the account's root principal only.
        if p in (account, f"arn:aws:iam::{account}:root") and principal == f"arn:aws:iam::{account}:root":
            return True
    return False


def _condition_holds(op: str, key: str, expected: Any, req: Request, deny: bool) -> bool:
    qualifier, _, base = op.rpartition(":")
    base_l = base.lower()
    if_exists = base_l.endswith("ifexists")
    if if_exists:
        base_l = base_l[: -len("ifexists")]
    values = req.values(key)
    wanted = [str(v) for v in _as_list(expected)]
    if base_l == "null":
        absent = values is None or len(values) == 0
        return any((w.lower() == "true") == absent for w in wanted)
    if base_l not in _OPERATORS:
        return False
    negated = "not" in base_l
    if values is None or (not values and not qualifier):
        if if_exists:
            return True
        if qualifier.lower() == "forallvalues":
            return True  # vacuously true (AWS's documented behaviour: pair it with a Null check)
        return negated and not qualifier

    def one(v: str) -> bool:
        if base_l in ("stringequals", "stringnotequals"):
            hit = any(v == w for w in wanted)
        elif base_l in ("stringequalsignorecase", "stringnotequalsignorecase"):
            hit = any(v.lower() == w.lower() for w in wanted)
        elif base_l in ("stringlike", "stringnotlike"):
            hit = any(_like(w, v) for w in wanted)
        else:  # bool
            hit = any(v.lower() == w.lower() for w in wanted)
        return not hit if negated else hit

    q = qualifier.lower()
    if q == "forallvalues":
        return all(one(v) for v in values)
    if q == "foranyvalue":
        return any(one(v) for v in values)
    # A single-valued key has one value, except when an encryption context
    # holds keys differing only in case: then an Allow needs every value to
    # match and a Deny applies if any does (neither can be evaded that way).
    return any(one(v) for v in values) if deny else all(one(v) for v in values)


def _applies(stmt: Mapping[str, Any], req: Request) -> bool:
    if "Principal" in stmt:
        if not _principal_matches(stmt["Principal"], req.principal, req.account):
            return False
    elif "NotPrincipal" in stmt:
        if _principal_matches(stmt["NotPrincipal"], req.principal, req.account):
            return False
    else:
        return False
    if "Action" in stmt:
        if not any(_like(str(a), req.action, ignore_case=True) for a in _as_list(stmt["Action"])):
            return False
    elif "NotAction" in stmt:
        if any(_like(str(a), req.action, ignore_case=True) for a in _as_list(stmt["NotAction"])):
            return False
    else:
        return False
    if "Resource" in stmt:
        if not any(_like(str(r), req.resource) for r in _as_list(stmt["Resource"])):
            return False
    elif "NotResource" in stmt and any(_like(str(r), req.resource) for r in _as_list(stmt["NotResource"])):
        return False
    for op, pairs in (stmt.get("Condition") or {}).items():
        for key, expected in pairs.items():
            if not _condition_holds(op, key, expected, req, stmt.get("Effect") == "Deny"):
                return False
    return True


@dataclass(frozen=True)
class Decision:
    allowed: bool
    denied: bool  # an explicit Deny applied


def evaluate(policy: Mapping[str, Any], req: Request) -> Decision:
    allowed = denied = False
    for stmt in _as_list(policy.get("Statement", [])):
        if isinstance(stmt, dict) and _applies(stmt, req):
            if stmt.get("Effect") == "Deny":
                denied = True
            elif stmt.get("Effect") == "Allow":
                allowed = True
    return Decision(allowed=allowed and not denied, denied=denied)


@functools.lru_cache(maxsize=1024)
def parse_cached(text: str) -> Any:
    """Parsed policy JSON, memoised by its text (bounded; the text is read
    from storage on every request, so a changed policy is a new entry)."""
    return json.loads(text)


def check_policy(text: str) -> dict[str, Any]:
    """Validate a key policy document (MalformedPolicyDocumentException)."""

    def bad(why: str) -> KMSError:
        return KMSError("MalformedPolicyDocumentException", f"The key policy is malformed: {why}")

    if len(text.encode()) > MAX_POLICY_BYTES:
        raise bad(f"larger than {MAX_POLICY_BYTES} bytes")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise bad("not valid JSON") from None
    if not isinstance(doc, dict) or "Statement" not in doc:
        raise bad("a policy is an object with a Statement")
    for stmt in _as_list(doc["Statement"]):
        if not isinstance(stmt, dict):
            raise bad("each statement is an object")
        if stmt.get("Effect") not in ("Allow", "Deny"):
            raise bad("Effect must be Allow or Deny")
        # Shapes are checked so that no statement (a Deny above all) is
        # silently inert: evaluation reads anything else as matching nothing.
        for pair in (("Principal", "NotPrincipal"), ("Action", "NotAction"), ("Resource", "NotResource")):
            if all(name in stmt for name in pair):
                raise bad(f"a statement has {pair[0]} or {pair[1]}, not both")
        if not ({"Principal", "NotPrincipal"} & stmt.keys()):
            raise bad("a statement needs a Principal")
        if not ({"Action", "NotAction"} & stmt.keys()):
            raise bad("a statement needs an Action")
        who = stmt.get("Principal", stmt.get("NotPrincipal"))
        if who != "*" and not (isinstance(who, dict) and who and all(_strings(v) for v in who.values())):
            raise bad('Principal is "*" or an object such as {"AWS": "<arn>" or ["<arn>", ...]}')
        for name in ("Action", "NotAction", "Resource", "NotResource"):
            if name in stmt and not _strings(stmt[name]):
                raise bad(f"{name} is a string or a non-empty list of strings")
        cond = stmt.get("Condition") or {}
        if not isinstance(cond, dict):
            raise bad("Condition must be an object")
        for op, pairs in cond.items():
            qualifier, _, base = op.rpartition(":")
            b = base.lower().removesuffix("ifexists")
            if b not in _OPERATORS or qualifier.lower() not in ("", "forallvalues", "foranyvalue"):
                raise bad(f"condition operator {op} is not supported by this server")
            if not isinstance(pairs, dict):
                raise bad(f"condition {op} must map keys to values")
            for key, value in pairs.items():
                if qualifier and key.lower().startswith("kms:encryptioncontext:"):
                    raise bad(f"{key} is single-valued: {qualifier} cannot be used with it")
                if not _strings(value, scalars=(str, bool, int, float)):
                    raise bad(f"the value of {key} in {op} is a string or a non-empty list of strings")
    return doc


def _strings(value: Any, scalars: tuple[type, ...] = (str,)) -> bool:
    if isinstance(value, list):
        return bool(value) and all(isinstance(v, scalars) for v in value)
    return isinstance(value, scalars)

