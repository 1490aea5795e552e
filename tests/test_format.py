"""Unit tests of the ENCF v1 format package: pure bytes, no filesystem.

Covers the canonical context encoding, the layout arithmetic (plaintext size
from ciphertext size alone), header encode/parse, a parse fuzz that may only
ever raise encfs format errors, and key commitment.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from encfs.errors import FormatError, IntegrityError, UnsupportedVersionError
from encfs.format import (
    COMPACT_END,
    COMPACT_LANES,
    COMPACT_MAX_BODY,
    COMPACT_REGIONS,
    HEADER_REGION,
    MAGIC,
    SUITE_AES256GCM_HKDF_SHA256_COMMIT,
    TAG_BYTES,
    Header,
    WrappedKey,
    body_size,
    choose_region,
    ciphertext_size,
    covering_segments,
    decode_context,
    decrypt_object,
    derive_object_keys,
    encode_context,
    encode_header,
    encrypt_object,
    parse_header,
    plaintext_size,
    region_for_size,
    replace_wrapped_keys,
    segment_count,
    segment_offset,
)
from encfs.format.context import MAX_CONTEXT_BYTES, MAX_ENTRIES, MAX_KEY_BYTES, MAX_VALUE_BYTES
from encfs.format.header import FIXED_BYTES, MAX_WRAPPED_KEYS
from encfs.format.layout import MAX_SEGMENT, MIN_SEGMENT

SUITE = SUITE_AES256GCM_HKDF_SHA256_COMMIT
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _wk(blob: bytes = b"\x01" * 60, key_id: str = "lk-0123", version: str = "1") -> WrappedKey:
    return WrappedKey("local", key_id, version, blob)


# -- context -------------------------------------------------------------------

contexts = st.dictionaries(
    st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES),
    st.text(max_size=40),
    max_size=8,
).filter(lambda d: all(_utf8_ok(k) and _utf8_ok(v) for k, v in d.items()))


def _utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@FAST
@given(contexts, st.randoms())
def test_context_roundtrip_and_order_independent(ctx: dict[str, str], rnd) -> None:
    items = list(ctx.items())
    rnd.shuffle(items)
    shuffled = dict(items)
    enc = encode_context(ctx)
    assert encode_context(shuffled) == enc
    assert decode_context(enc) == ctx


@FAST
@given(st.binary(max_size=300))
def test_context_decode_accepts_only_canonical(data: bytes) -> None:
    """Whatever decodes must re-encode to exactly the same bytes (one encoding per context)."""
    try:
        ctx = decode_context(data)
    except ValueError:
        return
    assert encode_context(ctx) == data


def _raw_context(entries: list[tuple[bytes, bytes]], count: int | None = None) -> bytes:
    out = struct.pack(">H", len(entries) if count is None else count)
    for k, v in entries:
        out += struct.pack(">B", len(k)) + k + struct.pack(">H", len(v)) + v
    return out


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_raw_context([(b"b", b"1"), (b"a", b"2")]), id="unsorted"),
        pytest.param(_raw_context([(b"a", b"1"), (b"a", b"2")]), id="duplicate"),
        pytest.param(_raw_context([(b"a", b"1"), (b"a", b"1")]), id="duplicate-same-value"),
        pytest.param(_raw_context([(b"a", b"1")]) + b"\x00", id="trailing-byte"),
        pytest.param(_raw_context([(b"a", b"1")], count=2), id="count-too-high"),
        pytest.param(_raw_context([(b"a", b"1"), (b"b", b"2")], count=1), id="count-too-low"),
        pytest.param(_raw_context([(b"", b"1")]), id="empty-key"),
        pytest.param(_raw_context([(b"\xff\xfe", b"1")]), id="bad-utf8-key"),
        pytest.param(_raw_context([(b"k", b"\xc0\x80")]), id="overlong-utf8-value"),
        pytest.param(_raw_context([(b"k", b"\xed\xa0\x80")]), id="surrogate-utf8-value"),
        pytest.param(_raw_context([(b"k", b"v" * (MAX_VALUE_BYTES + 1))]), id="value-too-long"),
        pytest.param(_raw_context([(bytes([65 + i % 26, i]), b"") for i in range(MAX_ENTRIES + 1)]), id="too-many"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00", id="one-byte"),
        pytest.param(b"\x00\x01\x05abc", id="truncated-key"),
        pytest.param(b"\x00\x01\x01a\x00", id="truncated-value-length"),
        pytest.param(b"\x00\x01\x01a\x00\x05ab", id="truncated-value"),
        pytest.param(b"\x00\x00" + bytes(MAX_CONTEXT_BYTES), id="oversize"),
    ],
)
def test_context_decode_rejects(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_context(data)


def test_context_empty_is_two_zero_bytes() -> None:
    assert encode_context({}) == b"\x00\x00"
    assert decode_context(b"\x00\x00") == {}


def test_context_is_sorted_by_key_bytes_with_explicit_lengths() -> None:
    enc = encode_context({"b": "", "ab": "2", "a": "1", "\u00e9": "x"})
    assert enc == _raw_context([(b"a", b"1"), (b"ab", b"2"), (b"b", b""), (b"\xc3\xa9", b"x")])


@pytest.mark.parametrize(
    "ctx",
    [
        pytest.param({"": "x"}, id="empty-key"),
        pytest.param({"k" * (MAX_KEY_BYTES + 1): "x"}, id="key-too-long"),
        pytest.param({"k": "v" * (MAX_VALUE_BYTES + 1)}, id="value-too-long"),
        pytest.param({f"k{i}": "" for i in range(MAX_ENTRIES + 1)}, id="too-many-entries"),
        pytest.param({f"k{i}": "v" * 200 for i in range(20)}, id="encoded-too-large"),
        pytest.param({"k": 1}, id="non-string-value"),
        pytest.param({1: "v"}, id="non-string-key"),
        pytest.param({"k": "\ud800"}, id="lone-surrogate"),
    ],
)
def test_context_encode_rejects(ctx) -> None:
    with pytest.raises(ValueError):
        encode_context(ctx)


# -- layout ----------------------------------------------------------------------

SEGMENT_SIZES = [MIN_SEGMENT, 1500, 4096, 65536, MAX_SEGMENT]


@pytest.mark.parametrize("seg", SEGMENT_SIZES)
def test_layout_inverse_at_edges(seg: int) -> None:
    sizes = {0, 1, seg - 1, seg, seg + 1, 2 * seg - 1, 2 * seg, 2 * seg + 1, 7 * seg + 3, 1000 * seg}
    for p in sorted(sizes):
        c = ciphertext_size(p, seg)
        assert c == HEADER_REGION + p + TAG_BYTES * segment_count(p, seg)
        assert plaintext_size(c, seg) == p, (p, seg)


def test_layout_segment_counts() -> None:
    s = 1024
    assert [segment_count(p, s) for p in (0, 1, s - 1, s, s + 1, 2 * s, 2 * s + 1)] == [1, 1, 1, 1, 2, 2, 3]
    assert ciphertext_size(0, s) == HEADER_REGION + TAG_BYTES
    assert ciphertext_size(s, s) == HEADER_REGION + s + TAG_BYTES
    assert ciphertext_size(s + 1, s) == HEADER_REGION + s + 1 + 2 * TAG_BYTES


def _producible(seg: int, max_plain: int) -> dict[int, tuple[int, int]]:
    """Every ciphertext size a writer can produce for plaintexts up to
    ``max_plain``, with its (plaintext size, region): v1.0 for any size, and
    each compact region where its own lane admits the body (section 3.1)."""
    out: dict[int, tuple[int, int]] = {}
    for p in range(max_plain + 1):
        body = body_size(p, seg)
        for region in (HEADER_REGION, *COMPACT_REGIONS):
            if region == HEADER_REGION or region_for_size(region + body) == region:
                c = region + body
                assert out.setdefault(c, (p, region)) == (p, region), f"two objects of size {c}"
    return out


@pytest.mark.parametrize("seg", [MIN_SEGMENT, 1500, 4096])
def test_layout_every_ciphertext_size_is_inverse_or_none(seg: int) -> None:
    """Exhaustive over ~5 segments: plaintext_size is a partial inverse, and
    exactly the sizes a writer can produce (either layout) map to a size."""
    producible = _producible(seg, 5 * seg)
    for c in range(HEADER_REGION + 5 * (seg + TAG_BYTES) + 1):
        p = plaintext_size(c, seg)
        if c in producible:
            assert (p, region_for_size(c)) == producible[c], c
            assert ciphertext_size(p, seg, region_for_size(c)) == c
        else:
            assert p is None, (c, p)


#: Header sizes at every boundary that matters (the smallest real header,
#: each compact region and one byte either side, the v1.0 maximum).
NEEDS = [130, 300, COMPACT_LANES[0][1] - 1, COMPACT_LANES[0][1], COMPACT_LANES[0][1] + 1, 1000,
         COMPACT_LANES[1][1] - 1, COMPACT_LANES[1][1], COMPACT_LANES[1][1] + 1, 3000, HEADER_REGION]


@pytest.mark.parametrize("seg", [MIN_SEGMENT, 1500, 2048, 65536])
def test_layout_variable_region_keeps_size_from_ciphertext_size(seg: int) -> None:
    """FORMAT.md section 3.1, exhaustively: for every plaintext size up to
    past the compact range and every header size class, the region a writer
    picks holds the header, is the one the ciphertext size names, and the
    plaintext size comes back from the ciphertext size alone."""
    for need in NEEDS:
        for p in range(COMPACT_END + 2 * seg):
            body = body_size(p, seg)
            region = choose_region(need, body)
            assert region >= need
            c = region + body
            assert region_for_size(c) == region, (need, p)
            assert plaintext_size(c, seg) == p and plaintext_size(c, seg, region) == p, (need, p)
            if region != HEADER_REGION:
                assert c < COMPACT_END and p <= COMPACT_MAX_BODY
            # The smallest region that can hold it is chosen.
            smaller = [r for r in COMPACT_REGIONS if need <= r < region and region_for_size(r + body) == r]
            assert not smaller, (need, p, region, smaller)
            # Streaming writers that do not know the body yet write v1.0.
            assert choose_region(need, None) == HEADER_REGION


def test_layout_every_header_size_for_small_bodies() -> None:
    """Every header size 48..4096 against a spread of small bodies."""
    seg = 1024
    for need in range(48, HEADER_REGION + 1):
        for p in (0, 1, 100, 500, 1023, 1024, 1025, 1800, 2400, 2600, 3000):
            body = body_size(p, seg)
            region = choose_region(need, body)
            assert region >= need and plaintext_size(region + body, seg, region) == p


def test_layout_compact_lanes() -> None:
    """The lane table of FORMAT.md section 3.1, literally."""
    assert COMPACT_LANES == ((512, 496), (1552, 1536)) and COMPACT_END == 4112
    assert [region_for_size(c) for c in (0, 511, 512, 1551, 1552, 4111, 4112, 10**9)] == \
        [None, None, 496, 496, 1536, 1536, HEADER_REGION, HEADER_REGION]
    assert COMPACT_MAX_BODY == 2575
    # A 1 KiB object with a local-key header: 496 + 1024 + 16 bytes.
    assert choose_region(300, body_size(1024, 65536)) + body_size(1024, 65536) == 1536
    # The header given with the size must be the one the size names.
    assert plaintext_size(1536, 65536, 496) == 1024
    assert plaintext_size(1536, 65536, 1536) is None and plaintext_size(1536, 65536, HEADER_REGION) is None
    assert plaintext_size(5136, 65536, 496) is None and plaintext_size(5136, 65536, HEADER_REGION) == 1024


@FAST
@given(st.integers(0, 2**40), st.integers(MIN_SEGMENT, MAX_SEGMENT))
def test_layout_inverse_random(p: int, seg: int) -> None:
    assert plaintext_size(ciphertext_size(p, seg), seg) == p


@FAST
@given(st.integers(0, 2**40), st.integers(MIN_SEGMENT, MAX_SEGMENT))
def test_layout_plaintext_size_partial_inverse_random(c: int, seg: int) -> None:
    p = plaintext_size(c, seg)
    if p is not None:
        assert ciphertext_size(p, seg, region_for_size(c)) == c


def test_layout_impossible_sizes() -> None:
    s = 1024
    stride = s + TAG_BYTES
    for c in [0, 1, 100, 511]:  # smaller than the smallest object (the empty one, 512 bytes)
        assert plaintext_size(c, s) is None, c
    # A full segment followed by an empty (tag-only) final segment is never written.
    assert plaintext_size(HEADER_REGION + stride + TAG_BYTES, s) is None
    assert plaintext_size(1536 + stride + TAG_BYTES, s) is None
    assert plaintext_size(496 + stride + TAG_BYTES, s) == 0  # 1552 opens lane 2: the empty object there
    # A partial final segment shorter than a tag cannot exist.
    assert plaintext_size(HEADER_REGION + stride + TAG_BYTES - 1, s) is None
    assert plaintext_size(HEADER_REGION + stride + 1, s) is None
    assert plaintext_size(1536 + stride + 1, s) is None


def test_layout_offsets_and_covering() -> None:
    s = 1024
    assert segment_offset(0, s) == HEADER_REGION
    assert segment_offset(3, s) == HEADER_REGION + 3 * (s + TAG_BYTES)
    assert list(covering_segments(0, 0, s)) == []
    assert list(covering_segments(5, 5, s)) == []
    assert list(covering_segments(0, 1, s)) == [0]
    assert list(covering_segments(0, s, s)) == [0]
    assert list(covering_segments(s - 1, s + 1, s)) == [0, 1]
    assert list(covering_segments(s, 2 * s, s)) == [1]
    assert list(covering_segments(3 * s + 7, 5 * s + 1, s)) == [3, 4, 5]


# -- header ------------------------------------------------------------------------


def _header(ctx=None, wrapped=None, seg: int = 1024, dek: bytes | None = None, oid: bytes | None = None):
    dek = dek or os.urandom(32)
    oid = oid or os.urandom(32)
    keys = derive_object_keys(dek, oid, SUITE)
    ctx = {"encfs:path": "bucket/a/b.parquet", "team": "data"} if ctx is None else ctx
    wrapped = wrapped or [_wk()]
    region = encode_header(segment_size=seg, object_id=oid, context=ctx, keys=keys, wrapped_keys=wrapped)
    return region, keys, oid, ctx, wrapped


def test_header_roundtrip() -> None:
    wrapped = [_wk(b"\x02" * 40), WrappedKey("aws-kms", "arn:aws:kms:eu-west-1:1:key/ab", "", b"\x03" * 200)]
    region, keys, oid, ctx, _ = _header(wrapped=wrapped, seg=4096)
    assert len(region) == HEADER_REGION
    assert region[:4] == MAGIC
    h = parse_header(region, "p")
    assert (h.segment_size, h.object_id, h.context, h.wrapped_keys) == (4096, oid, ctx, tuple(wrapped))
    assert h.commitment == keys.commitment
    assert (h.version, h.suite, h.header_region) == (1, SUITE, HEADER_REGION)
    h.verify(keys, "p")
    # Fixed fields sit where header.py documents them.
    assert struct.unpack_from(">4sBBHII", region, 0) == (MAGIC, 1, SUITE, 0, HEADER_REGION, 4096)
    assert region[16:48] == oid
    (ctx_len,) = struct.unpack_from(">H", region, 48)
    assert region[50 : 50 + ctx_len] == encode_context(ctx)
    assert region[50 + ctx_len : 82 + ctx_len] == keys.commitment
    assert h.mac == region[82 + ctx_len : 114 + ctx_len]


def test_parsed_header_is_the_dataclass_object() -> None:
    """parse_header fills the frozen Header's fields at once (header.py):
    the result must be what Header.__init__ makes, field for field, and
    stay frozen."""
    import dataclasses

    for body in (None, 100):
        oid = os.urandom(32)
        keys = derive_object_keys(os.urandom(32), oid, SUITE)
        region = encode_header(segment_size=1024, object_id=oid, context={"encfs:path": "p", "t": "x"}, keys=keys,
                               wrapped_keys=[_wk()], body=body)
        h = parse_header(region, "p")
        made = Header(**{f.name: getattr(h, f.name) for f in dataclasses.fields(Header)})
        assert vars(h) == vars(made) and h == made and hash(h.object_id) == hash(made.object_id)
        assert {f.name for f in dataclasses.fields(Header)} == set(vars(h))
        with pytest.raises(dataclasses.FrozenInstanceError):
            h.segment_size = 1  # type: ignore[misc]
        assert repr(h) == repr(made)


def test_header_parse_ignores_bytes_after_region() -> None:
    region, keys, *_ = _header()
    h = parse_header(region + b"body bytes", None)
    h.verify(keys)


def test_header_max_wrapped_keys() -> None:
    region, keys, *_ = _header(ctx={"encfs:path": "p"}, wrapped=[_wk(b"\x05" * 60)] * MAX_WRAPPED_KEYS)
    h = parse_header(region)
    assert len(h.wrapped_keys) == MAX_WRAPPED_KEYS
    h.verify(keys)
    with pytest.raises(ValueError):
        _header(wrapped=[_wk()] * (MAX_WRAPPED_KEYS + 1))


def test_header_too_large_is_reported() -> None:
    from encfs.errors import HeaderTooLargeError

    big = [_wk(b"\x06" * 2000, key_id="k" * 100)] * 3
    with pytest.raises(HeaderTooLargeError):
        _header(wrapped=big)


def test_header_verify_rejects_other_keys() -> None:
    region, keys, oid, *_ = _header()
    h = parse_header(region)
    h.verify(keys)
    with pytest.raises(IntegrityError):
        h.verify(derive_object_keys(os.urandom(32), oid, SUITE))


def test_rewrap_keeps_mac_and_changes_only_wrapped_keys() -> None:
    region, keys, *_ = _header()
    h = parse_header(region)
    new = replace_wrapped_keys(region, h, [_wk(b"\x07" * 60, key_id="lk-other", version="4")])
    assert len(new) == HEADER_REGION
    h2 = parse_header(new)
    h2.verify(keys)
    assert h2.mac == h.mac and h2.mac_input == h.mac_input
    assert h2.wrapped_keys[0].key_id == "lk-other"


def test_version_and_suite_errors_are_unsupported_version() -> None:
    region, *_ = _header()
    for off, value in ((4, 2), (4, 0), (5, 2), (5, 0), (5, 255)):
        bad = bytearray(region)
        bad[off] = value
        with pytest.raises(UnsupportedVersionError):
            parse_header(bytes(bad), "x")


def test_not_encfs_is_format_error_naming_path() -> None:
    with pytest.raises(FormatError, match="not an encfs object at some/path") as info:
        parse_header(b"PAR1" + bytes(HEADER_REGION), "some/path")
    assert type(info.value) is FormatError


ALLOWED_PARSE_ERRORS = (FormatError, IntegrityError)  # UnsupportedVersionError is a FormatError


def _parse_only_encfs_errors(data: bytes) -> None:
    try:
        parse_header(data, "fuzz")
    except ALLOWED_PARSE_ERRORS:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=HEADER_REGION + 64))
def test_parse_fuzz_random_bytes(data: bytes) -> None:
    _parse_only_encfs_errors(data)
    _parse_only_encfs_errors(MAGIC + data)
    _parse_only_encfs_errors(MAGIC + b"\x01\x01" + data)


_VALID_REGION, _VALID_KEYS, *_rest = _header()


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, HEADER_REGION - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, HEADER_REGION + 16))
def test_parse_fuzz_mutated_valid_header(edits: list[tuple[int, int]], cut: int) -> None:
    """Mutations of a real header: parse never crashes, and a mutation that
    parses and verifies must be a no-op on the authenticated part."""
    data = bytearray(_VALID_REGION)
    for pos, value in edits:
        data[pos] = value
    data = bytes(data[:cut])
    try:
        h = parse_header(data, "fuzz")
    except ALLOWED_PARSE_ERRORS:
        return
    try:
        h.verify(_VALID_KEYS, "fuzz")
    except IntegrityError:
        return
    # Verified: the MAC-covered bytes must be unchanged.
    assert h.mac_input + h.mac == _VALID_REGION[: len(h.mac_input) + 32]


def test_parse_fuzz_every_prefix_length() -> None:
    for n in range(HEADER_REGION + 1):
        _parse_only_encfs_errors(_VALID_REGION[:n])
    for n in range(FIXED_BYTES, HEADER_REGION):
        with pytest.raises(IntegrityError):
            parse_header(_VALID_REGION[:n])


# -- v1.1 (compact) headers: the same fuzz, plus the region field -----------------------


def _compact(body: int, wrapped=None) -> tuple[bytes, object]:
    dek, oid = os.urandom(32), os.urandom(32)
    keys = derive_object_keys(dek, oid, SUITE)
    region = encode_header(segment_size=1024, object_id=oid, context={"encfs:path": "bucket/a/b.json"}, keys=keys,
                           wrapped_keys=wrapped or [_wk()], body=body)
    return region, keys


_LANE1, _LANE1_KEYS = _compact(100)
_LANE2, _LANE2_KEYS = _compact(100, [_wk(key_id=f"lk-{i}") for i in range(6)])  # header > 496 bytes


def test_compact_headers_parse_and_verify() -> None:
    for region, keys, size in ((_LANE1, _LANE1_KEYS, 496), (_LANE2, _LANE2_KEYS, 1536)):
        assert len(region) == size and region[4] == 0x11
        h = parse_header(region + b"body bytes after the header")
        h.verify(keys)
        assert (h.version, h.minor, h.header_region, h.format_name) == (1, 1, size, "1.1")
    assert parse_header(_VALID_REGION).format_name == "1.0"


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["lane1", "lane2"]),
       st.lists(st.tuples(st.integers(0, 1535), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 1536 + 16))
def test_parse_fuzz_mutated_compact_header(lane: str, edits: list[tuple[int, int]], cut: int) -> None:
    """Mutations of real v1.1 headers: parse never crashes, and one that
    parses and verifies left the authenticated part unchanged."""
    valid, keys = (_LANE1, _LANE1_KEYS) if lane == "lane1" else (_LANE2, _LANE2_KEYS)
    data = bytearray(valid + bytes(64))  # a body after it, as a reader sees a compact object
    for pos, value in edits:
        data[pos % len(valid)] = value
    data = bytes(data[:cut])
    try:
        h = parse_header(data, "fuzz")
    except ALLOWED_PARSE_ERRORS:
        return
    try:
        h.verify(keys, "fuzz")
    except IntegrityError:
        return
    assert h.mac_input + h.mac == valid[: len(h.mac_input) + 32]
    assert h.header_region == len(valid)


def test_compact_every_prefix_length_and_region_field() -> None:
    for valid in (_LANE1, _LANE2):
        for n in range(len(valid) + 1):
            _parse_only_encfs_errors(valid[:n])
        for n in range(FIXED_BYTES, len(valid)):
            with pytest.raises(IntegrityError):
                parse_header(valid[:n])
        # The region length field: only the version's own sizes parse; the
        # other compact size parses only if the bytes happen to fit, and then
        # its MAC input differs (the field is authenticated).
        for value in (0, 1, 48, 495, 497, 1535, 1537, 4095, 4096, 4097, 2**32 - 1):
            bad = bytearray(valid + bytes(4096))
            struct.pack_into(">I", bad, 8, value)
            with pytest.raises(IntegrityError):
                parse_header(bytes(bad))
    # v1.0 <-> v1.1: the version byte admits only its own regions.
    for valid, version in ((_LANE1, 0x01), (_VALID_REGION, 0x11)):
        bad = bytearray(valid + bytes(4096))
        bad[4] = version
        with pytest.raises(IntegrityError):
            parse_header(bytes(bad))
    other = bytearray(_LANE1 + bytes(1536))
    struct.pack_into(">I", other, 8, 1536)  # the other compact size: parses (zero padding), MAC fails
    with pytest.raises(IntegrityError):
        parse_header(bytes(other)).verify(_LANE1_KEYS)
    for version in (0x02, 0x12, 0x21, 0x10, 0xFF):
        bad = bytearray(_LANE1)
        bad[4] = version
        with pytest.raises(UnsupportedVersionError):
            parse_header(bytes(bad))


# -- commitment and whole-object helpers ----------------------------------------------


def test_commitment_ciphertext_cannot_verify_under_second_dek() -> None:
    dek1, dek2 = os.urandom(32), os.urandom(32)
    oid = os.urandom(32)
    blob = encrypt_object(dek=dek1, object_id=oid, context={"encfs:path": "p"}, wrapped_keys=[_wk()],
                          plaintext=b"secret" * 500, segment_size=1024)
    assert decrypt_object(blob, dek1, "p")[1] == b"secret" * 500
    with pytest.raises(IntegrityError):
        decrypt_object(blob, dek2, "p")
    k1, k2 = derive_object_keys(dek1, oid, SUITE), derive_object_keys(dek2, oid, SUITE)
    assert not k2.matches(k1.commitment)
    # Even a header re-MACed under the second DEK keeps the first commitment
    # unless the attacker knows dek1; and the commitment is checked first.
    h = parse_header(blob)
    with pytest.raises(IntegrityError):
        h.verify(k2)


def test_kdf_separates_objects_and_labels() -> None:
    dek = os.urandom(32)
    a = derive_object_keys(dek, b"\x00" * 32, SUITE)
    b = derive_object_keys(dek, b"\x00" * 31 + b"\x01", SUITE)
    values = {a.body_key, a.mac_key, a.commitment, b.body_key, b.mac_key, b.commitment}
    assert len(values) == 6 and all(len(v) == 32 for v in values)
    assert derive_object_keys(dek, b"\x00" * 32, SUITE) == a
    with pytest.raises(ValueError):
        derive_object_keys(dek[:31], b"\x00" * 32, SUITE)
    with pytest.raises(ValueError):
        derive_object_keys(dek, b"\x00" * 31, SUITE)


def test_object_keys_repr_hides_material() -> None:
    keys = derive_object_keys(b"\x11" * 32, b"\x22" * 32, SUITE)
    r = repr(keys)
    for secret in (keys.body_key, keys.mac_key, keys.commitment):
        assert secret.hex() not in r and repr(secret) not in r


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 5 * 1024, 5 * 1024 + 17])
def test_encrypt_decrypt_object_sizes(size: int) -> None:
    dek, oid, data = os.urandom(32), os.urandom(32), os.urandom(size)
    blob = encrypt_object(dek=dek, object_id=oid, context={"encfs:path": "x"}, wrapped_keys=[_wk()],
                          plaintext=data, segment_size=1024)
    header = parse_header(blob)
    assert len(blob) == ciphertext_size(size, 1024, header.header_region)
    assert header.header_region == region_for_size(len(blob))
    assert header.header_region == {0: 496, 1: 496, 1023: 496, 1024: 496, 1025: 1536}.get(size, HEADER_REGION)
    assert plaintext_size(len(blob), 1024) == size
    header, out = decrypt_object(blob, dek, "x")
    assert out == data and header.object_id == oid


# -- segment cipher ---------------------------------------------------------------------


def test_segment_nonce_layout() -> None:
    from encfs.format import SegmentCipher

    assert SegmentCipher.nonce(0, False) == bytes(12)
    assert SegmentCipher.nonce(1, True) == b"\x00" * 7 + b"\x01" + b"\x00\x00\x00\x01"
    assert SegmentCipher.nonce(2**64 - 2, False) == b"\xff" * 7 + b"\xfe" + bytes(4)
    for bad in (-1, 2**64 - 1, 2**64):
        with pytest.raises(ValueError):
            SegmentCipher.nonce(bad, False)


def test_segment_open_checks_index_final_flag_and_tag() -> None:
    import pickle

    from encfs.format import SegmentAuthError, SegmentCipher

    key = os.urandom(32)
    c = SegmentCipher(key)
    sealed = c.seal(3, b"payload", False)
    assert len(sealed) == len(b"payload") + TAG_BYTES
    assert c.open(3, sealed, False) == b"payload"
    for index, final, data in [(3, True, sealed), (2, False, sealed), (4, False, sealed), (3, False, sealed[:-1]),
                               (3, False, sealed[:TAG_BYTES - 1]), (3, False, b""), (3, False, sealed + b"\x00")]:
        with pytest.raises(SegmentAuthError):
            c.open(index, data, final)
    with pytest.raises(SegmentAuthError):
        SegmentCipher(os.urandom(32)).open(3, sealed, False)
    empty_final = c.seal(0, b"", True)
    assert len(empty_final) == TAG_BYTES and c.open(0, empty_final, True) == b""
    assert key.hex() not in repr(c)
    with pytest.raises(TypeError):
        pickle.dumps(c)


# -- limits surface as encfs errors -------------------------------------------------------


def test_oversize_context_in_header_is_header_too_large() -> None:
    from encfs.errors import EncfsError, HeaderTooLargeError

    for ctx in ({"encfs:path": "p" * (MAX_VALUE_BYTES + 1)}, {f"k{i}": "v" * 200 for i in range(20)}):
        with pytest.raises(HeaderTooLargeError) as info:
            _header(ctx=ctx)
        assert isinstance(info.value, EncfsError)


def test_path_too_long_for_header_through_fs(efs_mem, memfs) -> None:
    """A bound path longer than a context value is an encfs error at write
    time (never a bare ValueError), and nothing is left at the target."""
    from encfs.errors import HeaderTooLargeError

    ok = "/" + "/".join(["d" * 99] * 20)
    efs_mem.pipe_file(ok, b"fits")
    assert efs_mem.cat_file(ok) == b"fits"
    long = "/" + "/".join(["d" * 99] * 21)
    with pytest.raises(HeaderTooLargeError):
        efs_mem.pipe_file(long, b"too long a path")
    with pytest.raises(HeaderTooLargeError), efs_mem.open(long, "wb") as f:
        f.write(b"x")
    with pytest.raises(HeaderTooLargeError):
        efs_mem.cp_file(ok, long)
    assert not memfs.exists(long) and not efs_mem.exists(long)
    assert [p for p in memfs.find("/") if p != ok] == []


@pytest.mark.parametrize("context", [{"": "v"}, {"k": "v" * (MAX_VALUE_BYTES + 1)},
                                     {f"k{i}": "v" * 200 for i in range(20)}],
                         ids=["empty-key", "long-value", "too-large"])
def test_invalid_filesystem_context_is_configuration_error(memfs, encfs_home, context) -> None:
    from encfs import EncryptedFileSystem
    from encfs.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), context=context, skip_instance_cache=True)
