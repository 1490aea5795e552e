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

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import constant_time, hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

DEK_BYTES = 32
OBJECT_ID_BYTES = 32

_LABEL_BODY = b"ENCF v1 body key"
_LABEL_MAC = b"ENCF v1 header mac key"
_LABEL_COMMIT = b"ENCF v1 key commitment"


@dataclass(frozen=True)
class ObjectKeys:
    """Keys of one object.  ``repr`` shows nothing secret."""

    body_key: bytes = field(repr=False)
    mac_key: bytes = field(repr=False)
    commitment: bytes = field(repr=False)

    def matches(self, commitment: bytes) -> bool:
        """Constant-time comparison with a commitment read from a header."""
        return constant_time.bytes_eq(self.commitment, commitment)


_SHA256 = hashes.SHA256()


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
    prk = HKDF.extract(_SHA256, object_id, dek)
    tail = bytes([suite])
    return ObjectKeys(
        body_key=HKDFExpand(algorithm=_SHA256, length=32, info=_LABEL_BODY + tail).derive(prk),
        mac_key=HKDFExpand(algorithm=_SHA256, length=32, info=_LABEL_MAC + tail).derive(prk),
        commitment=HKDFExpand(algorithm=_SHA256, length=32, info=_LABEL_COMMIT + tail).derive(prk),
    )
