"""The KMS operations: resolve the key, authorise, check its state, act.

Each operation runs inside one storage transaction (``write=True`` for
those that change anything), so it sees one consistent state and its change
lands whole or not at all.  Nothing is cached between requests: the key's
state, policy and grants are read afresh every time.

Order, for every key-scoped operation: find the key (Decrypt and ReEncrypt
find it from the ciphertext blob), authorise (key policy, then grants;
explicit Deny wins), then check the key state, then act.  A caller who may
not use a key learns only AccessDeniedException.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import crypto, grants, policy
from .masterkey import MasterKey, MasterKeyError, material_aad
from .protocol import KMSError, b64, validation
from .storage import (
    DISABLED,
    ENABLED,
    PENDING_DELETION,
    AliasRecord,
    AlreadyExists,
    GrantRecord,
    KeyRecord,
    KeyVersion,
    Storage,
    Transaction,
)

DAY = 86400.0
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ALIAS = re.compile(r"^alias/[a-zA-Z0-9/_-]+$")
#: Operations that are not about one key: allowed by the principal's
#: account_actions in the config (the IAM-policy stand-in).
ACCOUNT_ACTIONS = {"CreateKey", "ListKeys", "ListAliases", "GenerateRandom"}
#: Operations that need the identity permission on the alias (as KMS needs
#: kms:<Op> on the alias ARN from an IAM policy) besides the key policy's on
#: the key: ``account_actions`` entries such as "kms:CreateAlias:alias/team-a/*".
ALIAS_ACTIONS = ("CreateAlias", "UpdateAlias", "DeleteAlias")
CRYPTO_OPERATIONS = {"Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext"}


@dataclass
class Caller:
    arn: str
    access_key_id: str
    account_actions: tuple[str, ...] = ()

    def may(self, action: str, alias: str | None = None) -> bool:
        """Whether account_actions allow ``kms:<action>``; for an alias
        operation, on the alias ``alias``.  An entry "kms:<Action>:<alias
        pattern>" allows only alias operations on matching names (case-sensitive,
        as alias names are); an entry without a pattern allows every name."""
        for entry in self.account_actions:
            pattern, names = split_account_action(entry)
            if names is not None and (alias is None or not policy._like(names, alias)):
                continue
            if policy._like(pattern, f"kms:{action}", ignore_case=True):
                return True
        return False


def split_account_action(entry: str) -> tuple[str, str | None]:
    """"kms:CreateAlias:alias/team-a/*" -> ("kms:CreateAlias", "alias/team-a/*");
    "kms:ListKeys" -> ("kms:ListKeys", None)."""
    at = entry.find(":alias/")
    return (entry, None) if at < 0 else (entry[:at], entry[at + 1:])


@dataclass
class Call:
    """One request: who, what, and what the audit record says about it."""

    operation: str
    params: dict[str, Any]
    caller: Caller
    key_arn: str | None = None
    version: int | None = None
    context_keys: list[str] = field(default_factory=list)
    grant_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _key_state_error(key: KeyRecord) -> KMSError:
    if key.state == DISABLED:
        return KMSError("DisabledException", f"{key.arn} is disabled.")
    if key.state == PENDING_DELETION:
        return KMSError("KMSInvalidStateException", f"{key.arn} is pending deletion.")
    return KMSError("KMSInvalidStateException", f"{key.arn} is {key.state}.")


def _not_found(what: str) -> KMSError:
    return KMSError("NotFoundException", f"{what} does not exist")


def _page(params: Mapping[str, Any], default: int = 100) -> tuple[str | None, int]:
    return params.get("Marker"), int(params.get("Limit") or default)


class Service:
    def __init__(self, storage: Storage, master: MasterKey, *, region: str, account: str,
                 min_deletion_days: int = 7, clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.master = master
        self.region = region
        self.account = account
        self.min_deletion_days = min_deletion_days
        self.clock = clock
        self._handlers: dict[str, Callable[[Call], Awaitable[dict[str, Any]]]] = {
            name: getattr(self, "_" + re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower())
            for name in OPERATIONS
        }

    # -- entry point --------------------------------------------------------------------
    async def handle(self, call: Call) -> dict[str, Any]:
        handler = self._handlers.get(call.operation)
        if handler is None:
            raise KMSError("UnsupportedOperationException", f"{call.operation} is not supported by this server")
        grants.check_tokens(call.params.get("GrantTokens"))
        if call.operation in ACCOUNT_ACTIONS and not call.caller.may(call.operation):
            raise self._denied(call, "*", call.operation, "no identity policy allows")
        return await handler(call)

    # -- helpers ------------------------------------------------------------------------
    def key_arn(self, key_id: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:key/{key_id}"

    def alias_arn(self, name: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:{name}"

    def _denied(self, call: Call, resource: str, action: str, why: str = "no resource-based policy allows") -> KMSError:
        return KMSError("AccessDeniedException",
                        f"User: {call.caller.arn} is not authorized to perform: kms:{action} on resource: "
                        f"{resource} because {why} the kms:{action} action")

    def _ident(self, ident: str) -> str:
        """A key id or an alias name from what a request names (an ARN too)."""
        prefix = f"arn:aws:kms:{self.region}:{self.account}:"
        if ident.startswith("arn:"):
            if not ident.startswith(prefix):
                raise _not_found(f"Key '{ident}'")
            return ident[len(prefix):].removeprefix("key/")
        return ident

    async def _resolve(self, tx: Transaction, ident: str, *, for_update: bool = False) -> KeyRecord:
        key_id = self._ident(ident)
        if key_id.startswith("alias/"):
            alias = await tx.get_alias(key_id)
            if alias is None:
                raise _not_found(f"Alias '{self.alias_arn(key_id)}'")
            key_id = alias.key_id
        key = await tx.get_key(key_id, for_update=for_update) if _UUID.match(key_id) else None
        if key is None:
            raise _not_found(f"Key '{self.key_arn(key_id)}'")
        return key

    async def _authorize(self, tx: Transaction, call: Call, key: KeyRecord, action: str,
                         context: Mapping[str, str] | None = None, extra: dict[str, list[str]] | None = None,
                         grant_check: Callable[[GrantRecord], bool] | None = None) -> None:
        req = policy.Request(principal=call.caller.arn, account=self.account, action=f"kms:{action}",
                             resource=key.arn, context=context, extra=extra or {})
        decision = policy.evaluate(policy.parse_cached(key.policy), req)
        if decision.denied:
            raise self._denied(call, key.arn, action, "an explicit deny in a resource-based policy denies")
        if decision.allowed:
            return
        for g in await tx.grants_for(key.key_id, call.caller.arn):
            if grants.allows(g, action, context) and (grant_check is None or grant_check(g)):
                call.grant_id = g.grant_id
                return
        raise self._denied(call, key.arn, action)

    async def _key_for(self, tx: Transaction, call: Call, action: str, *, ident: str | None = None,
                       context: Mapping[str, str] | None = None, for_update: bool = False,
                       states: tuple[str, ...] | None = None, material: int | bool = False) -> KeyRecord:
        """``material``: the request will then read key material (True: the
        key's current version; an int: that version), so the backend may read
        the alias, the key, that version and the caller's grants at once
        (Transaction.prefetch: one database round trip on PostgreSQL)."""
        ident = ident or call.params["KeyId"]
        if material is not False and not for_update:
            name = self._ident(ident)
            if _UUID.match(name) or name.startswith("alias/"):  # what _resolve would look up
                await tx.prefetch(name, None if material is True else int(material), call.caller.arn)
        key = await self._resolve(tx, ident, for_update=for_update)
        call.key_arn = call.key_arn or key.arn
        await self._authorize(tx, call, key, action, context)
        if states is not None and key.state not in states:
            raise _key_state_error(key)
        return key

    async def _material(self, tx: Transaction, key: KeyRecord, version: int) -> bytes:
        ver = await tx.get_version(key.key_id, version)
        if ver is None:
            raise crypto.invalid_ciphertext()
        try:
            return self.master.unwrap(ver.wrapped, material_aad(key.key_id, version))
        except MasterKeyError:
            raise KMSError("KMSInternalException", "stored key material could not be unwrapped") from None

    async def _new_version(self, tx: Transaction, key: KeyRecord, version: int, kind: str) -> None:
        wrapped = self.master.wrap(crypto.new_material(), material_aad(key.key_id, version))
        await tx.insert_version(KeyVersion(key.key_id, version, self.clock(), kind, wrapped, self.master.key_id))

    def _metadata(self, key: KeyRecord) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "AWSAccountId": self.account, "KeyId": key.key_id, "Arn": key.arn, "CreationDate": key.created,
            "Enabled": key.state == ENABLED, "Description": key.description, "KeyUsage": key.usage,
            "KeyState": key.state, "Origin": "AWS_KMS", "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": key.spec, "KeySpec": key.spec, "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
            "MultiRegion": False,
        }
        if key.deletion_date is not None:
            meta["DeletionDate"] = key.deletion_date
        return meta

    def _context(self, call: Call, name: str = "EncryptionContext") -> dict[str, str]:
        ctx = dict(call.params.get(name) or {})
        call.context_keys = sorted(set(call.context_keys) | set(ctx))
        return ctx

    @staticmethod
    def _algorithm(call: Call, name: str = "EncryptionAlgorithm") -> None:
        alg = call.params.get(name)
        if alg not in (None, "SYMMETRIC_DEFAULT"):
            raise KMSError("InvalidKeyUsageException", f"{alg} is not valid for a symmetric encryption key")

    @staticmethod
    def _dry_run(call: Call) -> None:
        if call.params.get("DryRun"):
            raise KMSError("DryRunOperationException", "The request would have succeeded, but the DryRun flag is set.")

    def _check_lockout(self, call: Call, text: str, arn: str) -> None:
        if call.params.get("BypassPolicyLockoutSafetyCheck"):
            return
        req = policy.Request(principal=call.caller.arn, account=self.account, action="kms:PutKeyPolicy", resource=arn)
        if not policy.evaluate(json.loads(text), req).allowed:
            raise KMSError("MalformedPolicyDocumentException",
                           "The new key policy will not allow you to update the key policy in the future.")

    def _default_policy(self, creator: str) -> str:
        return json.dumps({
            "Version": "2012-10-17", "Id": "key-default-1",
            "Statement": [{"Sid": "Enable the creating principal and the account root", "Effect": "Allow",
                           "Principal": {"AWS": sorted({creator, f"arn:aws:iam::{self.account}:root"})},
                           "Action": "kms:*", "Resource": "*"}],
        })

    # -- keys -----------------------------------------------------------------------------
    async def _create_key(self, call: Call) -> dict[str, Any]:
        p = call.params
        if p.get("KeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT" or \
                p.get("CustomerMasterKeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT":
            raise KMSError("UnsupportedOperationException", "only SYMMETRIC_DEFAULT keys are supported")
        if p.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT":
            raise KMSError("UnsupportedOperationException", "only ENCRYPT_DECRYPT keys are supported")
        if p.get("Origin", "AWS_KMS") != "AWS_KMS" or p.get("MultiRegion") or p.get("CustomKeyStoreId"):
            raise KMSError("UnsupportedOperationException", "only AWS_KMS-origin single-region keys are supported")
        key_id = str(uuid.uuid4())
        arn = self.key_arn(key_id)
        text = p.get("Policy") or self._default_policy(call.caller.arn)
        policy.check_policy(text)
        self._check_lockout(call, text, arn)
        tags = _tags(p.get("Tags") or [])
        if len(tags) > 50:  # as TagResource
            raise KMSError("TagException", "a key holds at most 50 tags")
        key = KeyRecord(key_id=key_id, arn=arn, created=self.clock(), policy=text, creator=call.caller.arn,
                        description=p.get("Description", ""), tags=tags)
        call.key_arn = arn
        async with self.storage.transaction(write=True) as tx:
            await tx.insert_key(key)
            await self._new_version(tx, key, 1, "INITIAL")
        return {"KeyMetadata": self._metadata(key)}

    async def _describe_key(self, call: Call) -> dict[str, Any]:
        async with self.storage.transaction() as tx:
            key = await self._key_for(tx, call, "DescribeKey")
        return {"KeyMetadata": self._metadata(key)}

    async def _list_keys(self, call: Call) -> dict[str, Any]:
        marker, limit = _page(call.params)
        async with self.storage.transaction() as tx:
            keys = await tx.list_keys(marker, limit + 1)
        out: dict[str, Any] = {"Keys": [{"KeyId": k.key_id, "KeyArn": k.arn} for k in keys[:limit]],
                               "Truncated": len(keys) > limit}
        if len(keys) > limit:
            out["NextMarker"] = keys[limit - 1].key_id
        return out

    async def _set_state(self, call: Call, action: str, change: Callable[[KeyRecord], None]) -> dict[str, Any]:
        async with self.storage.transaction(write=True) as tx:
            key = await self._key_for(tx, call, action, for_update=True)
            change(key)
            await tx.update_key(key)
        return {}

    async def _enable_key(self, call: Call) -> dict[str, Any]:
        def change(key: KeyRecord) -> None:
            if key.state == PENDING_DELETION:
                raise _key_state_error(key)
            key.state = ENABLED
        return await self._set_state(call, "EnableKey", change)

    async def _disable_key(self, call: Call) -> dict[str, Any]:
        def change(key: KeyRecord) -> None:
            if key.state == PENDING_DELETION:
                raise _key_state_error(key)
            key.state = DISABLED
        return await self._set_state(call, "DisableKey", change)

    async def _schedule_key_deletion(self, call: Call) -> dict[str, Any]:
        days = int(call.params.get("PendingWindowInDays") or 30)
        if not self.min_deletion_days <= days <= 30:
            raise validation(f"PendingWindowInDays must be between {self.min_deletion_days} and 30")
        now = self.clock()
        changed: list[KeyRecord] = []

        def change(key: KeyRecord) -> None:
            if key.state == PENDING_DELETION:
                raise _key_state_error(key)
            key.state, key.deletion_date = PENDING_DELETION, now + days * DAY
            changed.append(key)
        await self._set_state(call, "ScheduleKeyDeletion", change)
        key = changed[0]
        return {"KeyId": key.arn, "DeletionDate": key.deletion_date, "KeyState": key.state,
                "PendingWindowInDays": days}

    async def _cancel_key_deletion(self, call: Call) -> dict[str, Any]:
        def change(key: KeyRecord) -> None:
            if key.state != PENDING_DELETION:
                raise _key_state_error(key) if key.state != ENABLED else KMSError(
                    "KMSInvalidStateException", f"{key.arn} is not pending deletion.")
            key.state, key.deletion_date = DISABLED, None  # as KMS: a rescued key comes back disabled
        await self._set_state(call, "CancelKeyDeletion", change)
        return {"KeyId": call.key_arn}

    # -- rotation -------------------------------------------------------------------------
    async def _enable_key_rotation(self, call: Call) -> dict[str, Any]:
        days = int(call.params.get("RotationPeriodInDays") or 365)
        if not 90 <= days <= 2560:
            raise validation("RotationPeriodInDays must be between 90 and 2560")
        now = self.clock()

        def change(key: KeyRecord) -> None:
            if key.state != ENABLED:
                raise _key_state_error(key)
            key.rotation_enabled, key.rotation_period_days = True, days
            key.next_rotation = now + days * DAY
        return await self._set_state(call, "EnableKeyRotation", change)

    async def _disable_key_rotation(self, call: Call) -> dict[str, Any]:
        def change(key: KeyRecord) -> None:
            if key.state != ENABLED:
                raise _key_state_error(key)
            key.rotation_enabled, key.next_rotation = False, None
        return await self._set_state(call, "DisableKeyRotation", change)

    async def _get_key_rotation_status(self, call: Call) -> dict[str, Any]:
        async with self.storage.transaction() as tx:
            key = await self._key_for(tx, call, "GetKeyRotationStatus")
        if key.state == PENDING_DELETION:
            raise _key_state_error(key)
        out: dict[str, Any] = {"KeyRotationEnabled": key.rotation_enabled, "KeyId": key.arn}
        if key.rotation_enabled:
            out.update(RotationPeriodInDays=key.rotation_period_days, NextRotationDate=key.next_rotation)
        return out

    async def _rotate_key_on_demand(self, call: Call) -> dict[str, Any]:
        async with self.storage.transaction(write=True) as tx:
            key = await self._key_for(tx, call, "RotateKeyOnDemand", for_update=True, states=(ENABLED,))
            await self._rotate(tx, key, "ON_DEMAND")
        call.version = key.current_version
        return {"KeyId": key.arn}

    async def _rotate(self, tx: Transaction, key: KeyRecord, kind: str) -> None:
        key.current_version += 1
        await self._new_version(tx, key, key.current_version, kind)
        if key.rotation_enabled and key.rotation_period_days:
            key.next_rotation = self.clock() + key.rotation_period_days * DAY
        await tx.update_key(key)

    async def _list_key_rotations(self, call: Call) -> dict[str, Any]:
        marker, limit = _page(call.params)
        start = int(marker) if marker and marker.isdigit() else 0
        async with self.storage.transaction() as tx:
            key = await self._key_for(tx, call, "ListKeyRotations")
            versions = [v for v in await tx.list_versions(key.key_id) if v.rotation_type != "INITIAL"]
        page = versions[start:start + limit]
        out: dict[str, Any] = {"Rotations": [{"KeyId": key.arn, "RotationDate": v.created,
                                              "RotationType": v.rotation_type} for v in page],
                               "Truncated": start + limit < len(versions)}
        if out["Truncated"]:
            out["NextMarker"] = str(start + limit)
        return out

    async def run_due(self, now: float | None = None) -> list[tuple[str, str]]:
        """Destroy keys whose deletion date has passed (every version of
        their material) and rotate keys whose rotation is due.  Returns
        (action, key ARN) pairs for the audit trail."""
        now = self.clock() if now is None else now
        done: list[tuple[str, str]] = []
        async with self.storage.transaction(write=True) as tx:
            for key_id in await tx.due_keys(now):
                key = await tx.get_key(key_id, for_update=True)
                if key is None:
                    continue
                if key.state == PENDING_DELETION and key.deletion_date is not None and key.deletion_date <= now:
                    await tx.destroy_key(key_id)
                    done.append(("DeleteKey", key.arn))
                elif key.rotation_enabled and key.next_rotation is not None and key.next_rotation <= now:
                    await self._rotate(tx, key, "AUTOMATIC")
                    done.append(("RotateKey", key.arn))
        return done

    # -- aliases --------------------------------------------------------------------------
    @staticmethod
    def _alias_name(name: str) -> str:
        if not _ALIAS.match(name) or len(name) > 256:
            raise validation("AliasName must begin with alias/ and hold only letters, digits, / _ -")
        if name.startswith("alias/aws/"):
            raise KMSError("NotAuthorizedException", "alias/aws/ is reserved for AWS managed keys")
        return name

    def _alias_for(self, call: Call) -> str:
        """The request's alias name, once the caller's identity permissions
        (account_actions) allow this operation on it: a key policy alone
        would let anyone allowed CreateAlias on their own key claim any free
        name (writers of ``aws-kms://alias/<name>`` would then encrypt under
        that key).  Checked before the alias is looked up, so a refused caller
        does not learn which names exist."""
        name = self._alias_name(call.params["AliasName"])
        call.details["alias"] = name
        if not call.caller.may(call.operation, name):
            raise self._denied(call, self.alias_arn(name), call.operation, "no identity-based policy allows")
        return name

    async def _create_alias(self, call: Call) -> dict[str, Any]:
        name = self._alias_for(call)
        async with self.storage.transaction(write=True) as tx:
            key = await self._key_for(tx, call, "CreateAlias", ident=call.params["TargetKeyId"])
            if key.state == PENDING_DELETION:
                raise _key_state_error(key)
            now = self.clock()
            try:
                await tx.insert_alias(AliasRecord(name, key.key_id, now, now))
            except AlreadyExists:
                raise KMSError("AlreadyExistsException", f"An alias with the name {self.alias_arn(name)} already "
                                                         "exists") from None
        return {}

    async def _update_alias(self, call: Call) -> dict[str, Any]:
        name = self._alias_for(call)
        async with self.storage.transaction(write=True) as tx:
            alias = await tx.get_alias(name)
            if alias is None:
                raise _not_found(f"Alias '{self.alias_arn(name)}'")
            old = await self._key_for(tx, call, "UpdateAlias", ident=alias.key_id)
            new = await self._resolve(tx, call.params["TargetKeyId"])
            await self._authorize(tx, call, new, "UpdateAlias")
            if new.state == PENDING_DELETION:
                raise _key_state_error(new)
            call.details["from"] = old.arn
            call.key_arn = new.arn
            alias.key_id, alias.updated = new.key_id, self.clock()
            await tx.update_alias(alias)
        return {}

    async def _delete_alias(self, call: Call) -> dict[str, Any]:
        name = self._alias_for(call)
        async with self.storage.transaction(write=True) as tx:
            alias = await tx.get_alias(name)
            if alias is None:
                raise _not_found(f"Alias '{self.alias_arn(name)}'")
            await self._key_for(tx, call, "DeleteAlias", ident=alias.key_id)
            await tx.delete_alias(name)
        return {}

    async def _list_aliases(self, call: Call) -> dict[str, Any]:
        marker, limit = _page(call.params)
        async with self.storage.transaction() as tx:
            key_id = None
            if call.params.get("KeyId"):
                key = await self._resolve(tx, call.params["KeyId"])
                key_id, call.key_arn = key.key_id, key.arn
            rows = await tx.list_aliases(key_id, marker, limit + 1)
        out: dict[str, Any] = {
            "Aliases": [{"AliasName": a.name, "AliasArn": self.alias_arn(a.name), "TargetKeyId": a.key_id,
                         "CreationDate": a.created, "LastUpdatedDate": a.updated} for a in rows[:limit]],
            "Truncated": len(rows) > limit}
        if len(rows) > limit:
            out["NextMarker"] = rows[limit - 1].name
        return out

    # -- cryptography ---------------------------------------------------------------------
    async def _encrypt(self, call: Call) -> dict[str, Any]:
        self._algorithm(call)
        ctx = self._context(call)
        async with self.storage.transaction() as tx:
            key = await self._key_for(tx, call, "Encrypt", context=ctx, states=(ENABLED,), material=True)
            self._dry_run(call)
            material = await self._material(tx, key, key.current_version)
        call.version = key.current_version
        blob = crypto.encrypt(material, key.key_id, key.current_version, call.params["Plaintext"], ctx)
        return {"CiphertextBlob": b64(blob), "KeyId": key.arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    async def _generate_data_key(self, call: Call, *, plaintext: bool = True) -> dict[str, Any]:
        p = call.params
        if ("NumberOfBytes" in p) == ("KeySpec" in p):
            raise validation("Please specify either number of bytes or key spec.")
        size = p.get("NumberOfBytes") or {"AES_256": 32, "AES_128": 16}[p["KeySpec"]]
        ctx = self._context(call)
        action = "GenerateDataKey" if plaintext else "GenerateDataKeyWithoutPlaintext"
        async with self.storage.transaction() as tx:
            key = await self._key_for(tx, call, action, context=ctx, states=(ENABLED,), material=True)
            self._dry_run(call)
            material = await self._material(tx, key, key.current_version)
        call.version = key.current_version
        dek = os.urandom(size)
        blob = crypto.encrypt(material, key.key_id, key.current_version, dek, ctx)
        out = {"CiphertextBlob": b64(blob), "KeyId": key.arn}
        if plaintext:
            out["Plaintext"] = b64(dek)
        return out

    async def _generate_data_key_without_plaintext(self, call: Call) -> dict[str, Any]:
        return await self._generate_data_key(call, plaintext=False)

    async def _open_blob(self, tx: Transaction, call: Call, action: str, blob_bytes: bytes | None,
                         ctx: Mapping[str, str], named: str | None) -> tuple[KeyRecord, bytes]:
        if blob_bytes is None:  # optional in botocore's model (for Recipient), required here
            raise validation("CiphertextBlob is required")
        blob = crypto.parse_blob(blob_bytes)
        if not _UUID.match(blob.key_id):
            raise crypto.invalid_ciphertext()
        key = await self._key_for(tx, call, action, ident=blob.key_id, context=ctx, material=blob.version)
        if named is not None:
            wanted = await self._resolve(tx, named)
            if wanted.key_id != key.key_id:
                raise KMSError("IncorrectKeyException", "The key ID in the request does not identify a KMS key "
                                                        "that can perform this operation.")
        if key.state != ENABLED:
            raise _key_state_error(key)
        call.version = blob.version
        material = await self._material(tx, key, blob.version)
        return key, crypto.decrypt(material, blob, ctx)

    async def _decrypt(self, call: Call) -> dict[str, Any]:
        self._algorithm(call)
        if call.params.get("Recipient"):
            raise KMSError("UnsupportedOperationException", "Recipient (Nitro enclaves) is not supported")
        ctx = self._context(call)
        async with self.storage.transaction() as tx:
            key, plain = await self._open_blob(tx, call, "Decrypt", call.params.get("CiphertextBlob"), ctx,
                                               call.params.get("KeyId"))
        self._dry_run(call)
        return {"KeyId": key.arn, "Plaintext": b64(plain), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    async def _re_encrypt(self, call: Call) -> dict[str, Any]:
        self._algorithm(call, "SourceEncryptionAlgorithm")
        self._algorithm(call, "DestinationEncryptionAlgorithm")
        src_ctx = self._context(call, "SourceEncryptionContext")
        dst_ctx = self._context(call, "DestinationEncryptionContext")
        async with self.storage.transaction() as tx:
            src, plain = await self._open_blob(tx, call, "ReEncryptFrom", call.params.get("CiphertextBlob"), src_ctx,
                                               call.params.get("SourceKeyId"))
            call.details["source_key"] = src.arn
            call.key_arn = None
            dst = await self._key_for(tx, call, "ReEncryptTo", ident=call.params["DestinationKeyId"],
                                      context=dst_ctx, states=(ENABLED,), material=True)
            self._dry_run(call)
            material = await self._material(tx, dst, dst.current_version)
        call.version = dst.current_version
        blob = crypto.encrypt(material, dst.key_id, dst.current_version, plain, dst_ctx)
        return {"CiphertextBlob": b64(blob), "SourceKeyId": src.arn, "KeyId": dst.arn,
                "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT", "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    async def _generate_random(self, call: Call) -> dict[str, Any]:
        if call.params.get("CustomKeyStoreId") or call.params.get("Recipient"):
            raise KMSError("UnsupportedOperationException", "custom key stores and recipients are not supported")
        n = call.params.get("NumberOfBytes")
        if n is None:
            raise validation("NumberOfBytes is required")
        return {"Plaintext": b64(os.urandom(n))}

    # -- tags ------------------------------------------------------------------------------
    async def _tag_resource(self, call: Call) -> dict[str, Any]:
        tags = _tags(call.params["Tags"])
        call.details["tag_keys"] = sorted(tags)

        def change(key: KeyRecord) -> None:
            if key.state == PENDING_DELETION:
                raise _key_state_error(key)
            key.tags.update(tags)
            if len(key.tags) > 50:
                raise KMSError("TagException", "a key holds at most 50 tags")
        return await self._set_state(call, "TagResource", change)

    async def _untag_resource(self, call: Call) -> dict[str, Any]:
        names = list(call.params["TagKeys"])
        call.details["tag_keys"] = sorted(names)

        def change(key: KeyRecord) -> None:
            if key.state == PENDING_DELETION:
                raise _key_state_error(key)
            for n in names:
                key.tags.pop(n, None)
        return await self._set_state(call, "UntagResource", change)

    async def _list_resource_tags(self, call: Call) -> dict[str, Any]:
        marker, limit = _page(call.params, 50)
        async with self.storage.transaction() as tx:
            key = await self._key_for(tx, call, "ListResourceTags")
        names = sorted(n for n in key.tags if marker is None or n > marker)
        out: dict[str, Any] = {"Tags": [{"TagKey": n, "TagValue": key.tags[n]} for n in names[:limit]],
                               "Truncated": len(names) > limit}
        if len(names) > limit:
            out["NextMarker"] = names[limit - 1]
        return out

    # -- key policies ------------------------------------------------------------------------
    @staticmethod
    def _policy_name(call: Call) -> None:
        if call.params.get("PolicyName", "default") != "default":
            raise _not_found(f"Policy '{call.params['PolicyName']}'")

    async def _put_key_policy(self, call: Call) -> dict[str, Any]:
        self._policy_name(call)
        text = call.params["Policy"]
        policy.check_policy(text)

        def change(key: KeyRecord) -> None:
            self._check_lockout(call, text, key.arn)
            key.policy = text
        return await self._set_state(call, "PutKeyPolicy", change)

    async def _get_key_policy(self, call: Call) -> dict[str, Any]:
        self._policy_name(call)
        async with self.storage.transaction() as tx:
            key = await self._key_for(tx, call, "GetKeyPolicy")
        return {"Policy": key.policy, "PolicyName": "default"}

    async def _list_key_policies(self, call: Call) -> dict[str, Any]:
        async with self.storage.transaction() as tx:
            await self._key_for(tx, call, "ListKeyPolicies")
        return {"PolicyNames": ["default"], "Truncated": False}

    # -- grants -----------------------------------------------------------------------------
    async def _create_grant(self, call: Call) -> dict[str, Any]:
        p = call.params
        grantee = p.get("GranteePrincipal")
        if not grantee:
            raise validation("GranteePrincipal is required (service principals are not supported)")
        ops = list(dict.fromkeys(p["Operations"]))
        constraints = grants.check_new(ops, p.get("Constraints"))
        pairs = constraints.get(grants.EQUALS) or constraints.get(grants.SUBSET)
        ctx = dict(pairs) if pairs is not None else None
        call.context_keys = sorted(ctx or {})
        extra = {"kms:grantoperations": ops, "kms:granteeprincipal": [grantee]}
        if p.get("RetiringPrincipal"):
            extra["kms:retiringprincipal"] = [p["RetiringPrincipal"]]
        async with self.storage.transaction(write=True) as tx:
            key = await self._resolve(tx, p["KeyId"], for_update=True)
            call.key_arn = key.arn
            req = policy.Request(principal=call.caller.arn, account=self.account, action="kms:CreateGrant",
                                 resource=key.arn, context=ctx, extra=extra)
            decision = policy.evaluate(policy.parse_cached(key.policy), req)
            if decision.denied:
                raise self._denied(call, key.arn, "CreateGrant", "an explicit deny in a resource-based policy denies")
            if not decision.allowed:
                parents = [g for g in await tx.grants_for(key.key_id, call.caller.arn)
                           if "CreateGrant" in g.operations and grants.at_least_as_strict(g, ops, constraints)]
                if not parents:
                    raise self._denied(call, key.arn, "CreateGrant")
                call.grant_id = parents[0].grant_id
            if key.state == PENDING_DELETION:
                raise _key_state_error(key)
            self._dry_run(call)
            for g in await tx.grants_for(key.key_id, grantee):
                if p.get("Name") and g.name == p["Name"] and sorted(g.operations) == sorted(ops) and \
                        g.constraints == constraints and g.retiring == p.get("RetiringPrincipal"):
                    call.details["grant"] = g.grant_id
                    return {"GrantToken": grants.make_token(g), "GrantId": g.grant_id}  # idempotent by Name
            grant = GrantRecord(grant_id=grants.new_grant_id(), key_id=key.key_id, grantee=grantee, operations=ops,
                                created=self.clock(), issuing_account=f"arn:aws:iam::{self.account}:root",
                                creator=call.caller.arn, name=p.get("Name", ""),
                                retiring=p.get("RetiringPrincipal"), constraints=constraints)
            await tx.insert_grant(grant)
        call.details["grant"] = grant.grant_id
        return {"GrantToken": grants.make_token(grant), "GrantId": grant.grant_id}

    def _grant_entry(self, g: GrantRecord) -> dict[str, Any]:
        out: dict[str, Any] = {"KeyId": self.key_arn(g.key_id), "GrantId": g.grant_id, "Name": g.name,
                               "CreationDate": g.created, "GranteePrincipal": g.grantee,
                               "IssuingAccount": g.issuing_account, "Operations": g.operations}
        if g.retiring:
            out["RetiringPrincipal"] = g.retiring
        if g.constraints:
            out["Constraints"] = g.constraints
        return out

    async def _list_grants(self, call: Call) -> dict[str, Any]:
        marker, limit = _page(call.params, 50)
        wanted_id, wanted_grantee = call.params.get("GrantId"), call.params.get("GranteePrincipal")
        async with self.storage.transaction() as tx:
            key = await self._key_for(tx, call, "ListGrants")
            # Filters before the page cut, so a page is never short of matches.
            rows = await tx.list_grants(key.key_id, marker, 100_000 if wanted_id or wanted_grantee else limit + 1)
        rows = [g for g in rows if (not wanted_id or g.grant_id == wanted_id)
                and (not wanted_grantee or g.grantee == wanted_grantee)]
        out: dict[str, Any] = {"Grants": [self._grant_entry(g) for g in rows[:limit]], "Truncated": len(rows) > limit}
        if len(rows) > limit:
            out["NextMarker"] = rows[limit - 1].grant_id
        return out

    async def _retire_grant(self, call: Call) -> dict[str, Any]:
        p = call.params
        if p.get("GrantToken"):
            grant_id, key_id = grants.token_grant(p["GrantToken"])
        elif p.get("KeyId") and p.get("GrantId"):
            grant_id, key_id = p["GrantId"], p["KeyId"]
        else:
            raise validation("RetireGrant needs a GrantToken, or a KeyId and a GrantId")
        call.details["grant"] = grant_id
        async with self.storage.transaction(write=True) as tx:
            key = await self._resolve(tx, key_id, for_update=True)
            call.key_arn = key.arn
            grant = await tx.get_grant(grant_id)
            if grant is None or grant.key_id != key.key_id:
                raise _not_found(f"Grant '{grant_id}'")
            me = call.caller.arn
            may = grant.retiring == me or (grant.grantee == me and "RetireGrant" in grant.operations)
            if not may:
                # Only the key policy may let a caller retire others' grants: a
                # grant's RetireGrant lets its grantee retire that grant only
                # (as KMS), not every grant on the key.
                await self._authorize(tx, call, key, "RetireGrant", grant_check=lambda g: False)
            self._dry_run(call)
            await tx.delete_grant(grant_id)
        return {}

    async def _revoke_grant(self, call: Call) -> dict[str, Any]:
        grant_id = call.params["GrantId"]
        call.details["grant"] = grant_id
        async with self.storage.transaction(write=True) as tx:
            key = await self._key_for(tx, call, "RevokeGrant", for_update=True)
            grant = await tx.get_grant(grant_id)
            if grant is None or grant.key_id != key.key_id:
                raise _not_found(f"Grant '{grant_id}'")
            self._dry_run(call)
            await tx.delete_grant(grant_id)
        return {}


def _tags(items: list[Mapping[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in items:
        if t.get("TagKey", "").startswith("aws:"):
            raise KMSError("TagException", "tag keys beginning with aws: are reserved")
        out[t["TagKey"]] = t.get("TagValue", "")
    return out


#: Every operation this server speaks.
OPERATIONS = (
    "CreateKey", "DescribeKey", "ListKeys", "CreateAlias", "UpdateAlias", "DeleteAlias", "ListAliases", "Encrypt",
    "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "GenerateRandom", "EnableKey",
    "DisableKey", "ScheduleKeyDeletion", "CancelKeyDeletion", "EnableKeyRotation", "DisableKeyRotation",
    "GetKeyRotationStatus", "RotateKeyOnDemand", "ListKeyRotations", "TagResource", "UntagResource",
    "ListResourceTags", "PutKeyPolicy", "GetKeyPolicy", "ListKeyPolicies", "CreateGrant", "ListGrants",
    "RetireGrant", "RevokeGrant",
)
