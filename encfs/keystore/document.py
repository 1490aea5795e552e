"""Loading and saving the keystore document: permissions, schema, sealing.

Every load checks, in order: the folder's and file's permissions
(permissions.py), the file's JSON and checksum (storage.py), the whole
schema (schema.py), and for a sealed keystore the passphrase and the
document MAC (sealing.py).  Only then does the rest of the keystore see the
document.  Every save of a sealed keystore writes format 2 with a fresh MAC;
a format 1 sealed keystore is upgraded (re-sealed under a new salt, see
:meth:`DocumentStore._upgrade`) on its first save.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import KeystoreError
from .model import FORMAT, FORMAT_SEALED, FORMATS, KEY_BYTES
from .permissions import check_permissions
from .schema import SchemaError, check_document
from .sealing import PASSPHRASE_ENV, Sealer, b64d, b64e, get_passphrase
from .storage import JsonFileStore


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The bytes the document MAC covers: everything but ``checksum`` and
    ``mac``, as sorted, compact, ASCII JSON."""
    body = {k: v for k, v in doc.items() if k not in ("checksum", "mac")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def material_aad(key_id: str, version: int) -> bytes:
    # Unchanged since format 1, so existing sealed blobs stay valid.
    return f"encfs-keystore/1|{key_id}|{version}".encode()


class DocumentStore:
    """The keystore document of one folder, checked on every load."""

    def __init__(self, home: Path, file: JsonFileStore) -> None:
        self.home = home
        self.file = file
        self._sealers: dict[bytes, Sealer] = {}

    # -- errors and permissions --------------------------------------------------
    def corrupted(self, reason: str) -> KeystoreError:
        return self.file.corrupted(reason)

    def check_permissions(self, *, backup: bool = False) -> None:
        check_permissions(self.home, [self.file.path, *([self.file.backup] if backup else [])])

    # -- sealing -------------------------------------------------------------------
    def sealer(self, doc: Mapping[str, Any]) -> Sealer | None:
        """The sealer of ``doc`` (asks for the passphrase once per set of
        parameters), None for an unsealed keystore."""
        params = doc.get("sealing")
        if not params:
            return None
        ident = json.dumps(params, sort_keys=True).encode("utf-8")
        sealer = self._sealers.get(ident)
        if sealer is None:
            try:
                sealer = Sealer(params, get_passphrase())
            except (KeyError, TypeError, ValueError, OverflowError):
                raise self.corrupted("malformed sealing parameters") from None
            self._sealers[ident] = sealer
        return sealer

    def _remember(self, sealer: Sealer) -> None:
        self._sealers[json.dumps(sealer.params, sort_keys=True).encode("utf-8")] = sealer

    def seal_material(self, doc: Mapping[str, Any], key_id: str, version: int, material: bytes) -> dict[str, str]:
        sealer = self.sealer(doc)
        if sealer is None:
            return {"material": b64e(material)}
        return {"sealed": sealer.seal(material, material_aad(key_id, version))}

    def open_material(self, doc: Mapping[str, Any], key_id: str, version: int, entry: Mapping[str, str]) -> bytes:
        sealer = self.sealer(doc)
        try:
            if sealer is not None:
                material = sealer.unseal(entry["sealed"], material_aad(key_id, version))
            else:
                material = b64d(entry["material"])
        except (KeyError, ValueError):  # the schema checks both; belt and braces
            material = b""
        # A root key is exactly KEY_BYTES: anything else is damage, and a
        # 16-byte one would silently become an AES-128 key.
        if len(material) != KEY_BYTES:
            raise self.corrupted(f"key material of {key_id} version {version} is malformed")
        return material

    # -- load and save ---------------------------------------------------------------
    def empty(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"format": FORMAT, "sealing": None, "aliases": {}, "keys": {}, "deleted": {}}
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if passphrase:
            sealer = Sealer.create(passphrase)
            self._remember(sealer)
            doc["format"], doc["sealing"] = FORMAT_SEALED, sealer.params
        return doc

    def load(self) -> dict[str, Any]:
        """The checked document, or a fresh one if there is no file yet."""
        self.check_permissions()
        doc = self.file.read()
        if doc is None:
            return self.empty()
        return self._checked(doc, self.file.path)

    def load_backup(self) -> dict[str, Any]:
        self.check_permissions(backup=True)
        doc = self.file.read_backup()

        def corrupted(reason: str) -> KeystoreError:
            return KeystoreError(f"keystore backup {self.file.backup} is corrupted too ({reason})")

        return self._checked(doc, self.file.backup, corrupted)

    def _checked(self, doc: dict[str, Any], path: Path, corrupted: Callable[[str], KeystoreError] | None = None,
                 ) -> dict[str, Any]:
        corrupted = corrupted or self.corrupted
        if doc.get("format") not in FORMATS:
            raise KeystoreError(f"{path} is not an encfs keystore (format {str(doc.get('format'))[:80]!r})")
        try:
            check_document(doc)
        except SchemaError as exc:
            raise corrupted(str(exc)) from None
        # The MAC covers the document exactly as stored: computed before any
        # default is filled in, so even an edit that changes nothing once
        # defaults apply (dropping an empty "deleted") is refused.
        authenticated = canonical(doc)
        doc.setdefault("deleted", {})
        sealer = self.sealer(doc)
        if sealer is None:
            if os.environ.get(PASSPHRASE_ENV):
                # A sealed keystore swapped for an unsealed one would hand
                # every later write to keys of the swapper's choosing.
                raise KeystoreError(f"keystore {path} is not sealed but {PASSPHRASE_ENV} is set: refusing it in case "
                                    f"it replaced a sealed one (unset {PASSPHRASE_ENV} to use an unsealed keystore)")
            return doc
        if sealer.authenticates and doc["format"] != FORMAT_SEALED:
            # Sealed by a MAC-aware encfs, yet presented as format 1: the MAC
            # was stripped to slip in unauthenticated changes.
            raise corrupted("the document MAC is missing (format downgraded)")
        if doc["format"] == FORMAT_SEALED and not (
                sealer.authenticates and sealer.verify_mac(authenticated, doc["mac"])):
            raise corrupted("the document failed authentication (tampered with, or not written by encfs)")
        return doc

    def save(self, doc: dict[str, Any], sealer: Sealer | None) -> None:
        """Write ``doc`` (caller holds the file lock): sealed documents get
        format 2 and a MAC, format 1 sealed ones are upgraded first.
        ``sealer`` is the one :meth:`sealer` gave for ``doc`` as loaded."""
        if sealer is not None:
            if not sealer.authenticates:
                sealer = self._upgrade(doc, sealer)
            doc["format"] = FORMAT_SEALED
            doc.pop("mac", None)
            doc["mac"] = sealer.mac(canonical(doc))
        self.file.write(doc)

    def _upgrade(self, doc: dict[str, Any], old: Sealer) -> Sealer:
        """Re-seal a format 1 keystore under a fresh salt.

        A new salt (hence new keys) rather than only a new MAC: format 1
        files hold a check blob an attacker may have copied; under the old
        salt they could pair it with today's content, strip the MAC and
        pass it off as format 1.  Under a new salt every blob written from
        now on fails with the old check, so that splice is no better than
        putting back a whole old file (docs/SECURITY.md)."""
        new = old.renewed()
        for key_id, rec in doc["keys"].items():
            for v, entry in rec["versions"].items():
                material = self.open_material(doc, key_id, int(v), entry)
                entry["sealed"] = new.seal(material, material_aad(key_id, int(v)))
        doc["sealing"] = new.params
        self._remember(new)
        return new
