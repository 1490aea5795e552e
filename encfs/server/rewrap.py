"""Master-key rotation without downtime: re-wrap what storage holds.

After the master key gains a version (``encfs server-master rotate``), every
server wraps new blobs under the new version and still reads the old ones,
so nothing stops.  :func:`rewrap_stored` then re-wraps each stored blob
whose master-key version is not the current one: root key material one key
per transaction (the key row locked ``FOR UPDATE``, so a concurrent
rotation or deletion of that key waits for it, and the others are served
meanwhile), then the sealed secret access keys.  Old versions stay in the
HSM for reading; retire them only once a rewrap reports nothing left.

It is idempotent and safe to run from any replica, or again after a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .masterkey import MasterKey, material_aad, secret_aad
from .storage import Storage


class VersionedMasterKey(Protocol):
    key_id: str

    def wrap(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, blob: bytes, aad: bytes) -> bytes: ...

    def version_of(self, blob: bytes) -> int | None: ...

    def current_version(self) -> int: ...


@dataclass
class RewrapReport:
    current_version: int
    keys: int = 0
    material_rewrapped: int = 0
    secrets_rewrapped: int = 0
    #: master-key version -> blobs still under it after the run (should be {current: n}).
    versions: dict[int, int] = field(default_factory=dict)


async def rewrap_stored(storage: Storage, master: VersionedMasterKey | MasterKey, *, batch: int = 100,
                        dry_run: bool = False) -> RewrapReport:
    """Re-wrap every stored blob not under ``master``'s current version."""
    current = master.current_version()  # type: ignore[union-attr]
    report = RewrapReport(current)
    after: str | None = None
    while True:
        async with storage.transaction() as tx:
            page = await tx.list_keys(after, batch)
        if not page:
            break
        after = page[-1].key_id
        for listed in page:
            async with storage.transaction(write=True) as tx:
                key = await tx.get_key(listed.key_id, for_update=True)
                if key is None:  # deleted meanwhile
                    continue
                report.keys += 1
                for ver in await tx.list_versions(key.key_id):
                    v = master.version_of(ver.wrapped)  # type: ignore[union-attr]
                    if v != current and not dry_run:
                        aad = material_aad(ver.key_id, ver.version)
                        ver.wrapped = master.wrap(master.unwrap(ver.wrapped, aad), aad)
                        ver.master_key_id = master.key_id
                        await tx.update_version_wrapping(ver)
                        report.material_rewrapped += 1
                        v = master.version_of(ver.wrapped)  # type: ignore[union-attr]
                    report.versions[v or 0] = report.versions.get(v or 0, 0) + 1
    async with storage.transaction(write=True) as tx:
        for ak in await tx.list_access_keys():
            v = master.version_of(ak.sealed_secret)  # type: ignore[union-attr]
            if v != current and not dry_run:
                aad = secret_aad(ak.access_key_id)
                ak.sealed_secret = master.wrap(master.unwrap(ak.sealed_secret, aad), aad)
                ak.master_key_id = master.key_id
                await tx.put_access_key(ak)
                report.secrets_rewrapped += 1
                v = master.version_of(ak.sealed_secret)  # type: ignore[union-attr]
            report.versions[v or 0] = report.versions.get(v or 0, 0) + 1
    return report
