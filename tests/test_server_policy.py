"""Key-policy evaluation and grant constraints on their own (no server)."""

from __future__ import annotations

import json

import pytest

from encfs.server import grants, policy
from encfs.server.protocol import KMSError
from encfs.server.storage import GrantRecord

ALICE = "arn:aws:iam::111122223333:user/alice"
KEY = "arn:aws:kms:us-east-1:111122223333:key/k"


def req(action="kms:Decrypt", context=None, principal=ALICE, **extra):
    return policy.Request(principal=principal, account="111122223333", action=action, resource=KEY,
                          context=context, extra={k.lower(): v for k, v in extra.items()})


def stmt(effect="Allow", **kw):
    return {"Effect": effect, "Principal": {"AWS": ALICE}, "Action": "kms:*", "Resource": "*", **kw}


def decide(*statements, **kw):
    return policy.evaluate({"Statement": list(statements)}, req(**kw))


def test_default_deny_and_principal_action_resource_matching():
    assert not decide().allowed
    assert decide(stmt()).allowed
    assert not decide(stmt(Principal={"AWS": "arn:aws:iam::111122223333:user/bob"})).allowed
    assert decide(stmt(Principal={"AWS": "arn:aws:iam::111122223333:user/*"})).allowed
    assert decide(stmt(Principal="*")).allowed
    assert not decide(stmt(Principal={"AWS": "arn:aws:iam::111122223333:root"})).allowed  # root is not everyone
    assert decide(stmt(Action="KMS:decrypt")).allowed  # actions are case-insensitive
    assert not decide(stmt(Action="kms:Encrypt")).allowed
    assert decide(stmt(Action=["kms:Encrypt", "kms:Dec*"])).allowed
    assert not decide(stmt(Resource="arn:aws:kms:us-east-1:111122223333:key/other")).allowed
    assert not decide({"Effect": "Allow", "NotAction": "kms:Decrypt", "Principal": "*", "Resource": "*"}).allowed
    assert not decide(stmt(), {"Effect": "Deny", "NotPrincipal": {"AWS": "arn:x"}, "Action": "*",
                               "Resource": "*"}).allowed


def test_encryption_context_conditions():
    cond = {"StringEquals": {"kms:EncryptionContext:dataset": "A"}}
    assert decide(stmt(Condition=cond), context={"dataset": "A"}).allowed
    assert not decide(stmt(Condition=cond), context={"dataset": "B"}).allowed
    assert not decide(stmt(Condition=cond), context={}).allowed
    assert not decide(stmt(Condition=cond), context=None).allowed
    # condition key names are case-insensitive, values are not
    assert decide(stmt(Condition={"StringEquals": {"KMS:ENCRYPTIONCONTEXT:DATASET": "A"}}),
                  context={"dataset": "A"}).allowed
    assert decide(stmt(Condition={"StringEqualsIgnoreCase": {"kms:EncryptionContext:dataset": "a"}}),
                  context={"dataset": "A"}).allowed
    assert decide(stmt(Condition={"StringLike": {"kms:EncryptionContext:path": "s3://lake/a/*"}}),
                  context={"path": "s3://lake/a/x.parquet"}).allowed
    # IfExists passes when the key is absent, Null tests presence
    assert decide(stmt(Condition={"StringEqualsIfExists": {"kms:EncryptionContext:dataset": "A"}}), context={}).allowed
    null = {"Null": {"kms:EncryptionContextKeys": "false"}}
    assert not decide(stmt(Condition=null), context={}).allowed
    assert decide(stmt(Condition=null), context={"a": "1"}).allowed


def test_context_key_sets():
    all_of = {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["a", "b"]}}
    any_of = {"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": ["a"]}}
    assert decide(stmt(Condition=all_of), context={"a": "1"}).allowed
    assert not decide(stmt(Condition=all_of), context={"a": "1", "c": "2"}).allowed
    assert decide(stmt(Condition=all_of), context={}).allowed  # vacuous, as AWS: pair with Null
    assert decide(stmt(Condition=any_of), context={"a": "1", "z": "2"}).allowed
    assert not decide(stmt(Condition=any_of), context={}).allowed


def test_deny_wins_and_case_variants_cannot_evade_it():
    deny = stmt("Deny", Condition={"StringEquals": {"kms:EncryptionContext:class": "secret"}})
    assert not decide(stmt(), deny, context={"class": "secret"}).allowed
    assert decide(stmt(), deny, context={"class": "public"}).allowed
    # two keys differing only in case: the Deny still applies, an Allow needs both to match
    assert not decide(stmt(), deny, context={"class": "public", "Class": "secret"}).allowed
    allow_a = stmt(Condition={"StringEquals": {"kms:EncryptionContext:dataset": "A"}})
    assert not decide(allow_a, context={"dataset": "A", "Dataset": "B"}).allowed


def test_not_operators_and_other_keys():
    assert decide(stmt(Condition={"StringNotEquals": {"kms:EncryptionContext:dataset": "B"}}),
                  context={"dataset": "A"}).allowed
    assert decide(stmt(Condition={"StringEquals": {"kms:CallerAccount": "111122223333"}})).allowed
    assert decide(stmt(Condition={"StringLike": {"aws:PrincipalArn": "*:user/ali*"}})).allowed
    cg = stmt(Condition={"ForAllValues:StringEquals": {"kms:GrantOperations": ["Decrypt", "Encrypt"]}})
    assert policy.evaluate({"Statement": [cg]}, req("kms:CreateGrant", **{"kms:GrantOperations": ["Decrypt"]})).allowed
    assert not policy.evaluate({"Statement": [cg]},
                               req("kms:CreateGrant", **{"kms:GrantOperations": ["ReEncryptFrom"]})).allowed


@pytest.mark.parametrize("doc", [
    "not json",
    {"Statement": [{"Effect": "Allow", "Principal": "*"}]},
    {"Statement": [{"Effect": "Allow", "Action": "kms:*"}]},
    {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*",
                    "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01"}}}]},
    {"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "kms:*",
                    "Condition": {"ForAnyValue:StringEquals": {"kms:EncryptionContext:a": "b"}}}]},
])
def test_malformed_policies_are_refused(doc):
    with pytest.raises(KMSError) as exc:
        policy.check_policy(doc if isinstance(doc, str) else json.dumps(doc))
    assert exc.value.code == "MalformedPolicyDocumentException"


def _grant(ops, constraints=None):
    return GrantRecord("g", "k", ALICE, ops, 0.0, "acct", "creator", constraints=constraints or {})


def test_grant_constraints():
    eq = _grant(["Decrypt", "DescribeKey"], {grants.EQUALS: {"a": "1"}})
    assert grants.allows(eq, "Decrypt", {"a": "1"})
    assert not grants.allows(eq, "Decrypt", {"a": "1", "b": "2"})
    assert not grants.allows(eq, "Encrypt", {"a": "1"})
    assert grants.allows(eq, "DescribeKey", None)  # constraints ignored for DescribeKey
    sub = _grant(["Decrypt"], {grants.SUBSET: {"a": "1"}})
    assert grants.allows(sub, "Decrypt", {"a": "1", "b": "2"})
    assert not grants.allows(sub, "Decrypt", {"b": "2"})
    with pytest.raises(KMSError):
        grants.check_new(["Decrypt"], {grants.EQUALS: {str(i): "x" for i in range(9)}})
    with pytest.raises(KMSError):
        grants.check_new(["EnableKey"], {grants.EQUALS: {"a": "1"}})


def test_grants_created_by_grants_are_at_least_as_strict():
    parent = _grant(["Decrypt", "CreateGrant"], {grants.SUBSET: {"a": "1"}})
    assert grants.at_least_as_strict(parent, ["Decrypt"], {grants.SUBSET: {"a": "1", "b": "2"}})
    assert grants.at_least_as_strict(parent, ["Decrypt"], {grants.EQUALS: {"a": "1"}})
    assert not grants.at_least_as_strict(parent, ["Decrypt"], {})
    assert not grants.at_least_as_strict(parent, ["Encrypt"], {grants.SUBSET: {"a": "1"}})
    eq_parent = _grant(["Decrypt", "CreateGrant"], {grants.EQUALS: {"a": "1"}})
    assert not grants.at_least_as_strict(eq_parent, ["Decrypt"], {grants.SUBSET: {"a": "1"}})


def test_grant_tokens_name_their_grant():
    g = _grant(["Decrypt"])
    assert grants.token_grant(grants.make_token(g)) == ("g", "k")
    with pytest.raises(KMSError) as exc:
        grants.token_grant("garbage!")
    assert exc.value.code == "InvalidGrantTokenException"
