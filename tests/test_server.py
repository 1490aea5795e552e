"""The key server driven by boto3 over HTTP on 127.0.0.1: every operation,
least privilege (each operation refused without a policy statement or a
grant), key policies with encryption-context conditions, grants, key states,
rotation, deletion, and one audit record per request."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

pytest.importorskip("aiohttp")
boto3 = pytest.importorskip("boto3")
from _kms_server import ACCOUNT, arn, audit_lines, client, make_config, signed_post
from botocore.exceptions import ClientError

from encfs.server.app import ServerThread


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    data = tmp_path_factory.mktemp("kms")
    cfg = make_config(data)
    thread = ServerThread(cfg).start()
    thread.cfg = cfg
    thread.p = {p.name: p for p in cfg.principals}
    thread.kms = {name: client(thread.endpoint, p) for name, p in thread.p.items()}
    yield thread
    thread.stop()


def code(exc_info: Any) -> str:
    return exc_info.value.response["Error"]["Code"]


def policy(*statements: dict[str, Any]) -> str:
    admin = {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": arn("admin")}, "Action": "kms:*",
             "Resource": "*"}
    return json.dumps({"Version": "2012-10-17", "Statement": [admin, *statements]})


def new_key(srv, pol: str | None = None, **kw: Any) -> str:
    kwargs = {"Policy": pol} if pol else {}
    return srv.kms["admin"].create_key(Description="test", **kwargs, **kw)["KeyMetadata"]["KeyId"]


# -- every operation, as the admin ---------------------------------------------------------
def test_every_operation_works_for_an_authorised_principal(srv):
    kms = srv.kms["admin"]
    meta = kms.create_key(Description="d", Tags=[{"TagKey": "team", "TagValue": "lake"}])["KeyMetadata"]
    key = meta["KeyId"]
    assert meta["Arn"] == f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key}" and meta["KeyState"] == "Enabled"
    assert kms.describe_key(KeyId=meta["Arn"])["KeyMetadata"]["Description"] == "d"
    assert any(k["KeyId"] == key for k in kms.list_keys(Limit=1000)["Keys"])
    kms.create_alias(AliasName="alias/every", TargetKeyId=key)
    other = new_key(srv)
    kms.update_alias(AliasName="alias/every", TargetKeyId=other)
    assert {a["AliasName"]: a["TargetKeyId"] for a in kms.list_aliases(KeyId=other)["Aliases"]} == \
        {"alias/every": other}
    kms.update_alias(AliasName="alias/every", TargetKeyId=key)
    ctx = {"dataset": "A"}
    blob = kms.encrypt(KeyId="alias/every", Plaintext=b"hello", EncryptionContext=ctx)["CiphertextBlob"]
    out = kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)
    assert out["Plaintext"] == b"hello" and out["KeyId"] == meta["Arn"]
    re = kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext=ctx, DestinationKeyId=other,
                        DestinationEncryptionContext={"dataset": "B"})
    assert kms.decrypt(CiphertextBlob=re["CiphertextBlob"], EncryptionContext={"dataset": "B"})["Plaintext"] == b"hello"
    dk = kms.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=ctx)
    assert len(dk["Plaintext"]) == 32
    assert kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"] == dk["Plaintext"]
    wp = kms.generate_data_key_without_plaintext(KeyId=key, NumberOfBytes=16)
    assert "Plaintext" not in wp and len(kms.decrypt(CiphertextBlob=wp["CiphertextBlob"])["Plaintext"]) == 16
    assert len(kms.generate_random(NumberOfBytes=64)["Plaintext"]) == 64
    kms.disable_key(KeyId=key)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    kms.enable_key(KeyId=key)
    kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
    status = kms.get_key_rotation_status(KeyId=key)
    assert status["KeyRotationEnabled"] and status["RotationPeriodInDays"] == 90
    kms.disable_key_rotation(KeyId=key)
    assert not kms.get_key_rotation_status(KeyId=key)["KeyRotationEnabled"]
    kms.rotate_key_on_demand(KeyId=key)
    rotations = kms.list_key_rotations(KeyId=key)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"]
    kms.tag_resource(KeyId=key, Tags=[{"TagKey": "env", "TagValue": "prod"}])
    kms.untag_resource(KeyId=key, TagKeys=["team"])
    assert kms.list_resource_tags(KeyId=key)["Tags"] == [{"TagKey": "env", "TagValue": "prod"}]
    assert kms.list_key_policies(KeyId=key)["PolicyNames"] == ["default"]
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=policy())
    assert json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"])["Statement"][0]["Sid"] == "admin"
    g = kms.create_grant(KeyId=key, GranteePrincipal=arn("bob"), RetiringPrincipal=arn("admin"),
                         Operations=["Decrypt"])
    assert [x["GrantId"] for x in kms.list_grants(KeyId=key)["Grants"]] == [g["GrantId"]]
    kms.retire_grant(GrantToken=g["GrantToken"])
    g2 = kms.create_grant(KeyId=key, GranteePrincipal=arn("bob"), Operations=["Decrypt"])
    kms.revoke_grant(KeyId=key, GrantId=g2["GrantId"])
    assert kms.list_grants(KeyId=key)["Grants"] == []
    kms.delete_alias(AliasName="alias/every")
    sched = kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    assert sched["KeyState"] == "PendingDeletion"
    kms.cancel_key_deletion(KeyId=key)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"


# -- least privilege: every operation refused without a statement or a grant ---------------------
@pytest.fixture(scope="module")
def victim(srv):
    """A key only the admin may use, with an alias, a ciphertext and a grant to alice."""
    kms = srv.kms["admin"]
    key = new_key(srv, policy())
    kms.create_alias(AliasName="alias/victim", TargetKeyId=key)
    blob = kms.encrypt(KeyId=key, Plaintext=b"secret")["CiphertextBlob"]
    grant = kms.create_grant(KeyId=key, GranteePrincipal=arn("alice"), Operations=["DescribeKey"])
    mine = new_key(srv, policy({"Effect": "Allow", "Principal": {"AWS": arn("mallory")}, "Action": "kms:*",
                                "Resource": "*"}), BypassPolicyLockoutSafetyCheck=True)
    return {"key": key, "blob": blob, "grant": grant, "mine": mine}


CALLS = {
    "CreateKey": lambda v: {},
    "ListKeys": lambda v: {},
    "ListAliases": lambda v: {},
    "GenerateRandom": lambda v: {"NumberOfBytes": 8},
    "DescribeKey": lambda v: {"KeyId": v["key"]},
    "CreateAlias": lambda v: {"AliasName": "alias/mallory", "TargetKeyId": v["key"]},
    "UpdateAlias": lambda v: {"AliasName": "alias/victim", "TargetKeyId": v["mine"]},
    "DeleteAlias": lambda v: {"AliasName": "alias/victim"},
    "Encrypt": lambda v: {"KeyId": v["key"], "Plaintext": b"x"},
    "Decrypt": lambda v: {"CiphertextBlob": v["blob"]},
    "ReEncrypt": lambda v: {"CiphertextBlob": v["blob"], "DestinationKeyId": v["mine"]},
    "GenerateDataKey": lambda v: {"KeyId": v["key"], "KeySpec": "AES_256"},
    "GenerateDataKeyWithoutPlaintext": lambda v: {"KeyId": v["key"], "KeySpec": "AES_256"},
    "EnableKey": lambda v: {"KeyId": v["key"]},
    "DisableKey": lambda v: {"KeyId": v["key"]},
    "ScheduleKeyDeletion": lambda v: {"KeyId": v["key"], "PendingWindowInDays": 7},
    "CancelKeyDeletion": lambda v: {"KeyId": v["key"]},
    "EnableKeyRotation": lambda v: {"KeyId": v["key"]},
    "DisableKeyRotation": lambda v: {"KeyId": v["key"]},
    "GetKeyRotationStatus": lambda v: {"KeyId": v["key"]},
    "RotateKeyOnDemand": lambda v: {"KeyId": v["key"]},
    "ListKeyRotations": lambda v: {"KeyId": v["key"]},
    "TagResource": lambda v: {"KeyId": v["key"], "Tags": [{"TagKey": "a", "TagValue": "b"}]},
    "UntagResource": lambda v: {"KeyId": v["key"], "TagKeys": ["a"]},
    "ListResourceTags": lambda v: {"KeyId": v["key"]},
    "PutKeyPolicy": lambda v: {"KeyId": v["key"], "PolicyName": "default", "Policy": policy(),
                               "BypassPolicyLockoutSafetyCheck": True},
    "GetKeyPolicy": lambda v: {"KeyId": v["key"], "PolicyName": "default"},
    "ListKeyPolicies": lambda v: {"KeyId": v["key"]},
    "CreateGrant": lambda v: {"KeyId": v["key"], "GranteePrincipal": arn("mallory"), "Operations": ["Decrypt"]},
    "ListGrants": lambda v: {"KeyId": v["key"]},
    "RetireGrant": lambda v: {"GrantToken": v["grant"]["GrantToken"]},
    "RevokeGrant": lambda v: {"KeyId": v["key"], "GrantId": v["grant"]["GrantId"]},
}


def test_calls_cover_every_operation():
    from encfs.server.service import OPERATIONS

    assert set(CALLS) == set(OPERATIONS)


def _snake(name: str) -> str:
    import re

    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


@pytest.mark.parametrize("operation", sorted(CALLS))
def test_a_principal_without_statement_or_grant_is_refused(srv, victim, operation):
    before = srv.kms["admin"].describe_key(KeyId=victim["key"])["KeyMetadata"]
    with pytest.raises(ClientError) as exc:
        getattr(srv.kms["mallory"], _snake(operation))(**CALLS[operation](victim))
    assert code(exc) == "AccessDeniedException", exc.value.response["Error"]
    assert arn("mallory") in exc.value.response["Error"]["Message"]
    after = srv.kms["admin"].describe_key(KeyId=victim["key"])["KeyMetadata"]
    assert after == before  # nothing changed
    assert srv.kms["admin"].list_aliases(KeyId=victim["key"])["Aliases"][0]["AliasName"] == "alias/victim"
    assert len(srv.kms["admin"].list_grants(KeyId=victim["key"])["Grants"]) == 1


# -- policies ------------------------------------------------------------------------------
def test_two_principals_one_denied(srv):
    key = new_key(srv, policy({"Effect": "Allow", "Principal": {"AWS": arn("alice")},
                               "Action": ["kms:GenerateDataKey*", "kms:Decrypt"], "Resource": "*"}))
    dk = srv.kms["alice"].generate_data_key(KeyId=key, KeySpec="AES_256")
    assert srv.kms["alice"].decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    for call in (lambda k: k.generate_data_key(KeyId=key, KeySpec="AES_256"),
                 lambda k: k.decrypt(CiphertextBlob=dk["CiphertextBlob"])):
        with pytest.raises(ClientError) as exc:
            call(srv.kms["bob"])
        assert code(exc) == "AccessDeniedException"
    with pytest.raises(ClientError) as exc:
        srv.kms["alice"].encrypt(KeyId=key, Plaintext=b"x")  # not in her statement
    assert code(exc) == "AccessDeniedException"


def test_policy_allows_only_dataset_a(srv):
    key = new_key(srv, policy({"Effect": "Allow", "Principal": {"AWS": arn("alice")},
                               "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": "*",
                               "Condition": {"StringEquals": {"kms:EncryptionContext:dataset": "A"}}}))
    alice = srv.kms["alice"]
    dk = alice.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext={"dataset": "A", "part": "1"})
    alice.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"dataset": "A", "part": "1"})
    for ctx in ({"dataset": "B"}, {}, {"dataset": "a"}, {"other": "A"}):
        with pytest.raises(ClientError) as exc:
            alice.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=ctx)
        assert code(exc) == "AccessDeniedException", ctx
    # Data encrypted (by the admin) under dataset B stays closed to her.
    blob = srv.kms["admin"].encrypt(KeyId=key, Plaintext=b"b", EncryptionContext={"dataset": "B"})["CiphertextBlob"]
    with pytest.raises(ClientError) as exc:
        alice.decrypt(CiphertextBlob=blob, EncryptionContext={"dataset": "B"})
    assert code(exc) == "AccessDeniedException"


def test_string_like_and_context_key_sets(srv):
    key = new_key(srv, policy(
        {"Effect": "Allow", "Principal": {"AWS": arn("alice")}, "Action": "kms:Encrypt", "Resource": "*",
         "Condition": {"StringLike": {"kms:EncryptionContext:path": "lake/sales/*"},
                       "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["path", "part"]}}},
        {"Effect": "Allow", "Principal": {"AWS": arn("bob")}, "Action": "kms:Encrypt", "Resource": "*",
         "Condition": {"ForAnyValue:StringEquals": {"kms:EncryptionContextKeys": "tenant"}}}))
    alice, bob = srv.kms["alice"], srv.kms["bob"]
    alice.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"path": "lake/sales/2026", "part": "1"})
    for ctx in ({"path": "lake/hr/x"}, {"path": "lake/sales/2026", "extra": "1"}):
        with pytest.raises(ClientError):
            alice.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=ctx)
    bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"tenant": "t1", "x": "y"})
    with pytest.raises(ClientError):
        bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={})


def test_explicit_deny_beats_allow_and_grants(srv):
    key = new_key(srv, policy(
        {"Effect": "Allow", "Principal": {"AWS": arn("alice")}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringEquals": {"kms:EncryptionContext:classification": "secret"}}}))
    alice = srv.kms["alice"]
    srv.kms["admin"].create_grant(KeyId=key, GranteePrincipal=arn("alice"), Operations=["Decrypt"])
    blob = alice.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"classification": "secret"})["CiphertextBlob"]
    with pytest.raises(ClientError) as exc:
        alice.decrypt(CiphertextBlob=blob, EncryptionContext={"classification": "secret"})
    assert code(exc) == "AccessDeniedException" and "explicit deny" in exc.value.response["Error"]["Message"]
    with pytest.raises(ClientError):  # the admin too: Deny wins over every Allow
        srv.kms["admin"].decrypt(CiphertextBlob=blob, EncryptionContext={"classification": "secret"})


def test_malformed_and_lockout_policies_are_refused(srv):
    kms = srv.kms["admin"]
    for bad in ("{", json.dumps({"Statement": [{"Effect": "Maybe", "Principal": "*", "Action": "kms:*"}]}),
                json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*",
                                           "Condition": {"ForAllValues:StringEquals":
                                                         {"kms:EncryptionContext:a": "b"}}}]})):
        with pytest.raises(ClientError) as exc:
            kms.create_key(Policy=bad)
        assert code(exc) == "MalformedPolicyDocumentException"
    lockout = json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": arn("alice")}, "Action": "kms:*",
                                         "Resource": "*"}]})
    with pytest.raises(ClientError) as exc:
        kms.create_key(Policy=lockout)
    assert code(exc) == "MalformedPolicyDocumentException"


def test_changed_policy_applies_to_the_next_request(srv):
    allow = {"Effect": "Allow", "Principal": {"AWS": arn("alice")}, "Action": "kms:Encrypt", "Resource": "*"}
    key = new_key(srv, policy(allow))
    srv.kms["alice"].encrypt(KeyId=key, Plaintext=b"x")
    srv.kms["admin"].put_key_policy(KeyId=key, PolicyName="default", Policy=policy())
    with pytest.raises(ClientError):
        srv.kms["alice"].encrypt(KeyId=key, Plaintext=b"x")


# -- grants ---------------------------------------------------------------------------------
def test_grants_with_constraints_then_revoked(srv):
    key = new_key(srv, policy())
    admin, bob = srv.kms["admin"], srv.kms["bob"]
    eq = admin.create_grant(KeyId=key, GranteePrincipal=arn("bob"), Operations=["GenerateDataKey", "Decrypt"],
                            Constraints={"EncryptionContextEquals": {"dataset": "A"}})
    dk = bob.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext={"dataset": "A"},
                               GrantTokens=[eq["GrantToken"]])
    bob.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"dataset": "A"})
    for ctx in ({"dataset": "B"}, {"dataset": "A", "more": "1"}, {}):
        with pytest.raises(ClientError) as exc:
            bob.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=ctx)
        assert code(exc) == "AccessDeniedException", ctx
    with pytest.raises(ClientError):
        bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"dataset": "A"})  # not a granted operation
    sub = admin.create_grant(KeyId=key, GranteePrincipal=arn("alice"), Operations=["Encrypt"],
                             Constraints={"EncryptionContextSubset": {"dataset": "A"}})
    srv.kms["alice"].encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"dataset": "A", "more": "1"})
    with pytest.raises(ClientError):
        srv.kms["alice"].encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"more": "1"})
    assert [g["GrantId"] for g in admin.list_grants(KeyId=key, GranteePrincipal=arn("bob"))["Grants"]] == \
        [eq["GrantId"]]
    assert [g["GrantId"] for g in admin.list_grants(KeyId=key, Limit=1, GrantId=sub["GrantId"])["Grants"]] == \
        [sub["GrantId"]]
    admin.revoke_grant(KeyId=key, GrantId=eq["GrantId"])
    with pytest.raises(ClientError) as exc:
        bob.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext={"dataset": "A"})
    assert code(exc) == "AccessDeniedException"
    admin.revoke_grant(KeyId=key, GrantId=sub["GrantId"])
    with pytest.raises(ClientError):
        srv.kms["alice"].encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"dataset": "A"})


def test_grantee_retires_and_grants_only_stricter(srv):
    key = new_key(srv, policy())
    g = srv.kms["admin"].create_grant(KeyId=key, GranteePrincipal=arn("bob"),
                                      Operations=["Decrypt", "CreateGrant", "RetireGrant"],
                                      Constraints={"EncryptionContextSubset": {"dataset": "A"}})
    bob = srv.kms["bob"]
    with pytest.raises(ClientError):  # wider than his own grant
        bob.create_grant(KeyId=key, GranteePrincipal=arn("alice"), Operations=["Decrypt"])
    with pytest.raises(ClientError):
        bob.create_grant(KeyId=key, GranteePrincipal=arn("alice"), Operations=["Encrypt"],
                         Constraints={"EncryptionContextSubset": {"dataset": "A"}})
    child = bob.create_grant(KeyId=key, GranteePrincipal=arn("alice"), Operations=["Decrypt"],
                             Constraints={"EncryptionContextEquals": {"dataset": "A", "part": "1"}})
    assert child["GrantId"]
    bob.retire_grant(GrantToken=g["GrantToken"])
    ids = [x["GrantId"] for x in srv.kms["admin"].list_grants(KeyId=key)["Grants"]]
    assert ids == [child["GrantId"]]
    with pytest.raises(ClientError) as exc:
        bob.decrypt(CiphertextBlob=b"x" * 40, GrantTokens=["not a token"])
    assert code(exc) == "InvalidGrantTokenException"


# -- key states, rotation, deletion -------------------------------------------------------------
def test_key_states_and_ciphertext_errors(srv):
    kms = srv.kms["admin"]
    key, other = new_key(srv), new_key(srv)
    blob = kms.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"a": "1"})["CiphertextBlob"]
    with pytest.raises(ClientError) as exc:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "2"})
    assert code(exc) == "InvalidCiphertextException"
    damaged = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ClientError) as exc:
        kms.decrypt(CiphertextBlob=damaged, EncryptionContext={"a": "1"})
    assert code(exc) == "InvalidCiphertextException"
    with pytest.raises(ClientError) as exc:
        kms.decrypt(CiphertextBlob=b"\0" * 64)
    assert code(exc) == "InvalidCiphertextException"
    with pytest.raises(ClientError) as exc:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "1"}, KeyId=other)
    assert code(exc) == "IncorrectKeyException"
    kms.disable_key(KeyId=key)
    for call in (lambda: kms.encrypt(KeyId=key, Plaintext=b"x"),
                 lambda: kms.generate_data_key(KeyId=key, KeySpec="AES_256"),
                 lambda: kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "1"})):
        with pytest.raises(ClientError) as exc:
            call()
        assert code(exc) == "DisabledException"
    kms.enable_key(KeyId=key)
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    with pytest.raises(ClientError) as exc:
        kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "1"})
    assert code(exc) == "KMSInvalidStateException"
    with pytest.raises(ClientError) as exc:
        kms.enable_key(KeyId=key)
    assert code(exc) == "KMSInvalidStateException"
    kms.cancel_key_deletion(KeyId=key)
    kms.enable_key(KeyId=key)
    assert kms.decrypt(CiphertextBlob=blob, EncryptionContext={"a": "1"})["Plaintext"] == b"x"
    with pytest.raises(ClientError) as exc:
        kms.describe_key(KeyId="alias/nope")
    assert code(exc) == "NotFoundException"
    with pytest.raises(ClientError) as exc:
        kms.generate_data_key(KeyId=key)  # neither NumberOfBytes nor KeySpec
    assert code(exc) == "ValidationException"


def test_rotation_keeps_old_versions_and_automatic_rotation(srv):
    kms = srv.kms["admin"]
    key = new_key(srv)
    old = kms.encrypt(KeyId=key, Plaintext=b"old")["CiphertextBlob"]
    kms.rotate_key_on_demand(KeyId=key)
    new = kms.encrypt(KeyId=key, Plaintext=b"new")["CiphertextBlob"]
    assert old != new
    assert kms.decrypt(CiphertextBlob=old)["Plaintext"] == b"old"
    assert kms.decrypt(CiphertextBlob=new)["Plaintext"] == b"new"
    kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
    done = srv.call(srv.server.sweep(time.time() + 91 * 86400))
    assert ("RotateKey", f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key}") in done
    assert [r["RotationType"] for r in kms.list_key_rotations(KeyId=key)["Rotations"]] == ["ON_DEMAND", "AUTOMATIC"]
    assert kms.decrypt(CiphertextBlob=old)["Plaintext"] == b"old"


def test_deletion_after_the_waiting_period_destroys_every_version(srv):
    kms = srv.kms["admin"]
    key = new_key(srv)
    kms.create_alias(AliasName="alias/doomed", TargetKeyId=key)
    kms.rotate_key_on_demand(KeyId=key)
    blob = kms.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    assert srv.call(srv.server.sweep(time.time() + 6 * 86400)) == []  # not yet
    srv.call(srv.server.sweep(time.time() + 7 * 86400 + 60))
    with pytest.raises(ClientError) as exc:
        kms.describe_key(KeyId=key)
    assert code(exc) == "NotFoundException"
    with pytest.raises(ClientError) as exc:
        kms.decrypt(CiphertextBlob=blob)
    assert code(exc) == "NotFoundException"
    assert all(a["AliasName"] != "alias/doomed" for a in kms.list_aliases()["Aliases"])

    async def versions():
        async with srv.server.storage.transaction() as tx:
            return await tx.list_versions(key)
    assert srv.call(versions()) == []


# -- authentication ----------------------------------------------------------------------------
def test_signature_checks(srv):
    p = srv.p["admin"]
    ok, body = signed_post(srv.endpoint, "ListKeys", {}, p.access_key_id, p.secret)
    assert ok == 200 and "Keys" in body

    def expect(status_body, wanted):
        status, body = status_body
        assert status == 400 and body["__type"] == wanted, body

    def flip_body(h, b):
        return h, b.replace(b"{}", b'{"Limit": 1}') if b == b"{}" else b + b" "

    def flip_target(h, b):
        return {**h, "X-Amz-Target": "TrentService.CreateKey"}, b

    expect(signed_post(srv.endpoint, "ListKeys", {}, p.access_key_id, p.secret, tamper=flip_body),
           "InvalidSignatureException")
    expect(signed_post(srv.endpoint, "ListKeys", {}, p.access_key_id, p.secret, tamper=flip_target),
           "InvalidSignatureException")
    expect(signed_post(srv.endpoint, "ListKeys", {}, p.access_key_id, "wrong" * 8), "InvalidSignatureException")
    expect(signed_post(srv.endpoint, "ListKeys", {}, "AKIANOBODY0000000000", p.secret),
           "UnrecognizedClientException")
    now = datetime.now(timezone.utc)
    expect(signed_post(srv.endpoint, "ListKeys", {}, p.access_key_id, p.secret, when=now - timedelta(minutes=6)),
           "InvalidSignatureException")
    expect(signed_post(srv.endpoint, "ListKeys", {}, p.access_key_id, p.secret, when=now + timedelta(minutes=6)),
           "InvalidSignatureException")
    assert signed_post(srv.endpoint, "ListKeys", {}, p.access_key_id, p.secret,
                       when=now - timedelta(minutes=4))[0] == 200
    expect(signed_post(srv.endpoint, "ListKeys", {}, p.access_key_id, p.secret, region="eu-west-1"),
           "InvalidSignatureException")
    expect(signed_post(srv.endpoint, "ListKeys", {}, p.access_key_id, p.secret, service="s3"),
           "InvalidSignatureException")

    def no_auth(h, b):
        return {k: v for k, v in h.items() if k != "Authorization"}, b
    expect(signed_post(srv.endpoint, "ListKeys", {}, p.access_key_id, p.secret, tamper=no_auth),
           "MissingAuthenticationTokenException")

    def bad_sha(h, b):
        return {**h, "X-Amz-Content-SHA256": "0" * 64}, b
    expect(signed_post(srv.endpoint, "ListKeys", {}, p.access_key_id, p.secret, tamper=bad_sha),
           "InvalidSignatureException")


# -- audit, health, limits -----------------------------------------------------------------------
def test_one_audit_record_per_call_and_the_chain_verifies(srv):
    from encfs.audit import AuditLog

    before = len(audit_lines(srv.cfg))
    kms = srv.kms["admin"]
    key = new_key(srv)
    kms.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext={"dataset": "A"})
    with pytest.raises(ClientError):
        srv.kms["mallory"].describe_key(KeyId=key)
    with pytest.raises(ClientError):
        kms.decrypt(CiphertextBlob=b"\0" * 64)
    p = srv.p["admin"]
    signed_post(srv.endpoint, "ListKeys", {}, p.access_key_id, "wrong" * 8)
    records = audit_lines(srv.cfg)[before:]
    assert [r["action"] for r in records] == ["CreateKey", "GenerateDataKey", "DescribeKey", "Decrypt", "ListKeys"]
    assert [r["outcome"] for r in records] == ["success", "success", "denied", "failure", "denied"]
    gen = records[1]
    assert gen["principal"] == arn("admin") and gen["key"].endswith(key) and gen["context_keys"] == ["dataset"]
    assert gen["request_id"] and gen["version"] == "1"
    assert records[2]["principal"] == arn("mallory") and records[2]["error"] == "AccessDeniedException"
    text = srv.cfg.audit_path.read_text()
    assert '"A"' not in text and srv.p["admin"].secret not in text  # no context values, no secrets
    assert AuditLog(srv.cfg.audit_path).verify().ok


def test_health_size_limit_and_throttling(srv):
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(srv.endpoint + "/health", timeout=10) as resp:
        assert json.loads(resp.read())["status"] == "ok"
    p = srv.p["admin"]
    status, body = signed_post(srv.endpoint, "Encrypt", {"KeyId": "x", "Plaintext": base64.b64encode(
        b"x" * 70000).decode()}, p.access_key_id, p.secret)
    assert status == 413 and body["__type"] == "ValidationException"
    srv.server.inflight += 10_000
    try:
        with pytest.raises(ClientError) as exc:
            srv.kms["admin"].list_keys()
        assert code(exc) == "ThrottlingException"
    finally:
        srv.server.inflight -= 10_000
    srv.kms["admin"].list_keys()
