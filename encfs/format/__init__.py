"""The ENCF v1 object format: bytes and keys in, bytes out.

Nothing here knows about fsspec, key services or caches (DESIGN.md section 4);
docs/FORMAT.md is the specification this package enacts.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import IntegrityError
from .context import PATH_KEY, decode_context, encode_context
from .header import (
    MAGIC,
    SUITE_AES256GCM_HKDF_SHA256_COMMIT,
    SUPPORTED_SUITES,
    VERSION,
    Header,
    WrappedKey,
    encode_header,
    parse_header,
    peek_is_encfs,
    replace_wrapped_keys,
)
from .kdf import DEK_BYTES, OBJECT_ID_BYTES, ObjectKeys, derive_object_keys
from .layout import (
    DEFAULT_SEGMENT,
    HEADER_REGION,
    TAG_BYTES,
    check_segment_size,
    ciphertext_size,
    covering_segments,
    plaintext_size,
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
) -> bytes:
    """Encrypt a whole object in memory (used by tests and the test vectors)."""
    keys = derive_object_keys(dek, object_id, SUITE_AES256GCM_HKDF_SHA256_COMMIT)
    head = encode_header(
        segment_size=segment_size, object_id=object_id, context=context, keys=keys, wrapped_keys=wrapped_keys
    )
    return head + b"".join(seal_segments(SegmentCipher(keys.body_key), plaintext, segment_size))


def decrypt_object(data: bytes, dek: bytes, path: str | None = None) -> tuple[Header, bytes]:
    """Authenticate and decrypt a whole in-memory object with a known data key."""
    header = parse_header(data[:HEADER_REGION], path)
    keys = derive_object_keys(dek, header.object_id, header.suite)
    header.verify(keys, path)
    size = plaintext_size(len(data), header.segment_size)
    if size is None:
        raise IntegrityError(path)
    cipher = SegmentCipher(keys.body_key)
    n = segment_count(size, header.segment_size)
    stride = header.segment_size + TAG_BYTES
    out = bytearray()
    for i in range(n):
        off = segment_offset(i, header.segment_size)
        try:
            out += cipher.open(i, data[off : off + stride], i == n - 1)
        except SegmentAuthError:
            raise IntegrityError(path) from None
    return header, bytes(out)


__all__ = [
    "MAGIC", "VERSION", "SUITE_AES256GCM_HKDF_SHA256_COMMIT", "SUPPORTED_SUITES", "PATH_KEY",
    "Header", "WrappedKey", "ObjectKeys", "SegmentCipher", "SegmentAuthError",
    "DEK_BYTES", "OBJECT_ID_BYTES", "DEFAULT_SEGMENT", "HEADER_REGION", "TAG_BYTES",
    "encode_header", "parse_header", "peek_is_encfs", "replace_wrapped_keys",
    "encode_context", "decode_context", "derive_object_keys",
    "check_segment_size", "ciphertext_size", "plaintext_size", "segment_count",
    "segment_offset", "covering_segments", "seal_segments", "encrypt_object", "decrypt_object",
]
