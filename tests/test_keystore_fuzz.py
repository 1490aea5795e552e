"""Fuzzing the keystore loader and the export-bundle importer (hypothesis).

Valid documents are mutated (fields deleted, renamed or replaced by random
JSON values: huge integers, infinities, NaN, strings, lists, objects), the
checksum is recomputed as a hand-editor would, and the keystore is loaded
and used.  Only encfs errors may escape: KeystoreError for a document that
fails to load, and the lifecycle's own errors (KeyStateError, ...) for a
document that loads but forbids the operation; never KeyError, TypeError,
ValueError, OverflowError or AttributeError.  The same for bundle records
through ``import_records`` and for mutated bundle files through
``open_bundle``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encfs.errors import EncfsError, KeystoreError
from encfs.keystore import LocalKeystore
from encfs.keystore.storage import JsonFileStore
from encfs.keystore.transfer import open_bundle, seal_bundle

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FAR_FUTURE = 4_000_000_000.0  # every rotation and deletion due: exercises the due work too

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["", "1", "0", "01", "Enabled", "PendingDeletion", "2026-01-01T00:00:00+00:00",
                       "9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+00:00", "AAAA", "lk-x", "default"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(autouse=True)
def _no_audit(monkeypatch):
    monkeypatch.setenv("ENCFS_AUDIT_LOG", "off")


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON document."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw, doc: dict[str, Any], *, keep: tuple[str, ...] = ()) -> Any:
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p and p[0] not in keep]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        op = draw(st.sampled_from(["replace", "delete", "rename"] if isinstance(parent, dict) else ["replace"]))
        if op == "replace":
            parent[last] = draw(json_values)
        elif op == "delete":
            del parent[last]
        else:
            parent[draw(st.text(max_size=6) | st.sampled_from(["1", "2", "01", "lk-x", "id", "sealed"]))] = (
                parent.pop(last))
    return doc


@pytest.fixture(scope="module")
def valid_doc(tmp_path_factory) -> dict[str, Any]:
    """An unsealed keystore with every kind of record: rotated, rotating,
    disabled, pending deletion, managed, aliased, tagged, one deleted."""
    import os

    home = tmp_path_factory.mktemp("fuzz-src")
    old = os.environ.pop("ENCFS_PASSPHRASE", None)
    try:
        ks = LocalKeystore(home, clock=lambda: 1_800_000_000.0)
        a = ks.create_key(alias="lake", tags={"team": "data"}, description="a", rotation_days=90)
        ks.rotate(a)
        b = ks.create_key(alias="old")
        ks.disable(b)
        c = ks.create_key()
        ks.schedule_deletion(c, 7)
        ks.ensure_default()
        d = ks.create_key()
        ks.schedule_deletion(d, 7)
        LocalKeystore(home, clock=lambda: 1_800_000_000.0 + 8 * 86400).list_ids()  # d is deleted
    finally:
        if old is not None:
            os.environ["ENCFS_PASSPHRASE"] = old
    doc = json.loads((home / "keystore.json").read_text())
    doc.pop("checksum")
    return doc


def _write(home: Path, doc: Any) -> None:
    if isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k != "checksum"}
        doc["checksum"] = JsonFileStore.checksum(doc)
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "keystore.json").write_text(json.dumps(doc))
    (home / "keystore.json").chmod(0o600)


def _exercise(home: Path) -> None:
    """Load, then use every read path and the due work; only encfs errors."""
    try:
        ks = LocalKeystore(home, clock=lambda: FAR_FUTURE)
        ids = ks.list_ids()
    except KeystoreError:
        return
    for key_id in ids:
        try:
            ks._material(key_id, for_wrap=True)
        except EncfsError:
            pass
        for v in list(ks.record(key_id)["versions"]):
            try:
                ks._material(key_id, int(v), for_wrap=False)
            except EncfsError:
                pass
    for name in ("lake", "old", "default"):
        try:
            ks.resolve(name)
        except EncfsError:
            pass
    try:
        ks.export_records()
    except EncfsError:
        pass


@settings(SETTINGS, max_examples=300)
@given(data=st.data())
def test_mutated_keystore_documents(valid_doc, tmp_path_factory, data):
    home = tmp_path_factory.mktemp("fuzz")
    _write(home, data.draw(mutated(valid_doc)))
    _exercise(home)


@SETTINGS
@given(data=st.data())
def test_mutated_keystore_bytes(valid_doc, tmp_path_factory, data):
    """Below the JSON level: truncation, bit flips, junk (the checksum is
    left as it is, so most are caught there; none may crash)."""
    home = tmp_path_factory.mktemp("fuzz")
    _write(home, valid_doc)
    raw = bytearray((home / "keystore.json").read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    (home / "keystore.json").write_bytes(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw))
    _exercise(home)


@pytest.fixture(scope="module")
def valid_records(valid_doc, tmp_path_factory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("fuzz-records")
    _write(home, valid_doc)
    return LocalKeystore(home).export_records()


@SETTINGS
@given(data=st.data(), add=st.booleans(), current=st.booleans())
def test_mutated_bundle_records(valid_records, valid_doc, tmp_path_factory, data, add, current):
    """Records as the author of a bundle (who knows its passphrase) may
    write them, imported into a keystore that already holds some keys."""
    home = tmp_path_factory.mktemp("fuzz")
    _write(home, valid_doc)
    records = data.draw(mutated(valid_records))
    ks = LocalKeystore(home, clock=lambda: FAR_FUTURE)
    try:
        ks.import_records(records, add_versions=add, make_current=current)
    except KeystoreError:
        return
    _exercise(home)  # whatever was accepted loads and works


@pytest.fixture(scope="module")
def valid_bundle(valid_records) -> dict[str, Any]:
    return json.loads(seal_bundle(valid_records, "pw", n=2**10))


@settings(SETTINGS, max_examples=100)
@given(data=st.data())
def test_mutated_bundle_files(valid_bundle, data):
    bundle = data.draw(mutated(valid_bundle))
    try:
        open_bundle(json.dumps(bundle).encode(), "pw")
    except KeystoreError:
        pass


@pytest.fixture(scope="module")
def sealed_store(tmp_path_factory):
    """A sealed keystore and one handle on it (its passphrase-derived keys
    are cached, so each example costs no scrypt)."""
    import os

    home = tmp_path_factory.mktemp("fuzz-sealed")
    old = os.environ.get("ENCFS_PASSPHRASE")
    os.environ["ENCFS_PASSPHRASE"] = "fuzz pass"
    try:
        ks = LocalKeystore(home, clock=lambda: 1_800_000_000.0)
        a = ks.create_key(alias="lake", tags={"team": "data"}, rotation_days=90)
        ks.rotate(a)
        ks.disable(ks.create_key(alias="old"))
        ks.schedule_deletion(ks.create_key(), 7)
        doc = json.loads((home / "keystore.json").read_text())
        yield home, ks, doc
    finally:
        if old is None:
            os.environ.pop("ENCFS_PASSPHRASE", None)
        else:
            os.environ["ENCFS_PASSPHRASE"] = old


@SETTINGS
@given(data=st.data())
def test_sealed_keystore_accepts_no_edit(sealed_store, data, monkeypatch):
    """Finding 3 as a property: any edit of a sealed keystore made without
    the passphrase (sealing parameters aside: changing those only locks
    the owner out) is refused, unless it leaves the authenticated content
    as it was (the checksum, the JSON layout)."""
    from encfs.keystore.document import canonical

    monkeypatch.setenv("ENCFS_PASSPHRASE", "fuzz pass")
    home, ks, doc = sealed_store
    edited = data.draw(mutated(doc, keep=("sealing",)))
    _write(home, edited)
    ks._doc = None  # reload, as a fresh process would (the sealer stays cached)
    try:
        ks.list_ids()
    except KeystoreError:
        return
    finally:
        _write(home, doc)
    assert canonical(edited) == canonical(doc), "an edited sealed keystore was accepted"


def test_sealed_keystore_refuses_an_edit_that_defaults_would_hide(sealed_store, monkeypatch):
    """Found by the property above (hypothesis 6.170.17): dropping the empty
    ``deleted`` map changed nothing once the loader filled in its default,
    and the MAC was checked after that default, so the edit was accepted.
    The MAC now covers the document exactly as stored."""
    monkeypatch.setenv("ENCFS_PASSPHRASE", "fuzz pass")
    home, ks, doc = sealed_store
    assert doc["deleted"] == {}
    edited = {k: v for k, v in doc.items() if k != "deleted"}
    _write(home, edited)
    ks._doc = None
    try:
        with pytest.raises(KeystoreError, match="authentication"):
            ks.list_ids()
    finally:
        _write(home, doc)
