"""The published ENCF v1.0 and v1.1 test vectors (docs/test-vectors.json).

Three independent checks per vector:
1. encrypt_object reproduces the stored object byte for byte;
2. decrypt_object returns the stored plaintext;
3. an independent decoder written from docs/FORMAT.md (raw HKDF, HMAC and
   AES-GCM from ``cryptography``, fixed offsets) accepts the object, so the
   code and the specification cannot drift apart together.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from encfs.errors import IntegrityError
from encfs.format import WrappedKey, decrypt_object, derive_object_keys, encrypt_object

DOCS = Path(__file__).resolve().parent.parent / "docs"
VECTORS_FILE = DOCS / "test-vectors.json"
DOC = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
VECTORS: list[dict[str, Any]] = DOC["vectors"]


def _ids() -> list[str]:
    return [v["name"] for v in VECTORS]


def test_vector_file_covers_required_sizes() -> None:
    seg = VECTORS[0]["segment_size"]
    assert seg == 1024
    for fmt, writer in (("1.0", "1.0"), ("1.1", "1.1")):
        sizes = {v["plaintext_size"] for v in VECTORS if v["format"] == fmt and v["writer"] == writer}
        assert {0, 1, seg} <= sizes, fmt
    assert {0, 1, seg, 2500, seg * 5 // 2} <= {v["plaintext_size"] for v in VECTORS if v["writer"] == "1.0"}
    # Both compact regions, and a 1.1 writer falling back to the 1.0 layout.
    assert {v["header_region"] for v in VECTORS if v["writer"] == "1.1"} == {496, 1536, 4096}
    assert DOC["format_version"] == 1 and DOC["header_region"] == 4096
    assert DOC["compact_lanes"] == [{"first_size": 512, "region": 496}, {"first_size": 1552, "region": 1536}]


def test_generator_reproduces_stored_file() -> None:
    spec = importlib.util.spec_from_file_location("gen_test_vectors", DOCS / "gen_test_vectors.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.render() == VECTORS_FILE.read_text(encoding="utf-8")


def _wrapped(v: dict[str, Any]) -> list[WrappedKey]:
    return [WrappedKey(w["provider"], w["key_id"], w["version"], bytes.fromhex(w["wrapped"])) for w in v["wrapped_keys"]]


@pytest.mark.parametrize("v", VECTORS, ids=_ids())
def test_encrypt_reproduces_vector(v: dict[str, Any]) -> None:
    blob = encrypt_object(
        dek=bytes.fromhex(v["dek"]),
        object_id=bytes.fromhex(v["object_id"]),
        context=v["context"],
        wrapped_keys=_wrapped(v),
        plaintext=bytes.fromhex(v["plaintext"]),
        segment_size=v["segment_size"],
        compact=v["writer"] == "1.1",
    )
    assert len(blob) == v["object_size"]
    assert blob.hex() == v["object"]


@pytest.mark.parametrize("v", VECTORS, ids=_ids())
def test_derived_keys_match_vector(v: dict[str, Any]) -> None:
    keys = derive_object_keys(bytes.fromhex(v["dek"]), bytes.fromhex(v["object_id"]), 1)
    assert keys.body_key.hex() == v["body_key"]
    assert keys.mac_key.hex() == v["mac_key"]
    assert keys.commitment.hex() == v["commitment"]


@pytest.mark.parametrize("v", VECTORS, ids=_ids())
def test_decrypt_vector(v: dict[str, Any]) -> None:
    header, plain = decrypt_object(bytes.fromhex(v["object"]), bytes.fromhex(v["dek"]), v["context"]["encfs:path"])
    assert plain.hex() == v["plaintext"]
    assert header.context == v["context"]
    assert header.object_id.hex() == v["object_id"]
    assert list(header.wrapped_keys) == _wrapped(v)


@pytest.mark.parametrize("v", VECTORS, ids=_ids())
def test_vector_rejects_other_dek(v: dict[str, Any]) -> None:
    other = bytes(reversed(bytes.fromhex(v["dek"])))
    with pytest.raises(IntegrityError):
        decrypt_object(bytes.fromhex(v["object"]), other)


# -- an independent reader, from the specification only ---------------------------


def _hkdf(dek: bytes, salt: bytes, label: bytes, suite: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=label + bytes([suite])).derive(dek)


#: FORMAT.md section 3.1, restated: ciphertext size -> header region.
def _spec_region(size: int) -> int | None:
    if size >= 4112:
        return 4096
    if 1552 <= size:
        return 1536
    if 512 <= size:
        return 496
    return None


def _spec_decode(obj: bytes, dek: bytes) -> dict[str, Any]:
    """Decode an ENCF v1.0 or v1.1 object following docs/FORMAT.md, not encfs.format."""
    magic, version, suite, flags, region, seg, oid = struct.unpack_from(">4sBBHII32s", obj, 0)
    assert (magic, suite, flags) == (b"ENCF", 1, 0)
    # The version byte names the layout; the region must be the one the
    # object's size names (section 3.1).
    assert (version, region) in {(0x01, 4096), (0x11, 496), (0x11, 1536)}
    assert region == _spec_region(len(obj))
    (ctx_len,) = struct.unpack_from(">H", obj, 48)
    ctx_raw = obj[50 : 50 + ctx_len]
    commitment = obj[50 + ctx_len : 82 + ctx_len]
    mac = obj[82 + ctx_len : 114 + ctx_len]
    body_key = _hkdf(dek, oid, b"ENCF v1 body key", suite)
    mac_key = _hkdf(dek, oid, b"ENCF v1 header mac key", suite)
    commit = _hkdf(dek, oid, b"ENCF v1 key commitment", suite)
    assert commit == commitment
    h = hmac.HMAC(mac_key, hashes.SHA256())
    h.update(obj[: 82 + ctx_len])
    h.verify(mac)
    # Context: u16 count, then (u8 klen, key, u16 vlen, value) sorted by key bytes.
    (count,) = struct.unpack_from(">H", ctx_raw, 0)
    pos, ctx = 2, {}
    for _ in range(count):
        klen = ctx_raw[pos]
        key = ctx_raw[pos + 1 : pos + 1 + klen].decode()
        pos += 1 + klen
        (vlen,) = struct.unpack_from(">H", ctx_raw, pos)
        ctx[key] = ctx_raw[pos + 2 : pos + 2 + vlen].decode()
        pos += 2 + vlen
    assert pos == len(ctx_raw)
    # Wrapped keys follow the MAC; the rest of the region is zero.
    pos = 114 + ctx_len
    n = obj[pos]
    pos += 1
    wrapped = []
    for _ in range(n):
        plen = obj[pos]
        provider = obj[pos + 1 : pos + 1 + plen].decode("ascii")
        pos += 1 + plen
        (klen,) = struct.unpack_from(">H", obj, pos)
        key_id = obj[pos + 2 : pos + 2 + klen].decode()
        pos += 2 + klen
        vlen = obj[pos]
        kver = obj[pos + 1 : pos + 1 + vlen].decode("ascii")
        pos += 1 + vlen
        (wlen,) = struct.unpack_from(">H", obj, pos)
        blob = obj[pos + 2 : pos + 2 + wlen]
        pos += 2 + wlen
        wrapped.append({"provider": provider, "key_id": key_id, "version": kver, "wrapped": blob.hex()})
    assert pos <= region and obj[pos:region] == bytes(region - pos)
    # Body: segments of seg + 16 bytes, nonce = u64 index || u32 final.
    body = obj[region:]
    stride = seg + 16
    nseg = max(1, -(-len(body) // stride))
    aead = AESGCM(body_key)
    plain = b"".join(
        aead.decrypt(struct.pack(">QI", i, 1 if i == nseg - 1 else 0), body[i * stride : (i + 1) * stride], None)
        for i in range(nseg)
    )
    return {"context": ctx, "wrapped_keys": wrapped, "plaintext": plain, "segment_size": seg,
            "body_key": body_key, "mac_key": mac_key, "commitment": commit, "mac": mac, "region": region,
            "format": "1.0" if version == 0x01 else "1.1"}


@pytest.mark.parametrize("v", VECTORS, ids=_ids())
def test_vector_matches_specification(v: dict[str, Any]) -> None:
    got = _spec_decode(bytes.fromhex(v["object"]), bytes.fromhex(v["dek"]))
    assert got["plaintext"].hex() == v["plaintext"]
    assert got["context"] == v["context"]
    assert got["wrapped_keys"] == v["wrapped_keys"]
    assert got["segment_size"] == v["segment_size"]
    assert got["body_key"].hex() == v["body_key"]
    assert got["mac_key"].hex() == v["mac_key"]
    assert got["commitment"].hex() == v["commitment"]
    assert got["mac"].hex() == v["header_mac"]
    assert (got["region"], got["format"]) == (v["header_region"], v["format"])
    nseg = max(1, -(-v["plaintext_size"] // v["segment_size"]))
    assert v["object_size"] == v["header_region"] + v["plaintext_size"] + 16 * nseg


def test_v1_0_vectors_are_the_published_v1_objects() -> None:
    """The v1.0 vectors are the objects published before v1.1 existed
    (their hashes pinned here): v1.1 readers must keep reading them."""
    import hashlib

    pinned = {v["name"]: hashlib.sha256(bytes.fromhex(v["object"])).hexdigest()[:16]
              for v in VECTORS if v["writer"] == "1.0"}
    assert pinned == V1_0_OBJECT_SHA256, pinned


#: SHA-256 (first 16 hex digits) of the v1.0 objects in main's
#: docs/test-vectors.json before format v1.1 (commit 8d6ae21).
V1_0_OBJECT_SHA256 = {"plaintext-0": "3171d2efcce179b7", "plaintext-1": "f3a9f406eb167251",
                      "plaintext-1024": "4c2460a4688bd9ba", "plaintext-2500": "a6a5c612e804aa82",
                      "plaintext-2560": "b82fc3828b304434"}
