"""ENCF v1 header: encode and parse (FORMAT.md section 4).

Layout of the fixed ``HEADER_REGION`` (all integers big-endian)::

    off  len  field
    0    4    magic b"ENCF"
    4    1    format version (1)
    5    1    algorithm suite (1)
    6    2    flags (0; reserved)
    8    4    header region length (4096)
    12   4    segment size (plaintext bytes per segment)
    16   32   object id (random)
    48   2    context length L
    50   L    encryption context (canonical, see context.py)
    50+L 32   key commitment
    82+L 32   header MAC = HMAC-SHA256(mac_key, bytes[0 : 82+L])
    --------  end of the MAC-covered part; what follows can be rewritten by
              a key service (rewrap) without knowing the data key
    114+L 1   number of wrapped keys n (1..16)
    n x  wrapped key entry:
         1+p  provider (ASCII, length-prefixed)
         2+k  key id (UTF-8)
         1+v  key version (ASCII)
         2+w  wrapped data key
    rest      zero padding up to the header region length

Parsing never trusts a length: each is checked against the bytes left and a
per-field maximum before any slice.  Magic and version failures are
:class:`FormatError`; every later failure is :class:`IntegrityError` (one
fixed message, no oracle).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from ..errors import FormatError, HeaderTooLargeError, IntegrityError, UnsupportedVersionError
from .context import decode_context, encode_context
from .kdf import OBJECT_ID_BYTES, ObjectKeys
from .layout import HEADER_REGION, MAX_SEGMENT, MIN_SEGMENT

MAGIC = b"ENCF"
VERSION = 1
SUITE_AES256GCM_HKDF_SHA256_COMMIT = 1
SUPPORTED_SUITES = {SUITE_AES256GCM_HKDF_SHA256_COMMIT: "AES-256-GCM/HKDF-SHA256/HMAC-SHA256/commit"}

_FIXED = struct.Struct(">4sBBHII32s")  # 48 bytes
FIXED_BYTES = _FIXED.size
COMMIT_BYTES = 32
MAC_BYTES = 32
MAX_WRAPPED_KEYS = 16
MAX_PROVIDER = 32
MAX_KEY_ID = 2048
MAX_VERSION = 64
MAX_WRAPPED = 2048


@dataclass(frozen=True)
class WrappedKey:
    """One wrapped copy of the data key.  ``wrapped`` is ciphertext only."""

    provider: str
    key_id: str
    version: str
    wrapped: bytes = field(repr=False)

    def encode(self) -> bytes:
        p, k, v = self.provider.encode("ascii"), self.key_id.encode("utf-8"), self.version.encode("ascii")
        if not 0 < len(p) <= MAX_PROVIDER or not 0 < len(k) <= MAX_KEY_ID or len(v) > MAX_VERSION:
            raise ValueError("wrapped key field out of range")
        if not 0 < len(self.wrapped) <= MAX_WRAPPED:
            raise ValueError("wrapped key blob out of range")
        return (
            struct.pack(">B", len(p)) + p
            + struct.pack(">H", len(k)) + k
            + struct.pack(">B", len(v)) + v
            + struct.pack(">H", len(self.wrapped)) + self.wrapped
        )


@dataclass(frozen=True)
class Header:
    """A parsed (or to-be-written) header.  Holds no secret."""

    segment_size: int
    object_id: bytes
    context: dict[str, str]
    commitment: bytes
    wrapped_keys: tuple[WrappedKey, ...]
    mac: bytes = b""
    suite: int = SUITE_AES256GCM_HKDF_SHA256_COMMIT
    version: int = VERSION
    header_region: int = HEADER_REGION
    #: The exact bytes the MAC covers (set by parse/encode).
    mac_input: bytes = field(default=b"", repr=False, compare=False)

    @property
    def suite_name(self) -> str:
        return SUPPORTED_SUITES.get(self.suite, f"unknown({self.suite})")

    def verify(self, keys: ObjectKeys, path: str | None = None) -> None:
        """Check commitment then MAC; raise IntegrityError on any mismatch."""
        if not keys.matches(self.commitment):
            raise IntegrityError(path)
        h = hmac.HMAC(keys.mac_key, hashes.SHA256())
        h.update(self.mac_input)
        try:
            h.verify(self.mac)
        except InvalidSignature:
            raise IntegrityError(path) from None


def _authenticated_part(segment_size: int, object_id: bytes, ctx: bytes, commitment: bytes, suite: int) -> bytes:
    return (
        _FIXED.pack(MAGIC, VERSION, suite, 0, HEADER_REGION, segment_size, object_id)
        + struct.pack(">H", len(ctx)) + ctx + commitment
    )


def _mac(mac_key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(mac_key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def encode_header(
    *,
    segment_size: int,
    object_id: bytes,
    context: dict[str, str],
    keys: ObjectKeys,
    wrapped_keys: tuple[WrappedKey, ...] | list[WrappedKey],
    suite: int = SUITE_AES256GCM_HKDF_SHA256_COMMIT,
) -> bytes:
    """Return the full, padded header region of a new (or rebound) object."""
    if len(object_id) != OBJECT_ID_BYTES:
        raise ValueError("object id must be 32 bytes")
    if not MIN_SEGMENT <= segment_size <= MAX_SEGMENT:
        raise ValueError("segment size out of range")
    try:
        ctx = encode_context(context)
    except ValueError as exc:  # e.g. a bound path longer than a context value may be
        raise HeaderTooLargeError(f"the encryption context does not fit an encfs header: {exc}") from None
    authed = _authenticated_part(segment_size, object_id, ctx, keys.commitment, suite)
    mac = _mac(keys.mac_key, authed)
    return authed + mac + encode_wrapped_section(wrapped_keys, len(authed) + MAC_BYTES)


def encode_wrapped_section(wrapped_keys, offset: int) -> bytes:
    """Wrapped-key section plus zero padding, to follow ``offset`` bytes of header."""
    if not 1 <= len(wrapped_keys) <= MAX_WRAPPED_KEYS:
        raise ValueError(f"an object needs 1..{MAX_WRAPPED_KEYS} wrapped keys")
    section = bytes([len(wrapped_keys)]) + b"".join(w.encode() for w in wrapped_keys)
    total = offset + len(section)
    if total > HEADER_REGION:
        raise HeaderTooLargeError(
            f"header needs {total} bytes but the region holds {HEADER_REGION}: "
            "use fewer root keys or a shorter path/context"
        )
    return section + bytes(HEADER_REGION - total)


def replace_wrapped_keys(region: bytes, header: Header, wrapped_keys) -> bytes:
    """Rewrap: the same authenticated part and MAC, new wrapped keys."""
    head = header.mac_input + header.mac
    return head + encode_wrapped_section(wrapped_keys, len(head))


def peek_is_encfs(data: bytes) -> bool:
    return len(data) >= 4 and data[:4] == MAGIC


def parse_header(region: bytes, path: str | None = None) -> Header:
    """Parse a header region.  Does not verify: call :meth:`Header.verify`."""
    where = f" at {path}" if path else ""
    if len(region) < FIXED_BYTES or region[:4] != MAGIC:
        raise FormatError(f"not an encfs object{where}")
    _magic, version, suite, flags, region_len, segment_size, object_id = _FIXED.unpack_from(region, 0)
    if version != VERSION:
        raise UnsupportedVersionError(f"unsupported encfs format version {version}{where}")
    if suite not in SUPPORTED_SUITES:
        raise UnsupportedVersionError(f"unsupported encfs algorithm suite {suite}{where}")
    try:
        return _parse_rest(region, suite, flags, region_len, segment_size, object_id)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error):
        raise IntegrityError(path) from None


def _take(buf: bytes, pos: int, n: int) -> tuple[bytes, int]:
    if n < 0 or pos + n > len(buf):
        raise ValueError("truncated")
    return buf[pos : pos + n], pos + n


def _parse_rest(region: bytes, suite: int, flags: int, region_len: int, segment_size: int, object_id: bytes) -> Header:
    if flags != 0 or region_len != HEADER_REGION or len(region) < HEADER_REGION:
        raise ValueError("bad fixed fields")
    if not MIN_SEGMENT <= segment_size <= MAX_SEGMENT:
        raise ValueError("bad segment size")
    region = region[:HEADER_REGION]
    pos = FIXED_BYTES
    (ctx_len,) = struct.unpack_from(">H", region, pos)
    pos += 2
    ctx_bytes, pos = _take(region, pos, ctx_len)
    context = decode_context(ctx_bytes)
    commitment, pos = _take(region, pos, COMMIT_BYTES)
    mac_input = region[:pos]
    mac, pos = _take(region, pos, MAC_BYTES)
    count_b, pos = _take(region, pos, 1)
    count = count_b[0]
    if not 1 <= count <= MAX_WRAPPED_KEYS:
        raise ValueError("bad wrapped key count")
    wrapped: list[WrappedKey] = []
    for _ in range(count):
        (n,) = _take(region, pos, 1)[0]
        pos += 1
        if not 0 < n <= MAX_PROVIDER:
            raise ValueError("bad provider")
        provider, pos = _take(region, pos, n)
        (n,) = struct.unpack_from(">H", region, pos)
        pos += 2
        if not 0 < n <= MAX_KEY_ID:
            raise ValueError("bad key id")
        key_id, pos = _take(region, pos, n)
        (n,) = _take(region, pos, 1)[0]
        pos += 1
        if n > MAX_VERSION:
            raise ValueError("bad version")
        version, pos = _take(region, pos, n)
        (n,) = struct.unpack_from(">H", region, pos)
        pos += 2
        if not 0 < n <= MAX_WRAPPED:
            raise ValueError("bad wrapped key")
        blob, pos = _take(region, pos, n)
        wrapped.append(WrappedKey(provider.decode("ascii"), key_id.decode("utf-8"), version.decode("ascii"), blob))
    # Padding is outside the MAC, so insist it is all zero: no byte of the
    # header may change unnoticed.
    if any(region[pos:]):
        raise ValueError("non-zero padding")
    return Header(
        segment_size=segment_size,
        object_id=object_id,
        context=context,
        commitment=commitment,
        wrapped_keys=tuple(wrapped),
        mac=mac,
        suite=suite,
        version=VERSION,
        header_region=region_len,
        mac_input=mac_input,
    )
