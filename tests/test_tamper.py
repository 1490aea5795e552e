"""The tamper matrix, through the real filesystem (DESIGN.md section 2).

An attacker with write access to the storage changes stored ciphertext
behind encfs's back; every read (``cat_file``, ``open().read()``, partial
ranges, ``cat_ranges``) must then either raise the right encfs error or, for
a partial read that does not touch the damaged part, return exactly the
original bytes.  A read never returns anything else.

Targets: a memory filesystem and the local disk, each read whole-object
(small objects are fetched in one request) and by ranged requests
(``SMALL_OBJECT`` forced to 0), plus memory without the data-key cache, and
memory read as an async target is (several overlapping ranged requests
through the Readahead, conftest's ``prefetching``).
Objects use 1 KiB segments so the matrix stays small and fast.
"""

from __future__ import annotations

import base64
import copy
import os
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import encfs.errors
import encfs.file
from encfs import EncryptedFileSystem
from encfs.errors import (
    ConfigurationError,
    ContextMismatchError,
    EncfsError,
    FormatError,
    IntegrityError,
    KeyServiceError,
    KeyStateError,
    NoUsableKeyError,
    UnsupportedVersionError,
)
from encfs.format import HEADER_REGION, TAG_BYTES, encrypt_object, parse_header
from encfs.format.context import PATH_KEY
from encfs.keystore import LocalKeystore

SEG = 1024
STRIDE = SEG + TAG_BYTES
NSEG = 6
SIZE = (NSEG - 1) * SEG + 300  # six segments, the last one partial

ErrorTypes = type[BaseException] | tuple[type[BaseException], ...]


@dataclass
class Target:
    name: str
    efs: EncryptedFileSystem
    root: str
    home: Path
    #: Applied to siblings too (the prefetching target's I/O).
    wrap: Callable[[EncryptedFileSystem], EncryptedFileSystem] = lambda efs: efs

    @property
    def raw(self) -> Any:
        return self.efs.fs

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def put_raw(self, path: str, data: bytes) -> None:
        self.raw.pipe_file(path, data)

    def get_raw(self, path: str) -> bytes:
        return self.raw.cat_file(path)

    def sibling(self, **kwargs: Any) -> EncryptedFileSystem:
        """Another filesystem over the same target storage."""
        opts: dict[str, Any] = {"keystore": str(self.home), "segment_size": SEG, "skip_instance_cache": True}
        opts.update(kwargs)
        return self.wrap(EncryptedFileSystem(fs=self.raw, **opts))


TARGETS = ["memory", "memory-ranged", "memory-nocache", "local", "local-ranged", "memory-prefetch-ranged"]


@pytest.fixture(params=TARGETS)
def target(request, memfs, tmp_path, encfs_home, monkeypatch, prefetching) -> Target:
    name = request.param
    # Thousands of failed unwraps would each append (and fsync) an audit
    # record; auditing has its own tests, here it only costs time.
    monkeypatch.setenv("ENCFS_AUDIT_LOG", "off")
    if name.endswith("-ranged"):
        # Force the ranged-read path: the opening probe brings the header
        # only, every segment is a ranged read, and the final segment is
        # authenticated only when a read reaches it (FORMAT.md section 7).
        monkeypatch.setattr(encfs.file, "SMALL_OBJECT", 0)
        monkeypatch.setattr(encfs.file, "PROBE_BYTES", HEADER_REGION)
    opts: dict[str, Any] = {"keystore": str(encfs_home), "segment_size": SEG, "skip_instance_cache": True}
    if name.endswith("-nocache"):
        opts["cache"] = False
    if name.startswith("memory-prefetch"):
        # As S3: overlapping ranged requests through the Readahead (conftest).
        return Target(name, prefetching(EncryptedFileSystem(fs=memfs, **opts)), "/tamper", encfs_home,
                      prefetching)
    if name.startswith("memory"):
        return Target(name, EncryptedFileSystem(fs=memfs, **opts), "/tamper", encfs_home)
    root = tmp_path / "store"
    root.mkdir()
    return Target(name, EncryptedFileSystem(target_protocol="file", **opts), str(root), encfs_home)


# -- the oracle ---------------------------------------------------------------------

#: Partial plaintext ranges: first byte, across a boundary, a middle segment,
#: the tail, a range inside the last segment.
PARTIAL_RANGES = [(0, 1), (SEG - 5, SEG + 5), (2 * SEG + 10, 3 * SEG + 20), (SIZE - 7, SIZE), (SIZE - 200, SIZE - 100)]


def _read_open(efs: EncryptedFileSystem, path: str, start: int | None, end: int | None) -> bytes:
    with efs.open(path, "rb") as f:
        if start is None:
            return f.read()
        f.seek(start)
        return f.read(end - start)


def _read_ranges(efs: EncryptedFileSystem, path: str, start: int, end: int) -> bytes:
    (out,) = efs.cat_ranges([path], [start], [end], on_error="raise")
    return out


def attempts(efs: EncryptedFileSystem, path: str, *, thorough: bool) -> Iterator[tuple[str, int | None, int | None, Callable[[], bytes]]]:
    """(label, start, end, read) for every way of reading ``path``."""
    yield "cat_file", None, None, lambda: efs.cat_file(path)
    yield "open.read", None, None, lambda: _read_open(efs, path, None, None)
    ranges = PARTIAL_RANGES if thorough else PARTIAL_RANGES[1:2]
    for a, b in ranges:
        yield "cat_file[a:b]", a, b, lambda a=a, b=b: efs.cat_file(path, start=a, end=b)
        if thorough:
            yield "open.seek.read", a, b, lambda a=a, b=b: _read_open(efs, path, a, b)
            yield "cat_ranges", a, b, lambda a=a, b=b: _read_ranges(efs, path, a, b)


def tail_damage(t: Target) -> bool | str:
    """``partial_must_fail`` for damage to the end of an object (truncation,
    extension, the final segment): read whole at open, every read fails; on
    the ranged path only reads that reach the end must fail (the final
    segment is authenticated then), and the others must return exact bytes."""
    return "end" if t.name.endswith("-ranged") else True


def check_reads(efs: EncryptedFileSystem, path: str, plain: bytes, expected: ErrorTypes, *,
                partial_must_fail: bool | str, thorough: bool = True, exact: type | None = None) -> list[str]:
    """Problems found (empty list = every read behaved).  ``partial_must_fail="end"``:
    partial reads must fail when they reach the end of ``plain``."""
    problems: list[str] = []
    for label, a, b, read in attempts(efs, path, thorough=thorough):
        try:
            out = read()
        except expected as exc:
            if exact is not None and type(exc) is not exact:
                problems.append(f"{label}[{a}:{b}] raised {type(exc).__name__}, expected exactly {exact.__name__}")
            continue
        except Exception as exc:  # noqa: BLE001 - any other error is a finding
            problems.append(f"{label}[{a}:{b}] raised {type(exc).__name__}: {exc}")
            continue
        if a is None:
            problems.append(f"{label} returned {len(out)} bytes of a damaged object")
        elif out != plain[a:b]:
            problems.append(f"{label}[{a}:{b}] returned WRONG BYTES")
        elif partial_must_fail == "end":
            if b is None or b >= len(plain):
                problems.append(f"{label}[{a}:{b}] reached the end of a damaged object and succeeded")
        elif partial_must_fail:
            problems.append(f"{label}[{a}:{b}] succeeded on an object with a damaged header")
    return problems


def _plain(seed: int, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def _write(t: Target, name: str, plain: bytes) -> tuple[str, bytes]:
    path = t.path(name)
    t.efs.pipe_file(path, plain)
    assert t.efs.cat_file(path) == plain  # positive control
    return path, t.get_raw(path)


# -- header fields ---------------------------------------------------------------------


def header_fields(raw: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges of every header field, including length prefixes (header.py layout)."""
    (ctx_len,) = struct.unpack_from(">H", raw, 48)
    f = {
        "magic": (0, 4), "version": (4, 5), "suite": (5, 6), "flags": (6, 8), "region_length": (8, 12),
        "segment_size": (12, 16), "object_id": (16, 48), "context_length": (48, 50),
        "context": (50, 50 + ctx_len), "commitment": (50 + ctx_len, 82 + ctx_len),
        "mac": (82 + ctx_len, 114 + ctx_len), "wrapped_count": (114 + ctx_len, 115 + ctx_len),
    }
    pos = 115 + ctx_len
    n = 1 + raw[pos]
    f["wrapped_provider"] = (pos, pos + n)
    pos += n
    n = 2 + struct.unpack_from(">H", raw, pos)[0]
    f["wrapped_key_id"] = (pos, pos + n)
    pos += n
    n = 1 + raw[pos]
    f["wrapped_version"] = (pos, pos + n)
    pos += n
    n = 2 + struct.unpack_from(">H", raw, pos)[0]
    f["wrapped_blob"] = (pos, pos + n)
    f["padding"] = (pos + n, struct.unpack_from(">I", raw, 8)[0])  # to the region's end (v1.0 or v1.1)
    return f


#: Fields outside the header MAC that name a root key: damage there can only
#: be seen as "this object is wrapped under a key we do not have" (a key
#: error naming the key) or as a failed unwrap (IntegrityError).
KEY_NAMING = (IntegrityError, KeyServiceError)
# A damaged provider name ("locam") currently surfaces as the keyring's
# ConfigurationError("unknown key provider scheme"): still an encfs error
# and never plaintext, though NoUsableKeyError would name the object.
EXPECTED: dict[str, tuple[ErrorTypes, type | None]] = {
    "magic": (FormatError, FormatError),
    # Flipping bit 4 turns v1.0 (0x01) into v1.1 (0x11) and back: a known
    # version whose region size then does not match (IntegrityError).
    "version": ((UnsupportedVersionError, IntegrityError), None),
    "suite": (UnsupportedVersionError, None),
    "wrapped_provider": ((IntegrityError, KeyServiceError, ConfigurationError), None),
    "wrapped_key_id": (KEY_NAMING, None),
    "wrapped_version": (KEY_NAMING, None),
}
FIELDS = ["magic", "version", "suite", "flags", "region_length", "segment_size", "object_id", "context_length",
          "context", "commitment", "mac", "wrapped_count", "wrapped_provider", "wrapped_key_id",
          "wrapped_version", "wrapped_blob", "padding"]


#: Small fields whose bits mean different things: every bit is flipped.
ALL_BITS = {"magic", "version", "suite", "flags", "region_length", "segment_size", "context_length",
            "wrapped_count"}


def _bits_for(t: Target, field: str, pos: int) -> list[int]:
    # Every bit of the small fixed fields on the main target; elsewhere one
    # bit per byte, rotating so that every bit position is exercised.
    return list(range(8)) if t.name == "memory" and field in ALL_BITS else [pos % 8]


@pytest.mark.parametrize("field", FIELDS)
def test_header_bit_flips(target: Target, field: str) -> None:
    plain = _plain(1)
    path, raw = _write(target, "obj.bin", plain)
    start, end = header_fields(raw)[field]
    assert end > start
    expected, exact = EXPECTED.get(field, (IntegrityError, IntegrityError))
    positions = range(start, end)
    if field == "padding" and target.name != "memory":
        positions = range(start, end, 61)  # sampled; the memory target covers every byte
    problems: list[str] = []
    for pos in positions:
        for bit in _bits_for(target, field, pos):
            bad = bytearray(raw)
            bad[pos] ^= 1 << bit
            target.put_raw(path, bytes(bad))
            # Every read kind on a sample of positions, whole reads on all.
            thorough = field != "padding" and (pos - start) % 4 == 0 and bit == pos % 8
            found = check_reads(target.efs, path, plain, expected, partial_must_fail=True, thorough=thorough,
                                exact=exact)
            problems += [f"byte {pos} bit {bit}: {p}" for p in found]
    target.put_raw(path, raw)
    assert target.efs.cat_file(path) == plain  # the original still reads
    assert not problems, "\n".join(problems[:20])


def test_header_flip_magic_is_format_error_naming_path(target: Target) -> None:
    plain = _plain(2)
    path, raw = _write(target, "m.bin", plain)
    target.put_raw(path, b"PAR1" + raw[4:])
    with pytest.raises(FormatError, match="not an encfs object") as info:
        target.efs.cat_file(path)
    assert type(info.value) is FormatError and "m.bin" in str(info.value)


def test_not_encfs_data(target: Target) -> None:
    """Short and long plaintext files are FormatError, never passed through."""
    for name, data in [("short.txt", b"hello"), ("long.csv", b"a,b\n1,2\n" * 1000), ("par.parquet", b"PAR1" * 2000)]:
        path = target.path(name)
        target.put_raw(path, data)
        problems = check_reads(target.efs, path, data, FormatError, partial_must_fail=True, exact=FormatError)
        assert not problems, (name, problems)


# -- body segments ----------------------------------------------------------------------


def _segment_positions() -> dict[str, list[int]]:
    """Body offsets (relative to HEADER_REGION) to damage, per segment region."""
    last_len = SIZE - (NSEG - 1) * SEG + TAG_BYTES
    seg = {
        "first": [0, 1, SEG // 2, SEG - 1],
        "first-tag": [SEG + k for k in range(TAG_BYTES)],
        "middle": [2 * STRIDE + k for k in (0, 7, SEG - 1)],
        "middle-tag": [3 * STRIDE + SEG + k for k in range(TAG_BYTES)],
        "last": [(NSEG - 1) * STRIDE + k for k in (0, 150, last_len - TAG_BYTES - 1)],
        "last-tag": [(NSEG - 1) * STRIDE + last_len - TAG_BYTES + k for k in range(TAG_BYTES)],
    }
    return seg


@pytest.mark.parametrize("region", list(_segment_positions()))
def test_segment_bit_flips(target: Target, region: str) -> None:
    plain = _plain(3)
    path, raw = _write(target, "seg.bin", plain)
    problems: list[str] = []
    for rel in _segment_positions()[region]:
        pos = HEADER_REGION + rel
        for bit in (0, 7) if target.name == "memory" else (rel % 8,):
            bad = bytearray(raw)
            bad[pos] ^= 1 << bit
            target.put_raw(path, bytes(bad))
            found = check_reads(target.efs, path, plain, IntegrityError,
                                partial_must_fail=region.startswith("last") and tail_damage(target),
                                exact=IntegrityError)
            problems += [f"offset {pos} bit {bit}: {p}" for p in found]
    assert not problems, "\n".join(problems[:20])


def test_damaged_middle_segment_fails_only_reads_that_cover_it(target: Target) -> None:
    plain = _plain(4)
    path, raw = _write(target, "mid.bin", plain)
    bad = bytearray(raw)
    bad[HEADER_REGION + 2 * STRIDE + 3] ^= 0x10
    target.put_raw(path, bytes(bad))
    assert target.efs.cat_file(path, start=0, end=SEG) == plain[:SEG]
    assert target.efs.cat_file(path, start=4 * SEG, end=SIZE) == plain[4 * SEG :]
    for a, b in [(2 * SEG, 2 * SEG + 1), (SEG, 4 * SEG), (0, SIZE)]:
        with pytest.raises(IntegrityError):
            target.efs.cat_file(path, start=a, end=b)
    # A small read-ahead block so the first read stays inside segments 0-1.
    with target.efs.open(path, "rb", block_size=SEG) as f:
        assert f.read(100) == plain[:100]
        with pytest.raises(IntegrityError):
            f.read()


# -- truncation and extension ----------------------------------------------------------------


def _truncation_points(ct_size: int) -> list[int]:
    points = {1, 2, 3, 4, 5, 47, 48, 49, 100, 200, HEADER_REGION // 2, HEADER_REGION - 1, HEADER_REGION,
              HEADER_REGION + 1, HEADER_REGION + TAG_BYTES - 1, HEADER_REGION + TAG_BYTES, ct_size - 1}
    for i in range(1, NSEG):
        b = HEADER_REGION + i * STRIDE
        points |= {b - TAG_BYTES - 1, b - TAG_BYTES, b - 1, b, b + 1, b + TAG_BYTES - 1, b + TAG_BYTES,
                   b + TAG_BYTES + 1, b + STRIDE // 2}
    return sorted(p for p in points if 0 < p < ct_size)


def test_truncation(target: Target) -> None:
    plain = _plain(5)
    path, raw = _write(target, "trunc.bin", plain)
    problems: list[str] = []
    for cut in _truncation_points(len(raw)):
        target.put_raw(path, raw[:cut])
        # Cut inside the header: every read fails at open.
        must = True if cut < HEADER_REGION else tail_damage(target)
        found = check_reads(target.efs, path, plain, IntegrityError, partial_must_fail=must, exact=IntegrityError)
        problems += [f"cut at {cut}: {p}" for p in found]
    assert not problems, "\n".join(problems[:20])


def test_truncation_to_empty_is_format_error(target: Target) -> None:
    plain = _plain(6)
    path, _ = _write(target, "empty.bin", plain)
    target.put_raw(path, b"")
    problems = check_reads(target.efs, path, plain, FormatError, partial_must_fail=True, exact=FormatError)
    assert not problems, problems


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG])
def test_truncate_or_extend_objects_of_edge_sizes(target: Target, size: int) -> None:
    plain = _plain(7, size)
    path, raw = _write(target, f"edge{size}.bin", plain)
    region = parse_header(raw).header_region  # compact (v1.1) for the small sizes
    cases = {
        "drop-1": raw[:-1], "drop-tag": raw[:-TAG_BYTES], "drop-last-segment": raw[: region + max(0, (size - 1) // SEG) * STRIDE],
        "append-1": raw + b"\x00", "append-tag": raw + raw[-TAG_BYTES:], "append-stride": raw + raw[-STRIDE:],
        "append-zero-stride": raw + bytes(STRIDE),
    }
    problems: list[str] = []
    for label, data in cases.items():
        if data == raw:
            continue
        target.put_raw(path, data)
        try:
            out = target.efs.cat_file(path)
        except IntegrityError:
            pass
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{label}: {type(exc).__name__}: {exc}")
        else:
            problems.append(f"{label}: returned {len(out)} bytes")
        try:
            with target.efs.open(path, "rb") as f:
                f.read()
            problems.append(f"{label}: open().read() succeeded")
        except IntegrityError:
            pass
    assert not problems, problems


@pytest.mark.parametrize("extra", [b"\x00", b"x" * TAG_BYTES, b"y" * (STRIDE - 1), b"z" * STRIDE, b"w" * (3 * STRIDE + 5)])
def test_appended_bytes(target: Target, extra: bytes) -> None:
    plain = _plain(8)
    path, raw = _write(target, "app.bin", plain)
    target.put_raw(path, raw + extra)
    problems = check_reads(target.efs, path, plain, IntegrityError, partial_must_fail=tail_damage(target),
                           exact=IntegrityError)
    assert not problems, problems


# -- compact (v1.1) headers: FORMAT.md section 3.1 ------------------------------------------

#: Plaintext sizes whose objects get each compact region with 1 KiB segments:
#: one segment in the 496-byte lane, two in the 1536-byte lane.
COMPACT = {"lane-496": 700, "lane-1536": SEG + 476}


def _write_compact(t: Target, lane: str) -> tuple[str, bytes, bytes]:
    plain = _plain(20, COMPACT[lane])
    path, raw = _write(t, f"{lane}.bin", plain)
    assert struct.unpack_from(">BBHI", raw, 4) == (0x11, 1, 0, int(lane.split("-")[1]))
    return path, raw, plain


@pytest.mark.parametrize("lane", sorted(COMPACT))
@pytest.mark.parametrize("field", FIELDS)
def test_compact_header_bit_flips(target: Target, field: str, lane: str) -> None:
    """Every bit of the small fields and one per byte elsewhere, as for v1.0:
    the compact header defends itself exactly like the 4096-byte one."""
    if target.name.endswith("-ranged") and field not in ALL_BITS:
        pytest.skip("a compact object is always read whole; the ranged targets add nothing here")
    path, raw, plain = _write_compact(target, lane)
    start, end = header_fields(raw)[field]
    if field == "padding":
        assert end == int(lane.split("-")[1]) and end > start
    expected, exact = EXPECTED.get(field, (IntegrityError, IntegrityError))
    positions = range(start, end, 1 if field != "padding" or target.name == "memory" else 61)
    problems: list[str] = []
    for pos in positions:
        for bit in _bits_for(target, field, pos):
            bad = bytearray(raw)
            bad[pos] ^= 1 << bit
            target.put_raw(path, bytes(bad))
            found = check_reads(target.efs, path, plain, expected, partial_must_fail=True, thorough=False, exact=exact)
            problems += [f"byte {pos} bit {bit}: {p}" for p in found]
    target.put_raw(path, raw)
    assert target.efs.cat_file(path) == plain
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("lane", sorted(COMPACT))
def test_compact_truncation_and_extension_at_every_length(target: Target, lane: str) -> None:
    """Cut at every byte (the header too) and extend by 1..STRIDE bytes:
    IntegrityError, or FormatError for the empty object, never other bytes
    (a ranged read before the end may return the original ones).  Cuts
    and extensions move the size into another lane or out of the compact
    range, where the header's region no longer matches the size."""
    path, raw, plain = _write_compact(target, lane)
    step = 1 if target.name == "memory" else 37
    problems: list[str] = []
    variants = [(f"cut {n}", raw[:n]) for n in range(0, len(raw), step)]
    variants += [(f"extend {k}", raw + bytes(k)) for k in range(1, STRIDE + 1, step)]
    for label, data in variants:
        target.put_raw(path, data)
        for how, read in (("cat", lambda: target.efs.cat_file(path)),
                          ("range", lambda: target.efs.cat_file(path, start=0, end=10))):
            try:
                out = read()
            except (IntegrityError, FormatError) as exc:
                if data and type(exc) is not IntegrityError:
                    problems.append(f"{label} {how}: {type(exc).__name__}")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{label} {how}: {type(exc).__name__}: {exc}")
            else:
                # A range before the end may come back when it is exactly
                # the original bytes (segments authenticated at their index;
                # the end is checked by reads that reach it, FORMAT.md 7).
                if how == "cat" or out != plain[:10]:
                    problems.append(f"{label} {how}: returned {len(out)} bytes")
    assert not problems, problems[:20]


REGION_VALUES = [0, 1, 48, 495, 496, 497, 1535, 1536, 1537, 4095, 4096, 4097, 2**31, 2**32 - 1]


@pytest.mark.parametrize("kind", ["v1.0", "lane-496", "lane-1536"])
def test_region_length_field_tampering(target: Target, kind: str) -> None:
    """The region length (offset 8) set to every interesting value, with the
    version byte left alone or switched to the other layout's (v1.0 <->
    v1.1 confusion): IntegrityError (or an unsupported version), never data."""
    if kind == "v1.0":
        plain = _plain(21)
        path, raw = _write(target, "v10.bin", plain)
        assert raw[4] == 0x01
    else:
        path, raw, plain = _write_compact(target, kind)
    problems: list[str] = []
    for version in (raw[4], 0x01, 0x11):
        for value in REGION_VALUES:
            bad = bytearray(raw)
            bad[4] = version
            struct.pack_into(">I", bad, 8, value)
            if bytes(bad) == raw:
                continue
            target.put_raw(path, bytes(bad))
            found = check_reads(target.efs, path, plain, (IntegrityError, UnsupportedVersionError),
                                partial_must_fail=True, thorough=False)
            problems += [f"version {version:#x} region {value}: {p}" for p in found]
    assert not problems, problems[:20]


def _relayout(raw: bytes, version: int, region: int) -> bytes:
    """An attacker's re-layout without the key: same header bytes, padding
    grown or shrunk to ``region``, version and region fields rewritten."""
    old = struct.unpack_from(">I", raw, 8)[0]
    head = bytearray(raw[:old].rstrip(b"\x00")) if region < old else bytearray(raw[:old])
    head[4] = version
    struct.pack_into(">I", head, 8, region)
    head = head[:region] + bytes(max(0, region - len(head)))
    return bytes(head) + raw[old:]


def test_v1_v11_confusion(target: Target) -> None:
    """A compact object laid out as v1.0 (4096-byte region) and a v1.0
    object squeezed into a compact region, each with the version byte that
    matches its new layout so the sizes map: the header MAC covers version
    and region length, so both fail authentication."""
    path, raw, plain = _write_compact(target, "lane-496")
    grown = _relayout(raw, 0x01, HEADER_REGION)
    assert len(grown) == HEADER_REGION + len(raw) - 496
    small_plain = _plain(22, 300)
    v10 = _write(target, "v10-small.bin", small_plain)[1]  # compact, then re-laid as v1.1 lane 2
    cases = {"v1.1 as v1.0": (path, grown, plain),
             "v1.1 lane 496 as lane 1536": (path, _relayout(raw, 0x11, 1536), plain)}
    big = _plain(23)
    bpath, braw = _write(target, "v10-big.bin", big)
    cases["v1.0 as v1.1"] = (bpath, _relayout(braw, 0x11, 1536)[:4111], big)
    problems: list[str] = []
    for label, (p, data, original) in cases.items():
        target.put_raw(p, data)
        problems += [f"{label}: {x}" for x in check_reads(target.efs, p, original, IntegrityError,
                                                           partial_must_fail=True, thorough=False,
                                                           exact=IntegrityError)]
    assert v10[4] == 0x11
    assert not problems, problems[:20]


def test_v1_0_small_objects_written_before_v1_1_still_read(target: Target, monkeypatch) -> None:
    """Objects an encfs before v1.1 wrote (4096-byte region whatever the
    size) keep their sizes in listings and read back, next to v1.1 ones."""
    import encfs.format.header

    sizes = [0, 1, 700, SEG, SEG + 476, 2 * SEG + 900, 3000]
    monkeypatch.setattr(encfs.format.header, "choose_region", lambda need, body: HEADER_REGION)
    old = {n: _write(target, f"old-{n}.bin", _plain(24 + n, n)) for n in sizes}
    monkeypatch.undo()
    new = {n: _write(target, f"new-{n}.bin", _plain(24 + n, n)) for n in sizes}
    listing = {e["name"].rsplit("/", 1)[-1]: e["size"] for e in target.efs.ls(target.root, detail=True)}
    for n in sizes:
        assert old[n][1][4] == 0x01 and len(old[n][1]) >= HEADER_REGION + 16
        assert listing[f"old-{n}.bin"] == listing[f"new-{n}.bin"] == n
        assert target.efs.cat_file(old[n][0]) == target.efs.cat_file(new[n][0]) == _plain(24 + n, n)
    assert {new[n][1][4] for n in sizes} == {0x11, 0x01}  # 3000 bytes no longer fit a compact lane


# -- reordering and duplication ------------------------------------------------------------


def _segments(raw: bytes) -> tuple[bytes, list[bytes]]:
    body = raw[HEADER_REGION:]
    return raw[:HEADER_REGION], [body[i : i + STRIDE] for i in range(0, len(body), STRIDE)]


def _rearranged(raw: bytes, order: list[int]) -> bytes:
    head, segs = _segments(raw)
    return head + b"".join(segs[i] for i in order)


REARRANGEMENTS = {
    "swap-first-two": [1, 0, 2, 3, 4, 5],
    "swap-middle": [0, 1, 3, 2, 4, 5],
    "swap-into-last": [0, 1, 2, 3, 5, 4],
    "rotate": [1, 2, 3, 4, 5, 0],
    "reverse": [5, 4, 3, 2, 1, 0],
    "duplicate-first-over-second": [0, 0, 2, 3, 4, 5],
    "duplicate-middle-inserted": [0, 1, 2, 2, 3, 4, 5],
    "duplicate-full-last-inserted": [0, 1, 2, 3, 4, 4, 5],
    "drop-middle": [0, 1, 3, 4, 5],
    "drop-first": [1, 2, 3, 4, 5],
    "last-segment-twice": [0, 1, 2, 3, 4, 5, 5],
}


@pytest.mark.parametrize("name", list(REARRANGEMENTS))
def test_reorder_and_duplicate_segments(target: Target, name: str) -> None:
    plain = _plain(9)
    path, raw = _write(target, "order.bin", plain)
    order = REARRANGEMENTS[name]
    target.put_raw(path, _rearranged(raw, order))
    # Segment count/placement changes the final segment unless the tail is
    # intact; either way partial reads of untouched segments may still work.
    problems = check_reads(target.efs, path, plain, IntegrityError, partial_must_fail=False, exact=IntegrityError)
    assert not problems, "\n".join(problems)


# -- splicing between objects ---------------------------------------------------------------


def test_swap_headers_and_bodies_between_objects(target: Target) -> None:
    pa, pb = _plain(10), _plain(11)
    a, raw_a = _write(target, "a.bin", pa)
    # b gets its own data key (no cache), so its wrapped keys cannot serve a.
    b = target.path("b.bin")
    target.sibling(cache=False).pipe_file(b, pb)
    raw_b = target.get_raw(b)
    assert parse_header(raw_a[:HEADER_REGION]).wrapped_keys != parse_header(raw_b[:HEADER_REGION]).wrapped_keys
    lax = target.sibling(bind_path=False)
    cases = {
        "header-a+body-b at a": (a, raw_a[:HEADER_REGION] + raw_b[HEADER_REGION:], target.efs, pa),
        "header-b+body-a at a": (a, raw_b[:HEADER_REGION] + raw_a[HEADER_REGION:], target.efs, pa),
        "header-b+body-a at a (no path binding)": (a, raw_b[:HEADER_REGION] + raw_a[HEADER_REGION:], lax, pb),
        "whole b at a": (a, raw_b, target.efs, pa),
        "a with b's first segment": (a, raw_a[: HEADER_REGION] + raw_b[HEADER_REGION : HEADER_REGION + STRIDE]
                                     + raw_a[HEADER_REGION + STRIDE :], target.efs, pa),
        "a with b's last segment": (a, raw_a[: HEADER_REGION + (NSEG - 1) * STRIDE]
                                    + raw_b[HEADER_REGION + (NSEG - 1) * STRIDE :], target.efs, pa),
        "a with b's wrapped keys": (a, _with_wrapped_section(raw_a, raw_b), target.efs, pa),
    }
    problems: list[str] = []
    for label, (path, data, efs, oracle) in cases.items():
        target.put_raw(path, data)
        # A spliced middle segment leaves other ranges intact; everything
        # touching header or last segment must fail.
        must = "first segment" not in label and (tail_damage(target) if "last segment" in label else True)
        problems += [f"{label}: {p}" for p in check_reads(efs, path, oracle, IntegrityError,
                                                           partial_must_fail=must, exact=IntegrityError)]
    assert not problems, "\n".join(problems)


def _with_wrapped_section(raw_a: bytes, raw_b: bytes) -> bytes:
    """raw_a's authenticated header with raw_b's wrapped-key section."""
    ha, hb = parse_header(raw_a[:HEADER_REGION]), parse_header(raw_b[:HEADER_REGION])
    cut_a, cut_b = len(ha.mac_input) + 32, len(hb.mac_input) + 32
    section = raw_b[cut_b:HEADER_REGION]
    head = raw_a[:cut_a] + section
    head = head[:HEADER_REGION] + bytes(max(0, HEADER_REGION - len(head)))
    return head + raw_a[HEADER_REGION:]


def test_splice_objects_sharing_one_data_key(target: Target) -> None:
    """Two objects sealed under the same (cached) data key still have
    unrelated body keys: splicing them fails."""
    pa, pb = _plain(12), _plain(13)
    a, b = target.path("same-a.bin"), target.path("same-b.bin")
    ctx_a, ctx_b = target.efs._context_for(a), target.efs._context_for(b)
    dek, wrapped = target.efs.keyring.new_data_key(ctx_a)
    raw_a = encrypt_object(dek=dek, object_id=os.urandom(32), context=ctx_a, wrapped_keys=wrapped,
                           plaintext=pa, segment_size=SEG)
    raw_b = encrypt_object(dek=dek, object_id=os.urandom(32), context=ctx_b, wrapped_keys=wrapped,
                           plaintext=pb, segment_size=SEG)
    target.put_raw(a, raw_a)
    target.put_raw(b, raw_b)
    fresh = target.sibling()  # no cached keys: unwraps through the keystore
    assert fresh.cat_file(a) == pa and fresh.cat_file(b) == pb  # positive control: both valid
    lax = target.sibling(bind_path=False)
    head_a, segs_a = _segments(raw_a)
    head_b, segs_b = _segments(raw_b)
    cases = {
        "header-a+body-b": (head_a + b"".join(segs_b), target.efs, pa, True),
        "header-b+body-a (no path binding)": (head_b + b"".join(segs_a), lax, pb, True),
        "a with b's segment 2": (head_a + b"".join(segs_a[:2] + segs_b[2:3] + segs_a[3:]), fresh, pa, False),
        "a with b's last segment": (head_a + b"".join(segs_a[:-1] + segs_b[-1:]), fresh, pa, True),
        "whole b at a": (raw_b, target.efs, pa, True),
    }
    problems: list[str] = []
    for label, (data, efs, oracle, must) in cases.items():
        if must and "last segment" in label:
            must = tail_damage(target)
        target.put_raw(a, data)
        problems += [f"{label}: {p}" for p in check_reads(efs, a, oracle, IntegrityError,
                                                           partial_must_fail=must, exact=IntegrityError)]
    assert not problems, "\n".join(problems)


# -- moved behind encfs's back ------------------------------------------------------------------


def test_object_moved_or_copied_behind_encfs(target: Target) -> None:
    plain = _plain(14)
    src, raw = _write(target, "orig.bin", plain)
    moved, copied = target.path("moved.bin"), target.path("sub/copied.bin")
    target.raw.mv(src, moved)
    target.raw.makedirs(target.path("sub"), exist_ok=True)
    target.put_raw(copied, raw)
    for path in (moved, copied):
        problems = check_reads(target.efs, path, plain, IntegrityError, partial_must_fail=True, exact=IntegrityError)
        assert not problems, (path, problems)
        # encfs's own copy refuses to launder it to a new path.
        dst = path + ".laundered"
        with pytest.raises(IntegrityError):
            target.efs.cp_file(path, dst)
        assert not target.efs.exists(dst)
    # Control: the bytes themselves are intact; only the path is wrong.
    assert target.sibling(bind_path=False).cat_file(moved) == plain
    # And a move back restores access; a move through encfs keeps working.
    target.raw.mv(moved, src)
    target.efs.mv(src, moved)
    assert target.efs.cat_file(moved) == plain


def test_copy_through_encfs_does_not_launder_damage(target: Target) -> None:
    plain = _plain(15)
    src, raw = _write(target, "c.bin", plain)
    bad = bytearray(raw)
    bad[HEADER_REGION + 2 * STRIDE + 9] ^= 4
    target.put_raw(src, bytes(bad))
    dst = target.path("c-copy.bin")
    try:
        target.efs.cp_file(src, dst)
    except IntegrityError:
        return
    problems = check_reads(target.efs, dst, plain, IntegrityError, partial_must_fail=False, exact=IntegrityError)
    assert not problems, problems


# -- wrong root key ------------------------------------------------------------------------------


def test_wrong_keystore(target: Target, tmp_path: Path) -> None:
    plain = _plain(16)
    path, raw = _write(target, "k.bin", plain)
    other_home = tmp_path / "other-home"
    other = target.sibling(keystore=str(other_home))
    other.pipe_file(target.path("other.bin"), b"forces the other default key into existence")
    problems = check_reads(other, path, plain, NoUsableKeyError, partial_must_fail=True, exact=NoUsableKeyError)
    assert not problems, problems
    with pytest.raises(NoUsableKeyError) as info:
        other.cat_file(path)
    key_id = parse_header(raw[:HEADER_REGION]).wrapped_keys[0].key_id
    assert key_id in str(info.value)


def test_same_key_id_different_material(target: Target, tmp_path: Path) -> None:
    """A second keystore claiming the same key id with other material: the
    unwrap fails authentication, never yields a wrong data key."""
    plain = _plain(17)
    path, raw = _write(target, "k2.bin", plain)
    key_id = parse_header(raw[:HEADER_REGION]).wrapped_keys[0].key_id
    record = copy.deepcopy(LocalKeystore(target.home).record(key_id))
    for entry in record["versions"].values():
        entry["material"] = base64.b64encode(os.urandom(32)).decode()
    forged = tmp_path / "forged-home"
    # Through the keystore's own writer, so the forged file is well formed.
    LocalKeystore(forged)._update(lambda doc: doc["keys"].__setitem__(key_id, record))
    other = target.sibling(keystore=str(forged))
    problems = check_reads(other, path, plain, IntegrityError, partial_must_fail=True, exact=IntegrityError)
    assert not problems, problems


def test_disabled_root_key(target: Target) -> None:
    plain = _plain(18)
    path, raw = _write(target, "dis.bin", plain)
    key_id = parse_header(raw[:HEADER_REGION]).wrapped_keys[0].key_id
    LocalKeystore(target.home).set_state(key_id, "Disabled")
    fresh = target.sibling(cache=False)
    problems = check_reads(fresh, path, plain, KeyStateError, partial_must_fail=True, exact=KeyStateError)
    assert not problems, problems


def test_context_with_other_path_value_is_rejected(target: Target) -> None:
    """Header names another path than where it sits (MAC intact): rejected."""
    plain = _plain(19)
    a, raw_a = _write(target, "ctx-a.bin", plain)
    h = parse_header(raw_a[:HEADER_REGION])
    assert h.context[PATH_KEY] == target.efs._bound_path(a)
    b = target.path("ctx-b.bin")
    target.put_raw(b, raw_a)
    with pytest.raises(IntegrityError):
        target.efs.cat_file(b)


def test_local_path_spellings_bind_one_path(tmp_path: Path, encfs_home) -> None:
    """On a local disk "d/sub/../f", "d//f" and "d/./f" are the file "d/f":
    whichever spelling wrote it, every spelling reads it, and a real move
    is still detected."""
    efs = EncryptedFileSystem(target_protocol="file", keystore=str(encfs_home), segment_size=SEG,
                              skip_instance_cache=True)
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    spellings = [f"{d}/f", f"{d}/sub/../f", f"{d}//f", f"{d}/./f", f"file://{d}/f"]
    for i, writer in enumerate(spellings):
        efs.pipe_file(writer, f"v{i}".encode())
        for reader in spellings:
            assert efs.cat_file(reader) == f"v{i}".encode(), (writer, reader)
    os.rename(d / "f", d / "g")
    with pytest.raises(IntegrityError):
        efs.cat_file(f"{d}/sub/../g")


# -- random damage (hypothesis) ---------------------------------------------------------------

edits = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 2**31), st.integers(0, 7)),
        st.tuples(st.just("set"), st.integers(0, 2**31), st.integers(0, 255)),
        st.tuples(st.just("delete"), st.integers(0, 2**31), st.integers(1, 2 * STRIDE)),
        st.tuples(st.just("insert"), st.integers(0, 2**31), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("truncate"), st.integers(0, 2**31), st.just(0)),
    ),
    min_size=1,
    max_size=4,
)


def _damage(raw: bytes, ops: list[tuple[str, int, Any]]) -> bytes:
    data = bytearray(raw)
    for op, at, arg in ops:
        pos = at % (len(data) + 1)
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << arg
        elif op == "set" and pos < len(data):
            data[pos] = arg
        elif op == "delete":
            del data[pos : pos + arg]
        elif op == "insert":
            data[pos:pos] = arg
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=edits, ranged=st.booleans())
def test_random_damage_never_yields_wrong_bytes(memfs, encfs_home, monkeypatch, ops, ranged) -> None:
    monkeypatch.setenv("ENCFS_AUDIT_LOG", "off")
    efs = EncryptedFileSystem(fs=memfs, keystore=str(encfs_home), segment_size=SEG, skip_instance_cache=True)
    plain = _plain(20)
    path, original = "/fuzz/obj.bin", "/fuzz/original"
    if not memfs.exists(original):  # once per test run: memfs outlives the examples
        efs.pipe_file(path, plain)
        memfs.pipe_file(original, memfs.cat_file(path))
    raw = memfs.cat_file(original)
    bad = _damage(raw, ops)
    if bad == raw:
        return
    memfs.pipe_file(path, bad)
    saved = encfs.file.SMALL_OBJECT, encfs.file.PROBE_BYTES
    if ranged:
        encfs.file.SMALL_OBJECT, encfs.file.PROBE_BYTES = 0, HEADER_REGION
    try:
        problems = check_reads(efs, path, plain, EncfsError, partial_must_fail=False)
    finally:
        encfs.file.SMALL_OBJECT, encfs.file.PROBE_BYTES = saved
        memfs.pipe_file(path, raw)
    assert not problems, "\n".join(problems)



def test_several_wrapped_keys(target: Target) -> None:
    """An object wrapped under two root keys: a damaged or substituted entry is
    harmless while another entry unwraps to the committed data key (it never
    yields another key's plaintext); with every entry bad, IntegrityError."""
    from dataclasses import replace

    from encfs.format import replace_wrapped_keys

    ks = LocalKeystore(target.home)
    ks.create_key(alias="k-one")
    ks.create_key(alias="k-two")
    two = target.sibling(key=["local://k-one", "local://k-two"], cache=False)
    plain, other_plain = _plain(21), _plain(22)
    path, other = target.path("two.bin"), target.path("other.bin")
    two.pipe_file(path, plain)
    two.pipe_file(other, other_plain)
    raw, raw_other = target.get_raw(path), target.get_raw(other)
    h, h_other = parse_header(raw[:HEADER_REGION]), parse_header(raw_other[:HEADER_REGION])
    e1, e2 = h.wrapped_keys
    o1, o2 = h_other.wrapped_keys

    def flipped(e):
        blob = bytearray(e.wrapped)
        blob[-1] ^= 1
        return replace(e, wrapped=bytes(blob))

    def with_entries(entries) -> bytes:
        return replace_wrapped_keys(raw[:HEADER_REGION], h, entries) + raw[HEADER_REGION:]

    harmless = {"first damaged": [flipped(e1), e2], "second damaged": [e1, flipped(e2)],
                "first from another object": [o1, e2], "extra foreign entry": [o2, o1, e1]}
    fatal = {"both damaged": [flipped(e1), flipped(e2)], "both from another object": [o1, o2],
             "foreign entries only": [o2]}
    problems: list[str] = []
    for label, entries in harmless.items():
        target.put_raw(path, with_entries(entries))
        for efs in (two, target.sibling(cache=False)):
            try:
                out = efs.cat_file(path)
            except EncfsError as exc:
                problems.append(f"{label}: {type(exc).__name__}")
                continue
            if out != plain:
                problems.append(f"{label}: WRONG BYTES")
    for label, entries in fatal.items():
        target.put_raw(path, with_entries(entries))
        for efs in (two, target.sibling(cache=False)):
            problems += [f"{label}: {p}" for p in check_reads(efs, path, plain, IntegrityError,
                                                               partial_must_fail=True, exact=IntegrityError)]
    assert not problems, "\n".join(problems)


def test_context_flips_with_service_context(target: Target) -> None:
    """With extra context (sent to the key service), every context byte is
    still covered: by the wrap AAD and by the header MAC."""
    efs = target.sibling(context={"tenant": "acme", "dataset": "sales"})
    plain = _plain(23)
    path = target.path("ctx.bin")
    efs.pipe_file(path, plain)
    raw = target.get_raw(path)
    start, end = header_fields(raw)["context"]
    problems: list[str] = []
    for pos in range(start, end):
        bad = bytearray(raw)
        bad[pos] ^= 1 << (pos % 8)
        target.put_raw(path, bytes(bad))
        for reader in (efs, target.sibling(cache=False)):
            problems += [f"byte {pos}: {p}" for p in check_reads(reader, path, plain, IntegrityError,
                                                                  partial_must_fail=True, thorough=False,
                                                                  exact=IntegrityError)]
    target.put_raw(path, raw)
    assert efs.cat_file(path) == plain
    assert not problems, "\n".join(problems[:20])


# -- the whole-object read (cat_file without a range: encfs.file.read_whole) ---------------------
#
# cat_file of an object the opening probe brings whole is authenticated and
# decrypted without an ObjectReader.  It must catch exactly what the reader
# catches, with the same error: every damage below is read both ways
# (open().read() is always the reader) and the two outcomes compared.

#: Plaintext sizes: one segment in a compact region, six in a v1.0 region.
WHOLE_SIZES = {"compact": 1000, "multi": SIZE}


def _whole_read_is_fast(t: Target, size: str) -> bool:
    """Does this target's probe bring an object of this size whole?"""
    return size == "compact" or not t.name.endswith("-ranged")


@pytest.fixture
def reader_inits(monkeypatch) -> list[str]:
    """Paths every ObjectReader is built for (the reader itself unchanged)."""
    seen: list[str] = []
    real = encfs.file.ObjectReader.__init__

    def counting(self, efs, path, *args, **kwargs):
        seen.append(path)
        real(self, efs, path, *args, **kwargs)

    monkeypatch.setattr(encfs.file.ObjectReader, "__init__", counting)
    return seen


@pytest.mark.parametrize("size", list(WHOLE_SIZES))
def test_whole_object_cat_file_takes_the_fast_path(target: Target, size: str, reader_inits: list[str]) -> None:
    plain = _plain(30, WHOLE_SIZES[size])
    path, _raw = _write(target, f"fast-{size}.bin", plain)
    reader_inits.clear()
    assert target.efs.cat_file(path) == plain
    assert target.efs.cat_file("enc::" + path if target.name.startswith("local") else path) == plain
    assert (reader_inits == []) == _whole_read_is_fast(target, size), reader_inits
    assert target.efs.cat_file(path, start=1, end=9) == plain[1:9]  # a range still goes to the reader
    assert reader_inits


def _region(raw: bytes) -> int:
    return struct.unpack_from(">I", raw, 8)[0]


def _flip(raw: bytes, pos: int, bit: int = 0) -> bytes:
    bad = bytearray(raw)
    bad[pos] ^= 1 << bit
    return bytes(bad)


def _damaged(t: Target, kind: str, size: str, path: str, raw: bytes) -> tuple[bytes, EncryptedFileSystem]:
    """The bytes to store at ``path`` for damage ``kind``, and who reads them."""
    fields = header_fields(raw)
    region = _region(raw)
    body = len(raw) - region
    if kind.startswith("header-"):
        start, end = fields[kind[len("header-"):]]
        return _flip(raw, (start + end) // 2, 3 if kind == "header-version" else 1), t.efs
    stores = {
        "body-first-byte": lambda: _flip(raw, region),
        "body-last-byte": lambda: _flip(raw, len(raw) - TAG_BYTES - 1, 7),
        "tag-first-segment": lambda: _flip(raw, region + min(SEG, body - TAG_BYTES) + 3),
        "tag-last-segment": lambda: _flip(raw, len(raw) - 1),
        "truncate-1": lambda: raw[:-1],
        "truncate-tag": lambda: raw[:-TAG_BYTES],
        "truncate-to-header": lambda: raw[:region],
        "truncate-into-header": lambda: raw[: region // 2],
        "extend-1": lambda: raw + b"\x00",
        "extend-segment": lambda: raw + raw[region:region + STRIDE],
        "swap-first-segments": lambda: (raw[:region] + raw[region + STRIDE : region + 2 * STRIDE]
                                        + raw[region : region + STRIDE] + raw[region + 2 * STRIDE :])
        if body > 2 * STRIDE else _flip(raw, region + 5),
    }
    if kind in stores:
        return stores[kind](), t.efs
    if kind == "other-path":  # a valid object of another path copied here
        other = t.path(f"elsewhere-{size}.bin")
        t.efs.pipe_file(other, _plain(31, WHOLE_SIZES[size]))
        return t.get_raw(other), t.efs
    if kind == "other-body":  # this header, another object's body of the same size
        other = t.path(f"donor-{size}.bin")
        t.efs.pipe_file(other, _plain(32, WHOLE_SIZES[size]))
        return raw[:region] + t.get_raw(other)[region:], t.efs
    if kind == "context-mismatch":  # intact, but this reader requires a context the writer did not bind
        return raw, t.sibling(context={"tenant": "other"})
    if kind == "wrong-keystore":
        home = t.home.parent / f"other-home-{t.name}"
        other = t.sibling(keystore=str(home))
        other.pipe_file(t.path("forces-other-key.bin"), b"x")
        return raw, other
    raise AssertionError(kind)


WHOLE_DAMAGE = [
    *(f"header-{f}" for f in ("magic", "version", "region_length", "segment_size", "object_id", "context",
                               "commitment", "mac", "wrapped_key_id", "wrapped_blob", "padding")),
    "body-first-byte", "body-last-byte", "tag-first-segment", "tag-last-segment",
    "truncate-1", "truncate-tag", "truncate-to-header", "truncate-into-header", "extend-1", "extend-segment",
    "swap-first-segments", "other-path", "other-body", "context-mismatch", "wrong-keystore",
]


def _outcome(read: Callable[[], bytes]) -> tuple[str, str]:
    try:
        return "returned", f"{len(read())} bytes"
    except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("size", list(WHOLE_SIZES))
@pytest.mark.parametrize("kind", WHOLE_DAMAGE)
def test_whole_object_read_fails_exactly_as_the_reader(target: Target, kind: str, size: str,
                                                      reader_inits: list[str]) -> None:
    plain = _plain(33, WHOLE_SIZES[size])
    path, raw = _write(target, f"whole-{size}.bin", plain)
    data, efs = _damaged(target, kind, size, path, raw)
    target.put_raw(path, data)
    reader_inits.clear()
    fast = _outcome(lambda: efs.cat_file(path))
    # Taken whenever the probe brings the whole (damaged) object.
    assert (reader_inits == []) == (len(data) <= encfs.file.probe_size(efs.segment_size)), reader_inits
    slow = _outcome(lambda: _read_open(efs, path, None, None))
    assert reader_inits, "open().read() must go through the ObjectReader"
    assert fast[0] != "returned", f"cat_file returned {fast[1]} of a damaged object"
    assert fast == slow
    assert issubclass(getattr(encfs.errors, fast[0]), WHOLE_EXPECTED.get(kind, IntegrityError)), fast


WHOLE_EXPECTED: dict[str, ErrorTypes] = {
    "header-magic": FormatError, "header-version": (IntegrityError, UnsupportedVersionError),
    "header-wrapped_key_id": KEY_NAMING, "context-mismatch": ContextMismatchError,
    "wrong-keystore": NoUsableKeyError,
}
