"""Merging an opened export bundle into the keystore document (docs/KEYS.md
"Moving keys between machines").

A bundle comes from someone who knows its passphrase, not necessarily from
the owner of the keys it names: key ids are public (every object header
carries one), so a bundle holding "version 9 of lk-yours" with material of
its author's choosing is easy to make.  Hence:

- a key this keystore does not have is added as it is in the bundle (also
  one deleted here: an export kept as a backup is how a deleted key comes
  back; the report says so);
- a key it has gains the bundle's missing versions only with
  ``add_versions`` (otherwise the key is refused and reported): an added
  version unwraps objects written under it, so it lets the bundle's author
  write objects that read back as written under *your* key id;
- which version of an existing key is current (wraps new data keys) changes
  only with ``make_current``; a version present on both sides must have the
  same material, else the key is refused;
- aliases are added only when free here and naming an imported key; the
  encfs-managed aliases (``default``, ``encfs/...``), which decide where
  writes go when no key is named, also need ``make_current``; an alias is
  never moved.

Everything done and refused is returned for the command to print.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .model import is_reserved_alias
from .schema import b64_bytes

#: seal(key_id, version, material) and open(key_id, version, entry).
Seal = Callable[[str, int, bytes], dict[str, str]]
Open = Callable[[str, int, Mapping[str, str]], bytes]


def new_report() -> dict[str, Any]:
    return {"added": [], "merged": [], "unchanged": [], "versions_added": {}, "made_current": {},
            "aliases_added": [], "alias_conflicts": [], "refused": {}, "restored": {}}


def merge_records(doc: dict[str, Any], records: Mapping[str, Any], *, seal: Seal, open_material: Open,
                  add_versions: bool = False, make_current: bool = False) -> dict[str, Any]:
    """Merge checked bundle ``records`` (schema.check_bundle_records) into ``doc``."""
    report = new_report()
    imported: set[str] = set()
    for key_id, rec in sorted(records["keys"].items()):
        theirs = {v: b64_bytes(e["material"], "material") for v, e in rec["versions"].items()}
        mine = doc["keys"].get(key_id)
        if mine is None:
            new = {k: v for k, v in rec.items() if k != "versions"}
            new["versions"] = {v: {"created": e.get("created", ""), **seal(key_id, int(v), theirs[v])}
                               for v, e in rec["versions"].items()}
            doc["keys"][key_id] = new
            when = doc["deleted"].pop(key_id, None)
            if when:  # an export kept as a backup brings a deleted key back: say so
                report["restored"][key_id] = when
            report["added"].append(key_id)
            imported.add(key_id)
            continue
        differing = [v for v in theirs if v in mine["versions"]
                     and open_material(key_id, int(v), mine["versions"][v]) != theirs[v]]
        if differing:
            report["refused"][key_id] = f"version {differing[0]} differs from the local one"
            continue
        missing = sorted((v for v in theirs if v not in mine["versions"]), key=int)
        if missing and not (add_versions or make_current):
            report["refused"][key_id] = (f"the bundle adds version(s) {', '.join(missing)} to this existing key "
                                         "(--add-versions to accept them)")
            continue
        for v in missing:
            mine["versions"][v] = {"created": rec["versions"][v].get("created", ""),
                                   **seal(key_id, int(v), theirs[v])}
        if missing:
            report["versions_added"][key_id] = [int(v) for v in missing]
        if make_current and int(rec["current_version"]) != int(mine["current_version"]):
            mine["current_version"] = int(rec["current_version"])
            report["made_current"][key_id] = mine["current_version"]
        report["merged" if missing or key_id in report["made_current"] else "unchanged"].append(key_id)
        imported.add(key_id)
    for alias, key_id in sorted(records.get("aliases", {}).items()):
        have = doc["aliases"].get(alias)
        if have == key_id:
            continue
        if have is not None:
            report["alias_conflicts"].append(alias)
        elif key_id not in imported:
            report["refused"][f"alias/{alias}"] = f"names {key_id}, which was not imported"
        elif is_reserved_alias(alias) and not make_current:
            report["refused"][f"alias/{alias}"] = ("encfs-managed alias: it decides where writes go "
                                                   "(--make-current to take it)")
        else:
            doc["aliases"][alias] = key_id
            report["aliases_added"].append(alias)
    return report
