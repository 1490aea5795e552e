"""The ENCF v1 object format (v1.0 and v1.1): bytes and keys in, bytes out.

Nothing here knows about fsspec, key services or caches (DESIGN.md section 4);
docs/FORMAT.md is the specification this package enacts.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import IntegrityError
from .context import PATH_KEY, decode_context, encode_context
from .header import (
    FIXED_BYTES,
    MAGIC,
    SUITE_AES256GCM_HKDF_SHA256_COMMIT,
    SUPPORTED_SUITES,
    VERSION,
    VERSION_1_0,
    VERSION_1_1,
    Header,
    HeaderPlan,
    WrappedKey,
    encode_header,
    parse_header,
    peek_is_encfs,
    replace_wrapped_keys,
)
from .kdf import DEK_BYTES, OBJECT_ID_BYTES, ObjectKeys, derive_object_keys
from .layout import (
    COMPACT_END,
    COMPACT_LANES,
    COMPACT_MAX_BODY,
    COMPACT_REGIONS,
    DEFAULT_SEGMENT,
    HEADER_REGION,
    TAG_BYTES,
    body_size,
    check_segment_size,
    choose_region,
    ciphertext_size,
    covering_segments,
    plaintext_size,
    region_for_size,
    segment_count,
    segment_offset,
)
from .segments import SegmentAuthError, SegmentCipher


def seal_segments(cipher: SegmentCipher, plaintext: bytes, segment_size: int) -> Iterable[bytes]:
    """Yield the sealed segments of a whole in-memory plaintext."""
    n = segment_count(len(plaintext), segment_size)
    view = memoryview(plaintext)
    for i in range(n):
        yield cipher.seal(i, bytes(view[i * segment_size : (i + 1) * segment_size]), i == n - 1)


def encrypt_object(
    *,
    dek: bytes,
    object_id: bytes,
    context: dict[str, str],
    wrapped_keys: list[WrappedKey],
    plaintext: bytes,
    segment_size: int = DEFAULT_SEGMENT,
    compact: bool = True,
) -> bytes:
    """Encrypt a whole object in memory (used by tests and the test vectors).

    ``compact=False`` writes the v1.0 layout (4096-byte region) whatever the
    size, as encfs before format v1.1 did.
    """
    keys = derive_object_keys(dek, object_id, SUITE_AES256GCM_HKDF_SHA256_COMMIT)
    head = encode_header(
        segment_size=segment_size, object_id=object_id, context=context, keys=keys, wrapped_keys=wrapped_keys,
        body=body_size(len(plaintext), segment_size) if compact else None,
    )
    return head + b"".join(seal_segments(SegmentCipher(keys.body_key), plaintext, segment_size))


def open_body(data: bytes | memoryview, header: Header, keys: ObjectKeys, path: str | None) -> bytes:
    """Authenticate every segment of a whole in-memory object and return its
    plaintext; IntegrityError for a wrong size or any failed segment.

    ``header`` must have been verified with ``keys``.  This is the one
    place a whole object's body is opened: :func:`decrypt_object`,
    :func:`reframe_object` and the reader's whole-object path
    (``encfs.file.read_whole``) all come here."""
    size = plaintext_size(len(data), header.segment_size, header.header_region)
    if size is None:
        raise IntegrityError(path)
    cipher = SegmentCipher(keys.body_key)
    n = segment_count(size, header.segment_size)
    view = memoryview(data)
    region = header.header_region
    if n == 1:
        # A small object (the common case for cat_file): one final segment,
        # opened straight from the object's bytes, no join.
        try:
            return cipher.open(0, view[region:], True)
        except SegmentAuthError:
            raise IntegrityError(path) from None
    stride = header.segment_size + TAG_BYTES
    out = bytearray()
    for i in range(n):
        off = segment_offset(i, header.segment_size, region)
        try:
            out += cipher.open(i, view[off : off + stride], i == n - 1)
        except SegmentAuthError:
            raise IntegrityError(path) from None
    return bytes(out)


def decrypt_object(data: bytes, dek: bytes, path: str | None = None) -> tuple[Header, bytes]:
    """Authenticate and decrypt a whole in-memory object with a known data key."""
    header = parse_header(data, path)
    keys = derive_object_keys(dek, header.object_id, header.suite)
    header.verify(keys, path)
    return header, open_body(data, header, keys, path)


def reframe_object(data: bytes, header: Header, keys: ObjectKeys, wrapped_keys: list[WrappedKey] | tuple[WrappedKey, ...],
                   path: str | None = None) -> bytes:
    """A whole object again with new wrapped keys in the region they need
    (FORMAT.md section 4.2: rewrap of a compact object whose new wrapped-key
    section does not fit its region).

    ``header`` must have been verified with ``keys``.  Every segment is
    authenticated first, so only an intact object is rewritten; the body
    bytes are kept as they are (same object id, same body key), and the new
    header has the same context bytes and a new MAC over its new region size.
    """
    open_body(data, header, keys, path)
    body = data[header.header_region :]
    ctx_len = len(header.mac_input) - FIXED_BYTES - 2 - len(header.commitment)
    plan = HeaderPlan(segment_size=header.segment_size, object_id=header.object_id, context=header.context,
                      keys=keys, wrapped_keys=wrapped_keys, suite=header.suite,
                      context_bytes=header.mac_input[FIXED_BYTES + 2 : FIXED_BYTES + 2 + ctx_len])
    return plan.region(len(body)) + body


__all__ = [
    "COMPACT_END",
    "COMPACT_LANES",
    "COMPACT_MAX_BODY",
    "COMPACT_REGIONS",
    "DEFAULT_SEGMENT",
    "DEK_BYTES",
    "HEADER_REGION",
    "MAGIC",
    "OBJECT_ID_BYTES",
    "PATH_KEY",
    "SUITE_AES256GCM_HKDF_SHA256_COMMIT",
    "SUPPORTED_SUITES",
    "TAG_BYTES",
    "VERSION",
    "VERSION_1_0",
    "VERSION_1_1",
    "Header",
    "HeaderPlan",
    "ObjectKeys",
    "SegmentAuthError",
    "SegmentCipher",
    "WrappedKey",
    "body_size",
    "check_segment_size",
    "choose_region",
    "ciphertext_size",
    "covering_segments",
    "decode_context",
    "decrypt_object",
    "derive_object_keys",
    "encode_context",
    "encode_header",
    "encrypt_object",
    "open_body",
    "parse_header",
    "peek_is_encfs",
    "plaintext_size",
    "reframe_object",
    "region_for_size",
    "replace_wrapped_keys",
    "seal_segments",
    "segment_count",
    "segment_offset",
]
