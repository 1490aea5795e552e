"""Per-object key derivation and key commitment (FORMAT.md section 5).

From one data key (DEK) and the object's random 32-byte id, HKDF-SHA256
derives three independent values: the body key (AES-256-GCM segments), the
header MAC key (HMAC-SHA256) and the key commitment.  Because the object id is
the HKDF salt, a DEK reused across objects (data-key cache) still gives every
object its own body key, so deterministic segment nonces never repeat under
one key.  The construction follows the AWS Encryption SDK's DERIVEKEY /
COMMITKEY split, with HMAC instead of GCM for the header so that a header can
be rewritten (rename, rewrap) without nonce reuse.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

DEK_BYTES = 32
OBJECT_ID_BYTES = 32

_LABEL_BODY = b"ENCF v1 body key"
_LABEL_MAC = b"ENCF v1 header mac key"
_LABEL_COMMIT = b"ENCF v1 key commitment"


class ObjectKeys:
    """Keys of one object: immutable; ``repr`` shows nothing secret and it
    never pickles (as :class:`~encfs.format.SegmentCipher`).

    A plain ``__slots__`` class, not a frozen dataclass: one is made for
    every object written or read, and the dataclass's generated
    ``__init__`` cost more than the three HKDF expansions' Python side.
    """

    __slots__ = ("body_key", "commitment", "mac_key")

    body_key: bytes
    mac_key: bytes
    commitment: bytes

    def __init__(self, body_key: bytes, mac_key: bytes, commitment: bytes) -> None:
        init = object.__setattr__
        init(self, "body_key", body_key)
        init(self, "mac_key", mac_key)
        init(self, "commitment", commitment)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ObjectKeys is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("ObjectKeys is immutable")

    def __repr__(self) -> str:
        return "ObjectKeys(<keys hidden>)"

    def __reduce__(self):  # never pickle live keys
        raise TypeError("ObjectKeys cannot be pickled")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ObjectKeys):
            return NotImplemented
        return (constant_time.bytes_eq(self.body_key, other.body_key)
                & constant_time.bytes_eq(self.mac_key, other.mac_key)
                & constant_time.bytes_eq(self.commitment, other.commitment))

    __hash__ = None  # type: ignore[assignment]  # keys are not dictionary keys

    def matches(self, commitment: bytes) -> bool:
        """Constant-time comparison with a commitment read from a header."""
        return constant_time.bytes_eq(self.commitment, commitment)


_SHA256 = hashes.SHA256()
#: The three HKDF ``info`` values (label || suite) per suite, built once.
_INFOS: dict[int, tuple[bytes, bytes, bytes]] = {}


def _infos(suite: int) -> tuple[bytes, bytes, bytes]:
    infos = _INFOS.get(suite)
    if infos is None:
        tail = bytes([suite])
        infos = _INFOS[suite] = (_LABEL_BODY + tail, _LABEL_MAC + tail, _LABEL_COMMIT + tail)
    return infos


def derive_object_keys(dek: bytes, object_id: bytes, suite: int) -> ObjectKeys:
    """Derive the body key, header MAC key and commitment of one object.

    Each value is HKDF-SHA256(ikm=DEK, salt=object id, info=label || suite)
    (FORMAT.md section 5).  HKDF is Extract then Expand, and the Extract step
    (the PRK) depends only on the DEK and the salt, so it is computed once and
    expanded three times: the same three outputs as three full HKDF calls, at
    four HMACs instead of six (this runs for every object written or read).
    """
    if len(dek) != DEK_BYTES:
        raise ValueError("data key must be 32 bytes")
    if len(object_id) != OBJECT_ID_BYTES:
        raise ValueError("object id must be 32 bytes")
    info_body, info_mac, info_commit = _infos(suite)
    prk = HKDF.extract(_SHA256, object_id, dek)
    return ObjectKeys(
        HKDFExpand(_SHA256, 32, info_body).derive(prk),
        HKDFExpand(_SHA256, 32, info_mac).derive(prk),
        HKDFExpand(_SHA256, 32, info_commit).derive(prk),
    )
