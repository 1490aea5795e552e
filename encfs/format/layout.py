"""Object layout arithmetic (FORMAT.md section 3).

An object is ``HEADER_REGION`` bytes of header (zero padded) followed by the
body: ``n`` AES-GCM segments, each ``segment_size`` plaintext bytes plus a
16-byte tag, the last one possibly shorter.  Every object has at least one
segment (an empty object is one empty final segment), and a plaintext whose
size is a multiple of the segment size ends with a full final segment.

So the plaintext size follows from the ciphertext size alone, which lets
``ls``/``info``/``find``/``du`` report plaintext sizes from a listing.
"""

from __future__ import annotations

TAG_BYTES = 16
#: Fixed size of the header region in format version 1.
HEADER_REGION = 4096
MIN_SEGMENT = 1024
MAX_SEGMENT = 64 * 1024 * 1024
DEFAULT_SEGMENT = 64 * 1024


def check_segment_size(segment_size: int) -> int:
    if not isinstance(segment_size, int) or not MIN_SEGMENT <= segment_size <= MAX_SEGMENT:
        raise ValueError(f"segment_size must be an integer in [{MIN_SEGMENT}, {MAX_SEGMENT}]")
    return segment_size


def segment_count(plaintext_size: int, segment_size: int) -> int:
    """Number of segments a plaintext of this size is written as (at least 1)."""
    return max(1, -(-plaintext_size // segment_size))


def ciphertext_size(plaintext_size: int, segment_size: int, header_region: int = HEADER_REGION) -> int:
    return header_region + plaintext_size + TAG_BYTES * segment_count(plaintext_size, segment_size)


def plaintext_size(ciphertext_size: int, segment_size: int, header_region: int = HEADER_REGION) -> int | None:
    """Inverse of :func:`ciphertext_size`; ``None`` when no plaintext size maps
    to this ciphertext size (the object is truncated or not ours)."""
    body = ciphertext_size - header_region
    if body < TAG_BYTES:
        return None
    stride = segment_size + TAG_BYTES
    n = -(-body // stride)
    last = body - (n - 1) * stride
    # A writer never emits an empty final segment after full ones.
    if last < TAG_BYTES or (n > 1 and last == TAG_BYTES):
        return None
    return body - n * TAG_BYTES


def segment_offset(index: int, segment_size: int, header_region: int = HEADER_REGION) -> int:
    """Ciphertext offset of segment ``index``."""
    return header_region + index * (segment_size + TAG_BYTES)


def covering_segments(start: int, end: int, segment_size: int) -> range:
    """Indices of the segments holding plaintext bytes ``[start, end)``."""
    if end <= start:
        return range(0)
    return range(start // segment_size, (end - 1) // segment_size + 1)
