"""Principals in storage, and the rule that keeps a replica started with a
stale config from changing them (docs/SERVER.md, "Configuration reference").

Servers authenticate against storage, not their config: each access key's
row holds the principal's ARN, its secret sealed under the master key and
its ``account_actions``.  The config's ``[[principals]]`` are what a *sync*
stores: it revokes (deletes) the access keys the config lacks and adds or
updates those it lists, and counts a generation in ``meta``.

At start a server compares its config's principals with storage's:

- the same: nothing is written;
- storage has none yet (the first start): the config's are stored;
- they differ: on storage that only this server uses (SQLite: its lock file
  keeps other server processes out) the config is authoritative and is
  synced, as a restart with an edited config expects.  On shared storage
  (PostgreSQL replicas, each with its own copy of the config) the server
  refuses to start, naming the differing access key ids, unless it is started
  with ``--sync-principals``: a replica restarted with an older config would
  otherwise revoke the principals added since and bring back removed ones.

Rows written before account_actions were stored (``None``) take the
config's when the rest agrees: that is an upgrade, not a change.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ConfigurationError
from .config import Principal, ServerConfig
from .masterkey import MasterKey, MasterKeyError, secret_aad
from .storage import AccessKey, Storage

GENERATION = "principals_generation"


@dataclass
class SyncResult:
    generation: int
    #: What differed (access key ids and what about them; never a secret).
    differences: list[str] = field(default_factory=list)
    synced: bool = False


def _same_secret(master: MasterKey, ak: AccessKey, secret: str) -> bool:
    try:
        stored = master.unwrap(ak.sealed_secret, secret_aad(ak.access_key_id))
    except MasterKeyError:
        return False
    return hmac.compare_digest(stored, secret.encode())


def differences(principals: list[Principal], stored: dict[str, AccessKey], master: MasterKey) -> tuple[
        list[str], list[str]]:
    """(differences, access key ids whose stored account_actions are missing)."""
    want = {p.access_key_id: p for p in principals}
    out: list[str] = []
    missing_actions: list[str] = []
    for akid in sorted(stored.keys() - want.keys()):
        out.append(f"{akid} ({stored[akid].principal_arn}) is in the database, not in this config")
    for akid in sorted(want.keys() - stored.keys()):
        out.append(f"{akid} ({want[akid].arn}) is in this config, not in the database")
    for akid in sorted(want.keys() & stored.keys()):
        p, ak = want[akid], stored[akid]
        what = []
        if ak.principal_arn != p.arn:
            what.append("ARN")
        if ak.account_actions is None:
            missing_actions.append(akid)
        elif sorted(ak.account_actions) != sorted(p.account_actions):
            what.append("account_actions")
        if not _same_secret(master, ak, p.secret):
            what.append("secret")
        if what:
            out.append(f"{akid} ({p.arn}): {', '.join(what)} differ")
    return out, missing_actions


async def sync_principals(storage: Storage, master: MasterKey, cfg: ServerConfig,
                          clock: Callable[[], float] = time.time, *, sync: bool | None = None) -> SyncResult:
    """Check (and where the rule above allows, store) the config's principals.

    ``sync``: apply the config even on shared storage (``--sync-principals``);
    default ``cfg.sync_principals``.  Raises :class:`ConfigurationError` when a
    replica's config differs from the database's principals and it may not sync.
    """
    if sync is None:
        sync = cfg.sync_principals
    async with storage.transaction(write=True) as tx:
        await tx.lock_principals()  # replicas starting together: one syncs, the others see its result
        stored = {ak.access_key_id: ak for ak in await tx.list_access_keys()}
        generation = int(await tx.get_meta(GENERATION) or 0)
        diff, missing_actions = differences(cfg.principals, stored, master)
        first = not stored and generation == 0
        if diff and not first and storage.shared and not sync:
            shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
            raise ConfigurationError(
                f"principals: this config differs from the database's (generation {generation}), which other "
                f"replicas may have synced: {shown}. Give this replica the current config, or start it once "
                "with --sync-principals to make this config's principals the database's (it revokes the access "
                "keys this config lacks)")
        if not diff and not missing_actions and not first:
            return SyncResult(generation)
        want = {p.access_key_id: p for p in cfg.principals}
        for akid in stored.keys() - want.keys():
            await tx.delete_access_key(akid)  # removed from the config: revoked
        for p in cfg.principals:
            old = stored.get(p.access_key_id)
            if old is not None and old.account_actions is not None and old.principal_arn == p.arn and \
                    sorted(old.account_actions) == sorted(p.account_actions) and \
                    _same_secret(master, old, p.secret):
                continue  # unchanged: its sealed blob stays as it is
            sealed = master.wrap(p.secret.encode(), secret_aad(p.access_key_id))
            await tx.put_access_key(AccessKey(p.access_key_id, p.arn, sealed, master.key_id, clock(),
                                              account_actions=tuple(p.account_actions)))
        if diff or first:
            generation += 1
            await tx.set_meta(GENERATION, str(generation))
    return SyncResult(generation, diff, synced=bool(diff or first))
