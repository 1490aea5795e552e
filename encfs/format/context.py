"""Canonical encoding of an encryption context (FORMAT.md section 4).

An encryption context is a small mapping of UTF-8 strings.  Its canonical
form is what the header MAC and the key-wrapping AAD cover, so two equal
mappings must always encode to the same bytes: entries are sorted by the
UTF-8 bytes of their keys and every length is explicit.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

MAX_ENTRIES = 64
MAX_KEY_BYTES = 255
MAX_VALUE_BYTES = 2048
#: Upper bound of an encoded context; keeps the whole header inside its region.
MAX_CONTEXT_BYTES = 3072

#: Keys starting with this prefix are reserved for encfs itself.
RESERVED_PREFIX = "encfs:"
PATH_KEY = "encfs:path"


def encode_context(context: Mapping[str, str]) -> bytes:
    """Return the canonical bytes of ``context``; raise ValueError on bad input."""
    if len(context) > MAX_ENTRIES:
        raise ValueError(f"encryption context has more than {MAX_ENTRIES} entries")
    items: list[tuple[bytes, bytes]] = []
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError("encryption context keys and values must be strings")
        kb, vb = k.encode("utf-8"), v.encode("utf-8")
        if not kb or len(kb) > MAX_KEY_BYTES:
            raise ValueError(f"encryption context key must be 1..{MAX_KEY_BYTES} bytes")
        if len(vb) > MAX_VALUE_BYTES:
            raise ValueError(f"encryption context value longer than {MAX_VALUE_BYTES} bytes")
        items.append((kb, vb))
    items.sort()
    # One join of the pieces (this runs for every object written).
    parts = [len(items).to_bytes(2, "big")]
    for kb, vb in items:
        parts += (len(kb).to_bytes(1, "big"), kb, len(vb).to_bytes(2, "big"), vb)
    out = b"".join(parts)
    if len(out) > MAX_CONTEXT_BYTES:
        raise ValueError(f"encoded encryption context exceeds {MAX_CONTEXT_BYTES} bytes")
    return out


def decode_context(data: bytes) -> dict[str, str]:
    """Parse canonical context bytes; raise ValueError unless they are exactly canonical."""
    if len(data) < 2 or len(data) > MAX_CONTEXT_BYTES:
        raise ValueError("bad context length")
    (count,) = struct.unpack_from(">H", data, 0)
    if count > MAX_ENTRIES:
        raise ValueError("too many context entries")
    pos = 2
    out: dict[str, str] = {}
    prev: bytes | None = None
    for _ in range(count):
        if pos + 1 > len(data):
            raise ValueError("truncated context")
        klen = data[pos]
        pos += 1
        if klen == 0 or pos + klen + 2 > len(data):
            raise ValueError("truncated context")
        kb = data[pos : pos + klen]
        pos += klen
        (vlen,) = struct.unpack_from(">H", data, pos)
        pos += 2
        if vlen > MAX_VALUE_BYTES or pos + vlen > len(data):
            raise ValueError("truncated context")
        vb = data[pos : pos + vlen]
        pos += vlen
        # Strictly increasing keys: rejects duplicates and non-canonical order.
        if prev is not None and kb <= prev:
            raise ValueError("context keys not in canonical order")
        prev = kb
        out[kb.decode("utf-8")] = vb.decode("utf-8")
    if pos != len(data):
        raise ValueError("trailing bytes after context")
    return out
