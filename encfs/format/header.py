"""ENCF header: encode and parse (FORMAT.md section 4).

Layout of the header region (all integers big-endian)::

    off  len  field
    0    4    magic b"ENCF"
    4    1    format version: 0x01 = v1.0, 0x11 = v1.1 (minor << 4 | major)
    5    1    algorithm suite (1)
    6    2    flags (0; reserved)
    8    4    header region length H (v1.0: 4096; v1.1: 496 or 1536)
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
    rest      zero padding up to the header region length H

v1.1 differs from v1.0 only in the version byte and a compact region
(layout.py, FORMAT.md section 3.1): the version byte and H are both under
the MAC, and each version admits only its own region sizes.

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
from .layout import COMPACT_REGIONS, HEADER_REGION, MAX_SEGMENT, MIN_SEGMENT, choose_region

MAGIC = b"ENCF"
#: Major format version (the low nibble of the version byte).
VERSION = 1
#: Version bytes: v1.0 (4096-byte region) and v1.1 (compact region).
VERSION_1_0 = 0x01
VERSION_1_1 = 0x11
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
    #: Major format version (1); ``minor`` is 0 (v1.0) or 1 (v1.1).
    version: int = VERSION
    header_region: int = HEADER_REGION
    #: The exact bytes the MAC covers (set by parse/encode).
    mac_input: bytes = field(default=b"", repr=False, compare=False)
    minor: int = 0

    @property
    def suite_name(self) -> str:
        return SUPPORTED_SUITES.get(self.suite, f"unknown({self.suite})")

    @property
    def format_name(self) -> str:
        """``"1.0"`` or ``"1.1"``."""
        return f"{self.version}.{self.minor}"

    def verify(self, keys: ObjectKeys, path: str | None = None) -> None:
        """Check commitment then MAC; raise IntegrityError on any mismatch."""
        if not keys.matches(self.commitment):
            raise IntegrityError(path)
        h = hmac.HMAC(keys.mac_key, _SHA256)
        h.update(self.mac_input)
        try:
            h.verify(self.mac)
        except InvalidSignature:
            raise IntegrityError(path) from None


_SHA256 = hashes.SHA256()


def _mac(mac_key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(mac_key, _SHA256)
    h.update(data)
    return h.finalize()


#: Encoded wrapped-key sections by entries: with a cached data key every
#: object carries the same entries (public bytes only).  Bounded.
_SECTIONS: dict[tuple[WrappedKey, ...], bytes] = {}


def _encode_wrapped(wrapped_keys) -> bytes:
    if not 1 <= len(wrapped_keys) <= MAX_WRAPPED_KEYS:
        raise ValueError(f"an object needs 1..{MAX_WRAPPED_KEYS} wrapped keys")
    key = tuple(wrapped_keys)
    try:
        section = _SECTIONS.get(key)
    except TypeError:  # an unhashable blob (bytearray): no memo
        return bytes([len(key)]) + b"".join(w.encode() for w in key)
    if section is None:
        section = bytes([len(key)]) + b"".join(w.encode() for w in key)
        if len(_SECTIONS) >= 1024:
            _SECTIONS.clear()
        _SECTIONS[key] = section
    return section


def _too_large(total: int, region: int = HEADER_REGION) -> HeaderTooLargeError:
    return HeaderTooLargeError(
        f"header needs {total} bytes but the region holds {region}: "
        "use fewer root keys or a shorter path/context"
    )


class HeaderPlan:
    """Everything of a new header but its region size, which a writer picks
    once it knows the body size (a stream learns it at close): FORMAT.md
    section 3.1.  Holds the header MAC key, so it never shows or pickles it.
    """

    __slots__ = ("_after_fixed", "_mac_key", "_object_id", "_segment_size", "_suite", "_wrapped", "need")

    def __init__(
        self,
        *,
        segment_size: int,
        object_id: bytes,
        context: dict[str, str],
        keys: ObjectKeys,
        wrapped_keys: tuple[WrappedKey, ...] | list[WrappedKey],
        suite: int = SUITE_AES256GCM_HKDF_SHA256_COMMIT,
        context_bytes: bytes | None = None,
    ) -> None:
        if len(object_id) != OBJECT_ID_BYTES:
            raise ValueError("object id must be 32 bytes")
        if not MIN_SEGMENT <= segment_size <= MAX_SEGMENT:
            raise ValueError("segment size out of range")
        ctx = context_bytes
        if ctx is None:
            try:
                ctx = encode_context(context)
            except ValueError as exc:  # e.g. a bound path longer than a context value may be
                raise HeaderTooLargeError(f"the encryption context does not fit an encfs header: {exc}") from None
        self._after_fixed = _CTX_LEN.pack(len(ctx)) + ctx + keys.commitment
        self._wrapped = _encode_wrapped(wrapped_keys)
        self._mac_key = keys.mac_key
        self._object_id, self._segment_size, self._suite = object_id, segment_size, suite
        #: Bytes the header needs before padding.
        self.need = FIXED_BYTES + len(self._after_fixed) + MAC_BYTES + len(self._wrapped)
        if self.need > HEADER_REGION:
            raise _too_large(self.need)

    def __repr__(self) -> str:
        return f"HeaderPlan(need={self.need})"

    def __reduce__(self):  # never pickle a live key
        raise TypeError("HeaderPlan cannot be pickled")

    def region(self, body: int | None = None) -> bytes:
        """The padded header region for a body of ``body`` bytes (segments
        and tags; ``None`` when unknown: the v1.0 region)."""
        size = choose_region(self.need, body)
        version = VERSION_1_0 if size == HEADER_REGION else VERSION_1_1
        authed = _FIXED.pack(MAGIC, version, self._suite, 0, size, self._segment_size, self._object_id) + self._after_fixed
        return authed + _mac(self._mac_key, authed) + self._wrapped + bytes(size - self.need)


_CTX_LEN = struct.Struct(">H")


def encode_header(
    *,
    segment_size: int,
    object_id: bytes,
    context: dict[str, str],
    keys: ObjectKeys,
    wrapped_keys: tuple[WrappedKey, ...] | list[WrappedKey],
    suite: int = SUITE_AES256GCM_HKDF_SHA256_COMMIT,
    body: int | None = None,
) -> bytes:
    """Return the full, padded header region of a new (or rebound) object.

    ``body``: the body size in bytes when known, so a small object gets a
    compact v1.1 region (section 3.1); ``None`` writes the v1.0 region.
    """
    return HeaderPlan(segment_size=segment_size, object_id=object_id, context=context, keys=keys,
                      wrapped_keys=wrapped_keys, suite=suite).region(body)


def encode_wrapped_section(wrapped_keys, offset: int, region: int = HEADER_REGION) -> bytes:
    """Wrapped-key section plus zero padding, to follow ``offset`` bytes of
    header in a region of ``region`` bytes."""
    section = _encode_wrapped(wrapped_keys)
    total = offset + len(section)
    if total > region:
        raise _too_large(total, region)
    return section + bytes(region - total)


def replace_wrapped_keys(region: bytes, header: Header, wrapped_keys) -> bytes:
    """Rewrap: the same authenticated part and MAC, new wrapped keys, the
    same region size.  :class:`HeaderTooLargeError` when they do not fit it
    (a compact object is then rewritten whole, FORMAT.md section 4.2)."""
    head = header.mac_input + header.mac
    return head + encode_wrapped_section(wrapped_keys, len(head), header.header_region)


def peek_is_encfs(data: bytes) -> bool:
    return len(data) >= 4 and data[:4] == MAGIC


#: Region sizes each version byte admits (section 4): one-to-one, so a v1.0
#: header can never be read as v1.1 or the reverse.
_REGIONS = {VERSION_1_0: frozenset({HEADER_REGION}), VERSION_1_1: COMPACT_REGIONS}


def parse_header(data: bytes, path: str | None = None) -> Header:
    """Parse the header at the start of ``data`` (the header region, or any
    prefix of the object at least that long; a compact object may be given
    whole).  Does not verify: call :meth:`Header.verify`."""
    where = f" at {path}" if path else ""
    if len(data) < FIXED_BYTES or data[:4] != MAGIC:
        if 4 <= len(data) and data[:4] == MAGIC or (0 < len(data) < 4 and MAGIC.startswith(bytes(data))):
            raise IntegrityError(path)  # an encfs object cut short
        raise FormatError(f"not an encfs object{where}")
    _magic, version, suite, flags, region_len, segment_size, object_id = _FIXED.unpack_from(data, 0)
    if version not in _REGIONS:
        raise UnsupportedVersionError(f"unsupported encfs format version {_version_name(version)}{where}")
    if suite not in SUPPORTED_SUITES:
        raise UnsupportedVersionError(f"unsupported encfs algorithm suite {suite}{where}")
    try:
        return _parse_rest(data, version, suite, flags, region_len, segment_size, object_id)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error):
        raise IntegrityError(path) from None


def _version_name(byte: int) -> str:
    return f"{byte & 0x0F}.{byte >> 4}" if byte & 0x0F else str(byte)


#: Parsed wrapped-key sections (with their padding) by bytes: with a cached
#: data key, object after object carries the same section.  Only sections
#: that parsed (and were all-zero padded) are kept; public bytes only.
_PARSED: dict[bytes, tuple[WrappedKey, ...]] = {}


def _parse_wrapped(region: bytes, pos: int, region_len: int) -> tuple[WrappedKey, ...]:
    """The wrapped-key section at ``pos`` and the zero padding after it."""
    tail = region[pos:region_len]
    hit = _PARSED.get(tail)
    if hit is not None:
        return hit
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
        (n,) = _CTX_LEN.unpack_from(region, pos)
        pos += 2
        if not 0 < n <= MAX_KEY_ID:
            raise ValueError("bad key id")
        key_id, pos = _take(region, pos, n)
        (n,) = _take(region, pos, 1)[0]
        pos += 1
        if n > MAX_VERSION:
            raise ValueError("bad version")
        version_b, pos = _take(region, pos, n)
        (n,) = _CTX_LEN.unpack_from(region, pos)
        pos += 2
        if not 0 < n <= MAX_WRAPPED:
            raise ValueError("bad wrapped key")
        blob, pos = _take(region, pos, n)
        wrapped.append(WrappedKey(provider.decode("ascii"), key_id.decode("utf-8"), version_b.decode("ascii"), blob))
    # Padding is outside the MAC, so insist it is all zero: no byte of the
    # header may change unnoticed.  (count(0), not any(): C speed.)
    if region.count(0, pos, region_len) != region_len - pos:
        raise ValueError("non-zero padding")
    out = tuple(wrapped)
    if len(_PARSED) >= 256:
        _PARSED.clear()
    _PARSED[tail] = out
    return out


def _take(buf: bytes, pos: int, n: int) -> tuple[bytes, int]:
    if n < 0 or pos + n > len(buf):
        raise ValueError("truncated")
    return buf[pos : pos + n], pos + n


def _parse_rest(data: bytes, version: int, suite: int, flags: int, region_len: int, segment_size: int,
                object_id: bytes) -> Header:
    if flags != 0 or region_len not in _REGIONS[version] or len(data) < region_len:
        raise ValueError("bad fixed fields")
    if not MIN_SEGMENT <= segment_size <= MAX_SEGMENT:
        raise ValueError("bad segment size")
    region = data[:region_len]
    pos = FIXED_BYTES
    (ctx_len,) = _CTX_LEN.unpack_from(region, pos)
    pos += 2
    ctx_bytes, pos = _take(region, pos, ctx_len)
    context = decode_context(ctx_bytes)
    commitment, pos = _take(region, pos, COMMIT_BYTES)
    mac_input = region[:pos]
    mac, pos = _take(region, pos, MAC_BYTES)
    wrapped = _parse_wrapped(region, pos, region_len)
    # Every field set at once: the frozen dataclass's __init__ sets its
    # eleven fields one object.__setattr__ at a time, a fifth of parsing a
    # small object's header (this runs for every object read).  Header has
    # no __post_init__ and no slots, so this is the object __init__ makes
    # (tests/test_format.py checks it field for field).
    header = _new_header(Header)
    header.__dict__.update(
        segment_size=segment_size,
        object_id=object_id,
        context=context,
        commitment=commitment,
        wrapped_keys=wrapped,
        mac=mac,
        suite=suite,
        version=VERSION,
        header_region=region_len,
        mac_input=mac_input,
        minor=version >> 4,
    )
    return header


_new_header = object.__new__
