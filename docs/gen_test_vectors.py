#!/usr/bin/env python3
"""Generate docs/test-vectors.json: complete ENCF v1 objects for fixed inputs.

Everything here is deterministic (fixed data key, object ids, context,
wrapped-key entry and plaintexts; segment nonces are index || final flag), so
running this script again must reproduce the file byte for byte.
``tests/test_vectors.py`` checks both that the code still produces these
objects and, with an independent decoder written from docs/FORMAT.md, that
they mean what the specification says.

The keys below are TEST KEYS, published on purpose.  Never use them.

Usage: python docs/gen_test_vectors.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from encfs.format import (
    HEADER_REGION,
    SUITE_AES256GCM_HKDF_SHA256_COMMIT,
    WrappedKey,
    derive_object_keys,
    encrypt_object,
    parse_header,
)

OUTPUT = Path(__file__).with_name("test-vectors.json")
SEGMENT_SIZE = 1024
#: 0, 1, one full segment, 2.5 segments (FORMAT.md section 9) and 2500 bytes.
SIZES = (0, 1, SEGMENT_SIZE, 2500, SEGMENT_SIZE * 5 // 2)

DEK = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
CONTEXT = {"encfs:path": "vectors/object.bin", "tenant": "acme"}
WRAPPED = WrappedKey(
    provider="local",
    key_id="lk-00112233445566778899aabbccddeeff",
    version="1",
    # Opaque to the format: a stand-in for nonce || wrapped DEK || tag.
    wrapped=bytes(range(0xA0, 0xA0 + 60)),
)


def object_id_for(index: int) -> bytes:
    """A distinct fixed object id per vector (so each has its own body key)."""
    return bytes((0xF0 - i + index) & 0xFF for i in range(32))


def plaintext_for(size: int) -> bytes:
    """Deterministic, non-repeating-per-segment plaintext."""
    return bytes((i * 7 + 3) & 0xFF for i in range(size))


def build() -> dict[str, Any]:
    suite = SUITE_AES256GCM_HKDF_SHA256_COMMIT
    vectors = []
    for index, size in enumerate(SIZES):
        oid = object_id_for(index)
        plain = plaintext_for(size)
        keys = derive_object_keys(DEK, oid, suite)
        blob = encrypt_object(dek=DEK, object_id=oid, context=CONTEXT, wrapped_keys=[WRAPPED],
                              plaintext=plain, segment_size=SEGMENT_SIZE)
        header = parse_header(blob[:HEADER_REGION])
        vectors.append({
            "name": f"plaintext-{size}",
            "segment_size": SEGMENT_SIZE,
            "dek": DEK.hex(),
            "object_id": oid.hex(),
            "context": CONTEXT,
            "wrapped_keys": [{"provider": WRAPPED.provider, "key_id": WRAPPED.key_id,
                              "version": WRAPPED.version, "wrapped": WRAPPED.wrapped.hex()}],
            "plaintext_size": size,
            "plaintext": plain.hex(),
            "body_key": keys.body_key.hex(),
            "mac_key": keys.mac_key.hex(),
            "commitment": keys.commitment.hex(),
            "header_mac": header.mac.hex(),
            "object_size": len(blob),
            "object": blob.hex(),
        })
    return {
        "description": "ENCF v1 test vectors (docs/FORMAT.md section 9). TEST KEYS ONLY: never use them.",
        "format_version": 1,
        "suite": suite,
        "header_region": HEADER_REGION,
        "generator": "docs/gen_test_vectors.py",
        "vectors": vectors,
    }


def render() -> str:
    return json.dumps(build(), indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the stored file differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is out of date; run {__file__}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
