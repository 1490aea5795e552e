"""Object layout arithmetic (FORMAT.md section 3).

An object is a header region (zero padded) followed by the body: ``n``
AES-GCM segments, each ``segment_size`` plaintext bytes plus a 16-byte tag,
the last one possibly shorter.  Every object has at least one segment (an
empty object is one empty final segment), and a plaintext whose size is a
multiple of the segment size ends with a full final segment.

The header region is 4096 bytes (format v1.0), or, for objects smaller than
the smallest v1.0 object, one of two compact sizes (format v1.1, FORMAT.md
section 3.1).  Which one is a function of the ciphertext size alone, so the
plaintext size still follows from the ciphertext size alone, which lets
``ls``/``info``/``find``/``du`` report plaintext sizes from a listing.
"""

from __future__ import annotations

TAG_BYTES = 16
#: Size of the header region of a format v1.0 object (every object whose
#: ciphertext is at least ``COMPACT_END`` bytes long).
HEADER_REGION = 4096
MIN_SEGMENT = 1024
MAX_SEGMENT = 64 * 1024 * 1024
#: 64 KiB.  Listings compute plaintext sizes with the reader's configured
#: segment size (no request per object), so changing this default would make
#: every object written with the old one list with a wrong size: it stays.
#: Parquet-heavy datasets written fresh may choose 32 KiB (a column read then
#: fetches within 1.10x of its bytes; FORMAT.md section 8).
DEFAULT_SEGMENT = 64 * 1024
#: The segment size FORMAT.md section 8 recommends for Parquet datasets.
PARQUET_SEGMENT = 32 * 1024

#: The smallest v1.0 object (a 4096-byte region and one empty segment).
#: Every ciphertext size below it is free for the compact layout.
COMPACT_END = HEADER_REGION + TAG_BYTES
#: Compact lanes (FORMAT.md section 3.1): ``(first ciphertext size, region)``,
#: ascending.  A ciphertext size ``C`` with ``start_i <= C < start_{i+1}``
#: (``COMPACT_END`` closes the last lane) has the region ``region_i``.  Each
#: region is its lane's start minus one tag, so every lane holds every body
#: from the empty one (16 bytes) up to its width plus 16 bytes.
COMPACT_LANES: tuple[tuple[int, int], ...] = ((512, 496), (1552, 1536))
COMPACT_REGIONS = frozenset(region for _, region in COMPACT_LANES)
#: ``(first ciphertext size, end, region)`` per compact lane.
_LANES: tuple[tuple[int, int, int], ...] = tuple(
    (start, end, region)
    for (start, region), end in zip(COMPACT_LANES, [s for s, _ in COMPACT_LANES[1:]] + [COMPACT_END])
)
#: Largest body (segments, tags included) any compact lane can hold.
COMPACT_MAX_BODY = max(end - region for _, end, region in _LANES) - 1


def check_segment_size(segment_size: int) -> int:
    if not isinstance(segment_size, int) or not MIN_SEGMENT <= segment_size <= MAX_SEGMENT:
        raise ValueError(f"segment_size must be an integer in [{MIN_SEGMENT}, {MAX_SEGMENT}]")
    return segment_size


def segment_count(plaintext_size: int, segment_size: int) -> int:
    """Number of segments a plaintext of this size is written as (at least 1)."""
    return max(1, -(-plaintext_size // segment_size))


def body_size(plaintext_size: int, segment_size: int) -> int:
    """Bytes of the body (segments and their tags) of a plaintext of this size."""
    return plaintext_size + TAG_BYTES * segment_count(plaintext_size, segment_size)


def region_for_size(ciphertext_size: int) -> int | None:
    """The header region an object of this ciphertext size has (section 3.1);
    ``None`` when no object can be this small."""
    if ciphertext_size >= COMPACT_END:
        return HEADER_REGION
    for start, end, region in _LANES:
        if start <= ciphertext_size < end:
            return region
    return None


def choose_region(header_bytes: int, body: int | None) -> int:
    """The smallest region a writer may use for a header of ``header_bytes``
    and a body of ``body`` bytes (``None``: not known yet, so v1.0).

    A compact region qualifies when the header fits it and the resulting
    ciphertext size falls in its own lane (so :func:`region_for_size` gives it
    back); otherwise the object is v1.0 with the 4096-byte region.
    """
    if body is not None and body <= COMPACT_MAX_BODY:
        for start, end, region in _LANES:
            if header_bytes <= region and start <= region + body < end:
                return region
    return HEADER_REGION


def ciphertext_size(plaintext_size: int, segment_size: int, header_region: int = HEADER_REGION) -> int:
    return header_region + body_size(plaintext_size, segment_size)


def plaintext_size(ciphertext_size: int, segment_size: int, header_region: int | None = None) -> int | None:
    """Inverse of :func:`ciphertext_size`; ``None`` when no plaintext size maps
    to this ciphertext size (the object is truncated or not ours).

    The region follows from the ciphertext size (:func:`region_for_size`); a
    ``header_region`` read from a header must be that one, or the size does
    not map (a compact header on a large object, or the reverse).
    """
    region = region_for_size(ciphertext_size)
    if region is None or (header_region is not None and header_region != region):
        return None
    body = ciphertext_size - region
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
