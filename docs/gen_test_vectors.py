#!/usr/bin/env python3
"""Generate docs/test-vectors.json: complete ENCF v1.0 and v1.1 objects for fixed inputs.

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
    COMPACT_END,
    COMPACT_LANES,
    HEADER_REGION,
    SUITE_AES256GCM_HKDF_SHA256_COMMIT,
    WrappedKey,
    derive_object_keys,
    encrypt_object,
    parse_header,
)

OUTPUT = Path(__file__).with_name("test-vectors.json")
SEGMENT_SIZE = 1024
#: v1.0 (4096-byte region, as every encfs before v1.1 wrote): 0, 1, one full
#: segment, 2.5 segments (FORMAT.md section 9) and 2500 bytes.
SIZES = (0, 1, SEGMENT_SIZE, 2500, SEGMENT_SIZE * 5 // 2)
#: v1.1 (region chosen by size, section 3.1): (plaintext size, wrapped keys).
#: 0, 1 and 1024 bytes land in the 496-byte lane; 1025 and 2500 bytes (two and
#: three segments) in the 1536-byte lane; 2560 bytes is too large for any
#: lane (v1.0 layout); 100 bytes under four keys needs more than 496 bytes of
#: header (1536-byte lane).
COMPACT_SIZES = ((0, 1), (1, 1), (SEGMENT_SIZE, 1), (SEGMENT_SIZE + 1, 1), (2500, 1), (SEGMENT_SIZE * 5 // 2, 1),
                 (100, 4))

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


def wrapped_for(count: int) -> list[WrappedKey]:
    """``count`` entries: WRAPPED, then stand-ins under other key ids."""
    return [WRAPPED] + [WrappedKey(WRAPPED.provider, f"lk-{i:032x}", "2", bytes(range(0x10 * i, 0x10 * i + 60)))
                        for i in range(1, count)]


def build() -> dict[str, Any]:
    suite = SUITE_AES256GCM_HKDF_SHA256_COMMIT
    vectors = []
    cases = [(size, 1, False) for size in SIZES] + [(size, n, True) for size, n in COMPACT_SIZES]
    for index, (size, nkeys, compact) in enumerate(cases):
        oid = object_id_for(index)
        plain = plaintext_for(size)
        keys = derive_object_keys(DEK, oid, suite)
        wrapped = wrapped_for(nkeys)
        blob = encrypt_object(dek=DEK, object_id=oid, context=CONTEXT, wrapped_keys=wrapped,
                              plaintext=plain, segment_size=SEGMENT_SIZE, compact=compact)
        header = parse_header(blob)
        vectors.append({
            "name": f"v{header.format_name}-plaintext-{size}" + (f"-{nkeys}-keys" if nkeys > 1 else "")
            if compact else f"plaintext-{size}",
            "format": header.format_name,
            # The rules that wrote it: "1.0" always a 4096-byte region, "1.1"
            # the region by size (a 1.1 writer may still produce a 1.0 object).
            "writer": "1.1" if compact else "1.0",
            "header_region": header.header_region,
            "segment_size": SEGMENT_SIZE,
            "dek": DEK.hex(),
            "object_id": oid.hex(),
            "context": CONTEXT,
            "wrapped_keys": [{"provider": w.provider, "key_id": w.key_id,
                              "version": w.version, "wrapped": w.wrapped.hex()} for w in wrapped],
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
        "description": "ENCF v1.0 and v1.1 test vectors (docs/FORMAT.md section 9). TEST KEYS ONLY: never use them.",
        "format_version": 1,
        "suite": suite,
        "header_region": HEADER_REGION,
        "compact_lanes": [{"first_size": start, "region": region} for start, region in COMPACT_LANES],
        "compact_end": COMPACT_END,
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
